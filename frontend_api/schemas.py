"""Request and response bodies of the REST API (the contract the dashboard and clients use)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, HttpUrl

from taskspec import DISASTER, POSE, POSE_LABELS, SENTIMENT

MAX_TEXTS = 64
"""Texts per request: one request never exceeds the text models' Triton max_batch_size."""
MAX_TEXT_CHARS = 5000
"""Characters per text; tokens past the model's maximum length are truncated anyway."""
MAX_IMAGES = 16
"""Images per request: the pose model's Triton max_batch_size."""
UPLOAD_CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp")


def _check_text(text: str) -> str:
    if not text.strip():
        raise ValueError("text must contain at least one non-whitespace character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from "\ud800" escapes: the tokenizer cannot take them
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return text


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_check_text)]


class TextRequest(BaseModel):
    """Texts to classify (one prediction per text, in order)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"texts": list(SENTIMENT.examples), "user_id": "ada@example.com"}]},
    )

    texts: list[Text] = Field(min_length=1, max_length=MAX_TEXTS, description="1 to 64 non-empty texts")
    user_id: EmailStr | None = Field(None, description="Caller's e-mail address (optional; for auditing)")


class ModelRef(BaseModel):
    """The Triton model and version that served a request."""

    name: str
    version: str


class TextPrediction(BaseModel):
    text_index: int = Field(description="Position of the text in the request")
    label: str = Field(description="Most probable label")
    probabilities: dict[str, float] = Field(description="Probability of every label (softmax; sums to 1)")


class TextTimings(BaseModel):
    tokenize: float = Field(description="Tokenization and padding, ms")
    inference: float = Field(description="Triton round trip (queue + compute + transfer), ms")
    total: float = Field(description="Whole request inside the facade, ms")


class TextResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "task": "sentiment",
                    "model": {"name": "sentiment", "version": "1"},
                    "predictions": [
                        {"text_index": 0, "label": "positive", "probabilities": {"negative": 0.1, "positive": 0.9}}
                    ],
                    "timings_ms": {"tokenize": 0.4, "inference": 9.8, "total": 10.6},
                }
            ]
        }
    )

    task: str
    model: ModelRef
    predictions: list[TextPrediction]
    timings_ms: TextTimings


class PoseRequest(BaseModel):
    """Images to classify, given as (presigned) URLs the facade downloads."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "image_urls": [
                        "https://mtc-uploads.s3.us-east-1.amazonaws.com/uploads/3f2a.jpg?X-Amz-Signature=..."
                    ],
                    "top_k": 3,
                }
            ]
        },
    )

    image_urls: list[HttpUrl] = Field(
        min_length=1, max_length=MAX_IMAGES, description="1 to 16 http(s) URLs, e.g. the get_url of /v1/uploads"
    )
    top_k: int = Field(3, ge=1, le=len(POSE_LABELS), description="How many of the best labels to list")
    user_id: EmailStr | None = Field(None, description="Caller's e-mail address (optional; for auditing)")


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


class PoseResponse(BaseModel):
    task: Literal["pose"] = "pose"
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
    content_type: Literal["image/jpeg", "image/png", "image/webp"] = Field(
        "image/jpeg", description="Content type the upload must be sent with"
    )


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
    get_url: str = Field(description="Presigned GET URL of the same object: pass it to /v1/pose")
    key: str = Field(description="Object key in the upload bucket")
    expires_in: int = Field(description="Seconds the upload form and the GET URL stay valid")
    max_bytes: int = Field(description="Largest file the upload accepts (S3 refuses larger ones)")


class ModelInfo(BaseModel):
    task: str
    title: str
    modality: Literal["text", "image"]
    model: str = Field(description="Triton model name")
    version: str | None = Field(description="Version Triton serves (the highest ready one); null when not ready")
    labels: list[str]
    ready: bool
    max_items: int = Field(description="Most texts or images per request")


class ModelsResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "models": [
                        {
                            "task": "disaster",
                            "title": DISASTER.title,
                            "modality": "text",
                            "model": "disaster",
                            "version": "1",
                            "labels": list(DISASTER.labels),
                            "ready": True,
                            "max_items": MAX_TEXTS,
                        },
                        {
                            "task": "pose",
                            "title": POSE.title,
                            "modality": "image",
                            "model": "pose",
                            "version": None,
                            "labels": list(POSE.labels),
                            "ready": False,
                            "max_items": MAX_IMAGES,
                        },
                    ]
                }
            ]
        }
    )

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
