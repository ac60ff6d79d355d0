"""The live review widget, through the Jupyter protocol.

A cell whose result needs review shows a widget (comm messages + a display
bundle with the widget view and a text fallback). When the owner decides
from another process, the same widget changes without the scientist running
anything; a click on its Cancel button (a comm_msg, exactly what JupyterLab
sends) withdraws the request. Nothing of the held-back data reaches the
client before approval, and a restarted or killed kernel loses no request.
"""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import (
    TIMEOUT,
    all_text,
    bastion_cli,
    execute,
    result_data,
    run_kernel,
    write_variant,
)
from jupyter_client.blocking.client import BlockingKernelClient
from widgetclient import Widgets, click, everything, wait_html

from bastion_kernel.audit import read_session
from bastion_kernel.review import ReviewStore

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
CELL = 'patients.select("patient_id", "name", "zip", "income").head(3).collect()'
DECISION_WAIT = 20.0  # generous liveness bound for the watcher (it polls every second)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def deployment(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_variant(demo_dir, tmp_path_factory.mktemp("widgets"))


@pytest.fixture(scope="module")
def alice(deployment: Path) -> Any:
    with run_kernel(deployment, "alice") as (_km, kc):
        yield kc


@pytest.fixture(scope="module")
def secrets(patients_df: pl.DataFrame) -> list[str]:
    """Values of the three held-back rows that must not reach the client before approval."""
    rows = patients_df.head(3)
    return [f"{v:.2f}" for v in rows["income"]] + [str(v) for v in rows["patient_id"]]


@pytest.fixture(scope="module")
def never(patients_df: pl.DataFrame) -> list[str]:
    """Masked values that must never reach the client, approved or not."""
    rows = patients_df.head(3)
    return list(rows["name"]) + list(rows["ssn"])


def review_cell(kc: BlockingKernelClient, code: str = CELL) -> tuple[str, str, Widgets, dict[str, Any], list]:
    """Run a cell that needs review; return (request id, box model id, widgets, reply, msgs)."""
    reply, msgs = execute(kc, code)
    assert reply["status"] == "ok", reply
    data = result_data(msgs)
    box = data[WIDGET_MIME]["model_id"]
    rid = data["text/plain"].split()[2]
    assert rid.startswith("R") and len(rid) == 9, data["text/plain"]
    w = Widgets()
    w.feed(msgs)
    return rid, box, w, reply, msgs


def audit_events(deployment: Path, session_id: str) -> list[dict[str, Any]]:
    return read_session(deployment.parent / "state", session_id)


# --------------------------------------------------------------------------- pending


def test_a_cell_that_needs_review_shows_a_pending_widget(alice: BlockingKernelClient, deployment: Path,
                                                         secrets: list[str], never: list[str]) -> None:
    rid, box, w, reply, msgs = review_cell(alice)
    data = result_data(msgs)
    assert set(data) == {"text/plain", WIDGET_MIME}
    assert data[WIDGET_MIME]["version_major"] == 2
    assert f'fetch("{rid}")' in data["text/plain"]  # the fallback names the id and what to do
    shown = w.html(box)
    assert "Review requested" in shown and rid in shown
    assert "patients.select(&quot;patient_id&quot;" in shown  # what was asked
    assert "individual rows of patients" in shown  # why
    assert "waiting for the data owner" in shown
    button = w.button_in(box)
    assert button is not None and w.state[button]["description"] == "Cancel request"
    sent = all_text(msgs, reply)
    for secret in secrets + never:
        assert secret not in sent
    assert ReviewStore(deployment.parent / "state").get(rid).status == "pending"


def test_the_cell_shown_is_shortened(alice: BlockingKernelClient) -> None:
    long_cell = "x = 1\n" * 20 + CELL
    _rid, box, w, _reply, _msgs = review_cell(alice, long_cell)
    shown = w.html(box)
    assert "…" in shown and shown.count("x = 1") <= 6


def test_an_assigned_request_still_shows_its_widget_and_every_display_follows(
        alice: BlockingKernelClient, deployment: Path) -> None:
    reply, msgs = execute(alice, f"held = {CELL}")
    assert reply["status"] == "ok"
    shown = [m["content"]["data"] for m in msgs if m["msg_type"] == "display_data"]
    assert len(shown) == 1 and WIDGET_MIME in shown[0]
    rid = shown[0]["text/plain"].split()[2]
    first = shown[0][WIDGET_MIME]["model_id"]
    w = Widgets()
    w.feed(msgs)
    again, box, w2, _reply, _msgs = review_cell(alice, "held")  # showing the variable again: a second view
    assert again == rid and box != first
    w.feed(w2.seen)
    assert bastion_cli(deployment, "review", "reject", rid, "--reason", "no").returncode == 0
    wait_html(alice, w, box, "Rejected by")
    wait_html(alice, w, first, "Rejected by")


# --------------------------------------------------------------------------- decisions arrive by themselves


def test_approval_turns_the_widget_into_the_released_table(alice: BlockingKernelClient, deployment: Path,
                                                           patients_df: pl.DataFrame, never: list[str]) -> None:
    rid, box, w, _reply, _msgs = review_cell(alice)
    done = bastion_cli(deployment, "review", "approve", rid, "--by", "dr-owner")
    assert done.returncode == 0, done.stderr
    wait_html(alice, w, box, "Approved by dr-owner")
    shown = w.html(box)
    first = patients_df.row(0, named=True)
    assert f"{first['income']:.2f}".rstrip("0") in shown and str(first["patient_id"]) in shown
    assert "bastion-masked" in shown  # name is shown as a styled '*'
    assert w.button_in(box) is None  # nothing left to cancel
    for secret in never:
        assert secret not in everything(w)
    # The widget's release is audited in the requesting session, like fetch().
    sid = ReviewStore(deployment.parent / "state").get(rid).session_id
    fetches = [r for r in audit_events(deployment, sid) if r["event"] == "fetch" and r["request_id"] == rid]
    assert fetches and fetches[0]["via"] == "widget" and fetches[0]["rows"] == 3


def test_rejection_shows_the_owners_reason(alice: BlockingKernelClient, deployment: Path,
                                           secrets: list[str]) -> None:
    rid, box, w, _reply, _msgs = review_cell(alice)
    done = bastion_cli(deployment, "review", "reject", rid, "--by", "dr-owner", "--reason", "aggregate by region")
    assert done.returncode == 0, done.stderr
    wait_html(alice, w, box, "Rejected by dr-owner")
    assert "aggregate by region" in w.html(box)
    for secret in secrets:
        assert secret not in everything(w)


def test_clicking_cancel_withdraws_the_request(alice: BlockingKernelClient, deployment: Path) -> None:
    rid, box, w, _reply, _msgs = review_cell(alice)
    button = w.button_in(box)
    assert button is not None
    click(alice, button)
    wait_html(alice, w, box, "Cancelled", timeout=TIMEOUT)
    req = ReviewStore(deployment.parent / "state").get(rid)
    assert req.status == "cancelled" and req.decided_by == "alice"
    decisions = [r for r in audit_events(deployment, req.session_id)
                 if r["event"] == "review_decision" and r["request_id"] == rid]
    assert [(d["decision"], d["by"]) for d in decisions] == [("cancelled", "alice")]
    # The owner can no longer approve it, and says so.
    late = bastion_cli(deployment, "review", "approve", rid)
    assert late.returncode == 2 and "already cancelled" in late.stderr


def test_a_click_after_the_owner_decided_shows_the_decision(alice: BlockingKernelClient, deployment: Path) -> None:
    rid, box, w, _reply, _msgs = review_cell(alice)
    button = w.button_in(box)
    assert button is not None
    assert bastion_cli(deployment, "review", "reject", rid, "--reason", "too fine").returncode == 0
    click(alice, button)  # races the watcher: either way the widget ends up showing the rejection
    wait_html(alice, w, box, "Rejected by")
    assert ReviewStore(deployment.parent / "state").get(rid).status == "rejected"


def test_cancel_function_and_its_errors(alice: BlockingKernelClient, deployment: Path) -> None:
    rid, _box, _w, _reply, _msgs = review_cell(alice)
    reply, msgs = execute(alice, f'cancel("{rid}")')
    assert reply["status"] == "ok" and "cancelled" in result_data(msgs)["text/plain"]
    again, _ = execute(alice, f'cancel("{rid}")')
    assert again["status"] == "error" and again["ename"] == "ReviewError" and "already cancelled" in again["evalue"]
    unknown, _ = execute(alice, 'cancel("R00000000")')
    assert unknown["status"] == "error" and "no review request R00000000" in unknown["evalue"]


def test_another_users_request_cannot_be_cancelled_or_fetched(alice: BlockingKernelClient, deployment: Path,
                                                               secrets: list[str]) -> None:
    rid, _box, _w, _reply, _msgs = review_cell(alice)
    assert bastion_cli(deployment, "review", "approve", rid).returncode == 0
    with run_kernel(deployment, "mallory") as (_km, kc):
        for code in (f'cancel("{rid}")', f'fetch("{rid}")'):
            reply, msgs = execute(kc, code)
            assert reply["status"] == "error" and reply["ename"] == "ReviewError"
            assert f"no review request {rid} for user mallory" in reply["evalue"]
            for secret in secrets:
                assert secret not in all_text(msgs, reply)


# --------------------------------------------------------------------------- comms are deny-by-default


def test_a_client_cannot_open_widget_comms_of_its_choosing(alice: BlockingKernelClient) -> None:
    for target in ("jupyter.widget", "anything.else"):
        msg = alice.session.msg("comm_open", {
            "comm_id": f"c-{target}", "target_name": target,
            "data": {"state": {"_model_name": "ImageModel", "_model_module": "@jupyter-widgets/controls",
                               "_model_module_version": "2.0.0", "_view_name": "ImageView",
                               "_view_module": "@jupyter-widgets/controls", "_view_module_version": "2.0.0"}},
        }, metadata={"version": "2.1.0"})
        alice.shell_channel.send(msg)
        closed = False
        deadline = time.monotonic() + TIMEOUT
        while not closed and time.monotonic() < deadline:
            try:
                m = alice.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            closed = m["msg_type"] == "comm_close" and m["content"]["comm_id"] == f"c-{target}"
        assert closed, f"comm_open to {target} was not refused"
    info = alice.comm_info(target_name="jupyter.widget", reply=True, timeout=TIMEOUT)
    assert not any(cid.startswith("c-") for cid in info["content"]["comms"])
    # Messages to comms that do not exist are ignored; the kernel still answers.
    alice.shell_channel.send(alice.session.msg("comm_msg", {"comm_id": "nope", "data": {"method": "custom"}}))
    reply, _ = execute(alice, "1 + 1")
    assert reply["status"] == "ok"


def test_a_reopened_notebook_gets_the_widget_state_back(alice: BlockingKernelClient) -> None:
    """JupyterLab restores widgets by opening the control comm and asking for every state."""
    rid, box, _w, _reply, _msgs = review_cell(alice)
    info = alice.comm_info(target_name="jupyter.widget", reply=True, timeout=TIMEOUT)
    assert box in info["content"]["comms"]
    alice.shell_channel.send(alice.session.msg(
        "comm_open", {"comm_id": "ctl-1", "target_name": "jupyter.widget.control", "data": {}},
        metadata={"version": "1.0.0"}))
    alice.shell_channel.send(alice.session.msg(
        "comm_msg", {"comm_id": "ctl-1", "data": {"method": "request_states"}}))
    deadline = time.monotonic() + TIMEOUT
    states = None
    while states is None and time.monotonic() < deadline:
        try:
            m = alice.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        c = m["content"]
        if m["msg_type"] == "comm_msg" and c["comm_id"] == "ctl-1" and c["data"].get("method") == "update_states":
            states = c["data"]["states"]
    assert states is not None and box in states
    children = [c.removeprefix("IPY_MODEL_") for c in states[box]["state"]["children"]]
    assert any(rid in states[c]["state"].get("value", "") for c in children)


# --------------------------------------------------------------------------- nothing lost


def test_requests_and_fetch_survive_a_restart(deployment: Path, patients_df: pl.DataFrame) -> None:
    with run_kernel(deployment, "carol") as (km, kc):
        rid, _box, _w, _reply, _msgs = review_cell(kc)
        assert bastion_cli(deployment, "review", "approve", rid).returncode == 0
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=TIMEOUT)
        reply, msgs = execute(kc, "requests()")
        assert reply["status"] == "ok"
        assert rid in result_data(msgs)["text/plain"] and "approved" in result_data(msgs)["text/plain"]
        reply, msgs = execute(kc, f'fetch("{rid}")')
        assert reply["status"] == "ok"
        assert str(patients_df["patient_id"][0]) in result_data(msgs)["text/plain"]


def test_a_killed_kernel_loses_no_pending_request(deployment: Path) -> None:
    with run_kernel(deployment, "dave") as (km, kc):
        rid, _box, _w, _reply, _msgs = review_cell(kc)
        km.shutdown_kernel(now=True)  # SIGKILL: no shutdown_request, no session_end
    store = ReviewStore(deployment.parent / "state")
    assert store.get(rid).status == "pending"
    with run_kernel(deployment, "dave") as (_km, kc):
        reply, msgs = execute(kc, "requests()")
        listed = result_data(msgs)["text/plain"]
        assert rid in listed and "pending" in listed
        assert bastion_cli(deployment, "review", "approve", rid).returncode == 0
        reply, _ = execute(kc, f'fetch("{rid}")')
        assert reply["status"] == "ok"


def test_several_kernels_and_the_cli_at_once_lose_nothing(deployment: Path) -> None:
    """Three scientists ask while the owner decides from the CLI: every request and decision is kept."""
    import contextlib
    import threading

    users = ["erin", "frank", "grace"]
    asked: dict[str, list[str]] = {u: [] for u in users}
    decided: list[str] = []
    errors: list[str] = []

    def scientist(user: str, kc: BlockingKernelClient) -> None:
        for _ in range(4):
            rid, *_rest = review_cell(kc)
            asked[user].append(rid)

    def owner(stop: threading.Event) -> None:
        store = ReviewStore(deployment.parent / "state")
        while not stop.is_set() or any(r.user in users for r in store.list()):
            for r in store.list():
                if r.user in users:
                    out = bastion_cli(deployment, "review", "approve", r.id)
                    (decided if out.returncode == 0 else errors).append(r.id)
            time.sleep(0.2)

    with contextlib.ExitStack() as stack:
        kernels = [stack.enter_context(run_kernel(deployment, u)) for u in users]
        stop = threading.Event()
        deciding = threading.Thread(target=owner, args=(stop,))
        deciding.start()
        threads = [threading.Thread(target=scientist, args=(u, kc)) for u, (_km, kc) in zip(users, kernels)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        stop.set()
        deciding.join(timeout=300)
    every = [rid for ids in asked.values() for rid in ids]
    assert len(every) == len(set(every)) == 12
    assert sorted(decided) == sorted(every) and not errors
    store = ReviewStore(deployment.parent / "state")
    for user, ids in asked.items():
        for rid in ids:
            req = store.get(rid)
            assert req.user == user and req.status == "approved"
