"""Dev evaluation of many runs of a bank in one grouped forward per chunk of examples (BERT-family banks).

Evaluating R runs one at a time costs R model forwards per dev batch, each bound by host overhead on a GPU; here
chunk c of every run's dev set (longest texts first, as :func:`metaft.features.eval_loader`) goes through
:func:`metaft.grouped_bert.grouped_output` at once (the bank's ``logits_fn``). A run whose dev set is shorter than the longest is padded
with copies of its own first example, whose predictions are dropped. No random numbers are drawn (no data
loader, eval mode), so evaluating changes no run's dropout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .evaluation import NonFiniteError, classification_metrics


def evaluate_runs(logits_fn: Callable[[list[list[dict]]], torch.Tensor], dev_sets: list, labels: list[list[str]],
                  batch_size: int) -> list[dict | NonFiniteError]:
    """Classification metrics of each run on its own dev set (``dev_sets[r]``, ``labels[r]``), or the
    :class:`NonFiniteError` of a run whose logits hold NaN / inf. ``logits_fn(items)``: every run's logits
    [R, n, C] for ``items[r]`` (n examples of run r each), in eval mode."""
    orders = []
    for dev in dev_sets:
        lengths = dev.lengths()
        orders.append(sorted(range(len(dev)), key=lambda i, n=lengths: -n[i]))
    preds, finite = [], []
    with torch.inference_mode():
        for start in range(0, max(len(o) for o in orders), batch_size):
            chunks = [order[start:start + batch_size] or order[:1] for order in orders]
            n = max(len(c) for c in chunks)
            logits = logits_fn([[dev[i] for i in c + c[:1] * (n - len(c))] for dev, c in zip(dev_sets, chunks)])
            preds.append(logits.argmax(-1))
            finite.append(torch.isfinite(logits).all(-1))
    preds, finite = torch.cat(preds, 1).cpu(), torch.cat(finite, 1).cpu()  # one transfer
    out = []
    for r, (dev, order) in enumerate(zip(dev_sets, orders)):
        # chunk c holds examples c * batch_size ... of every run, its own first: run r's are columns 0 .. N_r - 1
        if n_bad := int((~finite[r, :len(order)]).sum()):
            out.append(NonFiniteError(f"the model gives non-finite logits (NaN / inf) for {n_bad} of {len(order)} "
                                      "evaluation examples: its weights are damaged or the run diverged (lower "
                                      "the learning rate)"))
            continue
        golds = torch.tensor([dev[i]["labels"] for i in order], dtype=torch.long)
        out.append(classification_metrics(preds[r, :len(order)], golds, labels[r]))
    return out


def non_finite_runs(params: dict[str, torch.Tensor]) -> dict[int, list[str]]:
    """Run -> names of its weight tensors (stacked [R, ...] ``params``) holding NaN or inf, for the runs with
    any; one device sync for all runs."""
    names = list(params)
    with torch.no_grad():
        ok = torch.stack([torch.isfinite(v).flatten(1).all(1) for v in params.values()]).cpu()  # [n, R]
    return {r: [names[i] for i in (~ok[:, r]).nonzero().flatten().tolist()]
            for r in range(ok.shape[1]) if not bool(ok[:, r].all())}
