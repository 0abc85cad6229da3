"""The training batches of a bank: each run's own seeded data order, every run's batch of a step collated at once.

Each run draws its batch of a step from its own epoch permutation, as the one-run path does
(:func:`metaft.steps.epoch_permutation`, :func:`metaft.steps.step_batch`); the R batches are padded to one
width and stacked to [R, B, ...]. Runs with the same padding id (one tokenizer) are collated in one call.
"""

from __future__ import annotations

import torch
from torch import nn

from .steps import epoch_permutation, group_by_length, step_batch


class BankBatches:
    """``batches(step)``: the step's batch of every run of ``members``, stacked [R, B, ...] on the CPU."""

    def __init__(self, members: list, cfg, steps_per_epoch: int, collators: list):
        """``collators``: each run's (:class:`metaft.features.Collator` with its padding id)."""
        self.members, self.cfg, self.steps_per_epoch = members, cfg, steps_per_epoch
        self.pad_ids = [m.train_set.pad_id for m in members]
        self.collators = collators
        self.perms: list[tuple[int, list[int]] | None] = [None] * len(members)

    def indices(self, r: int, step: int) -> list[int]:
        """Run r's example indices at ``step`` (0-based)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        train_set = self.members[r].train_set
        if self.perms[r] is None or self.perms[r][0] != epoch:
            perm = epoch_permutation(len(train_set), self.members[r].cfg.seed, epoch)
            if self.cfg.group_by_length:
                perm = group_by_length(perm, train_set.lengths(), self.cfg.batch_size)
            self.perms[r] = (epoch, perm)
        return step_batch(self.perms[r][1], pos, self.cfg.batch_size)

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        return stack_runs([[m.train_set[i] for i in self.indices(r, step)] for r, m in enumerate(self.members)],
                          self.collators, self.pad_ids)


def stack_runs(items: list[list[dict]], collators: list, pad_ids: list[int]) -> dict[str, torch.Tensor]:
    """The runs' example lists (``items[r]``, B each) collated and stacked to [R, B, ...], token tensors padded to
    the widest run's width (ids with each run's ``pad_ids``, masks and types with 0)."""
    if len(set(pad_ids)) == 1 and len({len(x) for x in items}) == 1:
        flat = collators[0]([it for run in items for it in run])  # one call, the widest run's width
        return {k: v.view(len(items), -1, *v.shape[1:]) for k, v in flat.items()}
    batches = [collate(run) for collate, run in zip(collators, items)]
    width = max(b["input_ids"].shape[1] for b in batches)
    out = {}
    for key in batches[0]:
        if batches[0][key].dim() == 2:  # [B, T]
            fill = pad_ids if key == "input_ids" else [0] * len(batches)
            out[key] = torch.stack([nn.functional.pad(b[key], (0, width - b[key].shape[1]), value=v)
                                    for b, v in zip(batches, fill)])
        else:
            out[key] = torch.stack([b[key] for b in batches])
    return out


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; to CUDA through pinned memory, since a copy from pageable memory waits for all the work
    queued on the GPU (a device sync every step)."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)
