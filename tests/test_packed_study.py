"""Packed studies and banks that stop and resume: ``metaft run --pack N`` writes the folders and records of
the one-run path, a bank killed midway resumes to the results of an uninterrupted one, and a run that diverges
inside a bank is stopped alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from helpers import comparable, ft_config, metrics_without_time, same_weights, weights_of, write_task
from metaft.bank import Bank
from metaft.cli import main
from metaft.config import StudyConfig
from metaft.errors import ConfigError
from metaft.evaluation import NonFiniteError
from metaft.packed_stages import finetune_packed
from metaft.results import read_study

FAST = {"meta": {"epochs": 1, "batch_size": 8, "eval_batch_size": 256, "learning_rate": 1e-4},
        "finetune": {"epochs": 1, "batch_size": 8, "eval_batch_size": 256, "learning_rate": 1e-4,
                     "test_limit": 64}}
BANK = dict(epochs=5, eval_every=4, dropout=0.1, mixed_precision="no")  # 30 steps of 8 examples, with dropout


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_packed_study_writes_the_one_run_path_s_folders_and_records(tiny_model_dir, corpora_root, tmp_path):
    settings = dict(corpora=str(corpora_root), group="g1", k=4, seeds=(42,), model=str(tiny_model_dir),
                    ablations=("multitask",), jobs=1, pca=False, **FAST)
    one = StudyConfig.from_dict({**settings, "out": str(tmp_path / "one"), "pack": 1})
    from metaft.study import run_study

    lone = run_study(one)
    config = tmp_path / "study.json"
    config.write_text(json.dumps(settings))
    assert main(["-q", "run", "--config", str(config), "--out", str(tmp_path / "packed"), "--pack", "4"]) == 0
    packed = read_study(tmp_path / "packed" / "study.json")
    assert json.loads((tmp_path / "packed" / "config.json").read_text())["pack"] == 4
    assert files(tmp_path / "packed") == files(tmp_path / "one")
    assert [(u.variant, u.domain, u.path) for u in packed.units] == [(u.variant, u.domain, u.path) for u in lone.units]
    assert [(m.variant, m.path) for m in packed.meta] == [(m.variant, m.path) for m in lone.meta]
    assert all(u.wall_time_s > 0 and 0 <= u.test_accuracy <= 1 for u in packed.units)
    for unit in packed.units:
        a, b = (json.loads((tmp_path / s / unit.path / "results.json").read_text()) for s in ("one", "packed"))
        assert a.keys() == b.keys() and a["timings"].keys() == b["timings"].keys()
        assert b["timings"]["total_s"] == unit.wall_time_s
    assert (tmp_path / "packed" / "report.md").is_file()
    # a rerun (back to one run at a time: pack may change) reuses every unit
    assert main(["-q", "run", "--config", str(config), "--out", str(tmp_path / "packed"), "--pack", "1"]) == 0
    assert read_study(tmp_path / "packed" / "study.json").units == packed.units


def test_pack_auto_is_the_one_run_path_on_cpu_and_banks_on_cuda():
    from metaft.bank_plan import resolve_pack

    assert StudyConfig().pack is None and StudyConfig.from_dict({"pack": "auto"}).pack is None
    assert resolve_pack(None, torch.device("cpu")) == 1
    assert resolve_pack(None, torch.device("cuda")) is None  # sized by free memory
    assert resolve_pack(3, torch.device("cpu")) == 3
    for bad in (0, -2, "two", 1.5, True):
        with pytest.raises(ConfigError, match="pack must be a positive integer or 'auto'"):
            StudyConfig.from_dict({"pack": bad})


@pytest.fixture(scope="module")
def three_tasks(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("bank-tasks")
    return [write_task(root / f"t{i}", seed=7 * i + 2) for i in range(3)]


def bank_configs(tasks, model, root: Path, **kw):
    return [ft_config(d, model, root / f"r{i}", seed=i + 1, **{**BANK, **kw}) for i, d in enumerate(tasks)]


def stop_after(monkeypatch, steps: int) -> None:
    real = Bank.train_step

    def train_step(self):
        if self.step == steps:
            raise KeyboardInterrupt("killed")
        return real(self)

    monkeypatch.setattr(Bank, "train_step", train_step)


def test_an_interrupted_bank_resumes_to_the_uninterrupted_results(tiny_model_dir, three_tasks, tmp_path,
                                                                    monkeypatch):
    cfgs = bank_configs(three_tasks, tiny_model_dir, tmp_path)
    with monkeypatch.context() as mp:
        stop_after(mp, 10)  # killed at step 10; the state was saved at the evaluation of step 8
        with pytest.raises(KeyboardInterrupt):
            finetune_packed(cfgs, pack=3)
    assert not any((tmp_path / f"r{i}" / "results.json").exists() for i in range(3))  # nothing looks finished
    saved = json.loads((tmp_path / "r0" / "state" / "bank.json").read_text())
    assert saved["step"] == 8 and not (tmp_path / "r1" / "state").exists()
    resumed = finetune_packed([c.replace(resume=True) for c in cfgs], pack=3)
    assert [r.resumed_from for r in resumed] == [8, 8, 8]
    assert not (tmp_path / "r0" / "state").exists()  # finished: nothing left to resume
    kept = {i: (metrics_without_time(tmp_path / f"r{i}"), tmp_path / f"kept{i}") for i in range(3)}
    for i in range(3):
        (tmp_path / f"r{i}" / "best").rename(kept[i][1])
    fresh = finetune_packed([c.replace(force=True) for c in cfgs], pack=3)  # the same bank, uninterrupted
    assert [r.resumed_from for r in fresh] == [None] * 3
    for i in range(3):
        assert comparable(resumed[i]) == comparable(fresh[i])
        assert kept[i][0] == metrics_without_time(tmp_path / f"r{i}")
        assert same_weights(kept[i][1], tmp_path / f"r{i}" / "best")
    # the runs differ (data, seed, dropout), so a mix-up would show above
    assert len({json.dumps(comparable(r)["dev_history"]) for r in fresh}) == 3


def test_a_bank_with_other_members_starts_over(tiny_model_dir, three_tasks, tmp_path, monkeypatch):
    cfgs = bank_configs(three_tasks, tiny_model_dir, tmp_path)
    with monkeypatch.context() as mp:
        stop_after(mp, 10)
        with pytest.raises(KeyboardInterrupt):
            finetune_packed(cfgs, pack=3)
    two = finetune_packed([c.replace(resume=True) for c in cfgs[:2]], pack=3)
    assert [r.resumed_from for r in two] == [None, None]  # membership changed: started over
    train_steps = [r["step"] for r in metrics_without_time(tmp_path / "r0") if r["kind"] == "train"]
    assert train_steps == list(range(1, 31))  # the killed bank's records are gone, not appended to
    assert not (tmp_path / "r2" / "results.json").exists()


def poison(monkeypatch, where: str) -> None:
    """Make run 1 of a bank diverge: NaN weights after step 7 (its loss at step 8 is NaN), or NaN dev logits at
    the evaluation of step 8 (finite weights)."""
    if where == "weights":
        real = Bank.train_step

        def train_step(self):
            out = real(self)
            if self.step == 7:
                with torch.no_grad():
                    self.params["bert.encoder.layer.0.output.dense.weight"][1].fill_(float("nan"))
            return out

        monkeypatch.setattr(Bank, "train_step", train_step)
    else:  # on a CPU the bank evaluates one run at a time
        real_eval = Bank.evaluate

        def evaluate(self, r):
            if r != 1 or self.step != 8:
                return real_eval(self, r)
            logits = self.eval_logits
            self.eval_logits = lambda model, params, batch: logits(model, params, batch) * float("nan")
            try:
                return real_eval(self, r)
            finally:
                del self.eval_logits

        monkeypatch.setattr(Bank, "evaluate", evaluate)


@pytest.mark.parametrize("where, why, last_step", [
    ("weights", "the loss is nan at step 8", 7),
    ("logits", r"step 8: the model gives non-finite logits \(NaN / inf\) for 24 of 24 evaluation examples", 8)])
def test_a_diverging_run_is_stopped_alone(tiny_model_dir, three_tasks, tmp_path, monkeypatch, where, why, last_step):
    cfgs = bank_configs(three_tasks, tiny_model_dir, tmp_path)
    clean = finetune_packed(cfgs, pack=3)
    clean_metrics = [metrics_without_time(tmp_path / f"r{i}") for i in range(3)]
    poison(monkeypatch, where)
    with pytest.raises(NonFiniteError, match=rf"1 run\(s\) of a bank diverged: {re.escape(str(tmp_path / 'r1'))}: "
                                             rf"{why}.*: the run diverged"):
        finetune_packed([c.replace(force=True) for c in cfgs], pack=3)
    for i in (0, 2):  # the others finish as if nothing happened
        assert comparable(json.loads((tmp_path / f"r{i}" / "results.json").read_text())) == comparable(clean[i])
        assert metrics_without_time(tmp_path / f"r{i}") == clean_metrics[i]
    run = tmp_path / "r1"
    assert not (run / "results.json").exists()  # left as the one-run path leaves a diverged run
    rows = metrics_without_time(run)
    assert max(r["step"] for r in rows) == last_step and rows == clean_metrics[1][:len(rows)]
    assert [r["step"] for r in rows if r["kind"] == "dev"] == [0, 4]  # the probe head (default): step 0 too
    assert all(torch.isfinite(w).all() for w in weights_of(run / "best").values())  # the step-0 or -4 checkpoint
    assert not (tmp_path / "r0" / "state").exists()


def test_an_interrupted_meta_bank_resumes_to_the_uninterrupted_results(tiny_model_dir, tmp_path, monkeypatch):
    """Stage 2: every variant's loss terms in one bank; stopped at step 12, resumed from its state at step 10."""
    from metaft.config import MetaConfig
    from metaft.packed_stages import meta_finetune_packed

    cross = write_task(tmp_path / "k-shot-cross" / "toy" / "8-1", n_train=72, n_dev=36, n_test=0,
                       domains=("book", "movie", "product"))
    assert main(["-q", "preprocess", str(cross), "--model", str(tiny_model_dir)]) == 0
    variants = {"mft": dict(domain_loss="corrupt"), "grl": dict(domain_loss="grl"),
                "multitask": dict(typicality=False, domain_loss="none")}
    cfgs = [MetaConfig(data_dir=str(cross), model=str(tiny_model_dir), out=str(tmp_path / v), epochs=2, batch_size=8,
                       eval_batch_size=32, learning_rate=1e-3, eval_every=5, seed=i + 1, save_state_every_s=0, **kw)
            for i, (v, kw) in enumerate(variants.items())]
    with monkeypatch.context() as mp:
        stop_after(mp, 12)
        with pytest.raises(KeyboardInterrupt):
            meta_finetune_packed(cfgs, pack=3)
    resumed = meta_finetune_packed([c.replace(resume=True) for c in cfgs], pack=3)
    first = [(json.loads((tmp_path / v / "meta_results.json").read_text()), metrics_without_time(tmp_path / v))
             for v in variants]
    assert [r["resumed_from"] for r, _ in first] == [10, 10, 10]
    assert meta_finetune_packed([c.replace(force=True) for c in cfgs], pack=3) == resumed
    for v, (results, metrics) in zip(variants, first):
        again = json.loads((tmp_path / v / "meta_results.json").read_text())
        assert {k: results[k] for k in ("dev_history", "best_step", "best_model_name", "best_dev_accuracy")} == {
            k: again[k] for k in ("dev_history", "best_step", "best_model_name", "best_dev_accuracy")}
        assert metrics == metrics_without_time(tmp_path / v)
