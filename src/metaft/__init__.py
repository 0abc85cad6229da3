"""metaft: Meta Fine-Tuning (Wang et al., EMNLP 2020) of pretrained language models across domains."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import FinetuneConfig, MetaConfig, PrepareConfig, TypicalityConfig  # noqa: E402
from .corpora import Example, read_mft_tsv, write_mft_tsv  # noqa: E402
from .errors import ConfigError, DataError, MetaftError  # noqa: E402

__all__ = [
    "ConfigError",
    "DataError",
    "Example",
    "FinetuneConfig",
    "MetaConfig",
    "MetaftError",
    "PrepareConfig",
    "TypicalityConfig",
    "read_mft_tsv",
    "write_mft_tsv",
]
