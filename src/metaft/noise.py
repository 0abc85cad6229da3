"""Label noise as a positive control for class typicality: flip a seeded fraction of the meta-training labels.

If typicality scores measure how typical an example is *of its class*, a flipped example (a positive review
labelled negative) should score low, and down-weighting it should help meta fine-tuning. Only the
cross-domain ``train.tsv`` of the meta stage is changed, in a copy of its folder: its ``dev.tsv`` is copied
byte for byte and the per-domain (k-shot-single) folders, with their dev and test sets, are never touched.
The copy's ``manifest.json`` records the fraction, the seed and every flipped example.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from .corpora import read_mft_tsv, write_mft_tsv
from .errors import ConfigError, DataError
from .fileio import write_json

NOISE_KEY = "label_noise"


def flip_choice(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the round(fraction * n) examples to flip, chosen with ``numpy.random.default_rng(seed)``."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"label_noise must be in [0, 1), got {fraction}")
    count = int(round(fraction * n))
    return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))


def add_label_noise(source: str | Path, dest: str | Path, fraction: float, seed: int) -> dict:
    """Write ``dest`` = ``source`` (a prepared k-shot-cross folder) with a fraction of its training labels
    flipped; returns the noise record also stored under ``label_noise`` in ``dest/manifest.json``.

    Each chosen example gets another label of the folder's label set, uniformly among the others (for two
    labels: the other one), drawn from the same seeded generator. Deterministic: the same inputs write the
    same files.
    """
    source, dest = Path(source), Path(dest)
    if source.resolve() == dest.resolve():
        raise ConfigError(f"{dest}: label noise must be written to a copy, not into the prepared folder")
    train = read_mft_tsv(source / "train.tsv")
    if not train:
        raise DataError(source / "train.tsv", "no examples")
    manifest = json.loads((source / "manifest.json").read_text(encoding="utf-8"))
    labels = sorted({ex.label for ex in train} | set(manifest.get("labels", [])))
    if len(labels) < 2:
        raise DataError(source / "train.tsv", "label noise needs at least two labels")
    chosen = flip_choice(len(train), fraction, seed)
    rng = np.random.default_rng([seed, 1])  # the new labels: a stream of its own, independent of the choice
    noisy, flipped = list(train), []
    for i in chosen.tolist():
        ex = train[i]
        others = [lab for lab in labels if lab != ex.label]
        noisy[i] = replace(ex, label=others[int(rng.integers(len(others)))])
        flipped.append({"index": i, "uid": ex.uid, "domain": ex.domain, "from": ex.label, "to": noisy[i].label})
    dest.mkdir(parents=True, exist_ok=True)
    write_mft_tsv(dest / "train.tsv", noisy)
    reread = read_mft_tsv(dest / "train.tsv")  # uids hash the label: the noisy file's own uids
    for item in flipped:
        item["noisy_uid"] = reread[item["index"]].uid
    shutil.copyfile(source / "dev.tsv", dest / "dev.tsv")
    record = {"fraction": fraction, "seed": seed, "n": len(train), "n_flipped": len(flipped),
              "source": str(source), "flipped": flipped}
    write_json(dest / "manifest.json", {**manifest, NOISE_KEY: record})
    return record


def noise_record(folder: str | Path) -> dict | None:
    """The ``label_noise`` record of a folder written by :func:`add_label_noise` (None for a clean one)."""
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest.get(NOISE_KEY)


def flipped_mask(folder: str | Path) -> tuple[list[str], np.ndarray]:
    """uids of the noisy training file (file order) and whether each example's label was flipped."""
    record = noise_record(folder)
    if record is None:
        raise DataError(Path(folder) / "manifest.json", "no label_noise record: not a noisy copy")
    uids = [ex.uid for ex in read_mft_tsv(Path(folder) / "train.tsv")]
    mask = np.zeros(len(uids), dtype=bool)
    mask[[f["index"] for f in record["flipped"]]] = True
    return uids, mask


def noise_check(cross: Path) -> dict | None:
    """AUROC of the typicality scores at ranking the flipped examples of a noisy folder low (clean ones high)."""
    from .prototypes import auroc
    from .typicality import load_scores

    record = noise_record(cross)
    if record is None or not record["n_flipped"]:
        return None
    _, flipped = flipped_mask(cross)
    scores = load_scores(cross, read_mft_tsv(cross / "train.tsv"))
    clean = [s for s, f in zip(scores, flipped) if not f]
    noisy = [s for s, f in zip(scores, flipped) if f]
    return {"fraction": record["fraction"], "n": record["n"], "n_flipped": record["n_flipped"],
            "auroc": auroc(scores, ~flipped), "mean_score_clean": sum(clean) / len(clean),
            "mean_score_flipped": sum(noisy) / len(noisy)}
