"""What the page knows, without any widget: one state object per tab plus the facade's connection state.

The states call the facade through a :class:`~dashboard.client.FacadeAPI` and turn every failure into a
readable ``error`` string; the views (``dashboard.views``) only display these parameters. Tests drive the
states with a fake client and no browser.
"""

from __future__ import annotations

import base64
import mimetypes
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import param

from dashboard.client import (
    ApiUnavailable,
    DashboardClientError,
    FacadeAPI,
    ImageResult,
    ModelInfo,
    ModelStats,
    PrometheusClient,
    TextResult,
)
from dashboard.drift import (
    DRIFT_WINDOW_S,
    DriftHistory,
    DriftRow,
    Reference,
    drift_rows,
    drift_sample,
    prometheus_counts,
)
from dashboard.live import EMPTY_CHARTS, LiveCharts, LiveHistory, metric_samples, prometheus_charts, snapshot
from dashboard.settings import DashboardSettings
from taskspec import TASKS

T = TypeVar("T")

CONNECTION_UNKNOWN = "unknown"
CONNECTION_UP = "up"
CONNECTION_NOT_READY = "not_ready"
CONNECTION_DOWN = "down"


def split_texts(text: str) -> list[str]:
    """One text per non-blank line, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


class Connection(param.Parameterized):
    """Whether the facade is reachable and ready; every tab reports what it sees here."""

    status = param.Selector[str](
        default=CONNECTION_UNKNOWN, objects=[CONNECTION_UNKNOWN, CONNECTION_UP, CONNECTION_NOT_READY, CONNECTION_DOWN]
    )
    message = param.String(default="", doc="Why the API is down or not ready; empty when it is up")

    def __init__(self, client: FacadeAPI, **params: object) -> None:
        super().__init__(**params)  # type: ignore[no-untyped-call]
        self.client = client

    def mark_up(self) -> None:
        self.param.update(status=CONNECTION_UP, message="")

    def mark_reachable(self) -> None:
        """A request just succeeded: the API is not down (readiness is left to the next check)."""
        if self.status in (CONNECTION_DOWN, CONNECTION_UNKNOWN):
            self.mark_up()

    def mark_down(self, message: str) -> None:
        self.param.update(status=CONNECTION_DOWN, message=message)

    async def check(self) -> None:
        """Ask the facade's readiness endpoint and record the answer (never raises)."""
        try:
            health = await self.client.health()
        except ApiUnavailable as exc:
            self.mark_down(exc.message)
            return
        except DashboardClientError as exc:
            self.param.update(status=CONNECTION_NOT_READY, message=exc.message)
            return
        if health.ready:
            self.mark_up()
        else:
            self.param.update(status=CONNECTION_NOT_READY, message=health.detail or "The API is not ready yet.")


class RequestState(param.Parameterized):
    """A tab that sends requests: a loading flag and the last error as a sentence."""

    loading = param.Boolean(default=False, doc="A request is running")
    error = param.String(default="", doc="Readable message of the last failure; empty after a success")

    def __init__(self, client: FacadeAPI, connection: Connection, **params: object) -> None:
        super().__init__(**params)  # type: ignore[no-untyped-call]
        self.client = client
        self.connection = connection

    async def _call(self, request: Callable[[], Awaitable[T]]) -> T | None:
        """Run one request with the loading flag set; on failure store the message and return None."""
        self.param.update(loading=True, error="")
        try:
            result = await request()
        except ApiUnavailable as exc:
            self.connection.mark_down(exc.message)
            self.error = exc.message
            return None
        except DashboardClientError as exc:
            self.error = exc.message
            return None
        finally:
            self.loading = False
        self.connection.mark_reachable()
        return result


DEFAULT_MAX_TEXT_CHARS = 100_000
"""The text box's limit when the facade does not list the task's ``max_text_chars``."""


class TextTaskState(RequestState):
    """A text tab: texts in, one label and probabilities per text out."""

    text = param.String(default="", doc="The text area: one text per line")
    texts = param.List(default=[], item_type=str, doc="The texts of the shown result, in order")
    result = param.ClassSelector(class_=TextResult, default=None, allow_None=True)
    notice = param.String(default="", doc="What the user should know about the shown result (e.g. a cut paste)")

    model = param.Selector[str](default="", objects=[""], doc="The model that classifies: the task's or a variant")

    def __init__(
        self, task: ModelInfo, client: FacadeAPI, connection: Connection, variants: Sequence[ModelInfo] = ()
    ) -> None:
        super().__init__(client, connection)
        self.task = task
        self.models = {info.model or info.task: info for info in (task, *variants)}
        """The models a request may choose (``model`` of the request): the task's own first, then its variants."""
        self.param.model.objects = list(self.models)
        self.model = next(iter(self.models))
        self.examples = examples_for(task)
        self.max_chars = task.max_text_chars or DEFAULT_MAX_TEXT_CHARS
        """Most characters per text, and what the text box holds (a longer paste is cut by the browser)."""

    async def classify(self) -> None:
        """Classify every line of ``text``; keeps the previous result when the request fails."""
        texts = split_texts(self.text)
        if not texts:
            self.error = "Type a text to classify (one per line for several)."
            return
        if len(texts) > self.task.max_items:
            self.error = f"At most {self.task.max_items} texts at once; you typed {len(texts)} lines."
            return
        too_long = [i + 1 for i, text in enumerate(texts) if len(text) > self.max_chars]
        if too_long:
            self.error = f"At most {self.max_chars:,} characters per text; text {too_long[0]} is longer."
            return
        model = None if self.model == (self.task.model or self.task.task) else self.model  # default: say nothing
        result = await self._call(lambda: self.client.classify_texts(self.task.task, texts, model))
        if result is not None:
            # The browser's text box cuts a paste at its limit without a word: say so when the box is full.
            full = len(self.text) >= self.max_chars
            notice = (
                f"The text box holds at most {self.max_chars:,} characters: anything pasted past that was cut."
                if full
                else ""
            )
            self.param.update(texts=texts, result=result, notice=notice)

    async def classify_example(self, index: int) -> None:
        """Put example ``index`` of the task in the text area and classify it."""
        self.text = self.examples[index]
        await self.classify()


class ImageTaskState(RequestState):
    """An image tab: an uploaded file or a pasted URL in, the top-k labels out."""

    image_url = param.String(default="", doc="A pasted http(s) image URL")
    top_k = param.Integer(default=1, bounds=(1, None), doc="How many labels to list (at most the task's labels)")
    image_src = param.String(default="", doc="What the page shows as the classified image (data: URL or http URL)")
    image_name = param.String(default="")
    result = param.ClassSelector(class_=ImageResult, default=None, allow_None=True)

    def __init__(self, task: ModelInfo, client: FacadeAPI, connection: Connection, top_k: int = 3) -> None:
        super().__init__(client, connection)
        self.task = task
        # The facade lists at most every label of the task.
        self.param.top_k.bounds = (1, len(task.labels))
        self.top_k = min(top_k, len(task.labels))

    async def classify_file(self, filename: str, data: bytes, content_type: str | None = None) -> None:
        """Upload the file through a presigned POST, then classify the stored image.

        Which image types and sizes are accepted is the facade's to say: it refuses other types when asked
        for an upload, and its upload ticket's ``max_bytes`` is enforced before sending (and by storage).
        """
        if not data:
            self.error = f"{filename or 'The file'} is empty."
            return
        mime = content_type or mimetypes.guess_type(filename)[0] or ""
        if not mime.startswith("image/"):
            self.error = f"{filename} is not an image; choose a photo (for example a JPEG or PNG file)."
            return

        async def upload_and_classify() -> ImageResult:
            get_url = await self.client.upload_image(filename, mime, data)
            return await self.client.classify_images(self.task.task, [get_url], self.top_k)

        result = await self._call(upload_and_classify)
        if result is not None:
            source = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
            self.param.update(result=result, image_src=source, image_name=filename)

    async def classify_url(self) -> None:
        """Classify the image at the pasted URL (the facade fetches it)."""
        url = self.image_url.strip()
        if not url.startswith(("http://", "https://")):
            self.error = "Paste an image URL starting with http:// or https://."
            return
        result = await self._call(lambda: self.client.classify_images(self.task.task, [url], self.top_k))
        if result is not None:
            self.param.update(result=result, image_src=url, image_name=url.rsplit("/", 1)[-1].split("?", 1)[0])


TaskState = TextTaskState | ImageTaskState


def examples_for(task: ModelInfo) -> list[str]:
    """The example inputs of a task: the facade's, or else those of the task spec of that name, if any.

    ``/v1/models`` does not list examples yet; the task spec is the same declaration the facade reads.
    """
    if task.examples:
        return list(task.examples)
    spec = TASKS.get(task.task)
    return list(spec.examples) if spec is not None else []


class MonitoringState(RequestState):
    """The Monitoring tab: Triton's per-model statistics and the live time series (last 15 minutes), refreshed
    periodically."""

    stats = param.List(default=[], item_type=ModelStats)
    updated_at = param.String(default="", doc="Wall-clock time of the last successful refresh")
    live = param.ClassSelector(class_=LiveCharts, default=EMPTY_CHARTS, doc="The live charts' series")
    live_source = param.String(default="", doc="Where the live charts come from, in words")
    drift = param.List(default=[], item_type=DriftRow, doc="The drift panel: the last hour against each model card")
    drift_source = param.String(default="", doc="Where the drift panel's counts come from, in words")
    drift_span_s = param.Number(default=0.0, doc="Seconds the drift panel's counts cover (at most an hour)")

    def __init__(
        self,
        client: FacadeAPI,
        connection: Connection,
        prometheus: PrometheusClient | None = None,
        step_s: float = 5.0,
        **params: object,
    ) -> None:
        super().__init__(client, connection, **params)
        self.prometheus = prometheus
        self.step_s = step_s
        self.history = LiveHistory()
        self.drift_history = DriftHistory()
        self.references: dict[str, Reference] = {}  # served version and card of each ready task (once listed)
        self.tasks: set[str] = set()  # task routes to chart (the facade's tasks, once listed)
        self.clock: Callable[[], float] = time.time  # when a sample is taken (tests set their own)

    async def refresh(self) -> None:
        """Fetch ``/v1/stats`` and ``/metrics`` and add a sample to the live series; keeps the last figures (and
        says so) when it fails."""
        stats = await self._call(self.client.stats)
        if stats is None:
            return
        text = await self._call(self.client.metrics)
        now = self.clock()
        if text is not None:
            tasks = self.tasks | {row.task for row in stats}
            samples = metric_samples(text)  # parsed once for both
            self.history.add(snapshot(now, samples, stats, tasks))
            self.drift_history.add(drift_sample(now, samples))
        live, source = self.history.charts(), "sampled by this page since it opened"
        if self.prometheus is not None:
            try:
                live = await prometheus_charts(self.prometheus, now, self.step_s)
                source = f"from Prometheus at {self.prometheus.base_url}"
            except ApiUnavailable as exc:
                source = f"sampled by this page since it opened ({exc.message})"
        counts, span_s = self.drift_history.increases(), self.drift_history.span_s
        drift_source = "sampled by this page since it opened"
        if self.prometheus is not None:
            try:
                counts, span_s = await prometheus_counts(self.prometheus, now), DRIFT_WINDOW_S
                drift_source = f"from Prometheus at {self.prometheus.base_url}"
            except ApiUnavailable as exc:
                drift_source = f"sampled by this page since it opened ({exc.message})"
        self.param.update(
            stats=stats,
            live=live,
            live_source=source,
            drift=drift_rows(counts, self.references),
            drift_source=drift_source,
            drift_span_s=span_s,
            updated_at=time.strftime("%H:%M:%S"),
        )


class DashboardState(param.Parameterized):
    """Every state of one browser session, sharing one client and one connection state.

    The task tabs are not known until the facade lists its models (:meth:`load_tasks`): a task declared on
    the facade's side gets a tab here with no edit to the dashboard.
    """

    loaded = param.Boolean(default=False, doc="The facade listed its models and every task has a state")
    models_error = param.String(default="", doc="Why the list of models could not be read; empty otherwise")

    def __init__(
        self, client: FacadeAPI, settings: DashboardSettings, prometheus: PrometheusClient | None = None
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.client = client
        self.settings = settings
        self.connection = Connection(client)
        self.monitoring = MonitoringState(client, self.connection, prometheus, step_s=settings.stats_interval_s)
        self.tasks: dict[str, TaskState] = {}
        self.skipped: list[ModelInfo] = []

    async def load_tasks(self) -> bool:
        """Ask ``/v1/models`` and make a state per text or image task; on failure set ``models_error``.

        Once loaded, the list is not asked again in this session (a task the facade adds later appears in
        sessions opened after that). Tasks of another modality are listed in ``skipped``.
        """
        try:
            models = await self.client.models()
        except ApiUnavailable as exc:
            self.connection.mark_down(exc.message)
            self.models_error = exc.message
            return False
        except DashboardClientError as exc:
            self.models_error = exc.message
            return False
        self.connection.mark_reachable()
        for info in models:
            if info.variant_of is not None:
                continue  # a variant is a choice in its task's tab, not a tab
            if info.modality == "text":
                variants = [other for other in models if other.variant_of == info.task]
                self.tasks[info.task] = TextTaskState(info, self.client, self.connection, variants)
            elif info.modality == "image":
                self.tasks[info.task] = ImageTaskState(
                    info, self.client, self.connection, top_k=self.settings.default_top_k
                )
            else:
                self.skipped.append(info)
        self.monitoring.tasks = set(self.tasks)
        self.monitoring.references = {
            info.task: reference(info) for info in models if info.version is not None and info.task in self.tasks
        }
        self.param.update(loaded=True, models_error="")
        return True


def reference(info: ModelInfo) -> Reference:
    """What the drift panel compares a served task with: its version, labels and model card figures."""
    assert info.version is not None
    confidence = None
    if info.validation_confidence is not None:
        confidence = {bucket.le: bucket.share for bucket in info.validation_confidence}
    return Reference(info.version, info.labels, info.validation_label_mix, confidence)
