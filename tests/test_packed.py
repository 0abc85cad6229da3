"""Packed training: a run trained inside a bank follows the same run trained alone (dropout 0), run folders
are the one-run path's, dropout differs per run, and banks are planned by key and memory."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import ft_config, write_task
from metaft.bank_plan import bank_capacity, plan_banks
from metaft.errors import ConfigError
from metaft.packed_stages import finetune_packed
from metaft.stages import finetune

SEEDS = (3, 4, 5, 6)
COMMON = dict(dropout=0.0, mixed_precision="no", epochs=9, eval_every=6)  # 54 steps of 8 examples


def train_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss_total"] for r in rows if r["kind"] == "train"}


def dev_records(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows if r["kind"] == "dev"]


@pytest.fixture(scope="module")
def no_dropout_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny BERT with every dropout at 0 (hidden, attention; the head's comes from the run's setting)."""
    folder = tmp_path_factory.mktemp("tiny-nodrop") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def four_tasks(tmp_path_factory) -> list[Path]:
    """Four one-domain tasks with different examples (48 train each, so they share a bank)."""
    root = tmp_path_factory.mktemp("tasks")
    return [write_task(root / f"t{i}", seed=10 * i + 1) for i in range(len(SEEDS))]


@pytest.fixture(scope="module")
def lone_and_banked(no_dropout_model, four_tasks, tmp_path_factory):
    root = tmp_path_factory.mktemp("equiv")
    lone = [finetune(ft_config(d, no_dropout_model, root / f"lone{i}", seed=s, **COMMON))
            for i, (d, s) in enumerate(zip(four_tasks, SEEDS))]
    cfgs = [ft_config(d, no_dropout_model, root / f"bank{i}", seed=s, **COMMON)
            for i, (d, s) in enumerate(zip(four_tasks, SEEDS))]
    banked = finetune_packed(cfgs, pack=4)
    return root, lone, banked


def test_banked_runs_follow_their_lone_runs(lone_and_banked):
    root, lone, banked = lone_and_banked
    curves = [train_losses(root / f"lone{i}") for i in range(len(SEEDS))]
    for i in range(len(SEEDS)):
        mine = train_losses(root / f"bank{i}")
        assert len(mine) == len(curves[i]) == lone[i].total_steps >= 50
        worst = max(abs(mine[s] - curves[i][s]) for s in range(1, 51))
        assert worst < 1e-4, f"run {i}: training loss off by {worst} within the first 50 steps"
        assert banked[i].best_step == lone[i].best_step
        assert abs(banked[i].test_accuracy - lone[i].test_accuracy) <= 0.005
        assert [r["step"] for r in dev_records(root / f"bank{i}")] == [r["step"] for r in
                                                                      dev_records(root / f"lone{i}")]
    # the runs really differ (data, seed): had the bank mixed them up, the comparison above would fail
    for i in range(len(SEEDS)):
        for j in range(i + 1, len(SEEDS)):
            assert max(abs(curves[i][s] - curves[j][s]) for s in range(1, 51)) > 1e-2


def test_banked_run_folders_are_the_one_run_path_s(lone_and_banked):
    from transformers import pipeline

    root, lone, banked = lone_and_banked
    for i in range(len(SEEDS)):
        lone_dir, bank_dir = root / f"lone{i}", root / f"bank{i}"
        written = json.loads((bank_dir / "results.json").read_text())
        assert written.keys() == json.loads((lone_dir / "results.json").read_text()).keys()
        assert written == dataclasses.asdict(banked[i])
        assert sorted(p.name for p in bank_dir.iterdir()) == sorted(p.name for p in lone_dir.iterdir())
        assert sorted(p.name for p in (bank_dir / "best").iterdir()) == sorted(
            p.name for p in (lone_dir / "best").iterdir())
        assert json.loads((bank_dir / "best/config.json").read_text()) == json.loads(
            (lone_dir / "best/config.json").read_text())
        assert (bank_dir / "config.json").read_text() == (lone_dir / "config.json").read_text().replace(
            f"lone{i}", f"bank{i}")
    classify = pipeline("text-classification", model=str(root / "bank0" / "best"))
    assert classify("a great good movie")[0]["label"] in banked[0].labels


def test_finished_runs_are_kept_and_a_rerun_changes_nothing(lone_and_banked, no_dropout_model, four_tasks):
    root, _, banked = lone_and_banked
    cfgs = [ft_config(d, no_dropout_model, root / f"bank{i}", seed=s, resume=True, **COMMON)
            for i, (d, s) in enumerate(zip(four_tasks, SEEDS))]
    before = (root / "bank1" / "metrics.jsonl").read_text()
    assert finetune_packed(cfgs, pack=4) == banked
    assert (root / "bank1" / "metrics.jsonl").read_text() == before
    with pytest.raises(ConfigError, match="holds a finished run"):
        finetune_packed([c.replace(resume=False) for c in cfgs], pack=4)


def test_dropout_in_a_bank_is_active_and_differs_per_run(tiny_model_dir, single, tmp_path):
    """Two copies of one run (same data, seed, model with dropout 0.1) in one bank draw different masks."""
    cfgs = [ft_config(single, tiny_model_dir, tmp_path / f"r{i}", epochs=1, dropout=0.1, mixed_precision="no")
            for i in range(2)]
    finetune_packed(cfgs, pack=2)
    first, second = (train_losses(tmp_path / f"r{i}") for i in range(2))
    assert first.keys() == second.keys()
    assert all(abs(first[s] - second[s]) > 1e-6 for s in first)


def test_plan_banks_groups_by_key_and_splits_evenly():
    keys = ["a"] * 10 + ["b"] * 3 + ["a"]
    banks = plan_banks(keys, {"a": 8, "b": 8})
    assert banks == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 13], [10, 11, 12]]
    assert plan_banks(["a"] * 4, {"a": 1}) == [[0], [1], [2], [3]]


def test_bank_capacity_from_memory_and_pack():
    params = 1_000_000  # per run: 5 tensors x 4 bytes x 1.25 = 25 MB
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert bank_capacity(params, cpu, memory=200_000_000) == 4  # half of 200 MB
    assert bank_capacity(params, cuda, memory=200_000_000) == 6  # 80 %
    assert bank_capacity(params, cpu, memory=10**12) == 8  # the CPU cap
    assert bank_capacity(params, cpu, pack=3, memory=1) == 3
    with pytest.raises(ConfigError, match="pack 1"):
        bank_capacity(params, cpu, memory=1000)
    with pytest.raises(ConfigError, match="pack must be"):
        bank_capacity(params, cpu, pack=0)


# ---------------------------------------------------------------------------------------------- stage 2

# every loss term on and off: corrupt + typicality weights, GRL + weights, no domain loss and no weights
VARIANTS = {"mft": dict(typicality=True, domain_loss="corrupt"), "grl": dict(domain_loss="grl"),
            "multitask": dict(typicality=False, domain_loss="none")}


@pytest.fixture(scope="module")
def meta_lone_and_banked(no_dropout_model, tmp_path_factory):
    """Three meta-stage variants (different seeds) alone and together in one bank, dropout 0; 36 steps."""
    from metaft.cli import main
    from metaft.config import MetaConfig
    from metaft.packed_stages import meta_finetune_packed
    from metaft.stages import meta_finetune

    root = tmp_path_factory.mktemp("meta-equiv")
    cross = write_task(root / "k-shot-cross" / "toy" / "8-1", n_train=72, n_dev=36, n_test=0,
                       domains=("book", "movie", "product"))
    assert main(["-q", "preprocess", str(cross), "--model", str(no_dropout_model)]) == 0

    def cfg(tag, i, variant):
        return MetaConfig(data_dir=str(cross), model=str(no_dropout_model), out=str(root / f"{tag}-{variant}"),
                          epochs=4, batch_size=8, eval_batch_size=32, learning_rate=1e-3, eval_every=9, seed=i + 1,
                          dropout=0.0, mixed_precision="no", **VARIANTS[variant])

    lone = [meta_finetune(cfg("lone", i, v)) for i, v in enumerate(VARIANTS)]
    banked = meta_finetune_packed([cfg("bank", i, v) for i, v in enumerate(VARIANTS)], pack=3)
    return root, lone, banked


def test_banked_meta_runs_follow_their_lone_runs(meta_lone_and_banked):
    from safetensors.torch import load_file

    root, lone, banked = meta_lone_and_banked
    for variant, a, b in zip(VARIANTS, lone, banked):
        la, lb = root / f"lone-{variant}", root / f"bank-{variant}"
        rows = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (la, lb)]
        train = [{r["step"]: r for r in rs if r["kind"] == "train"} for rs in rows]
        assert train[0].keys() == train[1].keys() and len(train[0]) == 36
        for part in ("loss_total", "loss_cls", "loss_domain"):
            worst = max(abs(train[0][s][part] - train[1][s][part]) for s in train[0])
            assert worst < 1e-4, f"{variant}: {part} off by {worst}"
        ra, rb = (json.loads((d / "meta_results.json").read_text()) for d in (la, lb))
        assert ra.keys() == rb.keys() and ra["best_step"] == rb["best_step"]
        assert abs(ra["best_dev_accuracy"] - rb["best_dev_accuracy"]) <= 0.03  # one dev example of 36
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        assert (a / "metaft_meta.json").read_text() == (b / "metaft_meta.json").read_text()
        if (a / "domain_head.safetensors").is_file():
            assert load_file(str(a / "domain_head.safetensors")).keys() == load_file(
                str(b / "domain_head.safetensors")).keys()
    assert not (banked[2] / "domain_head.safetensors").exists()  # multitask: no domain head, as alone
