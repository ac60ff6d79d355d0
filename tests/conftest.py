"""Shared fixtures and helpers for the protocol-level tests.

Why real kernels: Bastion's guarantees (nothing leaves but released results,
refused protocol features stay refused) hold at the Jupyter protocol boundary,
so these tests start `python -m bastion_kernel -f {connection_file}` through
jupyter_client exactly as a notebook server would, and look at every message
the client receives. Kernel starts cost about two seconds each, so test
modules keep one kernel per (deployment, user) for the whole module.

Deployments:

* ``demo_config``: the demo exactly as `bastion_kernel.demo.generate` writes it.
* ``strict_config``: the same data, ``on_violation = "reject"`` and ``visits``
  restricted to ``users = ["alice"]``; its own state folder.
* `write_variant` makes further variants (each with its own state folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import KernelManager
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the package is not necessarily pip-installed

from bastion_kernel.demo import generate  # noqa: E402

try:  # the v5 message schemas; the suite's own dependency, optional here
    from jupyter_kernel_test.msgspec_v5 import schema_fragments
    from jupyter_kernel_test.msgspec_v5 import validate_message as _validate

    def validate_message(msg: dict[str, Any], msg_type: str, parent_id: str) -> None:
        """Validate against the v5 schemas where they exist (they have none for comm messages)."""
        if msg_type in schema_fragments:
            _validate(msg, msg_type, parent_id)
except ImportError:  # pragma: no cover
    validate_message = None

TIMEOUT = 60.0  # per message; a cell on the demo data takes milliseconds


# --------------------------------------------------------------------------- deployments


def write_variant(
    demo_dir: Path,
    folder: Path,
    *,
    on_violation: str = "review",
    visits_users: list[str] | None = None,
    extra_bastion: str = "",
) -> Path:
    """A deployment file over the demo's data files with its own state folder."""
    folder.mkdir(parents=True, exist_ok=True)
    data = demo_dir / "data"
    users = "" if visits_users is None else f"users = {json.dumps(visits_users)}\n"
    text = (
        "[bastion]\n"
        'state_dir = "state"\n'
        "min_group_size = 10\n"
        f'on_violation = "{on_violation}"\n'
        f"{extra_bastion}"
        "\n[datasets.patients]\n"
        f"path = {json.dumps(str(data / 'patients.parquet'))}\n"
        'privacy_unit = "patient_id"\n'
        'masked = ["name", "ssn"]\n'
        "\n[datasets.visits]\n"
        f"path = {json.dumps(str(data / 'visits.parquet'))}\n"
        'privacy_unit = "patient_id"\n'
        f"{users}"
    )
    config = folder / "bastion.toml"
    config.write_text(text, encoding="utf-8")
    return config


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    generate(folder)
    return folder


@pytest.fixture(scope="session")
def demo_config(demo_dir: Path) -> Path:
    return demo_dir / "bastion.toml"


@pytest.fixture(scope="session")
def strict_config(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_variant(demo_dir, tmp_path_factory.mktemp("strict"), on_violation="reject", visits_users=["alice"])


@pytest.fixture(scope="session")
def patients_df(demo_dir: Path) -> Any:
    """The demo's patients table as polars reads it (the owner's view)."""
    import polars as pl

    return pl.read_parquet(demo_dir / "data" / "patients.parquet")


# --------------------------------------------------------------------------- kernels


def kernel_spec(config_path: Path | str, user: str = "alice", extra_env: dict[str, str] | None = None) -> KernelSpec:
    env = {"BASTION_CONFIG": str(config_path), "JUPYTERHUB_USER": user}
    env.update(extra_env or {})
    return KernelSpec(
        argv=[sys.executable, "-m", "bastion_kernel", "-f", "{connection_file}"],
        display_name="Bastion",
        language="python",
        env=env,
    )


@contextlib.contextmanager
def run_kernel(
    config_path: Path | str, user: str = "alice", extra_env: dict[str, str] | None = None, *,
    cwd: Path | None = None, argv_prefix: list[str] | None = None, kill: bool = False,
    connection_file: Path | None = None,
) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    """A real Bastion kernel process for `user` on `config_path`, shut down on exit.

    `cwd`: its working directory; `argv_prefix`: a wrapper such as prlimit; `kill`: no
    graceful shutdown (for a kernel a test may have left busy for minutes). Otherwise
    the shutdown is a shutdown_request, so the session writes session_end.
    `connection_file`: where to write it (jupyter_server names it ``kernel-<id>.json``).
    """
    km = KernelManager(**({"connection_file": str(connection_file)} if connection_file is not None else {}))
    spec = kernel_spec(config_path, user, extra_env)
    if argv_prefix:
        spec.argv = [*argv_prefix, *spec.argv]
    km._kernel_spec = spec  # type: ignore[attr-defined]
    km.start_kernel(**({"cwd": str(cwd)} if cwd is not None else {}))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=TIMEOUT)
    except Exception:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=kill)
        km.cleanup_resources()


def _wait_reply(get: Any, msg_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no reply to {msg_id} within {timeout} s")
        msg: dict[str, Any] = get(timeout=left)
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def execute(
    kc: BlockingKernelClient,
    code: str,
    *,
    silent: bool = False,
    user_expressions: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run one cell; return (execute_reply content, every iopub message of the request up to idle).

    Every message is checked against the v5 message spec on the way.
    """
    msg_id = kc.execute(code, silent=silent, store_history=not silent, allow_stdin=False, stop_on_error=False,
                        user_expressions=user_expressions)
    reply = _wait_reply(kc.get_shell_msg, msg_id, timeout)
    if validate_message is not None:
        validate_message(reply, "execute_reply", msg_id)
    msgs: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"kernel did not go idle after {msg_id} within {timeout} s")
        try:
            msg = kc.get_iopub_msg(timeout=left)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if validate_message is not None:
            validate_message(msg, msg["msg_type"], msg_id)
        msgs.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return reply["content"], msgs


def control_request(kc: BlockingKernelClient, msg_type: str, content: dict[str, Any] | None = None,
                    timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send a request on the control channel and return the whole reply message."""
    msg = kc.session.msg(msg_type, content or {})
    kc.control_channel.send(msg)
    return _wait_reply(kc.get_control_msg, msg["header"]["msg_id"], timeout)


def outputs(msgs: list[dict[str, Any]], msg_type: str) -> list[dict[str, Any]]:
    """Contents of the iopub messages of one type."""
    return [m["content"] for m in msgs if m["msg_type"] == msg_type]


def result_data(msgs: list[dict[str, Any]]) -> dict[str, str]:
    """The mime bundle of the request's single execute_result."""
    results = outputs(msgs, "execute_result")
    assert len(results) == 1, f"expected one execute_result, got {[m['msg_type'] for m in msgs]}"
    data: dict[str, str] = results[0]["data"]
    return data


def result_text(msgs: list[dict[str, Any]]) -> str:
    return result_data(msgs)["text/plain"]


def all_text(msgs: list[dict[str, Any]], reply: dict[str, Any] | None = None) -> str:
    """Everything the client received for a request (reply and iopub contents and metadata), as one string.

    Headers are left out on purpose: message and session ids are random hex
    and would make "this number never appears" assertions flaky.
    """
    parts: list[Any] = []
    if reply is not None:
        parts.append(reply)
    parts += [{"type": m["msg_type"], "content": m["content"], "metadata": m.get("metadata", {})} for m in msgs]
    # ensure_ascii=False: a secret with non-ASCII letters must be found as written.
    return json.dumps(parts, ensure_ascii=False, default=str)


# --------------------------------------------------------------------------- the owner's CLI


def bastion_cli(config: Path | str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m bastion_kernel.cli GROUP SUB --config CONFIG ARGS...` as the owner runs it."""
    env = {k: v for k, v in os.environ.items() if k not in ("BASTION_CONFIG", "JUPYTERHUB_USER")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    # --config belongs to each subcommand (`bastion --config X review list` is a usage error).
    n_words = 2 if args and args[0] in ("review", "audit") else 1
    argv = [sys.executable, "-m", "bastion_kernel.cli", *args[:n_words], "--config", str(config), *args[n_words:]]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
