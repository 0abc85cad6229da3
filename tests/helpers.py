"""Helpers shared by the training, stage and robustness tests: a synthetic task and run comparisons."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import torch

from metaft.config import FinetuneConfig
from metaft.corpora import write_mft_tsv
from metaft.records import Example

WORDS = {"neg": "bad terrible awful hate boring broke slow".split(),
         "neu": "question answer what who where when how why".split(),
         "pos": "great good love nice fine works fast".split()}
FILL = "the a an is was it this that of to and very really i".split()


def synthetic(n: int, domains: list[str], seed: int) -> list[Example]:
    """An easy 3-class task: two class words among 2-6 filler words."""
    rng, out = random.Random(seed), []
    for i in range(n):
        label, domain = sorted(WORDS)[i % 3], domains[(i // 3) % len(domains)]
        words = rng.sample(WORDS[label], 2) + rng.sample(FILL, rng.randint(2, 6))
        rng.shuffle(words)
        out.append(Example(f"u{seed}-{i}", " ".join(words), label, domain))
    return out


def write_task(folder: Path, n_train=48, n_dev=24, n_test=30, domains=("book",), seed=0) -> Path:
    write_mft_tsv(folder / "train.tsv", synthetic(n_train, list(domains), seed))
    write_mft_tsv(folder / "dev.tsv", synthetic(n_dev, list(domains), seed + 1))
    if n_test:
        write_mft_tsv(folder / "test.tsv", synthetic(n_test, list(domains), seed + 2))
    return folder


def ft_config(data: Path, model: Path, out: Path, **kw) -> FinetuneConfig:
    settings = dict(data_dir=str(data), model=str(model), out=str(out), epochs=10, batch_size=8,
                    eval_batch_size=16, learning_rate=5e-3, eval_every=5, seed=3,
                    save_state_every_s=0)
    return FinetuneConfig(**{**settings, **kw})


def weights_of(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights_of(a), weights_of(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def metrics_without_time(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


def comparable(results) -> dict:
    """A fine-tuning result (typed, or a results.json read as a dict) without what differs between equal runs."""
    if dataclasses.is_dataclass(results):
        results = dataclasses.asdict(results)
    drop = ("timings", "config", "best_model", "resumed_from")
    return {k: v for k, v in results.items() if k not in drop}


def cli_error_line(capsys, argv: list[str]) -> str:
    """Run ``metaft -q ARGV``, assert it fails with exit 2 and one error line (no traceback); return its text."""
    from metaft.cli import main

    capsys.readouterr()
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metaft: error: ") and "\n" not in err and "Traceback" not in err, err
    return err.removeprefix("metaft: error: ")
