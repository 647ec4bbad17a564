"""The PyTorch modules that are exported: each is called as ``module(**inputs) -> logits``.

The call signature matches the task spec's tensor names, so ONNX export names the graph's inputs
and output after the spec and the facade feeds them by name.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn


class TextClassifier(nn.Module):
    """A Hugging Face sequence-classification model reduced to ``(input_ids, attention_mask) -> logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits


class MeanPoolClassifier(nn.Module):
    """A BERT-family encoder, mean-pooled over the attention mask, and a linear head.

    Mean pooling is how sentence encoders such as all-MiniLM-L6-v2 were trained (their [CLS]
    pooler is not), so fine-tuning starts from features that already separate the classes.
    Padding does not change the pooled vector: masked positions are left out of the mean.
    """

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits: torch.Tensor = self.classifier(self.dropout(pooled))
        return logits


def load_text_classifier(
    checkpoint: str | Path, num_labels: int, *, eager_attention: bool = True
) -> MeanPoolClassifier:
    """A BERT-family encoder from a local folder or hub id with a fresh, mean-pooled ``num_labels`` head.

    Eager attention keeps the attention mask an explicit part of the traced graph (the SDPA path
    may skip the mask for unpadded batches, which a tracer would bake in).
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    # The "pooler.* UNEXPECTED/MISSING" load report is noise: the pooler is not used.
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    # float32 master weights whatever the checkpoint's storage dtype (a half-precision copy trains badly).
    kwargs: dict[str, object] = {"dtype": torch.float32, "add_pooling_layer": False}
    if eager_attention:
        kwargs["attn_implementation"] = "eager"
    encoder = AutoModel.from_pretrained(str(checkpoint), **kwargs)
    return MeanPoolClassifier(encoder, int(encoder.config.hidden_size), num_labels)


def make_student(teacher: MeanPoolClassifier, layers: Sequence[int]) -> MeanPoolClassifier:
    """A copy of ``teacher`` that keeps only the encoder ``layers`` (bottom first; embeddings and head copied too).

    The kept layers are the teacher's trained ones, so the student starts from what the teacher learnt
    (layer selection, as in DistilBERT and Sanh et al.'s "every other layer" initialisation).
    """
    encoder: Any = teacher.encoder
    blocks = encoder.encoder.layer
    if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= len(blocks):
        raise ValueError(f"layers {tuple(layers)} are not distinct ascending layers of a {len(blocks)}-layer encoder")
    student = copy.deepcopy(teacher)
    student_encoder: Any = student.encoder
    student_encoder.encoder.layer = nn.ModuleList([student_encoder.encoder.layer[i] for i in layers])
    student_encoder.config.num_hidden_layers = len(layers)
    return student.eval()


def tiny_bert(num_labels: int, vocab_size: int = 30522, *, seed: int = 0) -> TextClassifier:
    """A 2-layer, 32-wide random BERT (tests: the real export path in well under a second)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    config.num_labels = num_labels
    config._attn_implementation = "eager"
    model: nn.Module = BertForSequenceClassification(config)
    return TextClassifier(model).eval()


def tiny_mean_pool_bert(
    num_labels: int, *, layers: int = 3, vocab_size: int = 30522, seed: int = 0
) -> MeanPoolClassifier:
    """A ``layers``-layer, 32-wide random BERT in the trained models' shape (:class:`MeanPoolClassifier`): a teacher
    for tests of the distillation path (:func:`make_student`) in well under a second."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    config._attn_implementation = "eager"
    encoder = BertModel(config, add_pooling_layer=False)
    return MeanPoolClassifier(encoder, config.hidden_size, num_labels).eval()


class TinyCNN(nn.Module):
    """A small random CNN on ``pixel_values`` (N, 3, H, W) for tests."""

    def __init__(self, num_labels: int, *, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=3, stride=4, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, kernel_size=3, stride=4, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(16, num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.features(pixel_values))
        return logits


class ImageClassifier(nn.Module):
    """A pretrained backbone (pooled features) followed by a trained linear head, exported as one graph."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.backbone(pixel_values))
        return logits


class EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite: ``pixel_values`` ((x - 127) / 128, 224x224) -> pooled 1280-d features."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.net.extract_features(pixel_values)  # type: ignore[operator]
        return torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1)


class FlipAveraged(nn.Module):
    """Test-time augmentation inside the exported graph: the mean of ``model``'s logits on x and on x mirrored.

    The image and its horizontal mirror go through ``model`` as one batch of 2N, so every serving path
    (Triton, the facade, batch jobs) gets the average without a second copy of the preprocessing. It
    costs twice the backbone compute per image.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        both = torch.cat([pixel_values, torch.flip(pixel_values, dims=[3])], dim=0)
        logits: torch.Tensor = self.model(both)
        plain, mirrored = logits.chunk(2, dim=0)
        return (plain + mirrored) / 2
