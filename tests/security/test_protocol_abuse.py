"""Attack class: the raw Jupyter protocol, below the notebook.

The analyst can send any message a Jupyter client can: subshell and debugger
requests (another thread running cells; a debugger evaluating Python), comm
messages to targets that do not exist or to the widget control channel,
messages with forged headers or a wrong signature, malformed contents, huge
payloads, completion and inspection requests aimed at data, and interrupts in
the middle of a query. Each must be refused or ignored, leak nothing, create
no file (the debugger would dump cells to the temp folder), and leave the
kernel answering.
"""

from __future__ import annotations

import queue
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.session import Session

from conftest import TIMEOUT, control_request

from bastion_kernel.review import ReviewStore

from .conftest import Arena, Outcome, assert_no_late_leak, assert_no_leak, assert_no_traceback
from .dataset import CANARY_ID, leaked

CANARY_ROWS = f'people.filter(pl.col("person_id") == {CANARY_ID}).collect()'
BIG = 3 * 1024 * 1024  # a few MB


# --------------------------------------------------------------------------- helpers


def send(arena: Arena, msg_type: str, content: dict[str, Any], *, channel: str = "shell",
         header: dict[str, Any] | None = None, session: Session | None = None,
         metadata: dict[str, Any] | None = None) -> str:
    """Send one raw message (optionally with header fields changed, or signed by another session)."""
    msg = arena.kc.session.msg(msg_type, content, metadata=metadata)
    msg["header"].update(header or {})
    chan = arena.kc.shell_channel if channel == "shell" else arena.kc.control_channel
    if session is None:
        chan.send(msg)
    else:
        session.send(chan.socket, msg)
    return str(msg["header"]["msg_id"])


def reply_to(arena: Arena, msg_id: str, channel: str = "shell", timeout: float = TIMEOUT) -> dict[str, Any] | None:
    get = arena.kc.get_shell_msg if channel == "shell" else arena.kc.get_control_msg
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = get(timeout=left)
        except queue.Empty:
            return None
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg
    return None


def iopub_of(arena: Arena, msg_id: str, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
    """iopub messages of one request, up to its idle status."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = arena.kc.get_iopub_msg(timeout=left)
        except queue.Empty:
            break
        if msg["parent_header"].get("msg_id") != msg_id:
            arena.late.append(msg)
            continue
        out.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    return out


def raw_execute(arena: Arena, code: str, **kw: Any) -> Outcome:
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
               "allow_stdin": False, "stop_on_error": False}
    content.update(kw.pop("content", {}))
    msg_id = send(arena, "execute_request", content, **kw)
    reply = reply_to(arena, msg_id)
    assert reply is not None, f"no reply to {code!r}"
    return Outcome(code, reply["content"], iopub_of(arena, msg_id))


def pending_count(arena: Arena) -> int:
    return len(ReviewStore(arena.state).list(status=None))


def debugger_dumps(arena: Arena) -> list[Path]:
    """Where ipykernel's debugger would dump cells for this kernel process."""
    pid = arena.km.provisioner.pid if arena.km.provisioner else None  # type: ignore[attr-defined]
    root = Path(tempfile.gettempdir())
    return sorted(root.glob(f"ipykernel_{pid}*")) + sorted(root.glob(f"ipykernel_{pid}/**/*"))


def no_trace(arena: Arena, before: dict[str, Any]) -> None:
    """The common ending: alive, no file, nothing leaked late."""
    arena.assert_alive()
    assert arena.files() == before
    assert not debugger_dumps(arena)


# --------------------------------------------------------------------------- subshells and the debugger


@pytest.mark.parametrize(("msg_type", "content"), [
    pytest.param("create_subshell_request", {}, id="create-subshell"),
    pytest.param("list_subshell_request", {}, id="list-subshells"),
    pytest.param("delete_subshell_request", {"subshell_id": "x"}, id="delete-subshell"),
    pytest.param("debug_request", {"type": "request", "seq": 1, "command": "initialize", "arguments": {}},
                 id="debug-initialize"),
    pytest.param("debug_request", {"type": "request", "seq": 2, "command": "attach", "arguments": {}},
                 id="debug-attach"),
    pytest.param("debug_request", {"type": "request", "seq": 3, "command": "evaluate",
                                   "arguments": {"expression": f"open('{'TARGET'}/pwned', 'w')"}},
                 id="debug-evaluate"),
    pytest.param("debug_request", {"type": "request", "seq": 4, "command": "dumpCell",
                                   "arguments": {"code": "import os"}}, id="debug-dump-cell"),
    pytest.param("debug_request", {"type": "request", "seq": 5, "command": "inspectVariables", "arguments": {}},
                 id="debug-inspect-variables"),
    pytest.param("debug_request", {"type": "request", "seq": 6, "command": "richInspectVariables",
                                   "arguments": {"variableName": "people"}}, id="debug-rich-inspect"),
    pytest.param("debug_request", {"type": "request", "seq": 7, "command": "debugInfo", "arguments": {}},
                 id="debug-info"),
])
def test_subshell_and_debug_requests_are_refused_on_the_control_channel(arena: Arena, msg_type: str,
                                                                        content: dict[str, Any]) -> None:
    before = arena.files()
    content = {k: (arena.code(v) if isinstance(v, str) else v) for k, v in content.items()}
    reply = control_request(arena.kc, msg_type, content)
    assert reply["msg_type"] == msg_type.replace("_request", "_reply")
    assert reply["content"]["status"] == "error"
    assert "body" not in reply["content"] and "subshell_id" not in reply["content"]
    no_trace(arena, before)


@pytest.mark.parametrize("msg_type", ["debug_request", "create_subshell_request", "list_subshell_request"])
def test_subshell_and_debug_requests_on_the_shell_channel_do_nothing(arena: Arena, msg_type: str) -> None:
    before = arena.files()
    msg_id = send(arena, msg_type, {"type": "request", "seq": 1, "command": "evaluate",
                                    "arguments": {"expression": "1"}})
    reply = reply_to(arena, msg_id, timeout=1.0)
    assert reply is None or reply["content"].get("status") == "error"
    no_trace(arena, before)


def test_a_cell_aimed_at_a_subshell_is_not_run(arena: Arena) -> None:
    before, n = arena.files(), pending_count(arena)
    out = raw_execute(arena, f"grabbed = {CANARY_ROWS}", header={"subshell_id": "not-a-subshell"})
    assert out.status == "error"
    assert pending_count(arena) == n, "the subshell cell ran (it filed a review request)"
    arena.attack("grabbed", "refused", ename="GrammarError")  # the name was never assigned
    no_trace(arena, before)


# --------------------------------------------------------------------------- comms


@pytest.mark.parametrize(("target", "data"), [
    pytest.param("evil.target", {}, id="unknown-target"),
    pytest.param("jupyter.widget", {"state": {"_model_name": "ButtonModel", "_model_module": "@jupyter-widgets/controls",
                                              "_model_module_version": "2.0.0"}, "buffer_paths": []},
                 id="widget-model-of-the-clients-choosing"),
    pytest.param("ipython.widget", {}, id="old-widget-target"),
    pytest.param("jupyter.widget.version", {}, id="widget-version-target"),
])
def test_comm_open_to_a_target_the_kernel_did_not_register_is_closed(arena: Arena, target: str,
                                                                     data: dict[str, Any]) -> None:
    before = arena.files()
    comm_id = f"evil-{target}"
    send(arena, "comm_open", {"comm_id": comm_id, "target_name": target, "data": data},
         metadata={"version": "2.1.0"})
    deadline, closed = time.monotonic() + 10, False
    while not closed and time.monotonic() < deadline:
        try:
            m = arena.kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        arena.late.append(m)
        closed = m["msg_type"] == "comm_close" and m["content"]["comm_id"] == comm_id
    assert closed, f"comm_open to {target} was not refused"
    info = arena.kc.comm_info(reply=True, timeout=TIMEOUT)
    assert comm_id not in info["content"]["comms"]
    no_trace(arena, before)


@pytest.mark.parametrize(("msg_type", "content"), [
    pytest.param("comm_msg", {"comm_id": "does-not-exist", "data": {"method": "custom", "content": {"event": "click"}}},
                 id="message-to-unknown-comm"),
    pytest.param("comm_msg", {"comm_id": "does-not-exist", "data": {"method": "update", "state": {"value": "x"}}},
                 id="update-unknown-comm"),
    pytest.param("comm_close", {"comm_id": "does-not-exist", "data": {}}, id="close-unknown-comm"),
    pytest.param("comm_msg", {"data": {}}, id="message-without-comm-id"),
    pytest.param("comm_open", {"target_name": "evil"}, id="open-without-comm-id"),
    pytest.param("comm_msg", {"comm_id": "does-not-exist", "data": {"method": "custom", "content": "x" * BIG}},
                 id="huge-message-to-unknown-comm"),
])
def test_comm_messages_the_kernel_cannot_place_are_ignored(arena: Arena, msg_type: str,
                                                          content: dict[str, Any]) -> None:
    before = arena.files()
    send(arena, msg_type, content)
    no_trace(arena, before)


def test_the_widget_control_channel_shows_only_what_the_analyst_already_saw(arena: Arena) -> None:
    """A reopened notebook asks for every widget state: review widgets show the cell and the reason, never rows."""
    before = arena.files()
    arena.attack(CANARY_ROWS, "review")
    send(arena, "comm_open", {"comm_id": "ctl-sec", "target_name": "jupyter.widget.control", "data": {}},
         metadata={"version": "1.0.0"})
    send(arena, "comm_msg", {"comm_id": "ctl-sec", "data": {"method": "request_states"}})
    deadline, states = time.monotonic() + TIMEOUT, None
    while states is None and time.monotonic() < deadline:
        try:
            m = arena.kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        arena.late.append(m)
        c = m["content"]
        if m["msg_type"] == "comm_msg" and c.get("comm_id") == "ctl-sec" and c["data"].get("method") == "update_states":
            states = c["data"]["states"]
    assert states, "the control channel answered nothing"
    found = leaked(str(states), "\n".join(arena.cells), arena.data.masked_values)
    assert not found, f"widget state carries {found}"
    no_trace(arena, before)


# --------------------------------------------------------------------------- forged headers and malformed messages


@pytest.mark.parametrize("header", [
    pytest.param({"username": "owner"}, id="username-owner"),
    pytest.param({"username": "bob"}, id="username-other-analyst"),
    pytest.param({"session": "0" * 32}, id="another-session-id"),
    pytest.param({"username": "", "session": ""}, id="empty-identity"),
])
def test_a_forged_header_does_not_change_who_asks(arena: Arena, header: dict[str, str]) -> None:
    before = arena.files()
    out = raw_execute(arena, CANARY_ROWS, header=header)
    assert out.status == "ok" and out.review_id, out.describe()
    req = ReviewStore(arena.state).get(out.review_id)
    assert req.user == "mallory" and req.status == "pending"
    assert_no_leak(arena, out)
    no_trace(arena, before)


def test_a_message_signed_with_another_key_is_dropped(arena: Arena) -> None:
    before, n = arena.files(), pending_count(arena)
    forger = Session(key=b"not-the-connection-key", signature_scheme="hmac-sha256", username="mallory")
    msg_id = send(arena, "execute_request", {"code": f"forged = {CANARY_ROWS}", "silent": False,
                                             "store_history": True, "user_expressions": {}, "allow_stdin": False,
                                             "stop_on_error": False}, session=forger)
    assert reply_to(arena, msg_id, timeout=1.5) is None
    assert pending_count(arena) == n
    arena.attack("forged", "refused", ename="GrammarError")
    no_trace(arena, before)


@pytest.mark.parametrize(("msg_type", "content"), [
    pytest.param("execute_request", {"code": 12345, "silent": False}, id="code-not-a-string"),
    pytest.param("execute_request", {"silent": False}, id="code-missing"),
    pytest.param("execute_request", {"code": None}, id="code-none"),
    pytest.param("execute_request", {"code": "1", "user_expressions": "not-a-dict"}, id="bad-user-expressions"),
    pytest.param("complete_request", {"code": 5, "cursor_pos": "x"}, id="complete-garbage"),
    pytest.param("inspect_request", {"code": "people", "cursor_pos": -5, "detail_level": 9}, id="inspect-garbage"),
    pytest.param("evil_request", {"code": "import os"}, id="unknown-message-type"),
    pytest.param("history_request", {"hist_access_type": "range", "raw": True, "output": True, "session": -1,
                                     "start": 0, "stop": 10**9}, id="history-range"),
    pytest.param("is_complete_request", {"code": "(" * 100_000}, id="is-complete-deep"),
])
def test_malformed_and_unknown_messages_leave_the_kernel_answering(arena: Arena, msg_type: str,
                                                                  content: dict[str, Any]) -> None:
    before = arena.files()
    msg_id = send(arena, msg_type, content)
    reply = reply_to(arena, msg_id, timeout=1.0)
    if reply is not None:
        text = str(reply["content"])
        assert_no_traceback(text)
        assert not leaked(text, "\n".join(arena.cells), arena.data.masked_values)
    no_trace(arena, before)


def test_user_expressions_are_never_evaluated(arena: Arena) -> None:
    before, n = arena.files(), pending_count(arena)
    out = raw_execute(arena, "len([1])", content={"user_expressions": {
        "rows": CANARY_ROWS, "escape": '__import__("os").system("touch TARGET/pwned")'}})
    assert out.status == "ok" and out.reply["user_expressions"] == {}
    assert pending_count(arena) == n
    no_trace(arena, before)


def test_a_silent_attack_shows_nothing_and_releases_nothing(arena: Arena) -> None:
    before = arena.files()
    out = raw_execute(arena, 'people.select(pl.col("income").max()).collect()', content={"silent": True})
    assert out.status == "ok"
    assert not [m for m in out.msgs if m["msg_type"] in ("execute_result", "display_data")]
    assert_no_leak(arena, out)
    no_trace(arena, before)


@pytest.mark.parametrize(("code", "absent"), [
    pytest.param('people.filter(pl.col("zip") == "979', ["97999"], id="complete-a-zip-value"),
    pytest.param('people.filter(pl.col("name") == "Zeb', ["Zebulon", "Vandermeer"], id="complete-a-masked-name"),
    pytest.param('visits.filter(pl.col("ward") == "Oub', ["Oubliette"], id="complete-a-ward"),
    pytest.param("people.", [], id="complete-frame-methods"),
])
def test_completion_never_offers_data_values(arena: Arena, code: str, absent: list[str]) -> None:
    before = arena.files()
    reply = arena.kc.complete(code, len(code), reply=True, timeout=TIMEOUT)
    text = str(reply["content"])
    assert reply["content"]["status"] == "ok"
    for value in absent:
        assert value not in text
    assert not leaked(text, code, arena.data.masked_values)
    no_trace(arena, before)


@pytest.mark.parametrize("code", ["people", 'pl.col("income")', "people.filter", "fetch", "visits.columns"])
def test_inspection_shows_schemas_and_docs_never_data(arena: Arena, code: str) -> None:
    before = arena.files()
    reply = arena.kc.inspect(code, len(code), detail_level=1, reply=True, timeout=TIMEOUT)
    text = str(reply["content"])
    assert reply["content"]["status"] == "ok"
    assert not leaked(text, code, arena.data.masked_values)
    assert str(arena.data.data) not in text and "parquet" not in text
    no_trace(arena, before)


# --------------------------------------------------------------------------- huge messages


def test_a_cell_of_a_few_megabytes_is_refused_by_the_cell_size_limit(arena: Arena) -> None:
    arena.attack("x = 1\n# " + "x" * BIG, "refused", ename="LimitError")


def test_a_few_megabytes_of_code_in_one_string_is_refused(arena: Arena) -> None:
    arena.attack('people.filter(pl.col("zip") == "' + "9" * BIG + '").select(pl.len()).collect()', "refused",
                 ename="LimitError")


def test_megabytes_of_metadata_and_user_expressions_are_ignored(arena: Arena) -> None:
    before = arena.files()
    out = raw_execute(arena, "len([1, 2])", metadata={"junk": "x" * BIG},
                      content={"user_expressions": {f"k{i}": "people" for i in range(10_000)}})
    assert out.status == "ok" and out.reply["user_expressions"] == {}
    no_trace(arena, before)


@pytest.mark.parametrize("kind", ["complete", "inspect"])
def test_completion_and_inspection_of_megabytes_of_code_answer(arena: Arena, kind: str) -> None:
    before = arena.files()
    code = "people." + "x" * BIG
    t0 = time.monotonic()
    if kind == "complete":
        reply = arena.kc.complete(code, len(code), reply=True, timeout=TIMEOUT)
    else:
        reply = arena.kc.inspect(code, len(code), reply=True, timeout=TIMEOUT)
    assert reply["content"]["status"] == "ok"
    assert time.monotonic() - t0 < TIMEOUT
    no_trace(arena, before)


# --------------------------------------------------------------------------- interrupts


SLOW = 'people.group_by(pl.col("birth_date").dt.truncate("100000000y")).agg(pl.len()).collect()'  # loops for minutes


def test_interrupting_mid_query_releases_nothing_and_keeps_the_session(arena: Arena) -> None:
    before = arena.files()
    ok = arena.run("kept = people.group_by(\"region\").agg(pl.len())")
    assert ok.status == "ok"
    msg_id = arena.kc.execute(SLOW)
    time.sleep(1.0)
    arena.km.interrupt_kernel()
    reply = reply_to(arena, msg_id, timeout=TIMEOUT)
    assert reply is not None, "the interrupted cell never answered"
    msgs = iopub_of(arena, msg_id)
    out = Outcome(SLOW, reply["content"], msgs)
    assert out.status == "error" and out.ename == "ExecutionError" and "interrupted" in out.evalue, out.describe()
    assert not [m for m in msgs if m["msg_type"] == "execute_result"]
    assert_no_leak(arena, out)
    after = arena.run("kept.columns")
    assert after.status == "ok" and "region" in after.shown
    no_trace(arena, before)


def test_an_interrupt_request_message_while_idle_is_harmless(arena: Arena) -> None:
    before = arena.files()
    reply = control_request(arena.kc, "interrupt_request", {})
    assert reply["msg_type"] == "interrupt_reply"
    arena.km.interrupt_kernel()
    time.sleep(0.2)
    no_trace(arena, before)


def test_no_late_message_carries_a_canary(arena: Arena) -> None:
    assert_no_late_leak(arena)
