"""``metaft prepare``: the summary it prints and every user error (one line, exit code 2)."""

from __future__ import annotations

import pytest

from metaft.cli import main


def run_error(capsys, *argv: str) -> str:
    """Run the CLI, expect exit code 2 and one line on stderr; return that line."""
    assert main(["-q", "prepare", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metaft: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def fake_root(tmp_path):
    """A corpora folder with a 4-line MR file that tests then spoil."""
    (tmp_path / "mr").mkdir()
    return tmp_path


def test_summary(capsys, tmp_path, corpora_root):
    argv = ["prepare", "--domains", "cr", "--k", "8", "--seeds", "1", "2", "--corpora", str(corpora_root)]
    assert main(argv + ["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path}/k-shot-single/CR/8-1: train 16, dev 16, test 2000" in out
    assert f"{tmp_path}/k-shot-cross/CR/8-2: train 16, dev 16" in out
    assert "prepared 4 folder(s)" in out


def test_corpora_from_env(capsys, tmp_path, corpora_root, monkeypatch):
    monkeypatch.setenv("METAFT_CORPORA", str(corpora_root))
    assert (
        main(["-q", "prepare", "--domains", "CR", "--k", "full", "--seeds", "3", "--out", str(tmp_path)]) == 0
    )
    assert "k-shot-single/CR/full-3: train 1594, dev 177, test 2000" in capsys.readouterr().out


def test_unknown_domain_and_group(capsys, corpora_root):
    err = run_error(capsys, "--domains", "MR", "IMDB", "--corpora", str(corpora_root))
    assert "unknown domain 'IMDB'; known domains: SST-2, MR, CR" in err
    assert "unknown group 'g7'; known groups: g1, amazon" in run_error(capsys, "--group", "g7")


def test_missing_corpora(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("METAFT_CORPORA", raising=False)
    assert "pass --corpora DIR or set METAFT_CORPORA" in run_error(capsys, "--group", "g1")
    err = run_error(capsys, "--group", "g1", "--corpora", str(tmp_path / "nowhere"))
    assert "nowhere does not exist" in err


def test_missing_file(capsys, fake_root):
    err = run_error(capsys, "--domains", "MR", "--corpora", str(fake_root))
    assert err.endswith("mr/rt-polarity.all: file not found")


def test_k_too_large(capsys, corpora_root):
    err = run_error(capsys, "--domains", "TREC", "--k", "50", "--corpora", str(corpora_root))
    assert (
        "K=50 is too large for domain TREC: label '2' has 84 distinct examples" in err
    )  # 86, less duplicates
    assert "needs 2*K=100" in err


def test_different_label_sets(capsys, corpora_root):
    err = run_error(capsys, "--domains", "CR", "TREC", "--corpora", str(corpora_root))
    assert (
        "group CR+TREC have different label sets: CR ['0', '1']; TREC ['0', '1', '2', '3', '4', '5']" in err
    )


def test_malformed_line(capsys, fake_root):
    (fake_root / "mr/rt-polarity.all").write_bytes(b"0 bad film\n1 good film\n\n")
    err = run_error(capsys, "--domains", "MR", "--corpora", str(fake_root))
    assert err.endswith("mr/rt-polarity.all:3: expected '<label> <text>' (no label at the start of the line)")


def test_undecodable_bytes(capsys, fake_root):
    (fake_root / "mr/rt-polarity.all").write_bytes(b"0 bad film\n1 caf\xe9 ok\n1 \x81 broken\n")
    err = run_error(capsys, "--domains", "MR", "--corpora", str(fake_root))
    assert err.endswith("mr/rt-polarity.all:3: cannot decode byte 0x81 as cp1252")


def test_malformed_user_file(capsys, tmp_path):
    path = tmp_path / "mine.tsv"
    path.write_text("fine\tnews\t1\nonly two\tcolumns\n", encoding="utf-8")
    err = run_error(capsys, "--input", str(path))
    assert err.endswith("mine.tsv:2: expected 3 tab-separated columns (text, domain, label), found 2")


@pytest.mark.parametrize("k", ["lots", "0", "-1", "2.5"])
def test_bad_k_is_a_usage_error(capsys, k):
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "--k", k])
    assert exc.value.code == 2
    assert f"k must be a positive integer or 'full', got '{k}'" in capsys.readouterr().err
