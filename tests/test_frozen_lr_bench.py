"""benchmarks/frozen_lr.py: the frozen-LR reference of any model on a study's splits, per seed and domain."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_frozen_lr_benchmark_writes_one_row_per_seed_and_domain_and_their_means(prepared_data, tiny_model_dir,
                                                                                tmp_path):
    spec = importlib.util.spec_from_file_location("bench_frozen_lr", BENCHMARKS / "frozen_lr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    study = tmp_path / "study"
    study.mkdir()
    (study / "data").symlink_to(prepared_data)  # a study folder's layout: <study>/data/k-shot-single/<D>/16-42
    out = tmp_path / "frozen.json"
    assert module.main(["--model", str(tiny_model_dir), "--studies", str(study), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert sorted((r["seed"], r["domain"]) for r in result["rows"]) == [(42, "CR"), (42, "MR"), (42, "SST-2")]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 and r["C"] > 0 for r in result["rows"])
    assert {r["domain"]: r["test_n"] for r in result["rows"]} == {"CR": 2000, "MR": 2000, "SST-2": 872}
    sst2 = next(r for r in result["rows"] if r["domain"] == "SST-2")
    assert result["mean_test_accuracy_percent"]["SST-2"] == round(100 * sst2["test_accuracy"], 2)
