"""The training recipes of the two profiles, per task (which task uses which: :mod:`export.registry`).

``quick`` is what ``make run`` builds when the repository is empty (a subset of IMDB at 128 tokens,
one epoch of the tweets, a linear head on frozen EfficientNet-Lite0 features, the two students): issue
13 bounds it at 10 minutes on an idle 2-core CPU. How long it takes depends on the CPU: 4 min 43 s on a
2-core AMD EPYC with AVX512-BF16, 14 min 9 s on a 2-core Intel with AMX (both bf16 training;
:data:`QUICK_BUILD_SECONDS`, docs/models.md).
``full`` is the best recipe, meant for a GPU (every example, longer sequences, more epochs,
end-to-end fine-tuning of the image backbone) and runnable, slowly, on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Profile = Literal["quick", "full"]
PROFILES: tuple[Profile, ...] = ("quick", "full")

QUICK_BUILD_SECONDS: dict[str, tuple[int, int]] = {
    "sentiment": (90, 294),
    "disaster": (34, 102),
    "pose": (58, 179),
    "sentiment_tiny": (72, 198),
    "disaster_tiny": (24, 65),
}
"""Seconds each built-in task's quick build took on an idle 2-core CPU, cold feature cache, bf16 training
(``/usr/bin/time -v python -m export build --profile quick``): the faster of two machines measured (AMD EPYC with
AVX512-BF16, 2026-12-02 08:59-09:04 UTC, 4 min 43 s in all), then the slower (Intel with AMX, 01:48-02:02 UTC,
14 min 9 s). What ``make run`` says before it builds the missing models."""


def _minutes(seconds: int) -> int:
    return max(1, round(seconds / 60))


def quick_build_estimate(tasks: list[str]) -> str:
    """``about N-M minutes`` for building ``tasks`` with the quick profile, from :data:`QUICK_BUILD_SECONDS`."""
    known = [QUICK_BUILD_SECONDS[task] for task in tasks if task in QUICK_BUILD_SECONDS]
    unmeasured = [task for task in tasks if task not in QUICK_BUILD_SECONDS]
    text = ""
    if known:
        fast, slow = _minutes(sum(f for f, _ in known)), _minutes(sum(s for _, s in known))
        span = str(fast) if fast == slow else f"{fast}-{slow}"
        text = f"about {span} minute{'s' if slow != 1 else ''} on an idle 2-core CPU"
    if unmeasured:
        text += (" plus " if text else "") + f"{', '.join(unmeasured)} (not measured)"
    return text


Precision = Literal["auto", "fp32", "bf16"]
"""How PyTorch computes while training (and its training-time predictions: validation, a teacher's logits).

``bf16``: autocast to bfloat16 (weights, optimizer and loss stay float32; bf16 needs no loss scaling).
``auto``: bf16 on a CUDA GPU and on a CPU that multiplies bf16 natively (AVX512-BF16 or AMX), else fp32
(:func:`export.train.autocast_dtype`). The exported model and every acceptance check are float32 either way.
"""
PRECISIONS: tuple[Precision, ...] = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TextRecipe:
    """Fine-tuning a BERT-family encoder with a fresh classification head."""

    train_size: int | None
    """Examples drawn (stratified, seeded) from the training split; None takes all of them."""
    val_size: int
    """Examples of the training split held out to report validation accuracy (never trained on)."""
    max_length: int
    """Training sequence length (tokens); serving truncates to the spec's own maximum."""
    batch_size: int
    epochs: int
    lr: float
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    head_lr_scale: float = 20.0
    """The fresh classification head's learning rate is ``lr * head_lr_scale``."""
    freeze_embeddings: bool = True
    """Frozen word embeddings: 5x cheaper steps on a CPU, and no drift of rare-token vectors."""
    freeze_layers: int = 0
    """Lowest encoder layers kept frozen: backpropagation stops above them (cheaper steps on a CPU)."""
    test_size: int | None = None
    """Stratified sample of the held-out test split to report (None: all of it)."""

    def summary(self) -> str:
        size = "all" if self.train_size is None else str(self.train_size)
        return (
            f"fine-tune on {size} training examples, {self.epochs} epoch(s), max length {self.max_length}, "
            f"batch {self.batch_size}, mean pooling, AdamW lr {self.lr:g} (head x{self.head_lr_scale:g}; "
            f"linear warm-up {self.warmup_ratio:.0%} and decay), "
            f"weight decay {self.weight_decay:g}"
            + (", frozen word embeddings" if self.freeze_embeddings else "")
            + (f", lowest {self.freeze_layers} encoder layers frozen" if self.freeze_layers else "")
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class DistillRecipe(TextRecipe):
    """A smaller student distilled from its parent task's trained model (the teacher).

    The student is the teacher with only ``layers`` of its encoder kept (embeddings and head copied too), so
    it starts from what the teacher learnt; it is then trained on the teacher's logits for the training texts
    (computed once, in eval mode), and on the hard labels with weight ``hard_weight``.
    """

    layers: tuple[int, ...] = (0, 2, 5)
    """Teacher encoder layers the student keeps, bottom first."""
    temperature: float = 2.0
    """Softmax temperature of the distillation loss (KL divergence of the softened distributions, times T^2)."""
    hard_weight: float = 0.0
    """Weight of the cross-entropy on the hard labels; the distillation loss gets ``1 - hard_weight``."""

    def summary(self) -> str:
        hard = f" + {self.hard_weight:g} x hard-label cross-entropy" if self.hard_weight else ""
        return (
            f"student: layers {', '.join(map(str, self.layers))} of the teacher's encoder (its embeddings and head "
            f"too), distilled on the teacher's logits (KL at temperature {self.temperature:g}{hard}); "
            + super().summary()
        )


@dataclass(frozen=True)
class ImageRecipe:
    """A linear head on frozen backbone features, optionally followed by end-to-end fine-tuning."""

    val_fraction: float
    """Share of the training images held out to pick the best epoch."""
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    label_smoothing: float
    dropout: float
    flip_features: bool = False
    """Train the head on the features of every training image and of its mirror image (twice the extraction)."""
    tta_flip: bool = False
    """Serve the mean of the logits of each image and its mirror image: the exported graph does it
    (:class:`export.models.FlipAveraged`), at twice the compute per served image."""
    finetune_epochs: int = 0
    """Epochs of end-to-end fine-tuning (random crops and flips) after the head; 0 keeps the backbone frozen."""
    finetune_lr: float = 1e-4
    finetune_batch_size: int = 64
    test_size: int | None = None

    def summary(self) -> str:
        text = (
            f"linear head on frozen EfficientNet-Lite0 features: {self.epochs} epochs, batch {self.batch_size}, "
            f"AdamW lr {self.lr:g}, weight decay {self.weight_decay:g}, label smoothing {self.label_smoothing:g}, "
            f"dropout {self.dropout:g}; best epoch on a {self.val_fraction:.0%} validation split"
        )
        if self.flip_features:
            text += "; trained on each image and its mirror image"
        if self.finetune_epochs:
            text += (
                f"; then {self.finetune_epochs} epochs end to end (random resized crops, flips), "
                f"lr {self.finetune_lr:g}, batch {self.finetune_batch_size}"
            )
        if self.tta_flip:
            text += "; served as the mean of the logits of the image and its mirror image"
        return text

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


Recipe = TextRecipe | DistillRecipe | ImageRecipe

TaskRecipes = dict[Profile, Recipe]
"""One task's recipe per profile."""

SENTIMENT_RECIPES: TaskRecipes = {
    "quick": TextRecipe(
        train_size=2500,
        val_size=200,
        max_length=128,
        batch_size=16,
        epochs=1,
        lr=8e-5,
        freeze_layers=2,
        test_size=600,
    ),
    "full": TextRecipe(train_size=None, val_size=1000, max_length=256, batch_size=32, epochs=2, lr=4e-5),
}
DISASTER_RECIPES: TaskRecipes = {
    "quick": TextRecipe(train_size=3000, val_size=300, max_length=48, batch_size=32, epochs=1, lr=8e-5),
    "full": TextRecipe(train_size=None, val_size=400, max_length=64, batch_size=32, epochs=3, lr=4e-5),
}
SENTIMENT_TINY_RECIPES: TaskRecipes = {
    # hard_weight 0.5: int8 student 85.80 % vs 84.70 % with the teacher's logits alone, on all 5,000 held-out reviews
    # (docs/models.md, "Alternatives to the student recipe"); the tweets' student gained nothing from it.
    "quick": DistillRecipe(
        train_size=2500, val_size=200, max_length=128, batch_size=16, epochs=1, lr=1e-4, test_size=600, hard_weight=0.5
    ),
    "full": DistillRecipe(train_size=None, val_size=1000, max_length=256, batch_size=32, epochs=2, lr=1e-4),
}
DISASTER_TINY_RECIPES: TaskRecipes = {
    "quick": DistillRecipe(train_size=3000, val_size=300, max_length=48, batch_size=32, epochs=1, lr=1e-4),
    "full": DistillRecipe(train_size=None, val_size=400, max_length=64, batch_size=32, epochs=3, lr=1e-4),
}
POSE_RECIPES: TaskRecipes = {
    "quick": ImageRecipe(
        val_fraction=0.1, epochs=30, batch_size=128, lr=1e-3, weight_decay=1e-4, label_smoothing=0.1, dropout=0.2
    ),
    "full": ImageRecipe(
        val_fraction=0.1,
        epochs=30,
        batch_size=128,
        lr=1e-3,
        weight_decay=1e-4,
        label_smoothing=0.1,
        dropout=0.2,
        finetune_epochs=8,
        finetune_lr=2e-4,
    ),
}
