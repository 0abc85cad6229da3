"""Typicality arithmetic on embeddings: (domain, label) prototypes, scores and class-prototype agreement.

Pure numpy, no model: :mod:`metaft.typicality` embeds the examples and writes the files. ``space``
says which vectors the prototypes average: ``raw`` (the encoder's outputs as they are) or ``normalized``
(each embedding scaled to unit L2 norm first — the space a sentence encoder trained with a cosine objective,
such as all-MiniLM-L6-v2, was trained in). ``leave_one_out`` leaves an example out of its own class
prototype, so a few-shot example is not scored against a mean it makes up 1/K of.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from .errors import ConfigError

logger = logging.getLogger(__name__)

AGGREGATIONS = ("mean-prototype", "mean-cosine")
SPACES = ("raw", "normalized")


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero, so its cosines are 0)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _groups(domains: Sequence[str], labels: Sequence[str]) -> dict[tuple[str, str], list[int]]:
    groups: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(domains, labels)):
        groups.setdefault(key, []).append(i)
    return groups


def _space(embeddings: np.ndarray, space: str) -> np.ndarray:
    if space not in SPACES:
        raise ConfigError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    E = np.asarray(embeddings, dtype=np.float64)
    return unit_rows(E) if space == "normalized" else E


def own_prototype_cosines(E: np.ndarray, idx: list[int], leave_one_out: bool) -> np.ndarray:
    """cos(E_i, own prototype) for the examples ``idx`` of one (domain, label) group.

    With ``leave_one_out`` the prototype of example i is the mean of the group without i (its direction:
    group sum - E_i); a group of one has nothing left, so it keeps the full prototype (cosine 1).
    """
    rows = E[idx]
    total = rows.sum(axis=0)
    if not leave_one_out or len(idx) == 1:
        return unit_rows(rows) @ unit_rows(total)
    return np.einsum("ij,ij->i", unit_rows(rows), unit_rows(total[None, :] - rows))


def typicality_scores(
    embeddings: np.ndarray,
    domains: Sequence[str],
    labels: Sequence[str],
    alpha: float = 0.5,
    aggregation: str = "mean-prototype",
    space: str = "raw",
    leave_one_out: bool = False,
) -> tuple[np.ndarray, dict[tuple[str, str], np.ndarray], int]:
    """Typicality of every example, in float64.

    embeddings [N, H]; domains, labels: N strings. Returns scores [N], prototypes {(domain, label): [H]}
    (sorted keys; in ``space``, with every example) and the number of examples that fell back to alpha = 1
    (no other domain has their label).
    """
    E = _space(embeddings, space)
    if E.ndim != 2 or len(domains) != len(E) or len(labels) != len(E):
        raise ValueError(f"need embeddings [N, H] and N domains/labels, got {E.shape}, {len(domains)}, {len(labels)}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
    groups = _groups(domains, labels)
    prototypes = {key: E[groups[key]].mean(axis=0) for key in sorted(groups)}
    unit = unit_rows(E)
    scores = np.empty(len(E), dtype=np.float64)
    fallback = 0
    for (domain, label), idx in groups.items():
        own = own_prototype_cosines(E, idx, leave_one_out)
        others = [c for (d, lab), c in prototypes.items() if lab == label and d != domain]
        if not others:
            scores[idx] = own
            fallback += len(idx)
            continue
        if aggregation == "mean-prototype":
            cross = unit[idx] @ unit_rows(np.mean(others, axis=0))
        else:
            cross = (unit[idx] @ unit_rows(np.stack(others)).T).mean(axis=1)
        scores[idx] = alpha * own + (1.0 - alpha) * cross
    n_domains = len(set(domains))
    if n_domains == 1 and alpha < 1.0:
        logger.warning("only one domain (%s): nothing to compare with, so alpha = 1 (own prototype only)",
                       domains[0])
    elif fallback and alpha < 1.0:
        logger.warning("%d of %d examples have a label that no other domain has: alpha = 1 for them",
                       fallback, len(E))
    return scores, prototypes, fallback


def own_prototype_fraction(
    embeddings: np.ndarray,
    domains: Sequence[str],
    labels: Sequence[str],
    space: str = "raw",
    leave_one_out: bool = False,
) -> dict[str, float | None]:
    """Per domain: the fraction of its examples whose cosine to their own class prototype is higher than to
    every other class prototype of the same domain (the own one leaving the example out with
    ``leave_one_out``). A domain with a single class has nothing to compare with: None."""
    E = _space(embeddings, space)
    groups = _groups(domains, labels)
    unit = unit_rows(E)
    out: dict[str, float | None] = {}
    for domain in sorted(set(domains)):
        keys = [k for k in sorted(groups) if k[0] == domain]
        if len(keys) < 2:
            out[domain] = None
            continue
        closer = 0
        for key in keys:
            idx = groups[key]
            own = own_prototype_cosines(E, idx, leave_one_out)
            rivals = np.stack([unit_rows(E[groups[k]].mean(axis=0)) for k in keys if k != key])
            closer += int((own > (unit[idx] @ rivals.T).max(axis=1)).sum())
        out[domain] = closer / sum(len(groups[k]) for k in keys)
    return out


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` ranking the positives above the negatives: the probability
    that a random positive scores higher than a random negative, ties counting one half."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    if pos.all() or not pos.any():
        raise ValueError("AUROC needs at least one positive and one negative")
    diff = s[pos][:, None] - s[~pos][None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)
