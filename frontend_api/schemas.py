"""Request and response bodies of the REST API (the contract the dashboard and clients use).

Request limits come from the task spec: a classification request carries at most
``spec.batching.max_batch_size`` items (one request never exceeds the model's Triton batch), and an
image request asks for at most as many top labels as the task has. The request models are built per
task (:func:`text_request_model`, :func:`image_request_model`), so each route's OpenAPI schema states
its own task's limits. What the validators enforce is what the schema declares: the checks that JSON
Schema cannot express on its own are declared next to the keyword that states them, and
tests/test_api_fuzz.py holds the two to each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import GenericAlias
from typing import Annotated, Any, Literal, TypeVar, cast

import email_validator
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, field_validator

from preprocess.image import IMAGE_MEDIA_TYPES
from taskspec import MAX_TEXT_CHARS, TASKS, Modality, TaskSpec, TruncationStrategy

__all__ = ["MAX_TEXT_CHARS"]  # the default per-text limit (each text task declares its own: max_chars)

NON_BLANK_PATTERN = r"[^\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
"""JSON Schema ``pattern`` of a text with at least one character that is not whitespace as ``str.strip()`` sees it.

Spelled with explicit ``\\uXXXX`` ranges, not ``\\S``: ``\\s`` means another set in each regex dialect
(ECMA-262 counts U+FEFF, Python's ``re`` and ``str.strip`` count U+001C-U+001F and U+0085). A test checks,
code point by code point, that this class is exactly the complement of ``str.isspace()``."""


def _check_text(text: str) -> str:
    if not text.strip():  # the check NON_BLANK_PATTERN declares
        raise ValueError("text must contain at least one non-whitespace character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from "\ud800" escapes: the tokenizer cannot take them
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return text


def _text_field(max_chars: int) -> Any:
    return Field(
        min_length=1,
        max_length=max_chars,
        description=f"1 to {max_chars} characters, at least one of them not whitespace; a text longer than the "
        "served version's `max_tokens` is truncated in tokens (see `truncated` in its prediction)",
        json_schema_extra={"pattern": NON_BLANK_PATTERN},
    )


Text = Annotated[str, _text_field(MAX_TEXT_CHARS), AfterValidator(_check_text)]
"""One text of a request, at most :data:`MAX_TEXT_CHARS` characters (each text task's own limit: :func:`texts_type`)."""


def texts_type(max_chars: int) -> Any:
    """``list[Text]`` with the per-text limit of a task (its spec's ``text.max_chars``), built at run time."""
    return GenericAlias(list, (Annotated[str, _text_field(max_chars), AfterValidator(_check_text)],))


def _check_email(value: str) -> str:
    # email-validator's syntax check (no DNS), as pydantic's EmailStr, but with the `test` top-level domain
    # allowed (test_environment): JSON Schema's `format: email` includes it, and so do generated clients' data.
    try:
        email_validator.validate_email(value, check_deliverability=False, test_environment=True)
    except email_validator.EmailNotValidError as exc:
        raise ValueError(f"value is not a valid email address: {exc}") from None
    return value


UserId = Annotated[
    str,
    Field(
        max_length=254,
        description="Caller's e-mail address (optional; for auditing). Syntax as `format: email`; the reserved "
        "domains .local, .localhost, .invalid, .onion and .arpa are refused",
        json_schema_extra={"format": "email"},
    ),
    AfterValidator(_check_email),
]


ImageUrl = Annotated[
    HttpUrl,
    # HttpUrl's schema says only `format: uri`, which any scheme meets; the pattern states what it checks.
    Field(json_schema_extra={"pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"}),
]
"""An http(s) URL (at most 2083 characters)."""

M = TypeVar("M", bound=BaseModel)


def _per_task(base: type[M], spec: TaskSpec, doc: str, examples: list[Any], **fields: Any) -> type[M]:
    """``base`` with ``fields`` (name -> (type, Field)) redeclared for ``spec``: a model of its own, named after
    the task in the OpenAPI document (``sentiment`` -> ``SentimentRequest``)."""
    name = "".join(part.capitalize() for part in spec.name.replace("-", "_").split("_")) + "Request"
    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__doc__": doc,
        "__annotations__": {field: annotation for field, (annotation, _) in fields.items()},
        "model_config": ConfigDict(json_schema_extra={"examples": examples}),
        **{field: info for field, (_, info) in fields.items()},
    }
    return cast(type[M], type(name, (base,), namespace))


class TextRequest(BaseModel):
    """Texts to classify (one prediction per text, in order). Each text task has its own subclass
    (:func:`text_request_model`) with the task's limit on ``texts`` and its models."""

    model_config = ConfigDict(extra="forbid")

    texts: list[Text] = Field(min_length=1)
    user_id: UserId | None = None
    model: str | None = None


def text_request_model(spec: TaskSpec, variants: Sequence[TaskSpec] = ()) -> type[TextRequest]:
    """The request body of ``POST /v1/<spec.name>``: at most ``spec.batching.max_batch_size`` texts of at most
    ``spec.text.max_chars`` characters each, and which of the task's models classifies them: ``spec``'s own (the
    default, the most accurate) or one of ``variants`` (served variants of the task, e.g. ``sentiment_tiny``)."""
    limit = spec.batching.max_batch_size
    max_chars = spec.text.max_chars if spec.text is not None else MAX_TEXT_CHARS
    example: dict[str, Any] = {"texts": list(spec.examples) or ["some text"], "user_id": "ada@example.com"}
    names = (spec.model_name, *(variant.model_name for variant in variants))
    choices = (
        ", ".join(f"`{variant.model_name}` ({variant.variant}: {variant.title})" for variant in variants)
        or "none served"
    )
    model_type: Any = Literal.__getitem__(names)  # the enum of this task's served models
    return _per_task(
        TextRequest,
        spec,
        f"Texts to classify: {spec.title} (one prediction per text, in order).",
        [example],
        texts=(texts_type(max_chars), Field(min_length=1, max_length=limit, description=f"1 to {limit} texts")),
        model=(
            model_type | None,
            Field(
                None,
                description=f"Which model classifies the texts: `{spec.model_name}` (the default when absent or "
                f"null: the most accurate) or a variant: {choices}. Each model's held-out accuracy and latency are "
                "in `GET /v1/models`; the response's `model` names the one that answered",
            ),
        ),
    )


class ImageRequest(BaseModel):
    """Images to classify, given as (presigned) URLs the facade downloads. Each image task has its own
    subclass (:func:`image_request_model`) with the task's limits on ``image_urls`` and ``top_k``."""

    model_config = ConfigDict(extra="forbid")

    image_urls: list[ImageUrl] = Field(min_length=1)
    top_k: int = Field(3, ge=1)
    user_id: UserId | None = None


def image_request_model(spec: TaskSpec) -> type[ImageRequest]:
    """The request body of ``POST /v1/<spec.name>``: at most ``spec.batching.max_batch_size`` URLs, ``top_k`` at
    most the number of labels."""
    limit = spec.batching.max_batch_size
    example: dict[str, Any] = {
        "image_urls": ["https://mtc-uploads.s3.us-east-1.amazonaws.com/uploads/3f2a.jpg?X-Amz-Signature=..."],
        "top_k": min(3, spec.num_labels),
    }
    return _per_task(
        ImageRequest,
        spec,
        f"Images to classify: {spec.title}, given as (presigned) URLs the facade downloads.",
        [example],
        image_urls=(
            list[ImageUrl],
            Field(
                min_length=1,
                max_length=limit,
                description=f"1 to {limit} http(s) URLs, e.g. the get_url of /v1/uploads",
            ),
        ),
        top_k=(
            int,
            Field(min(3, spec.num_labels), ge=1, le=spec.num_labels, description="How many of the best labels to list"),
        ),
    )


class ModelRef(BaseModel):
    """The Triton model and version that served a request."""

    name: str
    version: str


class TextPrediction(BaseModel):
    text_index: int = Field(description="Position of the text in the request")
    label: str = Field(description="Most probable label")
    probabilities: dict[str, float] = Field(description="Probability of every label (softmax; sums to 1)")
    tokens: int = Field(description="Tokens the model read ([CLS] and [SEP] included): at most `max_tokens`")
    text_tokens: int = Field(description="Tokens of the whole text ([CLS] and [SEP] included), before truncation")
    truncated: bool = Field(
        description="The text had more tokens than `max_tokens`: the model read only part of it, cut per the "
        "served version's `truncation` (`head`: its start; `head+tail`: its start and its end)"
    )


class TextTimings(BaseModel):
    tokenize: float = Field(description="Tokenization and padding, ms")
    inference: float = Field(description="Triton round trip (queue + compute + transfer), ms")
    total: float = Field(description="Whole request inside the facade, ms")


def _text_response_examples() -> list[Any]:
    spec = next((spec for spec in TASKS.values() if spec.modality == "text"), None)
    if spec is None:
        return []
    rest = round(0.1 / (spec.num_labels - 1), 3)
    probabilities = {label: 0.9 if label == spec.labels[-1] else rest for label in spec.labels}
    prediction = {
        "text_index": 0,
        "label": spec.labels[-1],
        "probabilities": probabilities,
        "tokens": 17,
        "text_tokens": 17,
        "truncated": False,
    }
    timings = {"tokenize": 0.4, "inference": 9.8, "total": 10.6}
    model = {"name": spec.model_name, "version": "1"}
    return [{"task": spec.name, "model": model, "predictions": [prediction], "timings_ms": timings}]


class TextResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": _text_response_examples()})

    task: str
    model: ModelRef
    predictions: list[TextPrediction]
    timings_ms: TextTimings


class LabelProbability(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    image_index: int = Field(description="Position of the URL in the request")
    label: str
    probabilities: dict[str, float] = Field(description="Probability of every label (sums to 1)")
    top_k: list[LabelProbability] = Field(description="The top_k labels, most probable first")


class ImageTimings(BaseModel):
    fetch: float = Field(description="Downloading every image (concurrently), ms")
    preprocess: float = Field(description="Decoding, resizing and normalising, ms")
    inference: float = Field(description="Triton round trip, ms")
    total: float = Field(description="Whole request inside the facade, ms")


class ImageResponse(BaseModel):
    task: str
    model: ModelRef
    predictions: list[ImagePrediction]
    timings_ms: ImageTimings


class UploadRequest(BaseModel):
    """Ask for a presigned URL to upload one image to S3."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"filename": "photo.jpg", "content_type": "image/jpeg"}]}
    )

    filename: str | None = Field(
        None, min_length=1, max_length=200, description="Original file name (informational; the key is random)"
    )
    content_type: str = Field(
        IMAGE_MEDIA_TYPES[0],
        description="Content type the upload must be sent with: an image format the models' preprocessing decodes",
        json_schema_extra={"enum": list(IMAGE_MEDIA_TYPES)},
    )

    @field_validator("content_type")
    @classmethod
    def _an_image_format(cls, value: str) -> str:  # the check the `enum` above declares
        if value not in IMAGE_MEDIA_TYPES:
            raise ValueError(f"content_type must be one of {', '.join(IMAGE_MEDIA_TYPES)}")
        return value


class UploadResponse(BaseModel):
    """A presigned POST: send ``multipart/form-data`` to ``upload_url`` with every entry of ``fields``,
    then the image as the form field ``file`` (last)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "upload_url": "https://mtc-uploads.s3.amazonaws.com/",
                    "method": "POST",
                    "fields": {
                        "Content-Type": "image/jpeg",
                        "key": "uploads/3f2a.jpg",
                        "x-amz-algorithm": "AWS4-HMAC-SHA256",
                        "x-amz-credential": "...",
                        "x-amz-date": "20261201T120000Z",
                        "policy": "...",
                        "x-amz-signature": "...",
                    },
                    "get_url": "https://mtc-uploads.s3.amazonaws.com/uploads/3f2a.jpg?X-Amz-Signature=...",
                    "key": "uploads/3f2a.jpg",
                    "expires_in": 300,
                    "max_bytes": 10485760,
                }
            ]
        }
    )

    upload_url: str = Field(description="Where to POST the multipart/form-data upload")
    method: Literal["POST"] = "POST"
    fields: dict[str, str] = Field(
        description="Form fields to send first, unchanged (key, Content-Type, policy and signature); "
        "the image follows as the field `file`"
    )
    get_url: str = Field(description="Presigned GET URL of the same object: pass it to the image routes")
    key: str = Field(description="Object key in the upload bucket")
    expires_in: int = Field(description="Seconds the upload form and the GET URL stay valid")
    max_bytes: int = Field(description="Largest file the upload accepts (S3 refuses larger ones)")


class ConfidenceBucket(BaseModel):
    """One bucket of the top-class probability: the share of the predictions above the previous bucket's bound and
    up to ``le`` (the buckets of the facade's ``mtc_api_top_probability`` histogram)."""

    le: float = Field(description="Upper bound of the bucket (the histogram's `le`)")
    share: float = Field(ge=0, le=1, description="Share of the predictions in the bucket")


class ModelInfo(BaseModel):
    """One task the facade serves: its served model version, that version's labels, the request limits."""

    task: str
    title: str
    modality: Modality
    model: str = Field(description="Triton model name")
    version: str | None = Field(
        description="Version Triton serves and the facade classifies with (the highest ready one); null when not ready"
    )
    labels: list[str] = Field(
        description="Labels of the served version (from its published artifacts: what predictions carry); the task "
        "spec's while no version is served"
    )
    ready: bool = Field(description="Triton serves the model and the served version's artifacts load")
    max_items: int = Field(description="Most texts or images per request (the model's Triton max_batch_size)")
    max_text_chars: int | None = Field(
        None, description="Most characters per text (text tasks; more is 422, and the body limit bounds a request)"
    )
    max_tokens: int | None = Field(
        None, description="Tokens a text is truncated to by the served version (text tasks; null when not ready)"
    )
    truncation: TruncationStrategy | None = Field(
        None,
        description="Which tokens of a longer text the served version reads (text tasks; null when not ready): "
        "`head` the first ones, `head+tail` the first and the last ones",
    )
    examples: list[str] = Field(default_factory=list, description="Example inputs (text tasks)")
    variant_of: str | None = Field(
        None,
        description="The task whose route serves this model when it is a variant (e.g. `sentiment` for "
        '`sentiment_tiny`: send `"model": "sentiment_tiny"` to `POST /v1/sentiment`); null for a task\'s own model',
    )
    variant: str = Field("default", description="`default` for a task's own model; `tiny` for a distilled variant")
    accuracy: float | None = Field(
        None,
        description="Held-out accuracy of the served version's `model.onnx` (its model card, `metrics.json`); null "
        "when not ready or not recorded",
    )
    accuracy_int8: float | None = Field(
        None, description="Held-out accuracy of the served version's int8 file (what CPU hosts serve); null if none"
    )
    latency_p50_ms: float | None = Field(
        None,
        description="Median time of one single-text (or single-image) call of the served version's `model.onnx` "
        "in ONNX Runtime with one thread, model only, on the machine that built it (its model card); null if unknown",
    )
    latency_p50_ms_int8: float | None = Field(None, description="The same for the int8 file; null if none")
    validation_label_mix: dict[str, float] | None = Field(
        None,
        description="Share of each predicted label on the served version's held-out test set (its model card, "
        "`metrics.json`): the reference the dashboard compares live traffic with; null when not ready or not "
        "recorded",
    )
    validation_confidence: list[ConfidenceBucket] | None = Field(
        None,
        description="Share of the served version's held-out test predictions per bucket of the top-class "
        "probability (its model card, `metrics.json`), in the buckets of the facade's `mtc_api_top_probability` "
        "histogram: the reference the dashboard compares the live confidence with; null when not ready or not "
        "recorded (versions published before the exporter recorded it)",
    )


def model_info(spec: TaskSpec) -> ModelInfo:
    """What ``/v1/models`` says of ``spec`` while none of its versions is served (spec values only)."""
    return ModelInfo(
        task=spec.name,
        title=spec.title,
        modality=spec.modality,
        model=spec.model_name,
        version=None,
        labels=list(spec.labels),
        ready=False,
        max_items=spec.batching.max_batch_size,
        max_text_chars=spec.text.max_chars if spec.text is not None else None,
        examples=list(spec.examples),
        variant_of=spec.variant_of,
        variant=spec.variant,
    )


def _models_example() -> dict[str, Any]:
    models = []
    for number, spec in enumerate(TASKS.values()):
        info = model_info(spec)
        if number == 0 and spec.text is not None:  # the first one served
            text = spec.text
            served = {"version": "1", "ready": True, "max_tokens": text.max_length, "truncation": text.truncation}
            info = info.model_copy(update=served)
        models.append(info.model_dump())
    return {"models": models}


class ModelsResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_models_example()]})

    models: list[ModelInfo]


class ModelStats(BaseModel):
    """Counters Triton keeps for one model version since it was loaded."""

    task: str
    model: str
    version: str
    ready: bool
    request_success: int
    request_failure: int
    inference_count: int = Field(description="Rows inferred (a batch of 8 counts 8)")
    execution_count: int = Field(description="Model executions (a batch of 8 counts 1)")
    avg_queue_ms: float = Field(description="Mean time a request waited in Triton's batching queue")
    avg_compute_ms: float = Field(description="Mean input + infer + output time per request")
    batch_sizes: dict[str, int] = Field(description="Executed batch size -> number of executions")


class StatsResponse(BaseModel):
    models: list[ModelStats]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    triton: bool = Field(description="Triton answers /v2/health/ready")
    models: dict[str, bool] = Field(description="Task -> its model is ready")
