"""Issue 19, class 2: a model with NaN / inf weights or outputs never becomes "best", and a non-finite
typicality score is named by file and line (not reported later as a NaN loss)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from helpers import ft_config, weights_of, write_task
from metaft.cli import main
from metaft.config import MetaConfig
from metaft.errors import DataError, MetaftError
from metaft.stages import finetune, meta_finetune


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def poison_weights_at(monkeypatch, parameter: str, step: int, value: float) -> None:
    """After the optimiser step of training step ``step`` (0-based), fill one weight with ``value``."""
    import metaft.training as training

    real = training._Loop._train_step

    def train_step(self):
        out = real(self)
        if self.step == step:
            with torch.no_grad():
                dict(self.raw.named_parameters())[parameter].fill_(value)
        return out

    monkeypatch.setattr(training._Loop, "_train_step", train_step)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_weights_stop_the_run_and_keep_the_last_finite_best(
        value, tiny_model_dir, single, tmp_path, monkeypatch, capsys):
    run, kept = tmp_path / "run", {}
    poison_weights_at(monkeypatch, "bert.encoder.layer.0.output.dense.weight", 9, value)
    import metaft.training as training

    real_save = training._Loop._save_best

    def save_best(self, dev):
        real_save(self, dev)
        kept["hash"] = sha(run / "best" / "model.safetensors")

    monkeypatch.setattr(training._Loop, "_save_best", save_best)
    argv = ["-q", "finetune", "--data-dir", str(single), "--model", str(tiny_model_dir), "--out", str(run),
            "--epochs", "10", "--batch-size", "8", "--lr", "5e-3", "--eval-every", "5", "--seed", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err == (f"metaft: error: {run}: 1 weight tensor(s) hold NaN / inf at step 10 (e.g. "
                   "bert.encoder.layer.0.output.dense.weight): the run diverged; lower the learning rate (the "
                   "last best checkpoint is kept)")
    assert sha(run / "best" / "model.safetensors") == kept["hash"]  # the step-5 model
    assert all(bool(torch.isfinite(t).all()) for t in weights_of(run / "best").values())
    assert not (run / "results.json").exists()


def test_one_step_run_with_diverged_weights_is_never_saved_as_best(tiny_model_dir, single, tmp_path, monkeypatch):
    """The issue's case: the last (here the only) evaluation comes right after the step that diverged, so the
    loss guard never sees a NaN loss. A fresh head (the reference's): no step-0 evaluation comes first."""
    poison_weights_at(monkeypatch, "classifier.weight", 0, float("inf"))
    out = tmp_path / "run"
    with pytest.raises(MetaftError, match=r"hold NaN / inf at step 1 \(e.g. classifier.weight\)"):
        finetune(ft_config(single, tiny_model_dir, out, epochs=0.1, eval_every=0, head="reinit"))
    assert not (out / "best").exists() and not (out / "results.json").exists()


def test_non_finite_dev_logits_with_finite_weights_stop_the_run(tiny_model_dir, single, tmp_path, monkeypatch):
    import metaft.stages as stages

    real = stages.hf_logits

    def logits(model, batch):
        out = real(model, batch)
        return out if model.training else out.masked_fill(torch.arange(len(out))[:, None] == 0, float("nan"))

    monkeypatch.setattr(stages, "hf_logits", logits)
    out = tmp_path / "run"
    # the first evaluation: step 0, the warm-started head (probe, the default) being a dev candidate
    with pytest.raises(MetaftError, match=rf"{out}: step 0: the model gives non-finite logits \(NaN / inf\) "
                                          r"for 2 of 24 evaluation examples"):
        finetune(ft_config(single, tiny_model_dir, out, eval_batch_size=16))
    assert not (out / "best").exists()


def test_a_meta_stage_with_diverged_weights_saves_no_snapshot(tiny_model_dir, tmp_path, monkeypatch):
    data = write_task(tmp_path / "cross", domains=("book", "film"), n_test=0)
    poison_weights_at(monkeypatch, "classifier.bert.embeddings.word_embeddings.weight", 2, float("nan"))
    out = tmp_path / "meta"
    cfg = MetaConfig(data_dir=str(data), model=str(tiny_model_dir), out=str(out), typicality=False, epochs=1,
                     batch_size=16, eval_every=3, learning_rate=1e-3)
    with pytest.raises(MetaftError, match=r"hold NaN / inf at step 3 .*word_embeddings"):
        meta_finetune(cfg)
    assert not list(out.glob("snapshot_*"))


def test_a_start_model_with_non_finite_weights_is_named(tiny_model_dir, single, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = load_file(str(model / "model.safetensors"))
    key = next(k for k in weights if k.endswith("layer.1.attention.self.query.weight"))
    weights[key][0, 0] = float("nan")
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(DataError, match=rf"^{model}: 1 weight tensor\(s\) hold NaN / inf \(e.g. \S*layer.1."
                                        r"attention.self.query.weight\)"):
        finetune(ft_config(single, model, tmp_path / "run"))


# ------------------------------------------------------------------------------------------ typicality scores

@pytest.fixture(scope="module")
def scored(tiny_model_dir, tmp_path_factory) -> Path:
    from metaft.config import TypicalityConfig
    from metaft.typicality import compute_typicality

    data = write_task(tmp_path_factory.mktemp("scored"), domains=("book", "film"), n_test=0)
    compute_typicality(TypicalityConfig(data_dir=str(data), model=str(tiny_model_dir)))
    return data


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "NaN", "Infinity", "1e999"])
def test_a_non_finite_typicality_score_names_file_and_line(scored, tmp_path, bad, tiny_model_dir, capsys):
    data = tmp_path / "data"
    shutil.copytree(scored, data)
    lines = (data / "typicality.tsv").read_text().splitlines()
    uid, domain, label, _ = lines[7].split("\t")
    lines[7] = "\t".join([uid, domain, label, bad])
    (data / "typicality.tsv").write_text("\n".join(lines) + "\n")
    argv = ["-q", "meta-finetune", "--data-dir", str(data), "--model", str(tiny_model_dir), "--out",
            str(tmp_path / "meta"), "--epochs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"metaft: error: {data}/typicality.tsv:8: score is not a finite number"


def test_finite_typicality_scores_still_load(scored):
    from metaft.corpora import read_mft_tsv
    from metaft.typicality import load_scores

    scores = load_scores(scored, read_mft_tsv(scored / "train.tsv"))
    assert len(scores) == 48 and all(s == s and abs(s) < 2 for s in scores)


def test_predict_refuses_a_classifier_with_non_finite_weights(single, tiny_model_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "run"
    finetune(ft_config(single, tiny_model_dir, out, epochs=1, eval_every=0))
    best = out / "best"
    weights = load_file(str(best / "model.safetensors"))
    weights["classifier.bias"] = torch.full_like(weights["classifier.bias"], float("inf"))
    save_file(weights, str(best / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "in.txt").write_text("a good film\n")
    assert main(["-q", "predict", "--model", str(best), "--input", str(tmp_path / "in.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"metaft: error: {best}: 1 weight tensor(s) hold NaN / inf (e.g. classifier.bias)")
