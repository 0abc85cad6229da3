"""Reading a prepared folder (``train.tsv``, ``dev.tsv``[, ``test.tsv``]) for a training stage: the splits
(whole, or one domain's), the label set and the task name."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .config import FinetuneConfig
from .corpora import read_mft_tsv, sort_labels
from .errors import ConfigError, DataError
from .records import Example

logger = logging.getLogger(__name__)


def task_name_for(data_dir: str | Path) -> str:
    """The task a prepared folder belongs to: ``g1`` for ``.../k-shot-cross/g1/16-42``, else the folder name."""
    path = Path(data_dir).resolve()
    return path.parent.name if re.fullmatch(r"\d+-\d+", path.name) and path.parent.name else path.name


def read_split(data_dir: Path, split: str, limit: int | None, flag: str) -> list[Example]:
    """``data_dir/<split>.tsv``; with ``limit``, its first ``limit`` examples (warns if the count differs)."""
    examples = read_mft_tsv(data_dir / f"{split}.tsv")
    if limit is not None and limit != len(examples):
        logger.warning("%s has %d examples, %s asks for %d: using %d", data_dir / f"{split}.tsv",
                       len(examples), flag, limit, min(limit, len(examples)))
        examples = examples[:limit]
    if not examples:
        raise DataError(data_dir / f"{split}.tsv", "no examples")
    return examples


def label_set(data_dir: Path, train: list[Example], others: dict[str, list[Example]]) -> list[str]:
    """Sorted labels of the training set; a label that only another split has is an error."""
    labels = sort_labels({ex.label for ex in train})
    for split, examples in others.items():
        unknown = sorted({ex.label for ex in examples} - set(labels))
        if unknown:
            raise DataError(data_dir / f"{split}.tsv", f"label(s) {', '.join(map(repr, unknown))} do not occur "
                                                       f"in train.tsv (labels: {', '.join(labels)})")
    return labels


def domain_splits(cfg: FinetuneConfig, data_dir: Path) -> dict[str, list[Example]]:
    flags = {"train": ("train_limit", "--train-limit/--train_example_num"),
             "dev": ("dev_limit", "--dev-limit/--dev_example_num"),
             "test": ("test_limit", "--test-limit/--eval_example_num")}
    splits = {}
    for split in flags:
        if split == "test" and not (data_dir / "test.tsv").is_file():
            logger.warning("%s has no test.tsv: the best model is not tested", data_dir)
            continue
        splits[split] = read_mft_tsv(data_dir / f"{split}.tsv")
    domains = sorted({ex.domain for ex in splits["train"]})
    domain = cfg.domain or (domains[0] if len(domains) == 1 else None)
    if domain is None:
        raise ConfigError(f"{data_dir} holds {len(domains)} domains ({', '.join(domains)}): pick one with --domain")
    if domain not in domains:
        raise ConfigError(f"{data_dir}: no training examples of domain {domain!r} (domains: {', '.join(domains)})")
    out = {}
    for split, examples in splits.items():
        field, flag = flags[split]
        limit = getattr(cfg, field)
        examples = [ex for ex in examples if ex.domain == domain]
        if limit is not None and limit != len(examples):
            logger.warning("%s has %d examples of %s, %s asks for %d: using %d", data_dir / f"{split}.tsv",
                           len(examples), domain, flag, limit, min(limit, len(examples)))
            examples = examples[:limit]
        if not examples:
            raise DataError(data_dir / f"{split}.tsv", f"no examples of domain {domain!r}")
        out[split] = examples
    return out
