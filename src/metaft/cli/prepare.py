"""``metaft prepare``: raw corpora (or a user's file) -> k-shot / full splits in the seed layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import STANDARD_SEEDS, PrepareConfig, parse_k
from ..errors import ConfigError


def k_argument(value: str) -> int | None:
    """argparse type of --k: a positive integer or 'full' (None)."""
    try:
        return parse_k(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="build k-shot (or full) train/dev/test splits from the corpora",
        description="Write OUT/k-shot-single/<DOMAIN>/<K>-<seed>/{train,dev,test}.tsv and "
        "OUT/k-shot-cross/<group>/<K>-<seed>/{train,dev}.tsv (lines: text TAB domain TAB label), "
        "each folder with a manifest.json.",
    )
    p.add_argument(
        "--group",
        help="predefined group (g1 = SST-2 MR CR; amazon = books dvd electronics "
        "kitchen), or the name of the group given by --domains / --input (default: g1)",
    )
    p.add_argument(
        "--domains",
        nargs="+",
        default=[],
        metavar="DOMAIN",
        help="domains to prepare: SST-2 MR CR MPQA Subj TREC books dvd electronics kitchen "
        "(or a subset of the domains of --input)",
    )
    p.add_argument(
        "--input",
        metavar="FILE",
        help="your own multi-domain file: layout TSV "
        "(text TAB domain TAB label) or .jsonl ({text, label, domain[, text_pair]})",
    )
    p.add_argument(
        "--test",
        metavar="FILE",
        help="with --input: its test set (default: hold out 20%% of each domain with a fixed seed)",
    )
    p.add_argument("--corpora", metavar="DIR", help="folder of the raw corpora (default: $METAFT_CORPORA)")
    p.add_argument(
        "--k", type=k_argument, default=16, help="examples per label in train and in dev, or 'full' (default: 16)"
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(STANDARD_SEEDS),
        metavar="SEED",
        help=f"k-shot sampling seeds (default: {' '.join(map(str, STANDARD_SEEDS))})",
    )
    p.add_argument("--out", default="data", help="output folder (default: data)")
    p.add_argument(
        "--dev-fraction",
        type=float,
        default=0.1,
        help="with --k full: share of each domain's pool used as dev (default: 0.1)",
    )
    p.add_argument("--force", action="store_true", help="overwrite prepared folders holding other data")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..splits import prepare

    group = args.group or (None if args.domains or args.input else "g1")
    config = PrepareConfig(
        out=args.out,
        corpora=args.corpora,
        group=group,
        domains=tuple(args.domains),
        input=args.input,
        test=args.test,
        k=args.k,
        seeds=tuple(args.seeds),
        dev_fraction=args.dev_fraction,
        force=args.force,
    )
    folders = prepare(config)
    for folder in folders:
        counts = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))["counts"]
        print(f"{folder}: " + ", ".join(f"{split} {c['total']}" for split, c in counts.items()))
    print(f"prepared {len(folders)} folder(s) under {args.out}")
    return 0
