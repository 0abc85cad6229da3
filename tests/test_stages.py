"""Stage functions: meta_finetune (stage 2) and finetune (stage 3), with the tiny model and the real one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import metrics_without_time, write_task
from metaft.config import FinetuneConfig, MetaConfig
from metaft.corpora import read_mft_tsv
from metaft.errors import ConfigError, DataError


@pytest.fixture(scope="session")
def cross(tmp_path_factory, tiny_model_dir) -> Path:
    """A 3-domain, 3-label folder with typicality scores from the tiny model."""
    from metaft.cli import main

    folder = write_task(tmp_path_factory.mktemp("cross") / "k-shot-cross" / "toy" / "8-1",
                        n_train=72, n_dev=36, n_test=0, domains=("book", "movie", "product"))
    assert main(["-q", "preprocess", str(folder), "--model", str(tiny_model_dir)]) == 0
    return folder


def meta_config(data: Path, model: Path, out: Path, **kw) -> MetaConfig:
    settings = dict(data_dir=str(data), model=str(model), out=str(out), epochs=30, batch_size=8,
                    eval_batch_size=32, learning_rate=1e-3, eval_every=27, seed=1)
    return MetaConfig(**{**settings, **kw})


def test_task_names():
    from metaft.prepared import task_name_for

    assert task_name_for("data/k-shot-cross/g1/16-42") == "g1"
    assert task_name_for("data/k-shot-single/SST-2/16-42") == "SST-2"
    assert task_name_for("mydata") == "mydata"


def test_typicality_weights_are_normalised(monkeypatch, tmp_path):
    import metaft.typicality
    from helpers import synthetic
    from metaft.typicality import typicality_weights

    train = synthetic(6, ["a", "b"], 0)  # domains a, a, a, b, b, b
    monkeypatch.setattr(metaft.typicality, "load_scores", lambda d, ex: [0.5, 1.0, 1.5, 0.2, 0.2, 0.8])
    cfg = MetaConfig(data_dir=str(tmp_path))
    assert typicality_weights(cfg.replace(typicality_norm="none"), tmp_path, train) == [0.5, 1.0, 1.5, 0.2, 0.2, 0.8]
    per_domain = typicality_weights(cfg.replace(typicality_norm="mean"), tmp_path, train)
    assert per_domain == pytest.approx([0.5, 1.0, 1.5, 0.5, 0.5, 2.0])
    assert typicality_weights(cfg, tmp_path, train) == pytest.approx(  # the default: mean-global
        [s / 0.7 for s in [0.5, 1.0, 1.5, 0.2, 0.2, 0.8]])
    assert typicality_weights(cfg.replace(typicality=False), tmp_path, train) == [1.0] * 6


def test_negative_typicality_scores_count_as_zero(monkeypatch, tmp_path, caplog):
    import metaft.typicality
    from helpers import synthetic
    from metaft.typicality import typicality_weights

    train = synthetic(4, ["a"], 0)
    monkeypatch.setattr(metaft.typicality, "load_scores", lambda d, ex: [0.6, -0.2, 0.9, 0.0])
    cfg = MetaConfig(data_dir=str(tmp_path))
    assert typicality_weights(cfg.replace(typicality_norm="none"), tmp_path, train) == [0.6, 0.0, 0.9, 0.0]
    assert typicality_weights(cfg, tmp_path, train) == pytest.approx([0.6 / 0.375, 0.0, 0.9 / 0.375, 0.0])
    assert "1 of 4 typicality scores are below 0 (min -0.2000)" in caplog.text


def test_meta_finetune_then_finetune_from_the_meta_learner(cross, tiny_model_dir, tmp_path):
    from transformers import pipeline

    from metaft.stages import finetune, meta_finetune

    best = meta_finetune(meta_config(cross, tiny_model_dir, tmp_path / "meta"))
    res = json.loads((tmp_path / "meta" / "meta_results.json").read_text())
    assert best.name == f"snapshot_best_mft_model_toy_dev_{res['best_dev_accuracy']!r}"
    assert res["best_model"] == str(best) and res["best_dev_accuracy"] > 0.5  # chance is 1/3
    assert res["domains"] == ["book", "movie", "product"] and res["labels"] == ["neg", "neu", "pos"]
    assert {"config.json", "model.safetensors", "domain_head.safetensors", "metaft_meta.json"} <= {
        p.name for p in best.iterdir()}
    assert [p.name for p in (tmp_path / "meta").glob("snapshot_*")] == [best.name]  # earlier bests removed
    train_rows = [r for r in metrics_without_time(tmp_path / "meta") if r["kind"] == "train"]
    assert all(r["loss_total"] == pytest.approx(r["loss_cls"] + 0.1 * r["loss_domain"]) for r in train_rows)

    single = write_task(tmp_path / "single", domains=("book",), seed=7)
    for head in ("reinit", "keep"):
        out = tmp_path / f"ft-{head}"
        r = finetune(FinetuneConfig(data_dir=str(single), model=str(best), out=str(out), epochs=4, batch_size=8,
                                    learning_rate=1e-3, eval_every=6, head=head, seed=1))
        assert r.test_accuracy > 0.6 and r.head == head
        # the saved folder, loaded by a plain transformers pipeline, reproduces the reported test accuracy
        test = read_mft_tsv(single / "test.tsv")
        preds = pipeline("text-classification", model=str(out / "best"))([ex.text for ex in test])
        assert sum(p["label"] == ex.label for p, ex in zip(preds, test)) / len(test) == r.test_accuracy


@pytest.mark.parametrize("loss", ["grl", "none"])
def test_meta_ablations_run(cross, tiny_model_dir, tmp_path, loss):
    from metaft.stages import meta_finetune

    best = meta_finetune(meta_config(cross, tiny_model_dir, tmp_path / loss, domain_loss=loss, typicality=False, epochs=1))
    res = json.loads((tmp_path / loss / "meta_results.json").read_text())
    assert res["total_steps"] == 9 and best.is_dir()
    assert (best / "domain_head.safetensors").is_file() == (loss != "none")


def test_stage_errors(cross, tiny_model_dir, tmp_path):
    from metaft.stages import finetune, meta_finetune

    bad = write_task(tmp_path / "bad", domains=("book", "movie"))
    with (bad / "dev.tsv").open("a") as fh:
        fh.write("a strange one\tbook\tmixed\n")
    with pytest.raises(DataError, match="dev.tsv.*'mixed'.*do not occur in train.tsv"):
        meta_finetune(meta_config(bad, tiny_model_dir, tmp_path / "m", typicality=False))
    with pytest.raises(ConfigError, match="2 domains.*--domain"):
        finetune(FinetuneConfig(data_dir=str(bad), model=str(tiny_model_dir), out=str(tmp_path / "f")))
    untyped = write_task(tmp_path / "untyped", domains=("book", "movie"))
    with pytest.raises(DataError, match="metaft preprocess"):
        meta_finetune(meta_config(untyped, tiny_model_dir, tmp_path / "m2"))


def test_real_data_meta_then_sst2(prepared_data, tmp_path):
    """The default model (MiniLM) on the g1 16-shot split, reduced budget: SST-2 test accuracy > 60 %."""
    from transformers import pipeline

    from metaft.cli import main
    from metaft.stages import finetune, meta_finetune

    cross_dir = tmp_path / "g1" / "16-42"  # a private copy: stage 1 writes its scores beside the data
    shutil.copytree(prepared_data / "k-shot-cross" / "g1" / "16-42", cross_dir)
    assert main(["-q", "preprocess", str(cross_dir)]) == 0
    best = meta_finetune(MetaConfig(data_dir=str(cross_dir), out=str(tmp_path / "meta"), epochs=3, batch_size=8,
                                    eval_batch_size=32, learning_rate=1e-4, eval_every=12, seed=42))
    meta = json.loads((tmp_path / "meta" / "meta_results.json").read_text())
    assert meta["num_examples"] == {"train": 96, "dev": 96} and meta["best_dev_accuracy"] > 0.5
    res = finetune(FinetuneConfig(data_dir=str(prepared_data / "k-shot-single" / "SST-2" / "16-42"), model=str(best),
                                  out=str(tmp_path / "sst2"), epochs=10, batch_size=8, eval_batch_size=64,
                                  learning_rate=5e-5, eval_every=8, seed=42, test_limit=200))
    assert res.num_examples == {"train": 32, "dev": 32, "test": 200}
    assert res.test_accuracy > 0.6, res
    clf = pipeline("text-classification", model=str(tmp_path / "sst2" / "best"))
    out = clf(["a gorgeous, witty, seductive movie.", "a dull, lifeless mess."])
    assert {o["label"] for o in out} <= {"0", "1"}
