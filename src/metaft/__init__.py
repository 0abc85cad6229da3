"""metaft: Meta Fine-Tuning (Wang et al., EMNLP 2020) of pretrained language models across domains."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import FinetuneConfig, MetaConfig, PrepareConfig, TypicalityConfig  # noqa: E402
from .corpora import read_mft_tsv, write_mft_tsv  # noqa: E402
from .errors import ConfigError, DataError, MetaftError  # noqa: E402
from .records import Example  # noqa: E402
from .splits import prepare  # noqa: E402

# stages that need torch load on first use, so `import metaft` and `metaft --help` stay fast
_LAZY = {"compute_typicality": "typicality", "load_scores": "typicality", "meta_finetune": "stages",
         "finetune": "stages"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "DataError",
    "Example",
    "FinetuneConfig",
    "MetaConfig",
    "MetaftError",
    "PrepareConfig",
    "TypicalityConfig",
    "compute_typicality",
    "finetune",
    "load_scores",
    "meta_finetune",
    "prepare",
    "read_mft_tsv",
    "write_mft_tsv",
]
