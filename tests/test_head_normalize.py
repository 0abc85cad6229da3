"""head_normalize: a mean / cls head that scales the pooled vector to unit length, as a sentence-transformers
pipeline ending in Normalize embeds, and so the LP-FT warm start is the frozen-LR reference's classifier."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import write_task
from metaft.errors import ConfigError
from metaft.heads import (
    build_classifier,
    declared_normalize,
    resolve_normalize,
    resolve_pooling,
    save_classifier,
)
from metaft.hub import load_tokenizer
from metaft.modeling import load_classifier
from metaft.modeling_metaft_pooled import masked_mean

ST_MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
              {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
              {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]


def sentence_transformers_folder(src: Path, dest: Path, normalize: bool = True) -> Path:
    """``src`` (a plain BERT folder) as a sentence-transformers folder: Transformer -> Pooling(mean)
    [-> Normalize]."""
    shutil.copytree(src, dest)
    modules = ST_MODULES if normalize else ST_MODULES[:2]
    (dest / "modules.json").write_text(json.dumps(modules))
    (dest / "1_Pooling").mkdir()
    (dest / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                "pooling_mode_mean_tokens": True}))
    if normalize:
        (dest / "2_Normalize").mkdir()
    return dest


@pytest.fixture(scope="module")
def st_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return sentence_transformers_folder(tiny_model_dir, tmp_path_factory.mktemp("st") / "model")


def test_auto_normalises_when_the_checkpoint_declares_it(tiny_model_dir, st_dir, tmp_path):
    assert resolve_pooling("auto", str(st_dir)) == "mean"
    assert resolve_normalize("auto", "mean", str(st_dir)) is True
    assert resolve_normalize("auto", "cls", str(st_dir)) is True
    assert resolve_normalize("auto", "mean", "minilm") is True  # the packaged all-MiniLM-L6-v2 lists Normalize
    assert resolve_normalize("auto", "mean", str(tiny_model_dir)) is False  # nothing declared
    plain_st = sentence_transformers_folder(tiny_model_dir, tmp_path / "st-plain", normalize=False)
    assert resolve_normalize("auto", "mean", str(plain_st)) is False  # Pooling without Normalize
    assert resolve_normalize("off", "mean", str(st_dir)) is False
    assert resolve_normalize("on", "cls", str(tiny_model_dir)) is True
    assert resolve_normalize("auto", "pooler", str(st_dir)) is False  # the architecture's head does not pool
    with pytest.raises(ConfigError, match="head_normalize on needs a mean or cls head"):
        resolve_normalize("on", "pooler", str(st_dir))
    with pytest.raises(ConfigError, match="head_normalize must be one of auto, on, off"):
        resolve_normalize("yes", "mean", str(st_dir))
    with pytest.raises(ConfigError, match="mean or cls"):
        build_classifier(str(st_dir), ["a", "b"], "pooler", None, normalize=True)
    # a pooled folder declares its own normalisation
    for normalize in (True, False):
        save_classifier(build_classifier(str(st_dir), ["a", "b"], "mean", None, normalize=normalize),
                        tmp_path / f"saved{normalize}")
        assert json.loads((tmp_path / f"saved{normalize}" / "config.json").read_text())["normalize"] is normalize
        assert declared_normalize(tmp_path / f"saved{normalize}") is normalize
        assert resolve_normalize("auto", "mean", str(tmp_path / f"saved{normalize}")) is normalize


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_the_normalised_head_is_linear_of_the_unit_length_pooled_vector(st_dir, pooling):
    tok = load_tokenizer(st_dir)
    model = build_classifier(str(st_dir), ["neg", "neu", "pos"], pooling, 0.1, normalize=True).eval()
    texts = ["good movie", "the plot was really very boring and slow"]
    batch = tok(texts, padding="max_length", max_length=40, return_tensors="pt")
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        logits = model(**batch).logits
        short = model(**{k: v[:, :12] for k, v in tok(texts, padding=True, return_tensors="pt").items()}).logits
        hidden = model.encoder(**batch).last_hidden_state
        pooled = hidden[:, 0] if pooling == "cls" else masked_mean(hidden, batch["attention_mask"])
        expected = model.classifier(pooled / pooled.norm(dim=-1, keepdim=True))
        assert torch.allclose(model.sentence_features(hidden, batch["attention_mask"]).norm(dim=-1),
                              torch.ones(2), atol=1e-6)
        model.config.normalize = False  # the same weights without the normalisation: other logits
        unnormalised = model(**batch).logits
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(short, logits, atol=1e-5)  # padding never counts
    assert not torch.allclose(unnormalised, logits, atol=1e-3)


def test_head_keep_needs_the_meta_learners_normalisation(st_dir, tmp_path):
    from metaft.modeling import MetaLearner

    learner = MetaLearner.build(str(st_dir), ["neg", "pos"], ["book"], domain_loss="none", pooling="mean",
                                normalize=True)
    learner.save(tmp_path / "meta")
    kept = load_classifier(str(tmp_path / "meta"), ["neg", "pos"], head="keep", pooling="mean", normalize=True)
    assert kept.config.normalize is True
    assert torch.equal(kept.classifier.weight, learner.classifier.classifier.weight)
    with pytest.raises(ConfigError, match="head normalisation \\(head_normalize on\\)"):
        load_classifier(str(tmp_path / "meta"), ["neg", "pos"], head="keep", pooling="mean", normalize=False)


def test_the_probe_warm_start_of_the_normalised_mean_head_is_the_frozen_lr_reference(st_dir, tmp_path):
    """Step 0 of an LP-FT run on the normalised mean head predicts what the study's frozen-LR row predicts: the
    same features (mean-pooled, unit length), the same C, the same logistic regression."""
    from metaft.config import FinetuneConfig
    from metaft.corpora import read_mft_tsv
    from metaft.features import EncodedDataset
    from metaft.probe import frozen_lr_features, frozen_lr_reference
    from metaft.warmstart import fit_logistic, head_features, probe_warm_start

    task = write_task(tmp_path / "task", n_train=60, n_dev=30, n_test=40, seed=5)
    cfg = FinetuneConfig(data_dir=str(task), model=str(st_dir))  # defaults: head_pooling / head_normalize auto
    pooling = resolve_pooling(cfg.head_pooling, cfg.model)
    normalize = resolve_normalize(cfg.head_normalize, pooling, cfg.model)
    assert (pooling, normalize, cfg.head) == ("mean", True, "probe")
    splits = {s: read_mft_tsv(task / f"{s}.tsv") for s in ("train", "dev", "test")}
    labels = sorted({ex.label for ex in splits["train"]})
    model = load_classifier(str(st_dir), labels, pooling=pooling, normalize=normalize, seed=1).eval()
    tok = load_tokenizer(st_dir)
    sets = {s: EncodedDataset(ex, tok, 128, {lab: i for i, lab in enumerate(labels)}, None, None, False)
            for s, ex in splits.items()}
    probe = probe_warm_start(model, sets["train"], sets["dev"])

    _, ref = frozen_lr_features(task, str(st_dir))
    test_x, test_y = ref["test"]
    ours_x, _ = head_features(model, sets["test"])
    assert np.allclose(ours_x, test_x, atol=1e-6)  # the head's linear layer sees the reference's features
    fit = fit_logistic(*ref["train"], *ref["dev"])
    reference = frozen_lr_reference(task, str(st_dir))
    assert probe["C"] == fit["C"] == reference["C"] and probe["dev_accuracy"] == reference["dev_accuracy"]
    with torch.no_grad():
        batch = tok([ex.text for ex in splits["test"]], padding=True, return_tensors="pt")
        logits = model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    predicted = [labels[i] for i in logits.argmax(-1).tolist()]
    assert predicted == fit["model"].predict(test_x).tolist()
    assert len(set(predicted)) > 1  # not one class for every text: the comparison can fail
    # the same class probabilities up to where lbfgs stops: at its default tolerance, features equal to ~1e-7 move
    # them by up to ~1e-2 (fitted to tol 1e-10, the two agree to ~1e-6)
    assert np.allclose(torch.softmax(logits.double(), -1).numpy(),
                       fit["model"].predict_proba(test_x)[:, [list(fit["model"].classes_).index(lab)
                                                              for lab in labels]], atol=2e-2)
    assert reference["test_accuracy"] == float(np.mean(np.asarray(predicted) == test_y))


def test_the_study_note_names_the_head_auto_resolved_to(tiny_model_dir, st_dir):
    """A copy of a model without its sentence-transformers files resolves ``auto`` to another head: the study's
    report line says which head each stage got."""
    from metaft.config import StudyConfig
    from metaft.study import hyperparameter_note

    with_files = hyperparameter_note(StudyConfig(model=str(st_dir)))
    assert ("meta stage mean pooling, L2-normalised, new head; fine-tuning mean pooling, L2-normalised, "
            "probe-fitted head") in with_files
    bare = hyperparameter_note(StudyConfig(model=str(tiny_model_dir)))
    assert "meta stage pooler pooling, new head; fine-tuning pooler pooling, probe-fitted head" in bare
