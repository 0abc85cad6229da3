"""benchmarks/merge_studies.py: study parts with disjoint seeds and the same settings become one study."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

from metaft.errors import DataError
from metaft.results import read_study

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
DOMAINS = ["SST-2", "MR", "CR"]
VARIANTS = ["baseline", "mft"]


def load_merge():
    spec = importlib.util.spec_from_file_location("bench_merge_studies", BENCHMARKS / "merge_studies.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_part(folder: Path, seeds: list[int], machine: str, variants: list[str] = VARIANTS, **config) -> Path:
    rng = random.Random(sum(seeds))
    units = [{"seed": s, "variant": v, "domain": d, "test_accuracy": round(rng.uniform(0.5, 0.9), 4),
              "test_macro_f1": 0.5, "dev_accuracy": 0.6, "wall_time_s": 1.0, "path": f"seed-{s}/{v}/{d}"}
             for s in seeds for v in variants for d in DOMAINS]
    study = {"config": {"group": "g1", "k": 16, "model": "minilm", "domains": DOMAINS,
                        "ablations": [v for v in variants if v not in VARIANTS], "seeds": seeds, "out": str(folder),
                        **config},
             "machine": {"description": machine}, "units": units,
             "meta": [{"seed": s, "variant": v, "dev_accuracy": 0.7, "wall_time_s": 2.0,
                       "path": f"seed-{s}/meta/{v}"} for s in seeds for v in variants if v != "baseline"]}
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps(study))
    return folder


def test_parts_merge_into_one_study_with_every_seed(tmp_path):
    merge = load_merge()
    a = write_part(tmp_path / "a", [13, 21], "GPU", pack=None)
    b = write_part(tmp_path / "b", [1, 2, 3], "CPU", pack=1)  # run differently: allowed
    assert merge.main([str(tmp_path / "m"), str(a), str(b)]) == 0
    merged = read_study(tmp_path / "m" / "study.json")
    assert merged.config["seeds"] == [13, 21, 1, 2, 3]
    assert len(merged.units) == 5 * len(VARIANTS) * len(DOMAINS) and len(merged.meta) == 5
    assert merged.machine["description"] == "GPU (seeds 13, 21); CPU (seeds 1, 2, 3)"
    assert json.loads((tmp_path / "m" / "config.json").read_text())["seeds"] == [13, 21, 1, 2, 3]
    report = (tmp_path / "m" / "report.md").read_text()
    assert "seeds: 1, 2, 3, 13, 21," in report  # numeric order, as in its tables


def test_complete_seeds_leave_out_a_part_s_unfinished_seed(tmp_path):
    merge = load_merge()
    a = write_part(tmp_path / "a", [13, 21], "GPU")
    study = json.loads((a / "study.json").read_text())
    study["units"] = [u for u in study["units"] if (u["seed"], u["domain"]) != (21, "CR")]
    (a / "study.json").write_text(json.dumps(study))
    b = write_part(tmp_path / "b", [21], "CPU")  # seed 21 finished elsewhere
    assert merge.main([str(tmp_path / "m"), str(a), str(b), "--complete-seeds"]) == 0
    merged = read_study(tmp_path / "m" / "study.json")
    assert merged.config["seeds"] == [13, 21]
    assert {u.seed for u in merged.units if u.domain == "CR"} == {13, 21}
    assert merge.main([str(tmp_path / "m2"), str(a), str(b)]) == 2  # without it: seed 21 is in both


@pytest.mark.parametrize("clash, message", [("label_noise", "settings differ from"), ("seed", "seed 13 is also in")])
def test_clashing_parts_are_refused_naming_the_part(tmp_path, capsys, clash, message):
    merge = load_merge()
    a = write_part(tmp_path / "a", [13], "GPU", label_noise=0.0)
    b = write_part(tmp_path / "b", [13] if clash == "seed" else [21], "CPU",
                   label_noise=0.2 if clash == "label_noise" else 0.0)
    assert merge.main([str(tmp_path / "m"), str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(b / "study.json") in err
    assert not (tmp_path / "m").exists()


def test_an_allowed_difference_is_named_in_the_report(tmp_path):
    merge = load_merge()
    a = write_part(tmp_path / "a", [13], "GPU", model="/gpu/minilm-fp16")
    b = write_part(tmp_path / "b", [21], "CPU", model="minilm")
    assert merge.main([str(tmp_path / "m"), str(a), str(b)]) == 2
    assert merge.main([str(tmp_path / "m"), str(a), str(b), "--allow-differ", "model"]) == 0
    report = (tmp_path / "m" / "report.md").read_text()
    assert "differ in model (seeds 13: /gpu/minilm-fp16; seeds 21: minilm)" in report


def test_parts_whose_splits_were_drawn_differently_do_not_merge(tmp_path):
    """A part run where fewer corpora were present drew other splits for the same seeds: refused, named."""
    merge = load_merge()
    drawn = {"protocol": "LM-BFF k-shot", "test_texts_removed_from_pool":
             {d: {"checked_against": ["SST-2", "MR", "CR", "MPQA", "Subj"], "dropped": {}} for d in DOMAINS}}
    fewer = {**drawn, "test_texts_removed_from_pool":
             {d: {"checked_against": ["SST-2", "MR", "CR"], "dropped": {}} for d in DOMAINS}}
    parts = []
    for name, seeds, data in (("old", [5], None), ("a", [13], drawn), ("b", [21], fewer)):
        folder = write_part(tmp_path / name, seeds, "CPU")
        if data:
            study = json.loads((folder / "study.json").read_text())
            (folder / "study.json").write_text(json.dumps({**study, "data": data}))
        parts.append(str(folder))
    with pytest.raises(DataError, match=r"b/study.json.*drawn differently from .*a's \(test_texts_removed_from_pool"):
        merge.merge([(Path(p), read_study(Path(p) / "study.json")) for p in parts])
    assert merge.main([str(tmp_path / "m"), *parts[:2]]) == 0  # a part without the record is not checked
    assert read_study(tmp_path / "m" / "study.json").data == drawn
    assert "pools cleared of the test texts of SST-2, MR, CR, MPQA, Subj" in (tmp_path / "m" / "report.md").read_text()


def test_variants_merges_parts_run_for_more_ablations_with_parts_run_for_fewer(tmp_path, capsys):
    merge = load_merge()
    full = write_part(tmp_path / "full", [13, 21], "CPU", [*VARIANTS, "multitask", "grl"])
    lean = write_part(tmp_path / "lean", [1, 2], "CPU", [*VARIANTS, "multitask"])
    assert merge.main([str(tmp_path / "no"), str(full), str(lean)]) == 2  # the ablations differ
    assert "settings differ from" in capsys.readouterr().err
    assert merge.main([str(tmp_path / "m"), str(full), str(lean), "--variants", "multitask"]) == 0
    merged = read_study(tmp_path / "m" / "study.json")
    assert merged.config["ablations"] == ["multitask"] and merged.config["seeds"] == [13, 21, 1, 2]
    assert {u.variant for u in merged.units} == {"baseline", "mft", "multitask"}
    assert len(merged.units) == 4 * 3 * len(DOMAINS) and {m.variant for m in merged.meta} == {"mft", "multitask"}


def test_the_merged_report_links_each_part_s_own_plots(tmp_path):
    merge = load_merge()
    a = write_part(tmp_path / "parts" / "seed-13", [13], "CPU")
    b = write_part(tmp_path / "parts" / "seed-21", [21], "CPU")
    (a / "curves.png").write_bytes(b"\x89PNG")
    assert merge.main([str(tmp_path / "m"), str(a), str(b)]) == 0
    report = (tmp_path / "m" / "report.md").read_text()
    assert "- seed-13: [curves.png](../parts/seed-13/curves.png)" in report and "- seed-21:" not in report
    assert "- machine: CPU (seeds 13, 21)\n" in report  # parts on the same kind of machine: one entry
