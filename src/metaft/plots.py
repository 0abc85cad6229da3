"""PNG plots of a study: accuracy bars with per-seed dots and 95 % t-intervals of the mean, dev learning curves, typicality histograms and
a 2-D PCA of sentence embeddings before / after meta fine-tuning. Inputs are the run folder's files."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from .fileio import atomic_path
from .results import StudyResults

logger = logging.getLogger(__name__)

DEV_KEYS = ("dev_accuracy", "dev/accuracy", "eval_accuracy")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def interval_bars(means: list[float], rows: list[dict | None]) -> np.ndarray:
    """Error-bar lengths [2, n] (below, above the mean) in points from each row's ``mean_low`` / ``mean_high``;
    NaN (no bar) where a row is missing or has one seed."""
    out = np.full((2, len(rows)), np.nan)
    for i, (m, r) in enumerate(zip(means, rows)):
        if r is not None and r.get("mean_low") is not None:
            out[:, i] = (m - r["mean_low"] * 100, r["mean_high"] * 100 - m)
    return out


def accuracy_plot(path: Path, summary: dict) -> None:
    """Bars: mean test accuracy over seeds; error bars: its 95 % t-interval over seeds; dots: the seeds."""
    plt = _pyplot()
    domains, variants = summary["domains"], summary["variants"]
    fig, ax = plt.subplots(figsize=(1.8 + 1.4 * len(domains) * max(1, len(variants)) / 2, 4))
    width = 0.8 / len(variants)
    rows = {(r["domain"], r["variant"]): r for r in summary["rows"]}
    labelled = False
    for j, v in enumerate(variants):
        xs = np.arange(len(domains)) + (j - (len(variants) - 1) / 2) * width
        means = [rows[(d, v)]["mean"] * 100 if (d, v) in rows else np.nan for d in domains]
        ax.bar(xs, means, width * 0.9, label=v, alpha=0.75)
        bars = interval_bars(means, [rows.get((d, v)) for d in domains])
        has = ~np.isnan(bars[0])
        if has.any():
            ax.errorbar(xs[has], np.asarray(means)[has], yerr=bars[:, has], fmt="none", ecolor="black",
                        elinewidth=1, capsize=3, zorder=4, label=None if labelled else "95 % t-interval of the mean")
            labelled = True
        for x, d in zip(xs, domains):
            if (d, v) in rows:
                vals = [a * 100 for a in rows[(d, v)]["per_seed"].values()]
                ax.scatter([x] * len(vals), vals, color="black", s=10, zorder=3)
    ax.set_xticks(np.arange(len(domains)), domains)
    ax.set_ylabel("test accuracy (%)")
    shown = [a * 100 for r in summary["rows"] for a in
             (*r["per_seed"].values(), *(x for x in (r.get("mean_low"), r.get("mean_high")) if x is not None))]
    ax.set_ylim(max(0, min(shown) - 5), min(100, max(shown) + 3))
    ax.legend(fontsize=8, ncol=min(3, len(variants)))
    ax.set_title("Per-domain test accuracy\nbars: mean over seeds; error bars: 95 % t-interval of that mean "
                 "(none for one seed); dots: seeds", fontsize=9)
    _save(fig, path)
    plt.close(fig)


def read_dev_curve(metrics_path: Path) -> tuple[list[int], list[float]]:
    """(steps, dev accuracies) from a run's ``metrics.jsonl``; empty if absent."""
    steps, accs = [], []
    if not metrics_path.is_file():
        return steps, accs
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        key = next((k for k in DEV_KEYS if k in rec), None)
        if key is not None and "step" in rec:
            steps.append(int(rec["step"]))
            accs.append(float(rec[key]) * 100)
    return steps, accs


def curves_plot(path: Path, run_dir: Path, study: StudyResults) -> bool:
    plt = _pyplot()
    fig, (ax_meta, ax_ft) = plt.subplots(1, 2, figsize=(11, 4))
    colours: dict[str, str] = {}
    drawn = False
    for ax, records in ((ax_meta, study.meta), (ax_ft, study.units)):
        labelled = set()
        for rec in records:
            steps, accs = read_dev_curve(run_dir / rec.path / "metrics.jsonl")
            if not steps:
                continue
            colour = colours.setdefault(rec.variant, f"C{len(colours) % 10}")
            label = rec.variant if rec.variant not in labelled else None
            labelled.add(rec.variant)
            ax.plot(steps, accs, color=colour, alpha=0.6, lw=1, label=label)
            drawn = True
        ax.set_xlabel("step")
        ax.set_ylabel("dev accuracy (%)")
        if labelled:
            ax.legend(fontsize=8)
    ax_meta.set_title("Meta stage (cross-domain dev)")
    ax_ft.set_title("Per-domain fine-tuning (each seed x domain)")
    if drawn:
        _save(fig, path)
    plt.close(fig)
    return drawn


def read_typicality(path: Path) -> dict[str, list[float]]:
    by_domain: dict[str, list[float]] = defaultdict(list)
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines[1:]:
        cols = line.split("\t")
        if len(cols) == 4:
            by_domain[cols[1]].append(float(cols[3]))
    return dict(by_domain)


def typicality_plot(path: Path, run_dir: Path, study: StudyResults) -> bool:
    by_domain: dict[str, list[float]] = defaultdict(list)
    for rec in study.typicality:
        tsv = run_dir / rec.path
        if tsv.is_file():
            for d, vals in read_typicality(tsv).items():
                by_domain[d] += vals
    if not by_domain:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    allv = [v for vals in by_domain.values() for v in vals]
    bins = np.linspace(min(allv), max(allv), 25)
    for d, vals in by_domain.items():
        ax.hist(vals, bins=bins, alpha=0.5, label=f"{d} (mean {np.mean(vals):.2f})")
    ax.set_xlabel("typicality score")
    ax.set_ylabel("training examples (all seeds)")
    ax.legend(fontsize=8)
    ax.set_title("Typicality scores per domain")
    _save(fig, path)
    plt.close(fig)
    return True


def pca_plot(path: Path, run_dir: Path, study: StudyResults) -> bool:
    recs = [r for r in study.pca if (run_dir / r.path).is_file()]
    if not recs:
        return False
    data = json.loads((run_dir / recs[0].path).read_text(encoding="utf-8"))
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    domains = data["domains"]
    for ax, key, title in ((axes[0], "before", "pre-trained encoder"), (axes[1], "after", "after meta fine-tuning")):
        pts = np.asarray(data[key])
        for j, d in enumerate(dict.fromkeys(domains)):
            sel = [i for i, x in enumerate(domains) if x == d]
            ax.scatter(pts[sel, 0], pts[sel, 1], s=10, alpha=0.7, color=f"C{j}", label=d)
        sil = data.get(f"{key}_domain_separation")
        ax.set_title(title + (f"\nnearest-centroid domain accuracy {sil:.2f}" if sil is not None else ""), fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"PCA of sentence embeddings (masked mean), seed {recs[0].seed}, coloured by domain", y=1.04)
    _save(fig, path)
    plt.close(fig)
    return True


def make_plots(run_dir: Path, study: StudyResults, summary: dict) -> list[str]:
    """Write every plot the study has data for; returns their file names (relative to ``run_dir``)."""
    written = []
    accuracy_plot(run_dir / "accuracy.png", summary)
    written.append("accuracy.png")
    for name, fn in (("curves.png", curves_plot), ("typicality.png", typicality_plot), ("pca.png", pca_plot)):
        if fn(run_dir / name, run_dir, study):
            written.append(name)
    return written
