"""Scoring a saved classifier: the logits of a Hugging Face sequence classifier for a metaft batch, and the
test metrics of a run's best checkpoint loaded back from its folder (what the one-run path and the banks
report as a run's test result)."""

from __future__ import annotations

from pathlib import Path

import torch

from .devices import make_accelerator
from .errors import ConfigError
from .evaluation import NonFiniteError, evaluate
from .features import MODEL_INPUT_KEYS, EncodedDataset, eval_loader
from .fileio import recover_folder
from .hub import from_pretrained


def hf_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits [B, C] of a Hugging Face sequence classifier for a metaft batch."""
    return model(**{k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}).logits


def evaluate_checkpoint(best_dir: Path, test_set: EncodedDataset, cfg, labels: list[str]) -> dict:
    """Evaluate the saved best checkpoint (loaded back from its folder) on the test set."""
    from transformers import AutoModelForSequenceClassification

    recover_folder(best_dir)
    try:
        model = from_pretrained(AutoModelForSequenceClassification, best_dir, cfg.trust_remote_code)
    except (OSError, ValueError, RuntimeError) as exc:  # a damaged file is a DataError already
        raise ConfigError(f"{best_dir}: cannot load the best checkpoint ({exc})") from None
    accelerator = make_accelerator(cfg.mixed_precision)
    model = accelerator.prepare_model(model, evaluation_mode=True)  # no DDP wrapper: inference only
    loader = eval_loader(test_set, cfg.eval_batch_size, accelerator, cfg.pad_to_multiple_of, cfg.pad_to_length)
    try:
        return evaluate(model, loader, hf_logits, accelerator, labels)
    except NonFiniteError as exc:
        raise NonFiniteError(f"{best_dir}: {exc}") from None
