"""The live "review requested" widget in the scientist's notebook, and its watcher.

Why a widget: a review can take minutes or a day. The cell that asked shows
what was asked, why it needs review, the id and how long it has waited; when
the owner decides, the same output turns into the released table, the
owner's reason, or "cancelled", without the scientist running anything.

Why polling: the owner decides from another process (the CLI, the review
panel) and SQLite has no notifications. The watcher asks the store once a
second for the status of the requests its widgets show (one indexed query),
and only while something is pending, so an idle kernel costs nothing. It
runs as a task on the kernel's event loop, so widget state is only touched
on the kernel's own thread; while a long query blocks that thread, updates
wait until it ends.

What a widget may show: the request's own cell and reason (the scientist
wrote the cell), and after approval the released snapshot fetched through
the session, which audits it. Never the pending snapshot.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..errors import BastionError
from ..release import ReviewPending
from .store import ReviewRequest

POLL_S = 1.0
MAX_VIEWS = 500  # views kept live per kernel; older finished ones are forgotten
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

_CSS = (
    "<style>.bastion-review{font-size:13px;line-height:1.4}"
    ".bastion-review pre{background:#f6f6f6;padding:4px 6px;margin:4px 0;white-space:pre-wrap;max-height:8em;"
    "overflow:auto;font-size:12px}.bastion-review .muted{color:#666}"
    ".bastion-review .pending{color:#8a6d3b}.bastion-review .approved{color:#2e7d32}"
    ".bastion-review .rejected{color:#c62828}.bastion-review .cancelled{color:#666}</style>"
)


def shorten(cell: str, lines: int = 6, chars: int = 400) -> str:
    """The cell as the widget shows it: a few lines, never a wall of text."""
    kept = cell.strip().splitlines()
    text = "\n".join(kept[:lines])
    if len(kept) > lines:
        text += "\n…"
    return text if len(text) <= chars else text[: chars - 1] + "…"


def waited(since: datetime, now: datetime | None = None) -> str:
    """Coarse waiting time ("35 s", "4 min", "2 h 5 min"): changes rarely, so updates stay rare."""
    secs = max(0, int(((now or datetime.now(timezone.utc)) - since).total_seconds()))
    if secs < 60:
        return f"{secs - secs % 5} s"
    if secs < 3600:
        return f"{secs // 60} min"
    return f"{secs // 3600} h {secs % 3600 // 60} min"


def _parse(ts: str) -> datetime:
    dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


class PendingView:
    """One request's widget: a header line, a body, and a Cancel button while pending."""

    def __init__(self, pending: ReviewPending, created: datetime, on_cancel: Callable[[PendingView], None]) -> None:
        import ipywidgets as w  # lazily: the kernel starts without ipywidgets

        self.request_id = pending.request_id
        self.pending = pending
        self.created = created
        self.status = "pending"
        # Full initial values at construction: each comm_open carries its state, no follow-up updates.
        self.header = w.HTML(value=self._pending_header())
        self.body = w.HTML(value=self._pending_body())
        self.button = w.Button(description="Cancel request", icon="times", tooltip="withdraw this review request")
        self.button.on_click(lambda _b: on_cancel(self))
        self.box = w.VBox([self.header, self.body, self.button], _dom_classes=("bastion-review",),
                          layout=w.Layout(border="1px solid #ddd", padding="6px", margin="2px 0"))

    # ------------------------------------------------------------ states
    def _pending_header(self, now: datetime | None = None) -> str:
        return (f"{_CSS}<div class='bastion-review'><b class='pending'>Review requested</b> · "
                f"<code>{self.request_id}</code> · <span class='muted'>waiting for the data owner: "
                f"{waited(self.created, now)}</span></div>")

    def _pending_body(self) -> str:
        p = self.pending
        return (f"<div class='bastion-review'><pre>{html.escape(shorten(p.cell))}</pre>"
                f"<div><b>Why:</b> {html.escape(p.reason)}</div>"
                f"<div class='muted'>This output updates by itself when the owner decides; "
                f"<code>requests()</code> lists yours, <code>fetch(\"{p.request_id}\")</code> shows it later.</div>"
                "</div>")

    def tick(self, now: datetime | None = None) -> None:
        """Refresh the waiting time (sends a message only if the text changed)."""
        if self.status == "pending":
            self._set_header(self._pending_header(now))

    def approved(self, req: ReviewRequest, table_html: str) -> None:
        self._final("approved", f"Approved by {req.decided_by}", table_html)

    def rejected(self, req: ReviewRequest) -> None:
        reason = html.escape(req.decision_reason or "")
        self._final("rejected", f"Rejected by {req.decided_by}",
                    f"<div class='bastion-review'><b>Reason:</b> {reason}</div>")

    def cancelled(self, req: ReviewRequest) -> None:
        self._final("cancelled", "Cancelled", "<div class='bastion-review muted'>You withdrew this request.</div>")

    def failed(self, message: str) -> None:
        """A decision arrived but could not be shown; say so and keep the Cancel button away."""
        self._final("error", "Could not show the decision",
                    f"<div class='bastion-review'>{html.escape(message)}</div>")

    def note(self, message: str) -> None:
        """A one-line message under the pending body (e.g. a failed cancel)."""
        self._set_body(self.body.value + f"<div class='bastion-review rejected'>{html.escape(message)}</div>")

    def _final(self, status: str, title: str, body_html: str) -> None:
        self.status = status
        # Body and buttons first, header last: a client that sees the new title has the whole new state.
        self._set_body(body_html)
        self.box.children = (self.header, self.body)
        self._set_header(
            f"{_CSS}<div class='bastion-review'><b class='{status}'>{html.escape(title)}</b> · "
            f"<code>{self.request_id}</code></div>"
        )

    def _set_header(self, value: str) -> None:
        if self.header.value != value:
            self.header.value = value

    def _set_body(self, value: str) -> None:
        if self.body.value != value:
            self.body.value = value

    # ------------------------------------------------------------ display
    def bundle(self) -> dict[str, Any]:
        """The display bundle: the widget, with a text fallback naming the id."""
        p = self.pending
        text = (f"Review requested: {p.request_id}\nWhy: {p.reason}\n"
                f"The owner decides; then fetch(\"{p.request_id}\") shows the result. requests() lists yours.")
        return {"text/plain": text,
                WIDGET_MIME: {"version_major": 2, "version_minor": 0, "model_id": self.box.model_id}}


class Watcher:
    """Keeps this kernel's pending widgets in step with the store.

    The store is only read here; `fetch_html` (the approved snapshot as the
    display module's table) and `cancel` go through the session in the
    query worker, which audits them.
    """

    def __init__(self, store: Any, fetch_html: Callable[[str], str], cancel: Callable[[str], ReviewRequest],
                 *, interval: float = POLL_S) -> None:
        self.store = store
        self._fetch_html = fetch_html
        self._cancel = cancel
        self.interval = interval
        self.views: dict[str, list[PendingView]] = {}  # a request can be displayed more than once
        self._task: asyncio.Task[None] | None = None

    def show(self, pending: ReviewPending) -> dict[str, Any]:
        """Create the widget for a new request, start watching it, return its bundle."""
        try:
            created = _parse(self.store.get(pending.request_id).created)
        except BastionError:
            created = datetime.now(timezone.utc)
        view = PendingView(pending, created, self._on_cancel)
        self.views.setdefault(pending.request_id, []).append(view)
        self._forget_old()
        self._ensure_running()
        return view.bundle()

    def pending_ids(self) -> list[str]:
        return [rid for rid, vs in self.views.items() if any(v.status == "pending" for v in vs)]

    def poll(self, now: datetime | None = None) -> None:
        """One round: apply decisions taken since the last round, refresh waiting times."""
        ids = self.pending_ids()
        if not ids:
            return
        for rid, req in self.store.get_many(ids).items():
            self._apply(rid, req, now)

    def _apply(self, rid: str, req: ReviewRequest, now: datetime | None) -> None:
        """Bring every still-pending view of `rid` to the stored status (one fetch for all of them)."""
        views = [v for v in self.views.get(rid, []) if v.status == "pending"]
        if not views:
            return
        if req.status == "pending":
            for v in views:
                v.tick(now)
        elif req.status == "approved":
            try:
                table = self._fetch_html(req.id)
            except BastionError as exc:
                for v in views:
                    v.failed(exc.message)
                return
            for v in views:
                v.approved(req, table)
        elif req.status == "rejected":
            for v in views:
                v.rejected(req)
        elif req.status == "cancelled":
            for v in views:
                v.cancelled(req)

    def _on_cancel(self, view: PendingView) -> None:
        if view.status != "pending":
            return
        try:
            req = self._cancel(view.request_id)
        except BastionError as exc:
            # Most likely the owner decided a moment ago: show that decision instead.
            try:
                self._apply(view.request_id, self.store.get(view.request_id), None)
            except BastionError:
                pass
            if view.status == "pending":
                view.note(exc.message)
            return
        self._apply(view.request_id, req, None)

    def _forget_old(self) -> None:
        while len(self.views) > MAX_VIEWS:
            done = next((rid for rid, vs in self.views.items() if all(v.status != "pending" for v in vs)), None)
            if done is None:
                break
            del self.views[done]

    # ------------------------------------------------------------ background task
    def _ensure_running(self) -> None:
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (direct use in tests): call poll() yourself
            return
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        while self.pending_ids():
            await asyncio.sleep(self.interval)
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad round (e.g. a locked db)
                import logging

                logging.getLogger("bastion").warning("review watcher round failed", exc_info=True)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
