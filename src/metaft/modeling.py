"""The meta-learner: a standard HF sequence classifier plus a domain head, saved as HF folders.

Folder layout of a meta-learner (a normal ``AutoModelForSequenceClassification`` folder plus two files):
``config.json``, ``model.safetensors``, tokenizer files, ``domain_head.safetensors`` and
``metaft_meta.json`` (domains, corruption layers, domain-loss kind, whether the domain head adds a
domain embedding, and the corruption it was trained with; older folders lack the last two keys).
Any HF tool can load the classifier; loading never unpickles.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ConfigError, DataError
from .evaluation import non_finite_parameters
from .features import MODEL_INPUT_KEYS
from .fileio import recover_folder
from .heads import (
    build_classifier,
    classification_head,
    declared_normalize,
    is_pooled_folder,
    save_classifier,
)
from .hub import from_pretrained, resolve_model
from .losses import grad_reverse
from .pooling import masked_mean

logger = logging.getLogger(__name__)

META_FILE = "metaft_meta.json"
DOMAIN_HEAD_FILE = "domain_head.safetensors"


def default_domain_layers(num_layers: int) -> tuple[int, ...]:
    """Four evenly spaced 0-based encoder layers ending at the last one.

    Layer = floor(L * (j + 1) / 4 + 1/2) - 1 for j = 0..3 (halves round up): 12 layers -> (2, 5, 8, 11)
    as in the reference code; 6 layers -> (1, 2, 4, 5); 4 or fewer layers -> all of them.
    """
    if num_layers <= 4:
        return tuple(range(num_layers))
    return tuple(sorted({math.floor(num_layers * (j + 1) / 4 + 0.5) - 1 for j in range(4)}))


@dataclass
class MetaOutput:
    """logits [B, C]; domain_logits [L, B, K] (one row per corruption layer) or None."""

    logits: torch.Tensor
    domain_logits: torch.Tensor | None = None


class DomainHead(nn.Module):
    """Learned domain embedding e [K, H] and one domain classifier shared across the selected layers.

    z_l(x) = W_d (h_l(x) + e[d(x)]) + b_d with h_l the masked token mean of layer l (the reference code's
    head). The embedding gives the head the true domain, so it can fit the corruption target without the
    encoder; ``use_embedding=False`` (``domain_embedding`` off) drops it, leaving z_l(x) = W_d h_l(x) + b_d.
    With gradient reversal (the DANN ablation) it is never added, since it would give the true domain away.
    """

    def __init__(self, num_domains: int, hidden_size: int, layers: tuple[int, ...], use_embedding: bool = True):
        super().__init__()
        self.layers = tuple(layers)
        self.embedding = nn.Embedding(num_domains, hidden_size) if use_embedding else None
        self.classifier = nn.Linear(hidden_size, num_domains)
        if self.embedding is not None:
            nn.init.normal_(self.embedding.weight, std=0.02)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, hidden_states: tuple[torch.Tensor, ...], mask: torch.Tensor, domains: torch.Tensor,
                grl_coeff: float | None = None) -> torch.Tensor:
        """hidden_states: embeddings + one [B, T, H] per layer; mask [B, T]; domains [B] -> [L, B, K]."""
        out = []
        for layer in self.layers:
            h = masked_mean(hidden_states[layer + 1], mask)  # [B, H]; index 0 is the embedding output
            if grl_coeff is not None:
                h = grad_reverse(h, grl_coeff)
            if self.embedding is not None:
                h = h + self.embedding(domains)
            out.append(self.classifier(h))
        return torch.stack(out)


class MetaLearner(nn.Module):
    """``classifier`` (any HF AutoModelForSequenceClassification) + optional :class:`DomainHead`."""

    def __init__(self, classifier: nn.Module, domains: list[str], domain_head: DomainHead | None,
                 domain_loss: str, corruption: str | None = None):
        super().__init__()
        self.classifier = classifier
        self.domains = list(domains)
        self.domain_head = domain_head
        self.domain_loss = domain_loss
        self.corruption = corruption  # recorded in metaft_meta.json; the loss takes it from the config

    @classmethod
    def build(cls, model_name_or_path: str, labels: list[str], domains: list[str], *, domain_loss: str = "corrupt",
              domain_layers: tuple[int, ...] = (), dropout: float = 0.1, pooling: str = "pooler",
              trust_remote_code: bool = False, domain_embedding: bool = True,
              corruption: str = "permute", normalize: bool = False) -> MetaLearner:
        """``pooling``: the classification head (mean | cls | pooler, see :mod:`metaft.heads`), resolved;
        ``normalize``: its pooled vector at unit length (mean / cls), resolved."""
        classifier = build_classifier(model_name_or_path, labels, pooling, dropout, trust_remote_code, normalize)
        check_finite(classifier, model_name_or_path)
        if dropout is not None:
            set_head_dropout(classifier, dropout)
        head = None
        if domain_loss != "none":
            n_layers = classifier.config.num_hidden_layers
            layers = tuple(domain_layers) or default_domain_layers(n_layers)
            bad = [i for i in layers if not 0 <= i < n_layers]
            if bad:
                raise ConfigError(f"domain layers {bad} out of range: the model has layers 0..{n_layers - 1}")
            head = DomainHead(len(domains), classifier.config.hidden_size, layers,
                              use_embedding=domain_loss == "corrupt" and domain_embedding)
        return cls(classifier, domains, head, domain_loss, corruption if domain_loss == "corrupt" else None)

    def forward(self, batch: dict[str, torch.Tensor], grl_coeff: float = 0.0) -> MetaOutput:
        """Class logits always; domain logits in training mode only (they feed the loss, not evaluation)."""
        inputs = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}
        need_hidden = self.domain_head is not None and self.training  # evaluation needs logits only
        out = self.classifier(**inputs, output_hidden_states=need_hidden, return_dict=True)
        domain_logits = None
        if need_hidden:
            coeff = grl_coeff if self.domain_loss == "grl" else None
            domain_logits = self.domain_head(out.hidden_states, batch["attention_mask"], batch["domains"], coeff)
        return MetaOutput(out.logits, domain_logits)

    def save(self, folder: str | Path, tokenizer=None) -> None:
        folder = Path(folder)
        save_classifier(self.classifier, folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        meta = {"domains": self.domains, "domain_loss": self.domain_loss, "layers": None,
                "corruption": self.corruption, "domain_embedding": False}
        if self.domain_head is not None:
            meta["domain_embedding"] = self.domain_head.embedding is not None
            save_file({k: v.detach().cpu().contiguous() for k, v in self.domain_head.state_dict().items()},
                      str(folder / DOMAIN_HEAD_FILE))
            meta["layers"] = list(self.domain_head.layers)
        (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path, trust_remote_code: bool = False) -> MetaLearner:
        """Load a saved meta-learner (classifier + domain head) from its folder."""
        folder = Path(folder)
        recover_folder(folder)
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            layers, domains, domain_loss = meta["layers"], list(meta["domains"]), str(meta["domain_loss"])
        except Exception as exc:  # missing, not JSON, not the expected object
            raise DataError(folder / META_FILE, f"not a readable meta-learner description ({exc!r})") from None
        classifier = _load_sequence_classifier(str(folder), folder_labels(folder), None, trust_remote_code)
        head = None
        if layers is not None:
            # folders written before domain_embedding existed: the embedding was there exactly with corrupt
            embedding = meta.get("domain_embedding", domain_loss == "corrupt")
            try:
                head = DomainHead(len(domains), classifier.config.hidden_size, tuple(layers),
                                  use_embedding=bool(embedding))
                head.load_state_dict(load_file(str(folder / DOMAIN_HEAD_FILE)))
            except Exception as exc:  # SafetensorError, missing or mismatched tensors
                raise DataError(folder / DOMAIN_HEAD_FILE, f"damaged domain head ({exc!r:.200})") from None
        corruption = meta.get("corruption", "permute" if domain_loss == "corrupt" else None)
        return cls(classifier, domains, head, domain_loss, corruption)


def folder_labels(folder: str | Path) -> list[str]:
    """The label strings of a saved classifier, in id order."""
    path = Path(folder) / "config.json"
    try:
        id2label = json.loads(path.read_text(encoding="utf-8")).get("id2label") or {}
        return [str(id2label[k]) for k in sorted(id2label, key=int)]
    except Exception as exc:  # unreadable, not JSON, keys that are not numbers
        raise DataError(path, f"no readable id2label ({exc!r:.200})") from None


def check_finite(model: nn.Module, source: str) -> None:
    """Refuse a start model with NaN / inf weights: a run from it would stop at a NaN loss, blaming the learning
    rate."""
    if bad := non_finite_parameters(model):
        raise DataError(source, f"{len(bad)} weight tensor(s) hold NaN / inf (e.g. {bad[0]}): the model is "
                                "damaged or its training diverged")


def _load_sequence_classifier(source: str, labels: list[str], dropout: float | None, trust_remote_code: bool,
                              ignore_mismatched_sizes: bool = False):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model(source)
    kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
              "label2id": {lab: i for i, lab in enumerate(labels)}}
    try:
        # a config without the setting (MPNet's) would pass it on to the model class, which refuses it
        if dropout is not None and hasattr(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code),
                                           "classifier_dropout"):
            kwargs["classifier_dropout"] = dropout
        model = from_pretrained(AutoModelForSequenceClassification, path, trust_remote_code,
                                ignore_mismatched_sizes=ignore_mismatched_sizes, **kwargs)
    except DataError:
        raise
    except Exception as exc:  # damaged weights or config raise whatever their parser raises
        raise ConfigError(f"{source}: cannot load model ({' '.join(str(exc).split())[:300]})") from None
    check_finite(model, source)
    if dropout is not None:
        set_head_dropout(model, dropout)
    return model


def set_head_dropout(model: nn.Module, p: float) -> None:
    """Dropout ``p`` inside the classification head too: some heads (MPNet's) ignore ``classifier_dropout``
    and use ``hidden_dropout_prob``; BERT's head dropout sits outside it and already follows the config."""
    for head in classification_head(model):
        for m in head.modules():
            if isinstance(m, nn.Dropout):
                m.p = p


def reinit_head(model: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise the classification head like BERT does (normal(0, initializer_range), zero bias)."""
    std = getattr(model.config, "initializer_range", 0.02)
    for head in classification_head(model):
        for m in head.modules():
            if isinstance(m, nn.Linear):
                with torch.no_grad():
                    m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * std)
                    if m.bias is not None:
                        m.bias.zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def load_classifier(source: str, labels: list[str], *, head: str = "reinit", dropout: float = 0.1, seed: int = 0,
                    pooling: str = "pooler", trust_remote_code: bool = False, normalize: bool = False):
    """Stage-3 model: from a meta-learner folder or any pretrained checkpoint, with a ``pooling`` head
    (mean | cls | pooler; see :mod:`metaft.heads`), its pooled vector at unit length if ``normalize``.

    ``head='reinit'`` (and ``'probe'``, whose fitting comes later) starts a fresh classification head (seeded);
    ``'keep'`` keeps the meta-learner's head and requires the same label set in the same order and the same
    head pooling and normalisation.
    """
    path = Path(resolve_model(source))
    if path.is_dir():
        recover_folder(path)
    has_head = path.is_dir() and (path / META_FILE).is_file()
    if head == "keep":
        if not has_head:
            raise ConfigError(f"{source}: --head keep needs a meta-learner folder (no {META_FILE} there)")
        saved = folder_labels(path)
        if saved != list(labels):
            raise ConfigError(f"{source}: --head keep needs labels {saved}, this domain has {list(labels)}")
        saved_pooling = "pooler" if not is_pooled_folder(path) else json.loads(
            (path / "config.json").read_text(encoding="utf-8")).get("pooling")
        if saved_pooling != pooling:
            raise ConfigError(f"{source}: --head keep needs the meta-learner's head pooling ({saved_pooling}); this "
                              f"run asks for {pooling}: pass --head-pooling {saved_pooling} or a fresh head")
        if declared_normalize(path) != normalize:
            saved_normalize = "on" if declared_normalize(path) else "off"
            raise ConfigError(f"{source}: --head keep needs the meta-learner's head normalisation "
                              f"(head_normalize {saved_normalize}): pass --head-normalize {saved_normalize} or a "
                              "fresh head")
    model = build_classifier(str(path), labels, pooling, dropout, trust_remote_code, normalize)
    check_finite(model, source)
    if dropout is not None:
        set_head_dropout(model, dropout)
    if head != "keep":
        reinit_head(model, torch.Generator().manual_seed(seed))
    return model


