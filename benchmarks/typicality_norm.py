"""Choose ``--typicality-norm`` on dev sets: meta-stage dev accuracy of each normalisation on g1 16-<seed>.

Runs the seed recipe's meta stage (63 epochs, batch 4, lr 5e-5, dev every 100 steps) with the default model
for each (norm, seed) and the reference system's head (``REFERENCE_BEHAVIOUR``, the head the recorded choice
was made with); finished runs are skipped, so the script resumes. Only cross-domain *dev* accuracy
is used — test sets are never looked at here.

    python benchmarks/typicality_norm.py --seeds 13 42 --norms none mean mean-global
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from metaft import MetaConfig, PrepareConfig, TypicalityConfig, compute_typicality, meta_finetune, prepare
from metaft.config import REFERENCE_BEHAVIOUR, SEED_RECIPE_META
from metaft.results import META_RESULTS, read_meta_result
from metaft.study import machine_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 42])
    ap.add_argument("--norms", nargs="+", default=["none", "mean", "mean-global"])
    ap.add_argument("--work", default="runs/typicality-norm")
    ap.add_argument("--out", default="benchmarks/results/typicality_norm.json")
    args = ap.parse_args()
    work = Path(args.work)
    prepare(PrepareConfig(out=str(work / "data"), corpora=os.environ.get("METAFT_CORPORA"), group="g1", k=16,
                          seeds=tuple(args.seeds)))
    rows = []
    for seed in args.seeds:
        cross = work / "data" / "k-shot-cross" / "g1" / f"16-{seed}"
        if not (cross / "typicality.tsv").is_file():
            compute_typicality(TypicalityConfig(data_dir=str(cross)))
        for norm in args.norms:
            out = work / f"meta-{norm}-{seed}"
            t0 = time.perf_counter()
            meta_finetune(MetaConfig(**SEED_RECIPE_META, **REFERENCE_BEHAVIOUR, data_dir=str(cross), out=str(out),
                                     seed=seed, typicality_norm=norm, task_name="g1", resume=out.exists()))
            res = read_meta_result(out / META_RESULTS)
            rows.append({"seed": seed, "norm": norm, "best_dev_accuracy": res.best_dev_accuracy,
                         "best_step": res.best_step, "wall_time_s": res.wall_time_s})
            print(f"seed {seed} norm {norm:12s} best meta dev accuracy {res.best_dev_accuracy:.4f} "
                  f"(step {res.best_step}; this call {time.perf_counter() - t0:.0f} s)", flush=True)
            Path(args.out).write_text(json.dumps({"machine": machine_info(), "recipe": SEED_RECIPE_META,
                                                  "rows": rows}, indent=2) + "\n", encoding="utf-8")
    for norm in args.norms:
        accs = [r["best_dev_accuracy"] for r in rows if r["norm"] == norm]
        print(f"{norm:12s} mean meta dev accuracy over seeds {args.seeds}: {sum(accs) / len(accs):.4f}")


if __name__ == "__main__":
    main()
