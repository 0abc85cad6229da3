from __future__ import annotations

import json
import random
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
                assert float(rows[(d, v)][4]) == pytest.approx(100 * statistics.mean(diffs), abs=0.006)
                wins, losses, ties = (int(x) for x in rows[(d, v)][5].split(" / "))
                assert (wins, losses, ties) == (sum(x > 0 for x in diffs), sum(x < 0 for x in diffs),
                                                sum(x == 0 for x in diffs))
    assert "ddof = 1" in report


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
        assert cells[4] == f"baseline {statistics.mean(diffs) * 100:+.2f}"
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
        assert float(rows[(d, "no-typicality")][2]) == pytest.approx(100 * statistics.mean(diffs), abs=0.006)
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
