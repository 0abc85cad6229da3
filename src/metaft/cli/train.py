"""``metaft meta-finetune`` (stage 2) and ``metaft finetune`` (stage 3); the seed system's flags work too."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from ..config import REFERENCE_BEHAVIOUR, FinetuneConfig, MetaConfig
from ..errors import ConfigError
from ..settings import add_arguments, field_map

logger = logging.getLogger(__name__)

META_EPILOG = """\
Output (default runs/meta-<task>-<seed>, <task> = --task_name or the data folder's group, e.g. g1):
  config.json, metrics.jsonl (every logged value), meta_results.json, and the best meta-learner as
  snapshot_best_mft_model_<task>_dev_<accuracy>/ (a Hugging Face folder + domain_head.safetensors).

Seed-system (OneFlow) command lines run as written, e.g.
  metaft meta-finetune --task_name g1 --model_load_dir minilm --data_dir data/k-shot-cross/g1/16-42 \\
      --num_epochs 63 --seed 42 --seq_length=128 --train_example_num 96 --dev_example_num 96 \\
      --batch_size_per_device 4 --dev_batch_size_per_device 2 --dev_every_step_num 100 \\
      --vocab_file V --learning_rate 5e-5 --resave_ofrecord
Unlike the seed system, the run folder does not hold a timestamp (rerunning it needs --force or --resume).
Multi-GPU: `accelerate launch -m metaft meta-finetune ...` (batch sizes are per device).
"""

FINETUNE_EPILOG = """\
Output (default runs/finetune-<task>-<seed>, <task> = --task_name or the data folder's domain, e.g. SST-2):
  config.json, metrics.jsonl, best/ (a Hugging Face folder: transformers.pipeline("text-classification",
  model="<out>/best", trust_remote_code=True) loads it; a pooler head needs no remote code) and
  results.json (test accuracy, macro-F1, per-label counts, best dev).

Seed-system (OneFlow) command lines run as written, e.g.
  metaft finetune --task_name sst-2 --model_load_dir runs/meta-g1-42/snapshot_best_mft_model_g1_dev_0.78125 \\
      --data_dir data/k-shot-single/SST-2/16-42 --num_epochs 64 --seed 42 --seq_length=128 \\
      --train_example_num 32 --dev_example_num 32 --eval_example_num 872 --batch_size_per_device 2 \\
      --dev_batch_size_per_device 2 --eval_batch_size_per_device 2 --dev_every_step_num 50 \\
      --vocab_file V --learning_rate 1e-5 --resave_ofrecord
The baseline MFT must beat: the same command with --model minilm (the raw pre-trained checkpoint).
"""

REFERENCE_EPILOG = """
The head and domain-corruption defaults were chosen on dev sets; the reference system's: add {flags}
"""

ONEFLOW_ONLY = ("gpu_num_per_node", "node_num", "num_nodes", "loss_print_every_n_iter", "log_dir")


def reference_flags(cls) -> str:
    """The command-line flags of :data:`REFERENCE_BEHAVIOUR` (a boolean's flag alone: it sets the value)."""
    fields = field_map(cls)
    flag = {k: (fields[k].metadata["flags"] or ("--" + k.replace("_", "-"),))[0] for k in fields}
    return " ".join(flag[k] if isinstance(v, bool) else f"{flag[k]} {v}"
                    for k, v in REFERENCE_BEHAVIOUR.items() if k in fields)


def _common(p: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """The flags of a training command, generated from the settings of ``cls``, and the seed system's."""
    add_arguments(p, cls, [f.name for f in dataclasses.fields(cls) if f.name not in skip])
    seed = p.add_argument_group("seed-system (OneFlow) flags")
    seed.add_argument("--vocab_file", "--vocab-file", dest="vocab_file", default=None,
                      help="checked only: the vocabulary always comes from the model folder (its embeddings "
                           "match it); a warning is logged when this file differs")
    for name in ONEFLOW_ONLY:
        seed.add_argument(f"--{name}", dest=f"oneflow_{name}", default=None, metavar="X",
                          help="OneFlow only; ignored (use `accelerate launch` for several devices)")


def register(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    meta = subparsers.add_parser(
        "meta-finetune", help="stage 2: train one meta-learner on all domains", formatter_class=fmt,
        description="Meta fine-tuning: typicality-weighted cross-entropy plus lambda x domain-corruption loss "
                    "on the union of all domains; the best checkpoint on the cross-domain dev set is kept.",
        epilog=META_EPILOG + REFERENCE_EPILOG.format(flags=reference_flags(MetaConfig)))
    _common(meta, MetaConfig, skip=("test_limit",))
    meta.set_defaults(func=run_meta)

    ft = subparsers.add_parser(
        "finetune", help="stage 3: fine-tune on one domain and test the best-dev model", formatter_class=fmt,
        description="Standard fine-tuning on one domain, starting from a meta-learner folder (or any "
                    "checkpoint: the baseline); the best-dev checkpoint is evaluated on the test set.",
        epilog=FINETUNE_EPILOG + REFERENCE_EPILOG.format(flags=reference_flags(FinetuneConfig)))
    _common(ft, FinetuneConfig)
    ft.set_defaults(func=run_finetune)


def make_config(args, cls, kind: str):
    """Map parsed flags onto ``cls`` (MetaConfig or FinetuneConfig); unset flags keep its defaults."""
    from ..prepared import task_name_for

    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if "compile_mode" in values:  # --compile [MODE]
        values["compile"] = True
    if not values.get("data_dir"):
        raise ConfigError(f"give the data folder: metaft {args.command} --data-dir DIR")
    ignored = [f"--{k[8:]}" for k, v in vars(args).items() if k.startswith("oneflow_") and v is not None]
    if ignored:
        logger.warning("ignored (OneFlow only): %s", ", ".join(ignored))
    if "out" not in values:
        task = values.get("task_name") or task_name_for(values["data_dir"])
        values["out"] = str(Path("runs") / f"{kind}-{task}-{values.get('seed', cls.seed)}")
    config = cls(**values)
    if args.vocab_file:
        from .preprocess import check_vocab

        check_vocab(args.vocab_file, config.model, config.trust_remote_code)
    return config


def _main_process() -> bool:
    """Under `accelerate launch` / torchrun only the main process prints the summary."""
    from ..devices import process_state

    return process_state().is_main_process


def run_meta(args) -> int:
    from ..results import META_RESULTS, read_meta_result
    from ..stages import meta_finetune

    config = make_config(args, MetaConfig, "meta")
    best = meta_finetune(config)
    if not _main_process():
        return 0
    res = read_meta_result(Path(config.out) / META_RESULTS)
    print(f"meta dev accuracy: {res.best_dev_accuracy:.4f} (step {res.best_step} of {res.total_steps}, "
          f"{res.num_examples['dev']} dev examples)")
    print(f"best meta-learner: {best}")
    print(f"results: {Path(config.out) / META_RESULTS} (wall time {res.wall_time_s:.1f} s)")
    return 0


def run_finetune(args) -> int:
    from ..results import RESULTS
    from ..stages import finetune

    config = make_config(args, FinetuneConfig, "finetune")
    res = finetune(config)
    if not _main_process():
        return 0
    print(f"best dev accuracy: {res.best_dev_accuracy:.4f} (step {res.best_step} of {res.total_steps})")
    if res.test is not None:
        print(f"test accuracy: {res.test_accuracy:.4f}, macro-F1 {res.test_macro_f1:.4f} "
              f"({res.test['n']} examples)")
    print(f"best model: {res.best_model}")
    print(f"results: {Path(config.out) / RESULTS} (train {res.timings['train_s']:.1f} s, "
          f"test {res.timings['eval_s']:.1f} s)")
    return 0
