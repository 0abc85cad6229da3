"""How a bank runs and optimises its template module: the functional forward of a sequence classifier under
``vmap`` (the architecture's own head or a pooled one) and the stacked AdamW's parameter groups.

Inside a bank the encoder gets a ready-made additive attention mask (see :mod:`metaft.bank`), which a pooled
classifier (:class:`metaft.modeling_metaft_pooled.MetaftPooledForSequenceClassification`) cannot pool with; so
for such a template the encoder runs on its own and the pooled head (the module's own ``pool``, dropout and
linear layer, after its normalisation when the head normalises) is applied on the padding mask.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from .modeling_metaft_pooled import MetaftPooledForSequenceClassification

ENCODER = "encoder."


def within(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` under ``prefix``, named relative to it."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def classifier_output(model: nn.Module, params: dict, buffers: dict, inputs: dict, mask: torch.Tensor,
                      hidden_states: bool = False) -> tuple[torch.Tensor, tuple | None]:
    """Class logits [B, C] (and the encoder's hidden states when asked) of the sequence classifier ``model`` run
    on ``params`` / ``buffers``. ``inputs``: the encoder's inputs (its attention mask as the bank passes it);
    ``mask``: the padding mask [B, T] (1 = token), which a pooled head averages over."""
    if not isinstance(model, MetaftPooledForSequenceClassification):
        out = functional_call(model, (params, buffers), (), {**inputs, "output_hidden_states": hidden_states})
        return out.logits, out.hidden_states
    out = functional_call(model.encoder, (within(params, ENCODER), within(buffers, ENCODER)), (),
                          {**inputs, "output_hidden_states": hidden_states, "return_dict": True})
    features = model.dropout(model.sentence_features(out.last_hidden_state, mask))
    return F.linear(features, params["classifier.weight"], params["classifier.bias"]), out.hidden_states


def vmapped_output(model: nn.Module, params: dict, buffers: dict, inputs: dict[str, torch.Tensor],
                   hidden_states: bool = False) -> tuple[torch.Tensor, tuple | None]:
    """:func:`classifier_output` of every run under ``vmap`` (own dropout masks per run): logits [R, B, C] and
    hidden states [R, B, T, H] per layer when asked. ``params`` / ``inputs``: stacked [R, ...]; the padding mask
    goes into the encoder as a ready-made additive mask [R, B, 1, 1, T]."""
    mask = inputs["attention_mask"]
    keep = mask.bool()[:, :, None, None, :]
    additive = torch.zeros(keep.shape, device=keep.device).masked_fill_(~keep, torch.finfo(torch.float32).min)

    def one(p: dict, encoder_inputs: dict, padding: torch.Tensor):
        logits, states = classifier_output(model, p, buffers, encoder_inputs, padding, hidden_states)
        return (logits, states) if hidden_states else logits
    out = vmap(one, randomness="different")(params, {**inputs, "attention_mask": additive}, mask)
    return out if hidden_states else (out, None)


def clip_runs(grads: list[torch.Tensor], max_norm: float, always_scale: bool = False) -> torch.Tensor:
    """Per-run ``clip_grad_norm_`` of stacked [R, ...] gradients: run r's scaled by min(1, max_norm / (its global
    norm + 1e-6)); returns the R norms. Unless ``always_scale`` (no device sync), the scaling pass is skipped when
    no run needs it (it would multiply by 1). A tensor the loss does not use has no gradient: pass only the
    others (as alone, AdamW leaves a tensor without a gradient alone)."""
    runs = grads[0].shape[0]
    norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.reshape(runs, -1), dim=1)
                                                  for g in grads]), dim=0)  # [R]
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    if always_scale or bool((coef < 1.0).any()):
        for g in grads:
            g.mul_(coef.view(-1, *([1] * (g.ndim - 1))))
    return norms


def adamw_groups(params: dict[str, torch.Tensor], head: Collection[str], learning_rate: float,
                 head_learning_rate: float | None, weight_decay: float) -> list[dict]:
    """:func:`metaft.training.build_optimizer`'s groups for stacked [R, ...] tensors: weight decay on matrices and
    embeddings, not on biases or LayerNorm; the tensors named in ``head`` at ``head_learning_rate`` (default:
    ``learning_rate``)."""
    head_lr = learning_rate if head_learning_rate is None else head_learning_rate
    groups: dict[tuple[float, float], list] = {(wd, lr): [] for wd in (weight_decay, 0.0)
                                               for lr in (learning_rate, head_lr)}
    for name, p in params.items():
        wd = weight_decay if decays(name, p.ndim - 1) else 0.0
        groups[(wd, head_lr if name in head else learning_rate)].append(p)
    return [{"params": ps, "weight_decay": wd, "lr": lr} for (wd, lr), ps in groups.items() if ps]


def decays(name: str, per_run_ndim: int) -> bool:
    """build_optimizer's rule: weight decay on matrices and embeddings, not on biases or LayerNorm."""
    return per_run_ndim >= 2 and "norm" not in name.lower()
