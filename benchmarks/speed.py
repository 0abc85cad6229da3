"""Training speed of metaft against a Hugging Face ``Trainer`` reference, and end-to-end recipe wall time.

    python benchmarks/speed.py --device cpu --model minilm --steps 30 --e2e-scale 0.05
    python benchmarks/speed.py --device cuda --model bert-base-random --steps 100 --e2e-scale 1

(a) throughput (examples/s) of the real metaft loop: ``stages.meta_finetune`` (stage 2: MetaLearner,
    corrupt domain loss, typicality weights, fused AdamW, dynamic padding) on the g1 16-42 cross train set
    at batch 4, and ``stages.finetune`` (stage 3: plain CE classifier) on SST-2 16-42 at batch 2; max
    length 128. Only the step phase is timed: ``training._Loop._train_step`` is wrapped and the end time
    of every loop iteration (with its metrics bookkeeping) recorded; the run is stopped after warm-up W +
    N timed steps (no evaluation, no checkpoint). Throughput = batch / median step time, which a burst of
    another job on the machine barely moves (the total-time figure is saved as well).
(b) reference: ``transformers.Trainer`` on the same model (metaft's ``load_classifier``: an
    AutoModelForSequenceClassification), the same token ids, the same example order (metaft's epoch
    permutations, fed through ``train_sampling_strategy="sequential"``), batch size, lr, weight decay,
    warm-up ratio, gradient clipping, ``DataCollatorWithPadding`` padding to a multiple of 8 tokens as metaft
    does by default (identical batches), no eval, no saving, ``report_to=[]``; optimiser
    ``adamw_torch_fused`` (what metaft uses) and ``adamw_torch`` (the Trainer default); on CPU also the
    Trainer with the malloc setting metaft's CPU training applies (``training.keep_freed_memory``), to show
    what that setting is worth. On CPU every run is a fresh Python process (no run inherits another's
    allocator state or process-wide settings; on CUDA, where that setting is not applied, the runs share
    one process, which keeps the device call short); runs alternate (one of each variant per repeat);
    medians of the repeats are reported.
(c) end-to-end wall time of the g1 16-42 seed recipe through the Python API (typicality preprocess,
    meta-finetune 63 epochs batch 4 lr 5e-5 dev every 100, finetune SST-2 64 epochs batch 2 lr 1e-5 dev
    every 50, test 872) with dynamic padding versus everything padded to 128 (``pad_to_length=128``; the
    typicality embedding gets ``pad_to=128`` too). ``--e2e-scale`` multiplies the epoch counts.
On CUDA (bf16 autocast) it also measures stage-2 throughput at batch 4 and 32 with every batch padded to
128 tokens as a percentage of a measured bf16 matmul ceiling (``--mfu`` runs the same on CPU in fp32).
The results JSON is rewritten (atomically, whole) after every measured figure, so a run cut at a time limit
keeps every figure it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
G1_RECIPE = {"meta_epochs": 63, "meta_batch": 4, "meta_lr": 5e-5, "meta_eval_every": 100, "meta_limit": 96,
             "ft_epochs": 64, "ft_batch": 2, "ft_lr": 1e-5, "ft_eval_every": 50, "ft_limit": 32, "test_limit": 872,
             "eval_batch": 2, "max_length": 128, "seed": 42}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--model", choices=("minilm", "bert-base-random"), default="minilm")
    p.add_argument("--minilm", default="minilm", metavar="DIR",
                   help="where the default model is, if its package is not installed (e.g. a carried copy)")
    p.add_argument("--steps", type=int, default=100, help="timed optimiser steps per throughput run")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before the timed ones, every run")
    p.add_argument("--repeats", type=int, default=3, help="runs of every variant (alternating); medians")
    p.add_argument("--e2e-scale", type=float, default=1.0, help="multiplies the recipe's epochs (0 = skip (c))")
    p.add_argument("--skip-throughput", action="store_true", help="only (c)")
    p.add_argument("--no-adamw-torch", action="store_true", help="skip the Trainer adamw_torch (unfused) reference")
    p.add_argument("--mfu", action="store_true", help="also the padded-128 %%-of-matmul-ceiling part on CPU")
    p.add_argument("--compile-mode", default=None,
                   help="also time stage 2 under torch.compile in this mode (on CUDA with batches padded to "
                        "multiples of 32: 4 static widths up to 128); default on CUDA: reduce-overhead (CUDA graphs), "
                        "on CPU: none (skip)")
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/speed-<device>.json)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one variant in this process
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)  # internal: the parent's prepared folder
    p.add_argument("--repeat-index", type=int, default=0, help=argparse.SUPPRESS)  # internal: names its run folder
    args = p.parse_args(argv)
    if args.compile_mode is None:
        args.compile_mode = "reduce-overhead" if args.device == "cuda" else "none"
    if args.out is None:
        args.out = str(ROOT / "benchmarks" / "results" / f"speed-{args.device}.json")
    return args


# ------------------------------------------------------------------------------------------------ setup

def machine_info(device: str) -> dict:
    import accelerate
    import torch
    import transformers

    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "python": platform.python_version(), "cpu": name, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__, "device": device,
            "load_average_start": os.getloadavg()}
    if device == "cuda":
        info["device_name"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = name
    return info


def model_folder(name: str, work: Path, minilm: str = "minilm") -> str:
    """``minilm``: the default checkpoint (``minilm``: a folder holding it where the package is not installed).
    ``bert-base-random``: BertConfig() (BERT-base shape), seeded random weights, the minilm tokenizer (same
    30522-token uncased WordPiece vocabulary), saved as a HF folder."""
    from metaft.hub import load_tokenizer, resolve_model

    if name == "minilm":
        return resolve_model(minilm)
    import torch
    from transformers import BertConfig, BertModel

    folder = work / "bert-base-random"
    if folder.exists():  # saved by the parent of an isolated run
        return str(folder)
    tok = load_tokenizer(minilm)
    config = BertConfig(vocab_size=len(tok))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        BertModel(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return str(folder)


def data_dirs(work: Path) -> tuple[Path, Path]:
    """The g1 16-42 cross-domain folder and the SST-2 16-42 folder that ``prepare_data`` writes."""
    return work / "data" / "k-shot-cross" / "g1" / "16-42", work / "data" / "k-shot-single" / "SST-2" / "16-42"


def prepare_data(work: Path) -> tuple[Path, Path]:
    from metaft.config import PrepareConfig
    from metaft.splits import prepare

    corpora = os.environ.get("METAFT_CORPORA", str(ROOT.parent / "shared" / "data"))
    prepare(PrepareConfig(out=str(work / "data"), corpora=corpora, group="g1", k=16, seeds=(42,)))
    return data_dirs(work)


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------- (a) metaft loop

class _Stop(Exception):
    """Raised from inside the loop once the timed steps are done (no final evaluation or checkpoint)."""


@contextlib.contextmanager
def step_timer(total: int, device: str):
    """Wrap ``_Loop._train_step``: record the end time of every step and batch widths; stop after ``total``."""
    from metaft import training

    record = {"t": [], "tokens": []}
    orig_step, orig_batch = training._Loop._train_step, training._Loop._batch

    def batch(loop, step):
        out = orig_batch(loop, step)
        record["tokens"].append(int(out["input_ids"].numel()))
        return out

    def train_step(loop):
        out = orig_step(loop)
        sync(device)
        record["t"].append(time.perf_counter())
        if len(record["t"]) >= total:
            raise _Stop
        return out

    training._Loop._train_step, training._Loop._batch = train_step, batch
    try:
        yield record
    finally:
        training._Loop._train_step, training._Loop._batch = orig_step, orig_batch


def throughput(record: dict, warmup: int, steps: int, batch: int) -> dict:
    """Examples/s from the median step time (robust to the bursts of a shared machine: both sides see the
    same batches in the same order, so their medians compare like for like) and from the total time."""
    t = record["t"]
    seconds = t[warmup + steps - 1] - t[warmup - 1] if warmup else t[steps - 1] - t[0]
    n = steps if warmup else steps - 1
    durations = [b - a for a, b in zip(t[max(warmup, 1) - 1:warmup + steps - 1], t[max(warmup, 1):warmup + steps])]
    median = statistics.median(durations)
    padded = record["tokens"][warmup:warmup + steps]
    return {"examples_per_s": batch / median, "s_per_step": median, "examples_per_s_total_time": n * batch / seconds,
            "timed_steps": n, "mean_padded_tokens_per_batch": sum(padded) / len(padded) if padded else None}


def run_metaft(stage: int, data: Path, model: str, out: Path, batch: int, args, mp: str, **extra) -> dict:
    """Stage 2 (``meta_finetune``) or 3 (``finetune``) for warmup+steps optimiser steps, timed per step."""
    import math

    from metaft.config import FinetuneConfig, MetaConfig
    from metaft.corpora import read_mft_tsv
    from metaft.stages import finetune, meta_finetune

    total = args.warmup + args.steps
    n = len(read_mft_tsv(data / "train.tsv"))
    epochs = total / math.ceil(n / batch)  # the lr schedule ends exactly at the last timed step
    common = dict(data_dir=str(data), model=model, out=str(out), epochs=epochs, batch_size=batch,
                  eval_every=10**9, max_length=128, seed=42, mixed_precision=mp, force=True, **extra)
    cfg = (MetaConfig(learning_rate=5e-5, **common) if stage == 2
           else FinetuneConfig(learning_rate=1e-5, **common))
    with step_timer(total, args.device) as record:
        try:
            (meta_finetune if stage == 2 else finetune)(cfg)
        except _Stop:
            pass
    shutil.rmtree(out, ignore_errors=True)
    if len(record["t"]) < total:
        raise RuntimeError(f"stage {stage} ran {len(record['t'])} steps, expected {total}")
    return throughput(record, args.warmup, args.steps, batch)


# ---------------------------------------------------------------------------------- (b) HF Trainer reference

def run_trainer(data: Path, model: str, out: Path, batch: int, lr: float, optim: str, args) -> dict:
    """``transformers.Trainer`` on the same model, token ids, example order and hyper-parameters."""
    import math

    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from metaft.config import TrainConfig
    from metaft.corpora import read_mft_tsv, sort_labels
    from metaft.features import encode
    from metaft.hub import load_tokenizer
    from metaft.modeling import load_classifier
    from metaft.training import epoch_permutation, seeded

    total = args.warmup + args.steps
    examples = read_mft_tsv(data / "train.tsv")
    labels = sort_labels({ex.label for ex in examples})
    label_ids = {lab: i for i, lab in enumerate(labels)}
    tokenizer = load_tokenizer(model)
    enc = encode(examples, tokenizer, 128)
    rows = []
    for i in range(len(examples)):
        row = {"input_ids": enc.ids[i].tolist(), "attention_mask": [1] * len(enc.ids[i]),
               "labels": label_ids[examples[i].label]}
        if enc.type_ids is not None:
            row["token_type_ids"] = enc.type_ids[i].tolist()
        rows.append(row)
    order: list[int] = []  # metaft's batches (n is a multiple of the batch size here: identical batches)
    for epoch in range(math.ceil(total * batch / len(rows)) + 1):
        order += epoch_permutation(len(rows), 42, epoch)
    dataset = [rows[i] for i in order[:total * batch]]
    with seeded(42):
        net = load_classifier(model, labels, head="reinit", dropout=0.1, seed=42)
    record = {"t": [], "tokens": []}

    class Timer(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):
            sync(args.device)
            record["t"].append(time.perf_counter())

    class Collate(DataCollatorWithPadding):
        def __call__(self, features):
            out = super().__call__(features)
            record["tokens"].append(int(out["input_ids"].numel()))
            return out

    targs = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch, max_steps=total, learning_rate=lr,
        weight_decay=0.01, warmup_steps=0.1, lr_scheduler_type="linear", max_grad_norm=1.0, optim=optim,
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
        use_cpu=args.device == "cpu", bf16=args.device == "cuda", seed=42, dataloader_num_workers=0,
        train_sampling_strategy="sequential",
    )
    collate = Collate(tokenizer, pad_to_multiple_of=TrainConfig.pad_to_multiple_of)  # metaft's default padding
    trainer = Trainer(model=net, args=targs, train_dataset=dataset, data_collator=collate,
                      callbacks=[Timer()])
    trainer.train()
    shutil.rmtree(out, ignore_errors=True)
    return throughput(record, args.warmup, args.steps, batch)


# ----------------------------------------------------------------------------------------- (c) end to end

@contextlib.contextmanager
def typicality_pad_to(pad_to: int | None):
    """The preprocess stage's embedding padded to ``pad_to`` (TypicalityConfig has no such setting)."""
    from metaft import typicality

    orig = typicality.embed_examples

    def embed(*a, **kw):
        return orig(*a, **{**kw, "pad_to": pad_to})

    typicality.embed_examples = embed if pad_to else orig
    try:
        yield
    finally:
        typicality.embed_examples = orig


def run_e2e(cross: Path, sst2: Path, model: str, work: Path, scale: float, pad_to: int | None, mp: str) -> dict:
    """preprocess -> meta-finetune -> finetune (+ test) of the g1 16-42 recipe; a fresh feature cache and a
    fresh copy of the data (so tokenisation and typicality run every time)."""
    from metaft.config import FinetuneConfig, MetaConfig, TypicalityConfig
    from metaft.results import META_RESULTS, read_meta_result
    from metaft.stages import finetune, meta_finetune
    from metaft.typicality import compute_typicality

    r = G1_RECIPE
    if work.exists():
        shutil.rmtree(work)
    data = work / "data"
    shutil.copytree(cross, data / "cross")
    shutil.copytree(sst2, data / "SST-2")
    old_cache = os.environ.get("METAFT_CACHE")
    os.environ["METAFT_CACHE"] = str(work / "cache")
    timings = {}
    try:
        t0 = time.perf_counter()
        with typicality_pad_to(pad_to):
            compute_typicality(TypicalityConfig(data_dir=str(data / "cross"), model=model, max_length=128))
        t1 = time.perf_counter()
        best = meta_finetune(MetaConfig(
            data_dir=str(data / "cross"), model=model, out=str(work / "meta"), epochs=r["meta_epochs"] * scale,
            batch_size=r["meta_batch"], eval_batch_size=r["eval_batch"], learning_rate=r["meta_lr"],
            eval_every=r["meta_eval_every"], max_length=r["max_length"], seed=r["seed"], train_limit=r["meta_limit"],
            dev_limit=r["meta_limit"], task_name="g1", mixed_precision=mp, pad_to_length=pad_to))
        t2 = time.perf_counter()
        res = finetune(FinetuneConfig(
            data_dir=str(data / "SST-2"), model=str(best), out=str(work / "ft"), epochs=r["ft_epochs"] * scale,
            batch_size=r["ft_batch"], eval_batch_size=r["eval_batch"], learning_rate=r["ft_lr"],
            eval_every=r["ft_eval_every"], max_length=r["max_length"], seed=r["seed"], train_limit=r["ft_limit"],
            dev_limit=r["ft_limit"], test_limit=r["test_limit"], task_name="sst-2", mixed_precision=mp,
            pad_to_length=pad_to))
        t3 = time.perf_counter()
        meta = read_meta_result(work / "meta" / META_RESULTS)
        timings = {"total_s": t3 - t0, "preprocess_s": t1 - t0, "meta_finetune_s": t2 - t1, "finetune_s": t3 - t2,
                   "meta_steps": meta.total_steps, "finetune_steps": res.total_steps,
                   "meta_best_dev_accuracy": meta.best_dev_accuracy, "test_accuracy": res.test_accuracy,
                   "test_n": res.test["n"]}
    finally:
        if old_cache is None:
            os.environ.pop("METAFT_CACHE", None)
        else:
            os.environ["METAFT_CACHE"] = old_cache
        shutil.rmtree(work, ignore_errors=True)
    return timings


# --------------------------------------------------------------------------------- %-of-ceiling (CUDA)

def matmul_ceiling(device: str) -> dict:
    """Measured dense matmul FLOP/s: bf16 8192^3 on CUDA, fp32 2048^3 on CPU."""
    import torch

    n, dtype, iters = (8192, torch.bfloat16, 20) if device == "cuda" else (2048, torch.float32, 5)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        torch.matmul(a, b)
    sync(device)
    seconds = time.perf_counter() - t0
    return {"n": n, "dtype": str(dtype), "tflops": 2 * n ** 3 * iters / seconds / 1e12}


def train_flops_per_example(model: str, seq: int) -> float:
    """Matmul FLOPs of one training example of ``seq`` tokens (forward + backward = 3 x forward)."""
    from transformers import AutoConfig

    from metaft.hub import resolve_model

    c = AutoConfig.from_pretrained(resolve_model(model))
    h, layers, inter = c.hidden_size, c.num_hidden_layers, c.intermediate_size
    per_token = 2 * layers * (4 * h * h + 2 * h * inter) + 2 * layers * 2 * seq * h  # projections + attention
    return 3 * seq * per_token


# ------------------------------------------------------------------------------------------------- main

def throughput_variants(args, work: Path, model: str, mp: str) -> dict:
    """Name -> function(run folder) -> throughput dict, for every variant timed in (a) and (b)."""
    cross, sst2 = data_dirs(work)

    def trainer_with_metaft_malloc(o):
        from metaft.training import keep_freed_memory

        keep_freed_memory()
        return run_trainer(cross, model, o, 4, 5e-5, "adamw_torch_fused", args)

    variants = {
        "metaft_stage2_corrupt": lambda o: run_metaft(2, cross, model, o, 4, args, mp),
        "metaft_stage2_no_domain_loss": lambda o: run_metaft(2, cross, model, o, 4, args, mp, domain_loss="none"),
        "trainer_g1_adamw_torch_fused": lambda o: run_trainer(cross, model, o, 4, 5e-5, "adamw_torch_fused", args),
        "metaft_stage3_ce": lambda o: run_metaft(3, sst2, model, o, 2, args, mp),
        "trainer_sst2_adamw_torch_fused": lambda o: run_trainer(sst2, model, o, 2, 1e-5, "adamw_torch_fused", args),
    }
    if args.device == "cpu":
        # what the default padding to multiples of 8 costs here
        variants["metaft_stage2_pad_longest"] = lambda o: run_metaft(2, cross, model, o, 4, args, mp,
                                                                     pad_to_multiple_of=1)
        # the Trainer with the malloc setting metaft's CPU training applies (training.keep_freed_memory)
        variants["trainer_g1_adamw_torch_fused_metaft_malloc"] = trainer_with_metaft_malloc
    if args.compile_mode != "none":
        variants["metaft_stage2_compiled"] = lambda o: run_metaft(  # CPU: 16 widths, dynamic shapes
            2, cross, model, o, 4, args, mp, compile=True, compile_mode=args.compile_mode,
            pad_to_multiple_of=32 if args.device == "cuda" else 8)
    if not args.no_adamw_torch:
        variants["trainer_g1_adamw_torch"] = lambda o: run_trainer(cross, model, o, 4, 5e-5, "adamw_torch", args)
        variants["trainer_sst2_adamw_torch"] = lambda o: run_trainer(sst2, model, o, 2, 1e-5, "adamw_torch", args)
    return variants


def run_isolated(name: str, rep: int, work: Path, argv: list[str]) -> dict:
    """One throughput run in a fresh Python process, so that no run inherits another's allocator state or
    process-wide settings (metaft's CPU training tunes malloc; a plain Trainer script does not)."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--one", name, "--work", str(work),
           "--repeat-index", str(rep)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} (repeat {rep + 1}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    return {"examples_per_s": statistics.median(r["examples_per_s"] for r in runs),
            "s_per_step": statistics.median(r["s_per_step"] for r in runs),
            "runs_examples_per_s": [round(r["examples_per_s"], 3) for r in runs],
            "mean_padded_tokens_per_batch": runs[0]["mean_padded_tokens_per_batch"]}


def ratios_of(eps: dict[str, float], args) -> dict[str, float]:
    """The throughput ratios whose two variants are measured (all of them once every variant is)."""
    pairs = {
        "stage2_vs_trainer_fused": ("metaft_stage2_corrupt", "trainer_g1_adamw_torch_fused"),
        "stage3_vs_trainer_fused": ("metaft_stage3_ce", "trainer_sst2_adamw_torch_fused"),
        "stage2_vs_trainer_fused_metaft_malloc": ("metaft_stage2_corrupt", "trainer_g1_adamw_torch_fused_metaft_malloc"),
        "stage2_pad_longest_vs_pad_8": ("metaft_stage2_pad_longest", "metaft_stage2_corrupt"),
        "stage2_compiled_vs_trainer_fused": ("metaft_stage2_compiled", "trainer_g1_adamw_torch_fused"),
        "stage2_vs_trainer_adamw_torch": ("metaft_stage2_corrupt", "trainer_g1_adamw_torch"),
        "stage3_vs_trainer_adamw_torch": ("metaft_stage3_ce", "trainer_sst2_adamw_torch"),
    }
    ratios = {k: eps[a] / eps[b] for k, (a, b) in pairs.items() if a in eps and b in eps}
    if "metaft_stage2_no_domain_loss" in eps and "metaft_stage2_corrupt" in eps:
        ratios["domain_loss_time_overhead"] = eps["metaft_stage2_no_domain_loss"] / eps["metaft_stage2_corrupt"] - 1
    return ratios


def save(path: str | Path, results: dict) -> None:
    """Rewrite the whole results JSON atomically (a run cut at any moment leaves every figure measured so far)."""
    from metaft.fileio import write_json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, results)


def measure_throughput(args, names: list[str], run_one, results: dict, say=print) -> None:
    """Every variant ``args.repeats`` times, alternating (one run of each per repeat); after every run the
    medians so far, the ratios they allow and the run itself go into ``results`` and the JSON is rewritten."""
    runs: dict[str, list[dict]] = {k: [] for k in names}
    for rep in range(args.repeats):
        for name in names:
            r = run_one(name, rep)
            runs[name].append(r)
            results["throughput"] = {k: median_of(v) for k, v in runs.items() if v}
            results["ratios"] = ratios_of({k: v["examples_per_s"] for k, v in results["throughput"].items()}, args)
            results["throughput_runs_done"] = sum(map(len, runs.values()))
            results["machine"]["load_average_last"] = os.getloadavg()
            save(args.out, results)
            say(f"  repeat {rep + 1}/{args.repeats} {name:32s} {r['examples_per_s']:8.2f} ex/s "
                f"({r['s_per_step'] * 1000:.1f} ms/step, {r['mean_padded_tokens_per_batch']:.0f} padded tokens/batch)")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.ERROR)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device", file=sys.stderr)
        return 2
    mp = "bf16" if args.device == "cuda" else "no"
    if args.one:  # a child of run_isolated: one run, its result as the last stdout line
        work = Path(args.work)
        model = model_folder(args.model, work, args.minilm)
        run = throughput_variants(args, work, model, mp)[args.one]
        print(json.dumps(run(work / f"run-{args.one}-{args.repeat_index}")))
        return 0
    results: dict = {"machine": machine_info(args.device), "settings": {**vars(args), "mixed_precision": mp},
                     "throughput": {}, "ratios": {}, "e2e": None, "mfu": None}
    save(args.out, results)
    say = print
    say(f"# metaft speed ({args.device}, {results['machine']['device_name']}, {args.model}, mixed precision {mp}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load {results['machine']['load_average_start']})")
    with tempfile.TemporaryDirectory(prefix="metaft-speed-") as tmp:
        work = Path(tmp)
        os.environ["METAFT_CACHE"] = str(work / "cache")
        model = model_folder(args.model, work, args.minilm)
        cross, sst2 = prepare_data(work)
        from metaft.config import TypicalityConfig
        from metaft.typicality import compute_typicality

        compute_typicality(TypicalityConfig(data_dir=str(cross), model=model))  # stage 2 reads the weights

        if not args.skip_throughput:
            variants = throughput_variants(args, work, model, mp)
            child_argv = sys.argv[1:] if argv is None else list(argv)

            def run_one(name: str, rep: int) -> dict:
                return (run_isolated(name, rep, work, child_argv) if args.device == "cpu"
                        else variants[name](work / f"run-{name}-{rep}"))

            measure_throughput(args, list(variants), run_one, results, say)
            tp, ratios = results["throughput"], results["ratios"]
            say(f"\n## (a)+(b) throughput, medians of {args.repeats} alternating runs, {args.warmup} warm-up + "
                f"{args.steps} timed steps each, max length 128")
            for k, v in tp.items():
                say(f"  {k:32s} {v['examples_per_s']:8.2f} examples/s  runs {v['runs_examples_per_s']}")
            say(f"  stage 2 / Trainer (adamw_torch_fused):  {ratios['stage2_vs_trainer_fused']:.3f}")
            say(f"  stage 3 / Trainer (adamw_torch_fused):  {ratios['stage3_vs_trainer_fused']:.3f}")
            if "stage2_vs_trainer_fused_metaft_malloc" in ratios:
                say(f"  stage 2 / Trainer with metaft's malloc setting: {ratios['stage2_vs_trainer_fused_metaft_malloc']:.3f}")
            if "stage2_pad_longest_vs_pad_8" in ratios:
                say(f"  stage 2 padded to the longest / to multiples of 8: {ratios['stage2_pad_longest_vs_pad_8']:.3f}")
            if "stage2_compiled_vs_trainer_fused" in ratios:
                say(f"  stage 2 compiled ({args.compile_mode}) / Trainer (adamw_torch_fused): "
                    f"{ratios['stage2_compiled_vs_trainer_fused']:.3f} (GPU target >= 3)")
            if "stage2_vs_trainer_adamw_torch" in ratios:
                say(f"  stage 2 / Trainer (adamw_torch):        {ratios['stage2_vs_trainer_adamw_torch']:.3f}")
                say(f"  stage 3 / Trainer (adamw_torch):        {ratios['stage3_vs_trainer_adamw_torch']:.3f}")
            say(f"  domain-loss cost (step time, corrupt vs none): {100 * ratios['domain_loss_time_overhead']:+.1f} % "
                f"(target <= 10 %)")

        if args.device == "cuda" or args.mfu:
            ceiling = matmul_ceiling(args.device)
            mfu = results["mfu"] = {"ceiling": ceiling, "runs": {}}
            save(args.out, results)
            say(f"\n## stage-2 training at 128 tokens as % of the measured matmul ceiling "
                f"({ceiling['tflops']:.2f} TFLOP/s, {ceiling['dtype']} {ceiling['n']}^3)")
            per_example = train_flops_per_example(model, 128)
            for batch in (4, 32):
                r = run_metaft(2, cross, model, work / f"mfu-{batch}", batch, args, mp, pad_to_length=128)
                r["tflops"] = r["examples_per_s"] * per_example / 1e12
                r["percent_of_ceiling"] = 100 * r["tflops"] / ceiling["tflops"]
                mfu["runs"][f"batch{batch}"] = r
                save(args.out, results)
                say(f"  batch {batch:2d} x 128: {r['examples_per_s']:8.2f} examples/s, {r['tflops']:.3f} TFLOP/s = "
                    f"{r['percent_of_ceiling']:.1f} % of the ceiling")

        if args.e2e_scale > 0:
            say(f"\n## (c) end to end, g1 16-42 seed recipe at e2e scale {args.e2e_scale:g} (epochs x "
                f"{args.e2e_scale:g}: meta {G1_RECIPE['meta_epochs'] * args.e2e_scale:g}, finetune "
                f"{G1_RECIPE['ft_epochs'] * args.e2e_scale:g}), preprocess + meta-finetune + finetune + test 872")
            e2e = results["e2e"] = {"scale": args.e2e_scale, "recipe": G1_RECIPE}
            for name, pad_to in (("dynamic", None), ("padded_128", 128)):
                e2e[name] = run_e2e(cross, sst2, model, work / f"e2e-{name}", args.e2e_scale, pad_to, mp)
                save(args.out, results)
                t = e2e[name]
                say(f"  {name:10s} total {t['total_s']:7.1f} s (preprocess {t['preprocess_s']:.1f}, meta "
                    f"{t['meta_finetune_s']:.1f} [{t['meta_steps']} steps], finetune+test {t['finetune_s']:.1f} "
                    f"[{t['finetune_steps']} steps]); test accuracy {t['test_accuracy']:.4f} on {t['test_n']}")
            e2e["speedup_dynamic_vs_padded_128"] = e2e["padded_128"]["total_s"] / e2e["dynamic"]["total_s"]
            say(f"  padded-128 / dynamic wall time: {e2e['speedup_dynamic_vs_padded_128']:.2f}x "
                f"(acceptance >= 2x) at e2e scale {args.e2e_scale:g}")
    results["machine"]["load_average_end"] = os.getloadavg()
    save(args.out, results)
    say(f"\nload average at start {results['machine']['load_average_start']}, at end "
        f"{results['machine']['load_average_end']} (another job shares these CPUs: noisy timings)"
        if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1) else "")
    say(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
