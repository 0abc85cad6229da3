"""``metaft run`` (the main job), ``metaft report`` and ``metaft predict``."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import PredictConfig, SplitSettings, StudyConfig, config_from_file, study_config_from
from ..errors import ConfigError
from ..settings import add_arguments, from_args, parse_text


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="the main job: a multi-seed MFT study against the fine-tuning baseline, with a report",
        description="prepare -> preprocess (typicality) -> meta-finetune -> finetune every domain, plus the "
                    "baseline (the same fine-tuning from the raw pre-trained model). Finished units are "
                    "skipped on a rerun (--force redoes them).")
    p.add_argument("--config", help="YAML or JSON file with study settings; CLI flags override it")
    add_arguments(p, StudyConfig, ["out", "model"], typed=False)
    add_arguments(p, SplitSettings, ["group", "domains", "input", "test", "corpora", "k", "dev_fraction"],
                  dest_prefix="prepare.", defaults_from=StudyConfig().prepare, typed=False)
    add_arguments(p, StudyConfig, ["seeds", "ablations"], typed=False)
    p.add_argument("--meta", action="append", metavar="KEY=VALUE", default=[],
                   help="meta-stage setting, e.g. --meta epochs=10 --meta learning_rate=3e-5 (the settings of "
                        "`metaft meta-finetune --help`, by name)")
    p.add_argument("--finetune", action="append", metavar="KEY=VALUE", default=[],
                   help="fine-tuning setting (those of `metaft finetune --help`)")
    p.add_argument("--typicality", action="append", metavar="KEY=VALUE", default=[],
                   help="stage-1 setting (those of `metaft preprocess --help`)")
    add_arguments(p, StudyConfig, ["pca", "jobs", "pack", "force", "label_noise"], typed=False)
    p.set_defaults(func=run_main)

    r = subparsers.add_parser("report", help="rebuild report.md and the plots of a study from its JSON results")
    r.add_argument("run_dir")
    r.add_argument("--complete-seeds", action="store_true",
                   help="only seeds whose every unit has finished (an interim report of a running study)")
    r.set_defaults(func=report_main)

    q = subparsers.add_parser("predict", help="classify texts with a saved model: one JSON line per input line")
    add_arguments(q, PredictConfig)
    q.set_defaults(func=predict_main)


def _settings(pairs: list[str], section: str) -> dict:
    """``--meta KEY=VALUE`` pairs as typed values of the section's settings."""
    cls = type(getattr(StudyConfig(), section))
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--{section} takes KEY=VALUE, got {pair!r}")
        key = key.strip().replace("-", "_")
        out[key] = parse_text(cls, key, raw, prefix=f"{section}.")
    return out


def study_config(args) -> StudyConfig:
    """The study of ``metaft run``: its config file's settings, overridden by its flags."""
    file_config = config_from_file(args.config) if args.config else None
    overrides: dict = {}
    for dest, value in vars(args).items():
        section, dot, key = dest.rpartition(".")
        if dot:
            overrides.setdefault(section, {})[key] = value
        elif dest in StudyConfig.__dataclass_fields__ and dest not in ("prepare", "typicality", "meta", "finetune"):
            overrides[dest] = value
    prepare = overrides.get("prepare", {})
    if "domains" in prepare and "group" not in prepare:
        prepare["group"] = None  # named by its domains, not the file's or the default group
    for section in ("typicality", "meta", "finetune"):
        if getattr(args, section):
            overrides[section] = _settings(getattr(args, section), section)
    return study_config_from(file_config, overrides)


def run_main(args) -> int:
    from ..report import console_table, summarise
    from ..study import run_study

    cfg = study_config(args)
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
    from ..predict import load_predictor, predict, read_input_lines

    cfg = from_args(PredictConfig, args)
    lines = read_input_lines(cfg.input)
    model, tokenizer = load_predictor(cfg.model)
    for rec in predict(lines, model, tokenizer, cfg.max_length, cfg.batch_size):
        print(json.dumps(rec, ensure_ascii=False))
    return 0
