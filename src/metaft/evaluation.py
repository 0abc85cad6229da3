"""Evaluation: accuracy, macro-F1 and per-label counts of a classifier on a data loader (all processes)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .errors import MetaftError

LogitsFn = Callable[[nn.Module, dict], torch.Tensor]  # (model, batch) -> logits [B, C]


def classification_metrics(preds: torch.Tensor, golds: torch.Tensor, labels: list[str]) -> dict:
    """Accuracy, macro-F1 (over labels seen in gold or predictions) and per-label counts. preds, golds [N]."""
    per_label, f1s = {}, []
    for i, name in enumerate(labels):
        support, predicted = int((golds == i).sum()), int((preds == i).sum())
        correct = int(((golds == i) & (preds == i)).sum())
        per_label[name] = {"support": support, "correct": correct, "predicted": predicted}
        if support or predicted:
            f1s.append(2 * correct / (support + predicted))
    n = int(golds.numel())
    accuracy = float((preds == golds).sum()) / n if n else 0.0
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0, "n": n,
            "per_label": per_label}


class NonFiniteError(MetaftError):
    """The model's weights or outputs hold NaN / inf: the run diverged."""


def evaluate(model: nn.Module, loader, logits_fn: LogitsFn, accelerator, labels: list[str]) -> dict:
    """Classification metrics of ``model`` on all examples of ``loader`` (no duplicates under DDP).

    Non-finite logits (a diverged model) raise :class:`NonFiniteError`: an argmax over NaN means nothing.
    """
    was_training = model.training
    model.eval()
    preds, golds, bad = [], [], []
    with torch.inference_mode():
        for batch in loader:
            with accelerator.autocast():
                logits = logits_fn(model, batch)  # [B, C]
            p, y, nf = accelerator.gather_for_metrics(
                (logits.argmax(-1), batch["labels"], (~torch.isfinite(logits)).any(-1)))
            preds.append(p.cpu())
            golds.append(y.cpu())
            bad.append(nf.cpu())
    model.train(was_training)
    if (n_bad := int(torch.cat(bad).sum())) > 0:
        raise NonFiniteError(f"the model gives non-finite logits (NaN / inf) for {n_bad} of "
                             f"{sum(len(p) for p in preds)} evaluation examples: its weights are damaged or "
                             "the run diverged (lower the learning rate)")
    return classification_metrics(torch.cat(preds), torch.cat(golds), labels)


def non_finite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters holding NaN or inf."""
    with torch.no_grad():
        return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
