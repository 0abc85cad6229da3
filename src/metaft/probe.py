"""The frozen-encoder reference: what a user gets from a frozen encoder and a linear classifier (mean-pooled,
L2-normalised embeddings of one domain's train split, logistic regression with C chosen on dev, test accuracy):
the study report's ``frozen-LR`` row, the bar a fine-tuned baseline should clear. The logistic regression is
the head warm start's (:func:`metaft.warmstart.fit_logistic`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .warmstart import fit_logistic

logger = logging.getLogger(__name__)

def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def frozen_lr_features(data_dir: str | Path, model: str, domain: str | None = None,
                       cache: dict | None = None) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The reference's features of one prepared domain folder: per split (train / dev / test.tsv) the mean-pooled,
    L2-normalised embeddings [N, H] and the labels. Returns the domain and ``{split: (x, y)}``. ``cache`` (a
    dict, reused across calls) keeps the encoder and every text's embedding: the test sets of k-shot splits are
    the same for every seed."""
    from .corpora import read_mft_tsv
    from .hub import load_encoder, load_tokenizer
    from .typicality import embed_examples

    cache = {} if cache is None else cache
    if "encoder" not in cache:
        cache.update(encoder=load_encoder(model), tokenizer=load_tokenizer(model), vectors={})
    vectors, data_dir, out = cache["vectors"], Path(data_dir), {}
    for split in ("train", "dev", "test"):
        examples = [ex for ex in read_mft_tsv(data_dir / f"{split}.tsv") if domain is None or ex.domain == domain]
        new = list({(ex.text, ex.text_pair): ex for ex in examples
                    if (ex.text, ex.text_pair) not in vectors}.values())
        if new:
            embedded = _unit_rows(embed_examples(new, cache["encoder"], cache["tokenizer"], "mean").astype(np.float64))
            vectors.update(zip(((ex.text, ex.text_pair) for ex in new), embedded))
        out[split] = (np.stack([vectors[(ex.text, ex.text_pair)] for ex in examples]),
                      np.asarray([ex.label for ex in examples]))
        domain = domain or examples[0].domain
    return domain, out


def frozen_lr_reference(data_dir: str | Path, model: str, domain: str | None = None,
                        cache: dict | None = None) -> dict:
    """Frozen-encoder logistic regression on one prepared domain folder (:func:`frozen_lr_features`), C on dev.
    Returns ``{"domain", "C", "dev_accuracy", "test_accuracy", "test_n"}``."""
    domain, out = frozen_lr_features(data_dir, model, domain, cache)
    fit = fit_logistic(*out["train"], *out["dev"])
    test_x, test_y = out["test"]
    return {"domain": domain, "C": fit["C"], "dev_accuracy": fit["dev_accuracy"],
            "test_accuracy": float((fit["model"].predict(test_x) == test_y).mean()), "test_n": int(len(test_y))}


def frozen_lr_file(folders: dict[str, Path], model: str, out: Path, force: bool = False,
                   cache: dict | None = None) -> list[dict]:
    """:func:`frozen_lr_reference` for each domain folder of one seed, kept in ``out`` (JSON) and reused."""
    import json

    from .fileio import write_json

    if out.is_file() and not force:
        return json.loads(out.read_text(encoding="utf-8"))
    rows = [frozen_lr_reference(folder, model, domain, cache) for domain, folder in folders.items()
            if (Path(folder) / "test.tsv").is_file()]
    out.parent.mkdir(parents=True, exist_ok=True)  # the seed's folder, before any of its runs made it
    write_json(out, rows)
    return rows
