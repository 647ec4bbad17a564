"""The dashboard page; ``python -m dashboard`` serves it at ``/app`` (see :mod:`dashboard.server`).

Each browser session gets its own facade client and states; a periodic callback checks that the
facade is up (the banner) and refreshes the Monitoring tab. The facade's URL comes from
``MTC_DASHBOARD_API_URL`` (see :class:`dashboard.settings.DashboardSettings`).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import panel as pn

from dashboard.batch import BatchState
from dashboard.client import FacadeAPI, FacadeClient, PrometheusClient
from dashboard.settings import DashboardSettings
from dashboard.state import CONNECTION_DOWN, DashboardState, TextTaskState
from dashboard.views.batch import BatchView
from dashboard.views.render import markdown_literal, models_note_text
from dashboard.views.widgets import ConnectionBanner, ImageTaskView, MonitoringView, TextTaskView

TITLE = "Multi-task classifier"


class DashboardPage:
    """Every view of one session: a tab per task the facade lists, then a Monitoring tab.

    The task tabs are built from ``GET /v1/models`` on the first tick that reaches the facade; until then
    (a facade down at session start) the banner says so, a note says the tabs are waiting for it, and the
    Monitoring tab is the only one.
    """

    def __init__(self, state: DashboardState, user: str | None = None) -> None:
        settings = state.settings
        self.state = state
        self._checking = False
        self._refreshing = False
        self.banner = ConnectionBanner(state.connection, state.client.base_url, settings.health_interval_s)
        self.models_note = pn.pane.Alert(
            pn.bind(models_note_text, state.param.models_error),
            alert_type="info",
            visible=state.param.loaded.rx.not_(),
            css_classes=["mtc-models-note"],
            sizing_mode="stretch_width",
        )
        self.task_views: dict[str, TextTaskView | ImageTaskView] = {}
        self.monitoring_view = MonitoringView(state.monitoring, settings.stats_interval_s)
        self.batch_state = BatchState(state.client, state.connection)
        self.batch_view = BatchView(self.batch_state, settings.health_interval_s)
        self.tabs = self._tabs()
        self.main = pn.Column(self.banner.panel, self.models_note, self.tabs, sizing_mode="stretch_width")
        sidebar: list[Any] = [
            pn.pane.Markdown(
                "Classify texts and images with the models served by Triton: one tab per task.\n\n"
                f"API: `{state.client.base_url}`\n\n"
                "Text tabs take one text per line; image tabs take a photo file or an image URL."
            )
        ]
        if user:
            sidebar.append(pn.pane.Markdown(f"Logged in as {markdown_literal(user)} · [Log out](/logout)"))
        # Bootstrap, not Fast: the Fast design pulls a web font from the internet, this one is all local.
        self.template = pn.template.BootstrapTemplate(
            title=TITLE,
            main=[self.main],
            sidebar=sidebar,
            sidebar_width=260,
            header_background="#2b6cb0",
        )

    def build_task_tabs(self) -> None:
        """One tab per loaded task, in the facade's order, before the Monitoring tab (once)."""
        if self.task_views or not self.state.loaded:
            return
        for name, task_state in self.state.tasks.items():
            if isinstance(task_state, TextTaskState):
                self.task_views[name] = TextTaskView(task_state)
            else:
                self.task_views[name] = ImageTaskView(task_state)
        self.batch_state.set_tasks(list(self.task_views))
        # A new Tabs rather than new items in the old one: Bokeh 3.9 keeps a moved tab's panel stacked
        # above the active one (invisible, but it takes the clicks meant for the active tab).
        self.tabs = self._tabs(*(view.panel for view in self.task_views.values()))
        self.main[self.main.objects.index(self.models_note) + 1] = self.tabs

    def _tabs(self, *task_panels: Any) -> pn.Tabs:
        return pn.Tabs(
            *task_panels,
            *([self.batch_view.panel] if task_panels else []),  # jobs need the task list
            self.monitoring_view.panel,
            dynamic=False,
            sizing_mode="stretch_width",
            css_classes=["mtc-tabs"],
        )

    async def refresh(self) -> None:
        """One tick: check the facade; while it is up, list its tasks (once) and refresh the statistics.

        The check and the refresh each run once at a time: a tick that finds the previous one still waiting
        (a slow facade) skips it, so requests never pile up behind an unresponsive API, and a slow
        Monitoring refresh never delays the check that tells the user the API is down.
        """
        if self._checking:
            return
        self._checking = True
        try:
            await self.state.connection.check()
        finally:
            self._checking = False
        if self.state.connection.status == CONNECTION_DOWN or self._refreshing:
            return
        self._refreshing = True
        try:
            if not self.state.loaded and await self.state.load_tasks():
                self.build_task_tabs()
            if self.state.loaded:
                await self.batch_state.refresh()
            await self.state.monitoring.refresh()
        finally:
            self._refreshing = False


def build_page(
    client: FacadeAPI | None = None, settings: DashboardSettings | None = None, user: str | None = None
) -> DashboardPage:
    """The page for one session (tests pass a fake client; the server builds the real one).

    ``user`` is the logged-in user (None without a login): the sidebar shows it with a "Log out" link.
    """
    settings = settings or DashboardSettings()
    if client is None:
        key = settings.api_key.get_secret_value() if settings.api_key else None
        client = FacadeClient(settings.api_url, timeout_s=settings.request_timeout_s, api_key=key)
    prometheus = PrometheusClient(settings.prometheus_url) if settings.prometheus_url else None
    return DashboardPage(DashboardState(client, settings, prometheus), user=user)


def session_page(login_user: str | None = None) -> Any:
    """What the server runs for each browser session: the page, with its periodic check scheduled.

    ``login_user`` is the user the server's login admits (None: no login). A session that is not that
    user's gets a "log in" note and no facade client, so the dashboard's API key is never used on behalf of
    an anonymous browser, whatever Panel's guest settings say (e.g. ``PANEL_OAUTH_OPTIONAL``).
    """
    pn.extension(notifications=False)
    if not session_allowed(pn.state.user, login_user):
        return pn.pane.Markdown("You are not logged in. [Log in](/login) to use the dashboard.")
    page = build_page(user=login_user)
    settings = page.state.settings
    interval_ms = int(min(settings.health_interval_s, settings.stats_interval_s) * 1000)

    async def first_tick() -> None:
        await page.refresh()
        # Ticks start only once the first is over: changes an onload coroutine makes while a periodic
        # callback runs beside it never reach the browser (Panel 1.9; the task tabs stayed missing).
        # Panel's annotation says coroutine object, but it takes (and awaits) a coroutine function.
        pn.state.add_periodic_callback(cast(Any, page.refresh), period=interval_ms)

    pn.state.onload(first_tick)

    closing: set[asyncio.Task[None]] = set()

    def close_client(session_context: Any) -> None:
        # The server's loop is still running here: close the session's connection pool on it,
        # holding a reference so the task is not garbage-collected.
        clients: list[Any] = [page.state.client, page.state.monitoring.prometheus]
        for client in filter(None, clients):
            task = asyncio.get_running_loop().create_task(client.aclose())
            closing.add(task)
            task.add_done_callback(closing.discard)

    pn.state.on_session_destroyed(close_client)
    return page.template


def session_allowed(user: str | None, login_user: str | None) -> bool:
    """Whether a session of ``user`` may use the page: always without a login, else only as the login's user."""
    return login_user is None or (user is not None and user == login_user)


if __name__.startswith("bokeh"):
    # `panel serve dashboard/app.py` would skip the launcher's checks (a login beyond loopback): say so
    # instead of serving the page.
    pn.pane.Markdown(
        "This dashboard is served by `python -m dashboard` (see docs/dashboard.md), not `panel serve`."
    ).servable(title=TITLE)
