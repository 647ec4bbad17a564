"""Benchmark inputs: real texts and photos when the shared datasets are present, stand-ins otherwise.

Raw inputs only: they become tensors through :mod:`preprocess`, as in the facade. Latency depends on
input length (text tasks are padded to a length bucket), so the samples come
from the tasks' own validation data where available (``../shared/datasets``, read-only, never
copied into the repository). On a machine without it, a fixed set of sentences of varied length and
scikit-image's bundled photos are used, and the report says which.
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taskspec import TaskSpec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"

FALLBACK_TEXTS = (
    "A beautiful, moving film with a career-best performance from the lead.",
    "Two hours of my life I will never get back. The plot makes no sense and the dialogue is wooden.",
    "Forest fire near La Ronge Sask. Canada, residents asked to evacuate",
    "I love this new album, it's fire!!",
    "ok",
    "The first half drags, but the final act is tense, inventive and genuinely surprising; the score, "
    "the photography and the editing all pull in the same direction and the ending earns its emotion. "
    "I would watch it again, and I rarely say that about a thriller of this length.",
    "Flooding on the main road after the storm, several cars stuck, police are closing the bridge.",
    "Just got my coffee and the sun is out, perfect morning.",
)


@dataclass(frozen=True)
class Samples:
    """Inputs for one task and where they came from."""

    texts: tuple[str, ...] = ()
    images: tuple[bytes, ...] = ()
    source: str = ""


# The facade refuses longer texts (422); past a few hundred words a review is truncated to the
# largest length bucket anyway, so cutting here changes no model input.
MAX_CHARS = 4000


def _imdb_texts(limit: int) -> list[str]:
    path = DATASETS / "imdb" / "val.csv.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = csv.DictReader(handle)
        return [row["text"][:MAX_CHARS] for _, row in zip(range(limit), rows, strict=False)]


def _tweet_texts(limit: int) -> list[str]:
    path = DATASETS / "disaster_tweets" / "train.csv"
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    # The tail of the file: the models helper trains on a split from the head.
    return [row["text"] for row in rows[-limit:]]


def _jpeg(array: np.ndarray, longest: int = 256) -> bytes:
    from PIL import Image

    image = Image.fromarray(array).convert("RGB")
    image.thumbnail((longest, longest))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _photos(limit: int) -> tuple[list[bytes], str]:
    folder = DATASETS / "human_action" / "val"
    if folder.is_dir():
        paths = sorted(folder.glob("*/*.jpg"))[:: max(1, len(list(folder.glob("*/*.jpg"))) // limit)][:limit]
        if paths:
            return [p.read_bytes() for p in paths], f"{len(paths)} HAR validation photos"
    from skimage import data

    arrays: list[np.ndarray] = [
        data.astronaut(),  # type: ignore[no-untyped-call]
        data.coffee(),  # type: ignore[no-untyped-call]
        data.chelsea(),  # type: ignore[no-untyped-call]
        np.stack([data.camera()] * 3, axis=-1),  # type: ignore[no-untyped-call]
    ]
    return [_jpeg(a) for a in arrays], "scikit-image sample photos (HAR dataset not found)"


def load_samples(spec: TaskSpec, limit: int = 64) -> Samples:
    """Up to ``limit`` inputs for ``spec``."""
    if spec.modality == "image":
        images, source = _photos(limit)
        return Samples(images=tuple(images), source=source)
    try:
        texts = _imdb_texts(limit) if spec.task_name == "sentiment" else _tweet_texts(limit)
        return Samples(texts=tuple(texts), source=f"{len(texts)} texts from {DATASETS.name}/ ({spec.name})")
    except (OSError, KeyError):
        return Samples(texts=FALLBACK_TEXTS, source="built-in sentences (dataset not found)")
