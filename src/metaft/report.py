"""``study.json`` -> ``report.md`` tables and PNG plots. Reads only the run folder's files.

Conventions: mean ± std over seeds with the *sample* standard deviation (ddof = 1; "–" for one seed).
Accuracies are percentages on each domain's test set, for the checkpoint chosen on that domain's dev set.
Δ vs baseline is the mean over seeds of the paired difference (same seed, same splits) with its 95 % paired
t-interval (``stats``); each ablation is also compared with full MFT the same way, which is what says whether
the part it removes helps.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from .errors import DataError
from .fileio import write_text
from .mechanisms import report_lines as mechanism_lines
from .results import BASELINE, MFT, STUDY_FILE, StudyResults, UnitRecord, read_study
from .stats import fmt_delta, fmt_per_seed, interval_side, mean_std, paired, t_interval

logger = logging.getLogger(__name__)

FROZEN_LR = "frozen-LR"  # reference row: logistic regression on frozen embeddings (trains no encoder)
PLOTS = ("accuracy.png", "curves.png", "typicality.png", "pca.png")


def fmt_mean_std(values: list[float], scale: float = 100.0) -> str:
    mean, std = mean_std(values)
    return f"{mean * scale:.2f} ± " + ("–" if std is None else f"{std * scale:.2f}")


def _ordered(items) -> list:
    return list(dict.fromkeys(items))


def variants_of(units: list[UnitRecord]) -> list[str]:
    found = _ordered(u.variant for u in units)
    return sorted(found, key=lambda v: (v != BASELINE, v != MFT, found.index(v)))


def complete_seeds(study: StudyResults) -> list[int]:
    """Seeds with a result for every planned (variant, domain) fine-tuning unit of the study."""
    cfg = study.config
    planned = {(v, d) for v in (BASELINE, MFT, *cfg.get("ablations", [])) for d in cfg.get("domains", [])}
    have: dict[int, set] = defaultdict(set)
    for u in study.units:
        have[u.seed].add((u.variant, u.domain))
    return sorted(s for s, got in have.items() if planned <= got)


def accuracy_row(domain: str, variant: str, per_seed: dict[int, float]) -> dict[str, Any]:
    """Per-seed accuracies with their mean, sample std and the mean's 95 % t-interval over seeds (``mean_low``
    / ``mean_high``, None for one seed)."""
    mean, std = mean_std(list(per_seed.values()))
    ci = t_interval(list(per_seed.values()))
    return {"domain": domain, "variant": variant, "per_seed": per_seed, "mean": mean, "std": std,
            "mean_low": None if ci is None else ci["low"], "mean_high": None if ci is None else ci["high"]}


def summarise(study: StudyResults) -> dict[str, Any]:
    """Per domain and variant: per-seed test accuracies, mean, std, the mean's 95 % t-interval and the paired
    differences to the baseline (keys ``delta_mean``, ``delta_low`` / ``delta_high`` (the 95 % paired
    t-interval, None for one seed), ``n``, ``wins``, ``losses``, ``ties``) and, for ablations, to full MFT
    (``vs_mft``, the same keys)."""
    acc: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for u in study.units:
        acc[(u.domain, u.variant)][u.seed] = u.test_accuracy
    domains = _ordered(u.domain for u in study.units)
    rows = []
    for d in domains:
        base, mft = acc.get((d, BASELINE), {}), acc.get((d, MFT), {})
        for v in variants_of(study.units):
            per_seed = dict(sorted(acc.get((d, v), {}).items()))
            if not per_seed:
                continue
            row = accuracy_row(d, v, per_seed)
            if v != BASELINE and (vs_base := paired(per_seed, base)):
                row.update(vs_base)
            if v not in (BASELINE, MFT) and (vs_mft := paired(per_seed, mft)):
                row["vs_mft"] = vs_mft
            rows.append(row)
        rows += reference_rows(study, d, base)
    return {"domains": domains, "variants": variants_of(study.units), "rows": rows}


def reference_rows(study: StudyResults, domain: str, base: dict[int, float]) -> list[dict]:
    """The frozen-LR reference row of ``domain`` (seeds that have a baseline result, when there are any),
    with the baseline's paired difference to it in ``baseline_minus``."""
    per_seed = {r.seed: r.test_accuracy for r in study.frozen_lr if r.domain == domain}
    per_seed = dict(sorted((s, a) for s, a in per_seed.items() if not base or s in base))
    if not per_seed:
        return []
    row = {**accuracy_row(domain, FROZEN_LR, per_seed), "reference": True}
    if diff := paired(base, per_seed):
        row["baseline_minus"] = diff
    return [row]


def _pct(mean: float, std: float | None) -> str:
    return f"{mean * 100:.2f} ± " + ("–" if std is None else f"{std * 100:.2f}")


def domain_table(summary: dict) -> list[str]:
    lines = ["| domain | variant | test accuracy % (mean ± std) | per seed | Δ vs baseline [95 % paired t-interval] "
             "| wins / losses / ties |",
             "|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        per_seed = fmt_per_seed(r["per_seed"])
        delta = fmt_delta(r) if "delta_mean" in r else ""
        wlt = f"{r['wins']} / {r['losses']} / {r['ties']}" if "wins" in r else ""
        if b := r.get("baseline_minus"):  # the reference row: the baseline against it
            delta, wlt = f"baseline {fmt_delta(b)}", f"{b['wins']} / {b['losses']} / {b['ties']}"
        lines.append(f"| {r['domain']} | {r['variant']} | {_pct(r['mean'], r['std'])} | {per_seed} | {delta} | {wlt} |")
    return lines


def ablation_table(summary: dict) -> list[str]:
    rows = [r for r in summary["rows"] if "vs_mft" in r]
    if not rows:
        return []
    lines = ["| domain | ablation | Δ vs full MFT [95 % paired t-interval] | seeds where the ablation is better / "
             "worse / equal |",
             "|---|---|---|---|"]
    for r in rows:
        p = r["vs_mft"]
        lines.append(f"| {r['domain']} | {r['variant']} | {fmt_delta(p)} | "
                     f"{p['wins']} / {p['losses']} / {p['ties']} |")
    return lines


def console_table(summary: dict) -> str:
    """Compact text table: one row per domain, one column per variant (mean ± std of test accuracy)."""
    cells = {(r["domain"], r["variant"]): _pct(r["mean"], r["std"]) for r in summary["rows"]}
    head = ["domain"] + summary["variants"]
    body = [[d] + [cells.get((d, v), "") for v in summary["variants"]] for d in summary["domains"]]
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head] + body)


def meta_table(study: StudyResults) -> list[str]:
    by_variant: dict[str, dict[int, float]] = defaultdict(dict)
    for m in study.meta:
        by_variant[m.variant][m.seed] = m.dev_accuracy
    if not by_variant:
        return []
    lines = ["| variant | meta-stage dev accuracy % (mean ± std) | per seed |", "|---|---|---|"]
    for v, per_seed in by_variant.items():
        lines.append(f"| {v} | {fmt_mean_std(list(per_seed.values()))} | {fmt_per_seed(per_seed)} |")
    return lines


def time_table(study: StudyResults) -> list[str]:
    totals: dict[str, float] = defaultdict(float)
    for t in study.typicality:
        totals["1 typicality"] += t.wall_time_s
    for m in study.meta:
        totals[f"2 meta-finetune ({m.variant})"] += m.wall_time_s
    for u in study.units:
        totals[f"3 finetune ({u.variant})"] += u.wall_time_s
    lines = ["| stage | wall time, all seeds and domains (s) |", "|---|---|"]
    lines += [f"| {k[2:]} | {v:.0f} |" for k, v in sorted(totals.items())]
    return lines


def interval_verdict(verdicts: list[dict]) -> str:
    """Where the 95 % paired t-interval of MFT − baseline lies wholly above or below zero."""
    above = [r["domain"] for r in verdicts if interval_side(r) > 0]
    below = [r["domain"] for r in verdicts if interval_side(r) < 0]
    if not above and not below:
        return "The 95 % paired t-interval of MFT − baseline contains 0 on every domain."
    return ("The 95 % paired t-interval of MFT − baseline lies " + "; ".join(
        [f"above 0 on: {', '.join(above)}"] * bool(above) + [f"below 0 on: {', '.join(below)}"] * bool(below))
        + (" (contains 0 elsewhere)." if len(above) + len(below) < len(verdicts) else "."))


def _one_seed_caveat(study: StudyResults) -> str | None:
    """With one seed there is no spread over seeds; say how large the test sets' own sampling error is."""
    errors = [math.sqrt(u.test_accuracy * (1 - u.test_accuracy) / u.test_n) for u in study.units if u.test_n]
    if not errors:
        return None
    lo, hi = 100 * min(errors), 100 * max(errors)
    return (f"One seed only: no spread over seeds is known, and each test accuracy carries a sampling error of "
            f"{lo:.1f}" + (f" to {hi:.1f}" if f"{hi:.1f}" != f"{lo:.1f}" else "") + " points (binomial standard "
            "error at its test-set size); a difference of less than about twice that is not evidence either way.")


def _splits_line(data: dict) -> str:
    """How the splits were drawn: their protocol and the corpora whose test texts were kept out of the pools."""
    removed = data.get("test_texts_removed_from_pool", {}).values()
    checked = list(dict.fromkeys(c for d in removed for c in d.get("checked_against", [])))
    return (f"{data.get('protocol', 'see the data folders')}; pools cleared of the test texts of "
            f"{', '.join(checked) or 'no corpus'}")


def render(study: StudyResults, summary: dict, plots: list[str]) -> str:
    cfg = study.config
    seeds = sorted({u.seed for u in study.units})  # numeric order, as in the tables
    k = cfg.get("k", "?")
    parts = [
        "# metaft study report", "",
        f"- group: **{cfg.get('group') or ', '.join(summary['domains'])}**, K = {'full' if k is None else k}, "
        f"seeds: {', '.join(map(str, seeds))}, model: `{cfg.get('model', '?')}`",
        f"- machine: {study.machine.get('description', 'unknown')}",
        *([f"- splits: {_splits_line(study.data)}"] if study.data else []),
        *([f"- **{study.note}**"] if study.note else []),
        *([f"- **label noise: {cfg['label_noise']:.0%} of the meta-training labels flipped (a positive control); "
           "every result below was trained under that noise**"] if cfg.get("label_noise") else []),
        f"- hyper-parameters: {study.hyperparameter_note or 'see config.json'}",
        "- accuracy: test set of each domain, checkpoint selected on that domain's dev set; mean ± sample std "
        "(ddof = 1) over seeds; Δ = mean paired difference to the baseline (same seed and splits), in points, "
        "with its 95 % paired t-interval: mean ± t(0.975, n−1)·s/√n over the n per-seed differences (s: their "
        "sample std); with one seed there is no interval.",
        *([f"- {FROZEN_LR} (reference, trains no encoder): logistic regression on the frozen encoder's "
           "mean-pooled, L2-normalised embeddings of each domain's train split, C chosen on dev; its Δ column is "
           "the baseline minus it, its sign counts the seeds where the baseline is above / below / equal."]
          if study.frozen_lr else []), "",
        "## Per-domain test accuracy", "", *domain_table(summary), "",
    ]
    verdicts = [r for r in summary["rows"] if r["variant"] == MFT and "delta_mean" in r]
    if verdicts:
        losers = [r["domain"] for r in verdicts if r["delta_mean"] <= 0]
        parts.append("MFT beats the baseline on every domain (mean over seeds)." if not losers else
                     f"**MFT does not beat the baseline on: {', '.join(losers)}** (mean over seeds).")
        if any(r["delta_low"] is not None for r in verdicts):
            parts.append(interval_verdict(verdicts))
        if len(seeds) == 1 and (caveat := _one_seed_caveat(study)):
            parts.append(caveat)
        parts.append("")
    if ablation_lines := ablation_table(summary):
        parts += ["## Ablations against full MFT", "",
                  "Mean paired difference (ablation − MFT, same seed and splits, in points) with its 95 % paired "
                  "t-interval, and its sign counts: a positive "
                  "Δ means the removed part did not help on that domain.", "", *ablation_lines, ""]
    if meta_lines := meta_table(study):
        parts += ["## Meta stage (cross-domain dev set)", "", *meta_lines, ""]
    parts += mechanism_lines(study)
    parts += ["## Wall time", "", "Sums of the units' own times; with several units at a time (`--jobs`) the "
              "study took less on the clock.", "", *time_table(study), ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(parts)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_records(path: Path, study: dict, key: str, fields: dict[str, type | tuple[type, ...]]) -> None:
    """``study[key]`` (if present) must be a list of objects with ``fields`` of the given types."""
    from .errors import DataError

    records = study.get(key, [])
    if not isinstance(records, list):
        raise DataError(path, f"'{key}' must be a list, found {type(records).__name__}")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(path, f"{key}[{i}] must be an object, found {type(rec).__name__}")
        for name, kind in fields.items():
            value = rec.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                found = "missing" if name not in rec else f"{type(value).__name__} {value!r:.40}"
                raise DataError(path, f"{key}[{i}].{name}: expected {getattr(kind, '__name__', 'a number')}, "
                                      f"found {found}")


def check_study(path: Path, study: Any) -> dict:
    """``study`` (read from ``path``) if it has what a report needs, else one DataError naming the problem.

    An accuracy that is not a finite number in [0, 1] (e.g. NaN from a diverged run) is refused rather than
    shown: a mean over it would be NaN, and the reading above the tables would be wrong."""
    from .errors import DataError

    if not isinstance(study, dict):
        raise DataError(path, f"expected a JSON object, found {type(study).__name__}")
    if not isinstance(study.get("config", {}), dict):
        raise DataError(path, "'config' must be an object")
    number = (int, float)
    _check_records(path, study, "units", {"seed": int, "variant": str, "domain": str, "test_accuracy": number})
    _check_records(path, study, "meta", {"seed": int, "variant": str, "dev_accuracy": number})
    _check_records(path, study, "typicality", {"seed": int, "path": str})
    _check_records(path, study, "pca", {"seed": int, "path": str})
    for key, field in (("units", "test_accuracy"), ("meta", "dev_accuracy")):
        for i, rec in enumerate(study.get(key, [])):
            value = rec[field]
            if not math.isfinite(value) or not 0 <= value <= 1:
                raise DataError(path, f"{key}[{i}] (seed {rec['seed']}, {rec['variant']}"
                                      f"{', ' + rec['domain'] if 'domain' in rec else ''}): {field} {value} is not "
                                      "an accuracy (a finite number in [0, 1]); redo that unit (metaft run --force)")
            for name in ("test_n", "wall_time_s"):
                if rec.get(name) is not None and (not _is_number(rec[name]) or not math.isfinite(rec[name]) or rec[name] < 0):
                    raise DataError(path, f"{key}[{i}].{name}: expected a number >= 0, found {rec[name]!r:.40}")
    return study


def load_study(run_dir: str | Path) -> dict:
    """A study folder's ``study.json``, checked (:func:`check_study`); errors name the file."""
    from .errors import DataError

    path = Path(run_dir) / "study.json"
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "no study.json here: run `metaft run` first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc.msg})", exc.lineno) from None
    return check_study(path, study)


def write_report(run_dir: str | Path, complete_only: bool = False) -> Path:
    """Rebuild ``report.md`` and the plots of a study folder from its ``study.json``; ``complete_only``: only
    the seeds whose every unit has finished (an interim report of a study still running)."""
    from .plots import make_plots

    run_dir = Path(run_dir)
    path = run_dir / STUDY_FILE
    load_study(run_dir)  # its fields and accuracies checked before they are trusted
    study = read_study(path)
    if complete_only:
        seeds, planned = complete_seeds(study), study.config.get("seeds", [])
        left_out = len(study.units) - len(study.only_seeds(seeds).units)
        study = study.only_seeds(seeds)
        if left_out or len(seeds) < len(planned):
            study.note = (f"interim report: the {len(seeds)} complete seeds of {len(planned) or '?'} planned "
                             f"({left_out} finished units of unfinished seeds left out)")
    if not study.units:
        raise DataError(path, "the study has no finished fine-tuning results yet"
                        + (" for a complete seed" if complete_only else ""))
    summary = summarise(study)
    plots = make_plots(run_dir, study, summary)
    out = run_dir / "report.md"
    write_text(out, render(study, summary, plots))
    return out
