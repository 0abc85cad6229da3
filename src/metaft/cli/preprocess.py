"""``metaft preprocess``: stage 1, typicality scores (accepts the seed system's OneFlow flags)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..config import TypicalityConfig
from ..errors import ConfigError
from ..settings import add_arguments, from_args

logger = logging.getLogger(__name__)

EPILOG = """\
Outputs beside the data: typicality.tsv (uid, domain, label, score), typicality.json (summary),
embeddings.safetensors, prototypes.safetensors, typicality_hist.png. For a layout file other than
train.tsv, e.g. my.tsv, the names start with its stem: my.typicality.tsv, ...

Seed-system (OneFlow) command lines work as they are, e.g.
  metaft preprocess --task_name g1 --model_load_dir minilm --data_dir data/k-shot-cross/g1/16-42 \\
      --num_epochs 4 --seed 42 --seq_length=128 --train_example_num 96 --dev_example_num 96 \\
      --vocab_file V --resave_ofrecord
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "preprocess",
        help="stage 1: prototypes and typicality scores of the training examples",
        description="Embed the training examples with the frozen pre-trained encoder, build one prototype "
                    "per (domain, label) and write a typicality score per example.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", nargs="?", metavar="DATA_DIR_OR_FILE",
                   help="a prepared folder holding train.tsv, or a `text<TAB>domain<TAB>label` file")
    add_arguments(p, TypicalityConfig)
    seed = p.add_argument_group("seed-system (OneFlow) flags")
    seed.add_argument("--vocab_file", help="ignored: the vocabulary comes from the model folder; if given, it "
                                           "is compared with the model's and a warning is logged on mismatch")
    seed.add_argument("--task_name", help="accepted and ignored (the data folder names the task)")
    seed.add_argument("--num_epochs", type=float, help="accepted and ignored (no training in this stage)")
    seed.add_argument("--seed", type=int, help="accepted and ignored (this stage is deterministic)")
    seed.add_argument("--train_example_num", type=int,
                      help="expected number of training examples: checked, warning on mismatch")
    seed.add_argument("--dev_example_num", "--eval_example_num", dest="dev_example_num", type=int,
                      help="expected number of dev examples (dev.tsv beside train.tsv): checked, warning")
    p.set_defaults(func=run)


def _check_counts(args, train: Path) -> None:
    from ..corpora import read_mft_tsv

    checks = [(args.train_example_num, train, "--train_example_num")]
    if args.dev_example_num is not None:
        dev = train.with_name("dev.tsv")
        if dev.is_file():
            checks.append((args.dev_example_num, dev, "--dev_example_num"))
        else:
            logger.warning("--dev_example_num given but there is no %s", dev)
    for expected, path, flag in checks:
        if expected is None:
            continue
        found = len(read_mft_tsv(path))
        if found != expected:
            logger.warning("%s has %d examples, not %d as %s says; using all %d",
                           path, found, expected, flag, found)


def check_vocab(vocab_file: str, model: str, trust_remote_code: bool) -> None:
    from ..hub import load_tokenizer

    path = Path(vocab_file)
    if not path.is_file():
        logger.warning("--vocab_file %s not found; using the vocabulary of the model (%s)", path, model)
        return
    given = [line.rstrip("\r") for line in path.read_text(encoding="utf-8", errors="replace").split("\n")]
    while given and not given[-1]:
        given.pop()
    vocab = load_tokenizer(model, trust_remote_code=trust_remote_code).get_vocab()
    own = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    if given != own:
        logger.warning("--vocab_file %s differs from the vocabulary of %s (%d vs %d tokens); using the model's",
                       path, model, len(given), len(own))


def format_table(summary: dict) -> str:
    """Per (domain, label) count/min/mean/max as a fixed-width table."""
    rows = [("domain", "label", "n", "min", "mean", "max")]
    for domain, by_label in summary["stats"].items():
        for label, s in by_label.items():
            rows.append((domain, label, str(s["count"]), f"{s['min']:.4f}", f"{s['mean']:.4f}", f"{s['max']:.4f}"))
    o = summary["overall"]
    rows.append(("all", "", str(o["count"]), f"{o['min']:.4f}", f"{o['mean']:.4f}", f"{o['max']:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def run(args) -> int:
    from ..typicality import compute_typicality, score_paths

    given = getattr(args, "data_dir", None)
    data = args.data or given
    if args.data and given and args.data != given:
        raise ConfigError(f"two data paths given ({args.data} and --data_dir {given}); give one")
    if not data:
        raise ConfigError("give the data: metaft preprocess DATA_DIR_OR_FILE (or --data_dir)")
    config = from_args(TypicalityConfig, args, data_dir=data)
    paths = score_paths(data)
    _check_counts(args, paths.train)
    if args.vocab_file:
        check_vocab(args.vocab_file, config.model, config.trust_remote_code)
    compute_typicality(config)
    summary = json.loads(paths.summary.read_text(encoding="utf-8"))
    print(f"typicality: {summary['n']} examples, {config.model}, {config.pooling} pooling, "
          f"alpha {config.alpha}, {config.aggregation}")
    print(format_table(summary))
    if summary["single_domain"]:
        print("note: one domain only, so alpha = 1 (own prototype only) for every example")
    elif summary["alpha1_fallback"]:
        print(f"note: {summary['alpha1_fallback']} examples have a label no other domain has (alpha = 1 for them)")
    print(f"wrote {paths.scores}, {paths.summary.name}, {paths.embeddings.name}, {paths.prototypes.name}, "
          f"{paths.histogram.name}")
    return 0
