"""The accelerate side of a run: the Accelerator (mixed precision, TF32, DDP over gloo on CPU) and this
process's place among the launched ones."""

from __future__ import annotations

import os

import torch


def resolve_mixed_precision(setting: str) -> str:
    """``auto`` = bf16 on a CUDA device that supports it, otherwise no mixed precision."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _cpu_processes() -> bool:
    """Several processes (torchrun / accelerate launch) on a machine without a GPU: DDP over gloo."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def make_accelerator(mixed_precision: str = "auto"):
    """The accelerate object of a run; on CUDA it also lets fp32 matmuls use TF32 tensor cores (process-wide)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # the scheduler is stepped by hand once per optimiser step: its length is already in global steps
    return Accelerator(mixed_precision=resolve_mixed_precision(mixed_precision), cpu=_cpu_processes(),
                       step_scheduler_with_optimizer=False,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def process_state():
    """accelerate's view of this process (rank, number of processes); one process without a launcher."""
    from accelerate import PartialState

    return PartialState(cpu=_cpu_processes())


def end_processes() -> None:
    """After a launched run finished on every process: wait for all of them, then close the process group (left
    to interpreter exit, gloo's threads can be torn down mid-use and abort a process that had finished)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
