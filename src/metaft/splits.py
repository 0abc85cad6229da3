"""k-shot (LM-BFF) and full splits in the seed layout, with a ``manifest.json`` per folder.

Layout written under ``out``::

    k-shot-single/<DOMAIN>/<K>-<seed>/{train,dev,test}.tsv + manifest.json
    k-shot-cross/<group>/<K>-<seed>/{train,dev}.tsv + manifest.json   (concatenation, in group order)

(``full-<seed>`` instead of ``<K>-<seed>`` for ``k=None``.) Every line is ``text \\t domain \\t label``.

Rules, per domain (the pool and test set come from :mod:`metaft.domains`):

* **k-shot**: ``random.Random(seed)`` shuffles the deduplicated pool; the first K examples of each label
  are train, the next K of each label dev. **full**: the whole pool, a seeded ``dev_fraction`` dev split.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path

from .config import PrepareConfig
from .corpora import format_mft_line, write_mft_tsv
from .domains import DomainData, duplicate_key, hold_out, resolve_group
from .errors import ConfigError
from .fileio import sha256_file, write_json
from .inputs import check_prepared_folder
from .records import Example

logger = logging.getLogger(__name__)


def dedupe(examples: list[Example]) -> list[Example]:
    """Keep the first copy of each normalised text."""
    seen: set[str] = set()
    out = []
    for ex in examples:
        if duplicate_key(ex) not in seen:
            seen.add(duplicate_key(ex))
            out.append(ex)
    return out


def kshot_split(
    pool: list[Example], k: int, seed: int, deduplicated: bool = False
) -> tuple[list[Example], list[Example]]:
    """LM-BFF: shuffle the deduplicated pool with ``Random(seed)``; first K per label train, next K dev.

    ``deduplicated=True`` says ``pool`` already went through :func:`dedupe` (skips that work).
    """
    order = list(pool) if deduplicated else dedupe(pool)
    random.Random(seed).shuffle(order)
    taken: Counter[str] = Counter()
    train, dev = [], []
    for ex in order:
        if taken[ex.label] < k:
            train.append(ex)
        elif taken[ex.label] < 2 * k:
            dev.append(ex)
        taken[ex.label] += 1
    return train, dev


def full_split(pool: list[Example], dev_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """The whole pool: ``round(dev_fraction * len)`` dev (whole duplicate groups), both shuffled."""
    rng = random.Random(seed)
    train, dev = hold_out(pool, round(dev_fraction * len(pool)), rng)
    rng.shuffle(train)
    rng.shuffle(dev)
    return train, dev


def _check_k(domain: DomainData, unique: list[Example], k: int) -> None:
    counts = Counter(ex.label for ex in unique)
    for label in domain.labels:
        if counts[label] < 2 * k:
            raise ConfigError(
                f"K={k} is too large for domain {domain.name}: label {label!r} has {counts[label]} distinct "
                f"examples in the training pool, and K-shot needs 2*K={2 * k} (K train + K dev)"
            )


def _counts(splits: dict[str, list[Example]], domains: list[str], labels: list[str]) -> dict:
    out = {}
    for split, examples in splits.items():
        c = Counter((ex.domain, ex.label) for ex in examples)
        per_domain = {d: {lab: c[(d, lab)] for lab in labels} for d in domains}
        out[split] = {"total": len(examples), "domains": per_domain}
    return out


def _write_folder(folder: Path, splits: dict[str, list[Example]], manifest: dict) -> Path:
    """Write ``<split>.tsv`` files and a deterministic ``manifest.json`` (no timestamps) into ``folder``."""
    try:
        return _write_files(folder, splits, manifest)
    except OSError as exc:
        raise ConfigError(f"cannot write {folder} ({exc.strerror or exc}); check --out") from None


def _write_files(folder: Path, splits: dict[str, list[Example]], manifest: dict) -> Path:
    files = {}
    for split, examples in splits.items():
        path = write_mft_tsv(folder / f"{split}.tsv", examples)
        files[path.name] = sha256_file(path)
    manifest = {
        **manifest,
        "counts": _counts(splits, manifest["domains"], manifest["labels"]),
        "files": files,
    }
    write_json(folder / "manifest.json", manifest, ensure_ascii=False)
    logger.debug("wrote %s (%s)", folder, ", ".join(f"{s} {len(e)}" for s, e in splits.items()))
    return folder


def prepare(config: PrepareConfig) -> list[Path]:
    """Write the k-shot (or full) splits of every seed; returns the written folders (single, then cross)."""
    group, domains = resolve_group(config)
    labels = domains[0].labels
    unique: dict[str, list[Example]] = {}  # k-shot samples from the deduplicated pools
    if config.k is not None:
        for domain in domains:
            unique[domain.name] = dedupe(domain.pool)
            _check_k(domain, unique[domain.name], config.k)
    else:  # check every seed before writing anything
        for seed in config.seeds:
            for domain in domains:
                _check_full_train(domain, full_split(domain.pool, config.dev_fraction, seed)[0], seed)
    out = Path(config.out)
    planned: list[tuple[Path, dict[str, list[Example]], dict]] = []  # folder, splits, manifest
    for seed in config.seeds:
        tag = f"{'full' if config.k is None else config.k}-{seed}"
        common = {
            "format": "metaft-splits/1",
            "labels": labels,
            "k": "full" if config.k is None else config.k,
            "seed": seed,
            "protocol": _protocol(config),
        }
        train_all: list[Example] = []
        dev_all: list[Example] = []
        for domain in domains:
            if config.k is None:
                train, dev = full_split(domain.pool, config.dev_fraction, seed)
            else:
                train, dev = kshot_split(unique[domain.name], config.k, seed, deduplicated=True)
            train_all += train
            dev_all += dev
            meta = {
                "layout": "k-shot-single",
                "name": domain.name,
                **common,
                "domains": [domain.name],
                "test_rule": {domain.name: domain.test_rule},
                "test_texts_removed_from_pool": {domain.name: _removed(domain)},
                "sources": domain.sources,
            }
            folder = out / "k-shot-single" / domain.name / tag
            planned.append((folder, {"train": train, "dev": dev, "test": domain.test}, meta))
        meta = {
            "layout": "k-shot-cross",
            "name": group,
            **common,
            "domains": [d.name for d in domains],
            "test_rule": {d.name: d.test_rule for d in domains},
            "test_texts_removed_from_pool": {d.name: _removed(d) for d in domains},
            "sources": {k: v for d in domains for k, v in d.sources.items()},
        }
        planned.append((out / "k-shot-cross" / group / tag, {"train": train_all, "dev": dev_all}, meta))
    for folder, splits, meta in planned:  # refuse before anything is written
        rendered = {f"{s}.tsv": "".join(map(format_mft_line, exs)).encode("utf-8") for s, exs in splits.items()}
        check_prepared_folder(folder, rendered, meta, config.force)
    return [_write_folder(folder, splits, meta) for folder, splits, meta in planned]


def _check_full_train(domain: DomainData, train: list[Example], seed: int) -> None:
    """``--k full``: a label whose few pool examples all went to dev would be unlearnable."""
    missing = [lab for lab in domain.labels if lab not in {ex.label for ex in train}]
    if missing:
        n = len(dedupe([ex for ex in domain.pool if ex.label == missing[0]]))
        raise ConfigError(
            f"--k full, seed {seed}: label {missing[0]!r} of domain {domain.name} has {n} distinct pool "
            "example(s) and none went to train; add examples of it or lower --dev-fraction"
        )


def _removed(domain: DomainData) -> dict:
    return {"checked_against": domain.checked, "dropped": domain.dropped}


def _protocol(config: PrepareConfig) -> str:
    if config.k is None:
        return (
            f"full pool; {config.dev_fraction:g} of each domain's pool as dev (whole duplicate groups), "
            "random.Random(seed)"
        )
    return (
        "LM-BFF k-shot: pool deduplicated by normalised text (first copy), shuffled with "
        "random.Random(seed); first K per label = train, next K per label = dev"
    )
