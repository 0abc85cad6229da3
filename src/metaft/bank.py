"""A bank: R independent training runs of one architecture advanced in lock step, one forward/backward a step.

The runs' parameters are stacked along a new leading dimension ([R, ...] per tensor) and the model runs once
per step over all of them: for BERT-family classifiers as batched kernels written on the stacked tensors
(:mod:`metaft.grouped_bert`), for other architectures under ``torch.func.vmap`` (``functional_call`` on one
template module), so a step costs one set of batched kernels instead of R times the per-run ones. Everything
else stays per run:

- data: each run's batch of the step comes from its own seeded epoch permutation, as alone
  (:mod:`metaft.bank_data`); batches are padded to the widest run's width (padding is masked out, so only
  float rounding changes);
- dropout: masks drawn over the stacked tensors (``vmap(randomness="different")``): every run draws its own
  (a lone run's cannot be reproduced, so equivalence with the one-run path holds at dropout 0);
- the loss of run r depends on run r's parameters only, so the gradient of the summed loss is each run's own
  gradient; clipping uses each run's own global norm; AdamW is elementwise, so one fused AdamW over the stacked
  tensors is R independent AdamWs (weight-decay and head-learning-rate groups as
  :func:`metaft.training.build_optimizer`);
- the head: the architecture's own or a pooled one (``head_pooling`` mean / cls, normalised or not, see
  :mod:`metaft.bank_forward`), fresh, kept or warm-started (``head probe``: fitted per run as its model is
  built, before the bank starts); a kept or warm-started head is a dev candidate at step 0, as alone;
- the learning-rate schedule is shared: a bank only holds runs with the same step count and optimiser
  settings (see :func:`metaft.bank_plan.bank_key`);
- dev evaluation (all runs in one grouped forward where there is one: :mod:`metaft.bank_eval`), the best-dev
  checkpoint (the one-run path's folder, with the run's own config) and metrics.jsonl per run, as alone; a new
  best is kept in memory and written to its folder when the bank's state is saved and when the bank ends
  (R folders at every improvement would cost more than training), so a saved state names folders on disk;
- divergence: a run whose loss, weights or dev logits turn NaN / inf is stopped alone (its weights frozen, no
  more evaluations or checkpoints: a diverged model never becomes best) while the others go on.

The resumable state of the whole bank (stacked weights, AdamW and schedule, RNG, step, each run's best so far
and dev history) is saved at an evaluation at most every ``save_state_every_s`` seconds into ``state_dir``
(on CUDA at most every :data:`CUDA_MIN_SAVE_S`: see :func:`save_interval`).

Under vmap, attention runs in HF's "eager" implementation with a ready-made additive mask: the SDPA path has
no vmap batching rule on CPU (it would loop over the runs) and HF's mask helpers branch on tensor values.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .bank_data import BankBatches, stack_runs, to_device
from .bank_eval import evaluate_runs, non_finite_runs
from .bank_forward import adamw_groups, classifier_output, clip_runs, vmapped_output, within
from .checkpoints import PendingTrainRecords, append_metrics, save_bank_state
from .devices import make_accelerator
from .errors import ConfigError
from .evaluation import NonFiniteError, evaluate
from .features import MODEL_INPUT_KEYS, Collator, EncodedDataset, eval_loader
from .fileio import save_atomic
from .grouped_bert import grouped_output, supports
from .heads import head_parameters
from .losses import run_cross_entropy
from .steps import build_scheduler, planned_steps

logger = logging.getLogger(__name__)

CUDA_MIN_SAVE_S = 300.0


@dataclass
class Member:
    """One run of a bank: settings (a FinetuneConfig), folder, data, and how to build its starting model."""

    cfg: object
    run_dir: Path
    train_set: EncodedDataset
    dev_set: EncodedDataset
    labels: list[str]
    load_model: Callable[[], nn.Module]  # the run's initial model, exactly as the one-run path builds it
    save_fn: Callable[[nn.Module, Path], None]  # writes the run's best checkpoint folder
    best_name: Callable[[float], str] = lambda accuracy: "best"  # folder name of the best checkpoint
    best: dict = field(default_factory=lambda: {"accuracy": -1.0, "step": 0, "name": None, "dev": {}})
    history: list[dict] = field(default_factory=list)


def save_interval(save_state_every_s: float, device: torch.device) -> float:
    """Seconds between saves of a bank's state: ``save_state_every_s``, on CUDA at least :data:`CUDA_MIN_SAVE_S`.
    Why: the state is ~3x the weights of every run (GBs for a GPU bank) and the GPU idles while it is written."""
    return max(save_state_every_s, CUDA_MIN_SAVE_S) if device.type == "cuda" else save_state_every_s


class Bank:
    """Stacked parameters, one fused AdamW and one schedule for the runs of ``members`` (same settings)."""

    prefix = ""  # where the sequence classifier's parameters are among the template's

    def __init__(self, members: list[Member], device: torch.device | None = None, state_dir: Path | None = None,
                 identity: dict | None = None, grouped: bool | None = None):
        cfg = members[0].cfg
        if cfg.mixed_precision == "fp16":
            raise ConfigError("packed training supports mixed_precision no or bf16, not fp16 (no loss scaling "
                              "per run): set mixed_precision bf16 or no, or pack 1")
        self.members, self.cfg, self.size = members, cfg, len(members)
        self.acc = make_accelerator(cfg.mixed_precision)
        self.device = device or self.acc.device
        self.template, self.configs, self.params = self._stack()
        self.hf_model(self.template).set_attn_implementation("eager")  # a pooled classifier: its encoder too
        self.buffers = {k: v.to(self.device) for k, v in self.template.named_buffers()}
        n = len(members[0].train_set)
        self.steps_per_epoch = math.ceil(n / cfg.batch_size)
        self.total_steps = planned_steps(n, cfg.batch_size, cfg.epochs, 1)
        head = {id(p) for p in head_parameters(self.hf_model(self.template))}
        self.head_names = {k for k, p in self.template.named_parameters() if id(p) in head}
        groups = adamw_groups(self.params, self.head_names, cfg.learning_rate,
                              getattr(cfg, "head_learning_rate", None), cfg.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=True)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, cfg.warmup_ratio)
        self.batches = BankBatches(members, cfg, self.steps_per_epoch, [
            Collator(m.train_set.pad_id, cfg.pad_to_multiple_of, cfg.pad_to_length) for m in members])
        self.dev_loaders = [eval_loader(m.dev_set, cfg.eval_batch_size, self.acc, cfg.pad_to_multiple_of,
                                        cfg.pad_to_length) for m in members]
        # the grouped forward where the architecture has one (None: auto), else vmap; dev evaluation of all runs at
        # once on CUDA only (on a CPU the big grouped tensors evaluate slower than one run at a time)
        self.grouped = supports(self.hf_model(self.template)) if grouped is None else grouped
        self.group_eval = self.grouped and self.device.type == "cuda"
        self.step, self.elapsed0 = 0, 0.0
        self.state_dir, self.identity = state_dir, identity or {}
        self.diverged: dict[int, str] = {}  # run -> why it was stopped
        self.frozen: dict[int, dict[str, torch.Tensor]] = {}  # run -> its weights when it was stopped
        self.train_records = PendingTrainRecords([m.run_dir for m in members])
        self.best_params: dict[str, torch.Tensor] = {}  # [R, ...]: each run's best weights (made at the first best)
        self.unwritten: set[int] = set()  # runs whose best in best_params is not on disk yet
        self.on_disk: dict[int, str | None] = {r: None for r in range(self.size)}  # run -> its best folder written

    # -- building (overridden by banks of other model kinds)
    def make_template(self, model: nn.Module) -> nn.Module:
        """The module whose structure every run's parameters fill (its own weights are never used)."""
        return model

    @staticmethod
    def hf_model(model: nn.Module) -> nn.Module:
        """The Hugging Face model inside ``model`` (its config, its attention implementation)."""
        return model

    def _stack(self) -> tuple[nn.Module, list, dict[str, torch.Tensor]]:
        """Load the runs' models one at a time into preallocated [R, ...] tensors (peak: R + 1 models). A
        parameter of the template that a run's model lacks (e.g. a domain embedding) is zero for that run."""
        template, configs, stacked = None, [], {}
        for r, member in enumerate(self.members):
            model = member.load_model()
            configs.append(copy.deepcopy(self.hf_model(model).config))
            named = dict(model.named_parameters())
            if template is None:
                template = self.make_template(model)
                stacked = {k: torch.zeros((self.size, *p.shape), dtype=p.dtype, device=self.device)
                           for k, p in template.named_parameters()}
            if any(k not in stacked or p.shape != stacked[k].shape[1:] for k, p in named.items()):
                raise ConfigError(f"{member.run_dir}: its model does not have the architecture of "
                                  f"{self.members[0].run_dir}'s; such runs cannot share a bank")
            with torch.no_grad():
                for k, p in named.items():
                    stacked[k][r].copy_(p)
            del model, named
        template.train()
        return template, configs, {k: v.requires_grad_() for k, v in stacked.items()}

    # -- one step
    def outputs(self, stacked: dict[str, torch.Tensor], hidden_states: bool = False) -> tuple[torch.Tensor, tuple | None]:
        """Every run's class logits [R, B, C] (and hidden states, [R, B, T, H] per layer, when asked)."""
        model, params = self.hf_model(self.template), within(self.params, self.prefix)
        inputs = {k: stacked[k] for k in MODEL_INPUT_KEYS if k in stacked}
        if self.grouped:
            return grouped_output(model, params, inputs, hidden_states)
        return vmapped_output(model, params, within(self.buffers, self.prefix), inputs, hidden_states)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The step's batch of every run stacked, [R, B, ...], on the bank's device (``host_batch``: on the CPU)."""
        self.host_batch = self.batches(step)
        return {k: to_device(v, self.device) for k, v in self.host_batch.items()}

    def losses(self, stacked: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each run's loss parts, [R] each, with ``total`` the one to minimise (stage 3: cross-entropy)."""
        loss = run_cross_entropy(self.outputs(stacked)[0], stacked["labels"])
        return {"cls": loss, "total": loss}

    def train_step(self) -> dict:
        """One optimiser step of every run; returns what :meth:`log_step` logs: lr, the names of the logged values
        (losses, grad_norm) and their values [names, R], still on the device (read at the next flush)."""
        with self.acc.autocast():
            parts = self.losses(self.batch(self.step))
        losses = parts["total"]
        finite = torch.isfinite(losses.detach())
        if not bool(finite.all()):
            for r in (~finite).nonzero().flatten().tolist():
                if r not in self.diverged:
                    self.freeze(r, f"the loss is {losses[r].item()} at step {self.step + 1}")
        if self.diverged:
            live = to_device(torch.tensor([r not in self.diverged for r in range(self.size)]), self.device)
            losses = torch.where(live, losses, torch.zeros_like(losses))
        losses.sum().backward()
        if self.diverged:  # a stopped run's gradients (maybe NaN) never reach its weights or AdamW moments
            for p in self.params.values():
                if p.grad is not None:
                    p.grad.masked_fill_(~live.view(-1, *([1] * (p.ndim - 1))), 0.0)
        lr = self.scheduler.get_last_lr()[0]
        norms = self.clip() if self.cfg.max_grad_norm > 0 else None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.restore_frozen()
        names = [f"loss_{k}" for k in parts] + (["grad_norm"] if norms is not None else [])
        values = torch.stack([v.detach().float() for v in [*parts.values(), *([norms] if norms is not None else [])]])
        return {"lr": lr, "names": names, "values": values}

    def clip(self) -> torch.Tensor:
        """Per-run gradient clipping (:func:`metaft.bank_forward.clip_runs`; on CUDA without a device sync)."""
        return clip_runs([p.grad for p in self.params.values() if p.grad is not None], self.cfg.max_grad_norm,
                         always_scale=self.device.type == "cuda")

    # -- runs that diverged
    def freeze(self, r: int, why: str) -> None:
        """Stop run r (its loss, weights or dev logits are NaN / inf): its weights stay as they are, it is not
        evaluated or checkpointed again, and it gets no results; the other runs go on."""
        self.diverged[r] = (f"{self.members[r].run_dir}: {why}: the run diverged; lower the learning rate or turn "
                            "mixed precision off (the last best checkpoint is kept)")
        with torch.no_grad():
            self.frozen[r] = {k: v[r].clone() for k, v in self.params.items()}
        logger.error("%s", self.diverged[r])

    def restore_frozen(self) -> None:
        """Undo what weight decay and the AdamW moments did to the stopped runs' weights this step."""
        with torch.no_grad():
            for r, saved in self.frozen.items():
                for k, v in saved.items():
                    self.params[k][r].copy_(v)

    # -- resumable state
    def state_info(self, elapsed_s: float) -> dict:
        return {"identity": self.identity, "step": self.step, "total_steps": self.total_steps,
                "elapsed_s": elapsed_s, "diverged": {str(r): why for r, why in self.diverged.items()},
                "members": [{"best": m.best, "history": m.history} for m in self.members]}

    def restore(self, info: dict) -> None:
        """Continue from a saved state whose tensors are loaded already (:func:`metaft.checkpoints.load_bank_state`)."""
        self.step, self.elapsed0 = info["step"], info["elapsed_s"]
        for r, (member, saved) in enumerate(zip(self.members, info["members"])):
            member.best, member.history = saved["best"], saved["history"]
            self.on_disk[r] = member.best["name"]  # written before the state was saved
        self.diverged = {int(r): why for r, why in info["diverged"].items()}
        with torch.no_grad():
            self.frozen = {r: {k: v[r].clone() for k, v in self.params.items()} for r in self.diverged}

    def save_state(self, elapsed_s: float) -> None:
        self.write_best()  # the state names each run's best folder: it must be on disk first
        save_atomic(lambda d: save_bank_state(d, self.params, self.optimizer, self.scheduler,
                                              self.state_info(elapsed_s)), self.state_dir)

    # -- evaluation and checkpoints
    def run_params(self, r: int) -> dict[str, torch.Tensor]:
        return {k: v[r] for k, v in self.params.items()}

    def evaluate(self, r: int) -> dict | NonFiniteError:
        """Dev metrics of run r alone (or its NonFiniteError), on a forked RNG: iterating a data loader draws from
        the global RNG, and whether a run is evaluated (a stopped run is not) must not change the others' dropout."""
        params, devices = self.run_params(r), [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            try:
                return evaluate(self.template, self.dev_loaders[r], lambda model, batch: self.eval_logits(
                    model, params, batch), self.acc, self.members[r].labels)
            except NonFiniteError as exc:
                return exc

    def evaluate_runs(self, runs: list[int]) -> list[dict | NonFiniteError]:
        """Dev metrics (or the NonFiniteError) of ``runs``: together in grouped forwards, else one at a time."""
        if not self.group_eval:
            return [self.evaluate(r) for r in runs]
        model, params = self.hf_model(self.template), within(self.params, self.prefix)
        if runs != list(range(self.size)):
            params = {k: v[runs] for k, v in params.items()}
        collators, pads = [self.batches.collators[r] for r in runs], [self.batches.pad_ids[r] for r in runs]

        def logits(items: list[list[dict]]) -> torch.Tensor:
            batch = stack_runs(items, collators, pads)
            with self.acc.autocast():
                return grouped_output(model, params, {k: to_device(batch[k], self.device)
                                                      for k in MODEL_INPUT_KEYS if k in batch})[0]
        model.eval()
        try:
            return evaluate_runs(logits, [self.members[r].dev_set for r in runs], [self.members[r].labels for r in runs],
                                 self.cfg.eval_batch_size)
        finally:
            model.train()

    def eval_logits(self, model: nn.Module, params: dict, batch: dict) -> torch.Tensor:
        """Class logits [B, C] of one run (``params``) for an evaluation batch."""
        inputs = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}
        return classifier_output(model, params, self.buffers, inputs, batch["attention_mask"])[0]

    @contextlib.contextmanager
    def as_run(self, r: int, weights: dict[str, torch.Tensor] | None = None):
        """The template holding run r's weights (its current ones, or ``weights``) and run r's own config (labels,
        attention implementation)."""
        hf = self.hf_model(self.template)
        template_config = hf.config
        weights = self.run_params(r) if weights is None else weights
        with torch.no_grad():
            for k, p in self.template.named_parameters():
                p.copy_(weights[k])
        hf.config = self.configs[r]
        try:
            yield self.template
        finally:
            hf.config = template_config

    def save(self, r: int, folder: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        with self.as_run(r, weights) as model:
            self.members[r].save_fn(model, folder)

    def write_best(self) -> None:
        """Write the best checkpoints kept in memory to their runs' folders (atomically, each replacing the run's
        earlier best folder)."""
        for r in sorted(self.unwritten):
            member, weights = self.members[r], {k: v[r] for k, v in self.best_params.items()}
            name, previous = member.best["name"], self.on_disk[r]
            save_atomic(lambda d, r=r, w=weights: self.save(r, d, w), member.run_dir / name)
            if previous and previous != name:
                shutil.rmtree(member.run_dir / previous, ignore_errors=True)
            self.on_disk[r] = name
        self.unwritten.clear()

    def evaluate_and_checkpoint(self, elapsed_s: float, runs: list[int] | None = None) -> None:
        """Evaluate the runs still going (of ``runs``, default all) on dev, checkpoint the better ones, and save
        the bank's state when ``save_state_every_s`` has passed since the last save."""
        self.flush_logs()  # the training records before the dev records
        for r, bad in non_finite_runs(self.params).items():
            if r not in self.diverged and (runs is None or r in runs):
                self.freeze(r, f"{len(bad)} weight tensor(s) hold NaN / inf at step {self.step} (e.g. {bad[0]})")
        runs = [r for r in (range(self.size) if runs is None else runs) if r not in self.diverged]
        results = self.evaluate_runs(runs)
        better = [r for r, dev in zip(runs, results) if not isinstance(dev, NonFiniteError)
                  and dev["accuracy"] > self.members[r].best["accuracy"]]  # ties keep the earlier checkpoint
        if better:  # one copy per tensor for all improved runs
            index = torch.tensor(better, device=self.device)
            self.best_params = self.best_params or {k: torch.empty_like(v) for k, v in self.params.items()}
            with torch.no_grad():
                for k, v in self.params.items():
                    self.best_params[k].index_copy_(0, index, v.index_select(0, index))
            self.unwritten.update(better)
        for r, dev in zip(runs, results):
            member = self.members[r]
            if isinstance(dev, NonFiniteError):
                self.freeze(r, f"step {self.step}: {dev}")
                continue
            if r in better:
                member.best = {"accuracy": dev["accuracy"], "step": self.step, "name": member.best_name(dev["accuracy"]),
                               "dev": {k: dev[k] for k in ("accuracy", "macro_f1", "n")}}
            record = {"kind": "dev", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                      "dev_accuracy": dev["accuracy"], "dev_macro_f1": dev["macro_f1"], "dev_n": dev["n"],
                      "best_dev_accuracy": member.best["accuracy"], "best_step": member.best["step"],
                      "elapsed_s": round(elapsed_s, 3)}
            member.history.append({k: record[k] for k in ("step", "dev_accuracy", "dev_macro_f1")})
            append_metrics(member.run_dir, record)
        logger.info("bank of %d at step %d/%d: best dev %s", self.size, self.step, self.total_steps,
                    ", ".join(f"{m.best['accuracy']:.4f}" for m in self.members))
        every = save_interval(min(m.cfg.save_state_every_s for m in self.members), self.device)
        if self.state_dir is not None and time.monotonic() - self.state_saved_at >= every:
            self.save_state(elapsed_s)
            self.state_saved_at = time.monotonic()

    # -- the loop
    def log_step(self, logged: dict, elapsed_s: float) -> None:
        """Keep the step's training record of every run still going (written at the next :meth:`flush_logs`)."""
        self.train_records.add(logged, self.step, self.step / self.steps_per_epoch, elapsed_s,
                               [r for r in range(self.size) if r not in self.diverged])

    def flush_logs(self) -> None:
        self.train_records.flush()

    def train(self) -> float:
        """Train every run to its end (or until it is stopped), evaluating and checkpointing as the one-run loop
        does; returns the bank's training time in seconds, earlier sessions of a resumed bank included."""
        t0 = self.state_saved_at = time.monotonic()
        elapsed = lambda: self.elapsed0 + time.monotonic() - t0  # noqa: E731
        every = self.cfg.eval_every or self.steps_per_epoch
        # a kept head is a selection candidate at step 0, as in the one-run loop
        first = [r for r, m in enumerate(self.members) if m.cfg.head != "reinit" and not m.history]
        if self.step == 0 and first:
            self.evaluate_and_checkpoint(elapsed(), first)
        while self.step < self.total_steps and len(self.diverged) < self.size:
            self.log_step(self.train_step(), elapsed())
            if self.step % every == 0 or self.step == self.total_steps:
                self.evaluate_and_checkpoint(elapsed())
        self.flush_logs()
        self.write_best()
        return elapsed()
