"""Classify texts with a saved per-domain model (any HF sequence-classification folder).

The promise: one output record per input line, in input order, so outputs line up with inputs. A blank or
whitespace-only line gets a record too (``"label": null`` and a note); input that is not UTF-8 names its line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from .errors import ConfigError, DataError, MetaftError
from .features import Collator, encode
from .hub import from_pretrained, load_tokenizer, resolve_model
from .records import Example

logger = logging.getLogger(__name__)

BLANK_NOTE = "blank line: not classified"


def read_input_lines(source: str) -> list[str]:
    """The lines of ``source`` (a file, or ``-`` for standard input), blank ones included; a final newline
    does not start another line. Undecodable bytes are a DataError naming the line and column."""
    name = "<stdin>" if source == "-" else source
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except FileNotFoundError:
        raise DataError(name, "file not found") from None
    except OSError as exc:
        raise DataError(name, f"cannot read it ({exc.strerror or exc})") from None
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(name, "file is UTF-16 (it starts with a UTF-16 byte-order mark); re-save it as UTF-8", 1)
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for lineno, line in enumerate(lines, start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = line[exc.start:exc.start + 1].hex()
            raise DataError(name, f"not valid UTF-8 (byte 0x{byte} at column {exc.start + 1}); re-save the "
                                  "input as UTF-8", lineno) from None
        out.append(text.rstrip("\r").lstrip("\ufeff") if lineno == 1 else text.rstrip("\r"))
    return out


def _check_classifier(folder: Path, model_dir: str | Path) -> None:
    """Refuse a bare encoder (it would predict with an untrained head); warn about a meta-learner snapshot."""
    from .modeling import META_FILE

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # resolve_model has checked it; loading reports anything else
    architectures = config.get("architectures") or []
    if architectures and not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise ConfigError(f"{model_dir}: not a fine-tuned classifier (architectures: {', '.join(map(str, architectures))}"
                          "); its classification head would be untrained: give a fine-tuned folder such as "
                          "RUN/seed-42/finetune/mft/SST-2/best")
    if (folder / META_FILE).is_file():
        logger.warning("%s is a meta-learner snapshot (stage 2, trained on all domains of its group), not a "
                       "model fine-tuned on one domain; for a domain's predictions give its finetune/.../best "
                       "folder", model_dir)


def load_predictor(model_dir: str | Path, trust_remote_code: bool = False):
    from transformers import AutoModelForSequenceClassification

    from .fileio import recover_folder

    path = resolve_model(model_dir)
    if Path(path).is_dir():
        recover_folder(path)
        _check_classifier(Path(path), model_dir)
    try:
        model = from_pretrained(AutoModelForSequenceClassification, path, trust_remote_code)
    except DataError:
        raise
    except Exception as exc:  # damaged config or weights raise whatever their parser raises
        raise ConfigError(f"{model_dir}: cannot load a classifier ({' '.join(str(exc).split())[:300]})") from None
    from .evaluation import non_finite_parameters

    if bad := non_finite_parameters(model):
        raise DataError(model_dir, f"{len(bad)} weight tensor(s) hold NaN / inf (e.g. {bad[0]}): the model is "
                                   "damaged or its training diverged")
    return model.eval(), load_tokenizer(path, trust_remote_code)


def predict(texts: Iterable[str], model, tokenizer, max_length: int, batch_size: int) -> Iterator[dict]:
    """Yield ``{"text", "label", "probabilities": {label: p}}`` per text, in input order; a blank text gets
    ``"label": None``, ``"probabilities": None`` and a ``"note"``."""
    texts = list(texts)
    kept = [i for i, t in enumerate(texts) if t.strip()]
    results = dict(zip(kept, _classify([texts[i] for i in kept], model, tokenizer, max_length, batch_size)))
    for i, text in enumerate(texts):
        yield results.get(i) or {"text": text, "label": None, "probabilities": None, "note": BLANK_NOTE}


@torch.inference_mode()
def _classify(texts: list[str], model, tokenizer, max_length: int, batch_size: int) -> Iterator[dict]:
    id2label = model.config.id2label
    collate = Collator(tokenizer.pad_token_id or 0)
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
        logits = model(**inputs).logits.float()
        if not bool(torch.isfinite(logits).all()):
            raise MetaftError("the model gives non-finite outputs (NaN / inf) for these texts")
        probs = torch.softmax(logits, dim=-1)
        for text, p in zip(chunk, probs.tolist()):
            best = max(range(len(p)), key=p.__getitem__)
            yield {"text": text, "label": id2label[best],
                   "probabilities": {id2label[i]: round(v, 6) for i, v in enumerate(p)}}
