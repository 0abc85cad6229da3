"""The embedding analysis of a study: 2-D PCA of the cross-domain dev set before and after meta fine-tuning,
and how well domains can be told apart in each (nearest-centroid accuracy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .fileio import write_json


def nearest_centroid_accuracy(x: np.ndarray, groups: list[str]) -> float:
    """How well domains can be told apart: share of points whose nearest (cosine) domain centroid is their own."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    names = sorted(set(groups))
    cents = np.stack([x[[g == n for g in groups]].mean(0) for n in names])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True).clip(1e-12)
    pred = np.asarray(names)[(x @ cents.T).argmax(1)]
    return float((pred == np.asarray(groups)).mean())


def pca_2d(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project each embedding set onto its own first two principal components."""
    out = []
    for x in (before, after):
        xc = x - x.mean(0)
        _, _, vt = np.linalg.svd(xc, full_matrices=False)
        out.append(xc @ vt[:2].T)
    return out[0], out[1]


def embedding_pca(cross: Path, model: str, meta_folder: str, out: Path) -> Path:
    """Embed the cross-domain dev set with the pre-trained and the meta-learned encoder; save 2-D PCA."""
    from .corpora import read_mft_tsv
    from .hub import load_encoder, load_tokenizer
    from .modeling import MetaLearner
    from .typicality import embed_examples

    examples = read_mft_tsv(cross / "dev.tsv")
    tok = load_tokenizer(model)
    before = embed_examples(examples, load_encoder(model), tok, "mean")
    encoder = MetaLearner.load(meta_folder).classifier.base_model
    after = embed_examples(examples, encoder, tok, "mean")
    domains = [ex.domain for ex in examples]
    pb, pa = pca_2d(before.astype(np.float64), after.astype(np.float64))
    write_json(out, {"domains": domains, "before": pb.round(5).tolist(), "after": pa.round(5).tolist(),
                     "before_domain_separation": nearest_centroid_accuracy(before, domains),
                     "after_domain_separation": nearest_centroid_accuracy(after, domains)})
    return out
