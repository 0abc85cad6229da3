from __future__ import annotations

import json
import math
import random
import re
import statistics

import pytest
from PIL import Image

from metaft.cli import main
from metaft.report import summarise, write_report
from metaft.results import StudyResults, UnitRecord, read_study

DOMAINS = ["SST-2", "MR", "CR"]
VARIANTS = ["baseline", "mft", "no-typicality"]
SEEDS = [13, 21, 42]


@pytest.fixture()
def synthetic_run(tmp_path):
    rng = random.Random(5)
    units, meta, typ, pca = [], [], [], []
    for seed in SEEDS:
        for v in VARIANTS[1:]:
            path = tmp_path / f"seed-{seed}" / "meta" / v
            path.mkdir(parents=True)
            (path / "metrics.jsonl").write_text(
                "".join(json.dumps({"step": s, "dev_accuracy": rng.random()}) + "\n" for s in (10, 20, 30)))
            meta.append({"seed": seed, "variant": v, "dev_accuracy": rng.random(), "wall_time_s": 3.0,
                         "path": str(path.relative_to(tmp_path))})
        for d in DOMAINS:
            for v in VARIANTS:
                path = tmp_path / f"seed-{seed}" / "finetune" / v / d
                path.mkdir(parents=True)
                (path / "metrics.jsonl").write_text(
                    "".join(json.dumps({"step": s, "dev_accuracy": rng.random()}) + "\n" for s in (5, 10)))
                units.append({"seed": seed, "variant": v, "domain": d, "test_accuracy": round(rng.uniform(0.5, 0.9), 4),
                              "test_macro_f1": 0.5, "dev_accuracy": 0.6, "wall_time_s": 1.0,
                              "path": str(path.relative_to(tmp_path))})
        tsv = tmp_path / f"typ-{seed}.tsv"
        tsv.write_text("uid\tdomain\tlabel\tscore\n" + "".join(
            f"u{i}\t{DOMAINS[i % 3]}\t{i % 2}\t{rng.random():.6f}\n" for i in range(30)))
        typ.append({"seed": seed, "path": tsv.name, "wall_time_s": 1.0})
    pts = [[rng.random(), rng.random()] for _ in range(12)]
    (tmp_path / "pca.json").write_text(json.dumps({"domains": [DOMAINS[i % 3] for i in range(12)], "before": pts,
                                                   "after": pts, "before_domain_separation": 0.9,
                                                   "after_domain_separation": 0.5}))
    pca.append({"seed": 13, "path": "pca.json"})
    study = {"config": {"group": "g1", "k": 16, "model": "minilm"}, "units": units, "meta": meta,
             "typicality": typ, "pca": pca}
    (tmp_path / "study.json").write_text(json.dumps(study))
    return tmp_path, study


def _table_rows(report: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in DOMAINS:
            rows[(cells[0], cells[1])] = cells
    return rows


def interval_of(diffs: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval in points, computed here from the textbook formula."""
    t975 = {2: 4.303, 1: 12.706}[len(diffs) - 1]
    mean, half = statistics.mean(diffs), t975 * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return 100 * mean, 100 * (mean - half), 100 * (mean + half)


def parse_delta(cell: str) -> tuple[float, float, float]:
    """``+1.23 [-0.40, +2.86]`` -> (1.23, -0.40, 2.86)."""
    m = re.fullmatch(r"([+-]\d+\.\d\d) \[([+-]\d+\.\d\d), ([+-]\d+\.\d\d)\]", cell)
    assert m, cell
    return float(m[1]), float(m[2]), float(m[3])


def test_report_numbers_equal_an_independent_computation(synthetic_run):
    run, study = synthetic_run
    report = write_report(run).read_text()
    rows = _table_rows(report)
    assert len(rows) == len(DOMAINS) * len(VARIANTS)
    for d in DOMAINS:
        base = {u["seed"]: u["test_accuracy"] for u in study["units"] if u["domain"] == d and u["variant"] == "baseline"}
        for v in VARIANTS:
            accs = {u["seed"]: u["test_accuracy"] for u in study["units"] if u["domain"] == d and u["variant"] == v}
            vals = [accs[s] for s in SEEDS]
            mean_txt, std_txt = rows[(d, v)][2].split(" ± ")
            assert float(mean_txt) == pytest.approx(100 * statistics.mean(vals), abs=0.006)
            assert float(std_txt) == pytest.approx(100 * statistics.stdev(vals), abs=0.006)  # sample std
            if v != "baseline":
                diffs = [accs[s] - base[s] for s in SEEDS]
                assert parse_delta(rows[(d, v)][4]) == pytest.approx(interval_of(diffs), abs=0.006)
                wins, losses, ties = (int(x) for x in rows[(d, v)][5].split(" / "))
                assert (wins, losses, ties) == (sum(x > 0 for x in diffs), sum(x < 0 for x in diffs),
                                                sum(x == 0 for x in diffs))
    assert "ddof = 1" in report and "95 % paired t-interval" in report


def test_the_frozen_lr_reference_row_compares_the_baseline_with_it(synthetic_run):
    run, study = synthetic_run
    study["frozen_lr"] = [{"seed": s, "domain": d, "test_accuracy": 0.7 + 0.01 * i, "dev_accuracy": 0.6, "C": 1.0}
                          for i, (s, d) in enumerate((s, d) for s in SEEDS for d in DOMAINS)]
    (run / "study.json").write_text(json.dumps(study))
    rows = _table_rows(write_report(run).read_text(encoding="utf-8"))
    for d in DOMAINS:
        ref = {r["seed"]: r["test_accuracy"] for r in study["frozen_lr"] if r["domain"] == d}
        base = {u["seed"]: u["test_accuracy"] for u in study["units"] if u["domain"] == d and u["variant"] == "baseline"}
        cells = rows[(d, "frozen-LR")]
        assert cells[2].startswith(f"{statistics.mean(ref.values()) * 100:.2f} ± ")
        diffs = [base[s] - ref[s] for s in SEEDS]
        assert cells[4].startswith("baseline ")
        assert parse_delta(cells[4].removeprefix("baseline ")) == pytest.approx(interval_of(diffs), abs=0.006)
        assert cells[5] == f"{sum(x > 0 for x in diffs)} / {sum(x < 0 for x in diffs)} / 0"
    assert "frozen-LR" not in summarise(read_study(run / "study.json"))["variants"]  # a reference row, not a variant


def test_ablations_are_compared_with_full_mft(synthetic_run):
    run, study = synthetic_run
    report = write_report(run).read_text()
    rows = {}
    for line in report.split("## Ablations against full MFT")[1].split("##")[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in DOMAINS:
            rows[(cells[0], cells[1])] = cells
    assert set(rows) == {(d, "no-typicality") for d in DOMAINS}
    for d in DOMAINS:
        acc = {v: {u["seed"]: u["test_accuracy"] for u in study["units"] if u["domain"] == d and u["variant"] == v}
               for v in ("mft", "no-typicality")}
        diffs = [acc["no-typicality"][s] - acc["mft"][s] for s in SEEDS]
        assert parse_delta(rows[(d, "no-typicality")][2]) == pytest.approx(interval_of(diffs), abs=0.006)
        assert rows[(d, "no-typicality")][3] == f"{sum(x > 0 for x in diffs)} / {sum(x < 0 for x in diffs)} / " \
                                               f"{sum(x == 0 for x in diffs)}"


def test_every_plot_is_a_valid_png(synthetic_run):
    run, _ = synthetic_run
    report = write_report(run).read_text()
    for name in ("accuracy.png", "curves.png", "typicality.png", "pca.png"):
        assert f"({name})" in report
        with Image.open(run / name) as img:
            img.verify()
            assert img.format == "PNG"


def test_single_seed_std_is_a_dash():
    study = StudyResults(units=[UnitRecord(1, "baseline", "A", 0.5), UnitRecord(1, "mft", "A", 0.75)])
    rows = summarise(study)["rows"]
    assert rows[0]["std"] is None and rows[1]["delta_mean"] == pytest.approx(0.25)
    assert rows[0]["mean_low"] is None and rows[1]["delta_low"] is None and rows[1]["n"] == 1


def test_the_summary_carries_the_intervals():
    units = [UnitRecord(s, v, "A", acc) for s, b, m, a in ((1, 0.50, 0.51, 0.49), (2, 0.60, 0.62, 0.58),
                                                           (3, 0.70, 0.73, 0.71))
             for v, acc in (("baseline", b), ("mft", m), ("no-typicality", a))]
    rows = {r["variant"]: r for r in summarise(StudyResults(units=units))["rows"]}
    half = 4.303 * 0.01 / math.sqrt(3)  # MFT − baseline: 1, 2, 3 points
    assert rows["mft"]["delta_mean"] == pytest.approx(0.02)
    assert (rows["mft"]["delta_low"], rows["mft"]["delta_high"]) == pytest.approx((0.02 - half, 0.02 + half))
    assert (rows["mft"]["wins"], rows["mft"]["losses"], rows["mft"]["ties"]) == (3, 0, 0)
    vs_mft = rows["no-typicality"]["vs_mft"]  # -2, -4, -2 points
    assert vs_mft["delta_mean"] == pytest.approx(-0.08 / 3)
    assert vs_mft["delta_high"] - vs_mft["delta_mean"] == pytest.approx(
        4.303 * statistics.stdev([-0.02, -0.04, -0.02]) / math.sqrt(3))
    base_half = 4.303 * 0.1 / math.sqrt(3)  # the baseline's mean over seeds: 0.5, 0.6, 0.7
    assert (rows["baseline"]["mean_low"], rows["baseline"]["mean_high"]) == pytest.approx(
        (0.6 - base_half, 0.6 + base_half))
    json.dumps(summarise(StudyResults(units=units)))  # JSON-ready for consumers of the numbers


def test_one_seed_reports_no_interval(synthetic_run):
    run, study = synthetic_run
    study["units"] = [u for u in study["units"] if u["seed"] == 42]
    (run / "study.json").write_text(json.dumps(study))
    report = write_report(run).read_text()
    for cells in _table_rows(report).values():
        if cells[1] != "baseline":
            assert cells[4].endswith("(1 seed: no interval)"), cells
    assert "with one seed there is no interval" in report
    with Image.open(run / "accuracy.png") as img:
        img.verify()


def test_the_interval_verdict_names_the_domains():
    from metaft.report import interval_verdict

    row = {"domain": "A", "delta_low": 0.01, "delta_high": 0.03}
    assert interval_verdict([row]) == "The 95 % paired t-interval of MFT − baseline lies above 0 on: A."
    assert "contains 0 on every domain" in interval_verdict([dict(row, delta_low=-0.01)])
    assert interval_verdict([row, dict(row, domain="B", delta_low=-0.05, delta_high=-0.01),
                             dict(row, domain="C", delta_low=-0.01)]) == (
        "The 95 % paired t-interval of MFT − baseline lies above 0 on: A; below 0 on: B (contains 0 elsewhere).")


def test_the_accuracy_plot_draws_the_intervals(monkeypatch, tmp_path):
    import matplotlib.axes

    from metaft.plots import accuracy_plot

    drawn = []
    orig = matplotlib.axes.Axes.errorbar

    def errorbar(self, x, y, yerr=None, **kw):
        drawn.append((list(x), list(y), yerr.tolist(), kw.get("label")))
        return orig(self, x, y, yerr=yerr, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", errorbar)
    units = [UnitRecord(s, v, d, acc) for s in (1, 2, 3) for d in ("A", "B")
             for v, acc in (("baseline", 0.5 + s / 10), ("mft", 0.6 + s / 20))]
    units.append(UnitRecord(4, "mft", "C", 0.9))  # one seed on C: no bar there
    summary = summarise(StudyResults(units=units))
    accuracy_plot(tmp_path / "accuracy.png", summary)
    assert len(drawn) == 2  # one call per variant
    x, y, yerr, label = drawn[0]  # baseline: A and B only (no C result)
    half = 100 * 4.303 * 0.1 / math.sqrt(3)
    assert y == pytest.approx([70.0, 70.0]) and sum(yerr, []) == pytest.approx([half] * 4)
    assert label == "95 % t-interval of the mean"
    x, y, yerr, label = drawn[1]  # mft: A, B; C has one seed
    assert len(x) == 2 and label is None


def test_report_cli_and_missing_study(synthetic_run, tmp_path, capsys):
    run, _ = synthetic_run
    assert main(["report", str(run)]) == 0
    assert "report:" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "study.json" in capsys.readouterr().err


def test_an_interim_report_keeps_only_complete_seeds(synthetic_run, capsys):
    run, study = synthetic_run
    study["config"].update(domains=DOMAINS, ablations=VARIANTS[2:])
    study["units"] = [u for u in study["units"] if (u["seed"], u["variant"], u["domain"]) != (21, "mft", "CR")]
    (run / "study.json").write_text(json.dumps(study))

    def seeds_in(report: str) -> set[str]:
        return {cell.split(":")[0].strip() for r in _table_rows(report).values() for cell in r[3].split(",")}

    assert main(["report", str(run), "--complete-seeds"]) == 0
    report = (run / "report.md").read_text()
    assert seeds_in(report) == {"13", "42"}
    assert "interim report: the 2 complete seeds of ? planned (8 finished units of unfinished seeds left out)" \
        in report
    base = [u["test_accuracy"] for u in study["units"]
            if u["seed"] in (13, 42) and u["variant"] == "baseline" and u["domain"] == "MR"]
    assert float(_table_rows(report)[("MR", "baseline")][2].split(" ± ")[0]) == pytest.approx(
        100 * statistics.mean(base), abs=0.006)
    assert f"{100 * statistics.mean(base):.2f}" in capsys.readouterr().out  # the console table too
    assert seeds_in(write_report(run).read_text()) == {"13", "21", "42"}  # without the flag: every unit


def test_a_one_seed_report_states_the_test_sets_sampling_error(synthetic_run):
    run, study = synthetic_run
    study["config"]["k"] = None  # k: full
    study["units"] = [dict(u, test_accuracy=0.8, test_n=400) for u in study["units"] if u["seed"] == 42]
    (run / "study.json").write_text(json.dumps(study))
    report = write_report(run).read_text()
    assert "K = full" in report and "seeds: 42," in report
    assert "sampling error of 2.0 points" in report  # sqrt(0.8 * 0.2 / 400) = 0.02
    study["units"] = study["units"] + [dict(study["units"][0], seed=13)]
    (run / "study.json").write_text(json.dumps(study))
    assert "sampling error" not in write_report(run).read_text()  # two seeds: the spread over seeds speaks
