"""The main job: prepare -> typicality -> meta-finetune -> finetune every domain, against the baseline.

One unit of work per (seed, stage, variant, domain), each in its own folder with its own result file;
a rerun skips finished units (``force`` redoes them), so an interrupted study resumes where it stopped.

Run folder::

    RUN/config.json            resolved settings
    RUN/data/...               prepared splits (k-shot-cross/<group>/<K>-<seed>, k-shot-single/<D>/<K>-<seed>)
    RUN/seed-<s>/meta/<variant>/               meta-learner run (meta_results.json, metrics.jsonl, snapshot)
    RUN/seed-<s>/finetune/<variant>/<domain>/  per-domain run (results.json, metrics.jsonl, best/)
    RUN/seed-<s>/pca.json      2-D PCA of dev embeddings before / after meta fine-tuning
    RUN/study.json, RUN/report.md, RUN/*.png
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import (
    STANDARD_SEEDS,
    FinetuneConfig,
    MetaConfig,
    PrepareConfig,
    TypicalityConfig,
    _check,
    _Config,
    parse_k,
)
from .errors import ConfigError
from .fileio import write_json
from .hub import DEFAULT_MODEL
from .locking import run_lock
from .report import BASELINE

logger = logging.getLogger(__name__)

# meta-stage settings of each MFT variant; "baseline" has no meta stage
VARIANTS: dict[str, dict[str, Any]] = {
    "mft": {"typicality": True, "domain_loss": "corrupt"},
    "no-typicality": {"typicality": False, "domain_loss": "corrupt"},
    "no-domain-loss": {"typicality": True, "domain_loss": "none"},
    "multitask": {"typicality": False, "domain_loss": "none"},
    "grl": {"typicality": True, "domain_loss": "grl"},
}
ABLATIONS = tuple(v for v in VARIANTS if v != "mft")
_EXTENDABLE = ("out", "seeds", "ablations", "force", "pca", "jobs")  # study settings a rerun may change

# The reference few-shot recipe ([OF] README), used unchanged (not tuned on any split).
SEED_RECIPE_META = {"epochs": 63, "batch_size": 4, "learning_rate": 5e-5, "eval_every": 100}
SEED_RECIPE_FINETUNE = {"epochs": 64, "batch_size": 2, "learning_rate": 1e-5, "eval_every": 50}


@dataclass(frozen=True)
class StudyConfig(_Config):
    """The whole study. ``meta`` / ``finetune`` / ``typicality`` override those stages' settings."""

    out: str = "runs/study"
    group: str | None = "g1"
    domains: tuple[str, ...] = ()
    input: str | None = None
    corpora: str | None = None
    k: int | None = 16
    seeds: tuple[int, ...] = (42,)
    model: str = DEFAULT_MODEL
    ablations: tuple[str, ...] = ()
    force: bool = False
    pca: bool = True
    jobs: int = 0  # units run at once in worker processes; 0 = automatic (see resolve_jobs)
    typicality: dict = field(default_factory=dict)
    meta: dict = field(default_factory=lambda: dict(SEED_RECIPE_META))
    finetune: dict = field(default_factory=lambda: dict(SEED_RECIPE_FINETUNE))

    def __post_init__(self):
        object.__setattr__(self, "k", parse_k(self.k))  # a config file may say k: full
        _check(len(self.seeds) > 0, "give at least one seed")
        _check(self.jobs >= 0, f"jobs must be >= 0 (0 = automatic), got {self.jobs}")
        unknown = [a for a in self.ablations if a not in ABLATIONS]
        _check(not unknown, f"unknown ablation(s) {unknown}; choose from {', '.join(ABLATIONS)}")
        for name, cls in (("typicality", TypicalityConfig), ("meta", MetaConfig), ("finetune", FinetuneConfig)):
            allowed = {f.name for f in dataclasses.fields(cls)} - {"data_dir", "model", "out", "seed"}
            bad = sorted(set(getattr(self, name)) - allowed)
            _check(not bad, f"{name}: unknown or study-managed setting(s) {bad}")

    @property
    def variants(self) -> tuple[str, ...]:
        return (BASELINE, "mft", *self.ablations)


def _data_dir(cfg: StudyConfig, run: Path, layout: str, name: str, seed: int) -> Path:
    """A prepared split folder of the study: ``layout`` k-shot-cross (``name`` = group) or k-shot-single (domain)."""
    return run / "data" / layout / name / f"{'full' if cfg.k is None else cfg.k}-{seed}"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def machine_info() -> dict[str, Any]:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"description": f"{platform.machine()}, {os.cpu_count()} CPU cores, device {device}, "
                           f"torch {torch.__version__}, Python {platform.python_version()}",
            "device": device, "cpus": os.cpu_count()}


def _prepare(cfg: StudyConfig, run: Path) -> tuple[str, list[str]]:
    """Write (or rewrite identically) the splits; returns the group name and its domains."""
    from .splits import prepare

    folders = prepare(PrepareConfig(out=str(run / "data"), corpora=cfg.corpora, group=cfg.group,
                                    domains=cfg.domains, input=cfg.input, k=cfg.k, seeds=cfg.seeds))
    cross = next(f for f in folders if f.parts[-3] == "k-shot-cross")
    manifest = json.loads((cross / "manifest.json").read_text(encoding="utf-8"))
    return cross.parts[-2], list(manifest["domains"])


def _typicality(cfg: StudyConfig, cross: Path) -> float:
    from .typicality import compute_typicality

    if (cross / "typicality.tsv").is_file() and (cross / "typicality.json").is_file() and not cfg.force:
        return 0.0
    t0 = time.perf_counter()
    compute_typicality(TypicalityConfig(**{**cfg.typicality, "data_dir": str(cross), "model": cfg.model}))
    return time.perf_counter() - t0


def _unit_record(seed: int, variant: str, domain: str, result: dict, path: Path, run: Path) -> dict:
    test = result["test"]
    return {"seed": seed, "variant": variant, "domain": domain, "test_accuracy": test["accuracy"],
            "test_macro_f1": test["macro_f1"], "test_n": test["n"], "dev_accuracy": result["best_dev_accuracy"],
            "wall_time_s": result.get("timings", {}).get("total_s", 0.0), "path": str(path.relative_to(run))}


def run_study(cfg: StudyConfig) -> dict:
    """Run (or resume) the study; writes ``study.json`` after every unit and ``report.md`` at the end."""
    with run_lock(cfg.out):
        return _run_study(cfg)


def _check_same_study(run: Path, cfg: StudyConfig) -> None:
    """Finished units are reused, so a rerun must not change what they depend on (seeds and ablations may)."""
    saved = _read_json(run / "config.json")
    if saved is None or cfg.force:
        return
    if diff := cfg.changed_from(saved, _EXTENDABLE):
        raise ConfigError(f"{run}: holds a study with other settings ({cfg.describe(diff)}); rerun it with the "
                          "same settings (seeds and ablations may change), pass --force to redo it, or choose "
                          "another folder")


@dataclass(frozen=True)
class _Unit:
    """One training run of the study: a meta stage (``domain`` None) or a fine-tuning run."""

    seed: int
    variant: str
    domain: str | None
    data: Path
    out: Path

    @property
    def needs(self) -> tuple[int, str, None] | None:
        """The meta stage this fine-tuning run starts from (None: the baseline and meta stages need nothing)."""
        return None if self.domain is None or self.variant == BASELINE else (self.seed, self.variant, None)

    @property
    def key(self) -> tuple[int, str, str | None]:
        return self.seed, self.variant, self.domain

    @property
    def results_file(self) -> Path:
        return self.out / ("results.json" if self.domain else "meta_results.json")


def _plan(cfg: StudyConfig, run: Path, group: str, domains: list[str]) -> list[_Unit]:
    """Every unit in report order (per seed: meta stages, then per domain every variant)."""
    units = []
    for seed in cfg.seeds:
        cross = _data_dir(cfg, run, "k-shot-cross", group, seed)
        units += [_Unit(seed, v, None, cross, run / f"seed-{seed}" / "meta" / v) for v in cfg.variants[1:]]
        for domain in domains:
            single = _data_dir(cfg, run, "k-shot-single", domain, seed)
            units += [_Unit(seed, v, domain, single, run / f"seed-{seed}" / "finetune" / v / domain)
                      for v in cfg.variants]
    return units


def _finished(cfg: StudyConfig, unit: _Unit) -> dict | None:
    """The results of a finished unit (None if it has none yet, or under ``force``)."""
    return None if cfg.force else _read_json(unit.results_file)


def _snapshot(meta_unit: _Unit, results: dict) -> str:
    """The best meta-learner folder of a finished meta stage (what its fine-tuning runs start from)."""
    return str((meta_unit.out / results["best_model_name"]).resolve())


def _run_unit(cfg: StudyConfig, unit: _Unit, model: str, group: str) -> dict:
    """Run one unit unless it is finished (in this process or a worker); returns its results file's content."""
    from .stages import finetune, meta_finetune

    done = _finished(cfg, unit)
    if done is not None:
        return done
    common = dict(data_dir=str(unit.data), out=str(unit.out), seed=unit.seed,
                  resume=not cfg.force and unit.out.exists(), force=cfg.force)
    if unit.domain is None:
        logger.info("seed %s: meta-finetune %s", unit.seed, unit.variant)
        settings = {**cfg.meta, **VARIANTS[unit.variant], "task_name": group}
        meta_finetune(MetaConfig(**settings, model=cfg.model, **common))
    else:
        logger.info("seed %s: finetune %s on %s", unit.seed, unit.variant, unit.domain)
        finetune(FinetuneConfig(**cfg.finetune, model=model, **common))
    return _read_json(unit.results_file)


def resolve_jobs(jobs: int) -> int:
    """``0`` = automatic: 2 on a CPU-only machine with 2+ cores (few-shot steps are too small to keep two
    cores busy in one process), else 1 (one GPU; or several processes under ``accelerate launch``)."""
    if jobs > 0:
        return jobs
    import torch

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return 2 if not torch.cuda.is_available() and not distributed and (os.cpu_count() or 1) >= 2 else 1


def _worker_init(threads: int, log_level: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(Exception):  # Linux: die with the study process (no orphan keeps a unit locked)
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _work(cfg: StudyConfig, unit: _Unit) -> float:
    """A unit's training work in examples seen (epochs x training examples), to weight the time estimate."""
    stage = MetaConfig(**cfg.meta) if unit.domain is None else FinetuneConfig(**cfg.finetune)
    with open(unit.data / "train.tsv", encoding="utf-8") as fh:
        examples = sum(1 for line in fh if line.strip())
    return stage.epochs * min(examples, stage.train_limit or examples)


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def _execute(cfg: StudyConfig, plan: list[_Unit], group: str, on_done) -> None:
    """Run the unfinished units of ``plan``, ``resolve_jobs(cfg.jobs)`` at a time in worker processes,
    each as soon as the meta stage it starts from is done, and call ``on_done(unit, results)`` as each one
    completes. Finished units are not rerun (they are reported first, in plan order)."""
    snapshots: dict[tuple, str] = {}  # meta stages done: key -> best meta-learner folder
    # units run by this call; the estimate: work left / (work done per second a worker was busy x workers)
    progress = {"done": 0, "start": time.monotonic(), "work_done": 0.0, "busy_s": 0.0, "jobs": 1}
    work: dict[tuple, float] = {}  # unit key -> _work, of the units this call runs

    def model_for(unit: _Unit) -> str:
        return cfg.model if unit.needs is None else snapshots[unit.needs]

    def finish(unit: _Unit, res: dict, busy_s: float | None = None) -> None:
        if unit.domain is None:
            snapshots[unit.key] = _snapshot(unit, res)
        on_done(unit, res)
        if busy_s is not None:  # run by this call (not found finished)
            progress["done"] += 1
            progress["work_done"] += work[unit.key]
            progress["busy_s"] += busy_s
            rate = progress["work_done"] / max(progress["busy_s"], 1e-9) * progress["jobs"]
            left = sum(work.values()) - progress["work_done"]
            logger.info("%d of %d units done (seed %s %s%s), %s elapsed, about %s to go", progress["done"],
                        len(work), unit.seed, unit.variant, f" {unit.domain}" if unit.domain else "",
                        _duration(time.monotonic() - progress["start"]), _duration(left / rate))

    todo = []
    for unit in plan:
        done = _finished(cfg, unit)
        if done is not None and (unit.needs is None or unit.needs in snapshots):
            finish(unit, done)
        else:
            todo.append(unit)
    jobs = min(resolve_jobs(cfg.jobs), len(todo)) if todo else 1
    progress["jobs"] = jobs
    work.update((unit.key, _work(cfg, unit)) for unit in todo)
    if jobs <= 1:
        while todo:
            unit, started = todo.pop(0), time.monotonic()
            finish(unit, _run_unit(cfg, unit, model_for(unit), group), time.monotonic() - started)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // jobs)
    logger.info("running %d units, %d at a time (%d thread(s) each)", len(todo), jobs, threads)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads, logging.getLogger().getEffectiveLevel())) as pool:
        running: dict = {}  # future -> (unit, start time)
        while todo or running:
            for unit in [u for u in todo if u.needs is None or u.needs in snapshots][:jobs - len(running)]:
                todo.remove(unit)
                running[pool.submit(_run_unit, cfg, unit, model_for(unit), group)] = (unit, time.monotonic())
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                unit, started = running.pop(future)
                try:
                    finish(unit, future.result(), time.monotonic() - started)
                except BaseException:
                    for other in running:
                        other.cancel()
                    raise


def _run_study(cfg: StudyConfig) -> dict:
    from .report import write_report

    run = Path(cfg.out)
    _check_same_study(run, cfg)
    cfg.save(run / "config.json")
    group, domains = _prepare(cfg, run)
    study: dict[str, Any] = {"config": {**cfg.to_dict(), "group": group, "domains": domains},
                             "machine": machine_info(), "hyperparameter_note": hyperparameter_note(cfg),
                             "typicality": [], "meta": [], "units": [], "pca": []}
    for seed in cfg.seeds:
        cross = _data_dir(cfg, run, "k-shot-cross", group, seed)
        seconds = _typicality(cfg, cross)
        study["typicality"].append({"seed": seed, "path": str((cross / "typicality.tsv").relative_to(run)),
                                    "wall_time_s": seconds})
    study["frozen_lr"] = _frozen_lr(cfg, run, domains)
    plan = _plan(cfg, run, group, domains)
    metas: dict[tuple, dict] = {}
    units: dict[tuple, dict] = {}
    mft_snapshots: dict[int, str] = {}  # seed -> MFT meta-learner (for the PCA plot)

    def on_done(unit: _Unit, res: dict) -> None:
        if unit.domain is None:
            metas[unit.key] = {"seed": unit.seed, "variant": unit.variant, "dev_accuracy": res["best_dev_accuracy"],
                               "wall_time_s": res.get("wall_time_s", 0.0), "path": str(unit.out.relative_to(run))}
            if unit.variant == "mft":
                mft_snapshots[unit.seed] = _snapshot(unit, res)
        else:
            units[unit.key] = _unit_record(unit.seed, unit.variant, unit.domain, res, unit.out, run)
        study["meta"] = [metas[u.key] for u in plan if u.key in metas]
        study["units"] = [units[u.key] for u in plan if u.key in units]
        write_json(run / "study.json", study)

    _execute(cfg, plan, group, on_done)
    if cfg.pca:
        for seed in cfg.seeds:
            pca_path = run / f"seed-{seed}" / "pca.json"
            if not pca_path.is_file() or cfg.force:
                cross = _data_dir(cfg, run, "k-shot-cross", group, seed)
                embedding_pca(cross, cfg.model, mft_snapshots[seed], pca_path)
            study["pca"].append({"seed": seed, "path": str(pca_path.relative_to(run))})
    write_json(run / "study.json", study)
    study["report"] = str(write_report(run))
    return study


def _frozen_lr(cfg: StudyConfig, run: Path, domains: list[str]) -> list[dict]:
    """The report's frozen-LR reference row: per seed and domain, a logistic regression on frozen embeddings."""
    from .probe import frozen_lr_file

    rows, cache = [], {}  # one encoder and one embedding per text for all seeds
    for seed in cfg.seeds:
        folders = {d: _data_dir(cfg, run, "k-shot-single", d, seed) for d in domains}
        out = run / f"seed-{seed}" / "frozen_lr.json"
        rows += [{**r, "seed": seed} for r in frozen_lr_file(folders, cfg.model, out, cfg.force, cache)]
    return rows


def hyperparameter_note(cfg: StudyConfig) -> str:
    """Say which settings the study used and how they were chosen (never on test sets)."""
    def fmt(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "defaults"

    origin = ("the reference few-shot recipe, unchanged" if (cfg.meta, cfg.finetune) ==
              (SEED_RECIPE_META, SEED_RECIPE_FINETUNE) else "set in config.json")
    return (f"{origin} (meta stage: {fmt(cfg.meta)}; fine-tuning: {fmt(cfg.finetune)}); no setting was tuned "
            "on a test set, and every checkpoint is selected on a dev set")


def nearest_centroid_accuracy(x: np.ndarray, groups: list[str]) -> float:
    """How well domains can be told apart: share of points whose nearest (cosine) domain centroid is their own."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    names = sorted(set(groups))
    cents = np.stack([x[[g == n for g in groups]].mean(0) for n in names])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True).clip(1e-12)
    pred = np.asarray(names)[(x @ cents.T).argmax(1)]
    return float((pred == np.asarray(groups)).mean())


def pca_2d(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project each embedding set onto its own first two principal components."""
    out = []
    for x in (before, after):
        xc = x - x.mean(0)
        _, _, vt = np.linalg.svd(xc, full_matrices=False)
        out.append(xc @ vt[:2].T)
    return out[0], out[1]


def embedding_pca(cross: Path, model: str, meta_folder: str, out: Path) -> Path:
    """Embed the cross-domain dev set with the pre-trained and the meta-learned encoder; save 2-D PCA."""
    from .corpora import read_mft_tsv
    from .hub import load_encoder, load_tokenizer
    from .modeling import MetaLearner
    from .typicality import embed_examples

    examples = read_mft_tsv(cross / "dev.tsv")
    tok = load_tokenizer(model)
    before = embed_examples(examples, load_encoder(model), tok, "mean")
    encoder = MetaLearner.load(meta_folder).classifier.base_model
    after = embed_examples(examples, encoder, tok, "mean")
    domains = [ex.domain for ex in examples]
    pb, pa = pca_2d(before.astype(np.float64), after.astype(np.float64))
    write_json(out, {"domains": domains, "before": pb.round(5).tolist(), "after": pa.round(5).tolist(),
                     "before_domain_separation": nearest_centroid_accuracy(before, domains),
                     "after_domain_separation": nearest_centroid_accuracy(after, domains)})
    return out


def study_config_from(file_settings: dict[str, Any], overrides: dict[str, Any]) -> StudyConfig:
    """Merge a config file's settings with CLI overrides (CLI wins); stage sections merge key by key."""
    merged = dict(file_settings)
    for key, value in overrides.items():
        if key in ("meta", "finetune", "typicality"):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    defaults = StudyConfig()
    for key in ("meta", "finetune"):
        merged[key] = {**getattr(defaults, key), **merged.get(key, {})}
    try:
        return StudyConfig.from_dict(merged)
    except TypeError as exc:
        raise ConfigError(f"bad study settings: {exc}") from None


__all__ = ["ABLATIONS", "STANDARD_SEEDS", "StudyConfig", "VARIANTS", "run_study"]
