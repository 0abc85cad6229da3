"""Raw-corpus readers (counts from the data README), their errors, and the domain registry."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from metaft.corpora import read_jsonl, read_user_file
from metaft.errors import ConfigError, DataError
from metaft.readers import (
    DOMAINS,
    corpora_root,
    lookup_domain,
    lookup_group,
    read_amazon_reviews,
    read_glue_tsv,
    read_label_lines,
)


def labels(examples) -> dict[str, int]:
    return dict(Counter(ex.label for ex in examples))


@pytest.mark.parametrize(
    ("rel", "encoding", "expected"),
    [
        ("mr/rt-polarity.all", "cp1252", {"0": 5331, "1": 5331}),
        ("subj/subj.all", "cp1252", {"0": 5000, "1": 5000}),
        ("sst2/stsa/stsa.binary.train", "utf-8", {"0": 3310, "1": 3610}),
        ("sst2/stsa/stsa.binary.dev", "utf-8", {"0": 428, "1": 444}),
        ("sst2/stsa/stsa.binary.test", "utf-8", {"0": 912, "1": 909}),
        ("trec/TREC.train.all", "latin-1", {"0": 1162, "1": 1250, "2": 86, "3": 1223, "4": 835, "5": 896}),
        ("trec/TREC.test.all", "latin-1", {"0": 138, "1": 94, "2": 9, "3": 65, "4": 81, "5": 113}),
    ],
)
def test_label_line_counts(corpora_root, rel, encoding, expected):
    examples = read_label_lines(corpora_root / rel, "X", encoding=encoding)
    assert labels(examples) == expected
    assert all(ex.text and "\n" not in ex.text and ex.domain == "X" for ex in examples)
    assert len({ex.uid for ex in examples}) == len(examples)


def test_mr_keeps_nel_inside_sentences(corpora_root):
    examples = read_label_lines(corpora_root / "mr/rt-polarity.all", "MR", encoding="cp1252")
    assert len(examples) == 10_662  # splitlines() would give 10,685
    assert any("\u2026" in ex.text for ex in examples)  # 0x85 in cp1252


@pytest.mark.parametrize(("rel", "n", "skipped"), [("cr/custrev.all", 3771, 4), ("mpqa/mpqa.all", 10_603, 3)])
def test_empty_texts_skipped_with_counted_warning(corpora_root, caplog, rel, n, skipped):
    with caplog.at_level(logging.WARNING, logger="metaft.records"):
        examples = read_label_lines(corpora_root / rel, "X")
    assert len(examples) == n
    assert f"skipped {skipped} empty text(s)" in caplog.text


def test_glue_sst2(corpora_root):
    train = read_glue_tsv(corpora_root / "sst2/glue/train.tsv", "SST-2")
    dev = read_glue_tsv(corpora_root / "sst2/glue/dev.tsv", "SST-2")
    assert labels(train) == {"0": 29_780, "1": 37_569}
    assert labels(dev) == {"0": 428, "1": 444}
    assert all(ex.text == ex.text.strip() for ex in dev)  # trailing space removed


def test_glue_quote_none(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text('sentence\tlabel\n"quoted , start \t1\nit \'s "fine" \t0\n', encoding="utf-8")
    assert [ex.text for ex in read_glue_tsv(path, "SST-2")] == ['"quoted , start', 'it \'s "fine"']


def test_glue_test_file_has_no_labels(corpora_root):
    with pytest.raises(DataError, match=r"test\.tsv:1: no 'label' column.*unlabelled"):
        read_glue_tsv(corpora_root / "sst2/glue/test.tsv", "SST-2")


@pytest.mark.parametrize("domain", ["books", "dvd", "electronics", "kitchen"])
def test_amazon_counts(corpora_root, domain):
    neg = read_amazon_reviews(corpora_root / f"amazon/{domain}/negative.review", domain)
    pos = read_amazon_reviews(corpora_root / f"amazon/{domain}/positive.review", domain)
    assert labels(neg) == {"0": 1000} and labels(pos) == {"1": 1000}
    texts = [ex.text for ex in neg + pos]
    assert not any("\n" in t or "<review" in t for t in texts)
    # entities are unescaped once; one kitchen review is double-escaped (&amp;quot;) at the source
    assert sum("&quot;" in t for t in texts) == (1 if domain == "kitchen" else 0)


def test_amazon_entities_and_wrapper(tmp_path):
    path = tmp_path / "positive.review"
    body = "<review>\n<rating>\n5.0\n</rating>\n<review_text>\nAT&T &quot;great&quot;\n&#45; and  &lt;3\n</review_text>\n</review>\n"
    path.write_text("<data>\n" + body + body.replace("great", "fine") + "</data>\n", encoding="utf-8")
    examples = read_amazon_reviews(path, "books")
    assert [ex.text for ex in examples] == ['AT&T "great" - and <3', 'AT&T "fine" - and <3']
    assert {ex.label for ex in examples} == {"1"}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("<review>\n<rating>\n5.0\n</rating>\n</review>\n", r"x\.review:1: review without <review_text>"),
        ("<review>\n<review_text>\nok\n</review_text>\n", r"x\.review:1: <review> never closed"),
        ("junk\n", r"x\.review:1: unexpected line outside"),
        ("<review>\n<review>\n", r"x\.review:2: <review> opened before"),
    ],
)
def test_amazon_malformed(tmp_path, content, match):
    path = tmp_path / "x.review"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        read_amazon_reviews(path, "books", label="1")


def test_amazon_label_from_file_name(tmp_path):
    path = tmp_path / "unlabeled.review"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="positive.review or negative.review"):
        read_amazon_reviews(path, "books")


def test_label_lines_errors(tmp_path):
    bad = tmp_path / "bad.all"
    bad.write_bytes(b"0 fine\n no label here\n")
    with pytest.raises(DataError, match=r"bad\.all:2: expected '<label> <text>'"):
        read_label_lines(bad, "X")
    undecodable = tmp_path / "enc.all"
    undecodable.write_bytes(b"0 fine\n1 ok\n1 bad \x81 byte\n")
    with pytest.raises(DataError, match=r"enc\.all:3: cannot decode byte 0x81 as cp1252"):
        read_label_lines(undecodable, "X", encoding="cp1252")
    with pytest.raises(DataError, match=r"enc\.all:3: .*utf-8"):
        read_label_lines(undecodable, "X")
    with pytest.raises(DataError, match=r"missing\.all: file not found"):
        read_label_lines(tmp_path / "missing.all", "X")


def test_glue_wrong_column_count(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\na good one \t1\nno label\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.tsv:3: expected 2 tab-separated columns, found 1"):
        read_glue_tsv(path, "SST-2")


def test_jsonl(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"text": "a  b", "label": 1, "domain": "d1"}\n\n'
        '{"text": "q", "text_pair": "p", "label": "yes", "domain": "d2"}\n',
        encoding="utf-8",
    )
    examples = read_user_file(path)
    assert [(ex.text, ex.text_pair, ex.label, ex.domain) for ex in examples] == [
        ("a b", None, "1", "d1"),
        ("q", "p", "yes", "d2"),
    ]
    for content, match in [
        ("{not json}\n", r"bad\.jsonl:1: invalid JSON"),
        ('{"text": "x", "domain": "d"}\n', r"bad\.jsonl:1: 'label' missing"),
        ("[1, 2]\n", r"bad\.jsonl:1: expected a JSON object"),
        ('{"text": " ", "label": "0", "domain": "d1"}\n', r"bad\.jsonl:1: empty text"),
    ]:
        (tmp_path / "bad.jsonl").write_text(content, encoding="utf-8")
        with pytest.raises(DataError, match=match):
            read_jsonl(tmp_path / "bad.jsonl")


def test_user_tsv_dispatch(tmp_path):
    path = tmp_path / "mine.tsv"
    path.write_text("good film\tmovies\t1\n", encoding="utf-8")
    assert [ex.domain for ex in read_user_file(path)] == ["movies"]


def test_registry(corpora_root):
    assert lookup_domain("sst-2").name == "SST-2"
    assert lookup_domain("KITCHEN").name == "kitchen"
    assert set(DOMAINS) == {
        "SST-2",
        "MR",
        "CR",
        "MPQA",
        "Subj",
        "TREC",
        "books",
        "dvd",
        "electronics",
        "kitchen",
    }
    assert lookup_group("G1") == ("SST-2", "MR", "CR")
    with pytest.raises(ConfigError, match="unknown domain 'IMDB'; known domains: SST-2"):
        lookup_domain("IMDB")
    with pytest.raises(ConfigError, match="unknown group 'g9'"):
        lookup_group("g9")
    for spec in DOMAINS.values():
        assert all((corpora_root / rel).is_file() for rel in spec.files + spec.test_files)
        assert bool(spec.test_files) != bool(spec.holdout)


def test_corpora_root(monkeypatch, tmp_path):
    monkeypatch.delenv("METAFT_CORPORA", raising=False)
    with pytest.raises(ConfigError, match="--corpora DIR or set METAFT_CORPORA"):
        corpora_root(None)
    monkeypatch.setenv("METAFT_CORPORA", str(tmp_path))
    assert corpora_root(None) == tmp_path
    with pytest.raises(ConfigError, match="does not exist"):
        corpora_root(tmp_path / "nope")
    assert isinstance(corpora_root(str(tmp_path)), Path)
