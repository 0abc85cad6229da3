"""Issue 19, class 7: ``metaft report`` checks study.json before it trusts it: a missing or mistyped field,
or an accuracy that is not a finite number in [0, 1], is one line naming study.json and the problem."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaft.cli import main
from metaft.errors import DataError
from metaft.report import check_study, render, summarise
from metaft.results import read_study


def good_study() -> dict:
    units = [{"seed": s, "variant": v, "domain": d, "test_accuracy": acc, "test_n": 100, "wall_time_s": 1.0}
             for s in (1, 2) for d in ("A", "B") for v, acc in (("baseline", 0.6 + s / 100), ("mft", 0.7))]
    return {"config": {"group": "g", "domains": ["A", "B"], "seeds": [1, 2], "k": 4, "ablations": []},
            "units": units, "meta": [{"seed": s, "variant": "mft", "dev_accuracy": 0.8} for s in (1, 2)],
            "typicality": [], "pca": []}


def report_error(capsys, tmp_path: Path, study) -> str:
    (tmp_path / "study.json").write_text(json.dumps(study), encoding="utf-8")
    capsys.readouterr()
    assert main(["-q", "report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"metaft: error: {tmp_path}/study.json: "), err
    assert not (tmp_path / "report.md").exists()
    return err.removeprefix(f"metaft: error: {tmp_path}/study.json: ")


def test_a_good_study_gives_a_report(tmp_path, capsys):
    (tmp_path / "study.json").write_text(json.dumps(good_study()))
    assert main(["-q", "report", str(tmp_path)]) == 0
    assert "MFT beats the baseline on every domain" in (tmp_path / "report.md").read_text()


def _set(path: str, value):
    def change(study: dict) -> dict:
        *keys, last = path.split(".")
        node = study
        for key in keys:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            last = int(last)
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
        return study
    return change


CASES = [
    (_set("units", "oops"), "'units' must be a list, found str"),
    (_set("units", {"a": 1}), "'units' must be a list, found dict"),
    (_set("units.1", ["x"]), "units[1] must be an object, found list"),
    (_set("units.1.test_accuracy", KeyError), "units[1].test_accuracy: expected a number, found missing"),
    (_set("units.2.test_accuracy", "0.7"), "units[2].test_accuracy: expected a number, found str '0.7'"),
    (_set("units.2.test_accuracy", True), "units[2].test_accuracy: expected a number, found bool True"),
    (_set("units.0.seed", KeyError), "units[0].seed: expected int, found missing"),
    (_set("units.0.variant", None), "units[0].variant: expected str, found NoneType None"),
    (_set("units.3.domain", 7), "units[3].domain: expected str, found int 7"),
    (_set("units.1.test_accuracy", float("nan")), "units[1] (seed 1, mft, A): test_accuracy nan is not an "
                                                  "accuracy (a finite number in [0, 1]); redo that unit"),
    (_set("units.1.test_accuracy", float("inf")), "units[1] (seed 1, mft, A): test_accuracy inf is not"),
    (_set("units.0.test_accuracy", 1.5), "units[0] (seed 1, baseline, A): test_accuracy 1.5 is not"),
    (_set("units.0.test_accuracy", -0.1), "units[0] (seed 1, baseline, A): test_accuracy -0.1 is not"),
    (_set("units.0.test_n", "many"), "units[0].test_n: expected a number >= 0, found 'many'"),
    (_set("units.0.wall_time_s", float("nan")), "units[0].wall_time_s: expected a number >= 0, found nan"),
    (_set("meta.1.dev_accuracy", float("nan")), "meta[1] (seed 2, mft): dev_accuracy nan is not an accuracy"),
    (_set("meta", "x"), "'meta' must be a list, found str"),
    (_set("typicality", [{"seed": 1}]), "typicality[0].path: expected str, found missing"),
    (_set("pca", [3]), "pca[0] must be an object, found int"),
    (_set("config", "oops"), "'config' must be an object"),
    (lambda study: [study], "expected a JSON object, found list"),
]


@pytest.mark.parametrize(("change", "problem"), CASES)
def test_a_bad_study_json_is_one_line_naming_the_problem(change, problem, tmp_path, capsys):
    err = report_error(capsys, tmp_path, change(good_study()))
    assert err.startswith(problem), err


def test_a_nan_accuracy_never_reaches_the_reading(tmp_path, capsys):
    """The issue's case: "nan" in the table while the reading said MFT beats the baseline everywhere."""
    study = good_study()
    study["units"][1]["test_accuracy"] = float("nan")
    report_error(capsys, tmp_path, study)
    assert not (tmp_path / "report.md").exists()


def test_unreadable_study_json(tmp_path, capsys):
    (tmp_path / "study.json").write_bytes(b"\xff\xfe{")
    capsys.readouterr()
    assert main(["-q", "report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"metaft: error: {tmp_path}/study.json: cannot read it")


# ------------------------------------------------------------------------------------------ fuzzing

scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(), st.text(max_size=4))
value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["seed", "variant", "domain", "test_accuracy", "path", "x"]), inner, max_size=3), max_leaves=6)
PATHS = ["units", "units.0", "units.1.test_accuracy", "units.2.seed", "units.3.variant", "units.0.domain",
         "units.1.test_n", "meta", "meta.0.dev_accuracy", "meta.1.variant", "typicality", "pca", "config"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.sampled_from(PATHS), value), min_size=1, max_size=3))
def test_fuzzed_study_json_reports_or_gives_one_line(tmp_path, changes):
    study = copy.deepcopy(good_study())
    try:
        for path, new in changes:
            study = _set(path, new)(study)
    except (KeyError, IndexError, TypeError, ValueError):
        return  # an earlier change removed the place of a later one
    path = tmp_path / "study.json"
    try:
        checked = check_study(path, study)
    except DataError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
        return
    if not checked["units"]:
        return  # write_report refuses a study without results
    path.write_text(json.dumps(study))
    typed = read_study(path)  # what the report is made from, once the checks passed
    assert "## Per-domain test accuracy" in render(typed, summarise(typed), [])
    for u in checked["units"]:
        assert math.isfinite(u["test_accuracy"]) and 0 <= u["test_accuracy"] <= 1
