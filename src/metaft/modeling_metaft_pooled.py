"""A sequence classifier that pools an encoder's token states (masked mean or the first token) into a linear
layer: the head that matches sentence encoders trained with mean pooling (all-MiniLM-L6-v2).

Self-contained on purpose (torch and transformers only, no metaft import): metaft copies this file into every
saved folder of such a classifier and points ``auto_map`` in its ``config.json`` at it, so that
``transformers.pipeline("text-classification", model=FOLDER, trust_remote_code=True)`` loads the folder
without metaft installed. The config holds the encoder's own settings plus ``encoder_model_type`` and
``pooling`` (and ``normalize``: the pooled vector scaled to unit length before the linear layer, as a
sentence-transformers pipeline ending in ``Normalize`` embeds); the weights are the encoder's (prefix ``encoder.``) and ``classifier.{weight,bias}``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "metaft-pooled"
POOLINGS = ("mean", "cls")
OWN_KEYS = ("model_type", "encoder_model_type", "pooling", "normalize", "auto_map", "architectures", "transformers_version",
             "id2label", "label2id", "num_labels", "problem_type", "classifier_dropout", "dtype", "torch_dtype")


class MetaftPooledConfig(PretrainedConfig):
    """The encoder's config fields (flat) + ``encoder_model_type`` + ``pooling`` (mean | cls) + ``normalize``
    (unit-length pooled vectors; folders saved without it: False)."""

    model_type = MODEL_TYPE

    def __init__(self, encoder_model_type: str = "bert", pooling: str = "mean",
                 classifier_dropout: float | None = None, normalize: bool = False, **kwargs):
        self.encoder_model_type = encoder_model_type
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.classifier_dropout = classifier_dropout
        super().__init__(**kwargs)

    def encoder_config(self) -> PretrainedConfig:
        """The encoder's own config, rebuilt from the fields this config carries."""
        fields = {k: v for k, v in self.to_dict().items() if k not in OWN_KEYS}
        return AutoConfig.for_model(self.encoder_model_type, **fields)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens only: hidden [B, T, H], mask [B, T] -> [B, H] (sentence-transformers' mean)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class MetaftPooledForSequenceClassification(PreTrainedModel):
    """encoder -> pool (masked mean or first token) -> L2-normalise (if ``config.normalize``) -> dropout -> linear."""

    config_class = MetaftPooledConfig
    base_model_prefix = "encoder"

    def __init__(self, config: MetaftPooledConfig, encoder: nn.Module | None = None):
        super().__init__(config)
        if config.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {config.pooling!r}")
        self.encoder = encoder if encoder is not None else AutoModel.from_config(config.encoder_config())
        p = config.classifier_dropout
        if p is None:
            p = getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "classifier", None):
            nn.init.normal_(module.weight, std=getattr(self.config, "initializer_range", 0.02))
            nn.init.zeros_(module.bias)
        elif hasattr(self, "encoder") and hasattr(self.encoder, "_init_weights"):
            self.encoder._init_weights(module)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Sentence features [B, H] from the last layer's token states [B, T, H]."""
        if self.config.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        return masked_mean(hidden, attention_mask)

    def sentence_features(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """What the head's dropout and linear layer see: :meth:`pool`, unit length if ``config.normalize``
        (sentence-transformers' ``Normalize``: x / max(||x||, 1e-12))."""
        pooled = self.pool(hidden, attention_mask)
        if getattr(self.config, "normalize", False):
            pooled = nn.functional.normalize(pooled, p=2, dim=-1, eps=1e-12)
        return pooled

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        out = self.encoder(**inputs, **kwargs, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(self.sentence_features(out.last_hidden_state, attention_mask)))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
