"""What the exporter needs to build each task: its dataset loader(s) and its recipe per profile.

A task is declared once, in :mod:`taskspec` (tensors, labels, preprocessing, floors). Building it
takes one entry here; nothing else in ``export/`` knows task names. A new task is therefore one
spec and one entry, e.g. in a module named in ``MTC_TASK_MODULES``::

    import taskspec
    from export.registry import TaskEntry, register_entry

    WEATHER = taskspec.register(TaskSpec(name="weather", ...))
    register_entry(TaskEntry(WEATHER.name, local=load_weather, recipes={"quick": TextRecipe(...), ...}))

The module must stay light (no torch at import): the facade imports the same modules to learn the
task. Text tasks train from the offline MiniLM checkpoint and image tasks from EfficientNet-Lite0
unless the entry (or ``--checkpoint``) names another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from export.data import (
    PROJECT_ROOT,
    Dataset,
    DatasetLoader,
    DataSource,
    har_hub,
    har_local,
    imdb_hub,
    imdb_local,
    resolve_data_dir,
    tweets_hub,
    tweets_local,
)
from export.errors import DatasetError, RegistryError
from export.recipes import (
    DISASTER_RECIPES,
    DISASTER_TINY_RECIPES,
    POSE_RECIPES,
    SENTIMENT_RECIPES,
    SENTIMENT_TINY_RECIPES,
    DistillRecipe,
    ImageRecipe,
    Profile,
    Recipe,
    TextRecipe,
)
from taskspec import DISASTER, DISASTER_TINY, POSE, SENTIMENT, SENTIMENT_TINY, TASKS, TaskSpec


@dataclass(frozen=True)
class TaskEntry:
    """How the exporter builds one task."""

    task: str
    """The task spec's name (registered in :mod:`taskspec` first)."""
    local: DatasetLoader
    """``(spec, datasets folder) -> Dataset``: training data and the held-out test split."""
    recipes: Mapping[Profile, Recipe]
    """The recipe of each profile: :class:`TextRecipe` for text tasks, :class:`ImageRecipe` for images."""
    hub: DatasetLoader | None = None
    """``(spec, cache folder) -> Dataset`` for ``--data-source hub``; None: local data only."""
    checkpoint: str | None = None
    """Default pretrained checkpoint (folder, hub id or weights file); None: the modality's offline default."""


ENTRIES: dict[str, TaskEntry] = {}
"""task -> its entry: the built-ins and those added with :func:`register_entry`."""


def _spec(task: str) -> TaskSpec:
    try:
        return TASKS[task]
    except KeyError:
        raise RegistryError(f"unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}") from None


def register_entry(entry: TaskEntry) -> TaskEntry:
    """Add ``entry``; the same entry again is a no-op, another one for a known task is a :class:`RegistryError`.

    The task's spec must already be registered (:func:`taskspec.register`), and each recipe must fit
    its modality.
    """
    known = ENTRIES.get(entry.task)
    if known is not None:
        if known == entry:
            return known
        raise RegistryError(f"task {entry.task!r} already has a registry entry")
    spec = _spec(entry.task)
    kind = TextRecipe if spec.modality == "text" else ImageRecipe
    wrong = [profile for profile, recipe in entry.recipes.items() if not isinstance(recipe, kind)]
    if wrong or not entry.recipes:
        raise RegistryError(f"{entry.task} is a {spec.modality} task: give a {kind.__name__} for every profile")
    distilled = [isinstance(recipe, DistillRecipe) for recipe in entry.recipes.values()]
    if any(distilled) and (spec.variant_of is None or not all(distilled)):
        raise RegistryError(f"{entry.task}: a DistillRecipe (for every profile) is for a variant of a trained task")
    ENTRIES[entry.task] = entry
    return entry


def unregister_entry(task: str) -> None:
    """Remove a registered entry (tests); the built-ins stay."""
    if task in BUILTIN_ENTRIES:
        raise RegistryError(f"{task!r} is a built-in task")
    ENTRIES.pop(task, None)


def entry_for(task: str) -> TaskEntry:
    """The registry entry of ``task``, with an error that says how to add one."""
    _spec(task)
    try:
        return ENTRIES[task]
    except KeyError:
        raise RegistryError(
            f"task {task!r} has no export registry entry (dataset loader and recipes): "
            "call export.registry.register_entry in the module that registers its spec"
        ) from None


def recipe_for(profile: Profile, task: str) -> Recipe:
    """The recipe ``task`` is trained with in ``profile``."""
    recipes = entry_for(task).recipes
    if profile not in recipes:
        raise RegistryError(f"task {task!r} has no {profile} recipe (it has: {', '.join(recipes)})")
    return recipes[profile]


def load_dataset(
    task: str, *, source: DataSource = "local", data_dir: Path | None = None, cache_dir: Path | None = None
) -> Dataset:
    """The train and held-out test data of ``task``, by its entry's loader."""
    entry, spec = entry_for(task), _spec(task)
    if source == "hub":
        if entry.hub is None:
            raise DatasetError(f"{task} has no hub dataset; use --data-source local")
        return entry.hub(spec, cache_dir or PROJECT_ROOT / ".cache" / "hub")
    return entry.local(spec, resolve_data_dir(data_dir))


BUILTIN_ENTRIES: tuple[str, ...] = (SENTIMENT.name, DISASTER.name, POSE.name, SENTIMENT_TINY.name, DISASTER_TINY.name)
register_entry(TaskEntry(SENTIMENT.name, local=imdb_local, hub=imdb_hub, recipes=SENTIMENT_RECIPES))
register_entry(TaskEntry(DISASTER.name, local=tweets_local, hub=tweets_hub, recipes=DISASTER_RECIPES))
register_entry(TaskEntry(POSE.name, local=har_local, hub=har_hub, recipes=POSE_RECIPES))
# The tiny variants learn from their parent's trained model on the parent's data (export.build builds the parent first).
register_entry(TaskEntry(SENTIMENT_TINY.name, local=imdb_local, hub=imdb_hub, recipes=SENTIMENT_TINY_RECIPES))
register_entry(TaskEntry(DISASTER_TINY.name, local=tweets_local, hub=tweets_hub, recipes=DISASTER_TINY_RECIPES))
