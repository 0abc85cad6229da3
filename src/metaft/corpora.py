"""Example records and the MFT layout line format (``text \\t domain \\t label``).

Readers for the raw corpora of ``../shared/data`` live here too (one per format), all returning
:class:`Example` records.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

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
            raise DataError(path, f"not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8", lineno) from None
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
        examples.append(Example(content_uid(domain, text, pair, label, occurrence), text, label, domain, pair))
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
