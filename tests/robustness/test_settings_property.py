"""Issue 19: settings from config files and ``KEY=VALUE`` overrides, with random types and values, give either a
valid config (that survives its own JSON form unchanged) or a one-line ConfigError naming the setting; never
another exception (TypeError, OverflowError, ValueError, ...)."""

from __future__ import annotations

import dataclasses
import json
import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaft.cli import build_parser
from metaft.cli.study import study_config
from metaft.config import FinetuneSettings, MetaSettings, SplitSettings, StudyConfig, TypicalitySettings
from metaft.errors import ConfigError
from metaft.settings import parse_text

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SECTIONS = {"prepare": SplitSettings, "typicality": TypicalitySettings, "meta": MetaSettings,
            "finetune": FinetuneSettings}
TOP = [f.name for f in dataclasses.fields(StudyConfig) if f.name not in SECTIONS]
NAMES = {section: [f.name for f in dataclasses.fields(cls)] for section, cls in SECTIONS.items()}
CHOICES = ["mean", "cls", "grl", "none", "corrupt", "keep", "all", "full", "fp16", "mean-global", "multitask"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(CHOICES + ["inf", "-inf", "nan", "1e-5", "16", "0", "-1", "1,2", "true"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)


@st.composite
def config_mappings(draw) -> dict:
    """A config file's mapping: known top-level and flat (legacy) keys, sections with known keys, and noise."""
    data = {}
    for key in draw(st.lists(st.sampled_from(TOP + NAMES["prepare"]), max_size=4, unique=True)):
        data[key] = draw(values)
    for section in draw(st.lists(st.sampled_from(list(SECTIONS)), max_size=3, unique=True)):
        keys = draw(st.lists(st.sampled_from(NAMES[section]), max_size=4, unique=True))
        data[section] = {k: draw(values) for k in keys} if draw(st.booleans()) else draw(values)
    if draw(st.integers(0, 9)) == 0:
        data[draw(st.text(max_size=8))] = draw(values)
    return data


def _accepted(cfg: StudyConfig) -> None:
    assert isinstance(cfg, StudyConfig)
    again = StudyConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    for name, value in _leaves(cfg.to_dict()):
        assert not (isinstance(value, float) and not math.isfinite(value)), name


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        elif isinstance(v, list):
            yield from ((f"{prefix}{k}", x) for x in v)
        else:
            yield f"{prefix}{k}", v


def _refused(exc: ConfigError) -> None:
    assert "\n" not in str(exc) and str(exc)


@SETTINGS
@given(config_mappings())
def test_any_config_mapping_is_valid_or_a_config_error(data):
    try:
        cfg = StudyConfig.from_dict(data)
    except ConfigError as exc:
        _refused(exc)
    else:
        _accepted(cfg)


@SETTINGS
@given(config_mappings())
def test_any_yaml_file_is_valid_or_a_config_error(tmp_path_factory, data):
    from metaft.config import config_from_file

    path = tmp_path_factory.mktemp("cfg") / "study.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    try:
        cfg = config_from_file(path)
    except ConfigError as exc:
        _refused(exc)
        assert str(exc).startswith(str(path))
    else:
        _accepted(cfg)


key_values = st.tuples(
    st.sampled_from(["typicality", "meta", "finetune"]),
    st.one_of(st.sampled_from(sorted({n for s in ("typicality", "meta", "finetune") for n in NAMES[s]}
                                     | {"seed", "model", "out", "data_dir"})), st.text(max_size=6)),
    st.one_of(st.text(max_size=10), st.sampled_from(CHOICES + ["inf", "nan", "-1", "0", "1e999", "[1,1]", "2,5",
                                                               "[1, 2]", "true", "None", "3.5", "1e-5"])),
)


@SETTINGS
@given(st.lists(key_values, max_size=4))
def test_any_key_value_overrides_are_valid_or_a_config_error(pairs):
    argv = ["run"]
    for section, key, value in pairs:
        argv.append(f"--{section}={key}={value}")
    args = build_parser().parse_args(argv)
    try:
        cfg = study_config(args)
    except ConfigError as exc:
        _refused(exc)
    else:
        _accepted(cfg)
        given = {}  # the last value of each (section, setting), as the CLI reads the pairs
        for section, key, value in pairs:
            name, _, raw = f"{key}={value}".partition("=")
            given[section, name.strip().replace("-", "_")] = raw
        for (section, name), raw in given.items():
            assert getattr(getattr(cfg, section), name) == parse_text(SECTIONS[section], name, raw)
