"""The labelled data of each task, from the shared offline folder or from the Hugging Face hub.

Local layout (``../shared/datasets`` relative to the project root by default; override with
``--data-dir`` or ``MTC_DATA_DIR``), see that folder's README:

- ``imdb/train.csv.gz`` (train) and ``imdb/val.csv.gz`` (held-out test): ``label`` pos/neg, ``text``;
- ``disaster_tweets/train.csv``: ``text``, ``target``; a fixed, stratified 20 % is held out as test;
- ``human_action/{train,val}/<class>/*.jpg``: ``val`` is the held-out test.

Nothing is tuned on the test parts: the recipes are fixed per profile, and the test split is only
used for the accuracy reported in the model card.

On a machine with network, ``source="hub"`` reads the public copies with the ``datasets`` package
(``pip install datasets``): IMDB ``stanfordnlp/imdb`` (its test split as test), the disaster tweets
and HAR from the ids in :data:`HUB_IDS` (override with ``MTC_HUB_<TASK>``).
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from export.errors import DatasetError
from taskspec import DISASTER, POSE, SENTIMENT

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV = "MTC_DATA_DIR"
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "datasets"
DataSource = Literal["local", "hub"]

HUB_IDS: dict[str, str] = {
    "sentiment": "stanfordnlp/imdb",
    "disaster": "tweet-disaster/nlp-getting-started",
    "pose": "Bingsu/Human_Action_Recognition",
}
TWEETS_TEST_FRACTION = 0.2
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


@dataclass(frozen=True)
class Dataset:
    """A task's training data and its held-out test data."""

    task: str
    train: Any  # TextSplit | ImageSplit
    test: Any
    description: str


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


def _imdb_split(path: Path) -> TextSplit:
    rows = _read_csv(path)
    mapping = {"neg": 0, "pos": 1, "negative": 0, "positive": 1, "0": 0, "1": 1}
    try:
        labels = np.array([mapping[row["label"].strip().lower()] for row in rows], dtype=np.int64)
        texts = [row["text"] for row in rows]
    except KeyError as exc:
        raise DatasetError(f"{path}: expected columns label (pos/neg) and text; bad value or column {exc}") from exc
    assert SENTIMENT.labels == ("negative", "positive")
    return TextSplit(texts, labels)


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


def load_local(task: str, data_dir: Path) -> Dataset:
    """A task's data from the offline folder layout described in the module docstring."""
    if task == "sentiment":
        root = _require(data_dir / "imdb", task)
        train = _imdb_split(_require(root / "train.csv.gz", task))
        test = _imdb_split(_require(root / "val.csv.gz", task))
        return Dataset(task, train, test, f"IMDB reviews ({root}): train.csv.gz to train, val.csv.gz as test")
    if task == "disaster":
        path = _require(data_dir / "disaster_tweets" / "train.csv", task)
        rows = _read_csv(path)
        try:
            labels = np.array([int(row["target"]) for row in rows], dtype=np.int64)
            texts = [row["text"] for row in rows]
        except (KeyError, ValueError) as exc:
            raise DatasetError(f"{path}: expected columns text and target (0/1): {exc}") from exc
        assert DISASTER.labels == ("not_disaster", "disaster")
        everything = TextSplit(texts, labels)
        train_idx, test_idx = stratified_split(labels, TWEETS_TEST_FRACTION, SPLIT_SEED)
        return Dataset(
            task,
            everything.take(train_idx),
            everything.take(test_idx),
            f"Disaster tweets ({path}): a fixed stratified {TWEETS_TEST_FRACTION:.0%} held out as test",
        )
    if task == "pose":
        root = _require(data_dir / "human_action", task)
        return Dataset(
            task,
            _image_folder(_require(root / "train", task)),
            _image_folder(_require(root / "val", task)),
            f"HAR human action images ({root}): train/ to train, val/ as test",
        )
    raise DatasetError(f"no dataset is known for task {task!r}")


def _image_folder(root: Path) -> ImageSplit:
    paths: list[Path] = []
    labels: list[int] = []
    missing = [label for label in POSE.labels if not (root / label).is_dir()]
    if missing:
        raise DatasetError(f"{root} lacks class folders {missing}")
    for index, label in enumerate(POSE.labels):
        files = sorted(p for p in (root / label).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        paths += files
        labels += [index] * len(files)
    if not paths:
        raise DatasetError(f"no images under {root}")
    return ImageSplit(paths, np.array(labels, dtype=np.int64))


def load_hub(task: str, cache_dir: Path) -> Dataset:
    """A task's data from the Hugging Face hub (needs network and ``pip install datasets``)."""
    try:
        import datasets
    except ImportError as exc:
        raise DatasetError("--data-source hub needs the `datasets` package: pip install datasets") from exc
    hub_id = os.environ.get(f"MTC_HUB_{task.upper()}", HUB_IDS[task])
    try:
        loaded = datasets.load_dataset(hub_id, cache_dir=str(cache_dir))
    except Exception as exc:  # network, auth or naming problems all end here
        raise DatasetError(f"cannot load {hub_id} from the hub: {exc}") from exc
    if task == "sentiment":
        train = TextSplit(list(loaded["train"]["text"]), np.array(loaded["train"]["label"], dtype=np.int64))
        test = TextSplit(list(loaded["test"]["text"]), np.array(loaded["test"]["label"], dtype=np.int64))
        return Dataset(task, train, test, f"{hub_id} (hub): train split to train, test split as test")
    if task == "disaster":
        split = loaded["train"]
        everything = TextSplit(list(split["text"]), np.array(split["target"], dtype=np.int64))
        train_idx, test_idx = stratified_split(everything.labels, TWEETS_TEST_FRACTION, SPLIT_SEED)
        return Dataset(task, everything.take(train_idx), everything.take(test_idx), f"{hub_id} (hub), 20% held out")
    # pose: materialise the images once, in the local layout, so the rest of the pipeline reads files.
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
    return load_local("pose", base)


def load_dataset(
    task: str, *, source: DataSource = "local", data_dir: Path | None = None, cache_dir: Path | None = None
) -> Dataset:
    """The train and held-out test data of ``task``."""
    if source == "hub":
        return load_hub(task, cache_dir or PROJECT_ROOT / ".cache" / "hub")
    return load_local(task, resolve_data_dir(data_dir))
