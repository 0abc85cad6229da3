"""MFT mechanics: domain corruption (permute / uniform), the domain head's embedding, class typicality
(normalized space, leave-one-out, own-prototype fraction) and AUROC."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metaft.config import MetaConfig, TypicalityConfig
from metaft.errors import ConfigError
from metaft.losses import corrupted_domain_targets, mft_loss
from metaft.modeling import META_FILE, MetaLearner, save_atomic
from metaft.prototypes import auroc, own_prototype_fraction, typicality_scores


def _batch(n=6, t=8, domains=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, 40, (n, t), generator=g), "attention_mask": torch.ones(n, t, dtype=torch.long),
            "labels": torch.randint(0, 2, (n,), generator=g), "domains": torch.arange(n) % domains,
            "weights": torch.ones(n)}


# ------------------------------------------------------------------------------------------ corruption

def test_uniform_targets_are_independent_of_the_true_domain():
    domains = torch.tensor([0, 0, 1, 2])  # batch 4, 3 domains: the case where permute is biased
    gen = torch.Generator().manual_seed(3)
    counts = np.zeros((3, 3))
    for _ in range(4000):
        targets = corrupted_domain_targets(domains, 4, gen, "uniform", 3)
        for true, drawn in zip(domains.repeat(4).tolist(), targets.reshape(-1).tolist()):
            counts[true, drawn] += 1
    conditional = counts / counts.sum(axis=1, keepdims=True)  # P(target | true domain), 16000+ draws a row
    assert np.abs(conditional - 1 / 3).max() < 0.02, conditional
    same = np.trace(counts) / counts.sum()
    assert same == pytest.approx(1 / 3, abs=0.01)

    permuted = np.zeros(2)
    for _ in range(4000):
        row = corrupted_domain_targets(domains, 1, gen, "permute")[0]
        permuted += [(row == domains).sum().item(), domains.numel()]
    assert permuted[0] / permuted[1] == pytest.approx(0.375, abs=0.02), "permute keeps the true domain more often"


def test_uniform_targets_reach_domains_the_batch_lacks_and_are_seeded():
    domains = torch.zeros(8, dtype=torch.long)
    a = corrupted_domain_targets(domains, 3, torch.Generator().manual_seed(1), "uniform", 4)
    b = corrupted_domain_targets(domains, 3, torch.Generator().manual_seed(1), "uniform", 4)
    assert a.shape == (3, 8) and torch.equal(a, b)
    assert set(a.reshape(-1).tolist()) == {0, 1, 2, 3}
    assert not torch.equal(a[0], a[1]), "fresh per layer"


def test_permute_keeps_the_multiset_of_the_batch():
    domains = torch.tensor([2, 0, 1, 1, 2, 2, 0])
    targets = corrupted_domain_targets(domains, 5, torch.Generator().manual_seed(4), "permute")
    for row in targets:
        assert sorted(row.tolist()) == sorted(domains.tolist())
    with pytest.raises(ValueError):
        corrupted_domain_targets(domains, 1, torch.Generator(), "shuffle")


def test_corruption_setting_changes_the_loss(tiny_model_dir):
    torch.manual_seed(0)
    model = MetaLearner.build(str(tiny_model_dir), ["a", "b"], ["d0", "d1", "d2"]).train()
    batch = _batch()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    out = model(batch)
    losses = {c: mft_loss(out, batch, generator=torch.Generator().manual_seed(0), corruption=c)["domain"].item()
              for c in ("permute", "uniform")}
    assert losses["permute"] != pytest.approx(losses["uniform"])


# -------------------------------------------------------------------------------------- domain embedding

def test_domain_embedding_off_has_no_embedding_parameters(tiny_model_dir, tmp_path):
    on = MetaLearner.build(str(tiny_model_dir), ["a", "b"], ["d0", "d1"])
    off = MetaLearner.build(str(tiny_model_dir), ["a", "b"], ["d0", "d1"], domain_embedding=False,
                            corruption="uniform")
    assert any("embedding" in n for n, _ in on.domain_head.named_parameters())
    assert [n for n, _ in off.domain_head.named_parameters()] == ["classifier.weight", "classifier.bias"]
    save_atomic(lambda p: off.save(p), tmp_path / "off")
    meta = json.loads((tmp_path / "off" / META_FILE).read_text())
    assert meta["domain_embedding"] is False and meta["corruption"] == "uniform"
    loaded = MetaLearner.load(tmp_path / "off")
    assert loaded.domain_head.embedding is None and loaded.corruption == "uniform"


def test_older_meta_folders_without_the_new_keys_still_load(tiny_model_dir, tmp_path):
    model = MetaLearner.build(str(tiny_model_dir), ["a", "b"], ["d0", "d1"])
    save_atomic(lambda p: model.save(p), tmp_path / "old")
    meta_file = tmp_path / "old" / META_FILE
    meta = json.loads(meta_file.read_text())
    del meta["domain_embedding"], meta["corruption"]
    meta_file.write_text(json.dumps(meta))
    loaded = MetaLearner.load(tmp_path / "old")
    assert loaded.domain_head.embedding is not None and loaded.corruption == "permute"
    assert torch.equal(loaded.domain_head.embedding.weight, model.domain_head.embedding.weight)


def test_settings_are_validated_and_the_cli_maps_on_off(tmp_path):
    from metaft.cli import build_parser
    from metaft.cli.train import make_config

    with pytest.raises(ConfigError, match="corruption"):
        MetaConfig(corruption="shuffle")
    with pytest.raises(ConfigError, match="space"):
        TypicalityConfig(space="unit")
    args = build_parser().parse_args(["meta-finetune", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--corruption", "uniform", "--domain-embedding", "off"])
    cfg = make_config(args, MetaConfig, "meta")
    assert cfg.corruption == "uniform" and cfg.domain_embedding is False


# -------------------------------------------------------------------------------------------- typicality

# two domains, two labels; 2-D points chosen so that raw and normalized prototypes point differently
TOY_E = np.array([[1.0, 0.0], [10.0, 10.0], [0.0, 1.0], [-1.0, 0.0],   # X: pos, pos, neg, neg
                  [2.0, 1.0], [1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])   # Y: pos, pos, neg, neg
TOY_D = ["X"] * 4 + ["Y"] * 4
TOY_L = ["pos", "pos", "neg", "neg"] * 2


def _cos(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def test_normalized_space_averages_unit_vectors():
    raw, _, _ = typicality_scores(TOY_E, TOY_D, TOY_L, alpha=1.0, space="raw")
    norm, protos, _ = typicality_scores(TOY_E, TOY_D, TOY_L, alpha=1.0, space="normalized")
    u = TOY_E / np.linalg.norm(TOY_E, axis=1, keepdims=True)
    assert np.allclose(protos[("X", "pos")], (u[0] + u[1]) / 2)
    assert norm[0] == pytest.approx(_cos(TOY_E[0], u[0] + u[1]))  # (1,0) vs (1 + 1/sqrt2, 1/sqrt2)
    assert raw[0] == pytest.approx(_cos(TOY_E[0], TOY_E[0] + TOY_E[1]))  # (1,0) vs (11, 10): the long one wins
    assert norm[0] > raw[0]


def test_leave_one_out_scores_against_the_others_of_the_class():
    full, _, _ = typicality_scores(TOY_E, TOY_D, TOY_L, alpha=0.5, space="raw")
    loo, _, _ = typicality_scores(TOY_E, TOY_D, TOY_L, alpha=0.5, space="raw", leave_one_out=True)
    # with two examples a class, leaving i out makes the own prototype the other example itself
    cross_x_pos = _cos(TOY_E[0], (TOY_E[4] + TOY_E[5]) / 2)  # the other domain's prototype is unchanged
    assert loo[0] == pytest.approx(0.5 * _cos(TOY_E[0], TOY_E[1]) + 0.5 * cross_x_pos)
    assert full[0] == pytest.approx(0.5 * _cos(TOY_E[0], TOY_E[0] + TOY_E[1]) + 0.5 * cross_x_pos)
    assert loo[3] == pytest.approx(0.5 * _cos(TOY_E[3], TOY_E[2]) + 0.5 * _cos(TOY_E[3], TOY_E[6] + TOY_E[7]))
    assert (loo <= full + 1e-12).all(), "leaving yourself out can only lower the own-prototype cosine"


def test_own_prototype_fraction_on_a_toy_set():
    # with the example in its prototype every example is closer to its own class, e.g. X's (0,1): cos .71 to
    # the neg prototype (-1,1)/2 against .67 to the pos one (11,10)/2; Y's (0,2): .71 against .32 to (3,1)/2
    assert own_prototype_fraction(TOY_E, TOY_D, TOY_L) == {"X": 1.0, "Y": 1.0}
    # leaving it out, X's (0,1) has only (-1,0) left (cos 0 < .67) and Y's (0,2) only (-1,-1) (-.71 < .32):
    # one example a domain moves to the other class; the rest stay (e.g. Y's (-1,-1): -.71 > -.89)
    assert own_prototype_fraction(TOY_E, TOY_D, TOY_L, leave_one_out=True) == {"X": 0.75, "Y": 0.75}
    assert own_prototype_fraction(TOY_E[:2], ["X", "X"], ["pos", "pos"]) == {"X": None}


def test_auroc_matches_a_hand_computed_case():
    scores, pos = [0.9, 0.4, 0.6, 0.5, 0.4], [True, True, True, False, False]
    # 0.9 beats both (2); 0.4 loses to 0.5, ties 0.4 (0.5); 0.6 beats both (2) -> 4.5 of 6
    assert auroc(scores, pos) == pytest.approx(4.5 / 6)
    assert auroc([1, 2, 3], [False, False, True]) == 1.0
    with pytest.raises(ValueError):
        auroc([1, 2], [True, True])
