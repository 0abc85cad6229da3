"""The main job: prepare -> typicality -> meta-finetune -> finetune every domain, against the baseline.

One unit of work per (seed, stage, variant, domain), each in its own folder with its own result file;
a rerun skips finished units (``force`` redoes them), so an interrupted study resumes where it stopped.
Units run one per process (:func:`metaft.scheduler.execute`, ``pack`` 1) or, with ``pack`` (on CUDA by
default), stage by stage in banks of runs trained in lock step (:func:`execute_packed`); either way each unit's
folder and record are the same (a banked unit's times are its share of its bank's).

Run folder::

    RUN/config.json            resolved settings
    RUN/data/...               prepared splits (k-shot-cross/<group>/<K>-<seed>, k-shot-single/<D>/<K>-<seed>)
    RUN/seed-<s>/meta/<variant>/               meta-learner run (meta_results.json, metrics.jsonl, snapshot)
    RUN/seed-<s>/finetune/<variant>/<domain>/  per-domain run (results.json, metrics.jsonl, best/)
    RUN/seed-<s>/pca.json      2-D PCA of dev embeddings before / after meta fine-tuning
    RUN/seed-<s>/domain_probe.json  domain-probe accuracies before / after meta fine-tuning (mechanisms.py)
    RUN/data/k-shot-cross-noise<P>/...  with label_noise P: the meta stage's copy with flipped labels
    RUN/study.json, RUN/report.md, RUN/*.png
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

from .analysis import embedding_pca
from .config import VARIANTS, FinetuneConfig, MetaConfig, PrepareConfig, StudyConfig, TypicalityConfig
from .errors import ConfigError
from .fileio import read_json
from .inputs import check_inputs, file_sha256, stage_inputs
from .locking import run_lock
from .mechanisms import TYPICALITY_CHECKS
from .results import (
    BASELINE,
    STUDY_FILE,
    FinetuneResult,
    FrozenLRRecord,
    MetaRecord,
    MetaResult,
    PcaRecord,
    StudyResults,
    TypicalityRecord,
    UnitRecord,
    from_dict,
    write_study,
)
from .scheduler import Unit, execute, finished_results, meta_snapshot, unit_name

logger = logging.getLogger(__name__)


def variants(cfg: StudyConfig) -> tuple[str, ...]:
    """Every variant of the study: the baseline, MFT and the ablations asked for."""
    return (BASELINE, "mft", *cfg.ablations)


def _data_dir(cfg: StudyConfig, run: Path, layout: str, name: str, seed: int) -> Path:
    """A prepared split folder of the study: ``layout`` k-shot-cross (``name`` = group) or k-shot-single (domain).
    With ``label_noise`` the meta stage's cross-domain folder is the noisy copy."""
    if layout == "k-shot-cross" and cfg.label_noise:
        layout = f"k-shot-cross-noise{cfg.label_noise:g}"
    k = cfg.prepare.k
    return run / "data" / layout / name / f"{'full' if k is None else k}-{seed}"


def machine_info() -> dict[str, Any]:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"description": f"{platform.machine()}, {os.cpu_count()} CPU cores, device {device}, "
                           f"torch {torch.__version__}, Python {platform.python_version()}",
            "device": device, "cpus": os.cpu_count()}


SPLIT_PROTOCOL_KEYS = ("protocol", "test_rule", "test_texts_removed_from_pool", "sources")  # the same for every seed


def _recorded_typicality_s(run: Path) -> dict[int, float]:
    """Stage-1 wall times by seed in the study.json of an earlier run of this study (a resumed study does not redo
    stage 1); empty when there is none or it is damaged (it is rewritten anyway)."""
    try:
        return {int(t["seed"]): float(t["wall_time_s"]) for t in read_json(run / STUDY_FILE)["typicality"]}
    except (TypeError, KeyError, ValueError):
        return {}


def _prepare(cfg: StudyConfig, run: Path) -> tuple[str, list[str], dict]:
    """Write (or rewrite identically) the splits; returns the group name, its domains and how the splits were drawn
    (which corpora the pools were cleared against changes the draws: parts of one study must agree on it)."""
    from .splits import prepare

    folders = prepare(PrepareConfig(**cfg.prepare.values(), out=str(run / "data"), seeds=cfg.seeds, force=cfg.force))
    cross = next(f for f in folders if f.parts[-3] == "k-shot-cross")
    manifest = json.loads((cross / "manifest.json").read_text(encoding="utf-8"))
    return cross.parts[-2], list(manifest["domains"]), {k: manifest[k] for k in SPLIT_PROTOCOL_KEYS if k in manifest}


def _typicality(cfg: StudyConfig, cross: Path, recorded_s: float) -> float:
    """Stage 1 for one seed unless its scores are there already; its wall time in seconds (``recorded_s``, the
    time the study recorded when it ran, if it is not rerun)."""
    from .typicality import compute_typicality

    if (cross / "typicality.tsv").is_file() and (cross / "typicality.json").is_file() and not cfg.force:
        recorded = (read_json(cross / "typicality.json") or {}).get("train_sha256")
        if recorded != file_sha256(cross / "train.tsv"):
            raise ConfigError(f"{cross / 'typicality.tsv'}: computed from another train.tsv than the current one; "
                              "the meta stages trained on it would be stale: pass --force to redo the study")
        return recorded_s
    t0 = time.perf_counter()
    compute_typicality(TypicalityConfig(**cfg.typicality.values(), data_dir=str(cross), model=cfg.model))
    return time.perf_counter() - t0


def _unit_record(unit: Unit, result: FinetuneResult, run: Path) -> UnitRecord:
    """The unit's study record; ``wall_time_s`` is its ``timings.total_s`` (a banked run: its share of the bank's
    time plus its own preparation and test evaluation)."""
    test = result.test
    return UnitRecord(unit.seed, unit.variant, unit.domain, test["accuracy"], test["macro_f1"], test["n"],
                      result.best_dev_accuracy, result.timings.get("total_s", 0.0), str(unit.out.relative_to(run)))


def _meta_record(unit: Unit, result: MetaResult, run: Path) -> MetaRecord:
    return MetaRecord(unit.seed, unit.variant, result.best_dev_accuracy, result.wall_time_s,
                      str(unit.out.relative_to(run)))


def run_study(cfg: StudyConfig) -> StudyResults:
    """Run (or resume) the study; writes ``study.json`` after every unit and ``report.md`` at the end."""
    with run_lock(cfg.out):
        return _run_study(cfg)


def check_same_study(run: Path, cfg: StudyConfig) -> None:
    """Finished units are reused, so a rerun must not change what they depend on (seeds and ablations may)."""
    saved = read_json(run / "config.json")
    if saved is None or cfg.force:
        return
    try:
        saved = StudyConfig.from_saved(saved).to_dict()  # also the flat layout of earlier versions
    except ConfigError as exc:
        raise ConfigError(f"{run / 'config.json'}: the saved settings of this study are not valid ({exc}); pass "
                          "--force to redo the study, or choose another folder") from None
    if diff := cfg.changed_from(saved, StudyConfig.EXTENDABLE):
        raise ConfigError(f"{run}: holds a study with other settings ({cfg.describe(diff)}); rerun it with the "
                          "same settings (seeds and ablations may change), pass --force to redo it, or choose "
                          "another folder")


def plan_units(cfg: StudyConfig, run: Path, group: str, domains: list[str]) -> list[Unit]:
    """Every unit in report order (per seed: meta stages, then per domain every variant)."""
    units = []
    for seed in cfg.seeds:
        cross = _data_dir(cfg, run, "k-shot-cross", group, seed)
        units += [Unit(seed, v, None, cross, run / f"seed-{seed}" / "meta" / v) for v in variants(cfg)[1:]]
        for domain in domains:
            single = _data_dir(cfg, run, "k-shot-single", domain, seed)
            units += [Unit(seed, v, domain, single, run / f"seed-{seed}" / "finetune" / v / domain)
                      for v in variants(cfg)]
    return units


def stage_config(cfg: StudyConfig, unit: Unit, model: str, group: str) -> MetaConfig | FinetuneConfig:
    """The stage settings of a unit (``model``: what a fine-tuning run starts from)."""
    common = dict(data_dir=str(unit.data), out=str(unit.out), seed=unit.seed,
                  resume=not cfg.force and unit.out.exists(), force=cfg.force)
    if unit.domain is None:
        settings = {**cfg.meta.values(), **VARIANTS[unit.variant], "task_name": group}
        return MetaConfig(**settings, model=cfg.model, **common)
    return FinetuneConfig(**cfg.finetune.values(), model=model, **common)


def run_unit(cfg: StudyConfig, unit: Unit, model: str, group: str) -> MetaResult | FinetuneResult:
    """Run one unit unless it is finished (in this process or a worker); returns its results.

    A finished unit trained on other inputs (split files, typicality scores, start model) than the current
    ones is refused, never reused."""
    from .stages import finetune, meta_finetune

    stage = stage_config(cfg, unit, model, group)
    done = finished_results(cfg, unit)
    if done is not None:
        check_inputs(unit.out, stage_inputs(stage))
        return done
    if unit.domain is None:
        logger.info("seed %s: meta-finetune %s", unit.seed, unit.variant)
        meta_finetune(stage)
    else:
        logger.info("seed %s: finetune %s on %s", unit.seed, unit.variant, unit.domain)
        finetune(stage)
    return unit.results()


def execute_packed(cfg: StudyConfig, plan: list[Unit], group: str, on_done, pack: int | None) -> None:
    """Stage 2, then stage 3, each in banks (:func:`metaft.packed.run_packed`; ``pack``: runs per bank at most,
    None = as many as fit in memory): every pending meta unit of every seed and variant, then every pending
    fine-tuning unit whose start model is ready (the baseline's always is). Finished units are checked and
    reported first, as :func:`metaft.scheduler.execute` does. A run that diverged is reported (NonFiniteError)
    once every other unit is done; the units that start from it are not run."""
    from .evaluation import NonFiniteError
    from .packed import PreparedRun, run_packed
    from .packed_meta import PreparedMetaRun
    from .stages import finetune, meta_finetune

    logger.info("units run stage by stage in banks of %s runs in this process (jobs does not apply)",
                f"at most {pack}" if pack else "as many as fit in memory")
    snapshots: dict[tuple, str] = {}  # meta stages done: key -> best meta-learner folder
    count = {"done": 0, "todo": 0}
    errors: list[str] = []

    def finish(unit: Unit, res: MetaResult | FinetuneResult) -> None:
        if unit.domain is None:
            snapshots[unit.key] = meta_snapshot(unit, res)
        on_done(unit, res)

    for meta_stage in (True, False):
        todo = []
        for unit in (u for u in plan if (u.domain is None) == meta_stage):
            if unit.needs is not None and unit.needs not in snapshots:
                continue  # its meta stage diverged
            model = cfg.model if unit.needs is None else snapshots[unit.needs]
            if finished_results(cfg, unit) is not None:
                finish(unit, run_unit(cfg, unit, model, group))  # checked against its inputs, not rerun
            else:
                todo.append((unit, stage_config(cfg, unit, model, group)))
        count["todo"] += len(todo)

        def banked(i: int, _result, todo=todo) -> None:
            count["done"] += 1
            unit = todo[i][0]
            logger.info("%d of %d units done (%s)", count["done"], count["todo"], unit_name(unit))
            finish(unit, unit.results())

        prepared, one_run = (PreparedMetaRun, meta_finetune) if meta_stage else (PreparedRun, finetune)
        try:
            run_packed([c for _, c in todo], pack, prepared, one_run, banked)
        except NonFiniteError as exc:
            errors.append(str(exc))
    if errors:
        raise NonFiniteError("; ".join(errors))


def _run_study(cfg: StudyConfig) -> StudyResults:
    from .report import write_report

    run = Path(cfg.out)
    check_same_study(run, cfg)
    cfg.save(run / "config.json")
    group, domains, data = _prepare(cfg, run)
    if cfg.label_noise:
        from .noise import add_label_noise

        for seed in cfg.seeds:
            clean = run / "data" / "k-shot-cross" / group / _data_dir(cfg, run, "k-shot-cross", group, seed).name
            add_label_noise(clean, _data_dir(cfg, run, "k-shot-cross", group, seed), cfg.label_noise, seed)
    study = StudyResults(config={**cfg.to_dict(), "group": group, "domains": domains, "k": cfg.prepare.k},
                         machine=machine_info(), hyperparameter_note=hyperparameter_note(cfg), data=data)
    earlier = _recorded_typicality_s(run)
    for seed in cfg.seeds:
        cross = _data_dir(cfg, run, "k-shot-cross", group, seed)
        seconds = _typicality(cfg, cross, earlier.get(seed, 0.0))
        summary = read_json(cross / "typicality.json") or {}
        study.typicality.append(TypicalityRecord(seed, str((cross / "typicality.tsv").relative_to(run)), seconds,
                                                 **{k: summary.get(k) for k in TYPICALITY_CHECKS}))
    write_study(run / STUDY_FILE, study)  # stage 1's times survive an interruption before the first unit ends
    study.frozen_lr = _frozen_lr(cfg, run, domains)
    plan = plan_units(cfg, run, group, domains)
    metas: dict[tuple, MetaRecord] = {}
    units: dict[tuple, UnitRecord] = {}
    snapshots: dict[int, dict[str, str]] = {}  # seed -> variant -> best meta-learner (PCA plot, probes)

    def on_done(unit: Unit, res: MetaResult | FinetuneResult) -> None:
        if unit.domain is None:
            metas[unit.key] = _meta_record(unit, res, run)
            snapshots.setdefault(unit.seed, {})[unit.variant] = meta_snapshot(unit, res)
        else:
            units[unit.key] = _unit_record(unit, res, run)
        study.meta = [metas[u.key] for u in plan if u.key in metas]
        study.units = [units[u.key] for u in plan if u.key in units]
        write_study(run / STUDY_FILE, study)

    from .bank_plan import resolve_pack

    pack = resolve_pack(cfg.pack)
    if pack == 1:
        execute(cfg, plan, group, on_done, run_unit)
    else:
        execute_packed(cfg, plan, group, on_done, pack)
    if cfg.pca:
        for seed in cfg.seeds:
            pca_path = run / f"seed-{seed}" / "pca.json"
            if not pca_path.is_file() or cfg.force:
                cross = _data_dir(cfg, run, "k-shot-cross", group, seed)
                embedding_pca(cross, cfg.model, snapshots[seed]["mft"], pca_path)
            study.pca.append(PcaRecord(seed, str(pca_path.relative_to(run))))
    crosses = {seed: _data_dir(cfg, run, "k-shot-cross", group, seed) for seed in cfg.seeds}
    study.domain_probe, study.label_noise = study_checks(run, cfg.model, crosses, snapshots,
                                                         tuple(cfg.meta.domain_layers), cfg.force)
    write_study(run / STUDY_FILE, study)
    write_report(run)
    return study


def study_checks(run: Path, model: str, crosses: dict[int, Path], snapshots: dict[int, dict[str, str]],
                 layers: tuple[int, ...] = (), force: bool = False) -> tuple[list[dict], list[dict]]:
    """The study's domain-probe rows (one per seed and meta-learner variant) and label-noise rows (one per
    seed, only for noisy folders); probes are cached in ``RUN/seed-<s>/domain_probe.json``."""
    from .domain_probe import PROBE_FILE, seed_probes
    from .noise import noise_check

    probe_rows, noise_rows = [], []
    for seed, cross in crosses.items():
        path = run / f"seed-{seed}" / PROBE_FILE
        probes = seed_probes(cross, model, snapshots.get(seed, {}), path, seed, layers, force)
        probe_rows += [{"seed": seed, "variant": v, "before": probes["before"], "after": probes["after"][v],
                        "path": str(path.relative_to(run))} for v in snapshots.get(seed, {})]
        if (check := noise_check(cross)) is not None:
            noise_rows.append({"seed": seed, **check})
    return probe_rows, noise_rows


def _frozen_lr(cfg: StudyConfig, run: Path, domains: list[str]) -> list[FrozenLRRecord]:
    """The report's frozen-LR reference row: per seed and domain, a logistic regression on frozen embeddings."""
    from .probe import frozen_lr_file

    rows, cache = [], {}  # one encoder and one embedding per text for all seeds
    for seed in cfg.seeds:
        folders = {d: _data_dir(cfg, run, "k-shot-single", d, seed) for d in domains}
        out = run / f"seed-{seed}" / "frozen_lr.json"
        rows += [from_dict(FrozenLRRecord, {**r, "seed": seed})
                 for r in frozen_lr_file(folders, cfg.model, out, cfg.force, cache)]
    return rows


def hyperparameter_note(cfg: StudyConfig) -> str:
    """Say which settings the study used and how they were chosen (never on test sets)."""
    def fmt(section) -> str:
        default = type(section)()
        keep = {k: v for k, v in section.values().items() if v != getattr(default, k) or k == "learning_rate"}
        return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(keep.items()))

    recipe = StudyConfig()
    origin = ("the reference few-shot recipe, unchanged" if (cfg.meta, cfg.finetune) == (recipe.meta, recipe.finetune)
              else "set in config.json")
    return (f"{origin} (meta stage: {fmt(cfg.meta)}; fine-tuning: {fmt(cfg.finetune)}); {head_note(cfg)}; no "
            "setting was tuned on a test set, and every checkpoint is selected on a dev set")


def head_note(cfg: StudyConfig) -> str:
    """The classification head as resolved for the study's model (``auto`` depends on the checkpoint's files, so
    a copy of a model without its sentence-transformers files gets another head: the report must say which)."""
    from .heads import resolve_normalize, resolve_pooling

    def one(section) -> str:
        pooling = resolve_pooling(section.head_pooling, cfg.model)
        normalised = resolve_normalize(section.head_normalize, pooling, cfg.model)
        start = {"reinit": "new", "probe": "probe-fitted", "keep": "kept"}[section.head]
        return f"{pooling} pooling{', L2-normalised' if normalised else ''}, {start} head"

    return f"classification head: meta stage {one(cfg.meta)}; fine-tuning {one(cfg.finetune)}"


__all__ = ["StudyConfig", "run_study"]
