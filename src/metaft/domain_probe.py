"""A linear domain probe: how well a logistic regression tells the domains apart from sentence embeddings.

Used as a mechanism check of meta fine-tuning: the domain-corruption loss is meant to make the encoder's
sentence vectors (masked token means) at the corrupted layers *domain-invariant*, so after meta fine-tuning
the probe's cross-validated accuracy should fall towards chance. The probe is an L2-regularised multinomial
logistic regression on standardised features, scored by stratified k-fold cross-validation; it needs
nothing beyond torch and numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .features import Collator, encode
from .fileio import read_json, write_json
from .pooling import masked_mean

PROBE_FOLDS = 5
PROBE_FILE = "domain_probe.json"  # a study's probes of one seed: RUN/seed-<s>/domain_probe.json


def stratified_folds(labels: Sequence, folds: int, seed: int) -> np.ndarray:
    """Fold index of every example: each class shuffled (seeded) and dealt round-robin over the folds."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for value in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == value)
        rng.shuffle(idx)
        out[idx] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)  # continue dealing where the last class stopped: fold sizes stay balanced
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, c: float = 1.0) -> tuple[torch.Tensor, ...]:
    """Multinomial logistic regression: minimise sum CE + ||W||^2 / (2c) with L-BFGS (float64). Returns
    (mean, std, W, b) so that ``predict_logistic`` standardises new points like the training ones."""
    xt = torch.as_tensor(x, dtype=torch.float64)
    mean, std = xt.mean(0), xt.std(0, unbiased=False).clamp_min(1e-8)
    xs = (xt - mean) / std
    yt = torch.as_tensor(y, dtype=torch.long)
    w = torch.zeros(xs.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w + b, yt, reduction="sum") + (w * w).sum() / (2 * c)
        loss.backward()
        return loss

    opt.step(closure)
    return mean, std, w.detach(), b.detach()


def predict_logistic(model: tuple[torch.Tensor, ...], x: np.ndarray) -> np.ndarray:
    mean, std, w, b = model
    xs = (torch.as_tensor(x, dtype=torch.float64) - mean) / std
    return (xs @ w + b).argmax(1).numpy()


def probe_accuracy(x: np.ndarray, groups: Sequence[str], folds: int = PROBE_FOLDS, seed: int = 0) -> float:
    """Stratified ``folds``-fold cross-validated accuracy of a logistic regression predicting ``groups`` from
    the rows of ``x`` (every example is predicted once, by the model fitted without its fold)."""
    names = sorted(set(groups))
    y = np.asarray([names.index(g) for g in groups])
    if len(names) < 2:
        raise ValueError("a domain probe needs at least two domains")
    folds = min(folds, int(np.bincount(y).min()))
    if folds < 2:
        raise ValueError("a domain probe needs at least two examples of every domain")
    fold = stratified_folds(y, folds, seed)
    correct = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: extra threads only add synchronisation (much slower on a busy CPU)
    try:
        for f in range(folds):
            train, test = fold != f, fold == f
            model = fit_logistic(x[train], y[train], len(names))
            correct += int((predict_logistic(model, x[test]) == y[test]).sum())
    finally:
        torch.set_num_threads(threads)
    return correct / len(y)


@torch.inference_mode()
def layer_embeddings(examples, encoder, tokenizer, layers: Sequence[int], max_length: int = 128,
                     batch_size: int = 64) -> dict[int, np.ndarray]:
    """Masked-mean sentence vectors [N, H] of the 0-based encoder ``layers``, in input order."""
    encoder.eval()
    device = next(encoder.parameters()).device
    enc = encode(examples, tokenizer, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collate = Collator(pad_id=pad_id, multiple_of=8)
    out: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    for start in range(0, len(enc.ids), batch_size):
        items = [{"input_ids": ids, "labels": 0, "domains": 0, "weights": 1.0}
                 for ids in enc.ids[start:start + batch_size]]
        if enc.type_ids is not None:
            for item, t in zip(items, enc.type_ids[start:start + batch_size]):
                item["token_type_ids"] = t
        batch = collate(items)
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        hidden = encoder(**inputs, output_hidden_states=True, return_dict=True).hidden_states
        for layer in layers:
            out[layer].append(masked_mean(hidden[layer + 1], inputs["attention_mask"]).float().cpu().numpy())
    return {layer: np.concatenate(parts) for layer, parts in out.items()}


def domain_probe(examples, encoder, tokenizer, layers: Sequence[int], seed: int = 0,
                 max_length: int = 128) -> dict:
    """Cross-validated domain-probe accuracy per layer (keys are layer numbers as strings), their mean, and
    chance (the largest domain's share: what always answering it would score)."""
    domains = [ex.domain for ex in examples]
    vectors = layer_embeddings(examples, encoder, tokenizer, layers, max_length)
    per_layer = {str(layer): probe_accuracy(vectors[layer], domains, seed=seed) for layer in layers}
    counts = np.unique(domains, return_counts=True)[1]
    return {"layers": per_layer, "mean": float(np.mean(list(per_layer.values()))),
            "chance": float(counts.max() / counts.sum()), "n": len(examples), "folds": PROBE_FOLDS}


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _probe_layers(num_layers: int, layers: Sequence[int] | None) -> tuple[int, ...]:
    from .modeling import default_domain_layers

    return tuple(layers) if layers else default_domain_layers(num_layers)


def domain_probe_for_model(model: str, dev_file: str | Path, layers: Sequence[int] | None = None,
                           seed: int = 0) -> dict:
    """The domain probe of a pre-trained encoder (hub id, folder or alias) on a cross-domain dev file."""
    from .corpora import read_mft_tsv
    from .hub import load_encoder, load_tokenizer

    encoder = load_encoder(model).to(_device())
    layers = _probe_layers(encoder.config.num_hidden_layers, layers)
    return domain_probe(read_mft_tsv(dev_file), encoder, load_tokenizer(model), layers, seed)


def domain_probe_for_folder(meta_folder: str | Path, dev_file: str | Path, layers: Sequence[int] | None = None,
                            seed: int = 0) -> dict:
    """The domain probe of a meta-learner's encoder at its corrupted layers (``layers`` or the default
    layers when it has no domain head, e.g. the multitask ablation)."""
    from .corpora import read_mft_tsv
    from .hub import load_tokenizer
    from .modeling import MetaLearner
    learner = MetaLearner.load(meta_folder)
    encoder = learner.classifier.base_model.to(_device())
    if learner.domain_head is not None and not layers:
        layers = learner.domain_head.layers
    layers = _probe_layers(encoder.config.num_hidden_layers, layers)
    return domain_probe(read_mft_tsv(dev_file), encoder, load_tokenizer(str(meta_folder)), layers, seed)


def seed_probes(cross: Path, model: str, snapshots: dict[str, str], out: Path, seed: int,
                layers: tuple[int, ...] = (), force: bool = False) -> dict:
    """Domain probes of one seed, cached in ``out``: ``before`` (the pre-trained ``model``) and ``after``
    (each meta-learner variant's best folder in ``snapshots``); variants already in the file are kept."""
    saved = None if force else read_json(out)
    probes = saved if saved and saved.get("layers_setting") == list(layers) else {"after": {}}
    probes["layers_setting"] = list(layers)
    if "before" not in probes:
        probes["before"] = domain_probe_for_model(model, cross / "dev.tsv", layers or None, seed)
    for variant, folder in snapshots.items():
        if variant not in probes["after"]:
            probes["after"][variant] = domain_probe_for_folder(folder, cross / "dev.tsv", layers or None, seed)
    write_json(out, probes)
    return probes
