"""Banks train the settings that once took the one-run path: pooled heads (mean / cls, and auto resolving to
them), the LP-FT head warm start (head probe), a head learning rate, uniform corruption and no domain
embedding. At dropout 0 a run trained in a bank of 4 follows the same run trained alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import ft_config, write_task
from metaft.bank import CUDA_MIN_SAVE_S, Bank, save_interval
from metaft.bank_plan import GPU_MAX_PACK, bank_capacity, bank_key, model_config, unpackable
from metaft.config import FinetuneConfig, MetaConfig
from metaft.packed_stages import finetune_packed, meta_finetune_packed
from metaft.stages import finetune, meta_finetune

# 54 steps of 8 examples; a learning rate at which a warm-started head trains smoothly (at a chaotic one, float
# rounding, which differs between a bank and a lone run, would grow past the tolerance)
COMMON = dict(dropout=0.0, mixed_precision="no", epochs=9, eval_every=6, learning_rate=1e-3)
# two banks (the head pooling is part of the bank key): mean with a head learning rate and warm-started heads,
# and auto -> cls with fresh heads (a probe on the random tiny BERT's [CLS] states, which barely vary, can fit
# a head so large that its fine-tuning is chaotic, and rounding differences grow past any tolerance)
RUNS = [dict(head_pooling="mean", head_learning_rate=3e-3, head=h, seed=s)
        for h, s in (("probe", 3), ("probe", 4), ("reinit", 5), ("probe", 6))]
RUNS += [dict(head_pooling="auto", head="reinit", seed=s) for s in (7, 8, 9, 10)]


def rows(run: Path, kind: str) -> dict[int, dict]:
    out = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in out if r["kind"] == kind}


def assert_follows(lone: Path, bank: Path, parts=("loss_total",), steps: int = 50) -> dict[int, dict]:
    a, b = rows(lone, "train"), rows(bank, "train")
    assert a.keys() == b.keys() and len(a) >= steps
    for part in parts:
        worst = max(abs(a[s][part] - b[s][part]) for s in range(1, steps + 1))
        assert worst < 1e-4, f"{bank.name}: {part} off by {worst} within the first {steps} steps"
    assert list(rows(lone, "dev")) == list(rows(bank, "dev"))
    return a


def assert_distinct(curves: list[dict[int, dict]], steps: int = 50) -> None:
    """The runs really differ: had the bank mixed them up, the comparison with their lone twins would fail."""
    for i in range(len(curves)):
        for j in range(i + 1, len(curves)):
            assert max(abs(curves[i][s]["loss_total"] - curves[j][s]["loss_total"]) for s in range(1, steps)) > 1e-2


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny BERT with every dropout at 0; ``cls``: the same declaring [CLS] pooling (sentence-transformers);
    ``norm``: the same declaring mean pooling and a Normalize module (a sentence-transformers modules.json)."""
    root = tmp_path_factory.mktemp("models")
    plain = root / "plain"
    shutil.copytree(tiny_model_dir, plain)
    config = json.loads((plain / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (plain / "config.json").write_text(json.dumps(config))
    cls = root / "cls"
    shutil.copytree(plain, cls)
    (cls / "1_Pooling").mkdir()
    (cls / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    norm = root / "norm"
    shutil.copytree(plain, norm)
    (norm / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (norm / "1_Pooling").mkdir()
    (norm / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (norm / "2_Normalize").mkdir()
    return {"plain": plain, "cls": cls, "norm": norm}


def ft_cfgs(tasks, models, root: Path, tag: str) -> list[FinetuneConfig]:
    return [ft_config(tasks[i % 4], models["plain" if run["head_pooling"] == "mean" else "cls"], root / f"{tag}{i}",
                      **COMMON, **run) for i, run in enumerate(RUNS)]


@pytest.fixture(scope="module")
def stage3(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("settings")
    tasks = [write_task(root / f"t{i}", seed=10 * i + 1) for i in range(4)]
    lone = [finetune(cfg) for cfg in ft_cfgs(tasks, models, root, "lone")]
    banked = finetune_packed(ft_cfgs(tasks, models, root, "bank"), pack=4)
    return root, tasks, lone, banked


def test_pooled_probe_and_head_lr_runs_in_a_bank_follow_their_lone_runs(stage3):
    root, _, lone, banked = stage3
    curves = []
    for i, run in enumerate(RUNS):
        curves.append(assert_follows(root / f"lone{i}", root / f"bank{i}"))
        assert banked[i].best_step == lone[i].best_step
        assert banked[i].head_pooling == lone[i].head_pooling == ("mean" if i < 4 else "cls")
        assert banked[i].head_probe == lone[i].head_probe
        assert (banked[i].head_probe is not None) == (run["head"] == "probe")
        first_dev = min(rows(root / f"bank{i}", "dev"))
        assert first_dev == (0 if run["head"] == "probe" else 6)  # a warm-started head is a candidate at step 0
        if run["head"] == "probe":
            assert banked[i].dev_history[0]["dev_accuracy"] == banked[i].head_probe["dev_accuracy"]
        assert abs(banked[i].test_accuracy - lone[i].test_accuracy) <= 0.005
    assert_distinct(curves[:4])
    assert_distinct(curves[4:])


def test_a_banked_pooled_run_saves_the_one_run_path_s_pooled_folder(stage3):
    from transformers import pipeline

    root, _, lone, banked = stage3
    for i in (0, 4):
        lone_best, bank_best = root / f"lone{i}" / "best", root / f"bank{i}" / "best"
        assert sorted(p.name for p in bank_best.iterdir()) == sorted(p.name for p in lone_best.iterdir())
        assert (bank_best / "modeling_metaft_pooled.py").is_file()
        config = json.loads((bank_best / "config.json").read_text())
        assert config == json.loads((lone_best / "config.json").read_text())
        assert config["model_type"] == "metaft-pooled" and "AutoModelForSequenceClassification" in config["auto_map"]
        classify = pipeline("text-classification", model=str(bank_best), trust_remote_code=True)
        assert classify("a great good movie")[0]["label"] in banked[i].labels


def test_the_bank_optimiser_trains_the_head_at_its_own_rate(stage3, models):
    from metaft.packed import PreparedRun

    root, tasks, _, _ = stage3
    cfgs = [c.replace(out=str(root / f"opt{i}")) for i, c in enumerate(ft_cfgs(tasks, models, root, "x")[:2])]
    bank = Bank([PreparedRun(c).member() for c in cfgs])
    assert bank.head_names == {"classifier.weight", "classifier.bias"}
    by_lr: dict[float, set[int]] = {}
    for group in bank.optimizer.param_groups:  # peak rates (the schedule starts them at 0)
        by_lr.setdefault(group["initial_lr"], set()).update(id(p) for p in group["params"])
    assert by_lr[3e-3] == {id(bank.params[k]) for k in bank.head_names}
    assert len(by_lr[cfgs[0].learning_rate]) == len(bank.params) - 2


def test_an_interrupted_pooled_bank_with_a_head_rate_resumes_to_the_uninterrupted_results(stage3, models, tmp_path,
                                                                                         monkeypatch):
    """A bank state holds the head's own AdamW groups and a pooled model's pooler, which gets no gradient."""
    from helpers import comparable, metrics_without_time, same_weights

    _, tasks, _, _ = stage3
    short = {**COMMON, "epochs": 5, "eval_every": 4, "dropout": 0.1}  # 30 steps; head dropout: the RNG resumes too
    cfgs = [ft_config(tasks[i], models["plain"], tmp_path / f"r{i}", **{**short, **RUNS[i]}) for i in range(3)]
    real = Bank.train_step

    def killed_at_10(self):
        if self.step == 10:
            raise KeyboardInterrupt("killed")
        return real(self)

    with monkeypatch.context() as mp:
        mp.setattr(Bank, "train_step", killed_at_10)
        with pytest.raises(KeyboardInterrupt):
            finetune_packed(cfgs, pack=3)
    resumed = finetune_packed([c.replace(resume=True) for c in cfgs], pack=3)
    assert [r.resumed_from for r in resumed] == [8, 8, 8]
    kept = [(metrics_without_time(tmp_path / f"r{i}"), tmp_path / f"r{i}" / "best") for i in range(3)]
    for i, (_, best) in enumerate(kept):
        best.rename(tmp_path / f"kept{i}")
    fresh = finetune_packed([c.replace(force=True) for c in cfgs], pack=3)
    for i in range(3):
        assert comparable(resumed[i]) == comparable(fresh[i])
        assert kept[i][0] == metrics_without_time(tmp_path / f"r{i}")
        assert same_weights(tmp_path / f"kept{i}", tmp_path / f"r{i}" / "best")


def test_auto_pooling_shares_the_bank_of_the_pooling_it_resolves_to(models, tmp_path):
    task = write_task(tmp_path / "t")
    auto = ft_config(task, models["cls"], tmp_path / "a", head_pooling="auto")
    config = model_config(str(models["cls"]))
    assert bank_key(auto, 48, 3, config) == bank_key(auto.replace(head_pooling="cls"), 48, 3, config)
    assert bank_key(auto, 48, 3, config) != bank_key(auto.replace(head_pooling="mean"), 48, 3, config)


def test_normalised_head_runs_in_a_bank_follow_their_lone_runs(models, tmp_path):
    """auto -> a mean head that normalises (the checkpoint's Normalize module), fresh or probe-fitted, one with
    its own head rate: the bank applies the lone run's normalisation."""
    tasks = [write_task(tmp_path / f"t{i}", seed=7 * i + 3) for i in range(3)]
    runs = [dict(head="probe", seed=1), dict(head="reinit", seed=2, head_learning_rate=3e-3),
            dict(head="probe", seed=3)]

    def cfgs(tag: str) -> list[FinetuneConfig]:
        return [ft_config(tasks[i], models["norm"], tmp_path / f"{tag}{i}", head_pooling="auto",
                          head_normalize="auto", **COMMON, **run) for i, run in enumerate(runs)]

    config = model_config(str(models["norm"]))
    auto = cfgs("key")[0]
    assert bank_key(auto, 48, 3, config) == bank_key(auto.replace(head_normalize="on"), 48, 3, config)
    assert bank_key(auto, 48, 3, config) != bank_key(auto.replace(head_normalize="off"), 48, 3, config)
    lone = [finetune(cfg) for cfg in cfgs("lone")]
    banked = finetune_packed(cfgs("bank"), pack=3)
    curves = []
    for i, run in enumerate(runs):
        curves.append(assert_follows(tmp_path / f"lone{i}", tmp_path / f"bank{i}"))
        assert banked[i].head_pooling == lone[i].head_pooling == "mean"
        assert banked[i].head_normalize is lone[i].head_normalize is True
        assert banked[i].best_step == lone[i].best_step and banked[i].head_probe == lone[i].head_probe
        assert (banked[i].head_probe is not None) == (run["head"] == "probe")
        saved = json.loads((tmp_path / f"bank{i}" / "best" / "config.json").read_text())
        assert saved["normalize"] is True and saved == json.loads((tmp_path / f"lone{i}" / "best" /
                                                                   "config.json").read_text())
    assert_distinct(curves)
    # the same run without the normalisation trains another model: the comparison above can fail
    off = finetune(cfgs("off")[0].replace(head_normalize="off"))
    assert off.head_normalize is False
    assert max(abs(rows(tmp_path / "off0", "train")[s]["loss_total"] - curves[0][s]["loss_total"])
               for s in range(1, 50)) > 1e-2


def test_what_still_takes_the_one_run_path():
    base = MetaConfig(head="probe", head_pooling="mean", head_learning_rate=1e-3, corruption="uniform",
                      domain_embedding=False)
    assert unpackable(base) is None and unpackable(FinetuneConfig(head="probe", head_pooling="cls")) is None
    assert unpackable(base.replace(mixed_precision="fp16")).startswith("mixed_precision fp16")
    assert unpackable(base.replace(compile=True)) == "compile"


def test_gpu_banks_are_capped_and_save_their_state_less_often():
    assert bank_capacity(1_000_000, torch.device("cuda"), memory=10**13) == GPU_MAX_PACK == 32
    assert save_interval(60.0, torch.device("cuda")) == CUDA_MIN_SAVE_S == 300.0
    assert save_interval(900.0, torch.device("cuda")) == 900.0
    assert save_interval(0.0, torch.device("cpu")) == 0.0


# ---------------------------------------------------------------------------------------------- stage 2

META = {"uniform-probe": dict(domain_loss="corrupt", corruption="uniform", domain_embedding=True, head="probe"),
        "no-embedding": dict(domain_loss="corrupt", corruption="permute", domain_embedding=False),
        "uniform-no-embedding": dict(domain_loss="corrupt", corruption="uniform", domain_embedding=False),
        "grl-probe": dict(domain_loss="grl", head="probe")}


@pytest.fixture(scope="module")
def stage2(models, tmp_path_factory):
    """Four meta-stage variants with a mean head and a head learning rate, alone and in one bank; 54 steps."""
    from metaft.cli import main

    root = tmp_path_factory.mktemp("meta-settings")
    cross = write_task(root / "k-shot-cross" / "toy" / "8-1", n_train=72, n_dev=36, n_test=0,
                       domains=("book", "movie", "product"))
    assert main(["-q", "preprocess", str(cross), "--model", str(models["plain"])]) == 0

    def cfg(tag, i, variant):
        return MetaConfig(data_dir=str(cross), model=str(models["plain"]), out=str(root / f"{tag}-{variant}"),
                          epochs=6, batch_size=8, eval_batch_size=32, learning_rate=1e-3, eval_every=9, seed=i + 1,
                          dropout=0.0, mixed_precision="no", head_pooling="mean", head_learning_rate=5e-3,
                          domain_weight=1.0, **META[variant])

    lone = [meta_finetune(cfg("lone", i, v)) for i, v in enumerate(META)]
    banked = meta_finetune_packed([cfg("bank", i, v) for i, v in enumerate(META)], pack=4)
    return root, lone, banked


def test_uniform_corruption_and_no_embedding_runs_in_a_bank_follow_their_lone_runs(stage2):
    from safetensors.torch import load_file

    root, lone, banked = stage2
    curves = []
    for variant, a, b in zip(META, lone, banked):
        la, lb = root / f"lone-{variant}", root / f"bank-{variant}"
        curves.append(assert_follows(la, lb, ("loss_total", "loss_cls", "loss_domain")))
        ra, rb = (json.loads((d / "meta_results.json").read_text()) for d in (la, lb))
        assert ra.keys() == rb.keys() and ra["best_step"] == rb["best_step"]
        assert ra["head_pooling"] == rb["head_pooling"] == "mean" and ra["head_probe"] == rb["head_probe"]
        assert (min(rows(lb, "dev")) == 0) == (META[variant].get("head") == "probe")
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        assert (a / "metaft_meta.json").read_text() == (b / "metaft_meta.json").read_text()
        assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
        heads = [load_file(str(d / "domain_head.safetensors")) for d in (a, b)]
        assert heads[0].keys() == heads[1].keys()
        assert ("embedding.weight" in heads[1]) == META[variant].get("domain_embedding", False)
    meta = json.loads((banked[0] / "metaft_meta.json").read_text())
    assert meta["corruption"] == "uniform" and meta["domain_embedding"] is True
    assert_distinct(curves)


def test_stage_3_from_pooled_meta_learners_in_a_bank_follows_its_lone_runs(stage2, tmp_path):
    """Each run from its own pooled meta-learner (auto -> mean, the folder's own), its head kept, refitted or new."""
    _, _, meta = stage2
    tasks = [write_task(tmp_path / f"t{i}", seed=5 * i + 2) for i in range(4)]
    heads = ("keep", "probe", "keep", "reinit")

    def cfgs(tag: str) -> list[FinetuneConfig]:
        return [ft_config(tasks[i], meta[i], tmp_path / f"{tag}{i}", head_pooling="auto", head=h, seed=i + 1,
                          **COMMON) for i, h in enumerate(heads)]

    lone = [finetune(cfg) for cfg in cfgs("lone")]
    banked = finetune_packed(cfgs("bank"), pack=4)
    curves = []
    for i, head in enumerate(heads):
        curves.append(assert_follows(tmp_path / f"lone{i}", tmp_path / f"bank{i}"))
        assert banked[i].best_step == lone[i].best_step and banked[i].head_pooling == "mean"
        assert min(rows(tmp_path / f"bank{i}", "dev")) == (6 if head == "reinit" else 0)
    assert_distinct(curves)


def test_normalised_head_meta_runs_in_a_bank_follow_their_lone_runs(models, tmp_path):
    """Stage 2 with auto -> a normalising mean head (fresh and probe-fitted) and the domain loss."""
    cross = write_task(tmp_path / "cross", n_train=72, n_dev=36, n_test=0, domains=("book", "movie", "product"))

    def cfg(tag: str, i: int, head: str) -> MetaConfig:
        return MetaConfig(data_dir=str(cross), model=str(models["norm"]), out=str(tmp_path / f"{tag}{i}"), epochs=6,
                          batch_size=8, eval_batch_size=32, learning_rate=1e-3, eval_every=9, seed=i + 1,
                          dropout=0.0, mixed_precision="no", typicality=False, domain_weight=1.0, head=head)

    heads = ("probe", "reinit")
    lone = [meta_finetune(cfg("lone", i, h)) for i, h in enumerate(heads)]
    banked = meta_finetune_packed([cfg("bank", i, h) for i, h in enumerate(heads)], pack=2)
    curves = []
    for i in range(len(heads)):
        curves.append(assert_follows(tmp_path / f"lone{i}", tmp_path / f"bank{i}", ("loss_total", "loss_cls")))
        ra, rb = (json.loads((tmp_path / f"{t}{i}" / "meta_results.json").read_text()) for t in ("lone", "bank"))
        assert ra["head_normalize"] is rb["head_normalize"] is True and ra["head_pooling"] == "mean"
        assert json.loads((banked[i] / "config.json").read_text())["normalize"] is True
        assert json.loads((lone[i] / "config.json").read_text()) == json.loads((banked[i] / "config.json").read_text())
    assert_distinct(curves)
