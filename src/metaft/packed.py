"""Stage 3 for many runs at once: ``finetune_packed([FinetuneConfig, ...], pack=None) -> [results, ...]``.

Runs that can share a bank (same architecture, labels count, step count and optimiser settings: see
:func:`bank_key`) are trained together by :class:`metaft.bank.Bank`, as many per bank as fit in memory
(:func:`bank_capacity`) or ``pack`` at most. Every run folder ends up as the one-run path
(:func:`metaft.stages.finetune`) writes it: ``config.json``, ``metrics.jsonl``, ``best/`` (a standard HF
folder) and ``results.json`` with the same keys; ``results.json`` is written last, so a bank killed midway
leaves no folder that looks finished. ``pack=1`` is the one-run path itself. A run folder that holds an
unfinished run is started over (a bank keeps no resumable training state yet).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .bank import Bank, Member
from .config import FinetuneConfig
from .errors import ConfigError
from .features import EncodedDataset
from .hub import load_tokenizer, resolve_model, usable_max_length
from .locking import run_lock
from .modeling import load_classifier
from .prepared import domain_splits, label_set, task_name_for
from .results import RESULTS, FinetuneResult, read_finetune_result
from .runs import finish_run, open_run, start_run
from .stages import evaluate_checkpoint, finetune
from .training import derive_seed, keep_freed_memory, seeded

logger = logging.getLogger(__name__)

# settings a bank's runs may differ in (everything else: one schedule, one template module, one padding rule)
PER_RUN_SETTINGS = ("data_dir", "model", "out", "seed", "head", "domain", "task_name", "resume", "force",
                    "use_cache", "save_state_every_s", "train_limit", "dev_limit", "test_limit")
ARCHITECTURE_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size", "hidden_dropout_prob",
                     "attention_probs_dropout_prob")
CPU_MAX_PACK = 8  # on CPU packing measured slower than one run at a time (benchmarks/packed.py): a memory bound
GPU_MAX_PACK = 64  # not measured yet (benchmarks/gpu_session.sh)


def model_config(source: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model(source), trust_remote_code=trust_remote_code)


def bank_key(cfg: FinetuneConfig, num_train: int, num_labels: int, config) -> str:
    """Runs with equal keys can share a bank: same step count, optimiser, padding and architecture."""
    shared = {k: v for k, v in cfg.to_dict().items() if k not in PER_RUN_SETTINGS}
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
    """Runs per bank: ``pack`` if given, else as many as fit (weights + gradients + 2 AdamW moments in fp32,
    plus a quarter for activations and temporaries, within 80 % of free memory on CUDA / half of it on CPU),
    capped at :data:`GPU_MAX_PACK` / :data:`CPU_MAX_PACK`."""
    if pack is not None:
        if pack < 1:
            raise ConfigError(f"pack must be >= 1 (1 = one run at a time), got {pack}")
        return pack
    per_run = num_params * 4 * 4 * 5 // 4
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


class PreparedRun:
    """A pending stage-3 run: its data read and encoded, its model not loaded yet."""

    bank_class = Bank
    results_file = RESULTS
    read_result = staticmethod(read_finetune_result)

    def __init__(self, cfg: FinetuneConfig):
        self.cfg, self.run_dir, self.data_dir = cfg, Path(cfg.out), Path(cfg.data_dir)
        self.splits = domain_splits(cfg, self.data_dir)
        self.labels = label_set(self.data_dir, self.splits["train"],
                                {k: v for k, v in self.splits.items() if k != "train"})
        self.tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
        self.config = model_config(cfg.model, cfg.trust_remote_code)
        max_length = usable_max_length(cfg.max_length, self.config, self.tokenizer)
        label_ids = {lab: i for i, lab in enumerate(self.labels)}
        self.sets = {k: EncodedDataset(v, self.tokenizer, max_length, label_ids, None, None, cfg.use_cache)
                     for k, v in self.splits.items()}
        self.key = bank_key(cfg, len(self.sets["train"]), len(self.labels), self.config)

    def load_model(self):
        cfg = self.cfg
        with seeded(cfg.seed):  # as stages.finetune: the seeded head re-initialisation
            return load_classifier(cfg.model, self.labels, head=cfg.head, dropout=cfg.dropout, seed=cfg.seed,
                                   trust_remote_code=cfg.trust_remote_code)

    def save(self, model, folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)

    def member(self) -> Member:
        return Member(self.cfg, self.run_dir, self.sets["train"], self.sets["dev"], self.labels,
                      self.load_model, self.save)

    def stale(self, member: Member) -> list[Path]:
        """Folders to remove when the run is finished (none for stage 3)."""
        return []

    def results(self, member: Member, total_steps: int, train_s: float, started: float) -> FinetuneResult:
        """The one-run path's results, with the best checkpoint tested from its folder."""
        cfg, best_dir = self.cfg, self.run_dir / member.best["name"]
        t0 = time.monotonic()
        test = evaluate_checkpoint(best_dir, self.sets["test"], cfg, self.labels) if "test" in self.sets else None
        eval_s = time.monotonic() - t0
        return FinetuneResult(
            task=cfg.task_name or task_name_for(self.data_dir), domain=self.splits["train"][0].domain,
            model=cfg.model, head=cfg.head, seed=cfg.seed, test_accuracy=test["accuracy"] if test else None,
            test_macro_f1=test["macro_f1"] if test else None, test=test, best_dev_accuracy=member.best["accuracy"],
            best_dev_macro_f1=member.best["dev"]["macro_f1"], best_step=member.best["step"],
            total_steps=total_steps, best_model=str(best_dir), labels=self.labels,
            num_examples={k: len(v) for k, v in self.splits.items()},
            timings={"train_s": round(train_s, 3), "eval_s": round(eval_s, 3),
                     "total_s": round(time.monotonic() - started, 3)},
            resumed_from=None, dev_history=member.history, config=cfg.to_dict())


def train_bank(runs: list, started: float | None = None) -> list:
    """Train ``runs`` (prepared runs of one bank key) together; write and return each run's results."""
    started = time.monotonic() if started is None else started
    for run in runs:
        start_run(run.run_dir, run.cfg, "new")  # an unfinished earlier run there is started over
    members = [run.member() for run in runs]
    with seeded(derive_seed("bank", *(str(run.run_dir) for run in runs))):  # the runs' dropout streams
        bank = runs[0].bank_class(members)
        logger.info("bank of %d runs x %d steps (%.1f M parameters each)", bank.size, bank.total_steps,
                    bank.parameter_count() / 1e6)
        train_s = bank.train()
    total_steps = bank.total_steps
    del bank
    out = []
    for run, member in zip(runs, members):
        results = run.results(member, total_steps, train_s, started)
        finish_run(run.run_dir, run.results_file, results, run.stale(member))
        out.append(results)
    return out


def finetune_packed(cfgs: Sequence[FinetuneConfig], pack: int | None = None) -> list[FinetuneResult]:
    """Stage 3 for every config, banked; returns each run's results (as :func:`metaft.stages.finetune` does),
    in the order of ``cfgs``. ``pack``: runs per bank at most (1 = one at a time, the one-run path; None =
    as many as fit in memory, see :func:`bank_capacity`). Finished runs are skipped as the one-run path skips
    them (with ``resume``)."""
    return run_packed(cfgs, pack, PreparedRun, finetune)


def run_packed(cfgs: Sequence, pack: int | None, prepared: type, one_run: Callable) -> list:
    """Lock every run folder, skip finished runs, prepare the others (``prepared(cfg)``), train them in banks;
    each run's results in the order of ``cfgs``. ``pack == 1``: ``one_run(cfg)`` for each instead."""
    outs = [str(Path(c.out).resolve()) for c in cfgs]
    if len(set(outs)) != len(outs):
        dup = next(o for o in outs if outs.count(o) > 1)
        raise ConfigError(f"{dup}: two runs write to this folder; give every run its own out")
    if pack == 1:
        return [one_run(cfg) for cfg in cfgs]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("packed training runs in one process: drop accelerate launch / torchrun, or pack 1")
    started = time.monotonic()
    results: dict[int, object] = {}
    with contextlib.ExitStack() as locks:
        for cfg in cfgs:
            locks.enter_context(run_lock(cfg.out))
        pending = []
        for i, cfg in enumerate(cfgs):
            if open_run(Path(cfg.out), cfg, prepared.results_file) == "done":
                results[i] = prepared.read_result(Path(cfg.out) / prepared.results_file)
            else:
                pending.append((i, prepared(cfg)))
        if not pending:
            return [results[i] for i in range(len(cfgs))]
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cpu":
            keep_freed_memory()
        keys = [run.key for _, run in pending]
        capacities = {run.key: bank_capacity(parameter_count(run.config, len(run.labels)), device, pack)
                      for _, run in pending}
        for bank in plan_banks(keys, capacities):
            done = train_bank([pending[j][1] for j in bank], started)
            results.update({pending[j][0]: r for j, r in zip(bank, done)})
    return [results[i] for i in range(len(cfgs))]
