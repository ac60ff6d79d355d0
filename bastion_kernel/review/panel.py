"""The owner's review panel: decide review requests from the owner's own JupyterLab.

Runs in a normal Python kernel on the owner's (unlocked) server, never in
the scientist's Bastion kernel::

    from bastion_kernel.review import ReviewPanel
    ReviewPanel("bastion.toml")

Why a panel beside `bastion review`: deciding well needs context on one
screen: the cell, the policy's reason, the exact snapshot that would be
released (masked columns already `*`, byte for byte what the requester will
fetch), and the same user's earlier requests and releases, so a request
sliced thin from many angles ("salami") is visible as such. Decisions go
through `review.decide`, audited exactly like the CLI's.

It polls the store every couple of seconds (SQLite has no notifications) on
the kernel's event loop, so new requests appear without a click.
"""

from __future__ import annotations

import asyncio
import html
import threading
from pathlib import Path
from typing import Any

import polars as pl

from .. import config as cfg
from ..audit import list_sessions, read_session
from ..errors import BastionError
from .decide import decide
from .store import ReviewRequest, ReviewStore

REFRESH_S = 2.0
MAX_ROWS_SHOWN = 200

_CSS = (
    "<style>.bastion-panel{font-size:13px}.bastion-panel pre{background:#f6f6f6;padding:4px 6px;"
    "white-space:pre-wrap;max-height:12em;overflow:auto;font-size:12px}"
    ".bastion-panel table{border-collapse:collapse;font-size:12px}.bastion-panel td,.bastion-panel th"
    "{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}.bastion-panel th{background:#f4f4f4}"
    ".bastion-panel .masked{color:#999;background:#f7f7f7;text-align:center}.bastion-panel .muted{color:#666}"
    ".bastion-panel .ok{color:#2e7d32}.bastion-panel .bad{color:#c62828}</style>"
)


def snapshot_html(df: pl.DataFrame, limit: int = MAX_ROWS_SHOWN) -> str:
    """The snapshot as a table; '*' cells styled so the masking is visible at a glance."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    rows = []
    for row in df.head(limit).iter_rows():
        cells = "".join(
            "<td class='masked'>*</td>" if v == "*" else f"<td>{'' if v is None else html.escape(str(v))}</td>"
            for v in row
        )
        rows.append(f"<tr>{cells}</tr>")
    more = f"<div class='muted'>showing {limit} of {df.height} rows</div>" if df.height > limit else ""
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>{more}"


def recent_releases(state_dir: Path, user: str, limit: int = 10) -> list[dict[str, Any]]:
    """The user's latest released cells and fetches, newest first, from the audit logs."""
    out: list[dict[str, Any]] = []
    for info in reversed(list_sessions(state_dir)):
        if info.get("user") != user:
            continue
        try:
            records = read_session(state_dir, info["session"])
        except BastionError:
            continue
        for rec in reversed(records):
            if rec.get("event") == "cell" and rec.get("outcome") == "released":
                out.append({"ts": rec.get("ts"), "what": rec.get("source", ""), "rows": rec.get("rows")})
            if len(out) >= limit:
                return out
    return out


class ReviewPanel:
    """Pending requests, each with its cell, reason, snapshot and context; Approve / Reject.

    Scriptable too: `select(id)`, `approve()`, `reject(reason)`, `refresh()`.
    """

    def __init__(self, config: str | Path | None = None, *, by: str | None = None,
                 refresh_s: float = REFRESH_S, auto_refresh: bool = True) -> None:
        import ipywidgets as w

        self.deployment = cfg.load(config)
        self.store = ReviewStore(self.deployment.state_dir)
        self.by = by or cfg.current_user()
        self.refresh_s = refresh_s
        self.title = w.HTML()
        self.chooser = w.Select(options=[], rows=8, layout=w.Layout(width="100%"))
        self.detail = w.HTML()
        self.context = w.HTML()
        self.reason = w.Text(placeholder="reason for rejecting (shown to the requester)",
                             layout=w.Layout(width="60%"))
        self.approve_button = w.Button(description="Approve", button_style="success", icon="check")
        self.reject_button = w.Button(description="Reject", button_style="danger", icon="times")
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.status = w.HTML()
        self.approve_button.on_click(lambda _b: self._guard(self.approve))
        self.reject_button.on_click(lambda _b: self._guard(lambda: self.reject(self.reason.value)))
        self.refresh_button.on_click(lambda _b: self._guard(self.refresh))
        self.chooser.observe(lambda _c: self._guard(self._show_selected), names="value")
        self.box = w.VBox([
            self.title, self.chooser, self.detail, self.context,
            w.HBox([self.approve_button, self.reject_button, self.reason]),
            w.HBox([self.refresh_button, self.status]),
        ])
        self.box.add_class("bastion-panel")
        self._ids: list[str] | None = None  # None: never shown yet
        self._stop = threading.Event()
        self.refresh()
        if auto_refresh:
            self._start_refreshing()

    # ------------------------------------------------------------ display
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.box._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------ state
    def pending(self) -> list[ReviewRequest]:
        return self.store.list(status="pending")

    def refresh(self) -> None:
        """Re-read the queue; keep the current selection if it is still pending."""
        reqs = self.pending()
        ids = [r.id for r in reqs]
        self.title.value = (f"{_CSS}<div class='bastion-panel'><b>Bastion review</b> · {len(reqs)} pending · "
                            f"<span class='muted'>{html.escape(str(self.deployment.state_dir))}</span></div>")
        if ids == self._ids:
            return
        current = self.chooser.value
        self._ids = ids
        self.chooser.options = [(f"{r.id} · {r.user} · {r.dataset} · {r.created[:19]} · {r.rows} rows", r.id)
                                for r in reqs]
        self.chooser.value = current if current in ids else (ids[0] if ids else None)
        self._show_selected()

    def select(self, request_id: str) -> None:
        if request_id not in (self._ids or []):
            raise BastionError(f"{request_id} is not pending", hint="refresh() re-reads the queue")
        self.chooser.value = request_id

    @property
    def selected(self) -> str | None:
        value = self.chooser.value
        return value if isinstance(value, str) else None

    def _show_selected(self) -> None:
        rid = self.selected
        if rid is None:
            self.detail.value = "<div class='bastion-panel muted'>No pending requests.</div>"
            self.context.value = ""
            return
        req = self.store.get(rid)
        snap = self.store.snapshot(rid)
        self.detail.value = (
            f"<div class='bastion-panel'><h4>{req.id} by {html.escape(req.user)} on {html.escape(req.dataset)}</h4>"
            f"<div class='muted'>created {html.escape(req.created)} · session {html.escape(req.session_id)} · "
            f"sha256 {req.snapshot_digest[:16]}…</div>"
            f"<div><b>Why it needs review:</b> {html.escape(req.reason)}</div>"
            f"<div><b>Cell</b></div><pre>{html.escape(req.cell)}</pre>"
            f"<div><b>Would release</b> {snap.height} rows × {snap.width} columns (exactly this, masked columns "
            f"as *):</div>{snapshot_html(snap)}</div>"
        )
        self.context.value = self._context_html(req)

    def _context_html(self, req: ReviewRequest) -> str:
        others = [o for o in self.store.list(status=None, user=req.user, dataset=req.dataset) if o.id != req.id]
        rows = "".join(
            f"<tr><td>{o.id}</td><td>{o.status}</td><td>{html.escape(o.created[:19])}</td>"
            f"<td style='text-align:left'><code>{html.escape(_one_line(o.cell))}</code></td></tr>"
            for o in others[-20:]
        ) or "<tr><td colspan=4 class='muted'>none</td></tr>"
        released = recent_releases(self.deployment.state_dir, req.user)
        rel_rows = "".join(
            f"<tr><td>{html.escape(str(r['ts'])[:19])}</td><td>{r['rows']}</td>"
            f"<td style='text-align:left'><code>{html.escape(_one_line(r['what']))}</code></td></tr>"
            for r in released
        ) or "<tr><td colspan=3 class='muted'>none</td></tr>"
        return (
            f"<div class='bastion-panel'><b>Earlier requests by {html.escape(req.user)} on "
            f"{html.escape(req.dataset)}</b> ({len(others)})<table>{rows}</table>"
            f"<b>Recent automatic releases to {html.escape(req.user)}</b> (all datasets)<table>{rel_rows}</table></div>"
        )

    # ------------------------------------------------------------ decisions
    def approve(self, request_id: str | None = None) -> ReviewRequest:
        """Release the selected (or given) request's snapshot to its requester."""
        done = decide(self.store, self._target(request_id), "approved", by=self.by)
        self._after(done, f"approved {done.id}: {done.user} sees it now")
        return done

    def reject(self, reason: str, request_id: str | None = None) -> ReviewRequest:
        """Refuse the selected (or given) request; the reason is shown to the requester."""
        done = decide(self.store, self._target(request_id), "rejected", by=self.by, reason=reason)
        self.reason.value = ""
        self._after(done, f"rejected {done.id}")
        return done

    def _target(self, request_id: str | None) -> str:
        rid = request_id or self.selected
        if rid is None:
            raise BastionError("no request selected")
        return rid

    def _after(self, done: ReviewRequest, message: str) -> None:
        self.refresh()
        self.status.value = f"<span class='ok'>{html.escape(message)} (audited as {html.escape(self.by)})</span>"

    def _guard(self, action: Any) -> None:
        """Button handlers: show a failed action in the panel rather than lose it in a log."""
        try:
            action()
        except BastionError as exc:
            self.status.value = f"<span class='bad'>{html.escape(exc.message)}</span>"
            self.refresh()

    # ------------------------------------------------------------ refreshing
    def _start_refreshing(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._task = loop.create_task(self._refresh_forever())
            return
        thread = threading.Thread(target=self._refresh_thread, name="bastion-review-panel", daemon=True)
        thread.start()

    async def _refresh_forever(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(self.refresh_s)
            self._guard(self.refresh)

    def _refresh_thread(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self._guard(self.refresh)

    def close(self) -> None:
        """Stop refreshing and close the widgets."""
        self._stop.set()
        for child in self.box.children:
            for widget in getattr(child, "children", ()):
                widget.close()
            child.close()
        self.box.close()


def _one_line(text: str, width: int = 80) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[: width - 1] + "…"
