"""What the page knows, without any widget: one state object per tab plus the facade's connection state.

The states call the facade through a :class:`~dashboard.client.FacadeAPI` and turn every failure into a
readable ``error`` string; the views (``dashboard.views``) only display these parameters. Tests drive the
states with a fake client and no browser.
"""

from __future__ import annotations

import base64
import mimetypes
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import param

from dashboard.client import (
    ApiUnavailable,
    DashboardClientError,
    FacadeAPI,
    ModelStats,
    PoseResult,
    TextResult,
)
from dashboard.settings import DashboardSettings
from taskspec import TaskSpec

T = TypeVar("T")

CONNECTION_UNKNOWN = "unknown"
CONNECTION_UP = "up"
CONNECTION_NOT_READY = "not_ready"
CONNECTION_DOWN = "down"

# The image types the facade's upload endpoint signs URLs for.
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")


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


class TextTaskState(RequestState):
    """The Sentiment and Disaster tweets tabs: texts in, one label and probabilities per text out."""

    text = param.String(default="", doc="The text area: one text per line")
    texts = param.List(default=[], item_type=str, doc="The texts of the shown result, in order")
    result = param.ClassSelector(class_=TextResult, default=None, allow_None=True)

    def __init__(self, task: TaskSpec, client: FacadeAPI, connection: Connection, max_texts: int = 64) -> None:
        super().__init__(client, connection)
        self.task = task
        self.max_texts = max_texts

    async def classify(self) -> None:
        """Classify every line of ``text``; keeps the previous result when the request fails."""
        texts = split_texts(self.text)
        if not texts:
            self.error = "Type a text to classify (one per line for several)."
            return
        if len(texts) > self.max_texts:
            self.error = f"At most {self.max_texts} texts at once; you typed {len(texts)} lines."
            return
        result = await self._call(lambda: self.client.classify_texts(self.task.name, texts))
        if result is not None:
            self.param.update(texts=texts, result=result)

    async def classify_example(self, index: int) -> None:
        """Put example ``index`` of the task in the text area and classify it."""
        self.text = self.task.examples[index]
        await self.classify()


class PoseState(RequestState):
    """The Pose tab: an uploaded file or a pasted URL in, the top-k actions out."""

    image_url = param.String(default="", doc="A pasted http(s) image URL")
    top_k = param.Integer(default=3, bounds=(1, 15))
    image_src = param.String(default="", doc="What the page shows as the classified image (data: URL or http URL)")
    image_name = param.String(default="")
    result = param.ClassSelector(class_=PoseResult, default=None, allow_None=True)

    def __init__(self, client: FacadeAPI, connection: Connection, top_k: int = 3) -> None:
        super().__init__(client, connection, top_k=top_k)

    async def classify_file(self, filename: str, data: bytes, content_type: str | None = None) -> None:
        """Upload the file through a presigned POST, then classify the stored image.

        The size limit is the facade's (its upload ticket's ``max_bytes``): the client refuses a larger
        file before sending it, and storage would refuse it too.
        """
        if not data:
            self.error = f"{filename or 'The file'} is empty."
            return
        mime = content_type or mimetypes.guess_type(filename)[0] or ""
        if mime not in IMAGE_TYPES:
            self.error = f"{filename} is not a JPEG, PNG or WebP image; choose a photo in one of those formats."
            return

        async def upload_and_classify() -> PoseResult:
            get_url = await self.client.upload_image(filename, mime, data)
            return await self.client.classify_images([get_url], self.top_k)

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
        result = await self._call(lambda: self.client.classify_images([url], self.top_k))
        if result is not None:
            self.param.update(result=result, image_src=url, image_name=url.rsplit("/", 1)[-1].split("?", 1)[0])


class MonitoringState(RequestState):
    """The Monitoring tab: Triton's per-model statistics, refreshed periodically."""

    stats = param.List(default=[], item_type=ModelStats)
    updated_at = param.String(default="", doc="Wall-clock time of the last successful refresh")

    async def refresh(self) -> None:
        """Fetch ``/v1/stats``; keeps the last figures (and says so) when it fails."""
        stats = await self._call(self.client.stats)
        if stats is not None:
            self.param.update(stats=stats, updated_at=time.strftime("%H:%M:%S"))


class DashboardState:
    """Every state of one browser session, sharing one client and one connection state."""

    def __init__(self, client: FacadeAPI, settings: DashboardSettings, tasks: list[TaskSpec]) -> None:
        self.client = client
        self.settings = settings
        self.connection = Connection(client)
        self.text_tasks = {
            task.name: TextTaskState(task, client, self.connection, max_texts=settings.max_texts)
            for task in tasks
            if task.modality == "text"
        }
        self.pose = PoseState(client, self.connection, top_k=settings.default_top_k)
        self.monitoring = MonitoringState(client, self.connection)
