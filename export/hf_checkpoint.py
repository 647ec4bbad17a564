"""The trained text model as a Hugging Face checkpoint: ``save_pretrained`` of the weights and the tokenizer.

``export build`` publishes ONNX files for Triton; the benchmark's original-design baseline
(:mod:`bench.baselines`: FastAPI + an in-process ``transformers`` pipeline) needs the very same weights
in the format ``transformers`` loads. The trained module is a :class:`~export.models.MeanPoolClassifier`
(a BERT-family encoder, mean pooling, a linear head), which no built-in ``transformers`` class is, so
:class:`MeanPoolForSequenceClassification` is that module as a ``PreTrainedModel``: same parameter names,
``save_pretrained`` / ``from_pretrained``, and a ``text-classification`` pipeline runs it.

Layout, next to the model repository and ignored by git (never inside it: Triton would take the folder for
a model)::

    checkpoints/<task>/<version>/config.json          the encoder's config, labels, architecture
    checkpoints/<task>/<version>/model.safetensors
    checkpoints/<task>/<version>/tokenizer.json ...   AutoTokenizer.save_pretrained
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from export.models import MeanPoolClassifier

CHECKPOINTS_DIR = "checkpoints"
"""Folder name of the saved checkpoints, beside the model repository folder."""
ARCHITECTURE = "MeanPoolForSequenceClassification"


def checkpoints_root(repository: Path) -> Path:
    """Where ``export build`` saves the checkpoints of the models it publishes into ``repository``."""
    return repository.resolve().parent / CHECKPOINTS_DIR


def checkpoint_dir(repository: Path, task: str, version: str) -> Path:
    """The checkpoint of ``task``'s version ``version`` published into ``repository``."""
    return checkpoints_root(repository) / task / version


class MeanPoolForSequenceClassification(PreTrainedModel):  # type: ignore[no-untyped-call]
    """:class:`~export.models.MeanPoolClassifier` as a ``transformers`` model (same parameter names)."""

    base_model_prefix = "encoder"

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.encoder = AutoModel.from_config(config, add_pooling_layer=False)  # type: ignore[no-untyped-call]
        self.dropout = torch.nn.Dropout(getattr(config, "classifier_dropout", None) or 0.1)
        self.classifier = torch.nn.Linear(int(config.hidden_size), int(config.num_labels or 0))
        self.post_init()  # type: ignore[no-untyped-call]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))


def save_text_checkpoint(module: MeanPoolClassifier, tokenizer_dir: Path, labels: Sequence[str], folder: Path) -> Path:
    """Save ``module`` (trained) and the tokenizer of ``tokenizer_dir`` into ``folder``; returns ``folder``."""
    encoder: Any = module.encoder
    config = copy.deepcopy(encoder.config)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.architectures = [ARCHITECTURE]
    model = MeanPoolForSequenceClassification(config)
    model.load_state_dict(module.state_dict())
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(folder)
    return folder


def _has_config(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def is_mean_pool_checkpoint(folder: Path) -> bool:
    """``folder`` holds a checkpoint saved by :func:`save_text_checkpoint`."""
    if not _has_config(folder):
        return False
    config = AutoConfig.from_pretrained(str(folder))
    return ARCHITECTURE in (getattr(config, "architectures", None) or [])


def load_text_checkpoint(folder: Path, *, eager_attention: bool = False) -> MeanPoolForSequenceClassification:
    """The model saved by :func:`save_text_checkpoint` (eval mode, float32; ``eager_attention`` as in
    :func:`export.models.load_text_classifier`)."""
    config = AutoConfig.from_pretrained(str(folder))
    kwargs: dict[str, Any] = {"attn_implementation": "eager"} if eager_attention else {}
    model: Any = MeanPoolForSequenceClassification.from_pretrained(
        str(folder), config=config, dtype=torch.float32, **kwargs
    )
    model.eval()
    return cast(MeanPoolForSequenceClassification, model)


def load_mean_pool_classifier(folder: Path) -> MeanPoolClassifier:
    """The model saved by :func:`save_text_checkpoint` as the module ``export build`` trains and exports
    (``(input_ids, attention_mask) -> logits``, eager attention, eval mode): e.g. a teacher to distil."""
    saved = load_text_checkpoint(folder, eager_attention=True)
    module = MeanPoolClassifier(saved.encoder, int(saved.config.hidden_size), int(saved.config.num_labels or 0))
    module.classifier = saved.classifier
    return module.eval()
