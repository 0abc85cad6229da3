"""Classify texts with a saved per-domain model (any HF sequence-classification folder)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from .errors import ConfigError
from .features import Collator, encode
from .hub import from_pretrained, load_tokenizer, resolve_model
from .records import Example


def load_predictor(model_dir: str | Path, trust_remote_code: bool = False):
    from transformers import AutoModelForSequenceClassification

    from .fileio import recover_folder

    path = resolve_model(model_dir)
    recover_folder(path)
    try:
        model = from_pretrained(AutoModelForSequenceClassification, path, trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{model_dir}: cannot load a classifier ({exc})") from None
    return model.eval(), load_tokenizer(path, trust_remote_code)


@torch.inference_mode()
def predict(texts: Iterable[str], model, tokenizer, max_length: int, batch_size: int) -> Iterator[dict]:
    """Yield ``{"text", "label", "probabilities": {label: p}}`` per text, in input order."""
    id2label = model.config.id2label
    collate = Collator(tokenizer.pad_token_id or 0)
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        enc = encode([Example(str(i), t, "", "") for i, t in enumerate(chunk)], tokenizer, max_length,
                     use_cache=False)
        items = [{"input_ids": x, "labels": 0, "domains": 0, "weights": 1.0} for x in enc.ids]
        if enc.type_ids is not None:
            for item, t in zip(items, enc.type_ids):
                item["token_type_ids"] = t
        batch = collate(items)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        probs = torch.softmax(model(**inputs).logits.float(), dim=-1)
        for text, p in zip(chunk, probs.tolist()):
            best = max(range(len(p)), key=p.__getitem__)
            yield {"text": text, "label": id2label[best],
                   "probabilities": {id2label[i]: round(v, 6) for i, v in enumerate(p)}}
