"""Packed training (issue 17): speed of g1 stage-3 fine-tuning packed vs one run at a time, where the CPU
time goes, and the equivalence of a banked run with the same run trained alone on the real model.

    python benchmarks/packed.py speed --device cpu --packs 2 4 8 --steps 30
    python benchmarks/packed.py speed --study-units --packs 2 4 8 --steps 1024   # whole study units, one process
    python benchmarks/packed.py profile --device cpu
    python benchmarks/packed.py equivalence          # minilm with dropout 0, real 16-shot splits, fp32 CPU

speed: g1 stage-3 units (SST-2, MR, CR 16-42, the study's settings: batch 2, lr 1e-5, max length 128) with
only the step count cut to warm-up W + N timed steps and one evaluation at the end (test limited to 32
examples). Variants: ``unit`` = ``stages.finetune`` (the per-unit path), ``packed-R`` = ``finetune_packed``
with R runs in one bank. Each variant runs in a fresh process with the given torch threads; the step time is
the median of the per-step differences of ``elapsed_s`` in the runs' metrics.jsonl (ms resolution), so
loading, evaluation and testing are not in it. Units per hour = 3600 / (1,024 planned steps of a g1 unit x
step time / runs per step): training steps only. Every figure is written to the JSON as soon as it is
measured (a cut run keeps what it measured).
speed --study-units: whole g1 study fine-tuning units at the study's settings (batch 2, lr 1e-5, K = 16:
32 training examples, 1,024 steps = 64 epochs, dev every 50 steps, eval batch 64, the domain's test set
unless ``--test-limit``), ``--steps`` per unit (default 1,024; fewer to measure quickly), all in this one
process: first one untimed ``--warmup``-step unit per domain (loads the libraries, fills the feature cache),
then, alternating per repeat, ``unit`` (``--units`` units one at a time through ``stages.finetune``) and
``packed-R`` (R units in one bank). Units per hour = units / wall time of the call, loading, evaluation and
testing included; ``units_per_hour_training_1024`` = 3600 / (1,024 x median step time / runs per step), the
training steps of a full unit only. Ratios are against the ``unit`` figures of the same run; the splits are
16-42 for every unit (seeds 42, 43, ... differ), which costs what the study's own splits cost.
profile: torch.profiler over N steps of a bank of 1 and of 4 (after W untimed steps), CPU time by operator
and grouped (matmuls, embedding gradient, AdamW, copies/fills, the rest).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("SST-2", "MR", "CR")
G1_UNIT_STEPS = 1024  # 32 examples / batch 2 x 64 epochs
SETTINGS = dict(batch_size=2, learning_rate=1e-5, eval_batch_size=64, max_length=128, test_limit=32)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("speed", "profile", "equivalence"))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--model", default="minilm", help="model folder or alias (e.g. a carried fp16 copy)")
    p.add_argument("--packs", type=int, nargs="+", default=[2, 4, 8], help="runs per bank to time")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per variant (default 30); --study-units: steps per unit (default 1024)")
    p.add_argument("--study-units", action="store_true",
                   help="speed: whole study units (dev evaluation, test) in one process, packed vs one at a time")
    p.add_argument("--units", type=int, default=3, help="--study-units: units the per-unit path trains")
    p.add_argument("--test-limit", type=int, default=None,
                   help="--study-units: test examples per unit (default: the whole test set, as the study)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--repeats", type=int, default=1, help="runs of every variant, alternating; medians")
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/packed-<part>-<device>.json)")
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)  # internal: the parent's prepared folder
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = p.parse_args(argv)
    if args.study_units and args.part != "speed":
        p.error("--study-units is a mode of the speed part")
    if args.steps is None:
        args.steps = G1_UNIT_STEPS if args.study_units else 30
    if args.out is None:
        part = "study-units" if args.study_units else args.part
        args.out = str(ROOT / "benchmarks" / "results" / f"packed-{part}-{args.device}.json")
    return args


def machine(device: str) -> dict:
    import torch
    import transformers

    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(), "device": device,
            "load_average": os.getloadavg()}
    if device == "cuda":
        info["device_name"] = torch.cuda.get_device_name(0)
    return info


def write(path: str, data: dict) -> None:
    """Rewrite the whole results JSON atomically (a run cut at any moment leaves every figure measured so far)."""
    from metaft.fileio import write_json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)


def prepare_data(work: Path, seeds=(42,)) -> Path:
    from metaft.config import PrepareConfig
    from metaft.splits import prepare

    corpora = os.environ.get("METAFT_CORPORA", str(ROOT.parent / "shared" / "data"))
    prepare(PrepareConfig(out=str(work / "data"), corpora=corpora, group="g1", k=16, seeds=tuple(seeds)))
    return work / "data" / "k-shot-single"


def unit_configs(work: Path, model: str, count: int, steps: int, tag: str, **extra) -> list:
    """``count`` g1 stage-3 units (domains cycled, seeds 42, 43, ...) cut to ``steps`` steps."""
    from metaft.config import FinetuneConfig

    configs = []
    for i in range(count):
        domain = DOMAINS[i % len(DOMAINS)]
        settings = {**SETTINGS, "epochs": steps / 16, "eval_every": 10**6, "force": True, **extra}  # repeats
        configs.append(FinetuneConfig(data_dir=str(work / "data" / "k-shot-single" / domain / "16-42"),
                                      model=model, out=str(work / "runs" / tag / f"u{i}"), seed=42 + i,
                                      **settings))
    return configs


def step_times(run_dir: Path, warmup: int) -> list[float]:
    """Differences of consecutive training steps' ``elapsed_s`` after the first ``warmup`` steps."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    t = [r["elapsed_s"] for r in rows if r["kind"] == "train"]
    return [b - a for a, b in zip(t[warmup - 1:], t[warmup:])]


# ------------------------------------------------------------------------------------------------ speed

def one_variant(args) -> dict:
    """Runs in a fresh process: train one variant, return its step time."""
    import torch

    from metaft.packed_stages import finetune_packed
    from metaft.stages import finetune

    if args.threads:
        torch.set_num_threads(args.threads)
    work, total = Path(args.work), args.warmup + args.steps
    r = 1 if args.one == "unit" else int(args.one.split("-")[1])
    cfgs = unit_configs(work, args.model, r, total, f"{args.one}-t{args.threads}")
    t0 = time.monotonic()
    if args.one == "unit":
        finetune(cfgs[0])
    else:
        finetune_packed(cfgs, pack=r)
    wall = time.monotonic() - t0
    steps = step_times(Path(cfgs[0].out), args.warmup)
    median = statistics.median(steps)
    per_run = median / r
    return {"runs_per_step": r, "threads": torch.get_num_threads(), "s_per_step": median,
            "s_per_step_mean": statistics.fmean(steps), "s_per_run_step": per_run,
            "units_per_hour_training": 3600 / (G1_UNIT_STEPS * per_run), "wall_s_incl_load_eval": wall,
            "timed_steps": len(steps)}


def speed(args) -> None:
    out = {"machine": machine(args.device), "settings": {**vars(args), **SETTINGS}, "variants": {}}
    write(args.out, out)
    with tempfile.TemporaryDirectory(prefix="packed-bench-") as tmp:
        work = Path(tmp)
        prepare_data(work)
        variants = ["unit"] + [f"packed-{r}" for r in args.packs]
        for repeat in range(args.repeats):
            for name in variants:
                cmd = [sys.executable, __file__, "speed", "--device", args.device, "--model", args.model,
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
                       "--work", str(work), "--one", name, "--out", os.devnull]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                runs = out["variants"].setdefault(name, {"runs": []})["runs"]
                if proc.returncode != 0:
                    runs.append({"error": proc.stderr.strip().splitlines()[-1:], "repeat": repeat})
                else:
                    runs.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "repeat": repeat})
                summarise(out["variants"])
                out["machine"]["load_average_end"] = os.getloadavg()
                write(args.out, out)
                print(name, json.dumps(runs[-1]), flush=True)


def summarise(variants: dict) -> None:
    """Per variant: the median over its repeats of the per-run step time, units per hour, and the ratio to
    the per-unit path."""
    for v in variants.values():
        times = [r["s_per_run_step"] for r in v["runs"] if "s_per_run_step" in r]
        if times:
            v["s_per_run_step"] = statistics.median(times)
            v["units_per_hour_training"] = 3600 / (G1_UNIT_STEPS * v["s_per_run_step"])
    unit = variants.get("unit", {}).get("s_per_run_step")
    for name, v in variants.items():
        if unit and name != "unit" and "s_per_run_step" in v:
            v["speedup_vs_unit"] = unit / v["s_per_run_step"]


# ------------------------------------------------------------------------------------------ study units

def study_units(args) -> None:
    """Whole g1 study units per hour, packed in banks of R vs one at a time, in this process (module doc)."""
    import shutil

    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported
    import torch

    from metaft.packed_stages import finetune_packed
    from metaft.stages import finetune

    if args.threads:
        torch.set_num_threads(args.threads)
    study = {**SETTINGS, "eval_every": 50, "test_limit": args.test_limit}
    out = {"machine": machine(args.device), "settings": {**vars(args), **study}, "variants": {}}
    write(args.out, out)
    with tempfile.TemporaryDirectory(prefix="packed-units-") as tmp:
        work = Path(tmp)
        os.environ["METAFT_CACHE"] = str(work / "cache")
        prepare_data(work)
        for cfg in unit_configs(work, args.model, len(DOMAINS), args.warmup, "warmup", **study):
            finetune(cfg)
        names = ["unit"] + [f"packed-{r}" for r in args.packs]
        for repeat in range(args.repeats):
            for name in names if repeat % 2 == 0 else names[::-1]:
                count = args.units if name == "unit" else int(name.split("-")[1])
                cfgs = unit_configs(work, args.model, count, args.steps, f"{name}-{repeat}", **study)
                t0 = time.perf_counter()
                if name == "unit":
                    for cfg in cfgs:
                        finetune(cfg)
                else:
                    finetune_packed(cfgs, pack=count)
                wall = time.perf_counter() - t0
                steps = step_times(Path(cfgs[0].out), 1)
                per_run = statistics.median(steps) / (1 if name == "unit" else count) if steps else None
                run = {"repeat": repeat, "units": count, "steps_per_unit": args.steps, "wall_s": wall,
                       "units_per_hour": 3600 * count / wall, "s_per_run_step": per_run,
                       "units_per_hour_training_1024": 3600 / (G1_UNIT_STEPS * per_run) if per_run else None}
                out["variants"].setdefault(name, {"runs": []})["runs"].append(run)
                summarise_units(out["variants"])
                out["machine"]["load_average_end"] = os.getloadavg()
                write(args.out, out)
                shutil.rmtree(work / "runs" / f"{name}-{repeat}", ignore_errors=True)
                print(name, json.dumps(run), flush=True)


def summarise_units(variants: dict) -> None:
    """Per variant: medians over its repeats, and each figure's ratio to the per-unit path's."""
    keys = ("units_per_hour", "units_per_hour_training_1024")
    for v in variants.values():
        for key in keys:
            values = [r[key] for r in v["runs"] if r.get(key)]
            if values:
                v[key] = statistics.median(values)
    unit = variants.get("unit", {})
    for name, v in variants.items():
        if name != "unit":
            v["vs_unit"] = {key: v[key] / unit[key] for key in keys if v.get(key) and unit.get(key)}


# ---------------------------------------------------------------------------------------------- profile

GROUPS = {"matmul": ("aten::bmm", "aten::mm", "aten::addmm", "aten::baddbmm"),
          "embedding_grad": ("aten::embedding_dense_backward", "aten::index_add_", "aten::index_put_",
                             "aten::embedding_backward"),
          "adamw": ("aten::_fused_adamw_",), "fill_copy": ("aten::fill_", "aten::zero_", "aten::copy_"),
          "norms": ("aten::linalg_vector_norm",)}


def profile(args) -> None:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from metaft.bank import Bank
    from metaft.packed import PreparedRun
    from metaft.stages import start_run

    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"machine": machine(args.device), "settings": vars(args), "banks": {}}
    with tempfile.TemporaryDirectory(prefix="packed-profile-") as tmp:
        work = Path(tmp)
        prepare_data(work)
        for r in (1, 4):
            runs = [PreparedRun(c) for c in unit_configs(work, args.model, r, 100, f"profile-{r}")]
            for run in runs:
                start_run(run.run_dir, run.cfg, "new")
            bank = Bank([run.member() for run in runs])
            for _ in range(args.warmup):
                bank.train_step()
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
            t0 = time.perf_counter()
            with torch_profile(activities=activities) as prof:
                for _ in range(args.steps):
                    bank.train_step()
            wall = time.perf_counter() - t0
            events = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events)
            grouped = {g: sum(e.self_cpu_time_total for e in events if e.key in keys) / total
                       for g, keys in GROUPS.items()}
            grouped["other"] = 1 - sum(grouped.values())
            top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
            out["banks"][f"R={r}"] = {
                "wall_s_per_step_profiled": wall / args.steps, "self_cpu_share": grouped,
                "top_ops": [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / total, "calls": e.count}
                            for e in top]}
            write(args.out, out)
            print(f"R={r}", json.dumps(grouped), flush=True)
            del bank


# ------------------------------------------------------------------------------------------ equivalence

def equivalence(args) -> None:
    """Four real units (SST-2, MR, CR on 16-42, SST-2 on 16-13) alone and in one bank; minilm with every
    dropout at 0, fp32, 64 steps of batch 2; per-step training-loss differences, dev steps, test accuracy."""
    import shutil

    import torch

    from metaft.hub import resolve_model
    from metaft.packed_stages import finetune_packed
    from metaft.stages import finetune

    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"machine": machine("cpu"), "runs": []}
    with contextlib.ExitStack() as stack:  # --work: a folder kept (finished runs there are reused)
        work = Path(args.work or stack.enter_context(tempfile.TemporaryDirectory(prefix="packed-equiv-")))
        single, model = work / "data" / "k-shot-single", work / "minilm-nodrop"
        if not single.is_dir():
            prepare_data(work, seeds=(42, 13))
        if not model.is_dir():
            shutil.copytree(resolve_model(args.model), model)
            config = json.loads((model / "config.json").read_text())
            config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            (model / "config.json").write_text(json.dumps(config))
        units = [("SST-2", 42), ("MR", 42), ("CR", 42), ("SST-2", 13)]
        settings = {**SETTINGS, "epochs": 4, "eval_every": 16, "test_limit": 500, "dropout": 0.0,
                    "mixed_precision": "no"}
        out["settings"] = {**settings, "model": f"{args.model} with hidden and attention dropout 0"}

        def cfg(tag, i, domain, seed):
            from metaft.config import FinetuneConfig

            return FinetuneConfig(data_dir=str(single / domain / f"16-{seed}"), model=str(model),
                                  out=str(work / tag / str(i)), seed=seed, resume=True, **settings)

        lone = []
        for i, (d, s) in enumerate(units):  # each lone run's figures saved as it ends
            lone.append(finetune(cfg("lone", i, d, s)))
            out.setdefault("lone_runs", []).append({"domain": d, "split_seed": s, "best_step": lone[-1].best_step,
                                                    "best_dev_accuracy": lone[-1].best_dev_accuracy,
                                                    "test_accuracy": lone[-1].test_accuracy})
            write(args.out, out)
        banked = finetune_packed([cfg("bank", i, d, s) for i, (d, s) in enumerate(units)], pack=4)
        for i, ((domain, seed), a, b) in enumerate(zip(units, lone, banked)):
            la, lb = (train_losses(work / tag / str(i)) for tag in ("lone", "bank"))
            diffs = [abs(la[s] - lb[s]) for s in range(1, 51)]
            out["runs"].append({"domain": domain, "split_seed": seed, "max_abs_loss_diff_first_50": max(diffs),
                                "max_abs_loss_diff_all": max(abs(la[s] - lb[s]) for s in la),
                                "best_step": [a.best_step, b.best_step],
                                "best_dev_accuracy": [a.best_dev_accuracy, b.best_dev_accuracy],
                                "test_accuracy": [a.test_accuracy, b.test_accuracy],
                                "test_n": a.test["n"]})
            write(args.out, out)
            print(json.dumps(out["runs"][-1]), flush=True)


def train_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss_total"] for r in rows if r["kind"] == "train"}


def main(argv=None) -> None:
    args = parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.one:
        print(json.dumps(one_variant(args)))
        return
    if args.study_units:
        study_units(args)
        return
    {"speed": speed, "profile": profile, "equivalence": equivalence}[args.part](args)


if __name__ == "__main__":
    main()
