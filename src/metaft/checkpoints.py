"""The files of a run folder that make training resumable: the training state folder and ``metrics.jsonl``.

A bank of runs (:mod:`metaft.bank`) keeps its one state in the ``state`` folder of its first run: the stacked
weights (``bank_params.safetensors``), the optimiser, schedule and RNG files of a run's state, and ``bank.json``
(which runs with which settings, the step, each run's best so far and dev history)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from .errors import DataError, writing

METRICS_FILE = "metrics.jsonl"
STATE_DIR = "state"
BANK_INFO = "bank.json"
BANK_PARAMS = "bank_params.safetensors"


def append_metrics(run_dir: Path, record: dict | list[dict]) -> None:
    """Append one record (or several, in one write) to the run's metrics.jsonl."""
    records = [record] if isinstance(record, dict) else record
    if not records:
        return
    with writing(run_dir / METRICS_FILE), open(run_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


class PendingTrainRecords:
    """A bank's training records, kept until :meth:`flush` appends them to each run's metrics.jsonl: the logged
    values stay on the device until then, so the host reads them once per flush instead of waiting for the device
    at every step."""

    def __init__(self, run_dirs: list[Path]):
        self.run_dirs, self.pending = run_dirs, []

    def add(self, logged: dict, step: int, epoch: float, elapsed_s: float, runs: list[int]) -> None:
        """``logged``: lr, names and values [names, R] (a tensor) of ``step``; ``runs``: the runs to log it for."""
        self.pending.append({**logged, "step": step, "epoch": epoch, "elapsed_s": round(elapsed_s, 3), "runs": runs})

    def flush(self) -> None:
        if not self.pending:
            return
        values = torch.stack([p["values"] for p in self.pending]).cpu().tolist()  # [steps, names, R]
        for r, run_dir in enumerate(self.run_dirs):
            append_metrics(run_dir, [{"kind": "train", "step": p["step"], "epoch": p["epoch"], "lr": p["lr"],
                                      "elapsed_s": p["elapsed_s"], **{n: v[i][r] for i, n in enumerate(p["names"])}}
                                     for p, v in zip(self.pending, values) if r in p["runs"]])
        self.pending.clear()


def truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume, drop records logged after the saved state (they will be logged again)."""
    path = run_dir / METRICS_FILE
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by the kill
    path.write_text("".join(kept), encoding="utf-8")


def save_state(folder: Path, model: nn.Module, optimizer, scheduler, info: dict) -> None:
    """Everything needed to continue: weights (safetensors), optimiser/scheduler/RNG (tensors only)."""
    from safetensors.torch import save_model

    save_model(model, str(folder / "model.safetensors"))
    _save_optimizer_and_rng(folder, optimizer, scheduler)
    (folder / "trainer_state.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _save_optimizer_and_rng(folder: Path, optimizer, scheduler) -> None:
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               folder / "optimizer.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, folder / "rng.pt")


def save_bank_state(folder: Path, params: dict[str, torch.Tensor], optimizer, scheduler, info: dict) -> None:
    """A bank's state: its stacked weights ``params``, optimiser / schedule / RNG, and ``info`` (JSON)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in params.items()}, str(folder / BANK_PARAMS))
    _save_optimizer_and_rng(folder, optimizer, scheduler)
    (folder / BANK_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def read_bank_info(folder: Path) -> dict | None:
    """The ``bank.json`` of a saved bank state in ``folder``; None when there is none (or it is unreadable)."""
    try:
        info = json.loads((Path(folder) / BANK_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("identity"), dict) else None


def load_bank_state(folder: Path, params: dict[str, torch.Tensor], optimizer, scheduler) -> None:
    """Restore :func:`save_bank_state`'s tensors into ``params`` (same names and shapes), the optimiser, the
    schedule and the RNG."""
    from safetensors.torch import load_file

    with _state_file(folder / BANK_PARAMS):
        saved = load_file(str(folder / BANK_PARAMS))
        if saved.keys() != params.keys() or any(saved[k].shape != v.shape for k, v in params.items()):
            raise ValueError("other tensors than this bank's")
        with torch.no_grad():
            for k, v in params.items():
                v.copy_(saved[k])
    _load_optimizer_and_rng(folder, optimizer, scheduler)


@contextlib.contextmanager
def _state_file(path: Path) -> Iterator[None]:
    """Any failure to read or apply one file of a saved training state (cut short, other bytes, other
    contents) becomes one line naming the file."""
    try:
        yield
    except Exception as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:160]
        raise DataError(path, f"damaged training state ({detail}); pass --force to start the run over") from None


def load_state(folder: Path, model: nn.Module, optimizer, scheduler) -> dict:
    """Restore :func:`save_state`'s files (no unpickling: ``weights_only=True``); returns the info dict."""
    from safetensors.torch import load_model

    with _state_file(folder / "trainer_state.json"):
        info = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        missing = [k for k in ("step", "total_steps", "best", "elapsed_s", "history", "num_processes")
                   if k not in info] if isinstance(info, dict) else ["JSON object"]
        if missing:
            raise KeyError(f"no {', '.join(missing)}")
    with _state_file(folder / "model.safetensors"):
        load_model(model, str(folder / "model.safetensors"), strict=True)
    _load_optimizer_and_rng(folder, optimizer, scheduler)
    return info


def _load_optimizer_and_rng(folder: Path, optimizer, scheduler) -> None:
    with _state_file(folder / "optimizer.pt"):
        opt = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
        optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
    with _state_file(folder / "rng.pt"):
        rng = torch.load(folder / "rng.pt", weights_only=True, map_location="cpu")
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
