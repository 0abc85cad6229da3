"""Example records and the MFT layout line format (``text \\t domain \\t label``).

Readers for the raw corpora of ``../shared/data`` live here too (one per format), all returning
:class:`Example` records.
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
    """Collapse tabs/newlines and runs of whitespace so a field fits on one TSV line."""
    return " ".join(value.split())


def read_mft_tsv(path: str | Path) -> list[Example]:
    """Read a layout file: lines ``text \\t domain \\t label`` or ``text \\t text_pair \\t domain \\t label``.

    UTF-8 (a BOM is accepted), ``\\n`` or ``\\r\\n`` line ends. Empty lines are skipped. Any other
    malformed line raises :class:`DataError` naming the file and line.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except OSError as exc:
        raise DataError(path, f"cannot read file ({exc.strerror})") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    examples: list[Example] = []
    seen: dict[str, int] = {}
    for lineno, line_bytes in enumerate(raw.split(b"\n"), start=1):
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                path, f"not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8", lineno
            ) from None
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) == 3:
            text, domain, label = cols
            pair = None
        elif len(cols) == 4:
            text, pair, domain, label = cols
        else:
            raise DataError(
                path, f"expected 3 tab-separated columns (text, domain, label), found {len(cols)}", lineno
            )
        text, domain, label = text.strip(), domain.strip(), label.strip()
        if not text:
            raise DataError(path, "empty text", lineno)
        if not domain:
            raise DataError(path, "empty domain", lineno)
        if not label:
            raise DataError(path, "empty label", lineno)
        base = content_uid(domain, text, pair, label)
        occurrence = seen.get(base, 0)
        seen[base] = occurrence + 1
        examples.append(
            Example(content_uid(domain, text, pair, label, occurrence), text, label, domain, pair)
        )
    return examples


def format_mft_line(example: Example) -> str:
    fields = [example.text] + ([example.text_pair] if example.text_pair is not None else [])
    fields += [example.domain, example.label]
    return "\t".join(clean_field(f) for f in fields) + "\n"


def write_mft_tsv(path: str | Path, examples: Iterable[Example]) -> Path:
    """Write examples in the layout format atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for ex in examples:
            fh.write(format_mft_line(ex))
    tmp.replace(path)
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
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except OSError as exc:
        raise DataError(path, f"cannot read file ({exc.strerror})") from None
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        byte = raw[exc.start : exc.start + 1].hex()
        raise DataError(path, f"cannot decode byte 0x{byte} as {encoding}", line) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    return [line.rstrip("\r") for line in lines]


class _Collector:
    """Builds Examples with content uids (``#n`` for exact repeats) and counts skipped empty texts."""

    def __init__(self, path: Path, domain: str):
        self.path, self.domain = path, domain
        self.examples: list[Example] = []
        self.empty_lines: list[int] = []
        self._seen: dict[str, int] = {}

    def add(
        self, text: str, label: str, lineno: int, text_pair: str | None = None, domain: str | None = None
    ) -> None:
        domain = domain or self.domain
        text = clean_field(text)
        pair = None if text_pair is None else clean_field(text_pair)
        if not text:
            self.empty_lines.append(lineno)
            return
        base = content_uid(domain, text, pair, label)
        occurrence = self._seen.get(base, 0)
        self._seen[base] = occurrence + 1
        uid = content_uid(domain, text, pair, label, occurrence)
        self.examples.append(Example(uid, text, label, domain, pair))

    def done(self) -> list[Example]:
        if self.empty_lines:
            shown = ", ".join(map(str, self.empty_lines[:5])) + (" ..." if len(self.empty_lines) > 5 else "")
            logger.warning("%s: skipped %d empty text(s) (line %s)", self.path, len(self.empty_lines), shown)
        return self.examples


def read_label_lines(path: str | Path, domain: str, encoding: str = "utf-8") -> list[Example]:
    """Read ``<label> <text>`` lines (MR, CR, SST-2 stsa, Subj, MPQA, TREC); split on the first space."""
    path = Path(path)
    out = _Collector(path, domain)
    for lineno, line in enumerate(_read_lines(path, encoding), start=1):
        label, _, text = line.partition(" ")
        if not label.strip() or "\t" in label:
            raise DataError(path, "expected '<label> <text>' (no label at the start of the line)", lineno)
        out.add(text, label, lineno)
    return out.done()


def read_glue_tsv(path: str | Path, domain: str) -> list[Example]:
    """Read a GLUE single-sentence TSV with a header (``sentence``, ``label``), no quoting (QUOTE_NONE).

    The GLUE test files have no ``label`` column; they are rejected (SST-2's test set is GLUE dev).
    """
    path = Path(path)
    lines = _read_lines(path, "utf-8")
    if not lines:
        raise DataError(path, "empty file (expected a header row)", 1)
    header = lines[0].lstrip("\ufeff").split("\t")
    for column in ("sentence", "label"):
        if column not in header:
            note = " (GLUE test files are unlabelled)" if column == "label" else ""
            raise DataError(path, f"no '{column}' column in the header {header}{note}", 1)
    i_text, i_label = header.index("sentence"), header.index("label")
    out = _Collector(path, domain)
    for lineno, line in enumerate(lines[1:], start=2):
        cols = line.split("\t")
        if len(cols) != len(header):
            raise DataError(path, f"expected {len(header)} tab-separated columns, found {len(cols)}", lineno)
        label = cols[i_label].strip()
        if not label:
            raise DataError(path, "empty label", lineno)
        out.add(cols[i_text], label, lineno)
    return out.done()


def _unescape(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return _NAMED[m.group(1)]
        code = int(m.group(2), 10) if m.group(2) else int(m.group(3), 16)
        return chr(code) if 0 < code < 0x110000 else m.group(0)

    return _ENTITY.sub(sub, text)


def read_amazon_reviews(path: str | Path, domain: str, label: str | None = None) -> list[Example]:
    """Read Blitzer et al.'s pseudo-XML ``{positive,negative}.review`` (one ``<review>`` block each).

    Only ``<review_text>`` is used; its newlines are collapsed and basic entities (``&quot;`` ...)
    unescaped. ``label`` defaults to the file name: negative -> "0", positive -> "1".
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


def read_jsonl(path: str | Path) -> list[Example]:
    """Read JSON Lines: one object per line with ``text``, ``label``, ``domain`` (+ optional ``text_pair``)."""
    path = Path(path)
    out = _Collector(path, "")
    for lineno, line in enumerate(_read_lines(path, "utf-8-sig"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"invalid JSON ({exc.msg})", lineno) from None
        if not isinstance(row, dict):
            raise DataError(path, "expected a JSON object per line", lineno)
        if not isinstance(row.get("text"), str):
            raise DataError(path, "'text' missing or not a string", lineno)
        for key in ("label", "domain"):
            value = row.get(key)
            if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
                raise DataError(path, f"'{key}' missing or empty (expected a string)", lineno)
        pair = row.get("text_pair")
        if pair is not None and not isinstance(pair, str):
            raise DataError(path, "'text_pair' must be a string", lineno)
        domain, label = clean_field(str(row["domain"])), clean_field(str(row["label"]))
        out.add(str(row["text"]), label, lineno, pair, domain=domain)
    return out.done()


def read_user_file(path: str | Path) -> list[Example]:
    """A user's multi-domain file: ``.jsonl``/``.json`` is JSON Lines, anything else the layout TSV."""
    path = Path(path)
    return read_jsonl(path) if path.suffix.lower() in (".jsonl", ".json") else read_mft_tsv(path)


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
