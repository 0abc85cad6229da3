"""Issue 7: model loading is safetensors-only, runs no model code without --trust-remote-code, and every
loading problem is one ``metaft: error: ...`` line with exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from metaft.cli import main
from metaft.errors import ConfigError
from metaft.hub import load_encoder, load_tokenizer, resolve_model

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A prepared-looking folder with a small train.tsv."""
    folder = tmp_path / "data"
    folder.mkdir()
    lines = [f"a {w} film\t{d}\t{i % 2}" for i, w in enumerate(("good", "bad", "fine", "nice")) for d in "ab"]
    (folder / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _with_tokenizer(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    return dst


@pytest.fixture
def pickle_only(tmp_path, tiny_model_dir) -> Path:
    """The tiny BERT with its weights as a pickle (``pytorch_model.bin``) and no safetensors file.

    transformers 5 always writes safetensors (``safe_serialization=False`` is gone), so the pickle file is
    written the way ``save_pretrained(..., safe_serialization=False)`` used to write it.
    """
    import torch
    from transformers import BertModel

    folder = _with_tokenizer(tiny_model_dir, tmp_path / "pickled")
    model = BertModel.from_pretrained(tiny_model_dir)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert not list(folder.glob("*.safetensors"))
    return folder


def cli_error(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metaft: error: ") and "\n" not in err and "Traceback" not in err, err
    return err.removeprefix("metaft: error: ")


def test_pickle_only_folder_is_refused(capsys, data_dir, pickle_only):
    with pytest.raises(ConfigError, match="only pickle weights"):
        resolve_model(pickle_only)
    err = cli_error(capsys, "preprocess", str(data_dir), "--model", str(pickle_only))
    assert err == (
        f"{pickle_only}: only pickle weights (.bin/.pt) found; metaft loads safetensors only because "
        "unpickling can run arbitrary code. Convert them once with "
        "`model.save_pretrained(DIR, safe_serialization=True)` in a trusted environment."
    )


def test_safetensors_beside_pickle_is_used(tiny_model_dir, pickle_only):
    shutil.copy(tiny_model_dir / "model.safetensors", pickle_only / "model.safetensors")
    assert resolve_model(pickle_only) == str(pickle_only)
    assert load_encoder(pickle_only).config.hidden_size == 32


@pytest.fixture
def custom_code(tmp_path, tiny_model_dir) -> Path:
    """A model folder whose config maps to its own Python code; running that code leaves a marker file."""
    folder = _with_tokenizer(tiny_model_dir, tmp_path / "custom")
    shutil.copy(tiny_model_dir / "model.safetensors", folder / "model.safetensors")
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config.update(
        model_type="metaft-test-custom",
        auto_map={
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModel": "modeling_custom.CustomModel",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "code-ran"
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    (folder / "configuration_custom.py").write_text(code)
    (folder / "modeling_custom.py").write_text(code)
    return folder


def test_custom_code_needs_the_flag(capsys, data_dir, custom_code):
    message = (
        f"{custom_code}: this model needs its own Python code (auto_map in its config), and metaft runs no "
        "model code unless you pass --trust-remote-code; do that only for a model you trust"
    )
    with pytest.raises(ConfigError) as exc:
        load_encoder(custom_code)
    assert str(exc.value) == message
    assert cli_error(capsys, "preprocess", str(data_dir), "--model", str(custom_code)) == message
    assert not (custom_code.parent / "code-ran").exists()


def test_custom_tokenizer_code_is_not_run(tiny_model_dir, tmp_path):
    """transformers 5 loads a tokenizer whose config maps to custom code from its ``tokenizer.json``
    without running that code; without ``tokenizer.json`` it cannot, and that is one ConfigError line."""
    folder = _with_tokenizer(tiny_model_dir, tmp_path / "custom-tok")
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]}
    config["tokenizer_class"] = "CustomTokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    marker = tmp_path / "code-ran"
    (folder / "tokenization_custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    tok = load_tokenizer(folder)
    assert tok("good film")["input_ids"] == load_tokenizer(tiny_model_dir)("good film")["input_ids"]
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ConfigError) as exc:
        load_tokenizer(folder)
    assert str(exc.value).startswith(f"{folder}: ") and "\n" not in str(exc.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda tmp: tmp / "no-such-model", "{model}: model folder not found"),
        (lambda tmp: tmp / "a" / "b", "{model}: model folder not found"),
        (lambda tmp: _touch(tmp / "weights.safetensors"), "{model}: a model must be a folder"),
        (lambda tmp: _mkdir(tmp / "empty"), "{model}: not a model folder (no config.json)"),
        (lambda tmp: _config(tmp, "{broken"), "{model}/config.json: cannot read it as JSON (Expecting"),
        (lambda tmp: _config(tmp, "[1, 2]"), "{model}/config.json: expected a JSON object"),
        (lambda tmp: _config(tmp, json.dumps({"model_type": "bert"})), "{model}: cannot load "),
    ],
    ids=["missing", "missing-nested", "file", "no-config", "bad-json", "not-object", "no-weights"],
)
def test_bad_model_paths_are_one_line_errors(capsys, data_dir, tmp_path, make, problem):
    model = make(tmp_path)
    err = cli_error(capsys, "preprocess", str(data_dir), "--model", str(model))
    assert err.startswith(problem.format(model=model)), err


def test_unknown_hub_id_offline_is_one_line(capsys, data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = cli_error(capsys, "preprocess", str(data_dir), "--model", "metaft-test/no-such-model")
    assert err.startswith(
        "metaft-test/no-such-model: not a local model folder, and the hub could not provide it ("
    )


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _config(tmp: Path, text: str) -> Path:
    folder = _mkdir(tmp / "model")
    (folder / "config.json").write_text(text)
    return folder


def test_a_half_precision_checkpoint_is_trained_in_float32(tiny_model_dir, tmp_path):
    """Many hub checkpoints are saved in fp16: metaft loads every model in float32 (mixed precision is autocast)."""
    import torch
    from transformers import AutoModel

    from metaft.modeling import MetaLearner, load_classifier

    half = tmp_path / "fp16"
    AutoModel.from_pretrained(tiny_model_dir).half().save_pretrained(half)
    for name in TOKENIZER_FILES:
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, half / name)
    assert {p.dtype for p in AutoModel.from_pretrained(half).parameters()} == {torch.float16}  # transformers' own
    loaded = [load_encoder(half), load_classifier(str(half), ["0", "1"], head="reinit", dropout=0.1, seed=1),
              MetaLearner.build(str(half), ["0", "1"], ["a", "b"])]
    for model in loaded:
        assert {p.dtype for p in model.parameters()} == {torch.float32}
