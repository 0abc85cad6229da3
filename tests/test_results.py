from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaft.errors import DataError
from metaft.results import (
    FinetuneResult,
    MetaResult,
    StudyResults,
    UnitRecord,
    read_finetune_result,
    read_meta_result,
    read_study,
    write_result,
    write_study,
)

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def test_results_files_keep_their_keys_and_round_trip(tmp_path):
    res = FinetuneResult(task="g1", domain="SST-2", seed=42, test_accuracy=0.75, test={"n": 4},
                         timings={"train_s": 1.0, "eval_s": 0.5, "total_s": 2.0})
    write_result(tmp_path / "results.json", res)
    data = json.loads((tmp_path / "results.json").read_text())
    assert list(data)[:8] == ["task", "domain", "model", "head", "seed", "test_accuracy", "test_macro_f1", "test"]
    assert read_finetune_result(tmp_path / "results.json") == res
    meta = MetaResult(task="g1", best_dev_accuracy=0.8, best_model_name="snapshot_x", domains=["A", "B"])
    write_result(tmp_path / "meta_results.json", meta)
    assert read_meta_result(tmp_path / "meta_results.json") == meta
    assert read_meta_result(tmp_path / "missing.json") is None


def test_older_and_newer_files_still_read(tmp_path):
    # a results.json from before timings were recorded, with a key this version does not know
    (tmp_path / "results.json").write_text(json.dumps({"best_dev_accuracy": 0.5, "test_accuracy": 0.6,
                                                       "future_key": 1}))
    res = read_finetune_result(tmp_path / "results.json")
    assert res.test_accuracy == 0.6 and res.timings == {} and not hasattr(res, "future_key")
    (tmp_path / "cut.json").write_text('{"best_dev')  # cut short: reads as unfinished
    assert read_finetune_result(tmp_path / "cut.json") is None


@pytest.mark.parametrize("study", ["g1-reference-behaviour", "amazon", "g1-seed42-quickstart"])
def test_committed_studies_read_and_write_back_unchanged(study, tmp_path):
    source = RESULTS_DIR / study / "study.json"
    typed = read_study(source)
    assert typed.units and all(isinstance(u, UnitRecord) for u in typed.units)
    write_study(tmp_path / "study.json", typed)
    original = json.loads(source.read_text())
    again = json.loads((tmp_path / "study.json").read_text())
    # g1 was written before test_n was recorded: written back it gains test_n = None, nothing else changes
    for unit in again["units"]:
        if unit["test_n"] is None:
            del unit["test_n"]
    assert again == original


def test_only_seeds_and_missing_study(tmp_path):
    study = StudyResults(units=[UnitRecord(1, "baseline", "A", 0.5), UnitRecord(2, "baseline", "A", 0.7)])
    assert [u.seed for u in study.only_seeds([2]).units] == [2]
    with pytest.raises(DataError, match="no study.json here"):
        read_study(tmp_path / "study.json")
