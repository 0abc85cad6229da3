"""Choose stage-3 fine-tuning defaults on dev sets: plain fine-tuning (the baseline) of g1 K=16 at the reference
recipe under a few head configurations, every (seed, domain) split, one run folder per run (resumable: a
finished run is reused, an unfinished one resumed).

    python benchmarks/defaults_dev.py run --config current --data DATA --runs RUNS   # one config, all splits
    python benchmarks/defaults_dev.py collect --runs RUNS [--frozen-lr F]  # -> results/defaults-dev.json

Selection uses dev accuracy only; test accuracy is recorded beside it, never used to choose.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SEEDS = (13, 42, 87, 21, 100)
DOMAINS = ("SST-2", "MR", "CR")
RECIPE = ["--epochs", "64", "--batch-size", "2", "--lr", "1e-5", "--eval-every", "50", "--model", "minilm"]
CONFIGS = {  # name -> extra flags of `metaft finetune`
    "current": ["--head-pooling", "pooler", "--head", "reinit", "--head-normalize", "off"],
    "mean-probe": ["--head-pooling", "mean", "--head", "probe", "--head-normalize", "off"],
    "mean-probe-headlr10": ["--head-pooling", "mean", "--head", "probe", "--head-normalize", "off", "--head-lr", "1e-4"],
    "current-headlr10": ["--head-pooling", "pooler", "--head", "reinit", "--head-normalize", "off", "--head-lr", "1e-4"],
    "mean-norm-probe": ["--head-pooling", "mean", "--head", "probe", "--head-normalize", "on"],
}
OUT = Path(__file__).parent / "results"


def run(config: str, data: Path, runs: Path, extra_env: dict[str, str], backwards: bool = False) -> None:
    """Every split in turn (``backwards``: from the last, so a second process can share the work)."""
    splits = [(seed, domain) for seed in SEEDS for domain in DOMAINS]
    for seed, domain in reversed(splits) if backwards else splits:
        out = runs / config / f"{domain}-{seed}"
        if (out / "results.json").is_file():
            continue
        if backwards and out.is_dir():
            return  # the forward process has got here
        cmd = [sys.executable, "-m", "metaft", "finetune", "--data-dir",
               str(data / "k-shot-single" / domain / f"16-{seed}"), "--seed", str(seed), "--out", str(out),
               *RECIPE, *CONFIGS[config]]
        if out.is_dir():
            cmd.append("--resume")
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, **extra_env})


def collect(runs: Path) -> dict:
    out: dict = {"recipe": " ".join(RECIPE), "configs": {k: " ".join(v) for k, v in CONFIGS.items()}, "runs": []}
    for config in CONFIGS:
        for path in sorted((runs / config).glob("*/results.json")):
            r = json.loads(path.read_text(encoding="utf-8"))
            out["runs"].append({"config": config, "domain": r["domain"], "seed": r["seed"],
                                "best_dev_accuracy": r["best_dev_accuracy"], "best_step": r["best_step"],
                                "dev_at_step0": next((h["dev_accuracy"] for h in r["dev_history"]
                                                      if h["step"] == 0), None),
                                "test_accuracy": r["test_accuracy"]})
    return out


def paired_summary(data: dict) -> list[dict]:
    """Each config against ``current`` on the splits both finished: mean dev accuracy and sign counts."""
    by = {(r["config"], r["domain"], r["seed"]): r for r in data["runs"]}
    out = []
    for config in CONFIGS:
        if config == "current":
            continue
        keys = sorted((d, s) for c, d, s in by if c == config and ("current", d, s) in by)
        if not keys:
            continue
        dev = [(by[(config, *k)]["best_dev_accuracy"], by[("current", *k)]["best_dev_accuracy"]) for k in keys]
        test = [(by[(config, *k)]["test_accuracy"], by[("current", *k)]["test_accuracy"]) for k in keys]
        out.append({"config": config, "splits": [f"{d}-{s}" for d, s in keys],
                    "dev_mean": sum(a for a, _ in dev) / len(dev), "current_dev_mean": sum(b for _, b in dev) / len(dev),
                    "dev_wins": sum(a > b for a, b in dev), "dev_losses": sum(a < b for a, b in dev),
                    "test_mean": sum(a for a, _ in test) / len(test),
                    "current_test_mean": sum(b for _, b in test) / len(test)})
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("run", "collect"))
    p.add_argument("--config", choices=tuple(CONFIGS))
    p.add_argument("--data", type=Path)
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--pythonpath", default=None, help="run metaft from these sources")
    p.add_argument("--backwards", action="store_true", help="run: start from the last split (a second process)")
    p.add_argument("--frozen-lr", type=Path, default=None,
                   help="collect: a JSON list of probe.frozen_lr_reference results (one per seed and domain)")
    a = p.parse_args()
    if a.what == "run":
        run(a.config, a.data, a.runs, {"PYTHONPATH": a.pythonpath} if a.pythonpath else {}, a.backwards)
    else:
        data = collect(a.runs)
        data["paired_with_current"] = paired_summary(data)
        if a.frozen_lr:
            rows = json.loads(a.frozen_lr.read_text(encoding="utf-8"))
            data["frozen_lr"] = {"rows": rows, "mean_test_accuracy": {
                d: sum(r["test_accuracy"] for r in rows if r["domain"] == d) / sum(r["domain"] == d for r in rows)
                for d in DOMAINS}}
        (OUT / "defaults-dev.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        for row in data["paired_with_current"]:
            print(json.dumps(row))


if __name__ == "__main__":
    main()
