"""Head warm start (``head probe``; Kumar et al., ICLR 2022, "LP-FT", :func:`probe_warm_start`): before
fine-tuning, the fresh head's last linear layer is fitted by L2-regularised logistic regression on the features
that layer sees (the model in eval mode, so without dropout), C chosen on the dev split (grid 10^-3 .. 10^3;
ties keep the smallest C, the most regularised head); fine-tuning then starts from a head that already
separates the classes instead of one that distorts the features while it learns.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from .features import Collator, EncodedDataset
from .heads import classification_head

logger = logging.getLogger(__name__)

C_GRID = tuple(10.0 ** e for e in range(-3, 4))
_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def head_linear(model: nn.Module) -> nn.Linear:
    """The last linear layer of a sequence classifier's head (the one that outputs the class logits)."""
    linears = [m for head in classification_head(model) for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__}: no linear layer in its classification head")
    return linears[-1]


@torch.no_grad()
def head_features(model: nn.Module, dataset: EncodedDataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The inputs of :func:`head_linear` for every example of ``dataset`` (model in eval mode) and the labels."""
    linear, captured = head_linear(model), []
    hook = linear.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().float().cpu()))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate, labels = Collator(dataset.pad_id), []
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            model(**{k: batch[k].to(device) for k in _INPUT_KEYS if k in batch})
            labels.append(batch["labels"])
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured).double().numpy(), torch.cat(labels).numpy()


def fit_logistic(train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray,
                 grid: tuple[float, ...] = C_GRID) -> dict:
    """L2 logistic regression for each C of ``grid``; the best on dev (ties: the smaller C).
    Returns ``{"model", "C", "dev_accuracy", "train_accuracy"}``."""
    from sklearn.linear_model import LogisticRegression

    best = None
    for c in grid:
        clf = LogisticRegression(C=c, max_iter=5000).fit(train_x, train_y)
        acc = float((clf.predict(dev_x) == dev_y).mean())
        if best is None or acc > best["dev_accuracy"]:
            best = {"model": clf, "C": c, "dev_accuracy": acc,
                    "train_accuracy": float((clf.predict(train_x) == train_y).mean())}
    return best


def set_linear(linear: nn.Linear, clf, num_labels: int) -> None:
    """Copy a fitted scikit-learn logistic regression into ``linear`` (same class probabilities). Binary:
    logits ±(w·x + b)/2. A label absent from the training data gets weight 0 and a bias 10 below the others."""
    coef, intercept = np.asarray(clf.coef_, dtype=np.float64), np.asarray(clf.intercept_, dtype=np.float64)
    if coef.shape[0] == 1:
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight = np.zeros((num_labels, coef.shape[1]))
    bias = np.full(num_labels, intercept.min() - 10.0)
    for row, cls in enumerate(clf.classes_):
        weight[int(cls)], bias[int(cls)] = coef[row], intercept[row]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))


def probe_warm_start(model: nn.Module, train_set: EncodedDataset, dev_set: EncodedDataset,
                     batch_size: int = 64) -> dict:
    """Fit the head's last linear layer of ``model`` (an HF sequence classifier) on its frozen features.
    Returns what was chosen: ``{"C", "dev_accuracy", "train_accuracy"}`` (of the probe alone)."""
    train_x, train_y = head_features(model, train_set, batch_size)
    dev_x, dev_y = head_features(model, dev_set, batch_size)
    if len(set(train_y.tolist())) < 2:
        logger.warning("head warm start skipped: the training set has one label only")
        return {"C": None, "dev_accuracy": None, "train_accuracy": None}
    fit = fit_logistic(train_x, train_y, dev_x, dev_y)
    set_linear(head_linear(model), fit["model"], model.config.num_labels)
    logger.info("head warm start: logistic regression on frozen features, C %g, dev accuracy %.4f", fit["C"],
                fit["dev_accuracy"])
    return {k: fit[k] for k in ("C", "dev_accuracy", "train_accuracy")}
