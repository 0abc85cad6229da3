"""Typed settings declared once: a dataclass field per setting, with its default, help, flags and range.

Every setting is a field made by :func:`setting`; its type annotation (``int``, ``float``, ``Literal[...]`` for
choices, ``tuple[int, ...]`` for lists, ``X | None``) and its metadata drive everything else, so nothing is
restated elsewhere: validation on creation (type, range, finiteness, no duplicates in lists), loading from
YAML/JSON mappings (:meth:`Settings.from_dict`), ``KEY=VALUE`` text (:func:`parse_text`), the argparse flags of
the sub-commands (:func:`add_arguments`) and the "changed settings" check on resume (:meth:`changed_from`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import math
import re
import types
import typing
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any, Literal, Union

from .errors import ConfigError

_NONE = type(None)
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def setting(default: Any = dataclasses.MISSING, *, help: str = "", flags: tuple[str, ...] = (),
            factory: Callable[[], Any] | None = None, gt: float | None = None, ge: float | None = None,
            lt: float | None = None, le: float | None = None, parse: Callable[[Any], Any] | None = None,
            cli: bool = True, nargs: str | None = "+", metavar: str | None = None) -> Any:
    """Declare one setting. ``flags``: its command-line names (default ``--name-with-dashes``; OneFlow aliases go
    here too); ``gt``/``ge``/``lt``/``le``: range of the number (of each item of a list); ``parse``: turns a raw
    value into the typed one first (e.g. ``k: full``); ``cli=False``: not a flag; ``nargs=None``: a list flag
    takes one comma-separated word instead of several words."""
    meta = {"help": help, "flags": flags, "gt": gt, "ge": ge, "lt": lt, "le": le, "parse": parse, "cli": cli,
            "nargs": nargs, "metavar": metavar}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _bad(name: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"{name} must be {what}, got {value!r}")


def _show(value: Any) -> str:
    """A name or value for a one-line message: as it is when plain, else quoted."""
    return str(value) if re.fullmatch(r"[\w.+-]+", str(value)) else repr(value)


def _split_list(text: str) -> list:
    text = text.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            items = None
        if isinstance(items, list):
            return items
    return [x for x in re.split(r"[,\s]+", text) if x]


def convert(value: Any, tp: Any, name: str, text: bool = False) -> Any:
    """``value`` as type ``tp`` or a ConfigError naming ``name``. ``text``: the value is command-line text
    (``"none"``, ``"true"``, ``"1,2"`` are read by the type); numbers are also read from strings, since YAML
    reads ``1e-5`` as one."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if _NONE in args and (value is None or text and str(value).strip().lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not _NONE]
        if value is None:
            raise _bad(name, "set (not empty)", value)
        return convert(value, inner[0], name, text)
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise _bad(name, f"one of {', '.join(map(str, args))}", value)
    if origin is tuple:
        items = (_split_list(value) if isinstance(value, str) else list(value) if isinstance(value, (list, tuple))
                 else [value])
        out = tuple(convert(v, args[0], name, text or isinstance(v, str)) for v in items)
        twice = sorted({_show(v) for v in out if out.count(v) > 1})
        if twice:
            raise ConfigError(f"{name} lists {', '.join(twice)} more than once; give each value once")
        return out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if text and isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise _bad(name, "true or false", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,30}\s*", value):
            return int(value)
        raise _bad(name, "an integer", value)
    if tp is float:
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise _bad(name, "a number", value) from None
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(name, "a number", value)
        try:
            number = float(number)
        except OverflowError:
            raise _bad(name, "a finite number", value) from None
        if not math.isfinite(number):
            raise _bad(name, "a finite number", value)
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise _bad(name, "a string (quote it in YAML)", value)
    if isinstance(tp, type) and issubclass(tp, Settings):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return tp.from_dict(value, prefix=f"{name}.")
        raise _bad(name, f"a mapping of {name} settings", value)
    raise TypeError(f"{name}: unsupported setting type {tp!r}")  # a declaration error, not a user error


def _check_range(f: dataclasses.Field, value: Any, name: str) -> None:
    meta = f.metadata
    for item in value if isinstance(value, tuple) else (value,):
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        for key, op, ok in (("gt", ">", lambda a, b: a > b), ("ge", ">=", lambda a, b: a >= b),
                            ("lt", "<", lambda a, b: a < b), ("le", "<=", lambda a, b: a <= b)):
            bound = meta.get(key)
            if bound is not None and not ok(item, bound):
                raise ConfigError(f"{name} must be {op} {bound:g}, got {item!r}" if isinstance(bound, float)
                                  else f"{name} must be {op} {bound}, got {item!r}")


def check_value(cls: type, f: dataclasses.Field, value: Any, name: str, text: bool = False) -> Any:
    """One setting's value, typed and range-checked (``name`` is how errors call it)."""
    if f.metadata.get("parse") is not None:
        value = f.metadata["parse"](value)
    value = convert(value, hints(cls)[f.name], name, text)
    _check_range(f, value, name)
    return value


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """The resolved type of every field of a settings class."""
    return typing.get_type_hints(cls)


def field_map(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def choices(cls: type, name: str) -> tuple[str, ...]:
    """The choices of a ``Literal`` setting (of a list of them), as declared."""
    tp = hints(cls)[name]
    while typing.get_origin(tp) is not Literal:
        tp = next(a for a in typing.get_args(tp) if a is not _NONE and a is not Ellipsis)
    return typing.get_args(tp)


def default_of(cls: type, name: str) -> Any:
    f = field_map(cls)[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _jsonable(v: Any) -> Any:
    if isinstance(v, Settings):
        return v.to_dict()
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return str(v) if isinstance(v, Path) else v


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


class Settings:
    """Base of the settings dataclasses (frozen, every field made by :func:`setting`)."""

    # settings of a stage that a study sets itself, not its sections: {name: what to use instead}
    MANAGED: typing.ClassVar[dict[str, str]] = {}

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = _merged(type(self), f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, check_value(type(self), f, value, f.name))
        self.check()

    def check(self) -> None:
        """Rules that tie several settings together (none by default)."""

    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in self.values().items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], prefix: str = ""):
        """Build from a mapping (a config file's); unknown keys and bad values are one-line ConfigErrors.
        A settings-valued field takes a mapping merged over its default's values."""
        if not isinstance(data, dict):
            raise _bad(prefix.rstrip(".") or "settings", "a mapping", data)
        fields = field_map(cls)
        unknown(cls, data, prefix)
        kwargs = {}
        for key, value in data.items():
            kwargs[key] = check_value(cls, fields[key], _merged(cls, key, value), f"{prefix}{key}")
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{prefix}{exc}" if prefix else str(exc)) from None

    def changed_from(self, saved: dict[str, Any], ignored: Collection[str] = ()) -> dict[str, tuple[Any, Any]]:
        """Settings that differ from a saved ``config.json``: {dotted name: (saved, now)}. A setting the saved
        file lacks (from a metaft without it) counts as in :meth:`from_saved`, else as its default."""
        defaults = _flat(json.loads(json.dumps(type(self).defaults())))
        now = _flat(json.loads(json.dumps(self.to_dict())))
        old = {**defaults, **_flat(json.loads(json.dumps(_before(type(self), saved))))}
        changed = {}
        for k in sorted(set(old) | set(now)):
            if k.split(".")[0] not in ignored and k not in ignored and old.get(k) != now.get(k):
                changed[k] = (old.get(k), now.get(k))
        return changed

    @classmethod
    def from_saved(cls, data: dict[str, Any]):
        """A saved ``config.json`` read as what its run did: :meth:`from_dict`, a setting it lacks counting as
        ``BEFORE_SETTING`` where the class (or a section's class) says so."""
        return cls.from_dict(_before(cls, data))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The JSON form of every setting's default (settings without a default are left out)."""
        out = {}
        for f in dataclasses.fields(cls):
            v = default_of(cls, f.name)
            if v is not dataclasses.MISSING:
                out[f.name] = _jsonable(v)
        return out

    @staticmethod
    def describe(changed: dict[str, tuple[Any, Any]]) -> str:
        """``name: saved -> now, ...`` for error messages about a :meth:`changed_from` result."""
        return ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _before(cls: type, data: Any) -> Any:
    """``data`` with the ``BEFORE_SETTING`` values of ``cls`` (and of its sections) for settings it lacks."""
    if not isinstance(data, dict):  # from_dict names the error
        return data
    out = {**getattr(cls, "BEFORE_SETTING", {}), **data}
    for name in field_map(cls):
        section = default_of(cls, name)
        if isinstance(section, Settings) and getattr(section, "BEFORE_SETTING", None):
            out[name] = _before(type(section), data.get(name, {}))
    return out


def _merged(cls: type, name: str, value: Any) -> Any:
    """A mapping given for a settings-valued field, completed from that field's default."""
    if not isinstance(value, dict):
        return value
    default = default_of(cls, name)
    return {**default.to_dict(), **value} if isinstance(default, Settings) else value


def unknown(cls: type, keys: Iterable[Any], prefix: str = "") -> None:
    """Refuse keys that are no setting of ``cls``, suggesting the closest name."""
    fields = field_map(cls)
    for key in keys:
        if key in fields:
            continue
        if key in cls.MANAGED:
            raise ConfigError(f"{prefix}{key} is not set here: {cls.MANAGED[key]}")
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        raise ConfigError(f"unknown setting {prefix}{_show(key)}{hint}")


def parse_text(cls: type, key: str, raw: str, prefix: str = "") -> Any:
    """A ``KEY=VALUE`` override's value, read by the type of setting ``key`` of ``cls``."""
    unknown(cls, [key], prefix)
    return check_value(cls, field_map(cls)[key], raw, f"{prefix}{key}", text=True)


def _describe_default(value: Any) -> str | None:
    if value is None or value == "" or isinstance(value, bool) or value == ():
        return None
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _arg_type(cls: type, f: dataclasses.Field, element: bool) -> Callable[[str], Any]:
    tp = hints(cls)[f.name]
    if element:
        tp = next(a for a in typing.get_args(tp) if a is not Ellipsis)

    def parse(text: str) -> Any:
        try:
            value = f.metadata["parse"](text) if f.metadata.get("parse") and not element else text
            return convert(value, tp, f.name, text=True)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = f.name  # argparse names the type in its "invalid value" message
    return parse


def add_arguments(parser, cls: type, names: Iterable[str] | None = None, *, dest_prefix: str = "",
                  defaults_from: Any = None, typed: bool = True) -> None:
    """Add a flag per setting of ``cls`` (or of ``names``) to ``parser``, with ``dest`` the setting name
    (after ``dest_prefix``). Unset flags leave the attribute out (argparse.SUPPRESS), so the dataclass default
    applies; the help shows that default (``defaults_from``: an instance whose values to show instead).
    ``typed=False`` leaves the values as text for the settings class to read (its errors are one line)."""
    fields = field_map(cls)
    for name in names if names is not None else fields:
        f = fields[name]
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        tp = hints(cls)[name]
        default = getattr(defaults_from, name) if defaults_from is not None else default_of(cls, name)
        flags = meta.get("flags") or (f"--{name.replace('_', '-')}",)
        kw: dict[str, Any] = {"dest": dest_prefix + name, "default": argparse.SUPPRESS}
        shown = _describe_default(default)
        help_text = meta.get("help", "")
        if tp is bool:
            kw["action"] = "store_false" if default else "store_true"
        else:
            is_list = typing.get_origin(tp) is tuple
            element = is_list and meta.get("nargs") == "+"
            if typed:
                kw["type"] = _arg_type(cls, f, element)
            if element:
                kw["nargs"] = "+"
            if meta.get("metavar") or dest_prefix:
                kw["metavar"] = meta.get("metavar") or name.upper()
            literal = tp if typing.get_origin(tp) is Literal else None
            if literal is not None and typed:
                kw["choices"] = typing.get_args(literal)
            if shown is not None and "(default" not in help_text:
                help_text = f"{help_text} (default: {shown})" if help_text else f"default: {shown}"
        if meta.get("nargs") == "?":
            kw.update(nargs="?", const=default)
        kw["help"] = help_text.replace("%", "%%")
        parser.add_argument(*flags, **kw)


def from_args(cls: type, args: argparse.Namespace, **values: Any):
    """``cls`` built from the parsed flags that name its settings (unset flags keep its defaults)."""
    names = field_map(cls)
    return cls(**{**{k: v for k, v in vars(args).items() if k in names}, **values})


# ------------------------------------------------------------------------------- value parsers of settings

def _positive_or(value: Any, word: str, name: str) -> int | None:
    """A positive integer, or None for ``word`` (or None)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == word):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        number = 0
    if isinstance(value, bool) or number <= 0 or str(number) != str(value).strip():
        raise ConfigError(f"{name} must be a positive integer or '{word}', got {value!r}")
    return number


def parse_k(value: Any) -> int | None:
    """K, examples per label and domain: a positive integer, or None / "full" for the whole pool."""
    return _positive_or(value, "full", "k")


def parse_pack(value: Any) -> int | None:
    """A study's ``pack``: a positive integer, or None / "auto" for the automatic choice."""
    return _positive_or(value, "auto", "pack")
