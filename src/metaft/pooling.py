"""Pooling token states into one vector per example: the masked mean, the [CLS] state or the pooler output.

Shared by the typicality embeddings and the domain head of the meta-learner.
"""

from __future__ import annotations

import torch

from .errors import ConfigError


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens only: hidden [..., T, H], mask [..., T] -> [..., H] (e.g. [B, T, H] -> [B, H], or a
    bank's [R, B, T, H] -> [R, B, H]). Padding never counts."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(-2) / m.sum(-2).clamp(min=1.0)


POOLINGS = ("mean", "cls", "pooler")


def check_pooling(model, pooling: str) -> None:
    """Refuse a pooling the model cannot do (``pooler`` needs a pooler layer)."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if pooling == "pooler" and getattr(model, "pooler", None) is None:
        raise ConfigError(f"{type(model).__name__} has no pooler layer; use --pooling mean or cls")


def pool(outputs, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per sequence: last hidden [B, T, H] + mask [B, T] -> [B, H]."""
    if pooling == "mean":
        return masked_mean(outputs.last_hidden_state, attention_mask)
    if pooling == "cls":
        return outputs.last_hidden_state[:, 0]
    pooled = getattr(outputs, "pooler_output", None)
    if pooled is None:
        raise ConfigError("the model returns no pooler output; use --pooling mean or cls")
    return pooled
