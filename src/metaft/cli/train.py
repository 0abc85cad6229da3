"""``metaft meta-finetune`` (stage 2) and ``metaft finetune`` (stage 3); the seed system's flags work too."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from ..config import COMPILE_MODES, FinetuneConfig, MetaConfig
from ..errors import ConfigError

logger = logging.getLogger(__name__)
S = argparse.SUPPRESS  # unset flags keep the config dataclass defaults

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
  model="<out>/best") loads it) and results.json (test accuracy, macro-F1, per-label counts, best dev).

Seed-system (OneFlow) command lines run as written, e.g.
  metaft finetune --task_name sst-2 --model_load_dir runs/meta-g1-42/snapshot_best_mft_model_g1_dev_0.78125 \\
      --data_dir data/k-shot-single/SST-2/16-42 --num_epochs 64 --seed 42 --seq_length=128 \\
      --train_example_num 32 --dev_example_num 32 --eval_example_num 872 --batch_size_per_device 2 \\
      --dev_batch_size_per_device 2 --eval_batch_size_per_device 2 --dev_every_step_num 50 \\
      --vocab_file V --learning_rate 1e-5 --resave_ofrecord
The baseline MFT must beat: the same command with --model minilm (the raw pre-trained checkpoint).
"""

ONEFLOW_ONLY = ("gpu_num_per_node", "node_num", "num_nodes", "loss_print_every_n_iter", "log_dir")


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers, got {text!r}") from None


def _common(p: argparse.ArgumentParser, cls) -> None:
    add, d = p.add_argument, cls  # d: the stage's defaults, shown in --help
    add("--data-dir", "--data_dir", dest="data_dir", default=S, help="prepared folder (train.tsv, dev.tsv, ...)")
    add("--model", "--model_load_dir", dest="model", default=S,
        help="hub id, local HF folder or alias (default minilm = packaged all-MiniLM-L6-v2)")
    add("--out", "--model_save_dir", dest="out", default=S, help="run folder (default: see below)")
    add("--task-name", "--task_name", dest="task_name", default=S, help="names the run and its snapshots")
    add("--epochs", "--num_epochs", dest="epochs", type=float, default=S, help=f"epochs, may be fractional (default {d.epochs:g})")
    add("--batch-size", "--batch_size_per_device", dest="batch_size", type=int, default=S,
        help=f"training batch size per device (default {d.batch_size})")
    add("--eval-batch-size", "--dev_batch_size_per_device", "--eval_batch_size_per_device", dest="eval_batch_size",
        type=int, default=S, help=f"evaluation batch size per device, dev and test (default {d.eval_batch_size})")
    add("--lr", "--learning-rate", "--learning_rate", dest="learning_rate", type=float, default=S,
        help=f"peak learning rate of AdamW (default {d.learning_rate:g})")
    add("--eval-every", "--dev_every_step_num", dest="eval_every", type=int, default=S,
        help="evaluate on dev every N steps and at the end (0 = once per epoch)")
    add("--max-length", "--seq_length", "--max_seq_length", dest="max_length", type=int, default=S,
        help="tokens per text (default 128)")
    add("--seed", type=int, default=S,
        help=f"run seed: shuffling, head init, dropout, domain permutations (default {d.seed})")
    add("--train-limit", "--train_example_num", dest="train_limit", type=int, default=S,
        help="use the first N training examples (warns when the file has another count)")
    add("--dev-limit", "--dev_example_num", dest="dev_limit", type=int, default=S, help="first N dev examples")
    add("--weight-decay", "--weight_decay_rate", dest="weight_decay", type=float, default=S,
        help=f"AdamW weight decay, not on biases/LayerNorm (default {d.weight_decay:g})")
    add("--warmup-ratio", "--warmup_proportion", dest="warmup_ratio", type=float, default=S,
        help=f"linear warm-up share of the steps, then linear decay to 0 (default {d.warmup_ratio:g})")
    add("--dropout", type=float, default=S, help="classifier dropout (default 0.1)")
    add("--mixed-precision", dest="mixed_precision", choices=("auto", "no", "bf16", "fp16"), default=S,
        help="auto (default) = bf16 on CUDA devices that support it, else none")
    add("--compile", dest="compile_mode", nargs="?", const="default", choices=COMPILE_MODES, default=S,
        metavar="MODE", help="torch.compile the model for training; MODE: default, reduce-overhead (CUDA graphs: "
                             "pair it with --pad-to-multiple-of 32 so batches come in a few fixed widths), "
                             "max-autotune, max-autotune-no-cudagraphs")
    add("--pad-to-multiple-of", dest="pad_to_multiple_of", type=int, default=S, metavar="N",
        help="pad each batch to the longest text rounded up to a multiple of N (default 8; 1 = the longest text)")
    add("--group-by-length", dest="group_by_length", action="store_true", default=S,
        help="batch texts of similar length together (less padding; the order stays seeded)")
    add("--save-state-every", dest="save_state_every_s", type=float, default=S, metavar="SECONDS",
        help=f"save the resumable training state at an evaluation at most this often (default "
             f"{d.save_state_every_s:g}; 0 = at every evaluation)")
    add("--resume", action="store_true", default=S, help="continue an interrupted run from its last evaluation")
    add("--force", action="store_true", default=S, help="overwrite an existing run folder")
    add("--trust-remote-code", dest="trust_remote_code", action="store_true", default=S)
    add("--head-pooling", dest="head_pooling", choices=("auto", "mean", "cls", "pooler"), default=S,
        help=f"classification head: auto = the encoder's declared sentence pooling (a sentence-transformers "
             f"folder's 1_Pooling), else pooler; mean / cls = masked token mean / first token -> linear; pooler "
             f"= the architecture's default HF head (default {d.head_pooling})")
    inits = ", ".join(d.HEAD_INITS)
    add("--head-init", dest="head_init", choices=d.HEAD_INITS, default=S,
        help=f"{inits}: reinit = a fresh seeded head; probe = a fresh head fitted first by logistic regression "
             f"on the frozen features, C chosen on dev (LP-FT)" + ("; keep = the meta-learner's head"
                                                                   if "keep" in d.HEAD_INITS else "")
             + f" (default {d.head_init})")
    add("--head-lr", "--head-learning-rate", dest="head_learning_rate", type=float, default=S,
        help="peak learning rate of the classification head (default: the same as --lr)")
    seed = p.add_argument_group("seed-system (OneFlow) flags")
    seed.add_argument("--resave_ofrecord", "--no-cache", dest="use_cache", action="store_false", default=S,
                      help="tokenise afresh, bypassing the tokenisation cache (metaft has no OFRecord files)")
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
        epilog=META_EPILOG)
    _common(meta, MetaConfig)
    add = meta.add_argument
    add("--domain-loss", dest="domain_loss", choices=("corrupt", "grl", "none"), default=S,
        help="corrupt (default, the paper's), grl (gradient-reversal ablation) or none")
    add("--domain-weight", dest="domain_weight", type=float, default=S, help="lambda (default 0.1)")
    add("--domain-layers", dest="domain_layers", type=_layers, default=S,
        help="0-based encoder layers of the domain loss, e.g. 2,5,8,11 (default: 4 evenly spaced)")
    add("--no-typicality", dest="typicality", action="store_false", default=S,
        help="weight every example 1.0 (ablation); default: scores of `metaft preprocess`")
    add("--typicality-norm", dest="typicality_norm", choices=("none", "mean", "mean-global"), default=S,
        help="divide scores by their overall mean (default, chosen on g1 dev sets), their per-domain mean, "
             "or not at all")
    meta.set_defaults(func=run_meta)

    ft = subparsers.add_parser(
        "finetune", help="stage 3: fine-tune on one domain and test the best-dev model", formatter_class=fmt,
        description="Standard fine-tuning on one domain, starting from a meta-learner folder (or any "
                    "checkpoint: the baseline); the best-dev checkpoint is evaluated on the test set.",
        epilog=FINETUNE_EPILOG)
    _common(ft, FinetuneConfig)
    ft.add_argument("--test-limit", "--eval_example_num", dest="test_limit", type=int, default=S,
                    help="first N test examples")
    ft.add_argument("--head", dest="head_init", choices=FinetuneConfig.HEAD_INITS, default=S,
                    help="the same as --head-init")
    ft.add_argument("--domain", default=S, help="the domain to use when the data folder holds several")
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
