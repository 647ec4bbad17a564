"""The dashboard's only network code: an async client of the facade's REST API.

Every failure leaves this module as a :class:`DashboardClientError` whose ``message`` is a sentence a
user can read (the facade's RFC 9457 ``title`` and ``detail``, or what went wrong on the wire), so the
page never has to show a stack trace. The image upload goes straight to storage through the presigned
URL the facade hands out: the dashboard never holds storage credentials.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

M = TypeVar("M", bound=BaseModel)


class DashboardClientError(Exception):
    """A request failed; ``message`` says why in words a user understands."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ApiUnavailable(DashboardClientError):
    """The facade could not be reached at all (refused, DNS, connect timeout)."""


class ApiError(DashboardClientError):
    """The facade answered with an error (problem+json) or with a body this client cannot read."""

    def __init__(self, message: str, *, status: int | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class UploadError(DashboardClientError):
    """The image was not uploaded: larger than the upload limit, or storage refused or did not answer."""


# An S3 error body is well under 1 KiB; reading more of a refusal is never needed.
STORAGE_ERROR_BYTES = 16 * 1024
# What an S3 error code means for someone uploading a photo (others are quoted with storage's own message).
STORAGE_ERRORS = {
    "EntityTooLarge": "the image is larger than the upload limit",
    "EntityTooSmall": "the image is smaller than storage accepts",
    "AccessDenied": "the upload link was refused (it may have expired)",
    "ExpiredToken": "the upload link expired; try again",
    "SignatureDoesNotMatch": "the upload link's signature does not match",
    "InvalidPolicyDocument": "the upload link's policy is invalid",
    "NoSuchBucket": "the upload bucket does not exist",
}


class _Response(BaseModel):
    # Extra fields are ignored so that the facade can add information without breaking the page;
    # versions may arrive as numbers or strings.
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)


class ModelRef(_Response):
    name: str
    version: str | None = None


class TextPrediction(_Response):
    text_index: int
    label: str
    probabilities: dict[str, float]
    tokens: int | None = Field(None, description="Tokens the model read")
    text_tokens: int | None = Field(None, description="Tokens of the whole text, before truncation")
    truncated: bool = Field(False, description="The model read only part of the text")


class TextResult(_Response):
    """Response of ``POST /v1/<text task>``."""

    task: str
    model: ModelRef
    predictions: list[TextPrediction]
    timings_ms: dict[str, float] = Field(default_factory=dict)


class LabelProbability(_Response):
    label: str
    probability: float


class ImagePrediction(_Response):
    image_index: int
    label: str
    probabilities: dict[str, float]
    top_k: list[LabelProbability]


class ImageResult(_Response):
    """Response of ``POST /v1/<image task>``."""

    task: str
    model: ModelRef
    predictions: list[ImagePrediction]
    timings_ms: dict[str, float] = Field(default_factory=dict)


class UploadTicket(_Response):
    """Response of ``POST /v1/uploads``: a presigned POST (form fields + size limit) and the URL to classify.

    The form goes to ``upload_url`` as multipart/form-data: every entry of ``fields`` (the signed policy),
    then the file as ``file``. Storage itself refuses a file above the policy's size limit, ``max_bytes``.
    """

    upload_url: str
    method: Literal["POST"]
    fields: dict[str, str]
    get_url: str
    key: str
    expires_in: int
    max_bytes: int = Field(gt=0)


class ConfidenceBucket(_Response):
    """One bucket of the top-class probability on the held-out test set: its upper bound and share."""

    le: float
    share: float = Field(ge=0, le=1)


class ModelInfo(_Response):
    """One task the facade serves (``GET /v1/models``): the page builds a tab from each."""

    task: str
    title: str
    modality: str = Field(description="text or image; a tab of another kind is not built")
    model: str = ""
    version: str | None = None
    labels: list[str] = Field(min_length=1)
    ready: bool = False
    max_items: int = Field(gt=0, description="Most texts or images per request")
    max_text_chars: int | None = Field(None, gt=0, description="Most characters per text (text tasks)")
    examples: list[str] = Field(default_factory=list, description="Example inputs, when the facade lists them")
    validation_label_mix: dict[str, float] | None = Field(
        None, description="Share of each predicted label on the served version's held-out test set (its card)"
    )
    validation_confidence: list[ConfidenceBucket] | None = Field(
        None, description="Share of the served version's held-out predictions per top-class probability bucket"
    )
    variant_of: str | None = Field(None, description="The task whose tab offers this model (a variant); None: a task")
    variant: str = "default"
    accuracy: float | None = Field(None, description="Held-out accuracy of the served version (its card)")
    latency_p50_ms_int8: float | None = Field(None, description="One-text model time of its int8 file (its card)")


class ModelStats(_Response):
    """Serving statistics of one model, from Triton through the facade's ``GET /v1/stats``."""

    task: str
    version: str | None = None
    ready: bool = False
    request_success: int = 0
    request_failure: int = 0
    inference_count: int = 0
    execution_count: int = 0
    avg_queue_ms: float = 0.0
    avg_compute_ms: float = 0.0
    batch_sizes: dict[str, int] = Field(default_factory=dict)


class _ModelList(_Response):
    models: list[ModelInfo]


class _StatsList(_Response):
    models: list[ModelStats]


class Health(_Response):
    """What ``GET /readyz`` says: the facade is up, and whether it can serve."""

    ready: bool
    detail: str = ""


class JobFailure(_Response):
    type: str = ""
    title: str = ""
    detail: str = ""


class JobInfo(_Response):
    """A batch job (``GET /v1/jobs/{id}``): its state and progress."""

    id: str
    state: str
    task: str
    column: str = ""
    input: str = ""
    created_at: str = ""
    rows_total: int | None = None
    rows_done: int = 0
    rows_failed: int = 0
    rows_per_s: float = 0.0
    eta_s: float | None = None
    labels: dict[str, int] = Field(default_factory=dict)
    error: JobFailure | None = None
    result_url: str | None = None


class _JobList(_Response):
    jobs: list[JobInfo]


class JobUploadTicket(UploadTicket):
    """Response of ``POST /v1/jobs/uploads``: a presigned POST for a job's input file, and that file as a job input."""

    input: str


class FacadeAPI(Protocol):
    """What the page needs from the facade; :class:`FacadeClient` is the real one, tests use fakes."""

    @property
    def base_url(self) -> str: ...

    async def classify_texts(self, task: str, texts: list[str], model: str | None = None) -> TextResult: ...

    async def upload_image(self, filename: str, content_type: str, data: bytes) -> str: ...

    async def classify_images(self, task: str, image_urls: list[str], top_k: int) -> ImageResult: ...

    async def models(self) -> list[ModelInfo]: ...

    async def stats(self) -> list[ModelStats]: ...

    async def metrics(self) -> str: ...

    async def health(self) -> Health: ...

    async def upload_job_input(self, filename: str, content_type: str, data: bytes) -> str: ...

    async def start_job(self, input_uri: str, task: str, column: str) -> JobInfo: ...

    async def jobs(self, limit: int) -> list[JobInfo]: ...

    async def cancel_job(self, job_id: str) -> JobInfo: ...

    async def resume_job(self, job_id: str) -> JobInfo: ...

    async def job_result_url(self, job_id: str) -> str: ...

    async def aclose(self) -> None: ...


def problem_message(response: httpx.Response) -> ApiError:
    """Turn an error response (RFC 9457 problem+json, or anything else) into a readable :class:`ApiError`."""
    title, detail, kind = "", "", None
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        title = str(body.get("title") or "")
        kind = str(body["type"]) if body.get("type") else None
        raw_detail = body.get("detail")
        if isinstance(raw_detail, list):
            # FastAPI's default validation body: a list of {"loc": [...], "msg": "..."}.
            detail = "; ".join(_validation_item(item) for item in raw_detail)
        elif raw_detail:
            detail = str(raw_detail)
    if not title:
        title = response.reason_phrase or "Error"
    message = f"{title} (HTTP {response.status_code})"
    if detail and detail != title:
        message += f": {detail}"
    return ApiError(message, status=response.status_code, kind=kind)


def _validation_item(item: object) -> str:
    if isinstance(item, dict):
        where = ".".join(str(part) for part in item.get("loc", []) if part != "body")
        return f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", ""))
    return str(item)


class FacadeClient:
    """Async client of the facade (one per browser session: it owns a connection pool)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self._base_url = base_url.rstrip("/")
        # Only the facade gets the key; the presigned storage URL is sent without it (see upload_image).
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Idle connections are dropped before uvicorn's 5 s keep-alive timeout closes them on the server
        # side, so that a periodic request never lands on a connection that is being closed.
        limits = httpx.Limits(keepalive_expiry=2.0)
        self._http = httpx.AsyncClient(base_url=self._base_url, timeout=timeout_s, transport=transport, limits=limits)

    @property
    def base_url(self) -> str:
        return self._base_url

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, body: object | None = None) -> httpx.Response:
        try:
            try:
                response = await self._http.request(method, path, json=body, headers=self._auth)
            except httpx.RemoteProtocolError:
                # The server closed a pooled connection just as it was reused; every call here is
                # safe to repeat (classification has no side effects), so try once on a fresh one.
                response = await self._http.request(method, path, json=body, headers=self._auth)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ApiUnavailable(f"The API at {self._base_url} is unreachable ({_reason(exc)}).") from exc
        except httpx.TimeoutException as exc:
            raise ApiError(f"The API at {self._base_url} did not answer in time.") from exc
        except httpx.HTTPError as exc:
            raise ApiUnavailable(f"The API at {self._base_url} failed: {_reason(exc)}.") from exc
        if response.status_code >= 400:
            raise problem_message(response)
        return response

    @staticmethod
    def _parse(model: type[M], response: httpx.Response) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise ApiError(
                f"The API sent a response the dashboard cannot read ({exc.error_count()} problem(s) "
                f"in {response.request.url.path})."
            ) from exc

    async def classify_texts(self, task: str, texts: list[str], model: str | None = None) -> TextResult:
        """``POST /v1/<task>`` with ``texts`` (and ``model``: one of the task's models, None the default); one
        prediction per text."""
        body: dict[str, object] = {"texts": texts} if model is None else {"texts": texts, "model": model}
        response = await self._request("POST", f"/v1/{task}", body)
        return self._parse(TextResult, response)

    async def upload_image(self, filename: str, content_type: str, data: bytes) -> str:
        """Ask for a presigned POST, send the file to storage with it, return the URL to classify.

        A file above the ticket's ``max_bytes`` is refused here, before any byte is sent; a refusal by
        storage (its XML error, e.g. ``EntityTooLarge``) becomes a readable :class:`UploadError`.
        """
        response = await self._request("POST", "/v1/uploads", {"filename": filename, "content_type": content_type})
        ticket = self._parse(UploadTicket, response)
        await self._store(ticket, filename, content_type, data, "image", "the largest image you can upload")
        return ticket.get_url

    async def _store(
        self, ticket: UploadTicket, filename: str, content_type: str, data: bytes, noun: str, cap: str
    ) -> None:
        """Send ``data`` to storage with the ticket's presigned POST form; refuse it first when above the ticket's
        ``max_bytes`` (``cap`` names that limit in the message), and make a refusal by storage readable."""
        if len(data) > ticket.max_bytes:
            raise UploadError(f"{filename} is {human_size(len(data))}; {cap} is {human_size(ticket.max_bytes)}.")
        # The policy fields first, the file last: S3 ignores form fields that follow the file.
        form = {"file": (filename, data, content_type)}
        try:
            # No Authorization header: the API key is for the facade only, the form carries its own signature.
            async with self._http.stream("POST", ticket.upload_url, data=ticket.fields, files=form) as stored:
                if stored.status_code < 300:
                    return
                body = await _read_at_most(stored, STORAGE_ERROR_BYTES)
        except httpx.HTTPError as exc:
            raise UploadError(f"Uploading the {noun} to storage failed ({_reason(exc)}).") from exc
        raise storage_error(stored.status_code, body, ticket.max_bytes)

    async def classify_images(self, task: str, image_urls: list[str], top_k: int) -> ImageResult:
        """``POST /v1/<task>`` with image URLs the facade can fetch; the ``top_k`` best labels of each."""
        response = await self._request("POST", f"/v1/{task}", {"image_urls": image_urls, "top_k": top_k})
        return self._parse(ImageResult, response)

    async def models(self) -> list[ModelInfo]:
        """``GET /v1/models``: each task's title, modality, labels, request limit, version and readiness."""
        return self._parse(_ModelList, await self._request("GET", "/v1/models")).models

    async def stats(self) -> list[ModelStats]:
        """``GET /v1/stats``: Triton's per-model counters, averages and executed batch sizes."""
        return self._parse(_StatsList, await self._request("GET", "/v1/stats")).models

    async def metrics(self) -> str:
        """``GET /metrics``: the facade's Prometheus text (requests, latency histograms, in flight)."""
        return (await self._request("GET", "/metrics")).text

    async def health(self) -> Health:
        """``GET /readyz``: 200 means ready; 503 means up but not ready (for example Triton is down)."""
        try:
            await self._request("GET", "/readyz")
        except ApiError as exc:
            if exc.status == 503:
                return Health(ready=False, detail=exc.message)
            raise
        return Health(ready=True)

    # --- batch jobs ---

    async def upload_job_input(self, filename: str, content_type: str, data: bytes) -> str:
        """Upload a job's input file through the presigned POST of ``/v1/jobs/uploads``; return it as a job input."""
        response = await self._request(
            "POST", "/v1/jobs/uploads", {"filename": filename[:200] or "input", "content_type": content_type}
        )
        ticket = self._parse(JobUploadTicket, response)
        await self._store(ticket, filename, content_type, data, "file", "the largest file a job takes")
        return ticket.input

    async def start_job(self, input_uri: str, task: str, column: str) -> JobInfo:
        """``POST /v1/jobs``: the job, queued (202)."""
        response = await self._request("POST", "/v1/jobs", {"input": input_uri, "task": task, "column": column})
        return self._parse(JobInfo, response)

    async def jobs(self, limit: int) -> list[JobInfo]:
        """``GET /v1/jobs``: the newest jobs, newest first."""
        return self._parse(_JobList, await self._request("GET", f"/v1/jobs?limit={int(limit)}")).jobs

    async def cancel_job(self, job_id: str) -> JobInfo:
        """``DELETE /v1/jobs/{id}``."""
        return self._parse(JobInfo, await self._request("DELETE", f"/v1/jobs/{quote(job_id, safe='')}"))

    async def resume_job(self, job_id: str) -> JobInfo:
        """``POST /v1/jobs/{id}/resume``: a failed or cancelled job, queued again (202)."""
        return self._parse(JobInfo, await self._request("POST", f"/v1/jobs/{quote(job_id, safe='')}/resume"))

    async def job_result_url(self, job_id: str) -> str:
        """The presigned download URL ``GET /v1/jobs/{id}/result`` redirects to (the page links to it)."""
        response = await self._request("GET", f"/v1/jobs/{quote(job_id, safe='')}/result")
        location = str(response.headers.get("location", ""))
        if response.status_code not in (302, 303, 307) or not location.startswith(("http://", "https://")):
            raise ApiError(f"The API did not give a download link for job {job_id} (HTTP {response.status_code}).")
        return location


def storage_error(status: int, body: bytes, max_bytes: int | None = None) -> UploadError:
    """Turn storage's refusal (an S3 ``<Error><Code>..</Code><Message>..</Message></Error>`` body) into words."""
    code, detail = "", ""
    try:
        # ElementTree resolves no external entity, expat >= 2.4.1 bounds entity expansion, and the body is
        # capped (STORAGE_ERROR_BYTES): a hostile error body cannot make this parse expensive.
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        root = None
    if root is not None and root.tag == "Error":
        code = (root.findtext("Code") or "").strip()[:80]
        detail = " ".join((root.findtext("Message") or "").split())[:300]
    explanation = STORAGE_ERRORS.get(code, "")
    if code == "EntityTooLarge" and max_bytes is not None:
        explanation += f" of {human_size(max_bytes)}"
    if detail and explanation:
        explanation += f" ({detail.rstrip('.')})"
    elif detail:
        explanation = detail.rstrip(".")
    message = f"Storage refused the image upload (HTTP {status}{', ' + code if code else ''})"
    return UploadError(f"{message}: {explanation}." if explanation else f"{message}.")


def human_size(size: int) -> str:
    """``512 bytes``, ``12.5 KiB``, ``10.0 MiB``."""
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024 / 1024:.1f} MiB"


async def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk[: limit - len(body)]
        if len(body) >= limit:
            break
    return bytes(body)


def _reason(exc: Exception) -> str:
    text = str(exc).strip().rstrip(".")
    return text or type(exc).__name__


class PrometheusClient:
    """Queries to a Prometheus server (``/api/v1/query_range`` for the Monitoring tab's live charts, ``/api/v1/query``
    for its drift panel)."""

    def __init__(
        self, base_url: str, *, timeout_s: float = 10.0, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self._base_url, timeout=timeout_s, transport=transport)

    @property
    def base_url(self) -> str:
        return self._base_url

    async def aclose(self) -> None:
        await self._http.aclose()

    async def query(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        """Each series of the instant query ``expr`` at ``at`` (epoch seconds): its labels and value; raises
        :class:`ApiUnavailable` when Prometheus cannot be reached or refuses the query."""
        body = await self._get("/api/v1/query", expr, {"query": expr, "time": f"{at:.3f}"})
        try:
            return [(dict(series.get("metric", {})), float(series["value"][1])) for series in body["data"]["result"]]
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise ApiUnavailable(f"Prometheus at {self._base_url} answered {expr!r} with no vector: {exc!r}") from exc

    async def query_range(
        self, expr: str, start: float, end: float, step_s: float
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """Each series of ``expr`` between ``start`` and ``end`` (epoch seconds): its labels and (time, value)
        points; raises :class:`ApiUnavailable` when Prometheus cannot be reached or refuses the query."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"}
        body = await self._get("/api/v1/query_range", expr, params)
        return [
            (dict(series.get("metric", {})), [(float(t), float(v)) for t, v in series.get("values", [])])
            for series in body["data"]["result"]
        ]

    async def _get(self, path: str, expr: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            response = await self._http.get(path, params=params)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ApiUnavailable(f"Prometheus at {self._base_url} is unreachable ({_reason(exc)}).") from exc
        if response.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", response.status_code) if isinstance(body, dict) else response.status_code
            raise ApiUnavailable(f"Prometheus at {self._base_url} refused {expr!r}: {error}")
        return body
