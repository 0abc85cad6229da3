"""Tokenisation (cached on disk), the encoded dataset and the dynamic-padding collator.

Batches are dicts with fixed keys: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the
tokenizer makes them) of shape [B, T], plus ``labels`` [B] (long), ``domains`` [B] (long) and
``weights`` [B] (float). T is the longest sequence in the batch rounded up to a multiple of 8.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import OutputError
from .fileio import atomic_path
from .records import Example

logger = logging.getLogger(__name__)

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")  # the batch keys a HF encoder takes


def cache_dir() -> Path:
    return Path(os.environ.get("METAFT_CACHE", Path.home() / ".cache" / "metaft")) / "features"


def tokenizer_fingerprint(tokenizer) -> str:
    """Identify a tokenizer by its full serialised state (vocab, normaliser, special tokens, class)."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


@dataclass
class Encoded:
    """Token ids of examples, unpadded: ``ids[i]`` (and ``type_ids[i]`` for pairs)."""

    ids: list[np.ndarray]
    type_ids: list[np.ndarray] | None
    truncated: int


def encode(examples: Sequence[Example], tokenizer, max_length: int, use_cache: bool = True) -> Encoded:
    """Tokenise texts (and pairs) once; results are cached keyed by texts, tokenizer and max length."""
    texts = [ex.text for ex in examples]
    pairs = [ex.text_pair for ex in examples]
    has_pair = any(p is not None for p in pairs)
    key_src = hashlib.sha256()
    key_src.update(f"{tokenizer_fingerprint(tokenizer)}|{max_length}|{has_pair}".encode())
    for t, p in zip(texts, pairs):
        key_src.update(t.encode("utf-8") + b"\x1f" + (p or "").encode("utf-8") + b"\x1e")
    path = cache_dir() / f"{key_src.hexdigest()[:32]}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return _unflatten(z, len(examples))
        except (OSError, ValueError, KeyError):
            logger.warning("ignoring unreadable feature cache %s", path)
    kwargs = dict(truncation=True, max_length=max_length, padding=False)
    if has_pair:
        out = tokenizer(texts, [p or "" for p in pairs], **kwargs)
        full = tokenizer(texts, [p or "" for p in pairs], truncation=False, padding=False)
    else:
        out = tokenizer(texts, **kwargs)
        full = tokenizer(texts, truncation=False, padding=False)
    truncated = sum(len(f) > max_length for f in full["input_ids"])
    ids = [np.asarray(x, dtype=np.int32) for x in out["input_ids"]]
    type_ids = None
    if "token_type_ids" in out:
        type_ids = [np.asarray(x, dtype=np.int8) for x in out["token_type_ids"]]
    enc = Encoded(ids, type_ids, truncated)
    if use_cache:
        _save(path, enc)
    return enc


def _save(path: Path, enc: Encoded) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.asarray([len(x) for x in enc.ids], dtype=np.int64)
    arrays = {
        "lengths": lengths,
        "ids": np.concatenate(enc.ids) if enc.ids else np.zeros(0, np.int32),
        "truncated": np.asarray(enc.truncated),
    }
    if enc.type_ids is not None:
        arrays["type_ids"] = np.concatenate(enc.type_ids) if enc.type_ids else np.zeros(0, np.int8)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    except OutputError as exc:  # a cache is an optimisation: never fail a run over it
        logger.warning("could not write feature cache %s: %s", path, exc)


def _unflatten(z, n: int) -> Encoded:
    lengths = z["lengths"]
    if len(lengths) != n:
        raise ValueError("cache size mismatch")
    splits = np.cumsum(lengths)[:-1]
    ids = list(np.split(z["ids"], splits)) if n else []
    type_ids = list(np.split(z["type_ids"], splits)) if "type_ids" in z and n else None
    return Encoded(ids, type_ids, int(z["truncated"]))


class EncodedDataset(torch.utils.data.Dataset):
    """Examples encoded for training: token ids plus integer label, integer domain and weight."""

    def __init__(
        self,
        examples: Sequence[Example],
        tokenizer,
        max_length: int,
        label_to_id: dict[str, int],
        domain_to_id: dict[str, int] | None = None,
        weights: Sequence[float] | None = None,
        use_cache: bool = True,
    ):
        self.examples = list(examples)
        enc = encode(self.examples, tokenizer, max_length, use_cache=use_cache)
        if enc.truncated:
            logger.warning("%d of %d texts are longer than %d tokens and were truncated",
                           enc.truncated, len(self.examples), max_length)
        self.ids, self.type_ids, self.truncated = enc.ids, enc.type_ids, enc.truncated
        self.labels = [label_to_id[ex.label] for ex in self.examples]
        domain_to_id = domain_to_id or {}
        self.domains = [domain_to_id.get(ex.domain, 0) for ex in self.examples]
        self.weights = [1.0] * len(self.examples) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.examples):
            raise ValueError(f"{len(self.weights)} weights for {len(self.examples)} examples")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.ids[i], "labels": self.labels[i], "domains": self.domains[i],
                "weights": self.weights[i]}
        if self.type_ids is not None:
            item["token_type_ids"] = self.type_ids[i]
        return item

    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


class Collator:
    """Pads a list of items to the longest in the batch (rounded up to ``multiple_of``)."""

    def __init__(self, pad_id: int = 0, multiple_of: int = 8, pad_to: int | None = None):
        self.pad_id, self.multiple_of, self.pad_to = pad_id, multiple_of, pad_to

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(it["input_ids"]) for it in items)
        if self.pad_to is not None:
            width = max(self.pad_to, longest)
        else:
            width = -(-longest // self.multiple_of) * self.multiple_of if self.multiple_of > 1 else longest
        n = len(items)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        has_types = "token_type_ids" in items[0]
        types = torch.zeros((n, width), dtype=torch.long) if has_types else None
        for i, it in enumerate(items):
            k = len(it["input_ids"])
            input_ids[i, :k] = torch.from_numpy(np.asarray(it["input_ids"], dtype=np.int64))
            mask[i, :k] = 1
            if has_types:
                types[i, :k] = torch.from_numpy(np.asarray(it["token_type_ids"], dtype=np.int64))
        batch = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": torch.tensor([it["labels"] for it in items], dtype=torch.long),
            "domains": torch.tensor([it["domains"] for it in items], dtype=torch.long),
            "weights": torch.tensor([it["weights"] for it in items], dtype=torch.float32),
        }
        if has_types:
            batch["token_type_ids"] = types
        return batch


def eval_loader(dataset: EncodedDataset, batch_size: int, accelerator, pad_to_multiple_of: int = 8,
                pad_to: int | None = None):
    """An accelerate-prepared loader, longest texts first (batches of similar lengths: little padding; the
    metrics do not depend on the order); each process gets its share (see gather_for_metrics)."""
    lengths = dataset.lengths()
    order = sorted(range(len(dataset)), key=lambda i: -lengths[i])
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=order,
                                         collate_fn=Collator(dataset.pad_id, pad_to_multiple_of, pad_to))
    return accelerator.prepare(loader)
