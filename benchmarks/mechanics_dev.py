"""Domain-corruption mechanics on dev sets: the meta stage with today's corruption vs the paper's.

For each seed, trains the MFT meta stage (the reference recipe: 63 epochs, batch 4, lr 5e-5, dev every 100
steps) twice on g1 16-<seed>: ``permute-on`` (in-batch permutation + true-domain embedding, the reference
behaviour) and ``uniform-off`` (independent uniform targets, no embedding). Records the meta dev accuracy and
a linear domain probe (5-fold cross-validated logistic regression on the meta dev set's sentence embeddings
at the corrupted layers) of the pre-trained encoder and of each meta-learner. Only dev sets are used.

    python benchmarks/mechanics_dev.py train --seed 42          # one process per seed; resumes by folder
    python benchmarks/mechanics_dev.py summarise --seeds 42 13  # probes + benchmarks/results/mechanics-dev.*
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from metaft import MetaConfig, PrepareConfig, TypicalityConfig, compute_typicality, meta_finetune, prepare
from metaft.config import SEED_RECIPE_META
from metaft.study import machine_info

# name -> meta-stage settings; a "typicality_space" entry picks the scores' space (default raw)
SETTINGS = {"permute-on": {"corruption": "permute", "domain_embedding": True},
            "uniform-off": {"corruption": "uniform", "domain_embedding": False},
            "permute-on-normalized": {"corruption": "permute", "domain_embedding": True,
                                      "typicality_space": "normalized"},
            "uniform-off-normalized": {"corruption": "uniform", "domain_embedding": False,
                                       "typicality_space": "normalized"}}
SPACES = ("raw", "normalized")


def cross_dir(work: Path, seed: int, space: str = "raw") -> Path:
    """The meta stage's data folder: splits plus typicality scores in ``space`` (one copy per space)."""
    return work / ("data" if space == "raw" else f"data-{space}") / "k-shot-cross" / "g1" / f"16-{seed}"


def setup(work: Path, seeds: list[int]) -> None:
    """Prepare the splits and typicality scores in each space (run once, before the training processes)."""
    import shutil

    prepare(PrepareConfig(out=str(work / "data"), corpora=os.environ.get("METAFT_CORPORA"), group="g1", k=16,
                          seeds=tuple(seeds)))
    for seed in seeds:
        for space in SPACES:
            folder = cross_dir(work, seed, space)
            if space != "raw" and not folder.is_dir():
                folder.mkdir(parents=True)
                for name in ("train.tsv", "dev.tsv", "manifest.json"):
                    shutil.copy2(cross_dir(work, seed) / name, folder / name)
            if not (folder / "typicality.tsv").is_file():
                compute_typicality(TypicalityConfig(data_dir=str(folder), space=space))


def train(work: Path, seed: int, settings: list[str], head_pooling: str, head_normalize: str) -> None:
    import torch

    torch.set_num_threads(1)
    for name in settings:
        out = work / f"meta-{name}-{seed}"
        if (out / "meta_results.json").is_file():
            continue
        meta = dict(SETTINGS[name])
        space = meta.pop("typicality_space", "raw")
        t0 = time.perf_counter()
        meta_finetune(MetaConfig(**SEED_RECIPE_META, **meta, head_pooling=head_pooling, head_normalize=head_normalize,
                                 data_dir=str(cross_dir(work, seed, space)), out=str(out), seed=seed,
                                 task_name="g1", resume=out.exists()))
        res = json.loads((out / "meta_results.json").read_text(encoding="utf-8"))
        print(f"seed {seed} {name}: meta dev accuracy {res['best_dev_accuracy']:.4f} (step {res['best_step']}; "
              f"{time.perf_counter() - t0:.0f} s)", flush=True)


def typicality_variants(work: Path, seeds: list[int], noise: float = 0.2) -> list[dict]:
    """Per seed and typicality setting (space x leave-one-out), from the saved frozen embeddings of the
    meta-training split: the own-prototype fraction per domain, and the AUROC of the scores at ranking a
    seeded 20 % of flipped labels low (embeddings do not depend on labels, so no model run is needed)."""
    import numpy as np
    from safetensors.numpy import load_file

    from metaft.corpora import read_mft_tsv
    from metaft.noise import flip_choice
    from metaft.prototypes import auroc, own_prototype_fraction, typicality_scores

    rows = []
    for seed in seeds:
        cross = cross_dir(work, seed)
        train = read_mft_tsv(cross / "train.tsv")
        emb = load_file(str(cross / "embeddings.safetensors"))["embeddings"]
        domains, labels = [ex.domain for ex in train], [ex.label for ex in train]
        flipped = np.zeros(len(train), dtype=bool)
        flipped[flip_choice(len(train), noise, seed)] = True
        noisy = [("1" if lab == "0" else "0") if f else lab for lab, f in zip(labels, flipped)]
        for space in ("raw", "normalized"):
            for loo in (False, True):
                scores = typicality_scores(emb, domains, noisy, space=space, leave_one_out=loo)[0]
                rows.append({"seed": seed, "space": space, "leave_one_out": loo,
                             "own_prototype_fraction": own_prototype_fraction(emb, domains, labels, space, loo),
                             f"auroc_noise_{noise:g}": auroc(scores, ~flipped)})
    return rows


def late_domain_loss(run: Path) -> float:
    """Mean logged domain loss over the last 10 % of training steps (ln 3 = 1.0986 is chance for 3 domains:
    below it, the domain head predicts the corrupted targets better than chance)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
            if '"loss_domain"' in line]
    last = rows[-max(1, len(rows) // 10):]
    return sum(r["loss_domain"] for r in last) / len(last)


def run_result(run: Path) -> dict:
    """A run's best dev accuracy, best step and best folder; for a run stopped early (no meta_results.json),
    what its metrics.jsonl and best snapshot so far say, marked ``finished: false``."""
    if (run / "meta_results.json").is_file():
        res = json.loads((run / "meta_results.json").read_text(encoding="utf-8"))
        return {"finished": True, "meta_dev_accuracy": res["best_dev_accuracy"], "best_step": res["best_step"],
                "steps_done": res["total_steps"], "wall_time_s": res["wall_time_s"],
                "best_dir": run / res["best_model_name"]}
    devs = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
            if '"kind": "dev"' in line]
    best = max(devs, key=lambda r: r["dev_accuracy"])  # ties: the earliest, as training keeps it
    (best_dir,) = run.glob("snapshot_best_*")
    return {"finished": False, "meta_dev_accuracy": best["best_dev_accuracy"], "best_step": best["best_step"],
            "steps_done": devs[-1]["step"], "wall_time_s": devs[-1]["elapsed_s"], "best_dir": best_dir}


def best_dev_until(run: Path, step: int) -> float:
    """The best dev accuracy among the run's evaluations at or before ``step`` (compares runs cut at
    different points on equal terms)."""
    devs = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
            if '"kind": "dev"' in line]
    return max(r["dev_accuracy"] for r in devs if r["step"] <= step)


def summarise(work: Path, seeds: list[int], settings: list[str], out: Path) -> None:
    from metaft.domain_probe import domain_probe_for_folder, domain_probe_for_model

    rows = []
    for seed in seeds:
        cross = cross_dir(work, seed)
        before = domain_probe_for_model("minilm", cross / "dev.tsv", seed=seed)
        for name in settings:
            run = work / f"meta-{name}-{seed}"
            if not (run / "metrics.jsonl").is_file():
                continue
            res = run_result(run)
            after = domain_probe_for_folder(res.pop("best_dir"), cross / "dev.tsv", seed=seed)
            rows.append({"seed": seed, "setting": name, **SETTINGS[name], **res,
                         "late_domain_loss": late_domain_loss(run), "probe_before": before, "probe_after": after})
    for seed in seeds:
        pair = [r for r in rows if r["seed"] == seed]
        common = min(r["steps_done"] for r in pair)
        for r in pair:
            r["common_step"] = common
            r["best_dev_until_common_step"] = best_dev_until(work / f"meta-{r['setting']}-{seed}", common)
    means = {}
    for name in settings:
        sel = [r for r in rows if r["setting"] == name]
        if not sel:
            continue
        means[name] = {"meta_dev_accuracy": sum(r["meta_dev_accuracy"] for r in sel) / len(sel),
                       "best_dev_until_common_step": sum(r["best_dev_until_common_step"] for r in sel) / len(sel),
                       "late_domain_loss": sum(r["late_domain_loss"] for r in sel) / len(sel),
                       "probe_before": sum(r["probe_before"]["mean"] for r in sel) / len(sel),
                       "probe_after": sum(r["probe_after"]["mean"] for r in sel) / len(sel)}
    out.write_text(json.dumps({"machine": machine_info(), "recipe": {**SEED_RECIPE_META, "learning_rate": MetaConfig().learning_rate}, "model": "minilm",
                               "probe": "5-fold stratified logistic regression on the meta dev set, per "
                                        "corrupted layer (masked mean); 'mean' averages the layers",
                               "rows": rows, "means": means,
                               "typicality": typicality_variants(work, seeds)}, indent=2) + "\n",
                   encoding="utf-8")
    print(json.dumps(means, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("setup", "train", "summarise", "typicality"))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 13])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--head-pooling", default="pooler", help="the meta stage's classification head")
    ap.add_argument("--head-normalize", default="off", help="the meta stage's head normalisation")
    ap.add_argument("--work", default="runs/mechanics-dev")
    ap.add_argument("--out", default="benchmarks/results/mechanics-dev.json")
    args = ap.parse_args()
    work = Path(args.work)
    if args.what == "setup":
        setup(work, args.seeds)
    elif args.what == "train":
        train(work, args.seed, args.settings, args.head_pooling, args.head_normalize)
    elif args.what == "typicality":
        print(json.dumps(typicality_variants(work, args.seeds), indent=1))
    else:
        summarise(work, args.seeds, args.settings, Path(args.out))


if __name__ == "__main__":
    main()
