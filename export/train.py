"""Training loops: fine-tune a text encoder, or train an image head (and optionally the backbone).

Everything is seeded (Python, numpy, torch, data order), shows tqdm progress, and returns the
trained module with its training/validation metrics. Export, evaluation and publishing live in
:mod:`export.build`.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from export.data import ImageSplit, TextSplit
from export.metrics import classification_metrics
from export.models import ImageClassifier
from export.recipes import DistillRecipe, ImageRecipe, Precision, TextRecipe
from preprocess.image import normalize, read_image, read_resized, resize
from preprocess.text import TextEncoder
from taskspec import ImagePreprocessing, TextPreprocessing


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when PyTorch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but PyTorch sees no CUDA GPU")
    return torch.device(name)


def stratified_sample(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """``size`` indices keeping each class's share (all indices, shuffled, when ``size`` is None)."""
    rng = np.random.default_rng(seed)
    if size is None or size >= len(labels):
        return rng.permutation(len(labels))
    picked = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = round(size * len(members) / len(labels))
        picked.append(rng.choice(members, size=take, replace=False))
    return rng.permutation(np.concatenate(picked))


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX tiles), rather than emulating them."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``precision`` means on ``device`` (None: plain float32).

    bf16 autocast halves a training step on a GPU; on this project's 2-core build CPU (AMX) it measured
    1.6-1.8x faster per MiniLM-L6 step (16 x 128 tokens: 1.98-2.26 s -> 1.23-1.28 s) and 2x per forward pass.
    """
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


def precision_name(precision: Precision, device: torch.device) -> str:
    """What ``metrics.json`` and the model card say of the training precision."""
    return "bf16 autocast" if autocast_dtype(precision, device) is not None else "fp32"


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Autocast to ``dtype`` (:func:`autocast_dtype`, resolved once per loop) or, for None, plain float32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@dataclass
class TrainResult:
    module: nn.Module
    history: list[dict[str, float]]
    seconds: float


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar lengths: less padding per step, still a random order.

    The data is shuffled, cut into windows of 50 batches, each window sorted by length and cut
    into batches, and the batches shuffled again.
    """
    order = rng.permutation(len(lengths))
    window = batch_size * 50
    batches: list[np.ndarray] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort([lengths[i] for i in chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _linear_schedule(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def predict_text_torch(
    module: nn.Module,
    encoder: TextEncoder,
    encoded: Sequence[Sequence[int]],
    device: torch.device,
    batch_size: int = 64,
    *,
    precision: Precision = "auto",
) -> np.ndarray:
    """Logits of texts already encoded by ``encoder`` (sorted by length internally so padding stays small)."""
    module.eval()
    order = np.argsort([len(r) for r in encoded])
    logits = np.zeros((len(encoded), 0), dtype=np.float32)
    chunks: list[tuple[np.ndarray, np.ndarray]] = []
    with torch.no_grad(), _autocast(device, autocast_dtype(precision, device)):
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = encoder.pad([encoded[i] for i in index])
            ids, mask = torch.from_numpy(batch.input_ids).to(device), torch.from_numpy(batch.attention_mask).to(device)
            out = module(ids, mask).float().cpu().numpy()
            chunks.append((index, out))
    if chunks:
        logits = np.zeros((len(encoded), chunks[0][1].shape[1]), dtype=np.float32)
        for index, out in chunks:
            logits[index] = out
    return logits


def distillation_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, recipe: DistillRecipe
) -> torch.Tensor:
    """KL divergence between the teacher's and the student's softened distributions (temperature T, scaled by
    T^2 so its gradients keep their size, Hinton et al. 2015), plus ``hard_weight`` x the hard-label cross-entropy."""
    t = recipe.temperature
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(logits / t, dim=1),
        nn.functional.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    if not recipe.hard_weight:
        return soft
    hard = nn.functional.cross_entropy(logits, labels)
    return (1.0 - recipe.hard_weight) * soft + recipe.hard_weight * hard


def train_text(
    module: nn.Module,
    tokenizer_file: Path,
    preprocessing: TextPreprocessing,
    train: TextSplit,
    val: TextSplit,
    labels: Sequence[str],
    recipe: TextRecipe,
    *,
    device: torch.device,
    seed: int,
    progress: bool = True,
    max_steps: int | None = None,
    teacher_logits: np.ndarray | None = None,
    precision: Precision = "auto",
) -> TrainResult:
    """Fine-tune ``module`` (``(input_ids, attention_mask) -> logits``) on ``train``; report ``val`` each epoch.

    Texts are tokenized as served (``preprocessing``: lowercase, truncation, pad id) but cut at the
    recipe's ``max_length``, which may be shorter than the served one (faster; the model still sees
    the head of each text), and each step pads to its longest row. With ``teacher_logits`` (one row per
    training text; ``recipe`` a :class:`DistillRecipe`) the loss is :func:`distillation_loss`.
    """
    if teacher_logits is not None and (not isinstance(recipe, DistillRecipe) or len(teacher_logits) != len(train)):
        raise ValueError("teacher_logits need a DistillRecipe and one row per training text")
    seed_everything(seed)
    started = time.monotonic()
    dtype = autocast_dtype(precision, device)
    encoder = TextEncoder.from_file(tokenizer_file, preprocessing.truncated_at(recipe.max_length))
    encoded = encoder.token_ids(train.texts)
    val_encoded = encoder.token_ids(val.texts)
    module.to(device)
    frozen_layers = tuple(f"encoder.layer.{i}." for i in range(recipe.freeze_layers))
    for name, parameter in module.named_parameters():
        if (recipe.freeze_embeddings and "word_embeddings" in name) or any(f in name for f in frozen_layers):
            parameter.requires_grad_(False)
        if recipe.freeze_layers and "embeddings." in name:
            parameter.requires_grad_(False)  # below a frozen layer nothing can learn anyway
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]

    # The new head learns with a larger step than the pretrained encoder (head_lr_scale).
    def is_head(name: str) -> bool:
        return name.startswith("classifier.") or ".classifier." in name

    groups = [
        {
            "params": [p for n, p in trainable if not n.endswith(no_decay) and not is_head(n)],
            "weight_decay": recipe.weight_decay,
            "lr": recipe.lr,
        },
        {
            "params": [p for n, p in trainable if n.endswith(no_decay) and not is_head(n)],
            "weight_decay": 0.0,
            "lr": recipe.lr,
        },
        {
            "params": [p for n, p in trainable if is_head(n)],
            "weight_decay": 0.0,
            "lr": recipe.lr * recipe.head_lr_scale,
        },
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
    steps_per_epoch = math.ceil(len(encoded) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs if max_steps is None else min(max_steps, steps_per_epoch * recipe.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(total, int(total * recipe.warmup_ratio)))
    targets = torch.from_numpy(train.labels)
    soft_targets = torch.from_numpy(teacher_logits.astype(np.float32)) if teacher_logits is not None else None
    generator = np.random.default_rng(seed)
    history: list[dict[str, float]] = []
    step = 0
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress)
    for epoch in range(recipe.epochs):
        module.train()
        batches = length_grouped_batches([len(r) for r in encoded], recipe.batch_size, generator)
        seen = correct = 0
        loss_sum = 0.0
        for index in batches:
            if step >= total:
                break
            batch = encoder.pad([encoded[i] for i in index])
            y = targets[index].to(device)
            with _autocast(device, dtype):
                logits = module(
                    torch.from_numpy(batch.input_ids).to(device), torch.from_numpy(batch.attention_mask).to(device)
                )
            if soft_targets is not None:
                assert isinstance(recipe, DistillRecipe)
                loss = distillation_loss(logits.float(), soft_targets[index].to(device), y, recipe)
            else:
                loss = nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            seen += len(index)
            correct += int((logits.argmax(dim=1) == y).sum())
            loss_sum += loss.item() * len(index)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        val_logits = predict_text_torch(module, encoder, val_encoded, device, precision=precision)
        val_metrics = classification_metrics(val.labels, val_logits.argmax(axis=1), labels) if len(val) else {}
        record = {
            "epoch": float(epoch + 1),
            "train_loss": round(loss_sum / max(1, seen), 4),
            "train_accuracy": round(correct / max(1, seen), 4),
            "val_accuracy": float(val_metrics.get("accuracy", float("nan"))),
        }
        history.append(record)
        bar.write(
            f"epoch {epoch + 1}: train loss {record['train_loss']:.3f} acc {record['train_accuracy']:.3f}, "
            f"val acc {record['val_accuracy']:.3f} (n={len(val)})"
        )
        if step >= total:
            break
    bar.close()
    module.eval().cpu()
    return TrainResult(module, history, time.monotonic() - started)


class _FeatureHead(nn.Module):
    def __init__(self, dim: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(dim, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(self.dropout(features))
        return out


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    num_labels: int,
    recipe: ImageRecipe,
    *,
    seed: int,
    progress: bool = True,
    epochs: int | None = None,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """A dropout + linear head on fixed features; keeps the epoch with the best validation accuracy."""
    seed_everything(seed)
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    vx, vy = torch.from_numpy(val_features), val_labels
    head = _FeatureHead(x.shape[1], num_labels, recipe.dropout)
    optimizer = torch.optim.AdamW(head.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    epochs = recipe.epochs if epochs is None else epochs
    steps = epochs * math.ceil(len(x) / recipe.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=max(1, steps))
    generator = torch.Generator().manual_seed(seed)
    best: tuple[float, dict[str, torch.Tensor]] = (-1.0, {})
    history: list[dict[str, float]] = []
    bar = tqdm(range(epochs), desc="head", unit="epoch", disable=not progress)
    for epoch in bar:
        head.train()
        order = torch.randperm(len(x), generator=generator)
        loss_sum = 0.0
        for start in range(0, len(x), recipe.batch_size):
            index = order[start : start + recipe.batch_size]
            loss = nn.functional.cross_entropy(head(x[index]), y[index], label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(index)
        head.eval()
        with torch.no_grad():
            val_accuracy = float(np.mean(head(vx).argmax(dim=1).numpy() == vy)) if len(vy) else 0.0
        history.append({"epoch": epoch + 1, "train_loss": round(loss_sum / len(x), 4), "val_accuracy": val_accuracy})
        bar.set_postfix(loss=f"{loss_sum / len(x):.3f}", val_acc=f"{val_accuracy:.3f}")
        if val_accuracy > best[0]:
            best = (val_accuracy, {k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[1])
    linear = nn.Linear(x.shape[1], num_labels)  # the exported head: dropout is a no-op at inference
    linear.load_state_dict({"weight": best[1]["linear.weight"], "bias": best[1]["linear.bias"]})
    return linear.eval(), history


class _AugmentedImages(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """Random resized crops (scale 0.6-1) and horizontal flips between the served decode and resize/normalise."""

    def __init__(self, split: ImageSplit, image: ImagePreprocessing, seed: int, train: bool) -> None:
        self.split, self.image, self.seed, self.train = split, image, seed, train
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = int(self.split.labels[index])
        if not self.train:
            pixels = read_resized(self.split.paths[index], self.image.size)
            return torch.from_numpy(normalize(pixels, self.image)), label
        rng = random.Random(hash((self.seed, self.epoch, index)))
        rgb = read_image(self.split.paths[index])
        w, h = rgb.size
        scale = rng.uniform(0.6, 1.0)
        cw, ch = max(1, int(w * math.sqrt(scale))), max(1, int(h * math.sqrt(scale)))
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        pixels = resize(rgb.crop((left, top, left + cw, top + ch)), self.image.size)
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]  # horizontal flip
        return torch.from_numpy(normalize(pixels, self.image)), label


def finetune_image(
    model: ImageClassifier,
    train: ImageSplit,
    val: ImageSplit,
    image: ImagePreprocessing,
    recipe: ImageRecipe,
    *,
    device: torch.device,
    seed: int,
    progress: bool = True,
    max_steps: int | None = None,
    precision: Precision = "auto",
) -> list[dict[str, float]]:
    """End-to-end fine-tuning with augmentation; keeps the epoch with the best validation accuracy.

    ``max_steps`` (smoke runs) stops after that many batches, in one epoch.
    """
    seed_everything(seed)
    dtype = autocast_dtype(precision, device)
    workers = 8 if device.type == "cuda" else 2
    dataset = _AugmentedImages(train, image, seed, train=True)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=recipe.finetune_batch_size, shuffle=True, num_workers=workers,
        generator=torch.Generator().manual_seed(seed), drop_last=True,
    )  # fmt: skip
    val_loader = torch.utils.data.DataLoader(
        _AugmentedImages(val, image, seed, train=False), batch_size=64, num_workers=workers
    )
    model.to(device)
    optimizer = torch.optim.AdamW(
        [
            {"params": model.backbone.parameters(), "lr": recipe.finetune_lr},
            {"params": model.head.parameters(), "lr": recipe.finetune_lr * 10},
        ],
        weight_decay=1e-4,
    )
    epochs = recipe.finetune_epochs if max_steps is None else 1
    total = epochs * len(loader) if max_steps is None else min(max_steps, len(loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[recipe.finetune_lr, recipe.finetune_lr * 10], total_steps=max(1, total)
    )
    best: tuple[float, dict[str, torch.Tensor]] = (-1.0, {})
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        dataset.epoch = epoch
        model.train()
        loss_sum, seen = 0.0, 0
        for step, (pixels, labels) in enumerate(
            tqdm(loader, desc=f"fine-tune {epoch + 1}", unit="batch", disable=not progress)
        ):
            if step >= total:
                break
            pixels, labels = pixels.to(device), labels.to(device)
            with _autocast(device, dtype):
                logits = model(pixels)
            loss = nn.functional.cross_entropy(logits.float(), labels, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(labels)
            seen += len(labels)
        model.eval()
        correct = 0
        with torch.no_grad(), _autocast(device, dtype):
            for pixels, labels in val_loader:
                correct += int((model(pixels.to(device)).argmax(dim=1).cpu() == labels).sum())
        val_accuracy = correct / max(1, len(val))
        history.append(
            {"epoch": epoch + 1, "train_loss": round(loss_sum / max(1, seen), 4), "val_accuracy": val_accuracy}
        )
        print(f"fine-tune epoch {epoch + 1}: loss {loss_sum / max(1, seen):.3f}, val acc {val_accuracy:.3f}")
        if val_accuracy > best[0]:
            best = (val_accuracy, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    model.cpu().load_state_dict(best[1])
    model.eval()
    return history
