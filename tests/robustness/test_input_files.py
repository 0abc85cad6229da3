"""Issue 7, input side: spoilt user files through ``metaft prepare`` (one ``file:line: problem`` line and
exit code 2, or a counted warning) and long texts through the encoder features (a counted warning).

The behaviour decided for each case is documented in :mod:`metaft.corpora` and :mod:`metaft.splits`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaft.cli import main
from metaft.corpora import read_mft_tsv
from metaft.domains import HOLDOUT_SEED, hold_out, normalise
from metaft.records import Example
from metaft.splits import full_split

GOOD = "mine.tsv"


def rows(domains=("news", "chat"), labels=("neg", "pos"), n=10, tag="") -> list[str]:
    """Lines ``text TAB domain TAB label``, ``n`` distinct texts per (domain, label)."""
    return [f"{d} {lab} text {tag}{i}\t{d}\t{lab}" for d in domains for lab in labels for i in range(n)]


def write(path: Path, lines: list[str], eol: str = "\n", encoding: str = "utf-8") -> Path:
    path.write_bytes((eol.join(lines) + eol).encode(encoding))
    return path


def prepare(tmp_path: Path, *argv: str, k: str = "2") -> int:
    return main(["-q", "prepare", *argv, "--k", k, "--seeds", "1", "--out", str(tmp_path / "out")])


def error(capsys, tmp_path: Path, *argv: str, k: str = "2") -> str:
    """Run ``metaft prepare``; expect exit code 2 and exactly one line on stderr; return it, sans prefix."""
    capsys.readouterr()
    assert prepare(tmp_path, *argv, k=k) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("metaft: error: ") and "\n" not in err and "Traceback" not in err, err
    return err.removeprefix("metaft: error: ")


def ok(capsys, tmp_path: Path, *argv: str, k: str = "2") -> str:
    capsys.readouterr()
    code = prepare(tmp_path, *argv, k=k)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def written(tmp_path: Path, domain: str, split: str, tag: str = "2-1") -> list[Example]:
    return read_mft_tsv(tmp_path / "out/k-shot-single" / domain / tag / f"{split}.tsv")


# ------------------------------------------------------------------------------------------------
# Bad lines: every one names the file and the line.

BAD_TSV_LINES = [
    ("just some words without tabs", "expected 3 tab-separated columns (text, domain, label), found 1"),
    ("two\tcolumns", "expected 3 tab-separated columns (text, domain, label), found 2"),
    ("a\tb\tc\td\te", "expected 3 tab-separated columns (text, domain, label), found 5"),
    ("   \tnews\tpos", "empty text"),
    ("a text\tnews\t \r", "empty label"),
    ("a text\t\tpos", "empty domain"),
    ("a text\t \tnews\tpos", "empty text_pair (second of 4 columns)"),
    ("a text\ta/b\tpos", "domain name 'a/b' cannot be a folder name (use letters, digits, . _ + -)"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_TSV_LINES)
def test_bad_tsv_line_names_file_and_line(capsys, tmp_path, line, problem):
    lines = rows()
    lines.insert(6, line)
    path = write(tmp_path / GOOD, lines)
    err = error(capsys, tmp_path, "--input", str(path))
    assert err.startswith(f"{path}:7: "), err
    assert problem in err


def test_lone_cr_line_ends_get_a_hint(capsys, tmp_path):
    path = tmp_path / GOOD
    path.write_bytes("\r".join(rows()).encode())
    err = error(capsys, tmp_path, "--input", str(path))
    assert err.startswith(f"{path}:1: expected 3 tab-separated columns")
    assert "lone CR" in err


def test_undecodable_byte_names_line_and_byte(capsys, tmp_path):
    lines = [line.encode() for line in rows()]
    lines[4] = "caf\xe9 ok\tnews\tpos".encode("cp1252")  # one cp1252 line in a UTF-8 file
    path = tmp_path / GOOD
    path.write_bytes(b"\n".join(lines) + b"\n")
    err = error(capsys, tmp_path, "--input", str(path))
    assert err == f"{path}:5: not valid UTF-8 (byte 0xe9 at column 4); re-save the file as UTF-8"


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl"])
def test_utf16_file_is_named(capsys, tmp_path, suffix):
    path = write(tmp_path / f"mine{suffix}", rows(), encoding="utf-16")
    err = error(capsys, tmp_path, "--input", str(path))
    assert err.startswith(f"{path}:1: file is UTF-16") and "re-save it as UTF-8" in err


def _jl(**row) -> str:
    return json.dumps(row)


BAD_JSONL_LINES = [
    ("{not json}", "invalid JSON (Expecting property name enclosed in double quotes at column 2)"),
    ("[1, 2]", "expected a JSON object per line, found list"),
    ('"text"', "expected a JSON object per line, found str"),
    ("null", "expected a JSON object per line, found NoneType"),
    (_jl(text=5, label="pos", domain="news"), "'text' missing or not a string"),
    (_jl(text="x", label=["pos"], domain="news"), "'label' missing or empty (expected a string)"),
    (_jl(text="x", label={"a": 1}, domain="news"), "'label' missing or empty"),
    ('{"text": "x", "label": NaN, "domain": "news"}', "'label' missing or empty"),
    (_jl(text="x", label=True, domain="news"), "'label' missing or empty"),
    (_jl(text="x", label="pos", domain=None), "'domain' missing or empty"),
    (_jl(text="x", label="pos", domain="news", text_pair=3), "'text_pair' must be a string"),
    (_jl(text=" \t ", label="pos", domain="news"), "empty text"),
    (_jl(text="x", label="pos", domain="news", text_pair=" "), "empty text_pair"),
    (
        '{"text": "bad \\ud800 half", "label": "pos", "domain": "news"}',
        "text holds an invalid character U+D800",
    ),
    ('{"text": "x", "label": ' + "9" * 5000 + ', "domain": "news"}', "invalid JSON (Exceeds the limit"),
    ("[" * 100_000 + "]" * 100_000, "invalid JSON (maximum recursion depth exceeded"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_JSONL_LINES, ids=[p for _, p in BAD_JSONL_LINES])
def test_bad_jsonl_line_names_file_and_line(capsys, tmp_path, line, problem):
    lines = [_jl(text=t, label=lab, domain=d) for t, d, lab in (r.split("\t") for r in rows())]
    lines.insert(2, line)
    path = write(tmp_path / "mine.jsonl", lines)
    err = error(capsys, tmp_path, "--input", str(path))
    assert err.startswith(f"{path}:3: "), err[:200]
    assert problem in err


# ------------------------------------------------------------------------------------------------
# Whole files: empty, missing, unreadable; the output folder.


@pytest.mark.parametrize("name", ["mine.tsv", "mine.jsonl"])
def test_zero_length_file(capsys, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    assert error(capsys, tmp_path, "--input", str(path)) == f"{path}: file is empty"
    good = write(tmp_path / "good.tsv", rows())
    assert error(capsys, tmp_path, "--input", str(good), "--test", str(path)) == f"{path}: file is empty"


def test_blank_lines_only(capsys, tmp_path):
    path = tmp_path / GOOD
    path.write_bytes(b"\n \r\n\t\t\n")
    assert error(capsys, tmp_path, "--input", str(path)) == f"{path}: no examples (only blank lines)"


def test_missing_files(capsys, tmp_path):
    missing = tmp_path / "nope.tsv"
    assert error(capsys, tmp_path, "--input", str(missing)) == f"{missing}: file not found"
    good = write(tmp_path / GOOD, rows())
    assert (
        error(capsys, tmp_path, "--input", str(good), "--test", str(missing)) == f"{missing}: file not found"
    )
    assert (
        error(capsys, tmp_path, "--input", str(tmp_path)) == f"{tmp_path}: cannot read file (Is a directory)"
    )


def test_test_file_needs_input(capsys, tmp_path):
    good = write(tmp_path / GOOD, rows())
    err = error(capsys, tmp_path, "--group", "g1", "--test", str(good))
    assert err == "--test needs --input (registered domains have fixed test sets)"


@pytest.fixture
def locked(monkeypatch):
    """``lock(folder)``: make a folder unreadable (chmod 000). Root ignores file modes, so as root reads
    under the folder are made to raise PermissionError the way the kernel would for anyone else."""
    folders: list[Path] = []

    def lock(folder: Path) -> Path:
        folder.chmod(0)
        folders.append(folder)
        if os.geteuid() == 0:
            real = Path.read_bytes

            def read_bytes(self: Path) -> bytes:
                if any(f == self or f in self.parents for f in folders):
                    raise PermissionError(13, "Permission denied", str(self))
                return real(self)

            monkeypatch.setattr(Path, "read_bytes", read_bytes)
        return folder

    yield lock
    for folder in folders:
        folder.chmod(0o755)


def test_domain_too_small_to_hold_out_a_test_set(capsys, tmp_path):
    path = write(tmp_path / GOOD, rows() + ["same\tsmall\tneg", "same\tsmall\tneg", "Same\tsmall\tpos"])
    err = error(capsys, tmp_path, "--input", str(path))
    assert err == (
        f"{path}: domain 'small': no test set could be held out of its 3 example(s) (20%, whole groups of "
        "repeated texts); add examples or give --test"
    )


def test_zero_length_registered_file(capsys, tmp_path):
    (tmp_path / "mr").mkdir()
    (tmp_path / "mr/rt-polarity.all").write_bytes(b"")
    err = error(capsys, tmp_path, "--domains", "MR", "--corpora", str(tmp_path))
    assert err == f"{tmp_path}/mr/rt-polarity.all: file is empty"


def test_unreadable_folder(capsys, tmp_path, locked):
    folder = tmp_path / "private"
    folder.mkdir()
    path = write(folder / GOOD, rows())
    locked(folder)
    assert error(capsys, tmp_path, "--input", str(path)) == f"{path}: cannot read file (Permission denied)"


def test_unreadable_corpora_folder(capsys, tmp_path, locked):
    root = tmp_path / "corpora"
    (root / "cr").mkdir(parents=True)
    (root / "cr/custrev.all").write_text("0 bad\n1 good\n", encoding="utf-8")
    locked(root / "cr")
    err = error(capsys, tmp_path, "--domains", "CR", "--corpora", str(root))
    assert err == f"{root}/cr/custrev.all: cannot read file (Permission denied)"


def test_unwritable_output(capsys, tmp_path, monkeypatch):
    good = write(tmp_path / GOOD, rows())
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    argv = ["-q", "prepare", "--input", str(good), "--k", "2", "--seeds", "1"]
    assert main([*argv, "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"metaft: error: cannot write {blocker}/out/k-shot-single/news/2-1 (Not a directory); check --out"
    )

    def denied(self, *args, **kwargs):  # what a read-only --out gives a user who is not root
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    assert main([*argv, "--out", str(tmp_path / "ro")]) == 2
    assert "(Permission denied); check --out" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Accepted with no fuss: BOM, CRLF.


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl"])
def test_bom_and_crlf_are_accepted(capsys, tmp_path, suffix):
    lines = rows()
    if suffix == ".jsonl":
        lines = [_jl(text=t, label=lab, domain=d) for t, d, lab in (r.split("\t") for r in lines)]
    path = tmp_path / f"mine{suffix}"
    half = len(lines) // 2 + 1  # two BOM-started files concatenated: a BOM in the middle too
    bom = b"\xef\xbb\xbf"
    path.write_bytes(
        b"".join(bom + ("\r\n".join(part) + "\r\n").encode() for part in (lines[:half], lines[half:]))
    )
    ok(capsys, tmp_path, "--input", str(path))
    for domain in ("news", "chat"):
        examples = [ex for split in ("train", "dev", "test") for ex in written(tmp_path, domain, split)]
        assert {ex.domain for ex in examples} == {domain}
        assert {ex.label for ex in examples} == {"neg", "pos"}
        assert not any("\r" in ex.text or "\ufeff" in ex.text for ex in examples)


# ------------------------------------------------------------------------------------------------
# Labels: one class, labels outside the group's label set, labels only in test or dev.


def test_domain_with_one_class(capsys, tmp_path):
    path = write(tmp_path / GOOD, rows() + rows(domains=("sports",), labels=("pos",)))
    err = error(capsys, tmp_path, "--input", str(path))
    assert err == (
        f"{path}: domain 'sports' has only one label ('pos') in its pool and test set; "
        "a classification domain needs at least 2"
    )
    single = write(tmp_path / "single.tsv", rows(domains=("news",), labels=("pos",)))
    assert "domain 'news' has only one label ('pos')" in error(capsys, tmp_path, "--input", str(single))


def test_registered_domain_with_one_class(capsys, tmp_path):
    (tmp_path / "mr").mkdir()
    (tmp_path / "mr/rt-polarity.all").write_bytes(b"".join(b"0 text %d\n" % i for i in range(3000)))
    err = error(capsys, tmp_path, "--domains", "MR", "--corpora", str(tmp_path))
    assert err.startswith("domain 'MR' has only one label ('0')")


def test_label_outside_the_group_label_set(capsys, tmp_path):
    lines = rows()
    lines[25] = "chat typo text\tchat\tpostive"  # a typo of "pos"
    path = write(tmp_path / GOOD, lines)
    err = error(capsys, tmp_path, "--input", str(path))
    assert err == (
        f"{path}:26: label 'postive' (domain 'chat') is not a label of domain 'news' (neg, pos); "
        "every domain of a group needs the same labels"
    )


def test_label_only_in_the_test_file(capsys, tmp_path):
    good = write(tmp_path / GOOD, rows())
    test = write(tmp_path / "test.tsv", rows(n=2, tag="t") + ["a neutral one\tnews\tneutral"])
    err = error(capsys, tmp_path, "--input", str(good), "--test", str(test))
    assert err == (
        f"{test}:9: label 'neutral' of domain 'news' does not occur in its training pool (mine.tsv: neg, pos)"
    )
    # the only pool copy of a label is a test text, so it leaves the pool: the same error
    pool = write(tmp_path / "pool.tsv", rows() + ["shared\tnews\tneutral", "shared 2\tchat\tneutral"])
    test = write(tmp_path / "test2.tsv", rows(n=2, tag="t") + ["Shared\tnews\tneutral"])
    err = error(capsys, tmp_path, "--input", str(pool), "--test", str(test))
    assert err.startswith(f"{test}:9: label 'neutral' of domain 'news' does not occur in its training pool")


def test_test_domain_not_in_input(capsys, tmp_path):
    good = write(tmp_path / GOOD, rows())
    test = write(tmp_path / "test.tsv", rows(n=2, tag="t") + ["a score\tsports\tpos"])
    err = error(capsys, tmp_path, "--input", str(good), "--test", str(test))
    assert err == f"{test}:9: domain 'sports' is not in mine.tsv (its domains: news, chat)"


def _placeholders(n: int) -> list[Example]:
    return [Example(str(i), f"t{i}", "x", "d") for i in range(n)]


def test_label_only_in_the_held_out_test_set(capsys, tmp_path):
    # hold_out's choice depends only on the number of distinct texts, so find a held-out position
    n = 21
    _, held = hold_out(_placeholders(n), round(0.2 * n), random.Random(HOLDOUT_SEED))
    at = int(held[0].uid)
    lines = []
    for d in ("news", "chat"):
        dom = [f"{d} text {i}\t{d}\t{'neg' if i % 2 else 'pos'}" for i in range(n)]
        dom[at] = f"{d} the rare one\t{d}\trare"
        lines += dom
    path = write(tmp_path / GOOD, lines)
    err = error(capsys, tmp_path, "--input", str(path))
    assert err == (
        f"{path}: label 'rare' of domain 'news': all its 1 example(s) went to the held-out test set and none "
        "is left for training; add examples of it or give a --test file"
    )


def test_label_only_in_dev_with_k_full(capsys, tmp_path):
    n = 30
    _, dev = full_split(_placeholders(n), 0.1, 1)
    at = int(dev[0].uid)
    lines = []
    for d in ("news", "chat"):
        dom = [f"{d} text {i}\t{d}\t{'neg' if i % 2 else 'pos'}" for i in range(n)]
        dom[at] = f"{d} the rare one\t{d}\trare"
        lines += dom
    path = write(tmp_path / GOOD, lines)
    test = write(tmp_path / "test.tsv", rows(n=1, labels=("neg", "pos", "rare"), tag="t"))
    err = error(capsys, tmp_path, "--input", str(path), "--test", str(test), k="full")
    assert err == (
        "--k full, seed 1: label 'rare' of domain news has 1 distinct pool example(s) and none went to "
        "train; add examples of it or lower --dev-fraction"
    )


# ------------------------------------------------------------------------------------------------
# Duplicates: within the input (kept, counted warning) and across input and test (dropped, counted).


def test_duplicates_in_the_input_are_counted(capsys, tmp_path, caplog):
    lines = rows()
    text, rest = lines[1].split("\t", 1)
    lines += [
        lines[0],
        f"  {text.upper()} \t{rest}",
        lines[2].replace("\tneg", "\tpos"),
    ]  # 1 with a new label
    path = write(tmp_path / GOOD, lines)
    with caplog.at_level(logging.WARNING, logger="metaft"):
        ok(capsys, tmp_path, "--input", str(path))
    assert (
        f"{path}: 3 line(s) repeat an earlier text of their domain (lines 41, 42, 43); copies stay together"
        in caplog.text
    )
    assert (
        f"{path}: 1 repeated text(s) have another label than their first copy (lines 43 vs 3)" in caplog.text
    )
    keys = [normalise(ex.text) for s in ("train", "dev") for ex in written(tmp_path, "news", s)]
    assert len(keys) == len(set(keys))  # k-shot samples one copy


def test_duplicates_across_input_and_test_leave_the_pool(capsys, tmp_path, caplog):
    lines = rows()
    good = write(tmp_path / GOOD, lines)
    text, rest = lines[11].split("\t", 1)
    test = write(tmp_path / "test.tsv", [lines[0], f"{text.upper()}\t{rest}", lines[25]] + rows(n=2, tag="t"))
    with caplog.at_level(logging.WARNING, logger="metaft"):
        ok(capsys, tmp_path, "--input", str(good), "--test", str(test), k="full")
    assert (
        f"{good}: dropped 3 pool example(s) whose text is also in a test set (news 2, chat 1); the test "
        "copies stay" in caplog.text
    )
    for domain in ("news", "chat"):
        test_keys = {normalise(ex.text) for ex in written(tmp_path, domain, "test", "full-1")}
        pool_keys = {
            normalise(ex.text) for s in ("train", "dev") for ex in written(tmp_path, domain, s, "full-1")
        }
        assert not test_keys & pool_keys
        assert len(pool_keys) == 20 - (2 if domain == "news" else 1)


# ------------------------------------------------------------------------------------------------
# Texts longer than the model's limit: truncated, counted in one warning.


def test_long_texts_are_truncated_with_a_counted_warning(tiny_model_dir, caplog):
    from metaft.features import EncodedDataset
    from metaft.hub import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    texts = ["good " * 300, "bad", "the plot " * 100]
    examples = [Example(f"u{i}", t, str(i % 2), "d") for i, t in enumerate(texts)]
    with caplog.at_level(logging.WARNING, logger="metaft.features"):
        ds = EncodedDataset(examples, tok, 64, {"0": 0, "1": 1}, use_cache=False)
    assert "2 of 3 texts are longer than 64 tokens and were truncated" in caplog.text
    assert max(ds.lengths()) == 64 and ds.truncated == 2


def test_max_length_beyond_the_model_is_capped_with_a_warning(tiny_model_dir, tmp_path, caplog, capsys):
    """The tiny model has 128 positions: --max-length 1000 would crash inside it; it is capped instead."""
    from helpers import synthetic
    from metaft.corpora import write_mft_tsv

    data = tmp_path / "data"
    train = synthetic(12, ["book", "film"], 0) + [Example("long", "good " * 400, "pos", "book")]
    write_mft_tsv(data / "train.tsv", train)
    write_mft_tsv(data / "dev.tsv", synthetic(6, ["book", "film"], 1))
    common = ["--data-dir", str(data), "--model", str(tiny_model_dir), "--max-length", "1000"]
    with caplog.at_level(logging.WARNING):
        assert main(["-q", "preprocess", *common]) == 0
        assert main(["-q", "meta-finetune", *common, "--out", str(tmp_path / "meta"), "--epochs", "1"]) == 0
    assert "max length 1000 is more than the model takes (128 tokens): using 128" in caplog.text
    assert "1 of 13 texts are longer than 128 tokens" in caplog.text


# ------------------------------------------------------------------------------------------------
# End to end: random small user files through ``metaft prepare`` give exit code 0 or one error line.

good_user_line = st.tuples(
    st.sampled_from(["good", "bad", "Good ", "a  b", "x\x00", "é"]),
    st.integers(0, 40),
    st.sampled_from(["news", "chat"]),
    st.sampled_from(["0", "1"] * 4 + ["2"]),
).map(lambda t: f"{t[0]} {t[1]}\t{t[2]}\t{t[3]}")
bad_user_line = st.sampled_from(
    ["", "junk", "a\tb", "\ufeffx 1\tnews\t1", "t\tp\tnews\t0", "x\ta/b\t1", " \tnews\t1", "x\tnews\t "]
)


@st.composite
def user_file(draw, min_size: int) -> bytes:
    lines = draw(st.lists(good_user_line, min_size=min_size, max_size=80))
    if lines and draw(st.integers(0, 3)) == 0:  # now and then one bad line
        lines.insert(draw(st.integers(0, len(lines))), draw(bad_user_line))
    return "\n".join(lines).encode("utf-8")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=user_file(20), test=st.none() | user_file(4), k=st.sampled_from(["1", "2", "full"]))
def test_random_user_files_give_a_result_or_one_error_line(capsys, tmp_path, data, test, k):
    shutil.rmtree(tmp_path / "out", ignore_errors=True)  # tmp_path is shared by all examples
    path = tmp_path / GOOD
    path.write_bytes(data)
    argv = ["--input", str(path)]
    if test is not None:
        (tmp_path / "test.tsv").write_bytes(test)
        argv += ["--test", str(tmp_path / "test.tsv")]
    capsys.readouterr()
    code = main(["-q", "prepare", *argv, "--k", k, "--seeds", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("metaft: error: ") and "\n" not in err, err
        return
    tag = f"{k}-1"
    for folder in (tmp_path / "out/k-shot-single").iterdir():
        test_keys = {normalise(ex.text) for ex in read_mft_tsv(folder / tag / "test.tsv")}
        pool = [ex for s in ("train", "dev") for ex in read_mft_tsv(folder / tag / f"{s}.tsv")]
        assert not test_keys & {normalise(ex.text) for ex in pool}
        assert len({ex.label for ex in pool}) >= 2
