"""The :class:`Example` record and the input rules every reader shares (decoding, field cleaning, uids).

Input rules shared by every reader (each problem is a :class:`DataError` ``file:line: problem``, which the
CLI prints as one line and exits with code 2):

* A missing file, a folder or an unreadable file: ``file: file not found`` / ``cannot read file (...)``.
  A zero-length corpus or user file: ``file: file is empty`` (a zero-length layout file read with
  :func:`metaft.corpora.read_mft_tsv` is an empty split and has no examples).
* Encoding: bytes that do not decode (UTF-8 unless the corpus says otherwise) name the line; a UTF-16
  file is recognised by its byte-order mark and refused with a hint. A UTF-8 byte-order mark is accepted
  (also at the start of any line, as in files concatenated from BOM-started ones).
* Lines are split on ``\\n`` only (never ``str.splitlines()``); ``\\r\\n`` line ends are accepted and
  a lone ``\\r`` inside a line counts as whitespace. Every field is whitespace-collapsed
  (:func:`clean_field`), so a parsed example always survives :func:`metaft.corpora.write_mft_tsv` /
  :func:`metaft.corpora.read_mft_tsv` unchanged.
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
* Duplicated lines are kept here (their uids get ``#n``); :mod:`metaft.domains` decides what they mean.
"""

from __future__ import annotations

import hashlib
import logging
import re
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
    """Collapse tabs/newlines and runs of whitespace so a field fits on one TSV line.

    Stray byte-order marks (U+FEFF, e.g. inside files concatenated from BOM-started ones) are dropped.
    """
    return " ".join(value.replace("\ufeff", "").split())


# control characters that str.split() does not treat as whitespace (so clean_field would keep them)
CONTROL_CHARACTERS = re.compile("[\x01-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")


class ControlCharacters:
    """Removes control characters from one file's fields, counting them; a NUL is a DataError."""

    def __init__(self, path: Path):
        self.path, self.count, self.lines = path, 0, []

    def clean(self, lineno: int, value: str | None) -> str | None:
        if value is None:
            return None
        if "\x00" in value:
            raise DataError(self.path, f"NUL character (U+0000) at character {value.index(chr(0)) + 1}: the file "
                                       "looks binary or UTF-16 without a byte-order mark; remove it", lineno)
        cleaned, n = CONTROL_CHARACTERS.subn("", value)
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


def read_bytes(path: Path, utf: bool = True, empty_ok: bool = False) -> bytes:
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


def check_unicode(path: Path, lineno: int, **fields: str | None) -> None:
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


def read_lines(path: str | Path, encoding: str) -> list[str]:
    """Decode a whole file and split it on ``\\n``; errors name the file, line and encoding."""
    path = Path(path)
    utf = encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig")
    raw = read_bytes(path, utf=utf)
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


class Collector:
    """Builds Examples with content uids (``#n`` for exact repeats) and counts skipped empty texts.

    ``empty_is_error`` (users' files): an empty text raises DataError instead of being skipped.
    """

    def __init__(self, path: Path, domain: str, empty_is_error: bool = False):
        self.path, self.domain, self.empty_is_error = path, domain, empty_is_error
        self.examples: list[Example] = []
        self.lines: list[int] = []  # line of each example
        self.empty_lines: list[int] = []
        self._seen: dict[str, int] = {}
        self.controls = ControlCharacters(path)

    def add(
        self, text: str, label: str, lineno: int, text_pair: str | None = None, domain: str | None = None
    ) -> None:
        clean = self.controls.clean
        domain = clean_field(clean(lineno, domain or self.domain))
        label = clean_field(clean(lineno, label))
        text = clean_field(clean(lineno, text))
        pair = None if text_pair is None else clean_field(clean(lineno, text_pair))
        check_unicode(self.path, lineno, text=text, text_pair=pair, label=label, domain=domain)
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
