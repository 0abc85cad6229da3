"""The training loop: batches, schedule, metrics, best checkpoint, run folders, resume and safe saves."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import comparable, ft_config, metrics_without_time, same_weights
from metaft.errors import ConfigError

# ----------------------------------------------------------------------------------------------- units

def test_batches_cover_each_epoch_once_and_differ_between_epochs():
    from metaft.training import epoch_permutation, planned_steps, step_batch

    perm0, perm1 = epoch_permutation(10, 7, 0), epoch_permutation(10, 7, 1)
    assert perm0 == epoch_permutation(10, 7, 0) and perm0 != perm1
    batches = [step_batch(perm0, pos, 4) for pos in range(3)]
    assert sorted(sum(batches, [])) == list(range(10)) and [len(b) for b in batches] == [4, 4, 2]
    # two processes: disjoint shares of the same global batch, none empty on a short last batch
    assert sorted(step_batch(perm0, 0, 2, 2, 0) + step_batch(perm0, 0, 2, 2, 1)) == sorted(perm0[:4])
    assert step_batch(perm0, 1, 3, 3, 2) == [perm0[9]]  # global batch 9: the last one has one example
    assert planned_steps(96, 4, 63, 1) == 1512 and planned_steps(10, 4, 0.5, 1) == 2


def test_length_grouping_keeps_every_example_and_sorts_within_chunks():
    from metaft.training import epoch_permutation, group_by_length

    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11]
    perm = epoch_permutation(len(lengths), 1, 0)
    grouped = group_by_length(perm, lengths, batch=2, megabatches=2)  # chunks of 4
    assert sorted(grouped) == list(range(len(lengths)))
    for start in range(0, len(perm), 4):
        chunk = grouped[start:start + 4]
        assert set(chunk) == set(perm[start:start + 4])
        assert [lengths[i] for i in chunk] == sorted((lengths[i] for i in chunk), reverse=True)


def test_metrics_and_optimizer_groups():
    from metaft.evaluation import classification_metrics
    from metaft.training import build_optimizer, build_scheduler

    m = classification_metrics(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1]), ["a", "b", "c"])
    assert m["accuracy"] == 0.5 and m["n"] == 4
    assert m["per_label"]["b"] == {"support": 3, "correct": 1, "predicted": 1}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, 1e-3, 0.01)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and len(decay["params"]) == 1  # only the Linear weight
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3
    sched, lrs = build_scheduler(opt, 20, 0.1), []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 2
    assert sched.get_last_lr()[0] == 0.0


def test_seeded_leaves_the_global_rng_alone():
    from metaft.training import seeded

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with seeded(5):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    with seeded(5):
        assert torch.equal(torch.rand(3), inside)


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])  # clipping active / not
def test_clip_gradients_matches_torch_bit_for_bit(max_norm):
    from metaft.training import clip_gradients

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))
    twin = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))
    twin.load_state_dict(model.state_dict())
    x = torch.randn(5, 8)
    for net in (model, twin):
        net(x).square().sum().backward()
    model[1].weight.grad = None  # a parameter without a gradient is skipped
    twin[1].weight.grad = None
    norm = clip_gradients(list(model.parameters()), max_norm)
    expected = torch.nn.utils.clip_grad_norm_(twin.parameters(), max_norm)
    assert torch.equal(norm, expected)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)
    scaled = sum(float(p.grad.norm()) ** 2 for p in model.parameters() if p.grad is not None) ** 0.5
    assert scaled == pytest.approx(min(float(norm), max_norm), rel=1e-4)


_REALLOCATE_64MB = """
import resource, sys, torch
from metaft.training import keep_freed_memory
on = sys.argv[1] == "on" and keep_freed_memory()
faults = []
for _ in range(5):  # what a training step does with its embedding gradient: a fresh zeroed 64 MB block
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.zeros(16 * 2**20)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(on, min(faults[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_cpu_training_reuses_freed_memory_instead_of_faulting_in_fresh_pages():
    def fewest_faults(mode):  # after the first allocation
        env = {**os.environ, "METAFT_MALLOC_TUNING": "1"}
        out = subprocess.run([sys.executable, "-c", _REALLOCATE_64MB, mode], capture_output=True, text=True,
                             env=env, check=True).stdout.split()
        return out[0] == "True", int(out[1])

    tuned, tuned_faults = fewest_faults("on")
    untuned, plain_faults = fewest_faults("off")
    assert tuned and not untuned
    assert plain_faults > 10_000  # 64 MB of 4 KB pages, mapped anew on every allocation
    assert tuned_faults < 100


def test_cpu_training_applies_the_malloc_setting(reference_run):
    import platform

    from metaft import training

    expected = platform.libc_ver()[0] == "glibc" and os.environ.get("METAFT_MALLOC_TUNING", "1") != "0"
    assert training._MALLOC_TUNED is expected


def test_malloc_tuning_can_be_switched_off(monkeypatch):
    from metaft import training

    monkeypatch.setattr(training, "_MALLOC_TUNED", False)
    monkeypatch.setenv("METAFT_MALLOC_TUNING", "0")
    assert training.keep_freed_memory() is False


# ----------------------------------------------------------------------------------------- the loop runs

def test_finetune_learns_logs_and_keeps_the_best(reference_run):
    from transformers import pipeline

    run, res = reference_run
    assert res.test_accuracy > 0.6 and res.best_dev_accuracy > 0.6  # chance is 1/3
    rows = metrics_without_time(run)
    train_rows = [r for r in rows if r["kind"] == "train"]
    dev_rows = [r for r in rows if r["kind"] == "dev"]
    assert len(train_rows) == res.total_steps == 60
    assert {"step", "epoch", "lr", "grad_norm", "loss_cls", "loss_total"} <= set(train_rows[0])
    assert train_rows[-1]["loss_total"] < train_rows[0]["loss_total"]
    # the default head is fitted on the frozen features first (probe): step 0 is a candidate
    assert [r["step"] for r in dev_rows] == list(range(0, 61, 5)) and res.head_probe is not None
    accs = [r["dev_accuracy"] for r in dev_rows]
    first_best = dev_rows[accs.index(max(accs))]  # ties keep the earlier checkpoint
    assert res.best_step == first_best["step"] and res.best_dev_accuracy == max(accs)
    assert {"dev_macro_f1", "best_dev_accuracy", "epoch"} <= set(dev_rows[0])
    assert sum(c["support"] for c in res.test["per_label"].values()) == res.num_examples["test"] == 30
    assert not (run / "state").exists()  # dropped once the run is finished
    clf = pipeline("text-classification", model=str(run / "best"))
    assert clf("great good")[0]["label"] in {"neg", "neu", "pos"}


def test_existing_run_folders_need_force_or_resume(reference_run, tiny_model_dir, single, tmp_path):
    from metaft.stages import finetune

    run, res = reference_run
    cfg = ft_config(single, tiny_model_dir, run)
    with pytest.raises(ConfigError, match="finished run.*--force"):
        finetune(cfg)
    assert finetune(cfg.replace(resume=True)) == res  # finished: nothing to do
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "results.json").unlink()
    with pytest.raises(ConfigError, match="unfinished run.*--resume.*--force"):
        finetune(cfg.replace(out=str(unfinished)))
    with pytest.raises(ConfigError, match="different settings.*seed"):
        finetune(cfg.replace(out=str(unfinished), resume=True, seed=4))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a metaft run folder"):
        finetune(cfg.replace(out=str(tmp_path / "other"), force=True))
    forced = finetune(cfg.replace(out=str(unfinished), epochs=1, force=True))
    assert forced.total_steps == 6


def test_a_run_written_before_a_setting_existed_still_resumes(reference_run, tiny_model_dir, single, tmp_path):
    """metaft versions add settings; a run folder whose config.json lacks one resumes if it has its default."""
    from metaft.stages import finetune

    run, res = tmp_path / "old", reference_run[1]
    shutil.copytree(reference_run[0], run)
    saved = json.loads((run / "config.json").read_text())
    del saved["compile_mode"], saved["group_by_length"]
    (run / "config.json").write_text(json.dumps(saved))
    cfg = ft_config(single, tiny_model_dir, run, resume=True)
    assert cfg.changed_from(saved, ignored=("out", "resume")) == {}
    assert cfg.replace(compile_mode="reduce-overhead").changed_from(saved, ignored=("out", "resume")) == {
        "compile_mode": ("default", "reduce-overhead")}
    (run / "results.json").unlink()
    assert comparable(finetune(cfg)) == comparable(res)
    with pytest.raises(ConfigError, match="group_by_length: False -> True"):
        finetune(cfg.replace(group_by_length=True))
    del saved["head"], saved["head_pooling"]  # written before the head settings: it trained the reference head
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"different settings \(head: 'reinit' -> 'probe', head_pooling: "
                                          r"'pooler' -> 'auto'\)"):
        finetune(cfg)


def test_compiled_training_uses_few_static_graphs_and_saves_plain_weights(reference_run, tiny_model_dir, single,
                                                                          tmp_path):
    """--compile with batches padded to multiples of 16: one graph per (width, batch) shape, a model that learns,
    and a best/ folder that loads like any other (no torch.compile prefixes in the weights)."""
    import torch._dynamo

    from helpers import weights_of
    from metaft.stages import finetune

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    res = finetune(ft_config(single, tiny_model_dir, tmp_path / "run", compile=True, pad_to_multiple_of=16))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert 1 <= graphs <= 4, graphs  # texts of 4-8 words: widths 16 (32 at most) x (full, short last batch)
    assert res.best_dev_accuracy > 0.6  # chance is 1/3; as the eager reference run
    assert weights_of(tmp_path / "run" / "best").keys() == weights_of(reference_run[0] / "best").keys()


def test_resume_after_a_crash_matches_an_uninterrupted_run(reference_run, tiny_model_dir, single, tmp_path, monkeypatch):
    import metaft.stages as stages

    ref_run, ref = reference_run
    real_loss = stages.ce_loss

    def crashing_loss(model, batch, step):
        if step == 27:  # after the evaluation (and saved state) of step 25
            raise RuntimeError("simulated crash")
        return real_loss(model, batch, step)

    cfg = ft_config(single, tiny_model_dir, tmp_path / "run")
    monkeypatch.setattr(stages, "ce_loss", crashing_loss)
    with pytest.raises(RuntimeError, match="simulated crash"):
        stages.finetune(cfg)
    monkeypatch.setattr(stages, "ce_loss", real_loss)
    res = stages.finetune(cfg.replace(resume=True))
    assert res.resumed_from == 25
    assert comparable(res) == comparable(ref)
    assert metrics_without_time(tmp_path / "run") == metrics_without_time(ref_run)
    assert same_weights(tmp_path / "run" / "best", ref_run / "best")


def test_throttled_state_saves_restart_cleanly(reference_run, tiny_model_dir, single, tmp_path, monkeypatch):
    """With a long save interval no state is written mid-run: a crash then restarts from step 0, same end."""
    import metaft.stages as stages

    real_loss = stages.ce_loss

    def crashing_loss(model, batch, step):
        if step == 27:
            assert not (tmp_path / "run" / "state").exists()
            raise RuntimeError("simulated crash")
        return real_loss(model, batch, step)

    cfg = ft_config(single, tiny_model_dir, tmp_path / "run", save_state_every_s=3600)
    monkeypatch.setattr(stages, "ce_loss", crashing_loss)
    with pytest.raises(RuntimeError, match="simulated crash"):
        stages.finetune(cfg)
    monkeypatch.setattr(stages, "ce_loss", real_loss)
    res = stages.finetune(cfg.replace(resume=True, save_state_every_s=0))  # may change on resume
    assert res.resumed_from is None
    assert comparable(res) == comparable(reference_run[1])


def test_a_failing_save_leaves_the_previous_best_intact(reference_run, tiny_model_dir, single, tmp_path, monkeypatch):
    from transformers import pipeline

    import metaft.hub
    import metaft.stages as stages

    run = tmp_path / "run"
    tok_cls = type(metaft.hub.load_tokenizer(tiny_model_dir))
    real_save, calls, before = tok_cls.save_pretrained, [], {}

    def dying_save(self, folder, *args, **kwargs):
        calls.append(folder)
        if len(calls) == 2:  # the second best checkpoint: the model file is written, then the process dies
            before["hash"] = hashlib.sha256((run / "best" / "model.safetensors").read_bytes()).hexdigest()
            (Path(folder) / "tokenizer.json").write_text("{ half a fi")
            raise KeyboardInterrupt("killed while saving")
        return real_save(self, folder, *args, **kwargs)

    monkeypatch.setattr(tok_cls, "save_pretrained", dying_save)
    with pytest.raises(KeyboardInterrupt):
        stages.finetune(ft_config(single, tiny_model_dir, run))
    monkeypatch.setattr(tok_cls, "save_pretrained", real_save)
    assert hashlib.sha256((run / "best" / "model.safetensors").read_bytes()).hexdigest() == before["hash"]
    assert not [p for p in run.iterdir() if p.name.endswith((".tmp", ".old"))]  # no half-written folder left
    assert pipeline("text-classification", model=str(run / "best"))("bad awful")[0]["label"]
    res = stages.finetune(ft_config(single, tiny_model_dir, run, resume=True))
    assert comparable(res) == comparable(reference_run[1])


def test_sigkill_mid_training_then_resume_matches(reference_run, tiny_model_dir, single, tmp_path):
    """A real `kill -9` of `python -m metaft finetune`, then `--resume`: same metrics and weights."""
    ref_run, ref = reference_run
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "metaft", "-q", "finetune", "--data-dir", str(single), "--model", str(tiny_model_dir),
            "--out", str(run), "--epochs", "10", "--batch-size", "8", "--eval-batch-size", "16", "--lr", "5e-3",
            "--eval-every", "5", "--seed", "3", "--save-state-every", "0"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = run / "state" / "trainer_state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text() or "{}").get("step", 0) >= 10:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "results.json").exists()
    again = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr
    resumed = subprocess.run(argv + ["--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "test accuracy" in resumed.stdout
    res = json.loads((run / "results.json").read_text())
    assert res["resumed_from"] >= 10
    assert comparable(res) == comparable(ref)
    assert metrics_without_time(run) == metrics_without_time(ref_run)
    assert same_weights(run / "best", ref_run / "best")
