"""Dataset loaders: the labelled data of a task, from the shared offline folder or from the Hugging Face hub.

Which loader a task uses is declared in its registry entry (:mod:`export.registry`); the loaders here
know a dataset layout, not task names. Built-in layouts (``../shared/datasets`` relative to the project
root by default; override with ``--data-dir`` or ``MTC_DATA_DIR``), see that folder's README:

- ``imdb/train.csv.gz`` (train) and ``imdb/val.csv.gz`` (held-out test): ``label`` pos/neg, ``text``;
- ``disaster_tweets/train.csv``: ``text``, ``target``; a fixed, stratified 20 % is held out as test;
- ``human_action/{train,val}/<class>/*.jpg``: ``val`` is the held-out test; ``train_extra/<class>/`` (when
  present) adds training photos.

Nothing is tuned on the test parts: the recipes are fixed per profile, and the test split is only
used for the accuracy reported in the model card.

On a machine with network, ``source="hub"`` reads the public copies with the ``datasets`` package
(``pip install datasets``): IMDB ``stanfordnlp/imdb`` (its test split as test), the disaster tweets
and HAR from :data:`TWEETS_HUB_ID` and :data:`HAR_HUB_ID` (override with ``MTC_HUB_<TASK>``).

A loader is ``(spec, folder) -> Dataset``: ``folder`` is the datasets folder for local loaders and a
cache folder for hub loaders. Labels are indices in ``spec.labels``' order.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from export.errors import DatasetError
from taskspec import TaskSpec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV = "MTC_DATA_DIR"
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "datasets"
DataSource = Literal["local", "hub"]

IMDB_HUB_ID = "stanfordnlp/imdb"
TWEETS_HUB_ID = "tweet-disaster/nlp-getting-started"
HAR_HUB_ID = "Bingsu/Human_Action_Recognition"
TWEETS_TEST_FRACTION = 0.2
HAR_EXTRA = "train_extra"
"""Optional folder of more HAR training photos next to ``train/`` (same layout)."""
SPLIT_SEED = 20240611  # fixed forever: the held-out tweets never change between builds


def resolve_data_dir(data_dir: Path | str | None = None) -> Path:
    """``data_dir``, else ``$MTC_DATA_DIR``, else ``../shared/datasets`` next to the project."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()


@dataclass(frozen=True)
class TextSplit:
    texts: list[str]
    labels: np.ndarray  # int64 class indices in the task's label order

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, indices: Sequence[int] | np.ndarray) -> TextSplit:
        return TextSplit([self.texts[i] for i in indices], self.labels[np.asarray(indices, dtype=np.int64)])


@dataclass(frozen=True)
class ImageSplit:
    paths: list[Path]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, indices: Sequence[int] | np.ndarray) -> ImageSplit:
        return ImageSplit([self.paths[i] for i in indices], self.labels[np.asarray(indices, dtype=np.int64)])


Split = TextSplit | ImageSplit


@dataclass(frozen=True)
class Dataset:
    """A task's training data and its held-out test data."""

    task: str
    train: Any  # TextSplit | ImageSplit
    test: Any
    description: str


DatasetLoader = Callable[[TaskSpec, Path], Dataset]
"""``(spec, folder) -> Dataset``: the datasets folder (local loaders) or a cache folder (hub loaders)."""


def _require(path: Path, task: str) -> Path:
    if not path.exists():
        raise DatasetError(
            f"dataset for {task} not found: {path} is missing "
            f"(set --data-dir or {DATA_DIR_ENV} to the folder holding imdb/, disaster_tweets/, human_action/)"
        )
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
                return list(csv.DictReader(handle))
        with path.open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a train/test split that keeps each class's share (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rng.shuffle(members)
        n_test = round(len(members) * test_fraction)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _label_index(spec: TaskSpec, mapping: dict[str, str]) -> dict[str, int]:
    """Raw label value -> index in ``spec.labels`` (``mapping``: raw value -> label name)."""
    return {raw: spec.labels.index(name) for raw, name in mapping.items() if name in spec.labels}


def _text_rows(path: Path, spec: TaskSpec, text: str, label: str, values: dict[str, str]) -> TextSplit:
    """A CSV's ``text`` column, labelled by its ``label`` column (raw value -> label name in ``values``)."""
    rows = _read_csv(path)
    index = _label_index(spec, values)
    try:
        labels = np.array([index[row[label].strip().lower()] for row in rows], dtype=np.int64)
        texts = [row[text] for row in rows]
    except KeyError as exc:
        known = ", ".join(sorted(values))
        raise DatasetError(f"{path}: expected columns {text} and {label} ({known}); bad value or column {exc}") from exc
    return TextSplit(texts, labels)


_IMDB_LABELS = {"neg": "negative", "pos": "positive", "negative": "negative", "positive": "positive"}
_IMDB_LABELS |= {"0": "negative", "1": "positive"}
_TWEET_LABELS = {"0": "not_disaster", "1": "disaster"}


def imdb_local(spec: TaskSpec, data_dir: Path) -> Dataset:
    """``imdb/train.csv.gz`` to train, ``imdb/val.csv.gz`` as the held-out test (columns label, text)."""
    root = _require(data_dir / "imdb", spec.name)
    train = _text_rows(_require(root / "train.csv.gz", spec.name), spec, "text", "label", _IMDB_LABELS)
    test = _text_rows(_require(root / "val.csv.gz", spec.name), spec, "text", "label", _IMDB_LABELS)
    return Dataset(spec.name, train, test, f"IMDB reviews ({root}): train.csv.gz to train, val.csv.gz as test")


def tweets_local(spec: TaskSpec, data_dir: Path) -> Dataset:
    """``disaster_tweets/train.csv`` (text, target 0/1) minus a fixed stratified 20 % held out as test."""
    path = _require(data_dir / "disaster_tweets" / "train.csv", spec.name)
    everything = _text_rows(path, spec, "text", "target", _TWEET_LABELS)
    train_idx, test_idx = stratified_split(everything.labels, TWEETS_TEST_FRACTION, SPLIT_SEED)
    return Dataset(
        spec.name,
        everything.take(train_idx),
        everything.take(test_idx),
        f"Disaster tweets ({path}): a fixed stratified {TWEETS_TEST_FRACTION:.0%} held out as test",
    )


def har_local(spec: TaskSpec, data_dir: Path) -> Dataset:
    """``human_action/{train,val}/<label>/*.jpg``: one folder per label of the spec, ``val`` as test.

    ``train_extra/<label>/`` (when present: more photos of the same source, never a test set) is added to
    the training data.
    """
    root = _require(data_dir / "human_action", spec.name)
    train = image_folder(_require(root / "train", spec.name), spec.labels)
    used = "train/"
    if (root / HAR_EXTRA).is_dir():
        extra = image_folder(root / HAR_EXTRA, spec.labels)
        train = ImageSplit(train.paths + extra.paths, np.concatenate([train.labels, extra.labels]))
        used = f"train/ + {HAR_EXTRA}/"
    return Dataset(
        spec.name,
        train,
        image_folder(_require(root / "val", spec.name), spec.labels),
        f"HAR human action images ({root}): {used} to train, val/ as test",
    )


def image_folder(root: Path, labels: Sequence[str]) -> ImageSplit:
    """Every JPEG/PNG under ``root/<label>/`` for each of ``labels`` (in that order)."""
    paths: list[Path] = []
    indices: list[int] = []
    missing = [label for label in labels if not (root / label).is_dir()]
    if missing:
        raise DatasetError(f"{root} lacks class folders {missing}")
    for index, label in enumerate(labels):
        files = sorted(p for p in (root / label).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        paths += files
        indices += [index] * len(files)
    if not paths:
        raise DatasetError(f"no images under {root}")
    return ImageSplit(paths, np.array(indices, dtype=np.int64))


def _hub(spec: TaskSpec, cache_dir: Path, default_id: str) -> tuple[Any, str]:
    """The hub dataset ``default_id`` (or ``MTC_HUB_<TASK>``) and the id it was read from."""
    try:
        import datasets
    except ImportError as exc:
        raise DatasetError("--data-source hub needs the `datasets` package: pip install datasets") from exc
    hub_id = os.environ.get(f"MTC_HUB_{spec.name.upper()}") or default_id
    try:
        return datasets.load_dataset(hub_id, cache_dir=str(cache_dir)), hub_id
    except Exception as exc:  # network, auth or naming problems all end here
        raise DatasetError(f"cannot load {hub_id} from the hub: {exc}") from exc


def imdb_hub(spec: TaskSpec, cache_dir: Path) -> Dataset:
    """IMDB from the hub: its train split to train, its test split as test (label 0 negative, 1 positive)."""
    loaded, hub_id = _hub(spec, cache_dir, IMDB_HUB_ID)
    train = TextSplit(list(loaded["train"]["text"]), np.array(loaded["train"]["label"], dtype=np.int64))
    test = TextSplit(list(loaded["test"]["text"]), np.array(loaded["test"]["label"], dtype=np.int64))
    return Dataset(spec.name, train, test, f"{hub_id} (hub): train split to train, test split as test")


def tweets_hub(spec: TaskSpec, cache_dir: Path) -> Dataset:
    """The disaster tweets from the hub, with the same fixed stratified 20 % held out as test."""
    loaded, hub_id = _hub(spec, cache_dir, TWEETS_HUB_ID)
    split = loaded["train"]
    everything = TextSplit(list(split["text"]), np.array(split["target"], dtype=np.int64))
    train_idx, test_idx = stratified_split(everything.labels, TWEETS_TEST_FRACTION, SPLIT_SEED)
    return Dataset(spec.name, everything.take(train_idx), everything.take(test_idx), f"{hub_id} (hub), 20% held out")


def har_hub(spec: TaskSpec, cache_dir: Path) -> Dataset:
    """HAR from the hub, written once into the local layout so the rest of the pipeline reads files."""
    loaded, hub_id = _hub(spec, cache_dir, HAR_HUB_ID)
    base = cache_dir / "har"
    names = loaded["train"].features["labels"].names
    for folder, part in (("train", "train"), ("val", "test")):
        if part not in loaded:
            raise DatasetError(f"{hub_id} has no {part} split")
        for i, row in enumerate(loaded[part]):
            target = base / "human_action" / folder / names[row["labels"]].lower() / f"{i}.jpg"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                row["image"].convert("RGB").save(target)
    return har_local(spec, base)
