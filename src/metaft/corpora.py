"""Example records and the MFT layout line format (``text \\t domain \\t label``).

Readers for the raw corpora of ``../shared/data`` live here too (one per format), all returning
:class:`Example` records.

Input rules shared by every reader (each problem is a :class:`DataError` ``file:line: problem``, which the
CLI prints as one line and exits with code 2):

* A missing file, a folder or an unreadable file: ``file: file not found`` / ``cannot read file (...)``.
  A zero-length corpus or user file: ``file: file is empty`` (a zero-length layout file read with
  :func:`read_mft_tsv` is an empty split and has no examples).
* Encoding: bytes that do not decode (UTF-8 unless the corpus says otherwise) name the line; a UTF-16
  file is recognised by its byte-order mark and refused with a hint. A UTF-8 byte-order mark is accepted
  (also at the start of any line, as in files concatenated from BOM-started ones).
* Lines are split on ``\\n`` only (never ``str.splitlines()``); ``\\r\\n`` line ends are accepted and
  a lone ``\\r`` inside a line counts as whitespace. Every field is whitespace-collapsed
  (:func:`clean_field`), so a parsed example always survives :func:`write_mft_tsv` /
  :func:`read_mft_tsv` unchanged.
* Empty texts: in the published raw corpora (CR and MPQA have a few) they are skipped with one counted
  warning per file; in a user's file (layout TSV or JSON Lines) they are an error naming the line, since
  they usually mean a broken export. Blank lines are skipped, except in ``<label> <text>`` files where
  a blank line is a line without its label.
* Strings that are not valid Unicode (lone surrogates, e.g. a JSON ``"\\ud800"`` or ``&#xD800;``) are
  refused rather than passed on to fail later.
* Control characters: a NUL (U+0000) is refused naming the line (it means a binary or UTF-16 file, and
  C libraries cut strings at it); the other control characters that are not whitespace (U+0001-U+0008,
  U+000E-U+001B, U+007F-U+009F but U+0085) are removed with one counted warning per file (tokenisers drop
  them anyway; the published Amazon reviews hold a few U+001A where an accented letter was lost).
* Duplicated lines are kept here (their uids get ``#n``); :mod:`metaft.splits` decides what they mean.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .errors import ConfigError, DataError
from .fileio import atomic_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One labelled example of one domain. ``uid`` is stable across runs and machines."""

    uid: str
    text: str
    label: str
    domain: str
    text_pair: str | None = None


def content_uid(domain: str, text: str, text_pair: str | None, label: str, occurrence: int = 0) -> str:
    """Content-derived uid: a hash of the fields, plus ``#n`` for the n-th exact repeat in one file."""
    key = "\x1f".join([domain, text, text_pair or "", label])
    uid = hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]
    return uid if occurrence == 0 else f"{uid}#{occurrence}"


def clean_field(value: str) -> str:
    """Collapse tabs/newlines and runs of whitespace so a field fits on one TSV line.

    Stray byte-order marks (U+FEFF, e.g. inside files concatenated from BOM-started ones) are dropped.
    """
    return " ".join(value.replace("\ufeff", "").split())


# control characters that str.split() does not treat as whitespace (so clean_field would keep them)
_CONTROL = re.compile("[\x01-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")


class _Controls:
    """Removes control characters from one file's fields, counting them; a NUL is a DataError."""

    def __init__(self, path: Path):
        self.path, self.count, self.lines = path, 0, []

    def clean(self, lineno: int, value: str | None) -> str | None:
        if value is None:
            return None
        if "\x00" in value:
            raise DataError(self.path, f"NUL character (U+0000) at character {value.index(chr(0)) + 1}: the file "
                                       "looks binary or UTF-16 without a byte-order mark; remove it", lineno)
        cleaned, n = _CONTROL.subn("", value)
        if n:
            self.count += n
            if not self.lines or self.lines[-1] != lineno:
                self.lines.append(lineno)
        return cleaned

    def report(self) -> None:
        if self.count:
            shown = ", ".join(map(str, self.lines[:5])) + (" ..." if len(self.lines) > 5 else "")
            logger.warning("%s: removed %d control character(s) from %d line(s) (line %s)", self.path,
                           self.count, len(self.lines), shown)


def _read_bytes(path: Path, utf: bool = True, empty_ok: bool = False) -> bytes:
    """The file's bytes; DataError for a missing, unreadable or (unless ``empty_ok``) zero-length file,
    or when ``utf``, a UTF-16 one."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except OSError as exc:
        raise DataError(path, f"cannot read file ({exc.strerror or exc})") from None
    if not raw and not empty_ok:
        raise DataError(path, "file is empty")
    if utf and raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(
            path, "file is UTF-16 (it starts with a UTF-16 byte-order mark); re-save it as UTF-8", 1
        )
    return raw


def _check_unicode(path: Path, lineno: int, **fields: str | None) -> None:
    """DataError when a field holds a lone surrogate (possible after JSON escapes or XML entities)."""
    for name, value in fields.items():
        if value is None:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(value[exc.start])
            raise DataError(
                path, f"{name} holds an invalid character U+{code:04X} (a lone surrogate)", lineno
            ) from None


def _mft_rows(path: Path, empty_ok: bool = False) -> list[tuple[int, Example]]:
    """(line number, Example) of every example line of a layout file; see :func:`read_mft_tsv`."""
    raw = _read_bytes(path, empty_ok=empty_ok)
    rows: list[tuple[int, Example]] = []
    seen: dict[str, int] = {}
    controls = _Controls(path)
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


# --------------------------------------------------------------------------------------------------
# Raw corpus readers. Each returns Example records with whitespace-collapsed text (clean_field) and
# string labels. Lines are split on "\n" only: str.splitlines() would also split on 0x85 (NEL), which
# occurs inside MR and Subj sentences.

_AMAZON_LABELS = {"negative": "0", "positive": "1"}  # one label set for every binary sentiment domain
_AMAZON_WRAPPERS = {"", "<data>", "</data>", "<reviews>", "</reviews>"}  # books/positive.review has <data>
# Only the basic XML entities (with their ";") are unescaped; a bare "&" (AT&T) stays as it is.
_ENTITY = re.compile(r"&(quot|amp|lt|gt|apos);|&#([0-9]{1,7});|&#[xX]([0-9a-fA-F]{1,6});")
_NAMED = {"quot": '"', "amp": "&", "lt": "<", "gt": ">", "apos": "'"}


def _read_lines(path: str | Path, encoding: str) -> list[str]:
    """Decode a whole file and split it on ``\\n``; errors name the file, line and encoding."""
    path = Path(path)
    utf = encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig")
    raw = _read_bytes(path, utf=utf)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        byte = raw[exc.start : exc.start + 1].hex()
        raise DataError(path, f"cannot decode byte 0x{byte} as {encoding}", line) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    if utf:  # a BOM may also start a line of files concatenated from BOM-started ones
        return [line.rstrip("\r").lstrip("\ufeff") for line in lines]
    return [line.rstrip("\r") for line in lines]


class _Collector:
    """Builds Examples with content uids (``#n`` for exact repeats) and counts skipped empty texts.

    ``empty_is_error`` (users' files): an empty text raises DataError instead of being skipped.
    """

    def __init__(self, path: Path, domain: str, empty_is_error: bool = False):
        self.path, self.domain, self.empty_is_error = path, domain, empty_is_error
        self.examples: list[Example] = []
        self.lines: list[int] = []  # line of each example
        self.empty_lines: list[int] = []
        self._seen: dict[str, int] = {}
        self.controls = _Controls(path)

    def add(
        self, text: str, label: str, lineno: int, text_pair: str | None = None, domain: str | None = None
    ) -> None:
        clean = partial(self.controls.clean, lineno)
        domain = clean_field(clean(domain or self.domain))
        label = clean_field(clean(label))
        text = clean_field(clean(text))
        pair = None if text_pair is None else clean_field(clean(text_pair))
        _check_unicode(self.path, lineno, text=text, text_pair=pair, label=label, domain=domain)
        if not text:
            if self.empty_is_error:
                raise DataError(self.path, "empty text", lineno)
            self.empty_lines.append(lineno)
            return
        if pair == "":
            raise DataError(self.path, "empty text_pair", lineno)
        if not label or not domain:
            raise DataError(self.path, f"empty {'label' if not label else 'domain'}", lineno)
        base = content_uid(domain, text, pair, label)
        occurrence = self._seen.get(base, 0)
        self._seen[base] = occurrence + 1
        uid = content_uid(domain, text, pair, label, occurrence)
        self.examples.append(Example(uid, text, label, domain, pair))
        self.lines.append(lineno)

    def done(self) -> list[Example]:
        self.controls.report()
        if self.empty_lines:
            shown = ", ".join(map(str, self.empty_lines[:5])) + (" ..." if len(self.empty_lines) > 5 else "")
            logger.warning("%s: skipped %d empty text(s) (line %s)", self.path, len(self.empty_lines), shown)
        return self.examples


def read_label_lines(path: str | Path, domain: str, encoding: str = "utf-8") -> list[Example]:
    """Read ``<label> <text>`` lines (MR, CR, SST-2 stsa, Subj, MPQA, TREC); split on the first space.

    The label is everything before the first space and may hold no other whitespace; a line without one
    (a blank line included) is an error. Empty texts are skipped with a counted warning.
    """
    path = Path(path)
    out = _Collector(path, domain)
    for lineno, line in enumerate(_read_lines(path, encoding), start=1):
        label, _, text = line.partition(" ")
        if not label or any(c.isspace() for c in label):
            raise DataError(path, "expected '<label> <text>' (no label at the start of the line)", lineno)
        out.add(text, label, lineno)
    return out.done()


def _show_header(header: list[str]) -> str:
    cells = [repr(c[:30] + ("..." if len(c) > 30 else "")) for c in header[:6]]
    return "[" + ", ".join(cells) + (", ...]" if len(header) > 6 else "]")


def read_glue_tsv(path: str | Path, domain: str) -> list[Example]:
    """Read a GLUE single-sentence TSV with a header (``sentence``, ``label``), no quoting (QUOTE_NONE).

    The GLUE test files have no ``label`` column; they are rejected (SST-2's test set is GLUE dev).
    Blank lines are skipped; every other line needs the header's column count and a non-empty label.
    """
    path = Path(path)
    lines = _read_lines(path, "utf-8")
    if not lines:
        raise DataError(path, "no header row (expected 'sentence<TAB>label')", 1)
    header = [cell.strip() for cell in lines[0].split("\t")]
    for column in ("sentence", "label"):
        if column not in header:
            note = " (GLUE test files are unlabelled)" if column == "label" else ""
            raise DataError(path, f"no '{column}' column in the header {_show_header(header)}{note}", 1)
    i_text, i_label = header.index("sentence"), header.index("label")
    out = _Collector(path, domain)
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != len(header):
            raise DataError(path, f"expected {len(header)} tab-separated columns, found {len(cols)}", lineno)
        label = clean_field(cols[i_label])
        if not label:
            raise DataError(path, "empty label", lineno)
        out.add(cols[i_text], label, lineno)
    return out.done()


def _unescape(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return _NAMED[m.group(1)]
        code = int(m.group(2), 10) if m.group(2) else int(m.group(3), 16)
        valid = 0 < code < 0x110000 and not 0xD800 <= code <= 0xDFFF  # no NUL, no lone surrogates
        return chr(code) if valid else m.group(0)

    return _ENTITY.sub(sub, text)


def read_amazon_reviews(path: str | Path, domain: str, label: str | None = None) -> list[Example]:
    """Read Blitzer et al.'s pseudo-XML ``{positive,negative}.review`` (one ``<review>`` block each).

    Only ``<review_text>`` is used; its newlines are collapsed and basic entities (``&quot;`` ...)
    unescaped (numeric ones only when they name a valid character). ``label`` defaults to the file name:
    negative -> "0", positive -> "1".
    """
    path = Path(path)
    if label is None:
        if path.stem not in _AMAZON_LABELS:
            raise DataError(path, "cannot tell the label: name the file positive.review or negative.review")
        label = _AMAZON_LABELS[path.stem]
    out = _Collector(path, domain)
    start: int | None = None  # line of the open <review>
    text: list[str] | None = None  # lines of this review's text
    in_text = False
    for lineno, line in enumerate(_read_lines(path, "utf-8"), start=1):
        tag = line.strip()
        if in_text:
            if tag == "</review_text>":
                in_text = False
            else:
                text.append(line)
        elif start is None:
            if tag == "<review>":
                start, text = lineno, None
            elif tag not in _AMAZON_WRAPPERS:
                raise DataError(path, f"unexpected line outside a <review> block: {tag[:40]!r}", lineno)
        elif tag == "<review>":
            raise DataError(path, f"<review> opened before the one of line {start} was closed", lineno)
        elif tag == "<review_text>":
            in_text, text = True, []
        elif tag == "</review>":
            if text is None:
                raise DataError(path, "review without <review_text>", start)
            out.add(_unescape("\n".join(text)), label, start)
            start = None
    if start is not None:
        raise DataError(path, "<review> never closed (truncated file?)", start)
    return out.done()


def _jsonl_rows(path: Path) -> list[tuple[int, Example]]:
    """(line number, Example) of every example line of a JSON Lines file; see :func:`read_jsonl`."""
    out = _Collector(path, "", empty_is_error=True)
    for lineno, line in enumerate(_read_lines(path, "utf-8"), start=1):
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


# --------------------------------------------------------------------------------------------------
# Named-domain registry over the shared corpora folder (see its README for the files).

AMAZON_DOMAINS = ("books", "dvd", "electronics", "kitchen")


@dataclass(frozen=True)
class CorpusSpec:
    """A named domain: how to read it and where its test set comes from.

    ``test_files`` is an official test set (the pool is ``files`` minus any test text); without one,
    ``holdout`` examples of ``files`` are held out once with a fixed seed (see :mod:`metaft.splits`).
    """

    name: str
    reader: Callable[[Path, str], list[Example]]
    files: tuple[str, ...]  # relative to the corpora root
    test_files: tuple[str, ...] = ()
    holdout: int = 0

    def read(self, root: Path) -> tuple[list[Example], list[Example]]:
        """(pool, official test set; empty when the test set is a hold-out)."""
        pool = [ex for rel in self.files for ex in self.reader(root / rel, self.name)]
        test = [ex for rel in self.test_files for ex in self.reader(root / rel, self.name)]
        return pool, test


_cp1252 = partial(read_label_lines, encoding="cp1252")
DOMAINS: dict[str, CorpusSpec] = {
    spec.name: spec
    for spec in (
        CorpusSpec("SST-2", read_glue_tsv, ("sst2/glue/train.tsv",), ("sst2/glue/dev.tsv",)),
        CorpusSpec("MR", _cp1252, ("mr/rt-polarity.all",), holdout=2000),
        CorpusSpec("CR", read_label_lines, ("cr/custrev.all",), holdout=2000),
        CorpusSpec("MPQA", read_label_lines, ("mpqa/mpqa.all",), holdout=2000),
        CorpusSpec("Subj", _cp1252, ("subj/subj.all",), holdout=2000),
        CorpusSpec(
            "TREC",
            partial(read_label_lines, encoding="latin-1"),
            ("trec/TREC.train.all",),
            ("trec/TREC.test.all",),
        ),
        *(
            CorpusSpec(
                d,
                read_amazon_reviews,
                (f"amazon/{d}/negative.review", f"amazon/{d}/positive.review"),
                holdout=400,
            )
            for d in AMAZON_DOMAINS
        ),
    )
}
GROUPS: dict[str, tuple[str, ...]] = {"g1": ("SST-2", "MR", "CR"), "amazon": AMAZON_DOMAINS}


def lookup_domain(name: str) -> CorpusSpec:
    """The registered domain ``name`` (case-insensitive); ConfigError lists the known names."""
    for key, spec in DOMAINS.items():
        if key.lower() == name.strip().lower():
            return spec
    raise ConfigError(f"unknown domain {name!r}; known domains: {', '.join(DOMAINS)}")


def lookup_group(name: str) -> tuple[str, ...]:
    """The domains of the predefined group ``name`` (case-insensitive)."""
    for key, domains in GROUPS.items():
        if key.lower() == name.strip().lower():
            return domains
    raise ConfigError(
        f"unknown group {name!r}; known groups: {', '.join(GROUPS)} (or give --domains / --input)"
    )


def corpora_root(corpora: str | Path | None = None) -> Path:
    """``corpora``, else ``$METAFT_CORPORA``; ConfigError when neither is set or the folder is missing."""
    value = corpora if corpora else os.environ.get("METAFT_CORPORA")
    if not value:
        raise ConfigError("no corpora folder: pass --corpora DIR or set METAFT_CORPORA")
    root = Path(value).expanduser()
    if not root.is_dir():
        raise ConfigError(f"corpora folder {root} does not exist (from --corpora or METAFT_CORPORA)")
    return root
