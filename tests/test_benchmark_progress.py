"""The benchmark scripts write their results JSON as they go: a run cut after some figures (here: a
measurement that raises) leaves a valid JSON with every figure measured before the cut."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Cut(Exception):
    """Stands for the time limit that ends a benchmark run."""


def test_speed_throughput_is_saved_after_every_run(tmp_path):
    speed = load("speed")
    out = tmp_path / "results" / "speed.json"
    args = SimpleNamespace(repeats=2, out=str(out))
    eps = {"metaft_stage2_corrupt": 10.0, "trainer_g1_adamw_torch_fused": 8.0, "metaft_stage3_ce": 6.0}
    calls = []

    def run_one(name, rep):
        if len(calls) == 4:
            raise Cut
        calls.append(name)
        value = eps[name] * (1 + rep)  # repeat 2 runs twice as fast
        return {"examples_per_s": value, "s_per_step": 1 / value, "mean_padded_tokens_per_batch": 100.0}

    results = {"machine": {}, "throughput": {}, "ratios": {}}
    with pytest.raises(Cut):
        speed.measure_throughput(args, list(eps), run_one, results, say=lambda *a: None)
    saved = json.loads(out.read_text())
    assert saved["throughput_runs_done"] == 4
    assert saved["throughput"]["metaft_stage2_corrupt"]["runs_examples_per_s"] == [10.0, 20.0]
    assert saved["throughput"]["metaft_stage2_corrupt"]["examples_per_s"] == 15.0  # median of the two
    assert saved["throughput"]["metaft_stage3_ce"]["examples_per_s"] == 6.0
    assert saved["ratios"] == {"stage2_vs_trainer_fused": pytest.approx(15.0 / 8.0)}  # stage 3's partner not run


def test_encoder_cost_saves_every_timed_run(tmp_path, monkeypatch):
    cost = load("encoder_cost")
    out = tmp_path / "cost.json"
    names = []

    def timed(cmd, env):
        names.append(cmd[4])  # the metaft subcommand
        if len(names) == 5:  # prepare, preprocess, 2 meta runs, then the cut
            raise Cut
        return {"cmd": " ".join(cmd[2:]), "cpu_s": float(len(names)), "wall_s": 1.0, "peak_rss_mib": 1,
                "load_avg_1min": 0.0}

    monkeypatch.setattr(cost, "timed", timed)
    with pytest.raises(Cut):
        cost.main(["--models", "minilm", "--out", str(out)])
    saved = json.loads(out.read_text())
    runs = saved["models"]["minilm"]["runs"]
    assert list(runs) == ["typicality", "meta_e1", "meta_e2"]
    assert [r["cpu_s"] for r in runs.values()] == [2.0, 3.0, 4.0]
    assert "cpu_s_per_step" not in saved["models"]["minilm"]  # derived figures only once every run is in


def test_packed_speed_saves_every_variant(tmp_path, monkeypatch):
    packed = load("packed")
    out = tmp_path / "packed.json"
    times = {"unit": 0.2, "packed-2": 0.25}

    def run(cmd, **kw):
        name = cmd[cmd.index("--one") + 1]
        if name not in times:
            raise Cut
        r = {"runs_per_step": 1, "s_per_run_step": times[name]}
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(r) + "\n", stderr="")

    monkeypatch.setattr(packed, "prepare_data", lambda work, seeds=(42,): None)
    monkeypatch.setattr(packed, "machine", lambda device: {"device": device})
    monkeypatch.setattr(packed.subprocess, "run", run)
    with pytest.raises(Cut):
        packed.main(["speed", "--packs", "2", "4", "--out", str(out)])
    variants = json.loads(out.read_text())["variants"]
    assert set(variants) == {"unit", "packed-2"}
    assert variants["packed-2"]["speedup_vs_unit"] == pytest.approx(0.2 / 0.25)


def test_packed_study_units_saves_every_variant_with_its_ratio_to_the_unit_path(tmp_path, monkeypatch):
    import metaft.packed_stages
    import metaft.stages

    packed = load("packed")
    out = tmp_path / "units.json"
    step_s = {1: 0.1, 2: 0.16}  # seconds per step: one run, a bank of two

    def fake_train(cfgs, runs_per_step):
        for cfg in cfgs:
            Path(cfg.out).mkdir(parents=True)
            rows = [{"kind": "train", "step": i + 1, "elapsed_s": round(step_s[runs_per_step] * (i + 1), 3)}
                    for i in range(6)]
            (Path(cfg.out) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert all(c.eval_every == 50 and c.test_limit is None and c.batch_size == 2 for c in cfgs)

    def finetune_packed(cfgs, pack):
        if pack == 4:
            raise Cut
        fake_train(cfgs, pack)

    monkeypatch.setattr(packed, "prepare_data", lambda work, seeds=(42,): None)
    monkeypatch.setattr(packed, "machine", lambda device: {"device": device})
    monkeypatch.setattr(metaft.stages, "finetune", lambda cfg: fake_train([cfg], 1))
    monkeypatch.setattr(metaft.packed_stages, "finetune_packed", finetune_packed)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(Cut):
        packed.main(["speed", "--study-units", "--steps", "6", "--packs", "2", "4", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["settings"]["steps"] == 6 and saved["settings"]["eval_every"] == 50
    variants = saved["variants"]
    assert set(variants) == {"unit", "packed-2"}
    assert variants["unit"]["runs"][0]["units"] == 3
    assert variants["unit"]["units_per_hour_training_1024"] == pytest.approx(3600 / (1024 * 0.1))
    assert variants["packed-2"]["units_per_hour_training_1024"] == pytest.approx(3600 / (1024 * 0.08))
    assert variants["packed-2"]["vs_unit"]["units_per_hour_training_1024"] == pytest.approx(0.1 / 0.08)
    assert variants["packed-2"]["vs_unit"]["units_per_hour"] == pytest.approx(
        variants["packed-2"]["units_per_hour"] / variants["unit"]["units_per_hour"])
