"""The one training loop of stages 2 and 3, built on ``accelerate``.

AdamW (weight decay on matrices only, not on biases or LayerNorm), 10 % linear warm-up then linear decay
to 0, gradient-norm clipping, dynamic padding, dev evaluation every N steps and at the end, the best
checkpoint (dev accuracy; ties keep the earlier) written atomically, a resumable training state at an
evaluation at most every ``save_state_every_s`` seconds, and every logged value appended to ``metrics.jsonl``.

Determinism: the batches of step s come from a permutation seeded by (seed, epoch), the loss gets the
step index (stage 2 derives its domain-permutation generator from (seed, step)), and dropout runs on a
forked RNG seeded from the run seed whose state is saved with the training state. A resumed run on CPU
therefore ends with the same weights and metrics as an uninterrupted one. The caller's global RNG is
never reseeded.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoints import STATE_DIR, append_metrics, load_state, save_state, truncate_metrics
from .devices import make_accelerator
from .errors import ConfigError, MetaftError
from .evaluation import LogitsFn, NonFiniteError, evaluate, non_finite_parameters
from .features import Collator, EncodedDataset, eval_loader
from .fileio import recover_folder, save_atomic
from .steps import (
    build_scheduler,
    derive_seed,
    epoch_permutation,
    group_by_length,
    planned_steps,
    seeded,
    step_batch,
)

logger = logging.getLogger(__name__)


LossFn = Callable[[nn.Module, dict, int], dict]  # (model, batch, step) -> {"total": scalar, ...parts}
SaveFn = Callable[[nn.Module, Path], None]  # writes an unwrapped model into a folder


@dataclass
class LoopTask:
    """What the loop trains: the model, the data and the stage-specific functions."""

    model: nn.Module
    train_set: EncodedDataset
    dev_set: EncodedDataset
    labels: list[str]
    loss_fn: LossFn
    logits_fn: LogitsFn
    save_fn: SaveFn
    best_name: Callable[[float], str] = lambda accuracy: "best"  # folder name of the best checkpoint
    head_params: list[nn.Parameter] = field(default_factory=list)  # trained at cfg.head_learning_rate
    # the starting model is a selection candidate (dev at step 0) when its head means something (a warm-started
    # or kept head); a fresh random head is not, and a dev tie would otherwise keep it
    evaluate_start: bool = False


@dataclass
class TrainResult:
    best_accuracy: float
    best_step: int
    best_dir: Path
    best_dev: dict
    total_steps: int
    wall_time_s: float
    resumed_from: int | None = None
    history: list[dict] = field(default_factory=list)


# -------------------------------------------------------------------------------- optimiser, CPU memory


_MALLOC_TUNED = False


def keep_freed_memory() -> bool:
    """CPU training: make glibc's malloc serve every block from its heap and keep freed memory for reuse
    (``mallopt``: no mmap, trim threshold 1 GiB). By default glibc maps fresh pages for each large block and
    gives them back on free; a training step allocates such blocks every time (e.g. the dense word-embedding
    gradient), so the kernel would fault in and zero new pages at every step. The process keeps up to its peak
    memory instead. Process-wide and once; skipped off glibc or with ``METAFT_MALLOC_TUNING=0``. Returns
    whether it is on. (Measured effect: benchmarks/results/ and the guide's Speed options.)"""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    import ctypes
    import platform

    if os.environ.get("METAFT_MALLOC_TUNING", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    _MALLOC_TUNED = bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    return _MALLOC_TUNED


def build_optimizer(model: nn.Module, learning_rate: float, weight_decay: float,
                    head_params: list[nn.Parameter] = (), head_learning_rate: float | None = None
                    ) -> torch.optim.AdamW:
    """AdamW; weight decay on weight matrices and embeddings only (no decay on biases or LayerNorm).
    ``head_params`` (the classification head) get ``head_learning_rate`` (default: ``learning_rate``) in
    groups of their own; the schedule scales every group's rate by the same factor.

    The fused implementation (one kernel over all parameters) is used: at few-shot batch sizes the optimiser
    step of a small encoder otherwise costs about as much as its forward and backward passes.
    """
    head_ids = {id(p) for p in head_params}
    head_lr = learning_rate if head_learning_rate is None else head_learning_rate
    groups = {(wd, lr): [] for wd in (weight_decay, 0.0) for lr in (learning_rate, head_lr)}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        wd = 0.0 if param.ndim < 2 or "norm" in name.lower() else weight_decay
        groups[(wd, head_lr if id(param) in head_ids else learning_rate)].append(param)
    return torch.optim.AdamW([{"params": ps, "weight_decay": wd, "lr": lr} for (wd, lr), ps in groups.items() if ps],
                             lr=learning_rate, fused=True)


def compiled(model: nn.Module, mode: str, static: bool) -> nn.Module:
    """``torch.compile`` for the training steps. ``static``: batches come in a few fixed widths (at most 8:
    padding to a multiple of 32 up to 128 tokens gives 4), so every shape gets its own specialised graph,
    which is what ``reduce-overhead`` (CUDA graphs) needs; otherwise (e.g. the default multiple of 8: 16
    widths) shapes are left to dynamo's dynamic-shape handling."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, 64)  # widths x (full, short last batch)
    return torch.compile(model, mode=mode, dynamic=False if static else None)


def clip_gradients(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (the same norm, the same scaling) without its scaling pass when that
    pass would multiply every gradient by exactly 1, i.e. when the norm is within ``max_norm`` (most steps once
    a few-shot training loss is small; the pass touches every gradient). Returns the total norm.
    (The check waits for the device, as the loop's finite-loss check does every step anyway.)"""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if bool(max_norm / (norm + 1e-6) < 1.0):  # torch's own coefficient, compared before its clamp to 1
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return norm


# ---------------------------------------------------------------------------------------------- the loop

def train(task: LoopTask, cfg, run_dir: Path, resume: bool = False) -> TrainResult:
    """Train ``task.model`` with the settings of ``cfg`` (a TrainConfig); checkpoints go into ``run_dir``."""
    accelerator = make_accelerator(cfg.mixed_precision)
    if accelerator.device.type == "cpu":
        keep_freed_memory()
    with seeded(derive_seed(cfg.seed, "train")):
        return _Loop(task, cfg, Path(run_dir), accelerator).run(resume)


class _Loop:
    def __init__(self, task: LoopTask, cfg, run_dir: Path, accelerator):
        self.task, self.cfg, self.run_dir, self.acc = task, cfg, run_dir, accelerator
        self.raw = task.model  # the unwrapped model: state dicts and saving
        self.label = "/".join(run_dir.parts[-2:])  # names the run in logs (several may run side by side)
        n, world = len(task.train_set), accelerator.num_processes
        if n == 0:
            raise MetaftError("no training examples")
        self.steps_per_epoch = math.ceil(n / (cfg.batch_size * world))
        self.total_steps = planned_steps(n, cfg.batch_size, cfg.epochs, world)
        optimizer = build_optimizer(self.raw, cfg.learning_rate, cfg.weight_decay, task.head_params,
                                    getattr(cfg, "head_learning_rate", None))
        self.scheduler = build_scheduler(optimizer, self.total_steps, cfg.warmup_ratio)
        multiple = cfg.pad_to_multiple_of
        few_widths = bool(cfg.pad_to_length) or math.ceil(cfg.max_length / multiple) <= 8
        model = compiled(self.raw, cfg.compile_mode, static=few_widths) if cfg.compile else self.raw
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.eval_model = self.model if not cfg.compile else self.raw  # evaluation shapes would add graphs
        self.dev_loader = eval_loader(task.dev_set, cfg.eval_batch_size, accelerator, multiple, cfg.pad_to_length)
        self.collate = Collator(task.train_set.pad_id, multiple, cfg.pad_to_length)
        self.step, self.elapsed0, self.history = 0, 0.0, []
        self.best = {"accuracy": -1.0, "step": 0, "name": None, "dev": {}}
        self._perm: tuple[int, list[int]] | None = None

    # -- bookkeeping
    def _info(self) -> dict:
        return {"step": self.step, "total_steps": self.total_steps, "best": self.best,
                "elapsed_s": self._elapsed(), "history": self.history,
                "num_processes": self.acc.num_processes}

    def _elapsed(self) -> float:
        return self.elapsed0 + time.monotonic() - self.t0

    def _restore(self) -> int | None:
        folder = self.run_dir / STATE_DIR
        recover_folder(folder)
        if not (folder / "trainer_state.json").is_file():
            logger.info("no saved training state in %s yet: starting from the beginning", self.run_dir)
            return None
        info = load_state(folder, self.raw, self.optimizer, self.scheduler)
        if info["total_steps"] != self.total_steps or info["num_processes"] != self.acc.num_processes:
            raise ConfigError(f"{self.run_dir}: the saved state has {info['total_steps']} steps on "
                              f"{info['num_processes']} process(es); this run has {self.total_steps} on "
                              f"{self.acc.num_processes}: resume with the same setup or use --force")
        self.step, self.best, self.history = info["step"], info["best"], info["history"]
        self.elapsed0 = info["elapsed_s"]
        logger.info("resuming %s at step %d of %d", self.run_dir, self.step, self.total_steps)
        return self.step

    def _batch(self, step: int) -> dict[str, torch.Tensor]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            perm = epoch_permutation(len(self.task.train_set), self.cfg.seed, epoch)
            if self.cfg.group_by_length:
                global_batch = self.cfg.batch_size * self.acc.num_processes
                perm = group_by_length(perm, self.task.train_set.lengths(), global_batch)
            self._perm = (epoch, perm)
        idx = step_batch(self._perm[1], pos, self.cfg.batch_size, self.acc.num_processes, self.acc.process_index)
        batch = self.collate([self.task.train_set[i] for i in idx])
        return {k: v.to(self.acc.device) for k, v in batch.items()}

    def _should_eval(self, done: int) -> bool:
        every = self.cfg.eval_every or self.steps_per_epoch
        return done % every == 0 or done == self.total_steps

    # -- one step, one evaluation
    def _train_step(self) -> dict[str, float]:
        batch = self._batch(self.step)
        with self.acc.autocast():
            parts = self.task.loss_fn(self.model, batch, self.step)
        loss = parts["total"]
        if not torch.isfinite(loss.detach()):
            raise MetaftError(f"the loss is {loss.item()} at step {self.step + 1}: lower the learning rate "
                              "or turn mixed precision off (--mixed-precision no)")
        self.acc.backward(loss)
        logged = {"lr": self.scheduler.get_last_lr()[0]}
        if self.cfg.max_grad_norm > 0:
            self.acc.unscale_gradients()  # fp16 loss scaling; a no-op otherwise
            logged["grad_norm"] = float(clip_gradients(list(self.model.parameters()), self.cfg.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {**logged, **{f"loss_{k}": float(v.detach()) for k, v in parts.items()}}

    def _check_finite(self) -> None:
        """A diverged model (NaN / inf weights: e.g. an infinite learning rate) must never become the best."""
        if bad := non_finite_parameters(self.raw):
            raise NonFiniteError(f"{self.run_dir}: {len(bad)} weight tensor(s) hold NaN / inf at step {self.step} "
                                 f"(e.g. {bad[0]}): the run diverged; lower the learning rate (the last best "
                                 "checkpoint is kept)")

    def _evaluate_and_checkpoint(self) -> dict:
        self._check_finite()
        try:
            dev = evaluate(self.eval_model, self.dev_loader, self.task.logits_fn, self.acc, self.task.labels)
        except NonFiniteError as exc:
            raise NonFiniteError(f"{self.run_dir}: step {self.step}: {exc} (the last best checkpoint is kept)") from None
        if dev["accuracy"] > self.best["accuracy"]:  # ties keep the earlier checkpoint
            self._save_best(dev)
        record = {"kind": "dev", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                  "dev_accuracy": dev["accuracy"], "dev_macro_f1": dev["macro_f1"], "dev_n": dev["n"],
                  "best_dev_accuracy": self.best["accuracy"], "best_step": self.best["step"],
                  "elapsed_s": round(self._elapsed(), 3)}
        self.history.append({k: record[k] for k in ("step", "dev_accuracy", "dev_macro_f1")})
        if self.acc.is_main_process:
            append_metrics(self.run_dir, record)
            if time.monotonic() - self.state_saved_at >= self.cfg.save_state_every_s:
                # optimiser state is 3x the weights: throttled (resume is exact from any saved step)
                save_atomic(lambda d: save_state(d, self.raw, self.optimizer, self.scheduler, self._info()),
                            self.run_dir / STATE_DIR)
                self.state_saved_at = time.monotonic()
        self.acc.wait_for_everyone()
        logger.info("%s step %d/%d: dev accuracy %.4f, macro-F1 %.4f (best %.4f at step %d)", self.label, self.step,
                    self.total_steps, dev["accuracy"], dev["macro_f1"], self.best["accuracy"], self.best["step"])
        return dev

    def _save_best(self, dev: dict) -> None:
        name, previous = self.task.best_name(dev["accuracy"]), self.best["name"]
        if self.acc.is_main_process:
            save_atomic(lambda d: self.task.save_fn(self.raw, d), self.run_dir / name)
            if previous and previous != name:
                shutil.rmtree(self.run_dir / previous, ignore_errors=True)
        self.best = {"accuracy": dev["accuracy"], "step": self.step, "name": name,
                     "dev": {k: dev[k] for k in ("accuracy", "macro_f1", "n")}}

    def run(self, resume: bool) -> TrainResult:
        self.t0 = self.state_saved_at = time.monotonic()
        resumed_from = self._restore() if resume else None
        if resume and self.acc.is_main_process:
            truncate_metrics(self.run_dir, self.step)
        self.model.train()
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.label, dynamic_ncols=True,
                   disable=None if self.acc.is_local_main_process else True)
        if self.task.evaluate_start and self.step == 0 and not self.history:
            self._evaluate_and_checkpoint()
        while self.step < self.total_steps:
            logged = self._train_step()
            self.step += 1
            if self.acc.is_main_process:
                append_metrics(self.run_dir, {"kind": "train", "step": self.step,
                                              "epoch": self.step / self.steps_per_epoch,
                                              "elapsed_s": round(self._elapsed(), 3), **logged})
            bar.update(1)
            bar.set_postfix(loss=f"{logged['loss_total']:.4f}", dev=f"{max(self.best['accuracy'], 0):.4f}")
            if self._should_eval(self.step):
                self._evaluate_and_checkpoint()
        bar.close()
        return TrainResult(self.best["accuracy"], self.best["step"], self.run_dir / self.best["name"],
                           self.best["dev"], self.total_steps, self._elapsed(), resumed_from, self.history)
