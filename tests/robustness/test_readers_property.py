"""Issue 7: every reader, fed random bytes and random structured files, either parses or raises DataError.

A parse must give :class:`Example` records whose text, label and domain are non-empty, whitespace-collapsed,
valid-Unicode strings with unique uids, and which survive ``write_mft_tsv`` / ``read_mft_tsv`` unchanged.
A DataError must be one line that starts with the file's path. Anything else (UnicodeDecodeError,
IndexError, KeyError, json errors, RecursionError, TypeError, ...) fails the test.
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaft.corpora import read_jsonl, read_mft_tsv, read_user_file, write_mft_tsv
from metaft.errors import DataError
from metaft.readers import read_amazon_reviews, read_glue_tsv, read_label_lines
from metaft.records import Example, clean_field

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Pieces that have broken readers before, or could: separators, BOMs, NEL (0x85), line/paragraph
# separators, NUL, lone surrogates, control and non-ASCII characters, entities and tags.
SPECIAL = [
    "\t", "\r", "\n", "\r\n", " ", "  ", "\x00", "\ufeff", "\x85", "\u2028", "\x0b", "\x0c", "\x1c", "\x1f", "\x1a", "\x7f", "\x9c",
    "\ud800", "\udfff", "é", "€", "\u200b", "\U0001f600", "&amp;", "&quot;", "&#0;", "&#65;", "&#xD800;",
    "&#x10FFFF;", "&#99999999;", "&AT&T", '"', "\\", "{", "}", "[", "]", ":", ",", "NaN", "null",
]  # fmt: skip
WORDS = ["0", "1", "2", "pos", "neg", "news", "chat", "sentence", "label", "index", "a", "good film"]
LABELS = ["0", "1", "pos", "neg"]
SEPARATORS = ["\n", "\n", "\n", "\r\n", "\r", "\n\n"]
ENCODINGS = ["utf-8", "utf-8", "utf-8", "utf-8", "utf-8-sig", "cp1252", "latin-1", "utf-16"]

word = st.sampled_from(WORDS)
piece = st.one_of(word, word, st.sampled_from(SPECIAL), st.text(max_size=6))
field = st.lists(piece, max_size=4).map(" ".join) | st.lists(piece, max_size=4).map("".join)
label = st.sampled_from(LABELS)
text = st.tuples(field, word, field).map(" ".join)  # rarely empty: for the well-formed lines


def lines_of(*lines: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A file's text: lines (drawn from ``lines``) joined by a separator, sometimes with a final one."""
    return st.tuples(st.lists(st.one_of(*lines), max_size=8), st.sampled_from(SEPARATORS), st.booleans()).map(
        lambda t: t[1].join(t[0]) + (t[1] if t[2] else "")
    )


@st.composite
def encoded(draw, text: st.SearchStrategy[str]) -> bytes:
    """``text`` encoded one of several ways, sometimes with random bytes spliced in."""
    value = draw(text)
    encoding = draw(st.sampled_from(ENCODINGS))
    errors = "surrogatepass" if encoding.startswith("utf-8") else "replace"
    data = value.encode(encoding, errors=errors)
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=8)) + data[at:]
    return data


def files(noisy: st.SearchStrategy[str], good: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """Random bytes, noisy files in several encodings, and UTF-8 files of well-formed lines only (whose
    fields still hold the SPECIAL pieces), so that both the error paths and the parse path get exercised."""
    utf8 = good.map(lambda text: text.encode("utf-8", errors="surrogatepass"))
    return st.one_of(st.binary(max_size=400), encoded(noisy), utf8, utf8)


# --- per-format structures: well-formed lines, near misses and noise -----------------------------

tsv_line = st.lists(field, min_size=1, max_size=5).map("\t".join)
good_mft = st.tuples(text, st.sampled_from(["news", "chat", " d "]), label).map("\t".join)
pair_mft = st.tuples(text, text, st.just("news"), label).map("\t".join)
mft_text = lines_of(good_mft, pair_mft, tsv_line)
mft_files = files(mft_text, lines_of(good_mft, good_mft, pair_mft))

good_label_line = st.tuples(label, text).map(" ".join)
label_line = st.tuples(label | field, st.sampled_from([" ", "", "\t"]), field).map("".join)
label_files = files(lines_of(good_label_line, label_line), lines_of(good_label_line))

glue_header = (
    st.sampled_from(
        ["sentence\tlabel"] * 4
        + ["label\tsentence", "index\tsentence", "sentence", "\ufeffsentence\tlabel", "sentence \tlabel\tx"]
    )
    | tsv_line
)
good_glue = st.tuples(text, label).map("\t".join)
glue_files = files(
    st.tuples(glue_header, lines_of(good_glue, tsv_line)).map("\n".join),
    lines_of(good_glue).map(lambda body: "sentence\tlabel\n" + body),
)

TAGS = ["<review>", "</review>", "<review_text>", "</review_text>", "<title>", "<data>", "</data>", ""]
review = st.tuples(field, text, field).map(
    lambda t: f"<review>\n<title>\n{t[0]}\n</title>\n<review_text>\n{t[1]}\n{t[2]}\n</review_text>\n</review>"
)
amazon_line = st.one_of(st.sampled_from(TAGS), st.sampled_from(TAGS).map(lambda t: f"  {t} "), field)
amazon_files = files(
    lines_of(review, amazon_line), lines_of(review, st.sampled_from(["<data>", "", "</data>"]))
)

scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), field, word, st.just(" "))
json_value = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(field, inner, max_size=3),
    max_leaves=6,
)
good_row = st.fixed_dictionaries(
    {"text": text, "label": label | st.integers(0, 3), "domain": st.sampled_from(["news", "chat", 7])},
    optional={"text_pair": text, "extra": json_value},
)
any_row = st.fixed_dictionaries(
    {}, optional={"text": json_value, "label": json_value, "domain": json_value, "text_pair": json_value}
)
json_line = st.one_of(
    st.tuples(st.one_of(good_row, any_row, json_value), st.booleans()).map(
        lambda t: json.dumps(t[0], ensure_ascii=t[1])  # NaN/Infinity come out as JSON's NaN/Infinity
    ),
    st.sampled_from(['{"text": "x", "label": 1' + "0" * 5000 + ', "domain": "d"}', "[" * 5000, "{", "}"]),
    field,
)
jsonl_files = files(lines_of(json_line), lines_of(good_row.map(json.dumps), st.just("")))


# --- the invariant -----------------------------------------------------------------------------------

CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")  # control characters that are not whitespace


def _clean_string(value) -> bool:
    if not isinstance(value, str) or not value or value != clean_field(value):
        return False
    value.encode("utf-8")  # raises on a lone surrogate
    return True


def check(read, path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        examples = read(path)
    except DataError as exc:
        message = str(exc)
        assert exc.path == str(path), message
        assert message.startswith(f"{path}") and "\n" not in message and "\r" not in message, message
        return
    assert isinstance(examples, list)
    for ex in examples:
        assert isinstance(ex, Example)
        assert _clean_string(ex.text) and _clean_string(ex.label) and _clean_string(ex.domain), ex
        assert ex.text_pair is None or _clean_string(ex.text_pair), ex
        fields = (ex.text, ex.text_pair or "", ex.label, ex.domain)
        assert not any(CONTROL.search(f) for f in fields), ex  # never copied into a split file
    assert len({ex.uid for ex in examples}) == len(examples)
    if examples:
        copy = write_mft_tsv(path.with_name("round-trip.tsv"), examples)
        assert read_mft_tsv(copy) == examples


# --- one test per reader -----------------------------------------------------------------------------


@SETTINGS
@given(data=mft_files)
def test_read_mft_tsv(tmp_path, data):
    check(read_mft_tsv, tmp_path / "layout.tsv", data)


@SETTINGS
@given(data=label_files)
def test_read_label_lines_utf8(tmp_path, data):
    check(partial(read_label_lines, domain="X"), tmp_path / "corpus.all", data)


@SETTINGS
@given(data=label_files)
def test_read_label_lines_cp1252(tmp_path, data):
    check(partial(read_label_lines, domain="X", encoding="cp1252"), tmp_path / "corpus.all", data)


@SETTINGS
@given(data=glue_files)
def test_read_glue_tsv(tmp_path, data):
    check(partial(read_glue_tsv, domain="SST-2"), tmp_path / "train.tsv", data)


@SETTINGS
@given(data=amazon_files)
def test_read_amazon_reviews(tmp_path, data):
    check(partial(read_amazon_reviews, domain="books"), tmp_path / "positive.review", data)


@SETTINGS
@given(data=jsonl_files)
def test_read_jsonl(tmp_path, data):
    check(read_jsonl, tmp_path / "mine.jsonl", data)


@SETTINGS
@given(data=st.one_of(jsonl_files, mft_files), suffix=st.sampled_from([".jsonl", ".json", ".tsv", ".txt"]))
def test_read_user_file(tmp_path, data, suffix):
    check(read_user_file, tmp_path / f"mine{suffix}", data)
