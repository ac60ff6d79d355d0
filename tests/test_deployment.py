"""The owner's lock-down, proven against a real JupyterLab server on loopback.

Why a real server: the threat is a scientist who talks to the Jupyter server
directly (REST and websocket), not only through JupyterLab's menus. So this
module starts ``bastion lab``'s exact server (tests/labserver.py: same argv,
same configuration) once, and shows over HTTP and the kernel websocket that:

* only the ``bastion`` kernelspec is listed, and no other kernel can be started;
* terminals, nbconvert, the language-server proxy and raw file downloads are gone;
* data files and every other non-notebook file can be neither read, nor
  downloaded, nor written, renamed, copied or deleted through the server;
* notebooks and folders still work, and a Bastion kernel starts and answers an
  ``execute_request`` over ``/api/kernels/<id>/channels``;
* kernel protocol messages outside the allow-list never reach the kernel.

Every refusal is checked for its exact status and readable message, and every
response body for the absence of the data (a patient's name and SSN, the
Parquet magic bytes, the deployment file's text).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import pytest

pytest.importorskip("jupyter_server", reason="the lock-down tests need the `lab` extra (jupyter_server)")

from conftest import REPO, write_variant
from labserver import LabServer, locked_lab
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from bastion_kernel import lockdown

WS_TIMEOUT = 60.0


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def site(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served folder: the data files, the deployment file and its state, side by side
    (the worst case: everything the scientist must not read sits under the root)."""
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(demo_dir / "data", root / "data")
    write_variant(root, root)
    (root / "notes.txt").write_text("owner's private notes\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def lab(site: Path) -> Iterator[LabServer]:
    with locked_lab(site / "bastion.toml", site, extra_env={"JUPYTERHUB_USER": "alice"}) as server:
        yield server


@pytest.fixture(scope="module")
def secrets_(site: Path) -> list[str]:
    """Strings that must never appear in any response: one patient's name and SSN,
    the Parquet magic, the deployment file's dataset path, the private notes."""
    import polars as pl

    first = pl.read_parquet(site / "data" / "patients.parquet").row(0, named=True)
    return [str(first["name"]), str(first["ssn"]), "PAR1", "privacy_unit", "owner's private notes"]


def assert_no_secret(body: Any, secrets: list[str]) -> None:
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked in a response"


def assert_refused(status: int, body: Any, *, words: str = "Bastion lock-down") -> None:
    assert status == 403, (status, body)
    message = body.get("message", "") if isinstance(body, dict) else body
    assert words in message, message


# --------------------------------------------------------------------------- kernels


def test_only_the_bastion_kernelspec_is_listed(lab: LabServer) -> None:
    status, body = lab.api("GET", "api/kernelspecs")
    assert status == 200
    assert body["default"] == "bastion"
    assert sorted(body["kernelspecs"]) == ["bastion"]
    assert body["kernelspecs"]["bastion"]["spec"]["argv"][1:3] == ["-m", "bastion_kernel"]


@pytest.mark.parametrize("name", ["python3", "python", "ir", "bastion-other"])
def test_starting_any_other_kernel_is_refused(lab: LabServer, name: str) -> None:
    status, body = lab.api("POST", "api/kernels", {"name": name})
    assert status == 403, body
    assert body["message"] == (
        f"Bastion lock-down: only the 'bastion' kernel may be started on this server, not {name!r}"
    )
    _, kernels = lab.api("GET", "api/kernels")
    assert all(k["name"] == "bastion" for k in kernels)


def test_a_session_cannot_bring_another_kernel(lab: LabServer) -> None:
    """Sessions start kernels too (and PATCH can swap a session's kernel). The
    sessions API wraps the kernel manager's 403 in a 500 (501 for PATCH); the message stays."""
    status, body = lab.api("POST", "api/sessions", {"path": "s.ipynb", "name": "s.ipynb", "type": "notebook",
                                                    "kernel": {"name": "python3"}})
    assert status in (403, 500) and "only the 'bastion' kernel" in body["message"]
    assert lab.api("GET", "api/sessions")[1] == []
    status, session = lab.api("POST", "api/sessions", {"path": "s.ipynb", "name": "s.ipynb", "type": "notebook",
                                                       "kernel": {"name": "bastion"}})
    assert status == 201, session
    try:
        status, body = lab.api("PATCH", f"api/sessions/{session['id']}", {"kernel": {"name": "python3"}})
        assert status == 501 and "only the 'bastion' kernel" in body["message"], body
        _, again = lab.api("GET", f"api/sessions/{session['id']}")
        assert again["kernel"]["name"] == "bastion"
    finally:
        lab.api("DELETE", f"api/sessions/{session['id']}")


# --------------------------------------------------------------------------- gone and refused


def test_terminals_are_gone(lab: LabServer) -> None:
    assert lab.api("GET", "api/terminals")[0] == 404
    assert lab.api("POST", "api/terminals", {})[0] == 404
    assert lab.api("GET", "terminals/websocket/1")[0] == 404


def test_language_server_proxy_and_server_shutdown_are_gone(lab: LabServer) -> None:
    assert lab.api("GET", "lsp/status")[0] == 404
    status, body = lab.api("POST", "api/shutdown")
    assert_refused(status, body)
    assert lab.proc.poll() is None


def test_nbconvert_is_refused(lab: LabServer) -> None:
    lab.api("POST", "api/contents", {"type": "notebook"})
    status, body = lab.api("GET", "api/nbconvert")
    assert_refused(status, body)
    for path in ("nbconvert/html/Untitled.ipynb", "nbconvert/script/Untitled.ipynb?download=true",
                 "nbconvert/html/data/patients.parquet"):
        status, body = lab.api("GET", path)
        assert status == 403, (path, status)


def test_requests_without_the_token_are_refused(lab: LabServer) -> None:
    """`bastion lab` honours JUPYTER_TOKEN: the helper sets it, and nothing works without it."""
    for path in ("api/kernelspecs", "api/contents", "api/contents/Untitled.ipynb"):
        status, _ = lab.api("GET", path, token=False)
        assert status == 403, path
    for page in ("lab", "files/data/patients.parquet"):  # pages send the browser to the login form
        status, body = lab.api("GET", page, token=False)
        assert status == 302 and "PAR1" not in str(body), page


def test_api_me_reports_the_lockdown_permissions(lab: LabServer) -> None:
    """JupyterLab asks /api/me what it may do; the answer matches what the server enforces."""
    asked = {"contents": ["read", "write", "execute"], "terminals": ["execute"], "nbconvert": ["read"],
             "kernels": ["read", "write", "execute"]}
    status, body = lab.api("GET", "api/me?permissions=" + urllib.parse.quote(json.dumps(asked)))
    assert status == 200, body
    assert body["permissions"]["contents"] == ["read", "write"]
    assert body["permissions"]["terminals"] == [] and body["permissions"]["nbconvert"] == []
    assert body["permissions"]["kernels"] == ["read", "write", "execute"]


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    "path",
    [
        "files/data/patients.parquet",
        "files/data/patients.parquet?download=1",
        "files/bastion.toml",
        "files/notes.txt",
        "view/notes.txt",
        "view/data/patients.parquet",
        "api/contents/data/patients.parquet",
        "api/contents/data/patients.parquet?type=file&format=base64",
        "api/contents/data/visits.parquet?type=file&format=text",
        "api/contents/bastion.toml",
        "api/contents/notes.txt?type=file",
        "api/contents/state/bastion.db",
        "api/contents/data/patients.parquet/checkpoints",
    ],
)
def test_data_and_other_files_cannot_be_read(lab: LabServer, secrets_: list[str], path: str) -> None:
    status, body = lab.api("GET", path)
    assert status == 403, (path, status)
    if path.startswith("api/"):
        assert_refused(status, body)
    assert_no_secret(body, secrets_)


def _audit_file(site: Path) -> Path:
    """The running kernel's audit log (its Session opens it while starting up)."""
    deadline = time.monotonic() + WS_TIMEOUT
    while time.monotonic() < deadline:
        found = sorted((site / "state" / "audit").glob("*.jsonl")) if (site / "state" / "audit").is_dir() else []
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError("the Bastion kernel wrote no audit log")


def test_audit_and_review_state_cannot_be_read(lab: LabServer, kernel_id: str, site: Path) -> None:
    audit = _audit_file(site)
    session_id = audit.stem
    for path in (f"files/state/audit/{audit.name}", f"api/contents/state/audit/{audit.name}",
                 "files/state/bastion.db", "api/contents/state/bastion.db?type=file&format=base64"):
        status, body = lab.api("GET", path)
        assert status == 403, path
        assert '"event"' not in (body if isinstance(body, str) else json.dumps(body))
    status, listing = lab.api("GET", "api/contents/state/audit")
    assert status == 200 and session_id not in json.dumps(listing)


def test_folder_listings_show_notebooks_and_folders_not_owner_files(
    lab: LabServer, kernel_id: str, site: Path, secrets_: list[str]
) -> None:
    _audit_file(site)  # the state folder exists once the kernel is up
    status, root = lab.api("GET", "api/contents")
    assert status == 200
    names = {item["name"] for item in root["content"]}
    assert {"data", "state"} <= names
    assert "bastion.toml" not in names
    status, data = lab.api("GET", "api/contents/data")
    assert status == 200 and [i["name"] for i in data["content"]] == []
    status, state = lab.api("GET", "api/contents/state")
    assert status == 200 and not [i for i in state["content"] if i["name"].endswith((".db", ".jsonl"))]
    assert_no_secret(root, secrets_)


def test_non_notebook_files_cannot_be_written(lab: LabServer, site: Path) -> None:
    before = (site / "data" / "patients.parquet").read_bytes()
    attempts: list[tuple[str, str, Any]] = [
        ("PUT", "api/contents/evil.py", {"type": "file", "format": "text", "content": "import os"}),
        ("PUT", "api/contents/data/patients.parquet", {"type": "file", "format": "text", "content": "x"}),
        ("PUT", "api/contents/bastion.toml", {"type": "file", "format": "text", "content": "[bastion]"}),
        ("PUT", "api/contents/x.txt", {"type": "notebook", "format": "json", "content": {}}),
        ("PUT", "api/contents/up.ipynb", {"type": "file", "format": "base64", "content": "", "chunk": 1}),
        ("POST", "api/contents", {"type": "file", "ext": ".py"}),
        ("POST", "api/contents", {}),
        ("POST", "api/contents", {"type": "notebook", "ext": ".py"}),
        ("POST", "api/contents", {"copy_from": "data/patients.parquet"}),
        ("POST", "api/contents/data", {"copy_from": "bastion.toml"}),
        ("PATCH", "api/contents/data", {"path": "moved"}),
        ("PATCH", "api/contents/data/patients.parquet", {"path": "p.ipynb"}),
        ("DELETE", "api/contents/data/patients.parquet", None),
        ("DELETE", "api/contents/data", None),
        ("DELETE", "api/contents/bastion.toml", None),
        ("POST", "api/contents/data/patients.parquet/checkpoints", None),
    ]
    for method, path, body in attempts:
        status, answer = lab.api(method, path, body)
        assert_refused(status, answer)
    assert (site / "data" / "patients.parquet").read_bytes() == before
    assert (site / "bastion.toml").is_file() and not (site / "evil.py").exists() and not (site / "x.txt").exists()
    assert not list(site.glob("Untitled*.py")) and not (site / "moved").exists()


def test_a_notebook_cannot_be_renamed_into_a_non_notebook(lab: LabServer, site: Path) -> None:
    status, model = lab.api("POST", "api/contents", {"type": "notebook"})
    assert status == 201
    status, body = lab.api("PATCH", f"api/contents/{model['path']}", {"path": "bastion.toml"})
    assert_refused(status, body)
    assert (site / model["path"]).is_file()


def test_notebooks_and_folders_still_work(lab: LabServer, site: Path) -> None:
    status, folder = lab.api("POST", "api/contents", {"type": "directory"})
    assert status == 201 and folder["type"] == "directory"
    status, model = lab.api("POST", f"api/contents/{folder['path']}", {"type": "notebook"})
    assert status == 201 and model["path"].endswith(".ipynb")
    nb = {"cells": [], "metadata": {"kernelspec": {"name": "bastion", "display_name": "Bastion"}},
          "nbformat": 4, "nbformat_minor": 5}
    status, _ = lab.api("PUT", f"api/contents/{model['path']}", {"type": "notebook", "format": "json", "content": nb})
    assert status == 200
    status, got = lab.api("GET", f"api/contents/{model['path']}")
    assert status == 200 and got["content"]["metadata"]["kernelspec"]["name"] == "bastion"
    status, _ = lab.api("POST", f"api/contents/{model['path']}/checkpoints")
    assert status == 201
    renamed = f"{folder['path']}/analysis.ipynb"
    status, _ = lab.api("PATCH", f"api/contents/{model['path']}", {"path": renamed})
    assert status == 200 and (site / renamed).is_file()
    status, copy = lab.api("POST", "api/contents", {"copy_from": renamed})
    assert status == 201 and copy["path"].endswith(".ipynb")
    assert lab.api("DELETE", f"api/contents/{copy['path']}")[0] == 204
    assert lab.api("DELETE", f"api/contents/{renamed}")[0] == 204


# --------------------------------------------------------------------------- JupyterLab's own APIs


def test_extensions_cannot_be_installed_and_plugins_are_locked(lab: LabServer) -> None:
    status, body = lab.api("POST", "lab/api/extensions", {"cmd": "install", "extension_name": "jupyterlab-git"})
    assert status == 422 and "blocked" in body["message"]
    status, locks = lab.api("GET", "lab/api/plugins")
    assert status == 200 and locks["allLocked"] is True
    status, body = lab.api("POST", "lab/api/plugins", {"cmd": "enable", "plugin_name": "@jupyterlab/terminal-extension:plugin"})
    assert status == 500 and "locked" in json.dumps(body)


def test_the_lab_page_disables_terminal_console_download_and_export(lab: LabServer) -> None:
    status, html = lab.api("GET", "lab")
    assert status == 200
    start = html.index('id="jupyter-config-data"')
    blob = html[html.index(">", start) + 1 : html.index("</script>", start)]
    page = json.loads(blob)
    assert isinstance(page["disabledExtensions"], list)  # the front end wants lists of names
    assert set(lockdown.DISABLED_EXTENSIONS) <= set(page["disabledExtensions"])
    assert set(lockdown.DISABLED_EXTENSIONS) <= set(page["lockedExtensions"])
    assert page["terminalsAvailable"] is False


# --------------------------------------------------------------------------- the kernel over the websocket


def _msg(msg_type: str, content: dict[str, Any], channel: str, session: str) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "scientist",
            "session": session,
            "date": datetime.now(UTC).isoformat(),
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": channel,
        "buffers": [],
    }


class KernelSocket:
    """The kernel's websocket as JupyterLab uses it (JSON messages, one socket, all channels)."""

    def __init__(self, lab: LabServer, kernel_id: str) -> None:
        self.url = f"ws://127.0.0.1:{lab.port}/api/kernels/{kernel_id}/channels"
        self.token = lab.token
        self.session = uuid.uuid4().hex
        self.received: list[dict[str, Any]] = []
        self.conn: Any = None

    async def __aenter__(self) -> Self:
        request = HTTPRequest(f"{self.url}?session_id={self.session}", headers={"Authorization": f"token {self.token}"})
        self.conn = await websocket_connect(request)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.conn.close()

    async def request(self, msg_type: str, content: dict[str, Any], channel: str = "shell") -> dict[str, Any]:
        """Send; return the reply, after the kernel went idle for it (iopub collected in `received`)."""
        msg = _msg(msg_type, content, channel, self.session)
        await self.conn.write_message(json.dumps(msg))
        msg_id = msg["header"]["msg_id"]
        reply: dict[str, Any] | None = None
        idle = False
        while reply is None or not idle:
            raw = await asyncio.wait_for(self.conn.read_message(), WS_TIMEOUT)
            assert raw is not None, "the server closed the kernel websocket"
            if isinstance(raw, bytes):
                continue
            got = json.loads(raw)
            self.received.append(got)
            if got["parent_header"].get("msg_id") != msg_id:
                continue
            if got["msg_type"].endswith("_reply"):
                reply = got
            if got["msg_type"] == "status" and got["content"]["execution_state"] == "idle":
                idle = True
            if channel == "control" and reply is not None:
                idle = True  # control requests need not produce iopub status
        return reply

    def text(self) -> str:
        return json.dumps([{"t": m["msg_type"], "c": m["content"]} for m in self.received], ensure_ascii=False)


@pytest.fixture(scope="module")
def kernel_id(lab: LabServer) -> Iterator[str]:
    """A Bastion kernel started the way JupyterLab starts one: a notebook session."""
    status, session = lab.api("POST", "api/sessions", {"path": "ws.ipynb", "name": "ws.ipynb", "type": "notebook",
                                                       "kernel": {"name": "bastion"}})
    assert status == 201, session
    yield session["kernel"]["id"]
    lab.api("DELETE", f"api/sessions/{session['id']}")


def test_a_bastion_kernel_starts_and_answers_over_the_websocket(
    lab: LabServer, kernel_id: str, secrets_: list[str]
) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
        async with KernelSocket(lab, kernel_id) as ws:
            info = await ws.request("kernel_info_request", {})
            agg = await ws.request("execute_request", {
                "code": 'patients.group_by("region").agg(n=pl.len()).sort("region").collect()',
                "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False,
                "stop_on_error": True})
            rows = await ws.request("execute_request", {
                "code": 'patients.select("name", "ssn", "age").head(3).collect()', "silent": False,
                "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
            return info, agg, rows, ws.text()

    info, agg, rows, text = asyncio.run(scenario())
    assert info["content"]["implementation"] == "bastion"
    assert agg["content"]["status"] == "ok"
    assert "Central" in text and "North" in text  # the large regions were released...
    assert "groups with fewer than the minimum number of individuals are withheld, if there are any" in text and "Islands" not in text  # ...the 3-person one was not
    assert rows["content"]["status"] == "ok"
    assert re.search(r"R[0-9a-f]{8}", text), "row-level data should have become a review request"
    assert_no_secret(text, secrets_)


@pytest.mark.parametrize("msg_type, channel", [
    ("debug_request", "control"),
    ("create_subshell_request", "control"),
    ("usage_request", "control"),
])
def test_protocol_messages_outside_the_allow_list_never_reach_the_kernel(
    lab: LabServer, kernel_id: str, msg_type: str, channel: str
) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with KernelSocket(lab, kernel_id) as ws:
            msg = _msg(msg_type, {"command": "evaluate", "arguments": {"expression": "1"}}, channel, ws.session)
            await ws.conn.write_message(json.dumps(msg))
            # The server handles one socket's messages in order: once this reply
            # is back, the refused message has been dropped, or answered.
            await ws.request("kernel_info_request", {}, channel=channel)
            return [m for m in ws.received if m["parent_header"].get("msg_id") == msg["header"]["msg_id"]]

    answers = asyncio.run(scenario())
    assert answers == []
    assert f'Received message of type "{msg_type}", which is not allowed. Ignoring.' in lab.log_text()


def test_the_kernel_websocket_needs_the_token(lab: LabServer, kernel_id: str) -> None:
    async def connect() -> None:
        await websocket_connect(f"ws://127.0.0.1:{lab.port}/api/kernels/{kernel_id}/channels")

    with pytest.raises(HTTPClientError) as err:
        asyncio.run(connect())
    assert err.value.code == 403


# --------------------------------------------------------------------------- shipped files


def test_labextension_config_matches_the_lockdown_module(tmp_path: Path) -> None:
    """The drop-in files in labextension_config/ are what `bastion lab` runs with."""
    from traitlets.config.loader import PyFileConfigLoader

    shipped = REPO / "labextension_config"
    assert json.loads((shipped / "labconfig" / "page_config.json").read_text()) == lockdown.PAGE_CONFIG
    written = lockdown.write_config_dir(tmp_path / "cfg")
    assert (written / "labconfig" / "page_config.json").read_text() == lockdown.page_config_text()

    def load(path: Path) -> dict[str, Any]:
        return dict(PyFileConfigLoader(path.name, path=str(path.parent)).load_config())

    ours, theirs = load(written / "jupyter_server_config.py"), load(shipped / "jupyter_server_config.py")
    assert ours == theirs
    assert ours["ServerApp"]["terminals_enabled"] is False
    assert ours["ServerApp"]["kernel_manager_class"] == "bastion_kernel.lockdown.BastionKernelManager"
    assert ours["ServerApp"]["authorizer_class"] == "bastion_kernel.lockdown.BastionAuthorizer"
    assert ours["KernelSpecManager"]["allowed_kernelspecs"] == {"bastion"}
    assert "debug_request" not in ours["MappingKernelManager"]["allowed_message_types"]


# --------------------------------------------------------------------------- transport encryption


def test_kernel_traffic_is_curve_encrypted_when_the_kernelspec_declares_it(site: Path) -> None:
    """With ``metadata.supported_encryption = ["curve"]`` in kernel.json the lock-down's
    ``transport_encryption = "auto"`` gives the kernel CurveZMQ keys: JupyterLab still
    talks to it, while a local client holding only the HMAC key gets no answer (and
    could not read iopub either)."""
    import zmq
    from jupyter_client import BlockingKernelClient

    if not zmq.has("curve"):
        pytest.skip("this libzmq has no CurveZMQ support")
    with locked_lab(site / "bastion.toml", site, extra_env={"JUPYTERHUB_USER": "alice"},
                    kernelspec_metadata={"supported_encryption": ["curve"]}) as lab:
        status, session = lab.api("POST", "api/sessions", {"path": "c.ipynb", "name": "c.ipynb", "type": "notebook",
                                                           "kernel": {"name": "bastion"}})
        assert status == 201, session

        async def over_websocket() -> dict[str, Any]:
            async with KernelSocket(lab, session["kernel"]["id"]) as ws:
                return await ws.request("execute_request", {
                    "code": "patients.height", "silent": False, "store_history": True,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})

        assert asyncio.run(over_websocket())["content"]["status"] == "ok"
        info = json.loads(next((lab.home / "runtime").glob("kernel-*.json")).read_text())
        assert info["curve_publickey"] and info["curve_secretkey"]

        def kernel_info(conn: dict[str, Any]) -> str | None:
            kc = BlockingKernelClient(context=zmq.Context())
            kc.load_connection_info(conn)
            kc.start_channels()
            try:
                kc.kernel_info()
                return str(kc.get_shell_msg(timeout=5)["msg_type"])
            except Exception:  # noqa: BLE001 - queue.Empty: nobody answered
                return None
            finally:
                kc.stop_channels()
                # A request the server never accepted stays queued; terminating the context (also on
                # garbage collection) would wait for it forever: drop it.
                kc.context.destroy(linger=0)

        plain = {k: v for k, v in info.items() if not k.startswith("curve_")}
        assert kernel_info(plain) is None  # the HMAC key alone no longer gets through
        assert kernel_info(info) == "kernel_info_reply"  # the keys do (the check can fail)


# --------------------------------------------------------------------------- Binder


def test_binder_quickstart_walks_through_as_it_says(demo_dir: Path, tmp_path: Path) -> None:
    """Each code cell of binder/quickstart.ipynb declares (metadata.bastion.expect) what it
    shows; run them in order in a real Bastion kernel and check each one."""
    from conftest import all_text, execute, run_kernel

    nb = json.loads((REPO / "binder" / "quickstart.ipynb").read_text(encoding="utf-8"))
    assert nb["metadata"]["kernelspec"]["name"] == "bastion"
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    sources = ["".join(c["source"]) for c in cells]
    assert any('"Islands"' in s for s in sources)  # the walk-through covers the withheld small group
    config = write_variant(demo_dir, tmp_path / "binder")
    with run_kernel(config, user="scientist") as (_, kc):
        for cell, source in zip(cells, sources):
            reply, msgs = execute(kc, source)
            text = all_text(msgs, reply)
            assert cell["metadata"]["bastion"]["expect"] in text, (source, text[:2000])
            assert not cell["outputs"]  # shipped unexecuted: the scientist runs it


def test_binder_start_puts_the_lockdown_in_force(tmp_path: Path) -> None:
    import subprocess

    for name in ("postBuild", "start"):
        assert (REPO / "binder" / name).stat().st_mode & 0o111, f"binder/{name} must be executable"
    runtime = (REPO / "binder" / "runtime.txt").read_text().strip()
    assert runtime.startswith("python-3.") and int(runtime.split(".")[1]) >= 11  # tomllib
    assert "jupyterlab" in (REPO / "binder" / "requirements.txt").read_text()
    out = subprocess.run(
        [str(REPO / "binder" / "start"), "sh", "-c", 'echo "$JUPYTER_CONFIG_DIR|$BASTION_CONFIG"'],
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == f"{tmp_path}/.bastion/jupyter-config|{tmp_path}/.bastion/demo/bastion.toml"
    post = (REPO / "binder" / "postBuild").read_text()
    assert 'write_config_dir(Path.home() / ".bastion" / "jupyter-config")' in post
    assert 'bastion install --sys-prefix --config "${BASTION_HOME}/demo/bastion.toml"' in post


def test_a_plain_jupyter_lab_with_the_config_folder_is_locked_down_too(site: Path, tmp_path: Path) -> None:
    """The Binder/hub route: no ``--config``; the lock-down folder is the user-level
    Jupyter config folder (JUPYTER_CONFIG_DIR), as binder/start sets it."""
    import os
    import secrets
    import subprocess
    import sys

    from labserver import _stop, _wait_ready, free_port

    from bastion_kernel.install import install_kernelspec

    prefix = tmp_path / "prefix"
    install_kernelspec(prefix=str(prefix), config=str(site / "bastion.toml"))
    config_dir = lockdown.write_config_dir(tmp_path / "jupyter-config")
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config_dir), "JUPYTER_TOKEN": token,
           "JUPYTER_PATH": str(prefix / "share" / "jupyter"), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTERHUB_USER": "alice"}
    env.pop("JUPYTER_CONFIG_PATH", None)
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={site}", "--allow-root"]
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_ready(url, token, proc, log_path)
        plain = LabServer(url=url, token=token, port=port, proc=proc, log_path=log_path, home=tmp_path)
        assert sorted(plain.api("GET", "api/kernelspecs")[1]["kernelspecs"]) == ["bastion"]
        assert_refused(*plain.api("POST", "api/kernels", {"name": "python3"}))
        assert plain.api("GET", "api/terminals")[0] == 404
        assert plain.api("GET", "files/data/patients.parquet")[0] == 403
        page = plain.api("GET", "lab")[1]
        assert '"@jupyterlab/terminal-extension"' in page
    finally:
        _stop(proc)


def test_the_hub_example_applies_the_lockdown_to_every_spawned_server() -> None:
    """jupyterhub_config.py is an example, but it must be valid and point at the lock-down."""
    from traitlets.config import Config

    c = Config()
    source = (REPO / "labextension_config" / "jupyterhub_config.py").read_text(encoding="utf-8")
    exec(compile(source, "jupyterhub_config.py", "exec"), {"c": c})  # noqa: S102 - our own example file
    assert c.Spawner.args == ["--config=/srv/bastion/labextension_config/jupyter_server_config.py"]
    assert c.Spawner.disable_user_config is True
    assert c.Spawner.environment["JUPYTER_CONFIG_PATH"] == "/srv/bastion/labextension_config"
    assert c.Spawner.environment["BASTION_CONFIG"] == "/srv/bastion/bastion.toml"


# --------------------------------------------------------------------------- bastion lab


def test_bastion_lab_starts_jupyterlab_with_the_lockdown(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bastion lab` (exec and the sys-prefix install captured, as in test_cli) passes the
    lock-down with --config, serves --notebooks, and keeps JUPYTER_TOKEN for the server."""
    from bastion_kernel import cli

    calls: dict[str, Any] = {}

    def fake_exec(file: str, argv: list[str]) -> None:
        calls["exec"] = argv
        raise SystemExit(0)

    monkeypatch.setattr(cli, "install_kernelspec", lambda **kw: calls.setdefault("install", kw))
    monkeypatch.setattr(cli.os, "execvp", fake_exec)
    monkeypatch.setattr(cli, "lab_config_dir", lambda: tmp_path / "lab-config")
    monkeypatch.setenv("JUPYTER_TOKEN", "s3cret")
    monkeypatch.setenv("BASTION_CONFIG", str(site / "bastion.toml"))
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    with pytest.raises(SystemExit):
        cli.main(["lab", "--no-browser", "--notebooks", str(notebooks), "--config", str(site / "bastion.toml")])
    argv = calls["exec"]
    server_config = tmp_path / "lab-config" / "jupyter_server_config.py"
    assert f"--config={server_config}" in argv and f"--ServerApp.root_dir={notebooks}" in argv
    assert "configure(c)" in server_config.read_text()
    assert (tmp_path / "lab-config" / "labconfig" / "page_config.json").read_text() == lockdown.page_config_text()
    assert calls["install"] == {"sys_prefix": True, "config": str((site / "bastion.toml").resolve())}
    missing = cli.main(["lab", "--notebooks", str(tmp_path / "absent"), "--config", str(site / "bastion.toml")])
    assert missing == 2
