"""The layout file format (``text \\t domain \\t label``) and users' multi-domain files (layout TSV or JSON Lines).

Every reader follows the input rules of :mod:`metaft.records`; the raw published corpora are read by
:mod:`metaft.readers`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from .errors import DataError
from .fileio import atomic_path
from .records import Collector, ControlCharacters, Example, clean_field, content_uid, read_bytes, read_lines


def _mft_rows(path: Path, empty_ok: bool = False) -> list[tuple[int, Example]]:
    """(line number, Example) of every example line of a layout file; see :func:`read_mft_tsv`."""
    raw = read_bytes(path, empty_ok=empty_ok)
    rows: list[tuple[int, Example]] = []
    seen: dict[str, int] = {}
    controls = ControlCharacters(path)
    for lineno, line_bytes in enumerate(raw.split(b"\n"), start=1):
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = line_bytes[exc.start : exc.start + 1].hex()
            raise DataError(
                path,
                f"not valid UTF-8 (byte 0x{byte} at column {exc.start + 1}); re-save the file as UTF-8",
                lineno,
            ) from None
        line = line.rstrip("\r").lstrip("\ufeff")  # a BOM may start a line of concatenated files
        line = controls.clean(lineno, line)
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) == 3:
            text, domain, label = cols
            pair = None
        elif len(cols) == 4:
            text, pair, domain, label = cols
        else:
            hint = " (lines separated by a lone CR? use LF or CRLF line ends)" if "\r" in line else ""
            raise DataError(
                path,
                f"expected 3 tab-separated columns (text, domain, label), found {len(cols)}{hint}",
                lineno,
            )
        text, domain, label = clean_field(text), clean_field(domain), clean_field(label)
        if not text:
            raise DataError(path, "empty text", lineno)
        if pair is not None:
            pair = clean_field(pair)
            if not pair:
                raise DataError(path, "empty text_pair (second of 4 columns)", lineno)
        if not domain:
            raise DataError(path, "empty domain", lineno)
        if not label:
            raise DataError(path, "empty label", lineno)
        base = content_uid(domain, text, pair, label)
        occurrence = seen.get(base, 0)
        seen[base] = occurrence + 1
        rows.append(
            (lineno, Example(content_uid(domain, text, pair, label, occurrence), text, label, domain, pair))
        )
    controls.report()
    return rows


def read_mft_tsv(path: str | Path) -> list[Example]:
    """Read a layout file: lines ``text \\t domain \\t label`` or ``text \\t text_pair \\t domain \\t label``.

    UTF-8 (a BOM is accepted), ``\\n`` or ``\\r\\n`` line ends. Blank lines are skipped; fields are
    whitespace-collapsed. Any other malformed line (wrong column count, an empty field, undecodable
    bytes) raises :class:`DataError` naming the file and line. A zero-length file has no examples (a
    split that ``prepare`` wrote empty); as a user's ``--input``/``--test`` it is an error instead.
    """
    return [ex for _, ex in _mft_rows(Path(path), empty_ok=True)]


def format_mft_line(example: Example) -> str:
    fields = [example.text] + ([example.text_pair] if example.text_pair is not None else [])
    fields += [example.domain, example.label]
    return "\t".join(clean_field(f) for f in fields) + "\n"


def write_mft_tsv(path: str | Path, examples: Iterable[Example]) -> Path:
    """Write examples in the layout format atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for ex in examples:
            fh.write(format_mft_line(ex))
    return path


def _jsonl_rows(path: Path) -> list[tuple[int, Example]]:
    """(line number, Example) of every example line of a JSON Lines file; see :func:`read_jsonl`."""
    out = Collector(path, "", empty_is_error=True)
    for lineno, line in enumerate(read_lines(path, "utf-8"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"invalid JSON ({exc.msg} at column {exc.colno})", lineno) from None
        except (ValueError, RecursionError) as exc:  # e.g. a 5,000-digit number, nesting too deep
            detail = " ".join(str(exc).split())[:80] or type(exc).__name__
            raise DataError(path, f"invalid JSON ({detail})", lineno) from None
        if not isinstance(row, dict):
            raise DataError(path, f"expected a JSON object per line, found {type(row).__name__}", lineno)
        if not isinstance(row.get("text"), str):
            raise DataError(path, "'text' missing or not a string", lineno)
        for key in ("label", "domain"):
            value = row.get(key)
            if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
                raise DataError(path, f"'{key}' missing or empty (expected a string)", lineno)
        pair = row.get("text_pair")
        if pair is not None and not isinstance(pair, str):
            raise DataError(path, "'text_pair' must be a string", lineno)
        out.add(row["text"], str(row["label"]), lineno, pair, domain=str(row["domain"]))
    out.done()
    return list(zip(out.lines, out.examples))


def read_jsonl(path: str | Path) -> list[Example]:
    """Read JSON Lines: one object per line with ``text``, ``label``, ``domain`` (+ optional ``text_pair``).

    ``label`` and ``domain`` may be strings or integers; other keys are ignored. Blank lines are skipped;
    an empty text (after whitespace collapsing) is an error naming the line, as in the layout TSV.
    """
    return [ex for _, ex in _jsonl_rows(Path(path))]


def read_user_rows(path: str | Path) -> list[tuple[int, Example]]:
    """:func:`read_user_file` with the line number of each example (for errors that name a line)."""
    path = Path(path)
    return _jsonl_rows(path) if path.suffix.lower() in (".jsonl", ".json") else _mft_rows(path)


def read_user_file(path: str | Path) -> list[Example]:
    """A user's multi-domain file: ``.jsonl``/``.json`` is JSON Lines, anything else the layout TSV."""
    return [ex for _, ex in read_user_rows(path)]


def sort_labels(labels) -> list[str]:
    """Numeric labels in numeric order, then the others alphabetically."""
    return sorted(labels, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))
