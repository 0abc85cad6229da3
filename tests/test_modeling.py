from __future__ import annotations

import json

import pytest
import torch

from metaft.errors import ConfigError, OutputError
from metaft.fileio import save_atomic
from metaft.losses import domain_adversarial_loss, mft_loss
from metaft.modeling import (
    DOMAIN_HEAD_FILE,
    META_FILE,
    MetaLearner,
    default_domain_layers,
    folder_labels,
    load_classifier,
)


def _batch(n=6, t=10, domains=3, labels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[0, 6:] = 0
    return {
        "input_ids": torch.randint(5, 40, (n, t), generator=g),
        "attention_mask": mask,
        "labels": torch.randint(0, labels, (n,), generator=g),
        "domains": torch.arange(n) % domains,
        "weights": torch.ones(n),
    }


def test_default_domain_layers_rule():
    assert default_domain_layers(12) == (2, 5, 8, 11)
    assert default_domain_layers(6) == (1, 2, 4, 5)
    assert default_domain_layers(4) == (0, 1, 2, 3)
    assert default_domain_layers(2) == (0, 1)


def test_domain_head_is_one_classifier_shared_across_layers(tiny_model_dir):
    model = MetaLearner.build(str(tiny_model_dir), ["a", "b", "c"], ["d0", "d1", "d2"], domain_layers=(0, 3))
    out = model(_batch())
    assert out.logits.shape == (6, 3)
    assert out.domain_logits.shape == (2, 6, 3)
    linear = [m for m in model.domain_head.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 1, "exactly one domain classifier, shared by all selected layers"


def _without_dropout(model):
    """Training mode (the domain head runs) with every dropout off, so passes are deterministic."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model.train()


def _encoder_grad(model, domain_loss, coeff=1.0):
    torch.manual_seed(0)
    model.zero_grad()
    batch = _batch(labels=2)
    out = model(batch, grl_coeff=coeff)
    parts = mft_loss(out, batch, domain_loss=domain_loss, generator=torch.Generator().manual_seed(0))
    parts["domain"].backward()
    # a parameter of the first encoder layer: only reachable through the domain head's hidden states
    layer0 = next(p for n, p in model.classifier.named_parameters() if "layer.0." in n and n.endswith("weight"))
    return layer0.grad.clone()


def test_domain_corruption_loss_sends_gradient_into_the_encoder(tiny_model_dir):
    model = _without_dropout(MetaLearner.build(str(tiny_model_dir), ["a", "b"], ["d0", "d1", "d2"]))
    grad = _encoder_grad(model, "corrupt")
    assert grad.abs().sum() > 0


def test_grl_flips_the_sign_of_the_encoder_gradient(tiny_model_dir):
    model = _without_dropout(MetaLearner.build(str(tiny_model_dir), ["a", "b"], ["d0", "d1", "d2"], domain_loss="grl"))
    reversed_grad = _encoder_grad(model, "grl", coeff=1.0)
    model.domain_loss = "corrupt"  # same head and targets, but no reversal layer in the forward pass
    model.zero_grad()
    batch = _batch(labels=2)
    out = model(batch)
    domain_adversarial_loss(out.domain_logits, batch["domains"]).backward()
    layer0 = next(p for n, p in model.classifier.named_parameters() if "layer.0." in n and n.endswith("weight"))
    assert torch.allclose(reversed_grad, -layer0.grad, atol=1e-7)
    assert reversed_grad.abs().sum() > 0


def test_save_and_load_round_trip(tiny_model_dir, tmp_path):
    model = _without_dropout(MetaLearner.build(str(tiny_model_dir), ["neg", "pos"], ["CR", "MR"]))
    save_atomic(lambda p: model.save(p), tmp_path / "meta")
    assert (tmp_path / "meta" / DOMAIN_HEAD_FILE).is_file()
    assert json.loads((tmp_path / "meta" / META_FILE).read_text())["domains"] == ["CR", "MR"]
    assert folder_labels(tmp_path / "meta") == ["neg", "pos"]
    loaded = _without_dropout(MetaLearner.load(tmp_path / "meta"))
    batch = _batch(domains=2, labels=2)
    a, b = model(batch), loaded(batch)
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    assert torch.allclose(a.domain_logits, b.domain_logits, atol=1e-6)
    assert loaded.eval()(batch).domain_logits is None, "evaluation computes class logits only"


def test_load_classifier_keep_and_reinit(tiny_model_dir, tmp_path):
    model = MetaLearner.build(str(tiny_model_dir), ["neg", "pos"], ["CR", "MR"])
    save_atomic(lambda p: model.save(p), tmp_path / "meta")
    kept = load_classifier(str(tmp_path / "meta"), ["neg", "pos"], head="keep")
    assert torch.equal(kept.classifier.weight, model.classifier.classifier.weight)
    fresh = load_classifier(str(tmp_path / "meta"), ["neg", "pos"], head="reinit", seed=1)
    assert not torch.equal(fresh.classifier.weight, model.classifier.classifier.weight)
    again = load_classifier(str(tmp_path / "meta"), ["neg", "pos"], head="reinit", seed=1)
    assert torch.equal(fresh.classifier.weight, again.classifier.weight), "reinit is seeded"
    assert torch.equal(fresh.bert.encoder.layer[0].output.dense.weight, model.classifier.bert.encoder.layer[0].output.dense.weight)
    with pytest.raises(ConfigError, match="labels"):
        load_classifier(str(tmp_path / "meta"), ["a", "b", "c"], head="keep")
    with pytest.raises(ConfigError, match="meta-learner"):
        load_classifier(str(tiny_model_dir), ["a", "b"], head="keep")
    three = load_classifier(str(tmp_path / "meta"), ["a", "b", "c"], head="reinit")
    assert three.config.num_labels == 3 and three.config.id2label[2] == "c"


def test_save_atomic_keeps_the_old_folder_when_saving_fails(tmp_path):
    target = tmp_path / "best"
    save_atomic(lambda p: (p / "x.txt").write_text("old"), target)

    def broken(p):
        (p / "x.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OutputError, match=r"best: cannot save \(OSError: disk full\); the previous version is kept"):
        save_atomic(broken, target)
    assert (target / "x.txt").read_text() == "old"
    assert not (tmp_path / ".best.tmp").exists()


def test_interrupted_rename_is_recovered(tmp_path):
    from metaft.fileio import recover_folder

    target = tmp_path / "best"
    save_atomic(lambda p: (p / "x.txt").write_text("v1"), target)
    target.rename(tmp_path / ".best.old")  # crash after moving the old folder aside
    recover_folder(target)
    assert (target / "x.txt").read_text() == "v1"
