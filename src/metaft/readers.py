"""Readers of the raw published corpora (one per format) and the registry of named domains and groups.

Each reader returns :class:`~metaft.records.Example` records with whitespace-collapsed text and string labels,
following the input rules of :mod:`metaft.records`. Lines are split on ``\\n`` only: ``str.splitlines()``
would also split on 0x85 (NEL), which occurs inside MR and Subj sentences.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .errors import ConfigError, DataError
from .records import Collector, Example, clean_field, read_lines

_AMAZON_LABELS = {"negative": "0", "positive": "1"}  # one label set for every binary sentiment domain
_AMAZON_WRAPPERS = {"", "<data>", "</data>", "<reviews>", "</reviews>"}  # books/positive.review has <data>
# Only the basic XML entities (with their ";") are unescaped; a bare "&" (AT&T) stays as it is.
_ENTITY = re.compile(r"&(quot|amp|lt|gt|apos);|&#([0-9]{1,7});|&#[xX]([0-9a-fA-F]{1,6});")
_NAMED = {"quot": '"', "amp": "&", "lt": "<", "gt": ">", "apos": "'"}


def read_label_lines(path: str | Path, domain: str, encoding: str = "utf-8") -> list[Example]:
    """Read ``<label> <text>`` lines (MR, CR, SST-2 stsa, Subj, MPQA, TREC); split on the first space.

    The label is everything before the first space and may hold no other whitespace; a line without one
    (a blank line included) is an error. Empty texts are skipped with a counted warning.
    """
    path = Path(path)
    out = Collector(path, domain)
    for lineno, line in enumerate(read_lines(path, encoding), start=1):
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
    lines = read_lines(path, "utf-8")
    if not lines:
        raise DataError(path, "no header row (expected 'sentence<TAB>label')", 1)
    header = [cell.strip() for cell in lines[0].split("\t")]
    for column in ("sentence", "label"):
        if column not in header:
            note = " (GLUE test files are unlabelled)" if column == "label" else ""
            raise DataError(path, f"no '{column}' column in the header {_show_header(header)}{note}", 1)
    i_text, i_label = header.index("sentence"), header.index("label")
    out = Collector(path, domain)
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
    out = Collector(path, domain)
    start: int | None = None  # line of the open <review>
    text: list[str] | None = None  # lines of this review's text
    in_text = False
    for lineno, line in enumerate(read_lines(path, "utf-8"), start=1):
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


# Named-domain registry over the shared corpora folder (see its README for the files).

AMAZON_DOMAINS = ("books", "dvd", "electronics", "kitchen")


@dataclass(frozen=True)
class CorpusSpec:
    """A named domain: how to read it and where its test set comes from.

    ``test_files`` is an official test set (the pool is ``files`` minus any test text); without one,
    ``holdout`` examples of ``files`` are held out once with a fixed seed (see :mod:`metaft.domains`).
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
