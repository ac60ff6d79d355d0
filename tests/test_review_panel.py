"""The owner's review panel, in a real (ordinary Python) kernel, driven through the protocol.

The owner runs `ReviewPanel("bastion.toml")` in their own JupyterLab. These
tests start the plain IPython kernel exactly as JupyterLab would, show the
panel, and click its buttons with the same comm messages the browser sends.
They check what the owner sees (cell, reason, the exact masked snapshot, the
user's earlier requests), that new requests appear by themselves, that a
click decides and audits, and that the scientist's pending widget follows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import REPO, TIMEOUT, execute, result_data, run_kernel, write_variant
from jupyter_client import KernelManager
from jupyter_client.blocking.client import BlockingKernelClient
from test_review_widgets import WIDGET_MIME, review_cell
from widgetclient import Widgets, click, set_value, wait_html, wait_until

from bastion_kernel.audit import read_session
from bastion_kernel.review import ReviewStore


@pytest.fixture
def deployment(demo_dir: Path, tmp_path: Path) -> Path:
    return write_variant(demo_dir, tmp_path / "deploy")


@pytest.fixture
def owner_kernel() -> Iterator[BlockingKernelClient]:
    """The owner's ordinary Python kernel (ipykernel), as their own JupyterLab starts it."""
    km = KernelManager(kernel_name="python3")
    env = {k: v for k, v in os.environ.items() if k not in ("BASTION_CONFIG", "JUPYTERHUB_USER")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=TIMEOUT)
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def show_panel(kc: BlockingKernelClient, config: Path) -> tuple[Widgets, str]:
    reply, msgs = execute(kc, "from bastion_kernel.review import ReviewPanel\n"
                              f"panel = ReviewPanel({str(config)!r}, by='dr-owner', refresh_s=0.5)\npanel")
    assert reply["status"] == "ok", reply
    w = Widgets()
    w.feed(msgs)
    return w, result_data(msgs)[WIDGET_MIME]["model_id"]


def one(w: Widgets, model: str, **attrs: Any) -> str:
    found = [cid for cid, s in w.of(model).items() if all(s.get(k) == v for k, v in attrs.items())]
    assert len(found) == 1, (model, attrs, found)
    return found[0]


def options(w: Widgets) -> list[str]:
    return list(w.state[one(w, "SelectModel")]["_options_labels"])


def all_html(w: Widgets) -> str:
    return "\n".join(s.get("value", "") for s in w.of("HTMLModel").values())


def test_the_panel_shows_cell_reason_masked_snapshot_and_context(deployment: Path, owner_kernel: BlockingKernelClient,
                                                                 patients_df: pl.DataFrame) -> None:
    with run_kernel(deployment, "alice") as (_km, alice):
        first, *_ = review_cell(alice, 'patients.select("patient_id", "name", "age").head(2).collect()')
        rid, *_ = review_cell(alice)
    w, _box = show_panel(owner_kernel, deployment)
    labels = options(w)
    assert len(labels) == 2 and labels[0].startswith(first) and "alice" in labels[0] and "patients" in labels[0]
    shown = all_html(w)
    assert "patients.select(&quot;patient_id&quot;, &quot;name&quot;, &quot;age&quot;).head(2)" in shown
    assert "individual rows of patients" in shown
    row = patients_df.row(0, named=True)
    assert str(row["patient_id"]) in shown and str(row["age"]) in shown  # the exact snapshot, for the owner
    assert row["name"] not in shown and "class='masked'>*" in shown  # masked columns already '*'
    assert "Earlier requests by alice on patients" in shown and rid in shown  # the salami guard


def test_new_requests_appear_by_themselves(deployment: Path, owner_kernel: BlockingKernelClient) -> None:
    w, _box = show_panel(owner_kernel, deployment)
    assert options(w) == []
    assert "No pending requests" in all_html(w)
    with run_kernel(deployment, "alice") as (_km, alice):
        rid, *_ = review_cell(alice)
    wait_until(owner_kernel, w, lambda: any(label.startswith(rid) for label in options(w)), f"{rid} in the panel")


def test_approve_click_decides_audits_and_updates_the_scientists_widget(
        deployment: Path, owner_kernel: BlockingKernelClient, patients_df: pl.DataFrame) -> None:
    with run_kernel(deployment, "alice") as (_km, alice):
        rid, box, seen, _reply, _msgs = review_cell(alice)
        w, _panel = show_panel(owner_kernel, deployment)
        click(owner_kernel, one(w, "ButtonModel", description="Approve"))
        wait_until(owner_kernel, w, lambda: f"approved {rid}" in all_html(w), "the panel to confirm")
        req = ReviewStore(deployment.parent / "state").get(rid)
        assert (req.status, req.decided_by) == ("approved", "dr-owner")
        records = read_session(deployment.parent / "state", req.session_id)
        decisions = [r for r in records if r["event"] == "review_decision"]
        assert [(d["request_id"], d["decision"], d["by"]) for d in decisions] == [(rid, "approved", "dr-owner")]
        assert decisions[0]["decided_at"] == req.decided_at
        wait_html(alice, seen, box, "Approved by dr-owner")  # the scientist's widget followed
        assert str(patients_df["patient_id"][0]) in seen.html(box)
        wait_until(owner_kernel, w, lambda: options(w) == [], "the queue to empty")


def test_reject_needs_a_reason_and_then_decides(deployment: Path, owner_kernel: BlockingKernelClient) -> None:
    with run_kernel(deployment, "alice") as (_km, alice):
        rid, box, seen, _reply, _msgs = review_cell(alice)
        w, _panel = show_panel(owner_kernel, deployment)
        reject = one(w, "ButtonModel", description="Reject")
        click(owner_kernel, reject)
        wait_until(owner_kernel, w, lambda: "a rejection reason" in all_html(w), "the missing-reason error")
        assert ReviewStore(deployment.parent / "state").get(rid).status == "pending"
        set_value(owner_kernel, one(w, "TextModel"), value="please aggregate by region")
        click(owner_kernel, reject)
        wait_until(owner_kernel, w, lambda: f"rejected {rid}" in all_html(w), "the rejection")
        req = ReviewStore(deployment.parent / "state").get(rid)
        assert (req.status, req.decision_reason) == ("rejected", "please aggregate by region")
        wait_html(alice, seen, box, "please aggregate by region")


def test_deciding_what_someone_else_just_decided_is_an_error_in_the_panel(
        deployment: Path, owner_kernel: BlockingKernelClient) -> None:
    with run_kernel(deployment, "alice") as (_km, alice):
        rid, *_ = review_cell(alice)
    reply, printed_msgs = execute(owner_kernel, "from bastion_kernel.review import ReviewPanel\n"
                                     f"p = ReviewPanel({str(deployment)!r}, by='a', auto_refresh=False)\n"
                                     f"p.approve({rid!r})\n"
                                     f"try:\n    p.reject('late', {rid!r})\nexcept Exception as e:\n"
                                     "    print(type(e).__name__, e)")
    assert reply["status"] == "ok"
    printed = "".join(m["content"].get("text", "") for m in printed_msgs if m["msg_type"] == "stream")
    assert f"ReviewError request {rid} was already approved by a" in printed
    reply, _msgs = execute(owner_kernel, "p.approve('R00000000')")
    assert reply["status"] == "error" and "no review request R00000000" in reply["evalue"]
