"""A bank's forward for BERT-family sequence classifiers, written on the stacked [R, ...] parameters.

Under ``vmap`` a bank runs the Hugging Face module's Python forward once per step and every operation becomes a
batching rule: hundreds of small kernels and Python calls, so a bank step on a GPU is bound by host time. Here
the same computation is a few batched kernels per layer: every linear layer is one ``baddbmm`` over the run
dimension, the embeddings one gather each from the runs' tables laid end to end, attention one
``scaled_dot_product_attention`` over runs x batch, LayerNorm a normalisation and the run's affine. Dropout
draws its masks over the whole [R, ...] tensor, so every run gets its own.

Supported: :class:`transformers.BertModel` encoders (all-MiniLM-L6-v2 is one) in a
``BertForSequenceClassification`` (the pooler head) or a
:class:`metaft.modeling_metaft_pooled.MetaftPooledForSequenceClassification` (mean / cls pooling, normalised
or not). :func:`supports` says whether a template module qualifies; other architectures keep the ``vmap`` path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertForSequenceClassification, BertModel
from transformers.activations import ACT2FN

from .bank_forward import within
from .modeling_metaft_pooled import MetaftPooledForSequenceClassification
from .pooling import masked_mean


def encoder_of(model: nn.Module) -> tuple[nn.Module | None, str]:
    """The BERT encoder inside a supported classifier and the prefix of its parameter names (None, '' if none)."""
    if type(model) is BertForSequenceClassification:
        return model.bert, "bert."
    if isinstance(model, MetaftPooledForSequenceClassification) and type(model.encoder) is BertModel:
        return model.encoder, "encoder."
    return None, ""


def supports(model: nn.Module) -> bool:
    """Whether :func:`grouped_output` computes what ``model``'s own forward computes (else: the vmap path)."""
    encoder, _ = encoder_of(model)
    if encoder is None:
        return False
    config = encoder.config
    return (not getattr(config, "is_decoder", False) and not getattr(config, "add_cross_attention", False)
            and getattr(config, "position_embedding_type", "absolute") == "absolute"
            and isinstance(config.hidden_act, str) and config.hidden_act in ACT2FN
            and (type(model) is not BertForSequenceClassification or encoder.pooler is not None))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Each run's linear layer: x [R, N, In], weight [R, Out, In], bias [R, Out] -> [R, N, Out]."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Each run's LayerNorm over the last dimension: x [R, ..., H], weight / bias [R, H]."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return F.layer_norm(x, x.shape[-1:], eps=eps) * weight.view(shape) + bias.view(shape)


def lookup(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Each run's embedding rows: table [R, V, H], ids [R, ...] -> [R, ..., H] (one gather over the tables)."""
    runs, vocab = table.shape[:2]
    offsets = torch.arange(runs, device=ids.device).mul_(vocab).view(runs, *([1] * (ids.dim() - 1)))
    return F.embedding(ids + offsets, table.reshape(runs * vocab, -1))


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout with probability ``p`` (0: the tensor itself), masks drawn over every run's elements at once."""
    return F.dropout(x, p, training=True) if p else x


def embeddings(config, p: dict, inputs: dict[str, torch.Tensor], p_drop: float) -> torch.Tensor:
    """BertEmbeddings for every run: [R, B, T, H]."""
    ids = inputs["input_ids"]
    width = ids.shape[-1]
    x = lookup(p["embeddings.word_embeddings.weight"], ids)
    types = p["embeddings.token_type_embeddings.weight"]
    if "token_type_ids" in inputs:
        x = x + lookup(types, inputs["token_type_ids"])
    else:
        x = x + types[:, 0, None, None, :]
    x = x + p["embeddings.position_embeddings.weight"][:, None, :width]
    x = layer_norm(x, p["embeddings.LayerNorm.weight"], p["embeddings.LayerNorm.bias"], config.layer_norm_eps)
    return dropout(x, p_drop)


def layer(config, p: dict, x: torch.Tensor, keep: torch.Tensor, shape: tuple, training: bool) -> torch.Tensor:
    """One BertLayer for every run: x [R, B*T, H] -> [R, B*T, H]; ``keep``: [R*B, 1, 1, T] attendable keys."""
    runs, batch, width, hidden = shape
    heads, eps = config.num_attention_heads, config.layer_norm_eps
    p_hidden = config.hidden_dropout_prob if training else 0.0
    split = lambda t: t.reshape(runs * batch, width, heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = (split(linear(x, p[f"attention.self.{n}.weight"], p[f"attention.self.{n}.bias"]))
               for n in ("query", "key", "value"))
    context = F.scaled_dot_product_attention(
        q, k, v, attn_mask=keep, dropout_p=config.attention_probs_dropout_prob if training else 0.0)
    context = context.transpose(1, 2).reshape(runs, batch * width, hidden)
    out = dropout(linear(context, p["attention.output.dense.weight"], p["attention.output.dense.bias"]), p_hidden)
    x = layer_norm(out + x, p["attention.output.LayerNorm.weight"], p["attention.output.LayerNorm.bias"], eps)
    inner = ACT2FN[config.hidden_act](linear(x, p["intermediate.dense.weight"], p["intermediate.dense.bias"]))
    out = dropout(linear(inner, p["output.dense.weight"], p["output.dense.bias"]), p_hidden)
    return layer_norm(out + x, p["output.LayerNorm.weight"], p["output.LayerNorm.bias"], eps)


def grouped_output(model: nn.Module, params: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor],
                   hidden_states: bool = False) -> tuple[torch.Tensor, tuple | None]:
    """Class logits [R, B, C] of the supported classifier ``model`` (:func:`supports`) run on the stacked
    ``params`` (named as ``model``'s parameters), and its hidden states (the embeddings' and every layer's
    output, [R, B, T, H] each) when asked. ``inputs``: ``input_ids``, ``attention_mask`` (the padding mask,
    1 = token) and optionally ``token_type_ids``, [R, B, T] each. Dropout as ``model.training`` says."""
    encoder, prefix = encoder_of(model)
    config, training = encoder.config, model.training
    p = within(params, prefix)
    mask = inputs["attention_mask"]
    runs, batch, width = mask.shape
    x = embeddings(config, p, inputs, config.hidden_dropout_prob if training else 0.0)
    hidden = x.shape[-1]
    keep = mask.bool().reshape(runs * batch, 1, 1, width)
    states = [x]
    x = x.reshape(runs, batch * width, hidden)
    for i in range(config.num_hidden_layers):
        x = layer(config, within(p, f"encoder.layer.{i}."), x, keep, (runs, batch, width, hidden), training)
        states.append(x.view(runs, batch, width, hidden))
    last = states[-1]
    if isinstance(model, MetaftPooledForSequenceClassification):
        features = last[:, :, 0] if model.config.pooling == "cls" else masked_mean(last, mask)
        if getattr(model.config, "normalize", False):
            features = F.normalize(features, p=2, dim=-1, eps=1e-12)
    else:
        features = torch.tanh(linear(last[:, :, 0], p["pooler.dense.weight"], p["pooler.dense.bias"]))
    features = model.dropout(features)
    logits = linear(features, params["classifier.weight"], params["classifier.bias"])
    return logits, tuple(states) if hidden_states else None
