"""A minimal widget client for protocol-level tests: what JupyterLab's widget manager does.

It mirrors widget models from comm_open/comm_msg messages and sends clicks and
value changes exactly as the frontend does, so tests can drive widgets without
a browser (the browser tests check the rendering).
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient

WAIT = 20.0  # generous liveness bound: the review watcher polls every second


class Widgets:
    """The widget models the client has seen: comm id -> state, updates applied."""

    def __init__(self) -> None:
        self.state: dict[str, dict[str, Any]] = {}
        self.seen: list[dict[str, Any]] = []

    def feed(self, msgs: list[dict[str, Any]]) -> None:
        for m in msgs:
            self.seen.append(m)
            c = m["content"]
            if m["msg_type"] == "comm_open" and c.get("target_name") == "jupyter.widget":
                self.state[c["comm_id"]] = dict(c["data"]["state"])
            elif m["msg_type"] == "comm_msg" and c["comm_id"] in self.state and c["data"].get("method") == "update":
                self.state[c["comm_id"]].update(c["data"]["state"])

    def of(self, model: str) -> dict[str, dict[str, Any]]:
        return {cid: s for cid, s in self.state.items() if s.get("_model_name") == model}

    def html(self, box_id: str) -> str:
        """All HTML currently shown inside the box `box_id` (its direct children)."""
        children = [c.removeprefix("IPY_MODEL_") for c in self.state[box_id]["children"]]
        return "\n".join(self.state[c].get("value", "") for c in children)

    def button_in(self, box_id: str) -> str | None:
        for c in self.state[box_id]["children"]:
            cid = c.removeprefix("IPY_MODEL_")
            if self.state[cid].get("_model_name") == "ButtonModel":
                return cid
        return None


def wait_until(kc: BlockingKernelClient, w: Widgets, ok: Callable[[], bool], what: str,
               timeout: float = WAIT) -> None:
    """Read iopub (whatever the parent) until `ok()` holds."""
    deadline = time.monotonic() + timeout
    while not ok():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}")
        try:
            w.feed([kc.get_iopub_msg(timeout=min(left, 1.0))])
        except queue.Empty:
            pass


def wait_html(kc: BlockingKernelClient, w: Widgets, box: str, needle: str, timeout: float = WAIT) -> None:
    """Read iopub (whatever the parent) until the box shows `needle`."""
    deadline = time.monotonic() + timeout
    while needle not in w.html(box):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"widget never showed {needle!r}; it shows:\n{w.html(box)}")
        try:
            w.feed([kc.get_iopub_msg(timeout=min(left, 1.0))])
        except queue.Empty:
            pass


def drain(kc: BlockingKernelClient, w: Widgets, seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            w.feed([kc.get_iopub_msg(timeout=left)])
        except queue.Empty:
            return


def click(kc: BlockingKernelClient, comm_id: str) -> None:
    """Exactly what JupyterLab sends when a widget button is clicked."""
    msg = kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}})
    kc.shell_channel.send(msg)


def everything(w: Widgets) -> str:
    return json.dumps([m["content"] for m in w.seen], ensure_ascii=False, default=str)


def set_value(kc: BlockingKernelClient, comm_id: str, **state: Any) -> None:
    """What the frontend sends when the user edits a widget (e.g. types into a Text)."""
    kc.shell_channel.send(kc.session.msg(
        "comm_msg", {"comm_id": comm_id, "data": {"method": "update", "state": state, "buffer_paths": []}}))
