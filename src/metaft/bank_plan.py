"""Which runs share a bank and how many fit: bank keys, memory-aware bank sizes, the bank plan, and the study's
``pack`` setting resolved for a device.

Runs can share a bank when they have the same step count, optimiser settings, padding rule and architecture
(:func:`bank_key`); a bank holds as many as fit in memory (:func:`bank_capacity`) or ``pack`` at most.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import ConfigError
from .heads import resolve_normalize, resolve_pooling
from .hub import resolve_model

# settings a bank's runs may differ in (everything else: one schedule, one template module, one padding rule)
PER_RUN_SETTINGS = ("data_dir", "model", "out", "seed", "head", "domain", "task_name", "resume", "force",
                    "use_cache", "save_state_every_s", "train_limit", "dev_limit", "test_limit")
ARCHITECTURE_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size", "hidden_dropout_prob",
                     "attention_probs_dropout_prob")
CPU_MAX_PACK = 8  # on CPU packing measured slower than one run at a time (benchmarks/packed.py): a memory bound
GPU_MAX_PACK = 32  # not measured yet (benchmarks/gpu_session.sh); bounds a bank's saved state (~3x its weights)


def model_config(source: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model(source), trust_remote_code=trust_remote_code)


def bank_key(cfg, num_train: int, num_labels: int, config) -> str:
    """Runs with equal keys can share a bank: same step count, optimiser, padding and architecture (the head's
    pooling and normalisation as resolved for the run's model: ``auto`` may mean mean for one model and pooler
    for another)."""
    shared = {k: v for k, v in cfg.to_dict().items() if k not in PER_RUN_SETTINGS}
    shared["head_pooling"] = resolve_pooling(cfg.head_pooling, cfg.model)
    shared["head_normalize"] = resolve_normalize(cfg.head_normalize, shared["head_pooling"], cfg.model)
    arch = {k: getattr(config, k, None) for k in ARCHITECTURE_KEYS}
    return json.dumps({"settings": shared, "architecture": arch, "num_train": num_train, "num_labels": num_labels},
                      sort_keys=True, default=str)


def parameter_count(config, num_labels: int) -> int:
    """Parameters of the sequence classifier of ``config`` (built on the meta device: no memory, no weights)."""
    from transformers import AutoModelForSequenceClassification

    config = type(config).from_dict({**config.to_dict(), "num_labels": num_labels})
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return sum(p.numel() for p in model.parameters())


def available_memory(device: torch.device) -> int:
    """Bytes a bank may use: free device memory on CUDA, MemAvailable on CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 4 << 30


def bank_capacity(num_params: int, device: torch.device, pack: int | None = None,
                  memory: int | None = None) -> int:
    """Runs per bank: ``pack`` if given, else as many as fit (weights + gradients + 2 AdamW moments + the best
    weights kept until they are written, in fp32, plus a quarter for activations and temporaries, within 80 % of
    free memory on CUDA / half of it on CPU), capped at :data:`GPU_MAX_PACK` / :data:`CPU_MAX_PACK`."""
    if pack is not None:
        if pack < 1:
            raise ConfigError(f"pack must be >= 1 (1 = one run at a time), got {pack}")
        return pack
    per_run = num_params * 4 * 5 * 5 // 4
    share = 0.8 if device.type == "cuda" else 0.5
    memory = available_memory(device) if memory is None else memory
    fits = int(memory * share) // per_run
    if fits < 1:
        raise ConfigError(f"one run needs ~{per_run / 2**30:.1f} GiB and {memory * share / 2**30:.1f} GiB "
                          "is free for it: free memory or use pack 1")
    return min(fits, GPU_MAX_PACK if device.type == "cuda" else CPU_MAX_PACK)


def plan_banks(keys: Sequence[str], capacities: dict[str, int]) -> list[list[int]]:
    """Indices grouped by key (first-seen order), each group cut into banks of at most its capacity,
    as even as possible (10 runs at capacity 8: 5 + 5, not 8 + 2)."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    banks = []
    for key, idx in groups.items():
        count = -(-len(idx) // capacities[key])
        size = -(-len(idx) // count)
        banks += [idx[start:start + size] for start in range(0, len(idx), size)]
    return banks


def unpackable(cfg) -> str | None:
    """Why a bank cannot train the run of ``cfg`` (a FinetuneConfig or MetaConfig) as the one-run path would, or
    None: banks train every head (pooler / mean / cls; fresh, kept or probe-fitted; its own learning rate) and
    every stage-2 loss, in fp32 or bf16, eager; not fp16 (its loss scale is one for all runs) or compiled."""
    reasons = {"mixed_precision fp16 (no loss scaling per run)": cfg.mixed_precision == "fp16",
               "compile": cfg.compile}
    return next((k for k, v in reasons.items() if v), None)


def resolve_pack(pack: int | None, device: torch.device | None = None) -> int | None:
    """The study's ``pack`` setting for ``device`` (default: CUDA if present, else CPU): 1 = the one-run path;
    None (auto) = banks sized by memory on CUDA, the one-run path on CPU (where packing measured slower:
    benchmarks/results/packed-speed-cpu.json) and under ``accelerate launch``; N > 1 = banks of at most N runs
    on any device."""
    if pack is not None:
        return pack
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # several processes: each unit data-parallel, one at a time
        return 1
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return None if device.type == "cuda" else 1
