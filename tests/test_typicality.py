"""Stage 1: embeddings, prototypes, typicality scores, their files and `metaft preprocess`."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from metaft.cli import main
from metaft.config import TypicalityConfig
from metaft.corpora import read_mft_tsv
from metaft.errors import ConfigError, DataError
from metaft.pooling import check_pooling
from metaft.records import Example
from metaft.typicality import (
    compute_typicality,
    embed_examples,
    load_scores,
    score_paths,
    typicality_scores,
)


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _write_layout(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{t}\t{d}\t{lab}\n" for t, d, lab in rows), encoding="utf-8")
    return path


def _small_rows():
    words = {"0": "bad awful boring", "1": "great good nice"}
    return [(f"{words[lab]} {d.lower()} movie {i} " + "very " * i, d, lab)
            for d in ("A", "B", "C") for lab in ("0", "1") for i in range(3)]


# ----------------------------------------------------------------------------------------- pure scores

def _hand_case():
    # 3 domains, labels p/q; domain C also has label r that no other domain has
    E = np.array([[1, 0, 0], [1, 1, 0],    # A p
                  [0, 1, 0], [0, 1, 1],    # B p
                  [0, 0, 1], [1, 0, 1],    # C p
                  [1, 1, 1], [2, 0, 1],    # A q
                  [0, 3, 1],               # B q
                  [5, 1, 0]], dtype=np.float32)  # C r
    domains = ["A", "A", "B", "B", "C", "C", "A", "A", "B", "C"]
    labels = ["p"] * 6 + ["q", "q", "q", "r"]
    return E, domains, labels


def test_scores_match_definitions_and_aggregations_differ():
    E, domains, labels = _hand_case()
    E64 = E.astype(np.float64)
    c = {k: E64[[i for i in range(10) if (domains[i], labels[i]) == k]].mean(0) for k in set(zip(domains, labels))}
    s_proto, protos, fallback = typicality_scores(E, domains, labels, alpha=0.3, aggregation="mean-prototype")
    s_cos, _, _ = typicality_scores(E, domains, labels, alpha=0.3, aggregation="mean-cosine")
    assert fallback == 1 and sorted(protos) == sorted(c)
    for key in c:
        np.testing.assert_allclose(protos[key], c[key], rtol=0, atol=1e-12)
    # example 0: A/p, other domains with p: B and C
    own = _cos(E64[0], c["A", "p"])
    mp = 0.3 * own + 0.7 * _cos(E64[0], (c["B", "p"] + c["C", "p"]) / 2)
    mc = 0.3 * own + 0.7 * (_cos(E64[0], c["B", "p"]) + _cos(E64[0], c["C", "p"])) / 2
    assert s_proto[0] == pytest.approx(mp, abs=1e-12)
    assert s_cos[0] == pytest.approx(mc, abs=1e-12)
    assert abs(s_proto[0] - s_cos[0]) > 1e-3  # the two aggregations really differ here
    # example 6: A/q, only B has q -> both aggregations agree
    assert s_proto[6] == pytest.approx(0.3 * _cos(E64[6], c["A", "q"]) + 0.7 * _cos(E64[6], c["B", "q"]), abs=1e-12)
    assert s_cos[6] == pytest.approx(s_proto[6], abs=1e-12)
    # example 9: C/r, no other domain has r -> alpha = 1: cosine with its own prototype (itself) = 1
    assert s_proto[9] == pytest.approx(1.0, abs=1e-12)


def test_alpha_one_is_own_prototype_only():
    E, domains, labels = _hand_case()
    scores, protos, _ = typicality_scores(E, domains, labels, alpha=1.0, aggregation="mean-cosine")
    for i in range(len(E)):
        assert scores[i] == pytest.approx(_cos(E[i].astype(np.float64), protos[domains[i], labels[i]]), abs=1e-12)


def test_single_domain_falls_back_to_alpha_one(caplog):
    E = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    labels = ["0", "0", "0", "1", "1", "1"]
    with caplog.at_level(logging.WARNING, logger="metaft.typicality"):
        scores, protos, fallback = typicality_scores(E, ["X"] * 6, labels, alpha=0.5)
    assert fallback == 6 and "only one domain" in caplog.text
    own = [_cos(E[i].astype(np.float64), protos["X", labels[i]]) for i in range(6)]
    np.testing.assert_allclose(scores, own, atol=1e-12)


def test_bad_settings_rejected():
    E, domains, labels = _hand_case()
    with pytest.raises(ConfigError):
        typicality_scores(E, domains, labels, aggregation="median")
    with pytest.raises(ConfigError):
        typicality_scores(E, domains, labels, alpha=1.5)
    with pytest.raises(ConfigError, match="pooling"):
        TypicalityConfig(pooling="max")


# ------------------------------------------------------------------------------------------ embeddings

@pytest.fixture(scope="module")
def minilm():
    from metaft.hub import load_encoder, load_tokenizer

    return load_encoder("minilm"), load_tokenizer("minilm")


def test_masked_mean_independent_of_padding(minilm):
    model, tok = minilm
    ex = Example("u", "a gripping, beautifully acted film", "1", "sst2")
    long = Example("v", "word " * 100, "0", "sst2")
    e16 = embed_examples([ex], model, tok, pad_to=16)
    e128 = embed_examples([ex], model, tok, pad_to=128)
    mixed = embed_examples([long, ex], model, tok, batch_size=2)  # padded to the long text's length
    np.testing.assert_allclose(e16, e128, rtol=0, atol=1e-5)
    np.testing.assert_allclose(mixed[1:], e16, rtol=0, atol=1e-5)
    assert e16.dtype == np.float32 and e16.shape == (1, 384)


def test_batching_restores_input_order(minilm):
    model, tok = minilm
    texts = ["short", "a much longer sentence than the first one", "mid length text", "x"]
    exs = [Example(str(i), t, "0", "d") for i, t in enumerate(texts)]
    together = embed_examples(exs, model, tok, batch_size=3)
    alone = np.concatenate([embed_examples([e], model, tok) for e in exs])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)


def test_pooler_requires_a_pooler_layer(tiny_model_dir):
    from transformers import BertModel

    model = BertModel.from_pretrained(tiny_model_dir, add_pooling_layer=False)
    with pytest.raises(ConfigError, match="no pooler"):
        check_pooling(model, "pooler")
    check_pooling(model, "cls")


# --------------------------------------------------------------------------------------- g1 16-42 data

def _sample_g1(root: Path, out: Path) -> Path:
    """Fallback when the `prepared_data` fixture is absent: 16 per label from SST-2, MR, CR (seed 42)."""
    def lines(path, enc):
        return [ln for ln in (root / path).read_bytes().decode(enc).split("\n") if ln.strip()]

    pools = {
        "sst-2": [tuple(reversed(ln.rsplit("\t", 1))) for ln in lines("sst2/glue/train.tsv", "utf-8")[1:]],
        "mr": [tuple(ln.split(" ", 1)) for ln in lines("mr/rt-polarity.all", "cp1252")],
        "cr": [tuple(ln.split(" ", 1)) for ln in lines("cr/custrev.all", "ascii")],
    }
    rows = []
    for domain, pool in pools.items():
        pool = [(lab, " ".join(t.split())) for lab, t in (p for p in pool if len(p) == 2) if t.strip()]
        random.Random(42).shuffle(pool)
        for label in ("0", "1"):
            rows += [(t, domain, label) for lab, t in pool if lab == label][:16]
    return _write_layout(out / "train.tsv", rows).parent


@pytest.fixture(scope="module")
def g1_dir(request, tmp_path_factory) -> Path:
    """A private copy of g1/16-42 (preprocess writes beside the data)."""
    out = tmp_path_factory.mktemp("g1")
    try:
        prepared = request.getfixturevalue("prepared_data") / "k-shot-cross" / "g1" / "16-42"
        for name in ("train.tsv", "dev.tsv"):
            shutil.copy(prepared / name, out / name)
        return out
    except pytest.FixtureLookupError:
        return _sample_g1(request.getfixturevalue("corpora_root"), out)


@pytest.fixture(scope="module")
def g1_scored(g1_dir) -> Path:
    compute_typicality(TypicalityConfig(data_dir=str(g1_dir)))
    return g1_dir


def _independent_scores(folder: Path, alpha: float = 0.5) -> dict[str, float]:
    """Recompute mean-prototype scores from the saved embeddings, in plain float64 numpy."""
    with safe_open(str(folder / "embeddings.safetensors"), "np") as f:
        E = f.get_tensor("embeddings").astype(np.float64)
        uids = json.loads(f.metadata()["uids"])
    by_uid = {ex.uid: ex for ex in read_mft_tsv(folder / "train.tsv")}
    meta = [(by_uid[u].domain, by_uid[u].label) for u in uids]
    proto = {k: E[[i for i, m in enumerate(meta) if m == k]].mean(0) for k in set(meta)}
    out = {}
    for i, (d, lab) in enumerate(meta):
        others = [proto[k] for k in proto if k[1] == lab and k[0] != d]
        out[uids[i]] = alpha * _cos(E[i], proto[d, lab]) + (1 - alpha) * _cos(E[i], np.mean(others, 0))
    return out


def test_g1_scores_match_independent_computation(g1_scored):
    rows = [ln.split("\t") for ln in (g1_scored / "typicality.tsv").read_text().splitlines()]
    assert rows[0] == ["uid", "domain", "label", "score"]
    examples = read_mft_tsv(g1_scored / "train.tsv")
    assert len(examples) == 96 and [r[0] for r in rows[1:]] == [ex.uid for ex in examples]
    scores = np.array([float(r[3]) for r in rows[1:]])
    assert np.isfinite(scores).all() and (np.abs(scores) <= 1).all()
    expected = _independent_scores(g1_scored)
    for r in rows[1:]:
        assert float(r[3]) == pytest.approx(expected[r[0]], abs=1e-6)
    summary = json.loads((g1_scored / "typicality.json").read_text())
    assert summary["n"] == 96 and summary["alpha1_fallback"] == 0 and len(summary["stats"]) == 3
    assert (g1_scored / "typicality_hist.png").stat().st_size > 1000
    with safe_open(str(g1_scored / "prototypes.safetensors"), "np") as f:
        assert f.get_tensor("prototypes").shape == (6, 384) and len(json.loads(f.metadata()["keys"])) == 6


def test_rerun_is_byte_identical(g1_scored):
    before = {n: (g1_scored / n).read_bytes() for n in ("typicality.tsv", "typicality.json")}
    compute_typicality(TypicalityConfig(data_dir=str(g1_scored), use_cache=False))
    assert {n: (g1_scored / n).read_bytes() for n in before} == before


def test_load_scores_joins_by_uid(g1_scored):
    examples = read_mft_tsv(g1_scored / "train.tsv")
    scores = load_scores(g1_scored, examples)
    shuffled = examples[::-1]
    assert load_scores(g1_scored, shuffled) == scores[::-1]
    table = {ln.split("\t")[0]: float(ln.split("\t")[3])
             for ln in (g1_scored / "typicality.tsv").read_text().splitlines()[1:]}
    assert scores == [table[ex.uid] for ex in examples]


def test_load_scores_detects_edited_train_file(g1_scored, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(g1_scored, folder)
    examples = read_mft_tsv(folder / "train.tsv")
    with open(folder / "train.tsv", "a", encoding="utf-8") as fh:
        fh.write("a brand new example\tmr\t1\n")
    with pytest.raises(DataError, match="does not match train.tsv.*rerun `metaft preprocess"):
        load_scores(folder, examples)
    with pytest.raises(DataError, match="96 scores for 97 examples"):
        load_scores(folder, read_mft_tsv(folder / "train.tsv"))


def test_load_scores_without_preprocess(tmp_path):
    folder = _write_layout(tmp_path / "train.tsv", _small_rows()).parent
    with pytest.raises(DataError, match="run `metaft preprocess"):
        load_scores(folder, read_mft_tsv(folder / "train.tsv"))


# ------------------------------------------------------------------------------------------------- CLI

def test_seed_command_line(tiny_model_dir, tmp_path, capsys, caplog):
    data = tmp_path / "g1" / "16-42"
    _write_layout(data / "train.tsv", _small_rows())
    _write_layout(data / "dev.tsv", _small_rows()[:4])
    from metaft.hub import load_tokenizer

    vocab = load_tokenizer(tiny_model_dir).get_vocab()
    vocab_file = tmp_path / "vocab.txt"  # the model's own vocabulary, as the seed system passes it
    vocab_file.write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.get)), encoding="utf-8")
    argv = ["preprocess", "--task_name", "g1", "--model_load_dir", str(tiny_model_dir), "--data_dir", str(data),
            "--num_epochs", "4", "--seed", "42", "--seq_length=128", "--train_example_num", "96",
            "--dev_example_num", "96", "--vocab_file", str(vocab_file), "--resave_ofrecord"]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    for name in ("typicality.tsv", "typicality.json", "embeddings.safetensors", "prototypes.safetensors",
                 "typicality_hist.png"):
        assert (data / name).is_file(), name
    out = capsys.readouterr().out
    assert "domain" in out and "mean" in out and "all" in out
    assert "has 18 examples, not 96" in caplog.text and "differs from the vocabulary" not in caplog.text
    assert len(load_scores(data, read_mft_tsv(data / "train.tsv"))) == 18


def test_cli_on_a_plain_file_with_options(tiny_model_dir, tmp_path, caplog):
    path = _write_layout(tmp_path / "mine.tsv", [r for r in _small_rows() if r[1] == "A"])
    wrong_vocab = tmp_path / "vocab.txt"
    wrong_vocab.write_text("[PAD]\nfoo\n")
    with caplog.at_level(logging.WARNING):
        rc = main(["preprocess", str(path), "--model", str(tiny_model_dir), "--pooling", "pooler",
                   "--alpha", "0.2", "--aggregation", "mean-cosine", "--max-length", "16", "--batch-size", "4",
                   "--vocab_file", str(wrong_vocab)])
    assert rc == 0
    paths = score_paths(path)
    assert paths.scores == tmp_path / "mine.typicality.tsv" and paths.scores.is_file()
    summary = json.loads(paths.summary.read_text())
    assert summary["single_domain"] and summary["alpha1_fallback"] == 6 and summary["pooling"] == "pooler"
    assert "only one domain" in caplog.text and "differs from the vocabulary" in caplog.text
    assert len(load_scores(path, read_mft_tsv(path))) == 6


def test_cli_user_errors_exit_2(tmp_path, capsys):
    assert main(["preprocess", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["preprocess", str(tmp_path)]) == 2
    assert "no train.tsv" in capsys.readouterr().err
