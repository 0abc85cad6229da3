"""Every setting of metaft, declared once (type, default, help, flags, range); saved as ``config.json``.

The ``*Settings`` classes hold what a user chooses for a stage; the ``*Config`` classes add what names one run
(its data folder, model, output folder, seed). :class:`StudyConfig` is the tree of a whole study: study-wide
settings plus a ``prepare``, ``typicality``, ``meta`` and ``finetune`` section. The machinery that turns these
declarations into validation, config-file loading, ``KEY=VALUE`` overrides and command-line flags is in
:mod:`metaft.settings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from .errors import ConfigError
from .fileio import load_config_file, write_json
from .hub import DEFAULT_MODEL
from .pooling import POOLINGS
from .settings import Settings, field_map, parse_k, parse_pack, setting

STANDARD_SEEDS = (13, 21, 42, 87, 100)
MAX_SEED = 2**32 - 1

Pooling = Literal[POOLINGS]  # noqa: F821 - declared with the poolings themselves
Aggregation = Literal["mean-prototype", "mean-cosine"]
MixedPrecision = Literal["auto", "no", "bf16", "fp16"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
DomainLoss = Literal["corrupt", "grl", "none"]
TypicalityNorm = Literal["none", "mean", "mean-global"]
HeadPooling = Literal["auto", "mean", "cls", "pooler"]
HeadNormalize = Literal["auto", "on", "off"]
MetaHead = Literal["reinit", "probe"]
Head = Literal["reinit", "probe", "keep"]
Corruption = Literal["permute", "uniform"]
Space = Literal["raw", "normalized"]


# meta-stage settings of each MFT variant of a study; the baseline has no meta stage
VARIANTS: dict[str, dict[str, Any]] = {
    "mft": {"typicality": True, "domain_loss": "corrupt"},
    "no-typicality": {"typicality": False, "domain_loss": "corrupt"},
    "no-domain-loss": {"typicality": True, "domain_loss": "none"},
    "multitask": {"typicality": False, "domain_loss": "none"},
    "grl": {"typicality": True, "domain_loss": "grl"},
}
ABLATIONS = tuple(v for v in VARIANTS if v != "mft")
Ablation = Literal[ABLATIONS]  # noqa: F821 - the names of VARIANTS, not spelled twice

# The reference few-shot recipe ([OF] README), a study's default (not tuned); learning rates: the stages' defaults
SEED_RECIPE_META = {"epochs": 63, "batch_size": 4, "eval_every": 100}
SEED_RECIPE_FINETUNE = {"epochs": 64, "batch_size": 2, "eval_every": 50}
# The reference system's behaviour where metaft's defaults (chosen on dev sets) differ: its classification head and
# domain-corruption targets (reference_behaviour(); head_normalize off = auto for a pooler head).
REFERENCE_HEAD: dict[str, Any] = {"head_pooling": "pooler", "head": "reinit", "head_normalize": "off"}
REFERENCE_BEHAVIOUR: dict[str, Any] = {**REFERENCE_HEAD, "corruption": "permute", "domain_embedding": True}


def _ablations(value: Any) -> Any:
    """``ablations: all`` (or ``--ablations all``) names every ablation; others must be known."""
    if value == "all" or value == ["all"]:
        return ABLATIONS
    names = value.replace(",", " ").split() if isinstance(value, str) else value
    if isinstance(names, (list, tuple)):
        if bad := [a for a in names if a not in ABLATIONS]:
            raise ConfigError(f"unknown ablation(s) {bad}; choose from {', '.join(ABLATIONS)} (or all)")
    return names


def _on_off(value: Any) -> Any:  # ``on`` / ``off`` (the guide's words) for a boolean setting
    return {"on": True, "off": False}.get(value, value) if isinstance(value, str) else value


def _on_off_word(value: Any) -> Any:
    """A boolean (YAML reads a bare ``on`` / ``off`` as one) as the word of an auto / on / off setting."""
    return {True: "on", False: "off"}[value] if isinstance(value, bool) else value


def redefault(cls: type, name: str, default: Any, **changes: Any) -> Any:
    """The setting ``name`` of ``cls`` with another default (and any other metadata changed)."""
    meta = {**field_map(cls)[name].metadata, **changes}
    return setting(default, **meta)


def _nonempty(values: tuple, name: str) -> None:
    if not values:
        raise ConfigError(f"{name} must list at least one value (give at least one seed)")


class Saved(Settings):
    """Settings written into a run folder as ``config.json``."""

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class SplitSettings(Settings):
    """Stage 0 settings: which corpora, domains and K the splits are drawn from."""

    corpora: str | None = setting(None, help="folder of the raw corpora (default: $METAFT_CORPORA)", metavar="DIR")
    group: str | None = setting(None, help="predefined group (g1 = SST-2 MR CR; amazon = books dvd electronics "
                                "kitchen), or the name of the group given by --domains / --input (default: g1 "
                                "unless --domains or --input is given)")
    domains: tuple[str, ...] = setting((), metavar="DOMAIN", help="domains to prepare: SST-2 MR CR MPQA Subj TREC "
                                       "books dvd electronics kitchen (or a subset of the domains of --input)")
    input: str | None = setting(None, metavar="FILE", help="your own multi-domain file: layout TSV (text TAB "
                                "domain TAB label) or .jsonl ({text, label, domain[, text_pair]})")
    test: str | None = setting(None, metavar="FILE", help="with --input: its test set (default: hold out 20% of "
                               "each domain with a fixed seed)")
    k: int | None = setting(16, parse=parse_k, help="examples per label and domain in train and in dev, or 'full'")
    dev_fraction: float = setting(0.1, gt=0, lt=1, help="with --k full: share of each domain's pool used as dev")

    def check(self) -> None:
        if self.group is None and not self.domains and not self.input:
            object.__setattr__(self, "group", "g1")


@dataclass(frozen=True)
class PrepareConfig(SplitSettings, Saved):
    """Stage 0: raw corpora -> k-shot (or full) splits in the MFT layout."""

    out: str = setting("data", help="output folder")
    seeds: tuple[int, ...] = setting(STANDARD_SEEDS, metavar="SEED", ge=0, le=MAX_SEED, help="k-shot sampling seeds")
    force: bool = setting(False, help="overwrite prepared folders that hold splits of other data")

    def check(self) -> None:
        super().check()
        _nonempty(self.seeds, "seeds")


@dataclass(frozen=True)
class EncoderSettings(Settings):
    """How texts reach the encoder, in every stage that runs one."""

    max_length: int = setting(128, gt=2, flags=("--max-length", "--max_length", "--seq_length", "--max_seq_length"),
                              help="tokens per text (longer texts are truncated)")
    trust_remote_code: bool = setting(False, help="allow custom model code from the hub")
    use_cache: bool = setting(True, flags=("--resave_ofrecord", "--no-cache"),
                              help="tokenise afresh instead of reading the tokenisation cache (the seed system's "
                                   "--resave_ofrecord; metaft has no OFRecord files)")


@dataclass(frozen=True)
class Source(Saved):
    """What a stage run reads: its prepared data folder and the model it starts from."""

    data_dir: str = setting("", flags=("--data-dir", "--data_dir"), help="prepared folder (train.tsv, dev.tsv, ...)")
    model: str = setting(DEFAULT_MODEL, flags=("--model", "--model_load_dir"),
                         help="hub id, local HF folder or alias (minilm = the packaged all-MiniLM-L6-v2)")


_STUDY_MANAGED = {
    "data_dir": "the study prepares the data itself", "model": "set the study's model (--model)",
    "out": "the study names every run folder", "seed": "set the study's seeds (--seeds)",
    "resume": "a study resumes unfinished runs itself", "force": "set the study's force (--force)",
    "task_name": "the study names runs by group and domain", "domain": "the study fine-tunes every domain",
}


@dataclass(frozen=True)
class TypicalitySettings(EncoderSettings):
    """Stage 1 settings: frozen-encoder prototypes and typicality scores."""

    MANAGED: ClassVar[dict[str, str]] = _STUDY_MANAGED

    pooling: Pooling = setting("mean", help="mean = masked mean over tokens, cls = the [CLS] vector, pooler = "
                                            "the BERT pooler output")
    alpha: float = setting(0.5, ge=0, le=1, help="weight of the own-domain prototype")
    aggregation: Aggregation = setting("mean-prototype", help="mean-prototype = cosine with the mean of the other "
                                       "domains' prototypes, mean-cosine = mean of the cosines")
    space: Space = setting("raw", help="raw = prototypes average the encoder's outputs, normalized = unit-length "
                                       "embeddings (the space a cosine-trained sentence encoder was trained in)")
    leave_one_out: bool = setting(False, help="leave each example out of its own class prototype when scoring it")
    batch_size: int = setting(64, gt=0, flags=("--batch-size", "--batch_size", "--batch_size_per_device"),
                              help="embedding batch size")


@dataclass(frozen=True)
class TypicalityConfig(TypicalitySettings, Source):
    """Stage 1: frozen-encoder prototypes and typicality scores of one data folder."""


@dataclass(frozen=True)
class TrainSettings(EncoderSettings):
    """Settings shared by stage 2 (meta fine-tuning) and stage 3 (per-domain fine-tuning)."""

    MANAGED: ClassVar[dict[str, str]] = _STUDY_MANAGED
    # what a run saved before a setting existed did (the reference head): a new default is no old behaviour
    BEFORE_SETTING: ClassVar[dict[str, Any]] = dict(REFERENCE_HEAD)

    epochs: float = setting(3.0, gt=0, flags=("--epochs", "--num_epochs"), help="epochs, may be fractional")
    batch_size: int = setting(8, gt=0, flags=("--batch-size", "--batch_size_per_device"),
                              help="training batch size per device")
    eval_batch_size: int = setting(64, gt=0, help="evaluation batch size per device, dev and test",
                                   flags=("--eval-batch-size", "--dev_batch_size_per_device",
                                          "--eval_batch_size_per_device"))
    learning_rate: float = setting(2e-5, gt=0, flags=("--lr", "--learning-rate", "--learning_rate"),
                                   help="peak learning rate of AdamW")
    weight_decay: float = setting(0.01, ge=0, flags=("--weight-decay", "--weight_decay_rate"),
                                  help="AdamW weight decay, not on biases/LayerNorm")
    warmup_ratio: float = setting(0.1, ge=0, lt=1, flags=("--warmup-ratio", "--warmup_proportion"),
                                  help="linear warm-up share of the steps, then linear decay to 0")
    max_grad_norm: float = setting(1.0, ge=0, help="clip the gradient norm to this (0 = no clipping)")
    eval_every: int = setting(0, ge=0, flags=("--eval-every", "--dev_every_step_num"),
                              help="evaluate on dev every N steps and at the end (0 = once per epoch)")
    dropout: float = setting(0.1, ge=0, lt=1, help="classifier dropout")
    mixed_precision: MixedPrecision = setting("auto", help="auto = bf16 on CUDA devices that support it, else none")
    pad_to_multiple_of: int = setting(8, ge=1, metavar="N", help="pad each batch to the longest text rounded up to "
                                      "a multiple of N (1 = the longest text)")
    pad_to_length: int | None = setting(None, gt=0, metavar="N", help="pad every batch to N tokens (fixed shapes; "
                                        "the seed system's way)")
    group_by_length: bool = setting(False, help="batch texts of similar length together (less padding; the order "
                                                "stays seeded)")
    save_state_every_s: float = setting(60.0, ge=0, flags=("--save-state-every",), metavar="SECONDS",
                                        help="save the resumable training state at an evaluation at most this "
                                             "often (0 = at every evaluation)")
    compile: bool = setting(False, cli=False, help="torch.compile the model (set by --compile)")
    compile_mode: CompileMode = setting("default", flags=("--compile",), nargs="?", metavar="MODE",
                                        help="torch.compile the model for training; MODE: reduce-overhead (CUDA "
                                             "graphs) pairs with --pad-to-multiple-of 32 so batches come in a few "
                                             "fixed widths")
    head_pooling: HeadPooling = setting("auto", help="classification head: auto = the sentence pooling the "
                                        "checkpoint declares (a sentence-transformers folder's 1_Pooling), else "
                                        "pooler; mean / cls = masked token mean / first token -> linear; pooler = "
                                        "the architecture's own HF head (BERT: [CLS] -> pooler -> linear), the "
                                        "reference system's")
    head_normalize: HeadNormalize = setting("auto", parse=_on_off_word, help="mean / cls head: the pooled vector at "
                                            "unit length before the linear layer; auto = on when the checkpoint "
                                            "declares it (sentence-transformers' Normalize: all-MiniLM-L6-v2), else off")
    head: MetaHead = setting("reinit", flags=("--head", "--head-init"), help="reinit = a new seeded head; probe = "
                             "a new head first fitted by logistic regression on the frozen features, C chosen on "
                             "dev, then everything fine-tuned (LP-FT)")
    head_learning_rate: float | None = setting(None, gt=0, flags=("--head-lr", "--head-learning-rate"),
                                               help="peak learning rate of the classification head (default: "
                                                    "--lr)")
    train_limit: int | None = setting(None, gt=0, flags=("--train-limit", "--train_example_num"),
                                      help="use the first N training examples (warns when the file has another "
                                           "count)")
    dev_limit: int | None = setting(None, gt=0, flags=("--dev-limit", "--dev_example_num"),
                                    help="first N dev examples")
    test_limit: int | None = setting(None, gt=0, flags=("--test-limit", "--eval_example_num"),
                                     help="first N test examples")


@dataclass(frozen=True)
class TrainRun(Source):
    """What names one training run besides its data and model."""

    out: str = setting("runs/train", flags=("--out", "--model_save_dir"), help="run folder (default: see below)")
    seed: int = setting(42, ge=0, le=MAX_SEED, help="run seed: shuffling, head init, dropout, domain permutations")
    resume: bool = setting(False, help="continue an interrupted run from its last evaluation")
    force: bool = setting(False, help="overwrite an existing run folder")
    task_name: str | None = setting(None, flags=("--task-name", "--task_name"),
                                    help="names the run and its snapshots like the seed system")


@dataclass(frozen=True)
class TrainConfig(TrainSettings, TrainRun):
    """One training run (stage 2 or 3) with the shared settings."""


@dataclass(frozen=True)
class MetaSettings(TrainSettings):
    """Stage 2 settings: typicality-weighted CE + lambda * domain loss on all domains."""

    learning_rate: float = redefault(TrainSettings, "learning_rate", 5e-5)
    domain_loss: DomainLoss = setting("corrupt", help="corrupt = the paper's domain corruption, grl = "
                                                      "gradient-reversal ablation, none = no domain loss")
    domain_weight: float = setting(0.1, ge=0, help="lambda, the weight of the domain loss")
    BEFORE_SETTING: ClassVar[dict[str, Any]] = {**TrainSettings.BEFORE_SETTING, **REFERENCE_BEHAVIOUR}
    corruption: Corruption = setting("uniform", help="corrupted domain labels: uniform = drawn independently of "
                                     "the true domain, uniformly over the group's; permute = the reference code's "
                                     "in-batch permutation (at small batches it often keeps the true domain)")
    domain_embedding: bool = setting(False, parse=_on_off, flags=("--domain-embedding",),
                                     help="give the domain head a learned embedding of the true domain (the "
                                          "reference head; it lets the head fit the target without the encoder); "
                                          "in files and --meta: domain_embedding=on|off")
    domain_layers: tuple[int, ...] = setting((), ge=0, nargs=None, help="0-based encoder layers of the domain "
                                             "loss, e.g. 2,5,8,11 (default: 4 evenly spaced ending at the last)")
    typicality: bool = setting(True, flags=("--no-typicality",), help="weight every example 1.0 (ablation); "
                                                                       "default: scores of `metaft preprocess`")
    typicality_norm: TypicalityNorm = setting("mean-global", help="mean-global = divide the scores by their overall "
                                              "mean (chosen on g1 dev sets), mean = by their per-domain mean, none "
                                              "= use them as they are")


@dataclass(frozen=True)
class MetaConfig(MetaSettings, TrainConfig):
    """Stage 2: meta fine-tuning on all domains of one data folder."""

    out: str = redefault(TrainRun, "out", "runs/meta")


@dataclass(frozen=True)
class FinetuneSettings(TrainSettings):
    """Stage 3 settings: fine-tuning on one domain."""

    learning_rate: float = redefault(TrainSettings, "learning_rate", 1e-5)
    head: Head = setting("probe", flags=("--head", "--head-init"), help="probe = a new head first fitted by logistic "
                         "regression on the frozen features, C chosen on dev, then everything fine-tuned (LP-FT); "
                         "reinit = a new seeded head (the reference system's); keep = the meta-learner's head")


@dataclass(frozen=True)
class FinetuneConfig(FinetuneSettings, TrainConfig):
    """Stage 3: fine-tune a meta-learner (or a raw checkpoint: the baseline) on one domain."""

    out: str = redefault(TrainRun, "out", "runs/finetune")
    domain: str | None = setting(None, help="the domain to use when the data folder holds several")


@dataclass(frozen=True)
class PredictConfig(Settings):
    """``metaft predict``: classify texts with a saved model."""

    model: str = setting("", help="a fine-tuned model folder (e.g. .../finetune/mft/SST-2/best)")
    input: str = setting("-", help="a text file, one text per line, or - for standard input")
    max_length: int = redefault(EncoderSettings, "max_length", EncoderSettings.max_length, flags=())
    batch_size: int = redefault(TrainSettings, "eval_batch_size", TrainSettings.eval_batch_size, flags=(),
                                help="texts classified at once")

    def check(self) -> None:
        if not self.model:
            raise ConfigError("give the model: metaft predict --model DIR")


@dataclass(frozen=True)
class StudyConfig(Saved):
    """A whole study: study-wide settings and one section per stage."""

    out: str = setting("runs/study", help="run folder")
    seeds: tuple[int, ...] = redefault(PrepareConfig, "seeds", (42,), help="k-shot sampling and run seeds; the "
                                       f"full study uses {' '.join(map(str, STANDARD_SEEDS))}")
    model: str = redefault(Source, "model", DEFAULT_MODEL, flags=())
    ablations: tuple[Ablation, ...] = setting((), nargs=None, parse=_ablations,
                                              help=f"comma-separated: {','.join(ABLATIONS)} (or 'all')")
    force: bool = setting(False, help="redo finished units")
    pca: bool = setting(True, flags=("--no-pca",), help="skip the embedding PCA plot")
    jobs: int = setting(0, ge=0, help="units run at once in worker processes (0 = automatic: 2 on a CPU-only "
                                      "machine with 2+ cores, else 1)")
    pack: int | None = setting(None, ge=1, parse=parse_pack, metavar="N|auto", help="runs trained together in one "
                               "process, in lock step: auto (default; saved as null) = banks as large as memory "
                               "allows on CUDA, 1 on CPU; 1 = one run at a time (--jobs); N = banks of at most N")
    label_noise: float = setting(0.0, ge=0, lt=1, metavar="P", help="positive control: flip a seeded fraction P of "
                                 "the meta-training labels (the cross-domain train split only; recorded in its "
                                 "manifest) and report the typicality AUROC at finding them and MFT vs "
                                 "no-typicality (added as an ablation)")
    prepare: SplitSettings = setting(factory=SplitSettings, cli=False, help="how the splits are drawn")
    typicality: TypicalitySettings = setting(factory=TypicalitySettings, cli=False, help="stage 1")
    meta: MetaSettings = setting(factory=lambda: MetaSettings(**SEED_RECIPE_META), cli=False, help="stage 2")
    finetune: FinetuneSettings = setting(factory=lambda: FinetuneSettings(**SEED_RECIPE_FINETUNE), cli=False,
                                         help="stage 3")

    EXTENDABLE: ClassVar[tuple[str, ...]] = ("out", "seeds", "ablations", "force", "pca", "jobs", "pack")  # may change

    def check(self) -> None:
        _nonempty(self.seeds, "seeds")
        if self.label_noise and "no-typicality" not in self.ablations:  # the control compares MFT with it
            object.__setattr__(self, "ablations", (*self.ablations, "no-typicality"))

    @classmethod
    def from_dict(cls, data: dict[str, Any], prefix: str = "") -> StudyConfig:
        """Also reads the flat layout of earlier versions (``group: g1``, ``k: 16`` beside ``seeds``)."""
        if isinstance(data, dict):
            flat = {k: v for k, v in data.items() if k in field_map(SplitSettings)}
            if flat:
                section = data.get("prepare", {})
                if not isinstance(section, dict):
                    raise ConfigError(f"{prefix}prepare must be a mapping of settings, got {section!r}")
                data = {**{k: v for k, v in data.items() if k not in flat}, "prepare": {**section, **flat}}
        return super().from_dict(data, prefix)


def reference_behaviour(settings: Any) -> Any:
    """``settings`` (a stage's, or a study's: its meta and finetune sections) with :data:`REFERENCE_BEHAVIOUR`."""
    if isinstance(settings, StudyConfig):
        return settings.replace(meta=reference_behaviour(settings.meta),
                                finetune=reference_behaviour(settings.finetune))
    return settings.replace(**{k: v for k, v in REFERENCE_BEHAVIOUR.items() if k in field_map(type(settings))})


def study_config_from(file_settings: StudyConfig | dict[str, Any] | None, overrides: dict[str, Any]) -> StudyConfig:
    """Merge a config file's settings with CLI overrides (CLI wins); sections merge key by key over the file's,
    and the file's over the study's defaults."""
    if isinstance(file_settings, dict):
        file_settings = StudyConfig.from_dict(file_settings) if file_settings else None
    merged = file_settings.to_dict() if file_settings is not None else {}
    for key, value in overrides.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return StudyConfig.from_dict(merged)


def config_from_file(path: str | Path) -> StudyConfig:
    """A study's settings from a YAML or JSON file; errors name the file and the setting."""
    try:
        return StudyConfig.from_dict(load_config_file(path))
    except ConfigError as exc:
        raise ConfigError(exc if str(exc).startswith(str(path)) else f"{path}: {exc}") from None

