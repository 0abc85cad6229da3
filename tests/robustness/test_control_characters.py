"""Issue 19, class 8: control characters never reach the split files silently. A NUL is refused naming
file and line; the other non-whitespace control characters are removed with one counted warning per file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from metaft.cli import main
from metaft.corpora import read_jsonl, read_mft_tsv, read_user_rows
from metaft.readers import read_amazon_reviews

CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1b\x7f]|\xc2[\x80-\x84\x86-\x9f]")  # as UTF-8 bytes


def user_file(path: Path, special: dict[int, str]) -> Path:
    """60 lines of two domains; line ``n`` (1-based) gets ``special[n]`` inside its text."""
    words = {"0": "bad awful boring slow dull weak".split(), "1": "good great nice fine neat fun".split()}
    lines = []
    for i in range(60):
        label, domain = str(i % 2), "ab"[i // 30]
        text = f"a {words[label][i % 6]} {words[label][(i // 2) % 6]} thing {'so ' * (i // 12)}{i % 3}"
        if i + 1 in special:
            text = text.replace("thing", f"thi{special[i + 1]}ng")
        lines.append(f"{text}\t{domain}\t{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def prepare(tmp_path: Path, source: Path) -> list[str]:
    return ["-q", "prepare", "--input", str(source), "--k", "4", "--seeds", "1", "--out", str(tmp_path / "out")]


@pytest.mark.parametrize("line", [1, 17, 60])
def test_a_nul_in_a_text_names_file_and_line(tmp_path, capsys, line):
    source = user_file(tmp_path / "mine.tsv", {line: "\x00"})
    assert main(prepare(tmp_path, source)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"metaft: error: {source}:{line}: NUL character (U+0000) at character ")
    assert "\n" not in err and not (tmp_path / "out").exists()


def test_a_nul_in_a_label_or_domain_field_is_refused_too(tmp_path):
    from metaft.errors import DataError

    path = tmp_path / "split.tsv"
    path.write_text("a good film\tbook\t1\nfine\tbo\x00ok\t1\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: NUL character"):
        read_mft_tsv(path)
    path.write_text("a good film\tbook\t\x001\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:1: NUL character"):
        read_mft_tsv(path)


def test_a_nul_in_json_lines_is_refused(tmp_path):
    from metaft.errors import DataError

    path = tmp_path / "mine.jsonl"
    rows = [{"text": "good", "label": 1, "domain": "a"}, {"text": "bad\u0000", "label": 0, "domain": "a"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: NUL character"):
        read_jsonl(path)


def test_other_control_characters_are_removed_with_a_counted_warning(tmp_path, caplog):
    source = user_file(tmp_path / "mine.tsv", {3: "\x1a", 9: "\x01\x7f", 40: "\x9b", 41: "\x1b"})
    caplog.set_level("WARNING")
    assert main(prepare(tmp_path, source)) == 0
    warnings = [r.getMessage() for r in caplog.records if "control character" in r.getMessage()]
    assert warnings == [f"{source}: removed 5 control character(s) from 4 line(s) (line 3, 9, 40, 41)"]
    written = list((tmp_path / "out").rglob("*.tsv"))
    assert written and not any(CONTROL.search(p.read_bytes()) for p in written)
    rows = dict(read_user_rows(source))
    assert (rows[3].text, rows[9].text) == ("a boring awful thing 2", "a boring dull thing 2")


def test_control_characters_in_a_layout_file_are_removed(tmp_path, caplog):
    path = tmp_path / "train.tsv"
    path.write_text("a go\x1aod film\tbook\t1\nbad\x08\tbook\t0\nfine\tbook\t1\n", encoding="utf-8")
    caplog.set_level("WARNING")
    examples = read_mft_tsv(path)
    assert [ex.text for ex in examples] == ["a good film", "bad", "fine"]
    assert f"{path}: removed 2 control character(s) from 2 line(s) (line 1, 2)" in caplog.messages


def test_the_published_amazon_reviews_lose_their_sub_characters_with_a_warning(corpora_root, caplog):
    """books/negative.review holds 10 U+001A (an accented letter lost in an old conversion)."""
    path = corpora_root / "amazon" / "books" / "negative.review"
    assert path.read_bytes().count(b"\x1a") == 10
    caplog.set_level("WARNING")
    examples = read_amazon_reviews(path, "books")
    assert not any("\x1a" in ex.text for ex in examples)
    assert any(m.startswith(f"{path}: removed 10 control character(s)") for m in caplog.messages)


def test_tokenisers_ignore_the_removed_characters_anyway(tiny_model_dir):
    """Removing them changes no token: a BERT tokeniser drops control characters itself."""
    from metaft.hub import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    assert tok("a go\x1aod fi\x7flm\x01")["input_ids"] == tok("a good film")["input_ids"]
