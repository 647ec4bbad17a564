"""The task specs: every classifier the platform serves, declared once.

The exporter (ONNX names and dynamic axes, config.pbtxt), the facade (tokenization,
image preprocessing, label mapping), the dashboard and the tests all read these
objects. Renaming a tensor or a label here changes every one of them together, and
the contract tests fail if a published model repository disagrees.

A task outside the built-ins is added with :func:`register` from a module that every process
imports at start-up: name it in ``MTC_TASK_MODULES`` and call :func:`load_task_modules` first thing
(the exporter's command line does; the facade and the serving stack should). The exporter also needs
its registry entry (``export.registry.register_entry``: dataset loader, recipes).

This module is deliberately dependency-free (standard library only) so that every
environment - the facade, the Triton stub, the exporter - can import it.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

# Files of one published model, in model_repository/<task>/ (model level) and
# model_repository/<task>/<version>/ (weights and the artifacts that travel with them).
CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.onnx"
INT8_MODEL_FILE = "model.int8.onnx"
"""Dynamic-int8 variant of ``model.onnx`` (same weights, MatMul/Gemm quantized), served on CPU hosts."""
CONFIGS_DIR = "configs"
CPU_CONFIG_NAME = "cpu"
"""``<task>/configs/cpu.pbtxt``: the config Triton loads when started with ``--model-config-name=cpu``."""
TOKENIZER_FILE = "tokenizer.json"
PREPROCESSING_FILE = "preprocessing.json"
METRICS_FILE = "metrics.json"
MODEL_CARD_FILE = "model_card.md"
MANIFEST_FILE = "manifest.json"
"""``<task>/<version>/manifest.json``: SHA-256 and size of every file of the version, and its digest
(format and reader: :mod:`taskspec.manifest`)."""

TOP_PROBABILITY_BUCKETS: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
"""Upper bounds of the buckets of the top-class probability (the predicted label's): from 1/num_labels (no
idea) to 1 (certain), finer near 1, where most answers fall. The facade's histogram
``mtc_api_top_probability`` and the held-out ``validation_confidence`` of every model card use these very
bounds, so the dashboard can set one beside the other."""

TritonDType = Literal["TYPE_INT64", "TYPE_INT32", "TYPE_FP32", "TYPE_FP16", "TYPE_STRING"]
Modality = Literal["text", "image"]

# numpy dtype names for each Triton dtype the platform uses (KServe v2 wire names differ:
# see TRITON_TO_WIRE).
TRITON_TO_NUMPY: dict[str, str] = {
    "TYPE_INT64": "int64",
    "TYPE_INT32": "int32",
    "TYPE_FP32": "float32",
    "TYPE_FP16": "float16",
    "TYPE_STRING": "object",
}
TRITON_TO_WIRE: dict[str, str] = {
    "TYPE_INT64": "INT64",
    "TYPE_INT32": "INT32",
    "TYPE_FP32": "FP32",
    "TYPE_FP16": "FP16",
    "TYPE_STRING": "BYTES",
}


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output tensor. ``dims`` excludes the batch dimension; -1 is dynamic."""

    name: str
    dtype: TritonDType
    dims: tuple[int, ...]

    @property
    def numpy_dtype(self) -> str:
        return TRITON_TO_NUMPY[self.dtype]

    @property
    def wire_dtype(self) -> str:
        return TRITON_TO_WIRE[self.dtype]


TruncationStrategy = Literal["head", "head+tail"]
"""Which tokens of a text longer than the maximum length survive (the tokenizer's special tokens, e.g.
``[CLS]`` and ``[SEP]``, always open and close the row). ``head``: the first ones. ``head+tail``: the
first ``head_fraction`` of the token budget from the start of the text and the rest from its end (a
review's verdict is often in its last sentences: Sun et al. 2019, "How to Fine-Tune BERT for Text
Classification", keep 128 head + 382 tail tokens of 512 on IMDB). Applied by :mod:`preprocess.text`
only, the one place every path (training, evaluation, the facade, the raw-text models) calls."""
TRUNCATION_STRATEGIES: tuple[TruncationStrategy, ...] = ("head", "head+tail")
MAX_TEXT_CHARS = 100_000
"""Default most characters per text a request may carry (the facade's 1 MiB body limit bounds a whole
request): long texts are truncated in tokens, never refused for their length."""


@dataclass(frozen=True)
class TextPreprocessing:
    """How raw text becomes ``input_ids`` / ``attention_mask`` (applied by :mod:`preprocess.text`).

    ``buckets`` are the padded lengths the facade uses: Triton only batches requests whose
    shapes match, so padding to a few fixed lengths lets concurrent requests share a batch.
    The last bucket is the model's maximum length; longer texts are cut to it as ``truncation``
    says. ``lowercase`` lowercases the text before the tokenizer's own normalizer runs (a no-op
    for an uncased tokenizer, which lowercases by itself).
    """

    buckets: tuple[int, ...]
    lowercase: bool = True
    truncation: TruncationStrategy = "head"
    head_fraction: float = 0.25
    """``head+tail`` only: share of the token budget (the maximum length less the special tokens) taken
    from the start of the text; the rest comes from its end."""
    max_chars: int = field(default=MAX_TEXT_CHARS, compare=False)
    """Most characters of one text a request may carry: the facade's request limit (more is 422), read from the
    spec, not from a published version (it is not part of how a text becomes tensors, so not published)."""

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(f"unknown truncation {self.truncation!r}; known: {', '.join(TRUNCATION_STRATEGIES)}")
        if not 0.0 <= self.head_fraction <= 1.0:
            raise ValueError(f"head_fraction {self.head_fraction} is not a share in [0, 1]")
        if self.max_chars < 1:
            raise ValueError("max_chars must be positive")

    @property
    def max_length(self) -> int:
        return self.buckets[-1]

    def bucket_for(self, n_tokens: int) -> int:
        """Smallest bucket that holds ``n_tokens`` (the largest one if none does)."""
        for bucket in self.buckets:
            if n_tokens <= bucket:
                return bucket
        return self.buckets[-1]

    def truncated_at(self, max_length: int) -> TextPreprocessing:
        """The same preprocessing with another maximum length (training on shorter rows than are served)."""
        return replace(self, buckets=(*(b for b in self.buckets if b < max_length), max_length))

    def head_tail(self, budget: int) -> tuple[int, int]:
        """How many tokens of a longer text's content (without special tokens) are kept from its start and from
        its end when ``budget`` tokens fit."""
        if self.truncation == "head":
            return budget, 0
        head = int(budget * self.head_fraction + 0.5)
        return head, budget - head

    def to_document(self) -> dict[str, object]:
        """The ``text`` part of ``preprocessing.json``."""
        return {
            "buckets": list(self.buckets),
            "max_length": self.max_length,
            "lowercase": self.lowercase,
            "truncation": self.truncation,
            "head_fraction": self.head_fraction,
            "tokenizer_file": TOKENIZER_FILE,
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> TextPreprocessing:
        """Parse the ``text`` part of a published ``preprocessing.json``; ValueError names what is wrong.

        Versions published before a field existed get its default (``lowercase`` true, ``truncation`` head,
        ``head_fraction`` 0.25).
        """
        buckets = tuple(sorted(int(b) for b in doc["buckets"]))
        if not buckets or buckets[0] < 2:
            raise ValueError(f"bad length buckets {buckets}")
        if "max_length" in doc and int(doc["max_length"]) != buckets[-1]:
            raise ValueError(f"max_length {doc['max_length']} is not the largest bucket {buckets[-1]}")
        lowercase = doc.get("lowercase", True)
        if not isinstance(lowercase, bool):
            raise ValueError(f"lowercase must be true or false, not {lowercase!r}")
        truncation = doc.get("truncation", "head")
        if truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(f"unknown truncation {truncation!r}; known: {', '.join(TRUNCATION_STRATEGIES)}")
        head_fraction = doc.get("head_fraction", 0.25)
        if isinstance(head_fraction, bool) or not isinstance(head_fraction, int | float):
            raise ValueError(f"head_fraction must be a number, not {head_fraction!r}")
        return cls(buckets=buckets, lowercase=lowercase, truncation=truncation, head_fraction=float(head_fraction))


@dataclass(frozen=True)
class ImagePreprocessing:
    """How image bytes become ``pixel_values`` (NCHW float32; applied by :mod:`preprocess.image`).

    The image is decoded, turned upright by its EXIF orientation, converted to RGB, resized to
    ``size`` x ``size`` (bilinear, no crop), and each channel is mapped with ``(x - mean) / std`` on
    the 0-255 scale.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_document(self) -> dict[str, object]:
        """The ``image`` part of ``preprocessing.json``."""
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> ImagePreprocessing:
        """Parse the ``image`` part of a published ``preprocessing.json``; ValueError names what is wrong."""
        size = int(doc["size"])
        mean = tuple(float(x) for x in doc["mean"])
        std = tuple(float(x) for x in doc["std"])
        if size < 1 or len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"bad image preprocessing size={size} mean={mean} std={std}")
        return cls(size=size, mean=(mean[0], mean[1], mean[2]), std=(std[0], std[1], std[2]))


DEFAULT_QUEUE_TIMEOUT_US = 10_000_000
"""How long a request may wait in Triton's queue when its caller sets no timeout of its own: the
facade's default deadline for one Triton call (``MTC_API_TRITON_TIMEOUT_S`` = 10 s). Work queued
longer than that has no one waiting for it any more, so Triton drops it instead of running it."""
DEFAULT_MAX_QUEUE_SIZE = 256
"""Requests one model's queue holds before Triton rejects new ones: a few batches' worth."""

PRIORITY_LEVELS = 2
"""Triton priority levels of every model (``dynamic_batching.priority_levels``; 1 is served first). Triton
forms each batch from the highest-priority requests waiting, so a batch job's backlog never delays an
interactive request by more than the batch already running."""
INTERACTIVE_PRIORITY = 1
"""The facade's requests, and any request that names no priority (``default_priority_level``): they keep
the model's ``default_queue_policy``."""
BATCH_PRIORITY = 2
"""Batch jobs' requests (``MTC_BATCH_TRITON_PRIORITY``): queued behind every interactive one, under
``priority_queue_policy`` (see :attr:`BatchingSpec.batch_queue_size`)."""
BATCH_QUEUE_TIMEOUT_US = 30_000_000
"""Longest wait of a batch request that sets no timeout: the batch runner's deadline for one Triton call
(``MTC_BATCH_TRITON_TIMEOUT_S`` = 30 s); it sends what is left of it with every request anyway."""
BATCH_QUEUE_BATCHES = 2
"""Batch requests one model's queue holds, in full batches (``max_batch_size`` requests each): a job keeps
a few requests in flight per worker (``MTC_BATCH_CONCURRENCY``), so more than that is a runaway client."""


@dataclass(frozen=True)
class BatchingSpec:
    """Triton dynamic batching for one model, and the policy of its queue.

    The queue policy (``dynamic_batching.default_queue_policy`` in config.pbtxt) sheds load where the
    work is: past ``max_queue_size`` waiting requests Triton rejects new ones at once, and a request
    that waited ``queue_timeout_us`` (or the timeout its caller set: ``allow_timeout_override``) is
    rejected instead of run (``timeout_action: REJECT``). Both counts are Triton requests, not rows.
    Batch jobs' requests (priority :data:`BATCH_PRIORITY`) have a queue policy of their own
    (``priority_queue_policy``): :attr:`batch_queue_size` requests and :data:`BATCH_QUEUE_TIMEOUT_US`.
    """

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    """Most requests waiting in the queue; one more is rejected at once (never 0: Triton reads it as unbounded)."""
    queue_timeout_us: int = DEFAULT_QUEUE_TIMEOUT_US
    """Longest wait in the queue of a request that sets no timeout (``default_timeout_microseconds``)."""

    def __post_init__(self) -> None:
        if self.max_queue_size < 1 or self.queue_timeout_us < 1:
            raise ValueError("max_queue_size and queue_timeout_us must be positive (0 means unbounded to Triton)")

    @property
    def batch_queue_size(self) -> int:
        """Most batch-priority (:data:`BATCH_PRIORITY`) requests waiting; one more is rejected at once."""
        return BATCH_QUEUE_BATCHES * self.max_batch_size


@dataclass(frozen=True)
class QualityFloor:
    """The least one served file of a version must achieve before the version is published.

    Checked by the exporter's one publish path (:func:`export.pipeline.export_validate_publish`) on
    the held-out data: top-1 agreement with the file's reference and the largest logit difference
    from it (``model.onnx``: PyTorch on a held-out sample; any other file: ``model.onnx`` on every
    held-out row), and the accuracy on the held-out split compared with that of ``model.onnx``. A
    file below its floor is not published (nor is the rest of its version).
    """

    min_agreement: float
    """Least share of the compared held-out rows whose top-1 label equals the reference's."""
    reason: str
    """Why this floor: shown with a refusal and in the model card."""
    max_abs_diff: float | None = None
    """Largest |logit difference| from the reference on the compared rows (None: measured, not gated)."""
    max_accuracy_drop: float | None = None
    """Most held-out accuracy the file may lose against ``model.onnx`` (0.015: 1.5 points; None: not gated)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement {self.min_agreement} is not a share in [0, 1]")
        if self.max_abs_diff is not None and self.max_abs_diff < 0:
            raise ValueError("max_abs_diff must not be negative")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise ValueError(f"max_accuracy_drop {self.max_accuracy_drop} is not a share in [0, 1]")
        if not self.reason.strip():
            raise ValueError("a floor needs its reason")

    def to_document(self) -> dict[str, object]:
        return {
            "min_agreement": self.min_agreement,
            "max_abs_diff": self.max_abs_diff,
            "max_accuracy_drop": self.max_accuracy_drop,
            "reason": self.reason,
        }


MODEL_MIN_AGREEMENT = 0.99
"""Floor of ``model.onnx``'s top-1 agreement with PyTorch (its logits must also be within ``export_atol``)."""
MODEL_FLOOR_REASON = (
    "model.onnx is the PyTorch model itself in another runtime: its logits must stay within the task's "
    "export tolerance; only rows whose two top logits are closer than that may change label"
)

INT8_FLOOR = QualityFloor(
    min_agreement=0.97,
    max_accuracy_drop=0.015,
    reason=(
        "dynamic int8 (per-channel weights) moves the logits of the quick text models by up to ~0.35, so "
        "rows the fp32 model scores as near-ties can change label (quick sentiment: 13 of 600, 12 of them "
        "with a logit margin under 0.2); a broken quantisation disagrees far more often. What a user "
        "notices is accuracy: at most 1.5 points below model.onnx on the held-out split"
    ),
)
"""Floor of the dynamic-int8 file (``model.int8.onnx``), measured 2026-12 on the quick models."""

TENSORRT_FLOOR = QualityFloor(
    min_agreement=0.98,
    max_accuracy_drop=0.01,
    reason=(
        "a TensorRT plan is model.onnx compiled for one GPU; in fp16 its logits move by about 1e-3 to 1e-2, so "
        "only near-ties may change label. Not yet measured on this project's models (the build machine has "
        "no GPU): tighten it from the first plan's figures"
    ),
)
"""Floor of a TensorRT plan (``model.plan``, ``configs/tensorrt.pbtxt``), checked against ``model.onnx``."""


@dataclass(frozen=True)
class CpuServing:
    """How a CPU-only Triton serves the model: ``configs/cpu.pbtxt``, used with ``--model-config-name=cpu``
    (models without that file keep ``config.pbtxt``).

    On a CPU, a batch costs about as much per item as single requests, so what pays is cheaper
    arithmetic (dynamic int8: about 2x at 256 tokens) and instances that each keep one core busy
    (two instances of one thread beat one instance of two threads, which wait on each other). The
    defaults fit a host with about two cores free for Triton; raise ``instance_count`` on bigger ones.
    """

    model_file: str = INT8_MODEL_FILE
    instance_count: int = 2
    intra_op_threads: int = 1
    floor: QualityFloor = INT8_FLOOR
    """What ``model_file`` must achieve on the held-out data before a version with it is published."""


@dataclass(frozen=True)
class TaskSpec:
    """Everything the platform knows about one classification task."""

    name: str
    """Task name: the REST route (``/v1/<name>``; a variant's is its parent's, see ``variant_of``) and the Triton
    model name."""
    title: str
    modality: Modality
    labels: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    output: TensorSpec
    batching: BatchingSpec
    text: TextPreprocessing | None = None
    image: ImagePreprocessing | None = None
    export_atol: float = 1e-3
    """Max abs difference of logits allowed between PyTorch and the exported model."""
    instance_count: int = 1
    intra_op_threads: int = 0
    """ONNX Runtime intra-op threads per instance (0 lets ONNX Runtime pick)."""
    max_rows_per_cpu_run: int | None = None
    """On a CPU instance of the local onnxruntime backend, a batch runs as ONNX Runtime calls of at most this many
    rows (``memory.max_rows_per_cpu_run`` in every config of the task; GPU instances and the native backend ignore
    it). For a model whose cost per row does not fall with the batch on a CPU, it bounds the arena's peak at no
    cost; None: one call per batch."""
    cpu: CpuServing | None = None
    """The CPU-host serving variant (``configs/cpu.pbtxt``); None: CPU hosts use ``config.pbtxt`` too."""
    examples: tuple[str, ...] = field(default=())
    variant_of: str | None = None
    """Set on a variant of another task (:func:`tiny_variant`): the parent task's name. A variant has its own
    Triton model (named after the variant) and versions, but its parent's labels, tensors, preprocessing and
    route: a caller picks it per request (the ``model`` field of ``POST /v1/<parent>``). None: a task."""
    variant: str = "default"
    """What the variant is (``tiny``: a distilled, smaller student of the parent); ``default`` for a task."""

    @property
    def model_name(self) -> str:
        return self.name

    @property
    def task_name(self) -> str:
        """The task this spec serves: its parent for a variant (the route ``/v1/<task_name>``), else its own name."""
        return self.variant_of or self.name

    @property
    def raw_text_model_name(self) -> str:
        """Name of the model that takes raw UTF-8 text (text tasks only)."""
        return f"{self.name}_text"

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def model_floor(self) -> QualityFloor:
        """The floor of ``model.onnx`` (served by ``config.pbtxt``): ``export_atol`` and :data:`MODEL_MIN_AGREEMENT`."""
        return QualityFloor(min_agreement=MODEL_MIN_AGREEMENT, max_abs_diff=self.export_atol, reason=MODEL_FLOOR_REASON)

    def preprocessing_document(self) -> dict[str, object]:
        """The content of ``preprocessing.json``, published next to the weights of each version."""
        doc: dict[str, object] = {"task": self.name, "labels": list(self.labels), "inputs": list(self.input_names)}
        if self.text is not None:
            doc["text"] = self.text.to_document()
        if self.image is not None:
            doc["image"] = self.image.to_document()
        return doc


def text_task(
    name: str,
    title: str,
    labels: tuple[str, ...],
    buckets: tuple[int, ...],
    examples: tuple[str, ...],
    truncation: TruncationStrategy = "head",
) -> TaskSpec:
    """A text classifier like the built-in ones: a BERT-family encoder's ``input_ids`` / ``attention_mask``
    -> ``logits``, batching up to 64 texts of up to :data:`MAX_TEXT_CHARS` characters, served in int8 on CPU
    hosts (a new text task starts here)."""
    return TaskSpec(
        name=name,
        title=title,
        modality="text",
        labels=labels,
        inputs=(
            TensorSpec("input_ids", "TYPE_INT64", (-1,)),
            TensorSpec("attention_mask", "TYPE_INT64", (-1,)),
        ),
        output=TensorSpec("logits", "TYPE_FP32", (len(labels),)),
        batching=BatchingSpec(
            max_batch_size=64,
            preferred_batch_sizes=(8, 16, 32),
            max_queue_delay_us=2000,
            # Four full batches of one-text requests, the facade's whole in-flight limit
            # (MTC_API_MAX_IN_FLIGHT = 256): about 3.6 s of work at the 72 req/s a 2-core CPU host
            # serves sentiment (int8, configs/cpu.pbtxt), inside the 10 s deadline; a deeper queue
            # only holds work that would time out.
            max_queue_size=4 * 64,
        ),
        text=TextPreprocessing(buckets=buckets, truncation=truncation),
        cpu=CpuServing(),
        examples=examples,
    )


POSE_LABELS: tuple[str, ...] = (
    "calling",
    "clapping",
    "cycling",
    "dancing",
    "drinking",
    "eating",
    "fighting",
    "hugging",
    "laughing",
    "listening_to_music",
    "running",
    "sitting",
    "sleeping",
    "texting",
    "using_laptop",
)

SENTIMENT = text_task(
    "sentiment",
    "Movie-review sentiment",
    ("negative", "positive"),
    # Reviews run from a few dozen tokens to past the 256-token cut: steps of 32 keep padding near 10%
    # (about 20% with 32/64/128/256, which cost 1.25x the throughput on a CPU host; docs/api.md).
    buckets=(32, 64, 96, 128, 160, 192, 224, 256),
    # A review's verdict is often in its last lines: keeping the first quarter and the last three quarters of
    # the token budget scored 85.33% vs 82.83% head-only on the 600 held-out reviews, same quick weights
    # (docs/models.md#long-texts-truncation).
    truncation="head+tail",
    examples=(
        "A beautiful, moving film with a career-best performance from the lead.",
        "Two hours of my life I will never get back. The plot makes no sense.",
    ),
)

DISASTER = text_task(
    "disaster",
    "Disaster tweets",
    ("not_disaster", "disaster"),
    buckets=(16, 32, 64),
    examples=(
        "Forest fire near La Ronge Sask. Canada, residents asked to evacuate",
        "I love this new album, it's fire!!",
    ),
)

POSE = TaskSpec(
    name="pose",
    title="Human pose / action",
    modality="image",
    labels=POSE_LABELS,
    inputs=(TensorSpec("pixel_values", "TYPE_FP32", (3, 224, 224)),),
    output=TensorSpec("logits", "TYPE_FP32", (len(POSE_LABELS),)),
    batching=BatchingSpec(
        max_batch_size=16,
        preferred_batch_sizes=(4, 8, 16),
        max_queue_delay_us=2000,
        # Four full batches: a facade request carries up to 16 images in one Triton request, so 64
        # queued requests can already be ~1,000 images: ~28 s at the 36 images/s of a 2-core CPU host,
        # so the 10 s queue timeout, not the size, is what bounds pose there.
        max_queue_size=4 * 16,
    ),
    image=ImagePreprocessing(size=224, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0)),
    export_atol=1e-3,
    # On a 2-core CPU EfficientNet-Lite0 costs 2.9-3.5 ms per photo in runs of 1 to 16, but ONNX Runtime's arena keeps
    # the largest run's activations: the stub held 332 MiB after runs of 16, 154 MiB after runs of 4; served, the
    # same images/s (docs/benchmarks.md, "Pose in runs of at most four photos").
    max_rows_per_cpu_run=4,
)


def tiny_variant(parent: TaskSpec, *, cpu_instances: int | None = None) -> TaskSpec:
    """The distilled tiny variant of a text task: ``<parent>_tiny``, a 3-layer student of the parent's trained
    6-layer encoder (recipe: ``export.recipes.DistillRecipe``), served as its own Triton model with the parent's
    tensors, labels, preprocessing, batching and CPU (int8) serving (``cpu_instances``: another instance count
    there), and chosen per request."""
    if parent.modality != "text" or parent.variant_of is not None:
        raise ValueError(f"{parent.name}: only a text task (not a variant) has a tiny variant")
    cpu = parent.cpu
    if cpu_instances is not None:
        if cpu is None:
            raise ValueError(f"{parent.name} has no CPU serving variant to give {cpu_instances} instance(s)")
        cpu = replace(cpu, instance_count=cpu_instances)
    return replace(
        parent,
        name=f"{parent.name}_tiny",
        title=f"{parent.title} (tiny)",
        variant_of=parent.name,
        variant="tiny",
        cpu=cpu,
    )


SENTIMENT_TINY = tiny_variant(SENTIMENT)
# One CPU instance: 48-token tweets batch well in one 3-layer instance (1.14x and 1.34x the requests/s of two
# through the facade at 32 clients, two runs of three alternating pairs), and each instance is a stub process of
# ~125 MiB; the reviews' student keeps two (one measured 0.61x). docs/benchmarks.md, "One CPU instance per student".
DISASTER_TINY = tiny_variant(DISASTER, cpu_instances=1)

BUILTIN_TASKS: tuple[TaskSpec, ...] = (SENTIMENT, DISASTER, POSE, SENTIMENT_TINY, DISASTER_TINY)
TASKS: dict[str, TaskSpec] = {t.name: t for t in BUILTIN_TASKS}
"""Every task this process knows: the built-ins and those added with :func:`register` (same dict object
for the whole process, so a module holding it sees later registrations)."""
TEXT_TASKS: tuple[TaskSpec, ...] = tuple(t for t in TASKS.values() if t.modality == "text")
"""The built-in text tasks (fixed at import); :func:`text_tasks` includes registered ones."""

TASK_MODULES_ENV = "MTC_TASK_MODULES"
"""Comma-separated Python modules imported at start-up (:func:`load_task_modules`) that register tasks."""
_TASK_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class TaskRegistrationError(ValueError):
    """A task spec that cannot be registered (bad name, clash with a known task, inconsistent tensors)."""


class TaskModuleError(ImportError):
    """A module named in ``MTC_TASK_MODULES`` is not a module name or cannot be imported."""


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, with an error that lists the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        known = ", ".join(sorted(TASKS))
        raise KeyError(f"unknown task {name!r}; known tasks: {known}") from None


def text_tasks() -> tuple[TaskSpec, ...]:
    """The text tasks known now, registered ones included (variants too: each is a Triton model of its own)."""
    return tuple(t for t in TASKS.values() if t.modality == "text")


def variants_of(task: str) -> tuple[TaskSpec, ...]:
    """The variants of ``task`` known now (e.g. ``sentiment_tiny`` of ``sentiment``), in registration order."""
    return tuple(t for t in TASKS.values() if t.variant_of == task)


def _registration_problems(spec: TaskSpec) -> list[str]:
    problems = []
    if not _TASK_NAME.fullmatch(spec.name):
        problems.append(f"name {spec.name!r} is not 1-48 lowercase letters, digits or _ starting with a letter")
    if spec.name.endswith("_text"):
        problems.append("names ending in _text are the raw-text models' names")
    if spec.name in {t.raw_text_model_name for t in TASKS.values()}:
        problems.append(f"{spec.name!r} is the raw-text model of another task")
    if not spec.labels or len(set(spec.labels)) != len(spec.labels) or not all(spec.labels):
        problems.append("labels must be non-empty and distinct")
    if spec.output.dims != (len(spec.labels),):
        problems.append(f"output dims {spec.output.dims} do not match {len(spec.labels)} labels")
    if len(set(spec.input_names)) != len(spec.inputs) or not spec.inputs:
        problems.append("inputs must be non-empty with distinct names")
    if (spec.modality == "text") != (spec.text is not None) or (spec.modality == "image") != (spec.image is not None):
        problems.append(f"a {spec.modality} task declares exactly its own preprocessing (text or image)")
    if spec.variant_of is not None:
        parent = TASKS.get(spec.variant_of)
        if parent is None or parent.variant_of is not None:
            problems.append(f"variant_of {spec.variant_of!r} is not a known task (register the parent first)")
        elif (parent.labels, parent.inputs, parent.output, parent.modality) != (
            spec.labels,
            spec.inputs,
            spec.output,
            spec.modality,
        ):
            problems.append(f"a variant has the labels and tensors of its parent {parent.name!r}")
    return problems


def register(spec: TaskSpec) -> TaskSpec:
    """Add a task outside the built-ins to this process's :data:`TASKS`; returns it.

    Registering the very same spec again is a no-op (a module imported twice); another spec under a
    known name, a name that is not route- and folder-safe, or a spec whose tensors and labels
    disagree raises :class:`TaskRegistrationError`. Every process that serves or builds the task
    must register it: name its module in ``MTC_TASK_MODULES`` (:func:`load_task_modules`).
    """
    known = TASKS.get(spec.name)
    if known is not None:
        if known == spec:
            return known
        raise TaskRegistrationError(f"task {spec.name!r} is already registered with another spec")
    problems = _registration_problems(spec)
    if problems:
        raise TaskRegistrationError(f"cannot register task {spec.name!r}: {'; '.join(problems)}")
    TASKS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a registered task (tests); the built-ins cannot be removed."""
    if name in {t.name for t in BUILTIN_TASKS}:
        raise TaskRegistrationError(f"{name!r} is a built-in task")
    TASKS.pop(name, None)


def load_task_modules(modules: str | Sequence[str] | None = None) -> list[str]:
    """Import the modules that register extra tasks; returns their names.

    ``modules`` is a comma-separated string or a sequence of dotted module names; None reads
    ``MTC_TASK_MODULES`` (unset or empty: nothing to import). Each name must be a dotted Python
    identifier (no paths); importing it is expected to call :func:`register` (and, for the
    exporter, ``export.registry.register_entry``). Call it once at process start, before task names
    are resolved: the facade, the exporter's command line and the serving stack all do.
    """
    if modules is None:
        modules = os.environ.get(TASK_MODULES_ENV, "")
    names = [m.strip() for m in modules.split(",")] if isinstance(modules, str) else [m.strip() for m in modules]
    names = [m for m in names if m]
    for name in names:
        if not _MODULE_NAME.fullmatch(name):
            raise TaskModuleError(f"{TASK_MODULES_ENV}: {name!r} is not a dotted Python module name")
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure of a task module means its tasks are not there
            raise TaskModuleError(f"{TASK_MODULES_ENV}: cannot import {name!r}: {exc}") from exc
    return names
