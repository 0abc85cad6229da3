"""Shared fixtures: a tiny random BERT built in code (fast, no files), the real default model, corpora."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_WORDS = (
    "the a an is was it this that movie film book great good bad terrible awful fine nice boring "
    "love hate product works broke fast slow plot acting story and not very really but of to i "
    "battery sound price quality screen what who where when how why question answer"
).split()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own feature cache so tests never see each other's files."""
    monkeypatch.setenv("METAFT_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 4-layer, H=32 random BERT saved as a standard HF folder (safetensors + WordPiece tokenizer)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    words = sorted(set(TINY_WORDS) | set("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5: ``vocab=`` (not ``vocab_file=``) loads the word list; the latter keeps only specials
    tok = BertTokenizer(vocab=str(vocab_file), do_lower_case=True)
    assert len(tok.get_vocab()) == len(vocab)
    tok.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def corpora_root() -> Path:
    root = Path(os.environ.get("METAFT_CORPORA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not (root / "mr").is_dir():
        pytest.fail(f"corpora not found at {root}; set METAFT_CORPORA to the shared data folder")
    return root


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory, corpora_root) -> Path:
    """``metaft prepare --group g1 --k 16 --seeds 42`` run once; the output root.

    Use ``prepared_data / "k-shot-cross/g1/16-42"`` and ``prepared_data / "k-shot-single/SST-2/16-42"``.
    """
    from metaft.cli import main

    out = tmp_path_factory.mktemp("prepared")
    argv = ["-q", "prepare", "--group", "g1", "--k", "16", "--seeds", "42"]
    code = main(argv + ["--corpora", str(corpora_root), "--out", str(out)])
    assert code == 0, f"metaft prepare failed with exit code {code}"
    return out


@pytest.fixture(scope="session")
def single(tmp_path_factory) -> Path:
    """A synthetic one-domain task (train 48 / dev 24 / test 30) in a prepared folder."""
    from helpers import write_task

    return write_task(tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="session")
def reference_run(tiny_model_dir, single, tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted fine-tuning run that the other tests compare against."""
    from helpers import ft_config
    from metaft.stages import finetune

    out = tmp_path_factory.mktemp("ref") / "run"
    return out, finetune(ft_config(single, tiny_model_dir, out))
