"""One small frozen dataclass per stage, validated on creation; saved as ``config.json`` in run folders."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError
from .fileio import write_json
from .hub import DEFAULT_MODEL

STANDARD_SEEDS = (13, 21, 42, 87, 100)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class _Config:
    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else (str(v) if isinstance(v, Path) else v)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        data = renamed_settings(data)
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown setting(s) {', '.join(unknown)}")
        kwargs = {}
        for k, v in data.items():
            kwargs[k] = tuple(v) if isinstance(v, list) else v
        return cls(**kwargs)

    def changed_from(self, saved: dict[str, Any], ignored: Collection[str] = ()) -> dict[str, tuple[Any, Any]]:
        """Settings that differ from a saved ``config.json``: {name: (saved, now)}. A setting the saved file
        lacks (written by a metaft that did not have it yet) counts as what metaft did before it existed
        (``BEFORE_SETTING``, else its default), so older runs still resume, and only with the same behaviour."""
        defaults = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                    for f in dataclasses.fields(self)}
        defaults.update({k: v for k, v in BEFORE_SETTING.items() if k in defaults})
        defaults = json.loads(json.dumps({k: v for k, v in defaults.items() if v is not dataclasses.MISSING}))
        saved = renamed_settings(saved)
        now = json.loads(json.dumps(self.to_dict()))
        changed = {}
        for k in sorted(set(saved) | set(now)):
            old = saved[k] if k in saved else defaults.get(k)
            if k not in ignored and old != now.get(k):
                changed[k] = (old, now.get(k))
        return changed

    @staticmethod
    def describe(changed: dict[str, tuple[Any, Any]]) -> str:
        """``name: saved -> now, ...`` for error messages about a :meth:`changed_from` result."""
        return ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict(), sort_keys=True)


RENAMED = {"head": "head_init"}  # settings saved under an older name: old -> new
# what a run saved before these settings existed did (a changed default must not pass for the old behaviour)
BEFORE_SETTING = {"head_pooling": "pooler", "head_init": "reinit"}


def renamed_settings(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with settings saved under an older name (``RENAMED``) under their current name."""
    return {RENAMED.get(k, k): v for k, v in data.items()}


def parse_k(value: Any) -> int | None:
    """K, examples per label and domain: a positive integer, or None / "full" for the whole pool."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "full"):
        return None
    try:
        k = int(value)
    except (TypeError, ValueError):
        k = 0
    if isinstance(value, bool) or k <= 0 or str(k) != str(value).strip():
        raise ConfigError(f"k must be a positive integer or 'full', got {value!r}")
    return k


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class PrepareConfig(_Config):
    """Stage 0: raw corpora -> k-shot (or full) splits in the MFT layout."""

    out: str = "data"
    corpora: str | None = None  # default: $METAFT_CORPORA
    group: str | None = "g1"
    domains: tuple[str, ...] = ()
    input: str | None = None  # a user's own multi-domain file (layout TSV or JSONL)
    test: str | None = None  # with input: the user's test file (default: hold out 20% per domain)
    k: int | None = 16  # None = full pool
    seeds: tuple[int, ...] = STANDARD_SEEDS
    dev_fraction: float = 0.1  # only with k=None

    def __post_init__(self):
        object.__setattr__(self, "k", parse_k(self.k))  # a config file may say k: full
        _check(len(self.seeds) > 0, "give at least one seed")
        _check(0.0 < self.dev_fraction < 1.0, f"dev_fraction must be in (0, 1), got {self.dev_fraction}")


@dataclass(frozen=True)
class TypicalityConfig(_Config):
    """Stage 1: frozen-encoder prototypes and typicality scores."""

    data_dir: str = ""
    model: str = DEFAULT_MODEL
    pooling: str = "mean"  # mean (masked) | cls | pooler
    alpha: float = 0.5
    aggregation: str = "mean-prototype"  # mean-prototype | mean-cosine
    max_length: int = 128
    batch_size: int = 64
    trust_remote_code: bool = False
    use_cache: bool = True  # False re-tokenises and rewrites the feature cache (seed flag --resave_ofrecord)

    def __post_init__(self):
        _check(self.pooling in ("mean", "cls", "pooler"), f"pooling must be mean, cls or pooler, got {self.pooling!r}")
        _check(0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}")
        _check(self.aggregation in ("mean-prototype", "mean-cosine"),
               f"aggregation must be mean-prototype or mean-cosine, got {self.aggregation!r}")
        _check(self.max_length > 2, f"max_length must be > 2, got {self.max_length}")
        _check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")


@dataclass(frozen=True)
class TrainConfig(_Config):
    """Settings shared by stage 2 (meta fine-tuning) and stage 3 (per-domain fine-tuning)."""

    HEAD_INITS: ClassVar[tuple[str, ...]] = ("reinit", "probe")

    data_dir: str = ""
    model: str = DEFAULT_MODEL
    out: str = "runs/train"
    seed: int = 42
    epochs: float = 3.0
    batch_size: int = 8
    eval_batch_size: int = 64
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 128
    eval_every: int = 0  # steps; 0 = once per epoch
    dropout: float = 0.1
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    pad_to_multiple_of: int = 8  # round each batch's width up to a multiple of this; 1 = the longest text
    pad_to_length: int | None = None  # pad every batch to this many tokens (fixed shapes; the seed system's way)
    group_by_length: bool = False  # batches of similar lengths (less padding); order still seeded
    save_state_every_s: float = 60.0  # resumable state at an evaluation at most this often; 0 = every evaluation
    compile: bool = False  # torch.compile the model (static shapes when batches are padded to fixed widths)
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune
    resume: bool = False
    force: bool = False
    trust_remote_code: bool = False
    train_limit: int | None = None  # seed flag --train_example_num: use at most this many examples
    dev_limit: int | None = None
    test_limit: int | None = None
    use_cache: bool = True  # False: tokenise afresh, bypassing the feature cache (seed flag --resave_ofrecord)
    head_pooling: str = "pooler"  # auto | mean | cls | pooler: the classification head (see metaft.heads)
    head_init: str = "reinit"  # reinit | probe (LP-FT: fit the fresh head on frozen features first) | keep (stage 3)
    head_learning_rate: float | None = None  # the classification head's peak learning rate; None = learning_rate

    def __post_init__(self):
        _check(self.head_pooling in ("auto", "mean", "cls", "pooler"),
               f"head_pooling must be auto, mean, cls or pooler, got {self.head_pooling!r}")
        _check(self.head_init in self.HEAD_INITS,
               f"head_init must be {' or '.join(self.HEAD_INITS)} here, got {self.head_init!r}")
        _check(self.head_learning_rate is None or self.head_learning_rate > 0,
               f"head_learning_rate must be positive, got {self.head_learning_rate}")
        _check(self.epochs > 0, f"epochs must be positive, got {self.epochs}")
        _check(self.batch_size > 0 and self.eval_batch_size > 0, "batch sizes must be positive")
        _check(self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}")
        _check(0.0 <= self.warmup_ratio < 1.0, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _check(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        _check(self.pad_to_multiple_of >= 1, f"pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")
        _check(self.save_state_every_s >= 0, f"save_state_every_s must be >= 0, got {self.save_state_every_s}")
        _check(self.mixed_precision in ("auto", "no", "bf16", "fp16"),
               f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        _check(self.compile_mode in COMPILE_MODES,
               f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        _check(self.max_length > 2, f"max_length must be > 2, got {self.max_length}")
        _check(self.pad_to_length is None or self.pad_to_length > 0,
               f"pad_to_length must be positive, got {self.pad_to_length}")


@dataclass(frozen=True)
class MetaConfig(TrainConfig):
    """Stage 2: meta fine-tuning on all domains (typicality-weighted CE + lambda * domain loss)."""

    out: str = "runs/meta"
    learning_rate: float = 5e-5
    domain_loss: str = "corrupt"  # corrupt | grl | none
    domain_weight: float = 0.1
    domain_layers: tuple[int, ...] = ()  # () = 4 evenly spaced layers ending at the last
    typicality: bool = True
    typicality_norm: str = "mean-global"  # none | mean (per domain) | mean-global (chosen on dev sets)
    task_name: str | None = None  # names the best snapshot folder like the seed system

    def __post_init__(self):
        super().__post_init__()
        _check(self.domain_loss in ("corrupt", "grl", "none"),
               f"domain_loss must be corrupt, grl or none, got {self.domain_loss!r}")
        _check(self.domain_weight >= 0, f"domain_weight must be >= 0, got {self.domain_weight}")
        _check(self.typicality_norm in ("none", "mean", "mean-global"),
               f"typicality_norm must be none, mean or mean-global, got {self.typicality_norm!r}")


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """Stage 3: fine-tune a meta-learner (or a raw checkpoint: the baseline) on one domain."""

    out: str = "runs/finetune"
    learning_rate: float = 1e-5
    HEAD_INITS: ClassVar[tuple[str, ...]] = ("reinit", "probe", "keep")  # keep: the meta-learner's head
    domain: str | None = None  # which domain of the data folder; None = the only one
    task_name: str | None = None  # names the run (results.json, default output folder) like the seed system


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON settings file into a dict."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - parser errors vary; report them as one line
        raise ConfigError(f"{path}: cannot parse config ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of settings")
    return data


