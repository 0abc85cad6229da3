"""``metaft prepare``: raw corpora (or a user's file) -> k-shot / full splits in the seed layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import PrepareConfig
from ..settings import add_arguments, from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="build k-shot (or full) train/dev/test splits from the corpora",
        description="Write OUT/k-shot-single/<DOMAIN>/<K>-<seed>/{train,dev,test}.tsv and "
        "OUT/k-shot-cross/<group>/<K>-<seed>/{train,dev}.tsv (lines: text TAB domain TAB label), "
        "each folder with a manifest.json.",
    )
    add_arguments(p, PrepareConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..splits import prepare

    config = from_args(PrepareConfig, args)
    folders = prepare(config)
    for folder in folders:
        counts = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))["counts"]
        print(f"{folder}: " + ", ".join(f"{split} {c['total']}" for split, c in counts.items()))
    print(f"prepared {len(folders)} folder(s) under {config.out}")
    return 0
