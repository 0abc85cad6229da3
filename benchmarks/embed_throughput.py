"""Embedding throughput of metaft's stage-1 path vs a plain ``AutoModel`` forward loop (CPU).

Both sides embed the same texts in the same batches (longest first, same batch size, same padding width:
longest in batch rounded up to a multiple of 8) with masked mean pooling, in one process; repeats alternate
between the two and the medians are compared. metaft's time includes reading the cached tokenisation and
collating; the baseline's tensors are built before timing. Exit code 1 when the ratio is below --min-ratio.

    python benchmarks/embed_throughput.py                        # 384 GLUE SST-2 dev sentences
    python benchmarks/embed_throughput.py DATA/k-shot-cross/g1/16-42/train.tsv DATA/k-shot-cross/g1/16-42/dev.tsv
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from metaft.corpora import read_mft_tsv
from metaft.hub import load_encoder, load_tokenizer
from metaft.pooling import masked_mean
from metaft.records import Example
from metaft.typicality import embed_examples

DEFAULT_CORPORA = Path(__file__).resolve().parents[2] / "shared" / "data"


def sst2_sentences(n: int) -> list[Example]:
    root = Path(os.environ.get("METAFT_CORPORA", DEFAULT_CORPORA))
    lines = (root / "sst2" / "glue" / "dev.tsv").read_text(encoding="utf-8").split("\n")[1:]
    rows = [ln.rsplit("\t", 1) for ln in lines if ln.strip()][:n]
    return [Example(str(i), text.strip(), label, "SST-2") for i, (text, label) in enumerate(rows)]


def baseline_batches(examples: list[Example], tokenizer, max_length: int, batch_size: int) -> list[dict]:
    """Plain HF tokenisation into the same batches metaft forms (longest first, width a multiple of 8)."""
    lengths = [len(tokenizer(ex.text, truncation=True, max_length=max_length)["input_ids"]) for ex in examples]
    order = sorted(range(len(examples)), key=lambda i: -lengths[i])
    batches = []
    for start in range(0, len(order), batch_size):
        texts = [examples[i].text for i in order[start:start + batch_size]]
        batches.append(tokenizer(texts, padding=True, pad_to_multiple_of=8, truncation=True,
                                 max_length=max_length, return_tensors="pt"))
    return batches


@torch.inference_mode()
def baseline(model, batches: list[dict]) -> list[np.ndarray]:
    """The plain loop: forward, masked mean, to numpy. Returns [B, H] per batch (sorted order)."""
    return [masked_mean(model(**b).last_hidden_state, b["attention_mask"]).numpy() for b in batches]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", help="layout TSV files (default: GLUE SST-2 dev sentences)")
    ap.add_argument("--n", type=int, default=384, help="SST-2 sentences when no files are given")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-ratio", type=float, default=0.9)
    args = ap.parse_args()

    examples = [ex for f in args.files for ex in read_mft_tsv(f)] if args.files else sst2_sentences(args.n)
    tokenizer = load_tokenizer(args.model)
    model = load_encoder(args.model).to(device="cpu", dtype=torch.float32).eval()
    batches = baseline_batches(examples, tokenizer, args.max_length, args.batch_size)

    def ours():
        return embed_examples(examples, model, tokenizer, "mean", args.max_length, args.batch_size)

    ours_emb, base_emb = ours(), baseline(model, batches)  # warm-up (also fills the tokenisation cache)
    order = sorted(range(len(examples)), key=lambda i: -len(tokenizer(examples[i].text, truncation=True,
                                                                      max_length=args.max_length)["input_ids"]))
    diff = float(np.abs(ours_emb[order] - np.concatenate(base_emb)).max())
    t_ours, t_base = [], []
    for r in range(args.repeats):  # alternate which side goes first
        pair = [(t_ours, ours), (t_base, lambda: baseline(model, batches))]
        for times, fn in pair if r % 2 == 0 else pair[::-1]:
            times.append(timed(fn))
    n = len(examples)
    ours_sps, base_sps = n / statistics.median(t_ours), n / statistics.median(t_base)
    ratio = ours_sps / base_sps
    widths = [b["input_ids"].shape[1] for b in batches]
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU")
    print(f"model {args.model}, {n} sentences, batch {args.batch_size}, {len(batches)} batches "
          f"(widths {min(widths)}-{max(widths)}), {args.repeats} repeats, max |diff| {diff:.2e}")
    print(f"metaft embed_examples : {ours_sps:8.1f} sentences/s (median {statistics.median(t_ours):.3f} s)")
    print(f"plain AutoModel loop  : {base_sps:8.1f} sentences/s (median {statistics.median(t_base):.3f} s)")
    print(f"ratio metaft / plain  : {ratio:.3f} (required >= {args.min_ratio})")
    return 0 if ratio >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
