from __future__ import annotations

import math

import pytest
import torch

from metaft.losses import (
    corrupted_domain_targets,
    domain_corruption_loss,
    grad_reverse,
    grl_coefficient,
    mft_loss,
    weighted_cross_entropy,
)
from metaft.modeling import MetaOutput


def test_weighted_cross_entropy_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 1])
    weights = torch.tensor([0.3, 1.7])
    expected = 0.0
    for row, y, w in zip(logits.tolist(), labels.tolist(), weights.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        expected += w * (log_z - row[y])
    expected /= 2
    assert weighted_cross_entropy(logits, labels, weights).item() == pytest.approx(expected, rel=1e-6)


def test_changing_one_weight_changes_the_loss():
    logits, labels = torch.randn(5, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 1, 0, 1])
    w = torch.ones(5)
    base = weighted_cross_entropy(logits, labels, w)
    w2 = w.clone()
    w2[3] = 0.2
    assert weighted_cross_entropy(logits, labels, w2).item() != pytest.approx(base.item())
    assert weighted_cross_entropy(logits, labels, None).item() == pytest.approx(base.item())


def test_shape_errors_are_caught():
    with pytest.raises(ValueError):
        weighted_cross_entropy(torch.randn(4, 2), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError):
        weighted_cross_entropy(torch.randn(4, 2), torch.tensor([0, 1, 1, 0]), torch.ones(3))
    with pytest.raises(ValueError):
        domain_corruption_loss(torch.randn(2, 4), torch.tensor([0, 1, 1, 0]), torch.Generator())


def test_corrupted_targets_are_per_layer_permutations_of_batch_domains():
    domains = torch.tensor([0, 0, 1, 2, 2, 2, 1, 0])
    targets = corrupted_domain_targets(domains, 4, torch.Generator().manual_seed(7))
    assert targets.shape == (4, 8)
    for row in targets:
        assert sorted(row.tolist()) == sorted(domains.tolist())
    assert any(not torch.equal(targets[0], targets[i]) for i in range(1, 4)), "each layer gets a fresh permutation"
    again = corrupted_domain_targets(domains, 4, torch.Generator().manual_seed(7))
    assert torch.equal(targets, again), "a fixed generator gives fixed targets"


def test_domain_corruption_loss_equals_ce_against_the_permuted_targets():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 6, 4, generator=g)
    domains = torch.tensor([0, 1, 2, 3, 0, 1])
    targets = corrupted_domain_targets(domains, 3, torch.Generator().manual_seed(11))
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 4), targets.reshape(-1))
    got = domain_corruption_loss(logits, domains, torch.Generator().manual_seed(11))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_no_typicality_and_zero_lambda_is_plain_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 3, generator=g)
    batch = {"labels": torch.tensor([0, 1, 2, 0, 1, 2]), "weights": torch.rand(6, generator=g) + 0.1,
             "domains": torch.tensor([0, 1, 0, 1, 0, 1])}
    out = MetaOutput(logits, torch.randn(2, 6, 2, generator=g))
    parts = mft_loss(out, batch, domain_weight=0.0, use_weights=False, generator=torch.Generator().manual_seed(0))
    plain = torch.nn.functional.cross_entropy(logits, batch["labels"])
    assert parts["total"].item() == pytest.approx(plain.item(), rel=1e-6)
    assert set(parts) == {"cls", "domain", "total"}
    weighted = mft_loss(out, batch, domain_weight=0.1, generator=torch.Generator().manual_seed(0))
    assert weighted["total"].item() == pytest.approx(weighted["cls"].item() + 0.1 * weighted["domain"].item(), rel=1e-6)


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    (grad_reverse(x, 0.5) * torch.arange(4.0)).sum().backward()
    assert torch.allclose(x.grad, -0.5 * torch.arange(4.0).expand(3, 4))
    assert grl_coefficient(0.0) == 0.0 and grl_coefficient(1.0) == pytest.approx(0.99991, abs=1e-4)
