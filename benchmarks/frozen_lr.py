"""The frozen-encoder logistic regression (a study report's frozen-LR reference row) of any model on the splits of
committed studies, per seed and domain: what a user gets from that encoder without fine-tuning.

    python benchmarks/frozen_lr.py --model mpnet --studies runs/g1-s13 runs/g1-s21 ... --out FILE.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from metaft.fileio import write_json
from metaft.probe import frozen_lr_reference


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--studies", type=Path, nargs="+", required=True, help="study folders (their data/k-shot-single)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    rows, cache = [], {}  # the cache embeds each fixed test set once
    header = {"command": " ".join(["python", *sys.argv]), "model": args.model}
    for study in args.studies:
        for folder in sorted((study / "data" / "k-shot-single").glob("*/*")):
            row = frozen_lr_reference(folder, args.model, folder.parent.name, cache)
            rows.append({"seed": int(folder.name.split("-")[1]), **row})
            print(rows[-1], flush=True)
            write_json(args.out, {**header, "rows": rows})  # figures so far, should the run be cut
    means = {d: round(100 * statistics.mean(r["test_accuracy"] for r in rows if r["domain"] == d), 2)
             for d in dict.fromkeys(r["domain"] for r in rows)}
    write_json(args.out, {**header, "mean_test_accuracy_percent": means, "rows": rows})
    print(means)
    return 0


if __name__ == "__main__":
    sys.exit(main())
