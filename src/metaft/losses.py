"""The MFT objective as small functions that check shapes and hold no parameters.

L = mean_i(t_i * CE(logits_i, y_i)) + lambda * L_DC, where L_DC is the domain-corruption loss of
Wang et al. (2020): the shared domain classifier must predict *corrupted* domain labels, fresh for every
layer and step. ``permute`` (the reference code's way, kept as the reference behaviour) uses a random
permutation of the batch's domain labels: at small batches it often equals the true domain, so in
expectation it is partly a true-domain loss. ``uniform`` draws each corrupted label independently of the
true one, uniformly over the group's domains, as the paper means it. The gradient-reversal (DANN) variant
is an ablation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """mean_i(w_i * CE_i). logits [B, C], labels [B], weights [B] or None (all ones)."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [B, C] and labels [B]; got {tuple(logits.shape)}, {tuple(labels.shape)}")
    if weights is not None and weights.shape != labels.shape:
        raise ValueError(f"weights must be [B] = {tuple(labels.shape)}; got {tuple(weights.shape)}")
    return run_cross_entropy(logits[None], labels[None], None if weights is None else weights[None])[0]


def run_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """mean_i(w_i * CE_i) of every run of a bank at once (:func:`weighted_cross_entropy` is one run's): logits
    [R, B, C], labels / weights [R, B] or None (all ones) -> [R]."""
    per_example = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
    per_example = per_example.view(labels.shape)
    if weights is not None:
        per_example = weights.to(per_example.dtype) * per_example
    return per_example.mean(-1)


def _check_domain_logits(domain_logits: torch.Tensor, domains: torch.Tensor) -> None:
    if domain_logits.dim() != 3 or domains.shape != domain_logits.shape[1:2]:
        raise ValueError(
            f"domain_logits must be [L, B, K] and domains [B]; got {tuple(domain_logits.shape)}, {tuple(domains.shape)}"
        )


CORRUPTIONS = ("permute", "uniform")


def corrupted_domain_targets(domains: torch.Tensor, num_layers: int, generator: torch.Generator,
                             corruption: str = "permute", num_domains: int | None = None) -> torch.Tensor:
    """[L, B] corrupted domain labels, drawn afresh for each layer from ``generator`` (a CPU generator).

    ``permute``: an independent random permutation of the batch's domain labels per layer (the reference
    behaviour; keeps the batch's multiset of domains). ``uniform``: each label drawn uniformly from
    ``0..num_domains-1``, independently of the example's true domain.
    """
    if corruption == "permute":
        perms = [torch.randperm(domains.numel(), generator=generator) for _ in range(num_layers)]
        return torch.stack([domains[p.to(domains.device)] for p in perms])
    if corruption == "uniform":
        if not num_domains or num_domains < 1:
            raise ValueError("corruption='uniform' needs num_domains >= 1")
        drawn = torch.randint(num_domains, (num_layers, domains.numel()), generator=generator)
        return drawn.to(device=domains.device, dtype=domains.dtype)
    raise ValueError(f"corruption must be one of {', '.join(CORRUPTIONS)}, got {corruption!r}")


def domain_corruption_loss(
    domain_logits: torch.Tensor, domains: torch.Tensor, generator: torch.Generator, corruption: str = "permute"
) -> torch.Tensor:
    """Mean over layers and examples of CE(z_l(x_i), c_l(i)) with c the corrupted labels of
    :func:`corrupted_domain_targets` (K, the group's domain count, is the logits' last size).
    domain_logits [L, B, K], domains [B]."""
    _check_domain_logits(domain_logits, domains)
    num_layers, batch, k = domain_logits.shape
    targets = corrupted_domain_targets(domains, num_layers, generator, corruption, k)
    return F.cross_entropy(domain_logits.float().reshape(-1, k), targets.reshape(-1))


def domain_adversarial_loss(domain_logits: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
    """CE with the true domains (gradient reversal is applied inside the model). [L, B, K], [B]."""
    _check_domain_logits(domain_logits, domains)
    num_layers, _, k = domain_logits.shape
    return F.cross_entropy(domain_logits.float().reshape(-1, k), domains.repeat(num_layers))


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient multiplied by -coeff backward."""
    return _GradientReversal.apply(x, coeff)


def grl_coefficient(progress: float) -> float:
    """DANN schedule (Ganin & Lempitsky 2015): 2 / (1 + exp(-10 p)) - 1 for training progress p in [0, 1]."""
    return 2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0


def mft_loss(
    output,
    batch: dict[str, torch.Tensor],
    *,
    domain_loss: str = "corrupt",
    domain_weight: float = 0.1,
    use_weights: bool = True,
    generator: torch.Generator | None = None,
    corruption: str = "permute",
) -> dict[str, torch.Tensor]:
    """The total meta fine-tuning loss and its named parts ``cls``, ``domain``, ``total``.

    ``output`` is a :class:`metaft.modeling.MetaOutput`; typicality weights apply to ``cls`` only.
    """
    cls = weighted_cross_entropy(output.logits, batch["labels"], batch["weights"] if use_weights else None)
    if domain_loss == "none" or output.domain_logits is None:
        if domain_loss != "none":
            raise ValueError(f"domain_loss={domain_loss!r} needs a model with a domain head")
        domain = cls.new_zeros(())
    elif domain_loss == "corrupt":
        if generator is None:
            raise ValueError("domain_loss='corrupt' needs an explicit torch.Generator")
        domain = domain_corruption_loss(output.domain_logits, batch["domains"], generator, corruption)
    elif domain_loss == "grl":
        domain = domain_adversarial_loss(output.domain_logits, batch["domains"])
    else:
        raise ValueError(f"unknown domain_loss {domain_loss!r}")
    return {"cls": cls, "domain": domain, "total": cls + domain_weight * domain}
