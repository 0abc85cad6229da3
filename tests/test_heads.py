"""Encoder-matched classification heads (head_pooling), their saved folders, and the LP-FT head warm start."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ft_config
from metaft.heads import build_classifier, declared_pooling, resolve_pooling, save_classifier
from metaft.hub import load_tokenizer
from metaft.modeling import load_classifier


def _batch(tokenizer, texts, pad_to=None):
    enc = tokenizer(texts, padding="max_length" if pad_to else True, max_length=pad_to, return_tensors="pt")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooled_head_shapes_and_padding_mask(tiny_model_dir, pooling):
    tok = load_tokenizer(tiny_model_dir)
    model = build_classifier(str(tiny_model_dir), ["neg", "neu", "pos"], pooling, 0.1).eval()
    texts = ["good movie", "the plot was really very boring and slow"]
    with torch.no_grad():
        short, padded = model(**_batch(tok, texts)).logits, model(**_batch(tok, texts, pad_to=40)).logits
        batch = _batch(tok, texts, pad_to=40)
        hidden = model.encoder(**batch).last_hidden_state
    assert short.shape == (2, 3)
    assert torch.allclose(short, padded, atol=1e-5)  # padding never counts
    mask = batch["attention_mask"]
    expected = hidden[:, 0] if pooling == "cls" else torch.stack(
        [hidden[i, : int(mask[i].sum())].mean(0) for i in range(2)])
    assert torch.allclose(model.classifier(expected), padded, atol=1e-5)


def _with_st_pooling(src: Path, dest: Path, **modes) -> Path:
    shutil.copytree(src, dest)
    (dest / "1_Pooling").mkdir()
    (dest / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, **{f"pooling_mode_{k}": v for k, v in modes.items()}}))
    return dest


def test_auto_reads_the_checkpoints_declared_pooling(tiny_model_dir, tmp_path):
    assert resolve_pooling("auto", str(tiny_model_dir)) == "pooler"  # nothing declared: the HF default head
    assert resolve_pooling("auto", "minilm") == "mean"  # the packaged all-MiniLM-L6-v2 folder's 1_Pooling
    cls_dir = _with_st_pooling(tiny_model_dir, tmp_path / "cls", cls_token=True, mean_tokens=False)
    assert resolve_pooling("auto", str(cls_dir)) == "cls"
    max_dir = _with_st_pooling(tiny_model_dir, tmp_path / "max", mean_tokens=False, max_tokens=True)
    assert declared_pooling(max_dir) is None and resolve_pooling("auto", str(max_dir)) == "pooler"
    assert resolve_pooling("cls", str(tiny_model_dir / "..")) == "cls"  # an explicit choice is kept
    model = build_classifier(str(cls_dir), ["a", "b"], "cls", None)
    save_classifier(model, tmp_path / "saved")
    assert resolve_pooling("auto", str(tmp_path / "saved")) == "cls"  # a pooled folder says its own


_NO_METAFT = """
import json, sys
sys.modules["metaft"] = None  # importing metaft now fails: the folder must load on its own
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
folder, texts, remote = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1"
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=remote).eval()
tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
with torch.no_grad():
    logits = model(**tok(texts, padding=True, return_tensors="pt")).logits
preds = pipeline("text-classification", model=folder, trust_remote_code=remote)(texts)
print(json.dumps({"logits": logits.tolist(), "labels": [p["label"] for p in preds], "type": type(model).__name__}))
"""


def _load_elsewhere(folder: Path, texts: list[str], remote: bool, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "hf-modules"), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", _NO_METAFT, str(folder), json.dumps(texts), "1" if remote else "0"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("pooling", "normalize"), [("mean", False), ("mean", True), ("pooler", False)])
def test_saved_classifier_loads_without_metaft_with_the_same_logits(tiny_model_dir, tmp_path, pooling, normalize,
                                                                     capsys):
    from metaft.cli import main

    tok = load_tokenizer(tiny_model_dir)
    model = load_classifier(str(tiny_model_dir), ["neg", "pos"], pooling=pooling, seed=3, normalize=normalize).eval()
    if normalize:  # a head fitted on unit vectors has large weights: logits of the scale a probe gives
        with torch.no_grad():
            model.classifier.weight.mul_(50)
    folder = tmp_path / "clf"
    save_classifier(model, folder)
    tok.save_pretrained(folder)
    texts = ["good movie", "the plot was really very boring and slow", "i hate it"]
    with torch.no_grad():
        ours = model(**_batch(tok, texts)).logits
    # pooled heads need trust_remote_code (their code is in the folder); the HF default head needs nothing
    got = _load_elsewhere(folder, texts, remote=pooling != "pooler", tmp_path=tmp_path)
    assert torch.allclose(torch.tensor(got["logits"]), ours, atol=1e-5)
    if pooling != "pooler":
        assert json.loads((folder / "config.json").read_text())["normalize"] is normalize
        model.config.normalize = not normalize  # the folder's logits are not those of the other head
        with torch.no_grad():
            assert not torch.allclose(torch.tensor(got["logits"]), model(**_batch(tok, texts)).logits, atol=1e-3)
    expected = ["neg" if a > b else "pos" for a, b in ours.tolist()]
    assert got["labels"] == expected
    assert got["type"] == ("MetaftPooledForSequenceClassification" if pooling == "mean"
                           else "BertForSequenceClassification")
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    capsys.readouterr()
    assert main(["-q", "predict", "--model", str(folder), "--input", str(tmp_path / "in.txt")]) == 0
    assert [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()] == expected


def test_probe_warm_start_is_a_candidate_at_step_0(tiny_model_dir, single, tmp_path):
    from metaft.stages import finetune

    # a learning rate so large that fine-tuning wrecks the model: selection must keep the warm start
    r = finetune(ft_config(single, tiny_model_dir, tmp_path / "probe", head_pooling="mean", head="probe",
                           learning_rate=0.5, epochs=2, max_grad_norm=0.0))
    first = r.dev_history[0]
    assert first["step"] == 0 and first["dev_accuracy"] == r.head_probe["dev_accuracy"] > 0.5  # chance: 1/3
    assert r.best_step == 0 and r.best_dev_accuracy == first["dev_accuracy"]
    assert r.test_accuracy > 0.5 and r.head_pooling == "mean"
    # a fresh random head is no candidate: a dev tie would keep an untrained classifier
    fresh = finetune(ft_config(single, tiny_model_dir, tmp_path / "reinit", head_pooling="mean", head="reinit",
                                 epochs=0.1))
    assert fresh.dev_history[0]["step"] > 0 and fresh.best_step > 0


def test_head_learning_rate_lands_in_its_own_optimizer_groups(tiny_model_dir):
    from metaft.heads import head_parameters
    from metaft.training import build_optimizer

    model = build_classifier(str(tiny_model_dir), ["a", "b"], "mean", 0.1)
    head = head_parameters(model)
    assert {id(p) for p in head} == {id(model.classifier.weight), id(model.classifier.bias)}
    opt = build_optimizer(model, 1e-5, 0.01, head, 1e-4)
    by_lr = {}
    for g in opt.param_groups:
        by_lr.setdefault(g["lr"], set()).update(id(p) for p in g["params"])
    assert by_lr[1e-4] == {id(p) for p in head}
    assert len(by_lr[1e-5]) == sum(1 for _ in model.parameters()) - 2
    assert len(build_optimizer(model, 1e-5, 0.01, head, None).param_groups) == 2  # same rate: the usual 2 groups


def test_meta_learner_with_a_mean_head_feeds_stage_3(tiny_model_dir, tmp_path):
    from helpers import write_task
    from metaft.config import FinetuneConfig, MetaConfig
    from metaft.stages import finetune, meta_finetune

    cross = write_task(tmp_path / "cross", n_train=36, n_dev=18, n_test=0, domains=("book", "movie"), seed=4)
    best = meta_finetune(MetaConfig(data_dir=str(cross), model=str(tiny_model_dir), out=str(tmp_path / "meta"),
                                    epochs=1, batch_size=6, learning_rate=1e-3, typicality=False,
                                    head_pooling="mean", head="probe", save_state_every_s=0))
    meta = json.loads((tmp_path / "meta" / "meta_results.json").read_text())
    assert meta["head_pooling"] == "mean" and meta["head_probe"]["C"] > 0
    assert meta["dev_history"][0] == {"step": 0, "dev_accuracy": meta["head_probe"]["dev_accuracy"],
                                      "dev_macro_f1": meta["dev_history"][0]["dev_macro_f1"]}
    assert resolve_pooling("auto", str(best)) == "mean"  # the snapshot declares its own head
    single = write_task(tmp_path / "single", n_train=24, n_dev=12, n_test=12, domains=("book",), seed=9)
    r = finetune(FinetuneConfig(data_dir=str(single), model=str(best), out=str(tmp_path / "ft"), epochs=1,
                                batch_size=8, head_pooling="auto", head="keep"))
    assert r.head_pooling == "mean" and r.head == "keep"
    with pytest.raises(Exception, match="head pooling"):
        finetune(FinetuneConfig(data_dir=str(single), model=str(best), out=str(tmp_path / "ft2"), epochs=1,
                                head_pooling="cls", head="keep"))


def test_a_config_saved_before_the_head_settings_means_the_old_head():
    from metaft.config import FinetuneConfig

    saved = FinetuneConfig(head="keep").to_dict()  # as written before head_pooling / head_learning_rate existed
    for name in ("head_pooling", "head_learning_rate"):
        del saved[name]
    assert FinetuneConfig(head="keep", head_pooling="pooler").changed_from(saved) == {}
    assert FinetuneConfig(head="keep", head_pooling="mean").changed_from(saved) == {
        "head_pooling": ("pooler", "mean")}
    assert FinetuneConfig.from_dict({"head": "probe", "head_learning_rate": "1e-4"}).head_learning_rate == 1e-4
