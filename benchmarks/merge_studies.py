"""Merge study folders of one study run in parts (disjoint seeds, the same settings) into one study folder, and
write its report: e.g. the 20-seed g1 study as the 5-seed g1 study plus a run of the 15 other seeds.

    python benchmarks/merge_studies.py OUT STUDY_DIR STUDY_DIR... [--complete-seeds] [--allow-differ KEY ...]
        [--variants ABLATION ...]

Each part's ``study.json`` is read (``--complete-seeds``: only its seeds whose every unit finished); the parts
must agree on every setting but the seeds and how they were run (out, pack, jobs, force) and the settings named
by ``--allow-differ`` (e.g. ``model``: a half-precision copy of the same model carried to a GPU), no seed may be
in two parts, and their splits must have been drawn alike (``data``: protocol, test rules, the corpora the pools
were cleared against, source hashes; parts that predate that record are not checked). ``--variants`` keeps only
the named ablations (with the baseline and MFT) of every part, so parts run for different ablations merge. OUT
gets ``study.json``, ``config.json`` (the first part's, with the union of seeds in order), ``report.md``, the
accuracy plot and links to each part's own plots. The report's machine line names each kind of machine and its
seeds, and its hyper-parameter line each allowed difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from metaft.errors import DataError
from metaft.fileio import write_json
from metaft.report import PLOTS, complete_seeds, write_report
from metaft.results import BASELINE, MFT, StudyResults, read_study, write_study

RUN_ONLY = ("seeds", "out", "pack", "jobs", "force")  # config keys that may differ between parts


def seeds_of(study: StudyResults) -> list[int]:
    """The seeds with at least one finished unit, in plan order."""
    return list(dict.fromkeys(u.seed for u in study.units))


def only_variants(study: StudyResults, variants: list[str]) -> StudyResults:
    """The study with only ``variants``' records (baseline and mft always kept), its ablations setting to match."""
    keep = {BASELINE, MFT, *variants}
    return dataclasses.replace(
        study, config={**study.config, "ablations": [a for a in study.config.get("ablations", []) if a in keep]},
        units=[u for u in study.units if u.variant in keep], meta=[m for m in study.meta if m.variant in keep],
        domain_probe=[r for r in study.domain_probe if r["variant"] in keep])


def merge(parts: list[tuple[Path, StudyResults]], allow_differ: tuple[str, ...] = ()) -> StudyResults:
    """One study of every part's records; DataError naming the part whose settings or seeds clash."""
    (first_dir, first), seen = parts[0], {}
    free = (*RUN_ONLY, *allow_differ)
    shared = {k: v for k, v in first.config.items() if k not in free}
    drawn_dir, drawn = next(((p, s.data) for p, s in parts if s.data), (None, {}))
    for path, study in parts:
        other = {k: v for k, v in study.config.items() if k not in free}
        differ = sorted(k for k in shared.keys() | other.keys() if shared.get(k) != other.get(k))
        if differ:
            raise DataError(path / "study.json", f"settings differ from {first_dir}: {', '.join(differ)}")
        if study.data and drawn and study.data != drawn:
            differ = sorted(k for k in drawn.keys() | study.data.keys() if drawn.get(k) != study.data.get(k))
            raise DataError(path / "study.json", f"its splits were drawn differently from {drawn_dir}'s "
                            f"({', '.join(differ)}; e.g. other corpora present where it ran)")
        for seed in seeds_of(study):
            if seed in seen:
                raise DataError(path / "study.json", f"seed {seed} is also in {seen[seed]}")
            seen[seed] = path
    lists = {f.name: [x for _, s in parts for x in getattr(s, f.name)]
             for f in dataclasses.fields(StudyResults) if isinstance(getattr(first, f.name), list)}
    def which(study: StudyResults) -> str:
        return "seeds " + ", ".join(map(str, seeds_of(study)))

    by_machine: dict[str, list[int]] = {}  # parts run on the same kind of machine share one entry
    for _, s in parts:
        by_machine.setdefault(s.machine.get("description", "unknown"), []).extend(seeds_of(s))
    machines = "; ".join(f"{m} (seeds {', '.join(map(str, seeds))})" for m, seeds in by_machine.items())
    differ = [f"{key} ({'; '.join(f'{which(s)}: {s.config.get(key)}' for _, s in parts)})" for key in allow_differ
              if len({json.dumps(s.config.get(key), sort_keys=True) for _, s in parts}) > 1]
    note = first.hyperparameter_note + (f"; the merged parts differ in {', '.join(differ)}" if differ else "")
    config = {**first.config, "seeds": list(seen)}
    return dataclasses.replace(first, config=config, machine={**first.machine, "description": machines},
                               hyperparameter_note=note, data=drawn, **lists)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("parts", type=Path, nargs="+")
    p.add_argument("--complete-seeds", action="store_true", help="only each part's seeds whose units all finished")
    p.add_argument("--allow-differ", nargs="+", default=[], metavar="KEY", help="settings the parts may differ in")
    p.add_argument("--variants", nargs="+", metavar="VARIANT",
                   help="keep only these ablations (with baseline and mft) of every part, e.g. to merge the 5-seed "
                        "study's parts with seeds run for fewer variants")
    args = p.parse_args(argv)
    parts = []
    for path in args.parts:
        study = read_study(path / "study.json")
        study = only_variants(study, args.variants) if args.variants else study
        parts.append((path, study.only_seeds(complete_seeds(study)) if args.complete_seeds else study))
    try:
        merged = merge(parts, tuple(args.allow_differ))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    write_study(args.out / "study.json", merged)
    write_json(args.out / "config.json", merged.config)
    report = write_report(args.out)
    append_part_plots(report, [path for path, _ in parts])
    print(f"{len(merged.config['seeds'])} seeds, {len(merged.units)} units -> {report}")
    return 0


def append_part_plots(report: Path, part_dirs: list[Path]) -> None:
    """Link each part's own plots (training curves, typicality, PCA need the run folders, which a merge lacks)."""
    lines = []
    for part in part_dirs:
        pngs = [p for p in PLOTS if p != "accuracy.png" and (part / p).is_file()]
        if pngs:
            rel = Path(os.path.relpath(part, report.parent))
            lines.append(f"- {part.name}: " + ", ".join(f"[{p}]({(rel / p).as_posix()})" for p in pngs))
    if lines:
        with report.open("a", encoding="utf-8") as f:
            f.write("\n".join(["", "## Each part's own plots", "", *lines, ""]))


if __name__ == "__main__":
    sys.exit(main())
