"""A fourth task, outside taskspec's built-ins: one spec and one export registry entry, nothing else.

``weather`` sorts short weather reports into three labels. Importing this module registers it, so
a process learns the task with ``MTC_TASK_MODULES=tests.support.toy_task`` (the exporter's command
line, and the facade and the stack once they call :func:`taskspec.load_task_modules`).
Its data is a handful of synthetic rows made here; its recipes are small enough for a CPU.

:func:`publish_toy_repository` publishes it through the one publish path with a tiny random model
(tests/support/tiny_models.py) and its own held-out split: a repository a real Triton and the facade
can serve, e.g. for an end-to-end test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import taskspec
from export.data import Dataset, TextSplit
from export.recipes import TextRecipe
from export.registry import TaskEntry, load_dataset, register_entry

WEATHER = taskspec.register(
    taskspec.text_task(
        "weather",
        "Weather reports (toy task)",
        ("sunny", "rainy", "snowy"),
        buckets=(16, 32),
        examples=("Clear blue skies and warm sunshine all afternoon", "Heavy snow closed the mountain pass"),
    )
)

_WORDS = {
    "sunny": ("clear blue skies", "bright sunshine", "a hot dry afternoon", "not a cloud in sight"),
    "rainy": ("heavy rain showers", "a wet and stormy evening", "puddles and drizzle", "rain all day long"),
    "snowy": ("deep fresh snow", "a blizzard and icy roads", "snowflakes and frost", "snow drifts everywhere"),
}
_PLACES = ("in the city", "over the hills", "on the coast", "near the lake", "across the valley", "downtown")


def weather_rows() -> TextSplit:
    """Every synthetic report: each phrase of each label in each place (72 rows), labels in spec order."""
    texts, labels = [], []
    for index, label in enumerate(WEATHER.labels):
        for phrase in _WORDS[label]:
            for place in _PLACES:
                texts.append(f"Today we expect {phrase} {place}.")
                labels.append(index)
    return TextSplit(texts, np.array(labels, dtype=np.int64))


def load_weather(spec: taskspec.TaskSpec, data_dir: Path) -> Dataset:
    """The synthetic rows: the last place of every phrase is held out as test (12 rows), the rest trains."""
    rows = weather_rows()
    test = np.array([i for i, text in enumerate(rows.texts) if text.endswith(f"{_PLACES[-1]}.")])
    train = np.setdiff1d(np.arange(len(rows)), test)
    description = "synthetic weather reports (tests/support/toy_task.py)"
    return Dataset(spec.name, rows.take(train), rows.take(test), description)


_RECIPE = TextRecipe(train_size=None, val_size=6, max_length=16, batch_size=8, epochs=4, lr=1e-4)
ENTRY = register_entry(TaskEntry(WEATHER.name, local=load_weather, recipes={"quick": _RECIPE, "full": _RECIPE}))


def publish_toy_repository(root: Path, *, seed: int = 0) -> Path:
    """Publish a tiny random ``weather`` model into ``root / "model_repository"`` through the one publish path,
    checked on its own held-out split; returns the repository."""
    from tests.support.tiny_models import publish_tiny_model

    repository = root / "model_repository"
    repository.mkdir(parents=True, exist_ok=True)
    publish_tiny_model(WEATHER, repository, seed=seed, held_out=load_dataset(WEATHER.name).test)
    return repository
