"""What an encoder costs on this machine: CPU time per training step, per evaluated example, and peak memory.

Runs the metaft CLI on one seed of g1 (K = 16, seed 42) for each model with the reference recipe's batch sizes
(meta stage 4, fine-tuning 2), short runs only, each in its own process with one thread
(OMP_NUM_THREADS=1, what each of ``metaft run``'s two default workers gets on a 2-core machine). CPU time
(user + system) and peak RSS come from the kernel's accounting of the child (``os.wait4``, the figures
``/usr/bin/time -v`` prints). Per-step and per-example costs are differences between two runs that differ
only in steps (or test examples), so loading, the final evaluation and saving cancel out. CPU seconds rather
than wall seconds because the machine is shared: on an idle machine one single-threaded process turns CPU
seconds into wall seconds nearly 1:1, and the wall times are recorded too, with the load average. The
results JSON is rewritten (atomically, whole) after every timed run, so a cut run keeps what it measured.

    python benchmarks/encoder_cost.py --models minilm mpnet --out benchmarks/results/encoder-cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

META_STEPS_PER_EPOCH = 24  # 96 cross-domain training examples / batch 4
FT_STEPS_PER_EPOCH = 16  # 32 SST-2 training examples / batch 2
RECIPE = {"meta_steps": 63 * 24, "meta_evals": 1512 // 100 + 1, "meta_dev": 96,
          "ft_steps": 64 * 16, "ft_evals": 1024 // 50 + 1, "ft_dev": 32, "test": {"SST-2": 872, "MR": 2000, "CR": 2000}}


def timed(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; its CPU seconds, wall seconds, peak RSS (MiB) and the load average when it ended."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"encoder_cost: `{shlex.join(cmd)}` failed (exit {proc.returncode}): {err.strip()[-500:]}")
    return {"cmd": shlex.join(cmd[2:]), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "wall_s": round(wall, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024), "load_avg_1min": round(os.getloadavg()[0], 1)}


def save(path: Path, result: dict) -> None:
    """Rewrite the whole results JSON atomically (a run cut at any moment leaves every figure measured so far)."""
    from metaft.fileio import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)


def measure(model: str, work: Path, env: dict, runs: dict | None = None, measured=lambda: None) -> dict:
    """All runs for one model on its own prepared copy of g1 16-42 (typicality scores are per model). Each
    timed run goes into ``runs`` as soon as it ends, and ``measured()`` is called (to save it)."""
    metaft = [sys.executable, "-m", "metaft", "-q"]
    runs = {} if runs is None else runs

    def run(name: str, cmd: list[str]) -> None:
        runs[name] = timed(cmd, env)
        measured()

    data = work / model
    timed([*metaft, "prepare", "--group", "g1", "--k", "16", "--seeds", "42", "--out", str(data)], env)
    cross, sst2 = data / "k-shot-cross/g1/16-42", data / "k-shot-single/SST-2/16-42"
    run("typicality", [*metaft, "preprocess", str(cross), "--model", model])
    common = ["--model", model, "--save-state-every", "100000", "--force"]
    for epochs in (1, 2):
        run(f"meta_e{epochs}", [*metaft, "meta-finetune", "--data-dir", str(cross), "--batch-size", "4",
                                "--lr", "5e-5", "--eval-every", "100", "--epochs", str(epochs),
                                "--out", str(work / f"{model}-meta-e{epochs}"), *common])
    for epochs, test in ((1, 64), (3, 64), (1, 576)):
        run(f"ft_e{epochs}_test{test}", [*metaft, "finetune", "--data-dir", str(sst2), "--batch-size", "2",
                                         "--lr", "1e-5", "--eval-every", "50", "--epochs", str(epochs),
                                         "--test-limit", str(test),
                                         "--out", str(work / f"{model}-ft-e{epochs}-t{test}"), *common])
    meta_step = (runs["meta_e2"]["cpu_s"] - runs["meta_e1"]["cpu_s"]) / META_STEPS_PER_EPOCH
    ft_step = (runs["ft_e3_test64"]["cpu_s"] - runs["ft_e1_test64"]["cpu_s"]) / (2 * FT_STEPS_PER_EPOCH)
    per_example = (runs["ft_e1_test576"]["cpu_s"] - runs["ft_e1_test64"]["cpu_s"]) / 512
    fixed_ft = runs["ft_e1_test64"]["cpu_s"] - FT_STEPS_PER_EPOCH * ft_step - (RECIPE["ft_dev"] + 64) * per_example
    fixed_meta = runs["meta_e1"]["cpu_s"] - META_STEPS_PER_EPOCH * meta_step - RECIPE["meta_dev"] * per_example
    meta_unit = fixed_meta + RECIPE["meta_steps"] * meta_step + RECIPE["meta_evals"] * RECIPE["meta_dev"] * per_example
    ft_units = {d: fixed_ft + RECIPE["ft_steps"] * ft_step + (RECIPE["ft_evals"] * RECIPE["ft_dev"] + n) * per_example
                for d, n in RECIPE["test"].items()}
    seed = runs["typicality"]["cpu_s"] + meta_unit + 2 * sum(ft_units.values())  # mft + baseline on each domain
    return {
        "cpu_s_per_step": {"meta_batch4": round(meta_step, 3), "finetune_batch2": round(ft_step, 3)},
        "cpu_ms_per_eval_example": round(1000 * per_example, 2),
        "fixed_cpu_s": {"meta": round(fixed_meta, 1), "finetune": round(fixed_ft, 1)},
        "peak_rss_mib": {"typicality": runs["typicality"]["peak_rss_mib"],
                         "meta_batch4": max(runs[k]["peak_rss_mib"] for k in runs if k.startswith("meta")),
                         "finetune_batch2": max(runs[k]["peak_rss_mib"] for k in runs if k.startswith("ft"))},
        "estimated_cpu_s": {"typicality": runs["typicality"]["cpu_s"], "meta_stage": round(meta_unit),
                            **{f"finetune_{d}": round(s) for d, s in ft_units.items()},
                            "seed_baseline_plus_mft": round(seed)},
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "mpnet"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/encoder-cost.json"))
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = {
        "command": "python " + shlex.join(["benchmarks/encoder_cost.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, threads per run 1",
        "recipe": RECIPE,
        "note": ("CPU seconds (user + system) of single-threaded runs; per-step and per-example figures are "
                 "differences of two runs; estimated_cpu_s = fixed + steps x per-step + evaluated examples x "
                 "per-example for the reference recipe (meta 63 epochs batch 4, eval every 100; fine-tuning "
                 "64 epochs batch 2, eval every 50); best-model saves and training-state saves are not in it"),
        "models": {},
    }
    save(args.out, result)
    with tempfile.TemporaryDirectory(prefix="encoder-cost-") as tmp:
        for model in args.models:
            print(f"measuring {model} ...", flush=True)
            entry = result["models"][model] = {"runs": {}}  # filled run by run, the figures at the end
            entry.update(measure(model, Path(tmp), env, entry["runs"], lambda: save(args.out, result)))
            save(args.out, result)
            print(json.dumps({k: v for k, v in entry.items() if k != "runs"}), flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
