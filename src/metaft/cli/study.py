"""``metaft run`` (the main job), ``metaft report`` and ``metaft predict``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError, DataError
from .prepare import k_argument


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="the main job: a multi-seed MFT study against the fine-tuning baseline, with a report",
        description="prepare -> preprocess (typicality) -> meta-finetune -> finetune every domain, plus the "
                    "baseline (the same fine-tuning from the raw pre-trained model). Finished units are "
                    "skipped on a rerun (--force redoes them).")
    p.add_argument("--out", help="run folder (default runs/study)")
    p.add_argument("--config", help="YAML or JSON file with study settings; CLI flags override it")
    p.add_argument("--group", help="domain group: g1 (SST-2, MR, CR; default) or amazon")
    p.add_argument("--domains", nargs="+", help="any other group of registered domains")
    p.add_argument("--input", help="your own multi-domain file (text<TAB>domain<TAB>label lines or JSONL)")
    p.add_argument("--corpora", help="raw corpora root (default: $METAFT_CORPORA)")
    p.add_argument("--k", type=k_argument, default=argparse.SUPPRESS, help="examples per label and domain, or 'full' (default 16)")
    p.add_argument("--seeds", nargs="+", type=int, help="default 42; the full study uses 13 21 42 87 100")
    p.add_argument("--model", help="any HF encoder folder or hub id (default: minilm, the packaged all-MiniLM-L6-v2)")
    p.add_argument("--ablations", help="comma-separated: no-typicality,no-domain-loss,multitask,grl (or 'all')")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE", default=[],
                   help="meta-stage setting, e.g. --meta epochs=10 --meta learning_rate=3e-5")
    p.add_argument("--finetune", action="append", metavar="KEY=VALUE", default=[], help="fine-tuning setting")
    p.add_argument("--typicality", action="append", metavar="KEY=VALUE", default=[], help="stage-1 setting")
    p.add_argument("--no-pca", dest="pca", action="store_false", default=None, help="skip the embedding PCA plot")
    p.add_argument("--jobs", type=int, help="units run at once in worker processes (default 0 = automatic: 2 on "
                                            "a CPU-only machine with 2+ cores, else 1)")
    p.add_argument("--force", action="store_true", default=None, help="redo finished units")
    p.set_defaults(func=run_main)

    r = subparsers.add_parser("report", help="rebuild report.md and the plots of a study from its JSON results")
    r.add_argument("run_dir")
    r.add_argument("--complete-seeds", action="store_true",
                   help="only seeds whose every unit has finished (an interim report of a running study)")
    r.set_defaults(func=report_main)

    q = subparsers.add_parser("predict", help="classify texts with a saved model: one JSON line per input line")
    q.add_argument("--model", required=True, help="a fine-tuned model folder (e.g. .../finetune/mft/SST-2/best)")
    q.add_argument("--input", default="-", help="a text file, one text per line, or - for standard input")
    q.add_argument("--max-length", type=int, default=128)
    q.add_argument("--batch-size", type=int, default=64)
    q.set_defaults(func=predict_main)


def _settings(pairs: list[str], what: str) -> dict:
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--{what} takes KEY=VALUE, got {pair!r}")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = raw
    return out


def run_main(args) -> int:
    from ..config import load_config_file
    from ..report import console_table, summarise
    from ..study import ABLATIONS, run_study, study_config_from

    file_settings = load_config_file(args.config) if args.config else {}
    overrides = {k: getattr(args, k) for k in ("out", "group", "input", "corpora", "model", "pca", "force", "jobs")
                 if getattr(args, k, None) is not None}
    if hasattr(args, "k"):
        overrides["k"] = args.k
    if args.domains:
        overrides["domains"] = args.domains
        overrides.setdefault("group", None)
    if args.seeds:
        overrides["seeds"] = args.seeds
    if args.ablations:
        names = [a.strip() for a in args.ablations.split(",") if a.strip()]
        overrides["ablations"] = list(ABLATIONS) if names == ["all"] else names
    for what in ("meta", "finetune", "typicality"):
        if getattr(args, what):
            overrides[what] = _settings(getattr(args, what), what)
    cfg = study_config_from(file_settings, overrides)
    study = run_study(cfg)
    print(console_table(summarise(study)))
    print(f"report: {Path(cfg.out) / 'report.md'}")
    return 0


def report_main(args) -> int:
    from ..report import complete_seeds, console_table, summarise, write_report
    from ..results import STUDY_FILE, read_study

    path = write_report(args.run_dir, complete_only=args.complete_seeds)
    study = read_study(Path(args.run_dir) / STUDY_FILE)
    if args.complete_seeds:
        study = study.only_seeds(complete_seeds(study))
    print(console_table(summarise(study)))
    print(f"report: {path}")
    return 0


def predict_main(args) -> int:
    from ..predict import load_predictor, predict

    if args.input == "-":
        lines = sys.stdin.read().split("\n")
    else:
        try:
            lines = Path(args.input).read_text(encoding="utf-8").split("\n")
        except FileNotFoundError:
            raise DataError(args.input, "file not found") from None
        except UnicodeDecodeError as exc:
            raise DataError(args.input, f"not valid UTF-8 (byte {exc.start})") from None
    texts = [t.rstrip("\r") for t in lines if t.strip()]
    model, tokenizer = load_predictor(args.model)
    for rec in predict(texts, model, tokenizer, args.max_length, args.batch_size):
        print(json.dumps(rec, ensure_ascii=False))
    return 0
