"""A bank: R independent training runs of one architecture advanced in lock step, one forward/backward a step.

The runs' parameters are stacked along a new leading dimension ([R, ...] per tensor) and the model runs once
per step over all of them: for BERT-family classifiers as batched kernels written on the stacked tensors
(:mod:`metaft.grouped_bert`), for other architectures under ``torch.func.vmap`` (``functional_call`` on one
template module), so a step costs one set of batched kernels instead of R times the per-run ones. Everything
else stays per run:

- data: each run's batch of the step comes from its own seeded epoch permutation (the one-run path's
  :func:`metaft.training.epoch_permutation` / :func:`metaft.training.step_batch`); batches are padded to the
  widest run's width (padding is masked out, so only float rounding changes);
- dropout: masks drawn over the stacked tensors (``vmap(randomness="different")``): every run draws its own (a lone run's masks cannot be
  reproduced, so equivalence with the one-run path holds at dropout 0);
- the loss of run r depends on run r's parameters only, so the gradient of the summed loss is each run's own
  gradient; clipping uses each run's own global norm; AdamW is elementwise, so one fused AdamW over the stacked
  tensors is R independent AdamWs (weight-decay and head-learning-rate groups as
  :func:`metaft.training.build_optimizer`);
- the head: the architecture's own or a pooled one (``head_pooling`` mean / cls, normalised or not, see
  :mod:`metaft.bank_forward`), fresh, kept or warm-started (``head probe``: fitted per run as its model is
  built, before the bank starts); a kept or warm-started head is a dev candidate at step 0, as alone;
- the learning-rate schedule is shared: a bank only holds runs with the same step count and optimiser
  settings (see :func:`metaft.bank_plan.bank_key`);
- dev evaluation, the best-dev checkpoint (the one-run path's folder, with the run's own config) and
  metrics.jsonl per run, as the one-run loop writes them;
- divergence: a run whose loss, weights or dev logits turn NaN / inf is stopped alone (its weights frozen, no
  more evaluations or checkpoints: a diverged model never becomes best) while the others go on.

The resumable state of the whole bank (stacked weights, AdamW and schedule, RNG, step, each run's best so far
and dev history) is saved at an evaluation at most every ``save_state_every_s`` seconds into ``state_dir``
(on CUDA at most every :data:`CUDA_MIN_SAVE_S`: see :func:`save_interval`).

Attention runs in HF's "eager" implementation inside the bank with a ready-made additive mask: the SDPA path
has no vmap batching rule on CPU (it would loop over the runs) and HF's mask helpers branch on tensor values.
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
from torch.func import vmap

from .bank_forward import adamw_groups, classifier_output, within
from .checkpoints import append_metrics, save_bank_state
from .devices import make_accelerator
from .errors import ConfigError
from .evaluation import NonFiniteError, evaluate
from .features import MODEL_INPUT_KEYS, Collator, EncodedDataset, eval_loader
from .fileio import save_atomic
from .grouped_bert import grouped_output, supports
from .heads import head_parameters
from .losses import run_cross_entropy
from .steps import build_scheduler, epoch_permutation, group_by_length, planned_steps, step_batch

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
        multiple = cfg.pad_to_multiple_of
        self.collators = [Collator(m.train_set.pad_id, multiple, cfg.pad_to_length) for m in members]
        self.dev_loaders = [eval_loader(m.dev_set, cfg.eval_batch_size, self.acc, multiple, cfg.pad_to_length)
                            for m in members]
        self._perms: list[tuple[int, list[int]] | None] = [None] * self.size
        # the grouped forward where the architecture has one (None: auto), else vmap
        self.grouped = supports(self.hf_model(self.template)) if grouped is None else grouped
        self.step, self.elapsed0 = 0, 0.0
        self.state_dir, self.identity = state_dir, identity or {}
        self.diverged: dict[int, str] = {}  # run -> why it was stopped
        self.frozen: dict[int, dict[str, torch.Tensor]] = {}  # run -> its weights when it was stopped

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

    def parameter_count(self) -> int:
        return sum(p[0].numel() for p in self.params.values())

    # -- one step
    def outputs(self, stacked: dict[str, torch.Tensor], hidden_states: bool = False) -> tuple[torch.Tensor, tuple | None]:
        """Every run's class logits [R, B, C] (and hidden states, [R, B, T, H] per layer, when asked)."""
        model, params = self.hf_model(self.template), within(self.params, self.prefix)
        if self.grouped:
            return grouped_output(model, params, {k: stacked[k] for k in MODEL_INPUT_KEYS if k in stacked},
                                  hidden_states)
        buffers = within(self.buffers, self.prefix)

        def one(p: dict, inputs: dict, mask: torch.Tensor):
            logits, states = classifier_output(model, p, buffers, inputs, mask, hidden_states)
            return (logits, states) if hidden_states else logits
        out = vmap(one, randomness="different")(params, self.model_inputs(stacked), stacked["attention_mask"])
        return out if hidden_states else (out, None)

    def _indices(self, r: int, step: int) -> list[int]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        train_set = self.members[r].train_set
        if self._perms[r] is None or self._perms[r][0] != epoch:
            perm = epoch_permutation(len(train_set), self.members[r].cfg.seed, epoch)
            if self.cfg.group_by_length:
                perm = group_by_length(perm, train_set.lengths(), self.cfg.batch_size)
            self._perms[r] = (epoch, perm)
        return step_batch(self._perms[r][1], pos, self.cfg.batch_size)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The step's batch of every run stacked, [R, B, ...], token tensors padded to one width."""
        batches = [self.collators[r]([m.train_set[i] for i in self._indices(r, step)])
                   for r, m in enumerate(self.members)]
        width = max(b["input_ids"].shape[1] for b in batches)
        out = {}
        for key in batches[0]:
            if batches[0][key].dim() == 2:  # [B, T]: pad ids with each run's pad id, mask and types with 0
                fill = [m.train_set.pad_id if key == "input_ids" else 0 for m in self.members]
                out[key] = torch.stack([nn.functional.pad(b[key], (0, width - b[key].shape[1]), value=v)
                                        for b, v in zip(batches, fill)])
            else:
                out[key] = torch.stack([b[key] for b in batches])
        return {k: v.to(self.device) for k, v in out.items()}

    @staticmethod
    def model_inputs(stacked: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The HF model's inputs with the padding mask made additive, [R, B, 1, 1, T]."""
        inputs = {k: stacked[k] for k in MODEL_INPUT_KEYS if k in stacked}
        keep = inputs["attention_mask"].bool()[:, :, None, None, :]
        inputs["attention_mask"] = torch.zeros(keep.shape, device=keep.device).masked_fill_(
            ~keep, torch.finfo(torch.float32).min)
        return inputs

    def losses(self, stacked: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each run's loss parts, [R] each, with ``total`` the one to minimise (stage 3: cross-entropy)."""
        loss = run_cross_entropy(self.outputs(stacked)[0], stacked["labels"])
        return {"cls": loss, "total": loss}

    def train_step(self) -> list[dict[str, float]]:
        """One optimiser step of every run; returns each run's logged values (lr, grad_norm, losses)."""
        with self.acc.autocast():
            parts = self.losses(self.batch(self.step))
        losses = parts["total"]
        finite = torch.isfinite(losses.detach())
        if not bool(finite.all()):
            for r in (~finite).nonzero().flatten().tolist():
                if r not in self.diverged:
                    self.freeze(r, f"the loss is {losses[r].item()} at step {self.step + 1}")
        live = torch.tensor([r not in self.diverged for r in range(self.size)], device=losses.device)
        torch.where(live, losses, torch.zeros_like(losses)).sum().backward()
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
        values = {k: v.detach().float().cpu().tolist() for k, v in parts.items()}
        logged = [{"lr": lr, **{f"loss_{k}": v[r] for k, v in values.items()}} for r in range(self.size)]
        if norms is not None:
            for record, norm in zip(logged, norms.cpu().tolist()):
                record["grad_norm"] = norm
        return logged

    def clip(self) -> torch.Tensor:
        """Per-run ``clip_grad_norm_``: run r's gradients scaled by min(1, max_norm / (its norm + 1e-6)).
        Returns the R norms. A tensor the loss does not use (a pooled head's unused pooler) has no gradient and, as
        alone, is left alone by AdamW."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        per_tensor = torch.stack([torch.linalg.vector_norm(g.reshape(self.size, -1), dim=1) for g in grads])
        norms = torch.linalg.vector_norm(per_tensor, dim=0)  # [R]
        coef = (self.cfg.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        if bool((coef < 1.0).any()):
            for g in grads:
                g.mul_(coef.view(-1, *([1] * (g.ndim - 1))))
        return norms

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

    def non_finite(self, r: int) -> list[str]:
        """Names of run r's weight tensors that hold NaN or inf."""
        with torch.no_grad():
            return [k for k, v in self.params.items() if not bool(torch.isfinite(v[r]).all())]

    # -- resumable state
    def state_info(self, elapsed_s: float) -> dict:
        return {"identity": self.identity, "step": self.step, "total_steps": self.total_steps,
                "elapsed_s": elapsed_s, "diverged": {str(r): why for r, why in self.diverged.items()},
                "members": [{"best": m.best, "history": m.history} for m in self.members]}

    def restore(self, info: dict) -> None:
        """Continue from a saved state whose tensors are loaded already (:func:`metaft.checkpoints.load_bank_state`)."""
        self.step, self.elapsed0 = info["step"], info["elapsed_s"]
        for member, saved in zip(self.members, info["members"]):
            member.best, member.history = saved["best"], saved["history"]
        self.diverged = {int(r): why for r, why in info["diverged"].items()}
        with torch.no_grad():
            self.frozen = {r: {k: v[r].clone() for k, v in self.params.items()} for r in self.diverged}

    def save_state(self, elapsed_s: float) -> None:
        save_atomic(lambda d: save_bank_state(d, self.params, self.optimizer, self.scheduler,
                                              self.state_info(elapsed_s)), self.state_dir)

    # -- evaluation and checkpoints
    def run_params(self, r: int) -> dict[str, torch.Tensor]:
        return {k: v[r] for k, v in self.params.items()}

    def evaluate(self, r: int, loader) -> dict:
        """Classification metrics of run r (its current weights) on ``loader``, on a forked RNG: iterating a data
        loader draws from the global RNG, and whether a run is evaluated (a stopped run is not) must not change
        the other runs' dropout."""
        params = self.run_params(r)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return evaluate(self.template, loader, lambda model, batch: self.eval_logits(model, params, batch), self.acc,
                                self.members[r].labels)

    def eval_logits(self, model: nn.Module, params: dict, batch: dict) -> torch.Tensor:
        """Class logits [B, C] of one run (``params``) for an evaluation batch."""
        inputs = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}
        return classifier_output(model, params, self.buffers, inputs, batch["attention_mask"])[0]

    @contextlib.contextmanager
    def as_run(self, r: int):
        """The template holding run r's weights and run r's own config (labels, attention implementation)."""
        hf = self.hf_model(self.template)
        template_config = hf.config
        with torch.no_grad():
            for k, p in self.template.named_parameters():
                p.copy_(self.params[k][r])
        hf.config = self.configs[r]
        try:
            yield self.template
        finally:
            hf.config = template_config

    def save(self, r: int, folder: Path) -> None:
        with self.as_run(r) as model:
            self.members[r].save_fn(model, folder)

    def evaluate_and_checkpoint(self, elapsed_s: float, runs: list[int] | None = None) -> None:
        """Evaluate the runs still going (of ``runs``, default all) on dev, checkpoint the better ones, and save
        the bank's state when ``save_state_every_s`` has passed since the last save."""
        for r in range(self.size) if runs is None else runs:
            if r in self.diverged:
                continue
            member = self.members[r]
            if bad := self.non_finite(r):
                self.freeze(r, f"{len(bad)} weight tensor(s) hold NaN / inf at step {self.step} (e.g. {bad[0]})")
                continue
            try:
                dev = self.evaluate(r, self.dev_loaders[r])
            except NonFiniteError as exc:
                self.freeze(r, f"step {self.step}: {exc}")
                continue
            if dev["accuracy"] > member.best["accuracy"]:  # ties keep the earlier checkpoint
                name, previous = member.best_name(dev["accuracy"]), member.best["name"]
                save_atomic(lambda d, r=r: self.save(r, d), member.run_dir / name)
                if previous and previous != name:
                    shutil.rmtree(member.run_dir / previous, ignore_errors=True)
                member.best = {"accuracy": dev["accuracy"], "step": self.step, "name": name,
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
    def log_step(self, logged: list[dict[str, float]], elapsed_s: float) -> None:
        """Append the step's training record to the metrics.jsonl of every run still going."""
        for r, (member, values) in enumerate(zip(self.members, logged)):
            if r not in self.diverged:
                append_metrics(member.run_dir, {"kind": "train", "step": self.step,
                                                "epoch": self.step / self.steps_per_epoch,
                                                "elapsed_s": round(elapsed_s, 3), **values})

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
        return elapsed()
