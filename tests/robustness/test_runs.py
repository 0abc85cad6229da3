"""Runs that go wrong: non-finite losses, two writers on one folder, full or read-only disks mid-run.

Each case ends with exit code 2 and one line naming the problem, and the last good checkpoint intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import comparable, ft_config, same_weights
from metaft.cli import main
from metaft.locking import run_lock


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli_finetune(single: Path, model: Path, out: Path, *extra: str) -> list[str]:
    """The argv of the reference run of test_training (ft_config) through the CLI."""
    return ["-q", "finetune", "--data-dir", str(single), "--model", str(model), "--out", str(out), "--epochs", "10",
            "--batch-size", "8", "--eval-batch-size", "16", "--lr", "5e-3", "--eval-every", "5", "--seed", "3",
            "--save-state-every", "0", *extra]


def break_loss_at(monkeypatch, step: int, action) -> None:
    """Make stage 3's loss call ``action(loss parts)`` at training step ``step`` (0-based)."""
    import metaft.stages as stages

    real = stages.ce_loss

    def loss(model, batch, s):
        out = real(model, batch, s)
        return action(out) if s == step else out

    monkeypatch.setattr(stages, "ce_loss", loss)


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and "Traceback" not in err, err
    return lines[-1]


# ------------------------------------------------------------------------------------------ numeric faults

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_best(
        bad, reference_run, tiny_model_dir, single, tmp_path, monkeypatch, capsys):
    run, best = tmp_path / "run", {}

    def poison(parts):
        best["hash"] = sha(run / "best" / "model.safetensors")  # what the evaluations so far kept
        return {k: v * bad for k, v in parts.items()}

    break_loss_at(monkeypatch, 12, poison)
    assert main(cli_finetune(single, tiny_model_dir, run)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("metaft: error: the loss is") and str(bad) in line and "step 13" in line
    assert "learning rate" in line
    assert sha(run / "best" / "model.safetensors") == best["hash"]
    assert not (run / "results.json").exists()
    assert (run / "state" / "trainer_state.json").is_file()  # the state of step 10 is still there


# ------------------------------------------------------------------------------------------ output folders

def test_a_finished_run_is_not_overwritten_without_force(reference_run, tiny_model_dir, single, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run[0], run)
    before = {p: sha(p) for p in run.rglob("*") if p.is_file() and p.name != ".metaft.lock"}
    assert main(cli_finetune(single, tiny_model_dir, run)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "holds a finished run" in line and "--force" in line
    assert main(cli_finetune(single, tiny_model_dir, run, "--lr", "1e-3", "--resume")) == 2  # other settings
    assert "cannot resume with different settings" in one_error_line(capsys.readouterr().err)
    assert {p: sha(p) for p in run.rglob("*") if p.is_file() and p.name != ".metaft.lock"} == before
    assert main(cli_finetune(single, tiny_model_dir, run, "--force", "--epochs", "1")) == 0
    assert json.loads((run / "results.json").read_text())["total_steps"] == 6


def test_a_half_written_run_needs_resume_or_force(reference_run, tiny_model_dir, single, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run[0], run)
    (run / "results.json").unlink()
    shutil.rmtree(run / "best")
    assert main(cli_finetune(single, tiny_model_dir, run)) == 2
    assert "unfinished run" in one_error_line(capsys.readouterr().err)
    assert main(cli_finetune(single, tiny_model_dir, run, "--resume")) == 0, capsys.readouterr().err
    res = json.loads((run / "results.json").read_text())
    assert comparable(res) == comparable(reference_run[1])


# ----------------------------------------------------------------------------------------- concurrent runs

def test_a_second_run_on_the_same_folder_is_refused_while_the_first_runs(tiny_model_dir, single, tmp_path):
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "metaft", *cli_finetune(single, tiny_model_dir, run)]
    long_argv = list(argv)
    long_argv[argv.index("--epochs") + 1] = "100000"  # still running when the others start, however busy the CPU
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    first = subprocess.Popen(long_argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None and not (run / "metrics.jsonl").is_file():
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()[1][-2000:]
    try:
        for flags in ([], ["--resume"], ["--force"]):
            second = subprocess.run(argv + flags, env=env, capture_output=True, text=True)
            line = one_error_line(second.stderr)
            assert second.returncode == 2 and "another metaft run" in line and f"pid {first.pid}" in line, line
        assert first.poll() is None  # the refusals came while the first run was writing
    finally:
        first.kill()  # a crash: the lock must go with the process
        first.communicate(timeout=60)
    done = subprocess.run(argv + ["--force"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run / "results.json").is_file() and (run / "best" / "model.safetensors").is_file()


def test_a_study_folder_in_use_is_refused(tmp_path, capsys):
    with run_lock(tmp_path / "study"):
        code = main(["-q", "run", "--out", str(tmp_path / "study"), "--model", "does-not-matter"])
    assert code == 2 and "another metaft run" in one_error_line(capsys.readouterr().err)
    with run_lock(tmp_path / "study"):  # released after the refusal too
        pass


# ---------------------------------------------------------------------------------- disk and permissions

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs mounted for the test (needs root, as in CI); skipped where mounting is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path) -> None:
    """Write zeros into ``folder`` until the file system is full."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb") as fh:
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()


def test_a_full_disk_mid_run_is_a_clear_error_and_resume_finishes(
        reference_run, tiny_model_dir, single, small_tmpfs, monkeypatch, capsys):
    import metaft.stages as stages

    run, kept, real_loss = small_tmpfs / "run", {}, stages.ce_loss

    def fill_disk(parts):
        kept["hash"] = sha(run / "best" / "model.safetensors")
        fill(small_tmpfs)
        return parts

    break_loss_at(monkeypatch, 7, fill_disk)  # after the evaluation of step 5, before that of step 10
    assert main(cli_finetune(single, tiny_model_dir, run)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and str(run) in line, line
    assert sha(run / "best" / "model.safetensors") == kept["hash"]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # no half-written folder left

    (small_tmpfs / "filler").unlink()
    monkeypatch.setattr(stages, "ce_loss", real_loss)
    res = stages.finetune(ft_config(single, tiny_model_dir, run, resume=True))
    assert comparable(res) == comparable(reference_run[1])
    assert same_weights(run / "best", reference_run[0] / "best")


def make_read_only(folder: Path) -> None:
    """Root ignores permissions, so as root the folder gets a read-only bind mount of itself."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    for argv in (["mount", "--bind", str(folder), str(folder)], ["mount", "-o", "remount,bind,ro", str(folder)]):
        if subprocess.run(argv, capture_output=True).returncode:
            pytest.skip("cannot bind-mount here")


def test_a_folder_made_read_only_mid_run_is_a_clear_error(tiny_model_dir, single, tmp_path, monkeypatch, capsys):
    run, kept = tmp_path / "run", {}

    def read_only(parts):
        kept["hash"] = sha(run / "best" / "model.safetensors")
        make_read_only(run)
        return parts

    break_loss_at(monkeypatch, 7, read_only)
    try:
        assert main(cli_finetune(single, tiny_model_dir, run)) == 2
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(run)], capture_output=True)
        run.chmod(0o755)
    line = one_error_line(capsys.readouterr().err)
    assert ("Read-only file system" in line or "Permission denied" in line) and str(run) in line, line
    assert sha(run / "best" / "model.safetensors") == kept["hash"]


def test_an_unwritable_output_folder_is_a_one_line_error(tiny_model_dir, single, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(cli_finetune(single, tiny_model_dir, blocker / "run")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("metaft: error:") and str(blocker) in line
