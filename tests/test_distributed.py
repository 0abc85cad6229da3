"""Stage 2 on two CPU processes (torchrun, gloo DDP) matches one process with the same global batch.

Two processes with batch b see exactly the examples one process with batch 2b sees at every step (the
global batch ``perm[pos*2b:(pos+1)*2b]`` split between ranks), and DDP averages the two equal-sized shard
gradients, which is the gradient of the one-process mean. The runs are therefore the same computation up to
the floating-point order of that sum, provided nothing else depends on the split:
  * dropout is off (each rank forks the same seeded RNG, so the ranks would draw identical masks for
    different examples, unlike the one-process run): a tiny model with hidden/attention dropout 0 and
    ``--dropout 0``;
  * the domain loss is ``grl`` (CE on the true domains: a mean over examples, split-invariant). The paper's
    ``corrupt`` loss permutes the domain labels *within each process's batch*, so with 2 processes it is a
    legitimately different (per-shard) permutation than with 1;
  * no typicality weights (they would be split-invariant too, ``mean(w * ce)``, but need a preprocess run).
Dev accuracy must then be equal at every evaluation, every evaluation must count each dev example exactly
once (21 dev examples: not a multiple of 2 processes x eval batch 4, so accelerate pads the last batch and
``gather_for_metrics`` must drop the duplicates), and the best weights agree within a float tolerance.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import write_task

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

N_TRAIN, N_DEV, BATCH = 24, 21, 2  # 24 = a multiple of the global batch 4: identical batches every step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def no_dropout_model(tiny_model_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-no-dropout") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def argv(data: Path, model: Path, out: Path, batch: int) -> list[str]:
    return ["-q", "meta-finetune", "--data-dir", str(data), "--model", str(model), "--out", str(out),
            "--epochs", "2", "--batch-size", str(batch), "--eval-batch-size", "4", "--lr", "1e-3",
            "--eval-every", "4", "--seed", "5", "--dropout", "0", "--domain-loss", "grl", "--no-typicality",
            "--mixed-precision", "no"]


def dev_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "dev"]


def test_two_processes_match_one_with_the_same_global_batch(no_dropout_model, tmp_path):
    from safetensors.torch import load_file

    from metaft.cli import main

    data = write_task(tmp_path / "data", n_train=N_TRAIN, n_dev=N_DEV, n_test=0, domains=("book", "movie"), seed=3)

    one = tmp_path / "one"
    assert main(argv(data, no_dropout_model, one, 2 * BATCH)) == 0

    two = tmp_path / "two"
    port = free_port()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "metaft", *argv(data, no_dropout_model, two, BATCH)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r1, r2 = (json.loads((run / "meta_results.json").read_text()) for run in (one, two))
    assert r1["total_steps"] == r2["total_steps"] == 2 * N_TRAIN // (2 * BATCH)  # global steps, not per process
    assert r2["config"]["batch_size"] == BATCH and r1["config"]["batch_size"] == 2 * BATCH

    d1, d2 = dev_rows(one), dev_rows(two)
    assert [r["step"] for r in d1] == [r["step"] for r in d2] == [4, 8, 12]
    assert all(r["dev_n"] == N_DEV for r in d1 + d2), "every dev example counted exactly once"
    assert [r["dev_accuracy"] for r in d1] == [r["dev_accuracy"] for r in d2]
    assert [r["dev_macro_f1"] for r in d1] == pytest.approx([r["dev_macro_f1"] for r in d2], abs=1e-12)
    assert r1["best_step"] == r2["best_step"] and r1["best_dev_accuracy"] == r2["best_dev_accuracy"]
    assert r1["best_model_name"] == r2["best_model_name"]

    # the same computation up to the order of the gradient sum (DDP all-reduce vs one batch): close weights
    w1 = load_file(str(one / r1["best_model_name"] / "model.safetensors"))
    w2 = load_file(str(two / r2["best_model_name"] / "model.safetensors"))
    assert w1.keys() == w2.keys()
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert worst < 1e-4, f"weights differ by up to {worst:g}"
    # the training loss the main process logs is its own shard's; the 1-process loss is the global batch's
    t1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert len(t1) == r1["total_steps"]
