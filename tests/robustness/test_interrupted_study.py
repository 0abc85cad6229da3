"""A study killed with SIGKILL at many points (during saves too) and rerun ends with the same numbers."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from metaft.cli import main

# a tiny model, g1 at K 4: 24 cross-domain examples; every evaluation saves the resumable state; the units
# run in two worker processes (killed with the study)
STUDY = {"group": "g1", "k": 4, "seeds": [42], "pca": True, "jobs": 2,  # two worker processes
         "meta": {"epochs": 4, "batch_size": 4, "learning_rate": 1e-3, "eval_every": 3, "save_state_every_s": 0},
         "finetune": {"epochs": 4, "batch_size": 4, "learning_rate": 1e-3, "eval_every": 2,
                      "save_state_every_s": 0, "test_limit": 64}}
SRC = Path(__file__).resolve().parents[2] / "src"


def numbers(run: Path) -> dict:
    """What must not change: every unit's test and dev metrics and the meta stage's dev accuracy."""
    study = json.loads((run / "study.json").read_text())
    units = {(u["seed"], u["variant"], u["domain"]): (u["test_accuracy"], u["test_macro_f1"], u["dev_accuracy"])
             for u in study["units"]}
    meta = {(m["seed"], m["variant"]): m["dev_accuracy"] for m in study["meta"]}
    return {"units": units, "meta": meta}


def saving(folder: Path) -> bool:
    """A checkpoint of some run under ``folder`` is being written (its temporary folder exists)."""
    return folder.is_dir() and any(p.name.endswith(".tmp") for p in folder.iterdir())


def lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def kill_when(argv: list[str], env: dict, condition: Callable[[], bool], timeout: float = 300) -> bool:
    """Start the study, SIGKILL it as soon as ``condition()`` holds; False if it finished first."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            hit = condition()
        except OSError:  # a folder vanished while we looked (renamed by an atomic save)
            hit = False
        if hit:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
    err = proc.communicate()[1].decode()
    assert proc.returncode == 0, err[-3000:]
    return False


@pytest.mark.slow
def test_a_study_killed_at_many_points_finishes_with_the_same_numbers(tiny_model_dir, corpora_root, tmp_path):
    config = tmp_path / "study.json"
    config.write_text(json.dumps({**STUDY, "model": str(tiny_model_dir), "corpora": str(corpora_root)}))
    reference, run = tmp_path / "reference", tmp_path / "killed"
    assert main(["-q", "run", "--config", str(config), "--out", str(reference)]) == 0

    argv = [sys.executable, "-m", "metaft", "-q", "run", "--config", str(config), "--out", str(run)]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    meta, finetune = run / "seed-42" / "meta" / "mft", run / "seed-42" / "finetune"
    rng = random.Random(7)
    r_a, r_b = rng.randint(33, 43), rng.randint(62, 103)

    def total_lines() -> int:  # progress: 32 meta-stage lines, then 12 per fine-tuning run (6 runs)
        return sum(lines(p) for p in run.rglob("metrics.jsonl"))

    points = [  # in the order the study reaches them
        ("preparing the splits", lambda: (run / "data").is_dir()),
        ("meta-finetuning, mid-run", lambda: lines(meta / "metrics.jsonl") >= 8),
        ("saving a meta-stage checkpoint", lambda: saving(meta)),
        (f"random point: {r_a} metric lines", lambda: total_lines() >= r_a),
        ("saving a fine-tuning checkpoint", lambda: any(saving(d) for d in (finetune / "mft").glob("*"))),
        (f"random point: {r_b} metric lines", lambda: total_lines() >= r_b),
        ("writing the report", lambda: (run / "study.json").is_file() and len(
            json.loads((run / "study.json").read_text() or "{}").get("units", [])) == 6),
    ]
    mid_save = []
    for name, condition in points:
        for _ in range(3):  # a save takes milliseconds: retry until the kill lands inside one
            assert kill_when(argv, env, condition), f"the study finished before the kill point '{name}'"
            left = [p for p in run.rglob("*") if p.name.endswith((".tmp", ".old"))]
            if "saving" not in name or left:
                mid_save += [name] if left else []
                break
    assert mid_save, "no kill landed inside a save"

    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert numbers(run) == numbers(reference)
    assert (run / "report.md").is_file() and (run / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
