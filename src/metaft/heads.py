"""Classification heads matched to the encoder (``head_pooling``) and how they are built, saved and loaded.

``head_pooling``:

- ``pooler``: the architecture's own Hugging Face sequence-classification head (BERT: [CLS] -> pooler dense +
  tanh -> linear); the saved folder is a plain ``AutoModelForSequenceClassification`` folder.
- ``mean`` / ``cls``: the last layer's masked token mean / first token -> dropout -> linear
  (:mod:`metaft.modeling_metaft_pooled`); the saved folder carries that file and an ``auto_map``, so
  ``pipeline("text-classification", model=DIR, trust_remote_code=True)`` loads it without metaft.
- ``auto``: the pooling the checkpoint declares (a sentence-transformers folder's ``1_Pooling/config.json``:
  all-MiniLM-L6-v2 says mean; a metaft pooled folder says its own), else ``pooler``.

``head_normalize`` (mean / cls heads only): ``on`` scales the pooled vector to unit length before dropout and
the linear layer (sentence-transformers' ``Normalize``); ``auto`` = on when the checkpoint declares it (a
``Normalize`` module in a sentence-transformers ``modules.json``: all-MiniLM-L6-v2 does; a metaft pooled folder
saved with ``normalize``), else off. The head then sees what the frozen-LR reference (:mod:`metaft.probe`) sees.

This is not the typicality stage's ``pooling`` (how stage 1 embeds texts with the bare encoder): that one has
no ``auto`` and its ``pooler`` means the pooler layer's output, not a classification head.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from torch import nn

from . import modeling_metaft_pooled as pooled
from .errors import ConfigError
from .hub import from_pretrained, resolve_model

logger = logging.getLogger(__name__)

HEAD_POOLINGS = ("auto", "mean", "cls", "pooler")
HEAD_NORMALIZE = ("auto", "on", "off")
REMOTE_FILE = Path(pooled.__file__).name
AUTO_MAP = {"AutoConfig": f"{Path(REMOTE_FILE).stem}.MetaftPooledConfig",
            "AutoModelForSequenceClassification": f"{Path(REMOTE_FILE).stem}.MetaftPooledForSequenceClassification"}
_ST_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


def register_pooled_classifier() -> None:
    """Let transformers' Auto classes load pooled folders from metaft's own copy of the code (no remote code)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    AutoConfig.register(pooled.MODEL_TYPE, pooled.MetaftPooledConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(pooled.MetaftPooledConfig,
                                                pooled.MetaftPooledForSequenceClassification, exist_ok=True)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_pooled_folder(path: str | Path) -> bool:
    config = _read_json(Path(path) / "config.json")
    return isinstance(config, dict) and config.get("model_type") == pooled.MODEL_TYPE


def declared_pooling(path: str | Path) -> str | None:
    """The sentence pooling a model folder declares: a metaft pooled folder's own, or the one of a
    sentence-transformers folder (``modules.json`` -> its Pooling module's ``config.json``) when it is mean or
    [CLS]; None otherwise (no declaration, or a pooling this head does not do, e.g. max)."""
    path = Path(path)
    if not path.is_dir():
        return None
    if is_pooled_folder(path):
        return _read_json(path / "config.json").get("pooling")
    modules = _read_json(path / "modules.json")
    folders = [m.get("path", "") for m in modules if isinstance(m, dict) and str(m.get("type", "")).endswith(
        "Pooling")] if isinstance(modules, list) else []
    st = _read_json(path / (folders[0] if folders else "1_Pooling") / "config.json")
    if not isinstance(st, dict):
        return None
    chosen = [mode for key, mode in _ST_MODES.items() if st.get(key)]
    others = [k for k, v in st.items() if k.startswith("pooling_mode_") and v and k not in _ST_MODES]
    if len(chosen) != 1 or others:
        logger.warning("%s declares a sentence pooling this head does not do (%s): head_pooling auto uses the "
                       "architecture's default head", path, ", ".join(chosen + others) or "none")
        return None
    return chosen[0]


def declared_normalize(path: str | Path) -> bool:
    """Whether a model folder declares unit-length sentence embeddings: a metaft pooled folder saved with
    ``normalize``, or a sentence-transformers folder whose ``modules.json`` lists a ``Normalize`` module."""
    path = Path(path)
    if not path.is_dir():
        return False
    if is_pooled_folder(path):
        return bool(_read_json(path / "config.json").get("normalize", False))
    modules = _read_json(path / "modules.json")
    return isinstance(modules, list) and any(isinstance(m, dict) and str(m.get("type", "")).endswith("Normalize")
                                             for m in modules)


def resolve_normalize(setting: str, pooling: str, source: str) -> bool:
    """``head_normalize`` for a head of resolved ``pooling``: on / off as asked (on needs a mean or cls head);
    ``auto`` -> what the checkpoint declares (:func:`declared_normalize`) for a mean / cls head, else off."""
    if setting not in HEAD_NORMALIZE:
        raise ConfigError(f"head_normalize must be one of {', '.join(HEAD_NORMALIZE)}, got {setting!r}")
    if pooling not in pooled.POOLINGS:
        if setting == "on":
            raise ConfigError(f"head_normalize on needs a mean or cls head; head_pooling resolves to {pooling!r} "
                              f"for {source}: pass --head-pooling mean (or cls), or --head-normalize off")
        return False
    if setting != "auto":
        return setting == "on"
    return declared_normalize(resolve_model(source))


def resolve_pooling(setting: str, source: str) -> str:
    """``auto`` -> what the checkpoint declares (see :func:`declared_pooling`), else ``pooler``."""
    if setting not in HEAD_POOLINGS:
        raise ConfigError(f"head_pooling must be one of {', '.join(HEAD_POOLINGS)}, got {setting!r}")
    if setting != "auto":
        return setting
    return declared_pooling(resolve_model(source)) or "pooler"


def pooling_of(model: nn.Module) -> str:
    """The head pooling of a built sequence classifier: mean / cls, or pooler (the architecture's own)."""
    return model.config.pooling if isinstance(model, pooled.MetaftPooledForSequenceClassification) else "pooler"


def classification_head(model: nn.Module) -> list[nn.Module]:
    """The modules of a sequence classifier outside its encoder (e.g. BERT's ``classifier``)."""
    prefix = model.base_model_prefix
    return [m for name, m in model.named_children() if name != prefix and any(True for _ in m.parameters())]


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of a sequence classifier's head (trained at ``head_learning_rate``)."""
    return [p for module in classification_head(model) for p in module.parameters()]


def _label_kwargs(labels: list[str]) -> dict:
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {lab: i for i, lab in enumerate(labels)}}


def pooled_config(encoder_config, pooling: str, labels: list[str], dropout: float | None, normalize: bool = False):
    """A :class:`MetaftPooledConfig` carrying ``encoder_config``'s fields."""
    fields = {k: v for k, v in encoder_config.to_dict().items() if k not in pooled.OWN_KEYS}
    config = pooled.MetaftPooledConfig(encoder_model_type=encoder_config.model_type, pooling=pooling,
                                       classifier_dropout=dropout, normalize=normalize, **fields,
                                       **_label_kwargs(labels))
    config.auto_map = dict(AUTO_MAP)
    return config


def build_classifier(source: str, labels: list[str], pooling: str, dropout: float | None,
                     trust_remote_code: bool = False, normalize: bool = False) -> nn.Module:
    """A sequence classifier with a ``pooling`` head (mean | cls | pooler; resolved, not auto) on the encoder
    of ``source``: a pretrained checkpoint, a plain classifier folder or a pooled one; ``normalize`` (resolved,
    mean / cls only): unit-length pooled vectors. A head of the same kind and label count is loaded from the
    folder when it has one (the caller re-initialises it unless kept)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    path = resolve_model(source)
    kwargs = _label_kwargs(labels)
    if normalize and pooling not in pooled.POOLINGS:
        raise ConfigError(f"head_normalize on needs a mean or cls head, not {pooling!r}")
    try:
        if pooling == "pooler":
            if not is_pooled_folder(path):
                # a config without the setting (MPNet's) would pass it on to the model class, which refuses it
                if dropout is not None and hasattr(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code),
                                                   "classifier_dropout"):
                    kwargs["classifier_dropout"] = dropout
                return from_pretrained(AutoModelForSequenceClassification, path, trust_remote_code,
                                       ignore_mismatched_sizes=True, **kwargs)
            encoder = from_pretrained(pooled.MetaftPooledForSequenceClassification, path).encoder
            config = encoder.config
            config.update({**kwargs, "classifier_dropout": dropout})
            model = AutoModelForSequenceClassification.from_config(config)
            model.base_model.load_state_dict(encoder.state_dict())
            return model
        if pooling not in pooled.POOLINGS:
            raise ConfigError(f"head_pooling must be one of {', '.join(HEAD_POOLINGS)}, got {pooling!r}")
        if is_pooled_folder(path):
            model = from_pretrained(pooled.MetaftPooledForSequenceClassification, path,
                                    ignore_mismatched_sizes=True, **kwargs)
            model.config.pooling, model.config.normalize = pooling, bool(normalize)
            if dropout is not None:
                model.config.classifier_dropout = dropout
                model.dropout.p = dropout
            return model
        encoder = from_pretrained(AutoModel, path, trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{source}: cannot load model ({exc})") from None
    config = pooled_config(encoder.config, pooling, labels, dropout, normalize)
    return pooled.MetaftPooledForSequenceClassification(config, encoder=encoder)


def save_classifier(model: nn.Module, folder: str | Path) -> None:
    """``save_pretrained`` (safetensors); a pooled classifier also gets its code file and ``auto_map``."""
    folder = Path(folder)
    if isinstance(model, pooled.MetaftPooledForSequenceClassification):
        model.config.auto_map = dict(AUTO_MAP)
        model.save_pretrained(folder, safe_serialization=True)
        shutil.copyfile(pooled.__file__, folder / REMOTE_FILE)
    else:
        model.save_pretrained(folder, safe_serialization=True)


register_pooled_classifier()
