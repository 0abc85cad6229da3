"""Typed results: what each stage and the study write, each kind written and read through one function.

The files keep their keys (field names, in field order), so results written by earlier versions still read:
fields they lack take the defaults here, keys this version does not know are ignored.

- ``meta_results.json`` of a meta stage: :class:`MetaResult` (:func:`write_result`, :func:`read_meta_result`)
- ``results.json`` of a fine-tuning run: :class:`FinetuneResult` (:func:`write_result`,
  :func:`read_finetune_result`)
- ``study.json``: :class:`StudyResults` with one :class:`UnitRecord` per fine-tuning run and one
  :class:`MetaRecord` per meta stage (:func:`write_study`, :func:`read_study`)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import DataError
from .fileio import read_json, write_json

META_RESULTS = "meta_results.json"
RESULTS = "results.json"
STUDY_FILE = "study.json"
BASELINE = "baseline"  # the variant without a meta stage: fine-tuning from the pre-trained checkpoint
MFT = "mft"  # full meta fine-tuning; the other variants are its ablations
SNAPSHOT_PREFIX = "snapshot_best_mft_model_"  # a meta stage's best folder: <prefix><task>_dev_<accuracy>

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """``cls`` from a JSON object: unknown keys are ignored, missing ones take the field defaults."""
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class MetaResult:
    """A finished meta stage: the best meta-learner (chosen on the cross-domain dev set) and how it got there."""

    task: str = ""
    best_dev_accuracy: float = 0.0
    best_dev_macro_f1: float = 0.0
    best_step: int = 0
    total_steps: int = 0
    best_model: str = ""  # the best meta-learner folder (as written at the time)
    best_model_name: str = ""  # its name inside the run folder
    wall_time_s: float = 0.0
    resumed_from: int | None = None
    labels: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    num_examples: dict[str, int] = field(default_factory=dict)
    model: str = ""
    seed: int = 0
    dev_history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    head_pooling: str = "pooler"  # the classification head, resolved (heads.py); older files: pooler
    head_normalize: bool = False  # its pooled vector at unit length, resolved (heads.py); older files: False
    head_probe: dict | None = None  # head probe: the logistic regression chosen (C, dev / train accuracy)


@dataclass
class FinetuneResult:
    """A finished fine-tuning run: the best-dev checkpoint and its test metrics (None without a test set)."""

    task: str = ""
    domain: str = ""
    model: str = ""
    head: str = ""
    seed: int = 0
    test_accuracy: float | None = None
    test_macro_f1: float | None = None
    test: dict | None = None  # evaluation.classification_metrics of the test set
    best_dev_accuracy: float = 0.0
    best_dev_macro_f1: float = 0.0
    best_step: int = 0
    total_steps: int = 0
    best_model: str = ""
    labels: list[str] = field(default_factory=list)
    num_examples: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # train_s, eval_s, total_s
    resumed_from: int | None = None
    dev_history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    head_pooling: str = "pooler"  # the classification head, resolved (heads.py); older files: pooler
    head_normalize: bool = False  # its pooled vector at unit length, resolved (heads.py); older files: False
    head_probe: dict | None = None  # head probe: the logistic regression chosen (C, dev / train accuracy)


def write_result(path: str | Path, result: MetaResult | FinetuneResult) -> None:
    """Write a stage's results file (atomically: a results file marks its run finished)."""
    write_json(path, dataclasses.asdict(result))


def read_meta_result(path: str | Path) -> MetaResult | None:
    """A ``meta_results.json``; None when it is missing or cut short."""
    data = read_json(path)
    return None if data is None else from_dict(MetaResult, data)


def read_finetune_result(path: str | Path) -> FinetuneResult | None:
    """A ``results.json``; None when it is missing or cut short."""
    data = read_json(path)
    return None if data is None else from_dict(FinetuneResult, data)


@dataclass
class UnitRecord:
    """One fine-tuning run of a study, as ``study.json`` lists it (``path`` relative to the study folder)."""

    seed: int
    variant: str
    domain: str
    test_accuracy: float
    test_macro_f1: float | None = None
    test_n: int | None = None  # absent from studies written before it was recorded
    dev_accuracy: float | None = None
    wall_time_s: float = 0.0
    path: str = ""


@dataclass
class MetaRecord:
    """One meta stage of a study, as ``study.json`` lists it."""

    seed: int
    variant: str
    dev_accuracy: float
    wall_time_s: float = 0.0
    path: str = ""


@dataclass
class TypicalityRecord:
    seed: int
    path: str
    wall_time_s: float = 0.0
    space: str | None = None  # the mechanism check's settings and per-domain own-prototype fraction
    leave_one_out: bool | None = None
    own_prototype_fraction: dict | None = None


@dataclass
class PcaRecord:
    seed: int
    path: str


@dataclass
class FrozenLRRecord:
    """The frozen-LR reference of one seed and domain (probe.frozen_lr_reference): no encoder trained."""

    seed: int
    domain: str
    test_accuracy: float
    dev_accuracy: float | None = None
    C: float | None = None
    test_n: int | None = None


@dataclass
class StudyResults:
    """``study.json``: the study's settings, the machine and every finished unit, in plan order."""

    config: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    hyperparameter_note: str = ""
    typicality: list[TypicalityRecord] = field(default_factory=list)
    meta: list[MetaRecord] = field(default_factory=list)
    units: list[UnitRecord] = field(default_factory=list)
    pca: list[PcaRecord] = field(default_factory=list)
    domain_probe: list[dict] = field(default_factory=list)  # mechanisms.study_checks: one per seed and variant
    label_noise: list[dict] = field(default_factory=list)  # one per seed of a label-noise study
    frozen_lr: list[FrozenLRRecord] = field(default_factory=list)  # reference rows (absent from older studies)
    data: dict = field(default_factory=dict)  # how the splits were drawn: protocol, test rules, corpora checked,
    # source hashes (the cross-domain manifest's; seed-independent; absent from older studies)
    note: str | None = None  # set on an interim report, never written

    def only_seeds(self, seeds: list[int]) -> StudyResults:
        """The study restricted to ``seeds`` (units, meta stages, typicality, PCA)."""
        keep = set(seeds)
        kept = {k: [x for x in getattr(self, k) if x.seed in keep]
                for k in ("units", "meta", "typicality", "pca", "frozen_lr")}
        kept.update({k: [x for x in getattr(self, k) if x["seed"] in keep] for k in ("domain_probe", "label_noise")})
        return dataclasses.replace(self, **kept)


_RECORDS = {"typicality": TypicalityRecord, "meta": MetaRecord, "units": UnitRecord, "pca": PcaRecord,
            "frozen_lr": FrozenLRRecord}


def write_study(path: str | Path, study: StudyResults) -> None:
    data = dataclasses.asdict(study)
    del data["note"]
    for key in ("domain_probe", "label_noise", "frozen_lr", "data"):  # absent, as before, when there are none
        if not data[key]:
            del data[key]
    for record in data["typicality"]:
        for key in ("space", "leave_one_out", "own_prototype_fraction"):
            if record[key] is None:
                del record[key]
    write_json(path, data)


def read_study(path: str | Path) -> StudyResults:
    """A ``study.json``; DataError when it is missing or not valid JSON."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "no study.json here: run `metaft run` first") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc.msg})", exc.lineno) from None
    study = from_dict(StudyResults, data)
    for key, cls in _RECORDS.items():
        setattr(study, key, [from_dict(cls, x) for x in data.get(key, [])])
    return study
