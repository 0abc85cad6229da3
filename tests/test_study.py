from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from metaft.cli import main
from metaft.config import StudyConfig
from metaft.errors import ConfigError
from metaft.study import run_study

FAST = {"meta": {"epochs": 1, "batch_size": 8, "eval_batch_size": 256, "learning_rate": 1e-4},
        "finetune": {"epochs": 1, "batch_size": 8, "eval_batch_size": 256, "learning_rate": 1e-4,
                     "test_limit": 64}}


@pytest.fixture(scope="module")
def tiny_study(tiny_model_dir, corpora_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    cfg = StudyConfig.from_dict(dict(out=str(out), corpora=str(corpora_root), group="g1", k=4, seeds=(42,),
                                     model=str(tiny_model_dir), ablations=("multitask",), jobs=1, **FAST))
    return cfg, run_study(cfg)


def test_study_runs_every_unit_and_writes_report(tiny_study):
    cfg, study = tiny_study
    units = {(u.variant, u.domain) for u in study.units}
    assert units == {(v, d) for v in ("baseline", "mft", "multitask") for d in ("SST-2", "MR", "CR")}
    assert all(0.0 <= u.test_accuracy <= 1.0 for u in study.units)
    assert {m.variant for m in study.meta} == {"mft", "multitask"}
    report = (tmp := Path(cfg.out)) / "report.md"
    assert report.is_file() and "| SST-2 | mft |" in report.read_text()
    # the frozen-encoder reference: one logistic regression per seed and domain, a row of its own
    assert sorted(r.domain for r in study.frozen_lr) == ["CR", "MR", "SST-2"]
    assert all(0.0 <= r.test_accuracy <= 1.0 and r.C > 0 for r in study.frozen_lr)
    assert "| SST-2 | frozen-LR |" in report.read_text()
    for png in ("accuracy.png", "curves.png", "typicality.png", "pca.png"):
        assert (tmp / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp / "study.json").read_text())
    assert saved["units"] == [dataclasses.asdict(u) for u in study.units]
    # how the splits were drawn (parts of one study must agree): the corpora the pools were cleared against
    assert study.data["test_texts_removed_from_pool"]["SST-2"]["checked_against"][:3] == ["SST-2", "MR", "CR"]
    assert saved["data"] == study.data and "LM-BFF k-shot" in study.data["protocol"]
    assert "pools cleared of the test texts of SST-2, MR, CR" in report.read_text()


def test_rerun_skips_finished_units_and_force_redoes_them(tiny_study, monkeypatch, caplog):
    caplog.set_level("INFO", logger="metaft.study")
    caplog.set_level("INFO", logger="metaft.scheduler")
    cfg, study = tiny_study
    import metaft.stages as stages

    calls = []
    real_finetune, real_meta = stages.finetune, stages.meta_finetune
    monkeypatch.setattr(stages, "finetune", lambda c: calls.append(("ft", c.out)) or real_finetune(c))
    monkeypatch.setattr(stages, "meta_finetune", lambda c: calls.append(("meta", c.out)) or real_meta(c))
    again = run_study(cfg)
    assert calls == []
    assert [u.test_accuracy for u in again.units] == [u.test_accuracy for u in study.units]
    # the typicality stage was not rerun, and its wall time is still reported, as recorded when it ran
    assert study.typicality[0].wall_time_s > 0
    assert [t.wall_time_s for t in again.typicality] == [t.wall_time_s for t in study.typicality]

    forced = cfg.replace(force=True, ablations=(), seeds=(42,))
    run_study(forced)
    assert sum(kind == "meta" for kind, _ in calls) == 1
    assert sum(kind == "ft" for kind, _ in calls) == 6
    progress = [line for line in caplog.messages if "units done" in line]  # one line per unit run, with an ETA
    assert [line.split(" units done")[0] for line in progress] == [f"{i} of 7" for i in range(1, 8)]
    assert progress[0].startswith("1 of 7 units done (seed 42 mft)") and "elapsed, about" in progress[0]
    assert progress[-1].endswith("about 0m to go")


def test_time_estimate_weights_units_by_the_examples_they_train_on(tiny_study):
    from metaft.scheduler import unit_work
    from metaft.study import plan_units

    cfg, study = tiny_study
    cfg = cfg.replace(meta=cfg.meta.replace(epochs=3), finetune=cfg.finetune.replace(train_limit=5))
    plan = plan_units(cfg, Path(cfg.out), "g1", ["SST-2", "MR", "CR"])
    meta = next(u for u in plan if u.domain is None)
    sst2 = next(u for u in plan if u.domain == "SST-2")
    assert unit_work(cfg, meta) == 3 * 24  # 3 epochs x (K 4 x 2 labels x 3 domains) cross-domain examples
    assert unit_work(cfg, sst2) == 1 * 5  # 1 epoch x 8 examples, limited to 5


def test_units_in_parallel_workers_give_the_same_study(tiny_study, tmp_path):
    cfg, study = tiny_study
    parallel = run_study(cfg.replace(out=str(tmp_path / "parallel"), jobs=2))
    keep = ("seed", "variant", "domain", "test_accuracy", "test_macro_f1", "dev_accuracy", "path")
    def kept(s):
        return [{k: getattr(u, k) for k in keep} for u in s.units]

    assert kept(parallel) == kept(study)
    assert [m.dev_accuracy for m in parallel.meta] == [m.dev_accuracy for m in study.meta]


def test_a_study_stopped_before_its_first_unit_keeps_the_typicality_time(tiny_study, tmp_path, monkeypatch):
    cfg, _ = tiny_study
    import metaft.stages as stages

    class Stop(Exception):
        pass

    def stop(_):
        raise Stop

    monkeypatch.setattr(stages, "meta_finetune", stop)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "study.json").write_text('{"typicality": [3]}')  # damaged: ignored, then rewritten
    with pytest.raises(Stop):
        run_study(cfg.replace(out=str(tmp_path / "run"), ablations=()))
    recorded = json.loads((tmp_path / "run" / "study.json").read_text())
    assert recorded["units"] == [] and recorded["typicality"][0]["wall_time_s"] > 0


def test_rerun_with_other_settings_is_refused(tiny_study):
    from metaft.errors import ConfigError

    cfg, _ = tiny_study
    changed = cfg.replace(finetune=cfg.finetune.replace(learning_rate=3e-4))
    with pytest.raises(ConfigError, match="other settings.*finetune.*--force"):
        run_study(changed)
    assert json.loads((Path(cfg.out) / "config.json").read_text())["finetune"] == cfg.finetune.to_dict()


def test_predict_round_trips_a_saved_model(tiny_study, tmp_path, capsys):
    cfg, study = tiny_study
    unit = next(u for u in study.units if u.variant == "mft" and u.domain == "SST-2")
    model_dir = Path(cfg.out) / unit.path / "best"
    texts = ["a great movie", "a terrible and boring plot"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert main(["predict", "--model", str(model_dir), "--input", str(src)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [r["text"] for r in lines] == texts
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(model_dir))
    for rec, ref in zip(lines, pipe(texts)):
        assert rec["label"] == ref["label"]
        assert sum(rec["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert rec["probabilities"][rec["label"]] == pytest.approx(ref["score"], abs=1e-4)


def test_unknown_ablation_is_a_clear_error(capsys):
    assert main(["run", "--ablations", "bogus", "--out", "/tmp/never"]) == 2
    assert "unknown ablation" in capsys.readouterr().err


CONFIGS = Path(__file__).parents[1] / "benchmarks" / "configs"


def committed_config(name: str) -> StudyConfig:
    from metaft.config import load_config_file

    return StudyConfig.from_dict(load_config_file(CONFIGS / name))


@pytest.mark.parametrize("committed", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_the_committed_study_configs_load(committed):
    """benchmarks/configs/* as `metaft run --config` reads them (amazon's `k: full` once crashed the study)."""
    assert committed_config(committed).prepare.k == (None if committed == "amazon.yaml" else 16)


@pytest.mark.parametrize("part", ["g1-20seeds.yaml", "g1-more-seeds.yaml", "g1-noise.yaml"])
def test_study_configs_meant_to_be_merged_or_compared_with_g1_share_its_settings(part):
    """Their parts are merged with g1's (benchmarks/merge_studies.py) or reuse its baseline units."""
    free = {"seeds", "ablations", "label_noise"}
    g1, other = committed_config("g1.yaml").to_dict(), committed_config(part).to_dict()
    assert {k: v for k, v in other.items() if k not in free} == {k: v for k, v in g1.items() if k not in free}
    if part == "g1-more-seeds.yaml":  # the other seeds of the 20-seed study: none of g1's
        assert not set(other["seeds"]) & set(g1["seeds"]) and len(other["seeds"]) + len(g1["seeds"]) == 20


@pytest.mark.parametrize("k, expected", [("full", None), ("FULL", None), (None, None), (16, 16), ("16", 16)])
def test_k_accepts_integers_and_full(k, expected):
    from metaft.config import PrepareConfig

    assert StudyConfig.from_dict({"k": k}).prepare.k == PrepareConfig(k=k).k == expected


@pytest.mark.parametrize("k", [0, -3, "ten", 1.5, True, "16.0"])
def test_bad_k_is_a_clear_error(k, tmp_path, capsys):
    with pytest.raises(ConfigError, match="k must be a positive integer or 'full'"):
        StudyConfig.from_dict({"k": k})
    config = tmp_path / "study.yaml"
    config.write_text(f"k: {k}\n")
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "never")]) == 2
    assert "k must be a positive integer or 'full'" in capsys.readouterr().err
