"""Bank step costs (issue 17): where a bank step's host time goes, and the grouped BERT forward against vmap.

    OMP_NUM_THREADS=1 python benchmarks/packed_grouped.py                # CPU: profile, proxy speed, MiniLM
    python benchmarks/packed_grouped.py --device cuda --parts profile speed --minilm-runs 8 30

A proxy model stands in for MiniLM where only the op count matters: a random BERT with MiniLM's 6 layers but
hidden size 64 (4 heads, FFN 256, 200-word vocabulary), so a CPU step is bound by per-operation overhead as a
GPU step of the real model is. Runs are g1-like stage-3 units (batch 2, 48 training examples, dev 32) or
stage-2 meta units (batch 4, three domains, 96 training examples, dev 96) on synthetic text, every batch
padded to ``--width`` tokens (``pad_to_length``), dropout on, fp32 (``--bf16``: autocast).

Parts (every figure is written to the JSON as soon as it is measured):
- profile: a bank of ``--profile-runs`` R, stage 3 and stage 2, each forward (vmap, grouped): mean seconds per
  step of batch building, forward + loss, backward (and the rest of ``train_step``), clipping, optimizer
  (AdamW, schedule, zero_grad), the metrics.jsonl records (kept, then written at once); per evaluation: dev evaluation of all R
  runs (no run improves; every run improves: best copies in memory; on a CPU also in grouped forwards, the
  CUDA default), writing every run's best folder, and saving the bank's state.
- speed: step time of proxy stage-3 banks of R = ``--runs`` per forward (median over ``--steps`` steps after
  ``--warmup``), and per run-step.
- ops (not in the default parts): operator calls that launch a kernel (view and metadata operators left out)
  per training step and per dev evaluation of a proxy bank of 4, stage 3 and stage 2, per forward, from
  torch.profiler: what a GPU step pays in launches when it is bound by host overhead.
- minilm: the real default model (``--model``): the one-run path (``stages.finetune``) and banks of
  ``--minilm-runs`` per forward, ``--minilm-steps`` steps each, and the per-evaluation costs as in profile.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
WORDS = ("good great love nice fine bad awful hate boring slow the a is was it this that of to and very really "
         "movie film book plot acting story sound price screen battery works broke fast not but i").split()
FORWARDS = {"vmap": False, "grouped": True}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=("profile", "speed", "minilm", "ops"),
                   default=["profile", "speed", "minilm"])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--runs", type=int, nargs="+", default=[1, 8, 30], help="speed: bank sizes")
    p.add_argument("--profile-runs", type=int, default=30)
    p.add_argument("--steps", type=int, default=20, help="timed steps (profile, speed)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--width", type=int, default=64, help="tokens per example (every batch padded to it)")
    p.add_argument("--model", default="minilm")
    p.add_argument("--minilm-runs", type=int, nargs="+", default=[8])
    p.add_argument("--minilm-steps", type=int, default=20)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (default fp32)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "packed-grouped-cpu.json"))
    return p.parse_args(argv)


def proxy_model(folder: Path) -> Path:
    """The 6-layer, H = 64 random BERT with a word-level vocabulary, saved as an HF folder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS) | set("abcdefghijklmnopqrstuvwxyz"))
    vocab += [f"w{i}" for i in range(200 - len(vocab))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=6, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def write_task(folder: Path, seed: int, domains: tuple[str, ...], n_train: int, n_dev: int) -> Path:
    """Two labels, ``domains`` cycled, 20-40 words an example (padded to the width anyway)."""
    from metaft.corpora import write_mft_tsv
    from metaft.records import Example

    rng = random.Random(seed)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [Example(f"{split}{seed}-{i}", " ".join(rng.choices(WORDS, k=rng.randint(20, 40))),
                        ("neg", "pos")[i % 2], domains[(i // 2) % len(domains)]) for i in range(n)]
        write_mft_tsv(folder / f"{split}.tsv", rows)
    return folder


def prepared_runs(work: Path, model: str, runs: int, meta: bool, args, tag: str) -> list:
    from metaft.config import FinetuneConfig, MetaConfig
    from metaft.packed import PreparedRun
    from metaft.packed_meta import PreparedMetaRun
    from metaft.runs import start_run

    out = []
    for r in range(runs):
        common = dict(model=model, out=str(work / "runs" / tag / f"r{r}"), seed=100 + r, eval_every=10**6,
                      pad_to_length=args.width, mixed_precision="bf16" if args.bf16 else "no",
                      save_state_every_s=10**9)
        if meta:
            data = write_task(work / "data" / f"meta{r}", r, ("sst2", "mr", "cr"), 96, 96)
            cfg = MetaConfig(data_dir=str(data), batch_size=4, epochs=2, typicality=False, **common)
        else:
            data = write_task(work / "data" / f"ft{r}", r, ("sst2",), 48, 32)
            cfg = FinetuneConfig(data_dir=str(data), batch_size=2, epochs=2, **common)
        run = (PreparedMetaRun if meta else PreparedRun)(cfg)
        start_run(run.run_dir, run.cfg, "new")
        out.append(run)
    return out


def make_bank(runs: list, grouped: bool, device: torch.device):
    from metaft.checkpoints import STATE_DIR

    return runs[0].bank_class([run.member() for run in runs], device=device, grouped=grouped,
                              state_dir=runs[0].run_dir / STATE_DIR)


def timed(parts: dict, name: str, fn, sync):
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        sync()
        parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0
        return out
    return wrapper


def profile_bank(bank, args, sync) -> dict:
    """Seconds per step of each phase (over ``args.steps`` steps), and per evaluation."""
    for _ in range(args.warmup):
        bank.log_step(bank.train_step(), 0.0)
    parts: dict[str, float] = {}
    originals = [(bank.optimizer, "step", bank.optimizer.step), (bank.optimizer, "zero_grad", bank.optimizer.zero_grad),
                 (bank.scheduler, "step", bank.scheduler.step)]
    bank.batch = timed(parts, "batch", bank.batch, sync)
    bank.losses = timed(parts, "forward_and_loss", bank.losses, sync)
    bank.clip = timed(parts, "clip", bank.clip, sync)
    for name in ("step", "zero_grad"):
        setattr(bank.optimizer, name, timed(parts, "optimizer", getattr(bank.optimizer, name), sync))
    bank.scheduler.step = timed(parts, "optimizer", bank.scheduler.step, sync)
    step_s = 0.0
    for _ in range(args.steps):
        t0 = time.perf_counter()
        logged = bank.train_step()
        sync()
        step_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        bank.log_step(logged, 0.0)
        parts["log_metrics"] = parts.get("log_metrics", 0.0) + time.perf_counter() - t0
    t0 = time.perf_counter()
    bank.flush_logs()  # the kept training records written (at each evaluation in a bank's loop)
    parts["log_metrics"] = parts.get("log_metrics", 0.0) + time.perf_counter() - t0
    for owner, name, fn in originals:  # the state saved below pickles the optimizer and the schedule
        setattr(owner, name, fn)
    out = {k: v / args.steps for k, v in parts.items()}
    out["backward_and_rest"] = step_s / args.steps - sum(v for k, v in out.items() if k != "log_metrics")
    out["step_total"] = step_s / args.steps + out["log_metrics"]
    return {"per_step_s": out, "per_eval_s": eval_costs(bank)}


def eval_costs(bank) -> dict:
    """Seconds of one evaluation of all runs (no run improves / every run improves), of writing every run's best
    folder, and of saving the bank's state."""
    per_eval = {}
    for name, best in (("dev_eval_only", 2.0), ("dev_eval_and_best_copies_in_memory", -1.0)):
        for m in bank.members:
            m.best = {"accuracy": best, "step": 0, "name": None, "dev": {}}
        bank.state_saved_at = time.monotonic()  # no state save inside
        t0 = time.perf_counter()
        bank.evaluate_and_checkpoint(0.0)
        per_eval[name] = time.perf_counter() - t0
    if bank.grouped and not bank.group_eval:  # what evaluating all runs in grouped forwards costs here
        bank.group_eval = True
        t0 = time.perf_counter()
        bank.evaluate_and_checkpoint(0.0)
        per_eval["dev_eval_grouped_forward"] = time.perf_counter() - t0
        bank.group_eval = False
    t0 = time.perf_counter()
    bank.write_best()  # every run improved: R best folders (what every improvement cost before)
    per_eval["best_folders_written_all_runs"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    bank.save_state(0.0)
    per_eval["bank_state_save"] = time.perf_counter() - t0
    return per_eval


def step_times(bank, args, sync, steps: int) -> dict:
    for _ in range(args.warmup):
        bank.log_step(bank.train_step(), 0.0)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        bank.log_step(bank.train_step(), 0.0)
        sync()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"runs": bank.size, "s_per_step": median, "s_per_run_step": median / bank.size,
            "s_per_step_mean": statistics.fmean(times), "timed_steps": steps}


VIEWS = {"aten::" + n for n in ("view", "reshape", "transpose", "t", "permute", "expand", "select", "slice",
                                  "unsqueeze", "squeeze", "detach", "as_strided", "alias", "unbind", "split",
                                  "flatten", "lift_fresh", "item", "_local_scalar_dense", "is_nonzero", "numpy_T",
                                  "unflatten", "_unsafe_view", "contiguous", "to", "_to_copy", "empty", "empty_like",
                                  "empty_strided", "new_empty_strided", "resize_", "result_type", "lift")}


def op_counts(bank) -> dict:
    """Top-level operator calls (not nested in another) of one training step and of one dev evaluation."""
    from torch.profiler import ProfilerActivity, profile

    def count(fn) -> int:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        events = sorted((e for e in prof.events() if e.name.startswith("aten::")), key=lambda e: e.time_range.start)
        n, end = 0, -1
        for e in events:
            if e.time_range.start >= end:
                end = e.time_range.end
                n += e.name not in VIEWS
        return n
    for _ in range(2):
        bank.log_step(bank.train_step(), 0.0)
    bank.state_saved_at = time.monotonic()
    return {"kernel_ops_per_step": count(lambda: bank.log_step(bank.train_step(), 0.0)),
            "kernel_ops_per_dev_eval": count(lambda: bank.evaluate_and_checkpoint(0.0))}


def unit_step_time(work: Path, model: str, args) -> dict:
    """The one-run path (stages.finetune) on one proxy stage-3 unit: median step time from its metrics.jsonl."""
    import json

    from metaft.stages import finetune

    run = prepared_runs(work, model, 1, False, args, "unit")[0]
    total = args.warmup + args.minilm_steps
    finetune(run.cfg.replace(epochs=total * run.cfg.batch_size / 48, force=True))
    rows = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    t = [r["elapsed_s"] for r in rows if r["kind"] == "train"][args.warmup - 1:]
    times = [b - a for a, b in zip(t, t[1:])]
    return {"runs": 1, "s_per_step": statistics.median(times), "s_per_run_step": statistics.median(times),
            "timed_steps": len(times), "note": "stages.finetune, elapsed_s in metrics.jsonl (ms resolution)"}


def main(argv=None) -> None:
    args = parse_args(argv)
    import transformers

    from metaft.fileio import write_json

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    result = {"machine": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                          "torch": torch.__version__, "transformers": transformers.__version__,
                          "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                          "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                          "load_average": os.getloadavg()},
              "settings": vars(args)}

    def save(key, sub, value):
        result.setdefault(key, {})[sub] = value
        write_json(args.out, result)
        print(key, sub, value, flush=True)

    write_json(args.out, result)
    with tempfile.TemporaryDirectory(prefix="packed-grouped-") as tmp:
        work = Path(tmp)
        proxy = str(proxy_model(work / "proxy"))
        if "profile" in args.parts:
            for stage, meta in (("stage3", False), ("stage2", True)):
                runs = prepared_runs(work, proxy, args.profile_runs, meta, args, f"profile-{stage}")
                for name, grouped in FORWARDS.items():
                    save("profile", f"{stage}-R{args.profile_runs}-{name}",
                         profile_bank(make_bank(runs, grouped, device), args, sync))
        if "ops" in args.parts:
            for stage, meta in (("stage3", False), ("stage2", True)):
                runs = prepared_runs(work, proxy, 4, meta, args, f"ops-{stage}")
                for name, grouped in FORWARDS.items():
                    bank = make_bank(runs, grouped, device)
                    bank.group_eval = grouped  # as on CUDA
                    save("ops", f"{stage}-R4-{name}", op_counts(bank))
        if "speed" in args.parts:
            for r in args.runs:
                runs = prepared_runs(work, proxy, r, False, args, f"speed-{r}")
                for name, grouped in FORWARDS.items():
                    save("speed_proxy_stage3", f"R{r}-{name}", step_times(make_bank(runs, grouped, device), args,
                                                                          sync, args.steps))
        if "minilm" in args.parts:
            save("minilm_stage3", "unit", unit_step_time(work, args.model, args))
            for r in args.minilm_runs:
                runs = prepared_runs(work, args.model, r, False, args, f"minilm-{r}")
                for name, grouped in FORWARDS.items():
                    bank = make_bank(runs, grouped, device)
                    save("minilm_stage3", f"R{r}-{name}", {**step_times(bank, args, sync, args.minilm_steps),
                                                           "per_eval_s": eval_costs(bank)})
                    del bank
    result["machine"]["load_average_end"] = os.getloadavg()
    write_json(args.out, result)


if __name__ == "__main__":
    main()
