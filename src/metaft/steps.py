"""What makes a training run reproducible and shapes it, shared by the one-run loop and the banks: derived
seeds and forked RNGs, the seeded data order of every epoch, the step count and the learning-rate schedule."""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from .devices import process_state

# ------------------------------------------------------------------------------------------ seeds and RNG

def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived from the parts (stable across runs, machines and Python versions)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of training step ``step`` (e.g. for stage 2's per-layer domain permutations)."""
    return torch.Generator().manual_seed(derive_seed(seed, "step", step))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block on a forked global RNG seeded with ``seed``; the caller's RNG state is restored after."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(derive_seed(seed, "shuffle", epoch))
    return torch.randperm(n, generator=generator).tolist()


def group_by_length(perm: list[int], lengths: list[int], batch: int, megabatches: int = 50) -> list[int]:
    """Like HF's length-grouped sampler: chunks of ``megabatches * batch`` of the random order, each sorted
    longest first, so a batch holds texts of similar length (less padding) while the order stays random."""
    size = batch * megabatches
    return [i for start in range(0, len(perm), size)
            for i in sorted(perm[start:start + size], key=lambda j: -lengths[j])]


def planned_steps(num_examples: int, batch_size: int, epochs: float, num_processes: int | None = None) -> int:
    """Optimiser steps of a run: ceil(n / global batch) per epoch times ``epochs`` (which may be fractional)."""
    if num_processes is None:
        num_processes = process_state().num_processes
    return max(1, math.ceil(math.ceil(num_examples / (batch_size * num_processes)) * epochs))


def step_batch(perm: list[int], pos: int, batch_size: int, world: int = 1, rank: int = 0) -> list[int]:
    """This process's example indices of the ``pos``-th global batch (batch_size per process)."""
    chunk = perm[pos * batch_size * world:(pos + 1) * batch_size * world]
    mine = chunk[rank::world]
    return mine or chunk[rank % len(chunk):][:1]  # a short last batch: no process may go empty (DDP)


# ------------------------------------------------------------------------------------------- schedule

def build_scheduler(optimizer, total_steps: int, warmup_ratio: float):
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, math.ceil(total_steps * warmup_ratio), total_steps)
