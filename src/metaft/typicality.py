"""Stage 1: frozen-encoder embeddings, (domain, label) prototypes and typicality scores.

For example i of domain k with label y and embedding E_i (the pre-trained encoder, eval mode)::

    c_y^(k)  = mean of E over the training examples of domain k with label y         (prototype)
    t_i      = a * cos(E_i, c_y^(k)) + (1 - a) * cos(E_i, mean_{k' != k} c_y^(k'))    (mean-prototype)
    t_i      = a * cos(E_i, c_y^(k)) + (1 - a) * mean_{k' != k} cos(E_i, c_y^(k'))    (mean-cosine)

where k' runs over the other domains that have label y. With no such domain (one domain only, or a label
no other domain has) the second term is undefined and a = 1 for that example. Scores are not renormalised.
``space`` normalized averages unit-length embeddings (raw: the encoder's outputs); ``leave_one_out`` leaves
E_i out of c_y^(k) in its own score (see :mod:`metaft.prototypes`).

Files written beside the training data (a prepared folder holding ``train.tsv``, or any layout file):

- ``typicality.tsv``: header ``uid domain label score``, one row per training example in file order;
- ``typicality.json``: settings, train-file SHA-256, counts, per (domain, label) min/mean/max, and per domain
  the fraction of examples closer to their own class prototype than to any other class's;
- ``embeddings.safetensors``: ``embeddings`` [N, H] float32, uids in the metadata (JSON list);
- ``prototypes.safetensors``: ``prototypes`` [P, H] float64, ``[domain, label]`` keys in the metadata;
- ``typicality_hist.png``: score histogram per domain.

For a layout file other than ``train.tsv`` (e.g. ``my.tsv``) the names get its stem as prefix
(``my.typicality.tsv``, ``my.typicality.json``, ...).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import MetaConfig, TypicalityConfig, TypicalitySettings
from .corpora import read_mft_tsv
from .errors import DataError, MetaftError
from .features import Collator, encode
from .fileio import atomic_path, sha256_file, write_json, write_text
from .hub import load_encoder, load_tokenizer, usable_max_length
from .pooling import check_pooling, pool
from .prototypes import own_prototype_fraction, typicality_scores
from .records import Example

logger = logging.getLogger(__name__)

_DEFAULTS = TypicalitySettings()  # the declared defaults, for callers of the functions below
HEADER = "uid\tdomain\tlabel\tscore"


@dataclass(frozen=True)
class ScorePaths:
    """Where stage 1 reads the training file and writes its outputs."""

    train: Path
    scores: Path
    summary: Path
    embeddings: Path
    prototypes: Path
    histogram: Path


def score_paths(data: str | Path) -> ScorePaths:
    """Paths for a prepared folder (``DIR/train.tsv`` -> ``DIR/typicality.tsv``) or a layout file."""
    data = Path(data)
    if data.is_dir():
        folder, train, prefix = data, data / "train.tsv", ""
        if not train.is_file():
            raise DataError(data, "no train.tsv in this folder; give a prepared folder "
                                  "(e.g. DATA/k-shot-cross/g1/16-42) or a `text<TAB>domain<TAB>label` file")
    elif data.is_file():
        folder, train = data.parent, data
        prefix = "" if data.name == "train.tsv" else f"{data.stem}."
    else:
        raise DataError(data, "no such file or folder")
    return ScorePaths(
        train=train,
        scores=folder / f"{prefix}typicality.tsv",
        summary=folder / f"{prefix}typicality.json",
        embeddings=folder / f"{prefix}embeddings.safetensors",
        prototypes=folder / f"{prefix}prototypes.safetensors",
        histogram=folder / f"{prefix}typicality_hist.png",
    )


# ----------------------------------------------------------------------------------------------- embeddings


@torch.inference_mode()
def embed_encoded(
    ids: Sequence[np.ndarray],
    type_ids: Sequence[np.ndarray] | None,
    model,
    pooling: str = _DEFAULTS.pooling,
    batch_size: int = _DEFAULTS.batch_size,
    pad_id: int = 0,
    pad_to: int | None = None,
) -> np.ndarray:
    """Embed token-id sequences with a frozen encoder -> [N, H] float32, in input order.

    Sequences are batched longest first (less padding), padded per batch (to a multiple of 8 tokens, or to
    ``pad_to``), run on the model's device in eval/inference mode, pooled, and put back in input order.
    """
    check_pooling(model, pooling)
    model.eval()
    device = next(model.parameters()).device
    collate = Collator(pad_id=pad_id, multiple_of=8, pad_to=pad_to)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # stable: ties keep input order
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        items = [{"input_ids": ids[i], "labels": 0, "domains": 0, "weights": 1.0} for i in idx]
        if type_ids is not None:
            for item, i in zip(items, idx):
                item["token_type_ids"] = type_ids[i]
        batch = collate(items)
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        vectors = pool(model(**inputs), inputs["attention_mask"], pooling).float().cpu().numpy()
        if out is None:
            out = np.empty((len(ids), vectors.shape[1]), dtype=np.float32)
        out[idx] = vectors
    if out is None:
        raise DataError(None, "nothing to embed (no examples)")
    return out


def embed_examples(
    examples: Sequence[Example],
    model,
    tokenizer,
    pooling: str = _DEFAULTS.pooling,
    max_length: int = _DEFAULTS.max_length,
    batch_size: int = _DEFAULTS.batch_size,
    use_cache: bool = _DEFAULTS.use_cache,
    pad_to: int | None = None,
) -> np.ndarray:
    """Tokenise (cached, :func:`metaft.features.encode`) and embed examples -> [N, H] float32."""
    enc = encode(examples, tokenizer, max_length, use_cache=use_cache)
    if enc.truncated:
        logger.warning("%d of %d texts are longer than %d tokens and were truncated",
                       enc.truncated, len(examples), max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return embed_encoded(enc.ids, enc.type_ids, model, pooling, batch_size, pad_id, pad_to)


def select_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------------ scores

# ------------------------------------------------------------------------------------------------- files


def _stats(values: np.ndarray) -> dict[str, float | int]:
    return {"count": len(values), "min": round(float(values.min()), 8),
            "mean": round(float(values.mean()), 8), "max": round(float(values.max()), 8)}


def _summary(config: TypicalityConfig, paths: ScorePaths, examples: list[Example], scores: np.ndarray,
             hidden: int, fallback: int, train_sha: str, own_fraction: dict[str, float | None]) -> dict:
    stats: dict[str, dict[str, dict]] = {}
    for domain in sorted({ex.domain for ex in examples}):
        for label in sorted({ex.label for ex in examples if ex.domain == domain}):
            mask = np.array([ex.domain == domain and ex.label == label for ex in examples])
            stats.setdefault(domain, {})[label] = _stats(scores[mask])
    return {
        "format": 1,
        "model": config.model,
        "pooling": config.pooling,
        "alpha": config.alpha,
        "aggregation": config.aggregation,
        "space": config.space,
        "leave_one_out": config.leave_one_out,
        "own_prototype_fraction": own_fraction,
        "max_length": config.max_length,
        "train_file": paths.train.name,
        "train_sha256": train_sha,
        "n": len(examples),
        "hidden_size": hidden,
        "single_domain": len(stats) == 1,
        "alpha1_fallback": fallback,
        "overall": _stats(scores),
        "stats": stats,
    }


def plot_histogram(path: Path, scores: np.ndarray, domains: Sequence[str], title: str) -> None:
    """Overlaid score histograms, one per domain (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = float(scores.min()), float(scores.max())
    bins = np.linspace(lo - 1e-6, hi + 1e-6, 31)
    fig, ax = plt.subplots(figsize=(6, 4))
    domains = np.asarray(domains)
    for domain in sorted(set(domains.tolist())):
        ax.hist(scores[domains == domain], bins=bins, alpha=0.5, label=f"{domain} (n={(domains == domain).sum()})")
    ax.set_xlabel("typicality score")
    ax.set_ylabel("examples")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    finally:
        plt.close(fig)


def _write_outputs(paths: ScorePaths, examples: list[Example], embeddings: np.ndarray, scores: np.ndarray,
                   prototypes: dict[tuple[str, str], np.ndarray], summary: dict) -> None:
    from safetensors.numpy import save

    rows = [HEADER] + [f"{ex.uid}\t{ex.domain}\t{ex.label}\t{s:.8f}" for ex, s in zip(examples, scores)]
    write_text(paths.scores, "\n".join(rows) + "\n")
    uids = json.dumps([ex.uid for ex in examples])
    blob = save({"embeddings": np.ascontiguousarray(embeddings, dtype=np.float32)}, metadata={"uids": uids})
    with atomic_path(paths.embeddings) as tmp:
        tmp.write_bytes(blob)
    keys = json.dumps([list(k) for k in prototypes])
    stacked = np.stack(list(prototypes.values())).astype(np.float64)
    blob = save({"prototypes": stacked}, metadata={"keys": keys})
    with atomic_path(paths.prototypes) as tmp:
        tmp.write_bytes(blob)
    write_json(paths.summary, summary, sort_keys=True)
    title = (f"{summary['model']} / {summary['pooling']} / alpha={summary['alpha']} / {summary['aggregation']} / "
             f"{summary['space']}{' / leave-one-out' if summary['leave_one_out'] else ''}")
    plot_histogram(paths.histogram, scores, [ex.domain for ex in examples], title)


def compute_typicality(config: TypicalityConfig) -> Path:
    """Stage 1: embed the training examples, score them and write the files; returns ``typicality.tsv``."""
    paths = score_paths(config.data_dir)
    examples = read_mft_tsv(paths.train)
    if not examples:
        raise DataError(paths.train, "no examples")
    train_sha = sha256_file(paths.train)
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    model = load_encoder(config.model, trust_remote_code=config.trust_remote_code)
    check_pooling(model, config.pooling)
    model.to(device=select_device(), dtype=torch.float32)
    logger.info("embedding %d examples of %s with %s (%s pooling) on %s", len(examples), paths.train,
                config.model, config.pooling, next(model.parameters()).device)
    max_length = usable_max_length(config.max_length, model.config, tokenizer)
    embeddings = embed_examples(examples, model, tokenizer, config.pooling, max_length,
                                config.batch_size, use_cache=config.use_cache)
    scores, prototypes, fallback = typicality_scores(
        embeddings, [ex.domain for ex in examples], [ex.label for ex in examples], config.alpha, config.aggregation,
        config.space, config.leave_one_out)
    if not np.isfinite(scores).all():
        raise MetaftError(f"{config.model}: non-finite embeddings or scores; check the model")
    own = own_prototype_fraction(embeddings, [ex.domain for ex in examples], [ex.label for ex in examples],
                                 config.space, config.leave_one_out)
    summary = _summary(config, paths, examples, scores, embeddings.shape[1], fallback, train_sha, own)
    _write_outputs(paths, examples, embeddings, scores, prototypes, summary)
    logger.info("wrote %s (%d scores, min %.4f mean %.4f max %.4f)", paths.scores, len(scores),
                scores.min(), scores.mean(), scores.max())
    return paths.scores


# ------------------------------------------------------------------------------------------------ loader

def _read_scores(path: Path) -> dict[str, float]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not valid UTF-8 (byte {exc.start}); rerun `metaft preprocess`") from None
    if not lines or lines[0].rstrip("\r") != HEADER:
        raise DataError(path, f"not a typicality file (expected header {HEADER!r})", 1)
    table: dict[str, float] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = line.rstrip("\r").split("\t")
        try:
            table[cols[0]] = score = float(cols[3])
        except (IndexError, ValueError):
            raise DataError(path, "expected uid, domain, label, score", lineno) from None
        if not math.isfinite(score):  # float() takes "nan" and "inf"; as a loss weight either ruins training
            raise DataError(path, "score is not a finite number", lineno)
    return table


def load_scores(data_dir: str | Path, examples: Sequence[Example]) -> list[float]:
    """Typicality score of each example (joined by uid), checked against the current training file.

    ``data_dir`` is what ``metaft preprocess`` was given (a prepared folder or a layout file). Raises
    :class:`DataError` when the scores are missing, or were computed from a different training file.
    """
    paths = score_paths(data_dir)
    rerun = f"rerun `metaft preprocess {data_dir}`"
    if not paths.scores.is_file() or not paths.summary.is_file():
        raise DataError(paths.scores, f"no typicality scores yet: run `metaft preprocess {data_dir}` first")
    try:
        summary = json.loads(paths.summary.read_text(encoding="utf-8"))
        recorded_n, recorded_sha = int(summary["n"]), str(summary["train_sha256"])
    except (ValueError, KeyError, TypeError):
        raise DataError(paths.summary, f"unreadable typicality summary: {rerun}") from None
    table = _read_scores(paths.scores)
    problems = []
    if len(table) != recorded_n:
        problems.append(f"{len(table)} scores but {recorded_n} recorded")
    if sha256_file(paths.train) != recorded_sha:
        problems.append(f"{paths.train.name} changed since (SHA-256 differs)")
    missing = [ex.uid for ex in examples if ex.uid not in table]
    if missing:
        problems.append(f"{len(missing)} of {len(examples)} examples have no score, e.g. uid {missing[0]}")
    if problems:
        raise DataError(paths.scores, f"{paths.scores.name} does not match {paths.train.name} "
                                      f"({len(table)} scores for {len(examples)} examples; "
                                      f"{'; '.join(problems)}): {rerun}")
    return [table[ex.uid] for ex in examples]


def typicality_weights(cfg: MetaConfig, data_dir: Path, train: list[Example]) -> list[float]:
    """Per-example loss weights: typicality scores normalised by ``cfg.typicality_norm``, or all 1.0.

    A score below 0 (an example whose embedding points away from its class prototypes; it happens with
    sentence-embedding models, not with BERT's usual 0.9-1.0) counts as 0: a negative weight would train the
    model to get that example wrong.
    """
    if not cfg.typicality:
        return [1.0] * len(train)
    scores = load_scores(data_dir, train)
    if negative := sum(s < 0 for s in scores):
        logger.warning("%d of %d typicality scores are below 0 (min %.4f): they count as 0, so those examples do "
                       "not contribute to the classification loss", negative, len(scores), min(scores))
        scores = [max(s, 0.0) for s in scores]
    if cfg.typicality_norm == "none":
        return scores
    groups = {"": list(range(len(train)))} if cfg.typicality_norm == "mean-global" else {}
    if not groups:
        for i, ex in enumerate(train):
            groups.setdefault(ex.domain, []).append(i)
    weights = list(scores)
    for domain, idx in groups.items():
        mean = sum(scores[i] for i in idx) / len(idx)
        if mean <= 0:
            raise DataError(data_dir / "typicality.tsv", f"mean typicality of {domain or 'all examples'} is "
                                                         f"{mean:.4f} <= 0: use --typicality-norm none")
        for i in idx:
            weights[i] = scores[i] / mean
    logger.info("typicality weights (%s): min %.4f, max %.4f", cfg.typicality_norm, min(weights), max(weights))
    return weights
