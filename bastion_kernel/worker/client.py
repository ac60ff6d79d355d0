"""The kernel's handle on its query worker: ask, wait with a limit, kill, restart, replay.

Why the kernel keeps the history: when a query runs past `query_timeout_s`,
is interrupted from JupyterLab's stop button, or kills the worker by
exceeding `query_memory_mb`, the worker process is SIGKILLed (the only way to
stop a polars query) and a fresh one is started on the same audit session.
The kernel then replays the cells that assigned variables, in order, each
with the releases, fetches and cancellations its first run recorded, so the
new worker has the same variables without re-running a query or re-writing
the audit log. A cell that did not complete changed nothing, so it is not
replayed: after a timeout the session is exactly as before that cell.

One request at a time, under a lock: the shell handlers (cells, completion,
widget clicks) already run one after another on the kernel's main thread;
the lock keeps a shutdown from the control thread from interleaving.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import Limits
from ..errors import BastionError, ExecutionError, LimitError, RemoteError
from . import wire

# polars' allocator settings for the worker (see `_spawn`); the benchmark gives IPython the same.
MALLOC_CONF = "retain:false,dirty_decay_ms:1000"
START_TIMEOUT_S = 120.0  # a cold start on a busy two-core machine; normally about a second
REPLAY_TIMEOUT_S = 600.0  # replay reads schemas only, never data


@dataclass
class _Cell:
    code: str
    effects: list[dict[str, Any]]
    blobs: list[bytes] = field(repr=False)


class QueryWorker:
    def __init__(self, kernel_id: str, limits: Limits) -> None:
        self.kernel_id = kernel_id
        self.limits = limits
        self.session_id: str | None = None
        self.user: str | None = None
        self.history: list[_Cell] = []
        self.restarts = 0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._ready = False
        self._broken: str | None = None  # set while a restart has not finished (e.g. interrupted mid-replay)
        self._spawn(None)

    # ------------------------------------------------------------ process
    def _spawn(self, why: str | None) -> None:
        parent, child = socket.socketpair()
        argv = [sys.executable, "-m", "bastion_kernel.worker", "--fd", str(child.fileno()),
                "--kernel-id", self.kernel_id]
        if self.session_id is not None:
            argv += ["--resume", self.session_id, "--why", why or "restart"]
        env = dict(os.environ)
        env["RUST_BACKTRACE"] = "0"  # an aborted query prints no Rust stack into the server log
        # Queries run on polars' streaming engine (polars' own default, "auto", is the in-memory one):
        # a dataset larger than `query_memory_mb` still aggregates, and the aggregations Bastion
        # builds (frames.FastChecks) are planned for it. Measured equal or faster at 1M-4M rows.
        # The worker's memory baseline (`server._cap_memory`) then includes the engine's threads.
        env.setdefault("POLARS_ENGINE_AFFINITY", "streaming")
        # polars' allocator (jemalloc) keeps freed address space mapped by default ("retain", and
        # freed pages for 10 s per thread arena), and RLIMIT_DATA counts it: the cap became a cap on
        # everything the worker ever used, so after a few large queries any allocation failed.
        # Measured at 16M rows: VmData 2.4 GB for 0.1 GB resident by default, 0.4 GB with
        # retain:false; purging after 1 s let a query and the history's recording thread share a
        # 256 MB cap; no measurable cost in query time (decay 0 costs ~50% more CPU). What is
        # still held after a query does not count against the next: `server._rearm`.
        env.setdefault("_RJEM_MALLOC_CONF", MALLOC_CONF)
        self._proc = subprocess.Popen(argv, pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL)
        child.close()
        self._sock = parent
        self._ready = False

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        reply, _ = self._wait(START_TIMEOUT_S)
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise RemoteError(err.get("message", "the query worker could not start"), title=err.get("title"))
        self.session_id = reply["session_id"]
        self.user = reply["user"]
        self._ready = True

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._sock is not None:
            self._sock.close()
        self._proc = self._sock = None
        self._ready = False

    def _restart(self, why: str) -> int:
        """Kill, start fresh on the same audit session, replay the variables. Returns cells that failed.

        Until the replay has finished the worker counts as broken, so if this is itself
        interrupted the next request starts over instead of using a half-restored session.
        """
        self._broken = why
        self._kill()
        self.restarts += 1
        self._spawn(why)
        self._ensure_ready()
        if not self.history:
            self._broken = None
            return 0
        cells, blobs = [], []
        for c in self.history:
            ids = list(range(len(blobs), len(blobs) + len(c.blobs)))
            blobs += c.blobs
            cells.append({"code": c.code, "effects": c.effects, "blob_ids": ids})
        assert self._sock is not None
        wire.send(self._sock, {"op": "replay", "cells": cells}, blobs)
        reply, _ = self._wait(REPLAY_TIMEOUT_S)
        self._broken = None
        return int(reply.get("failed", 0))

    def _wait(self, timeout: float | None) -> tuple[dict[str, Any], list[bytes]]:
        """The next message, or TimeoutError; KeyboardInterrupt passes through."""
        assert self._sock is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self._sock], [], [], left)
            if readable:
                return wire.recv(self._sock)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError

    # ------------------------------------------------------------ requests
    def request(self, op: str, blobs: list[bytes] | None = None, *, timeout: float | None = None,
                **fields: Any) -> tuple[dict[str, Any], list[bytes]]:
        """One request; limits, interrupts and a dead worker become errors, and the worker comes back."""
        with self._lock:
            try:
                if self._broken is not None:
                    self._restart(self._broken)
                self._ensure_ready()
                assert self._sock is not None
                wire.send(self._sock, {"op": op, **fields}, blobs)
                reply, out = self._wait(timeout)
            except TimeoutError:
                lost = self._restart("timeout")
                raise LimitError(
                    f"the query ran longer than {timeout:g} s and was stopped (limit query_timeout_s)"
                    + _lost(lost),
                    hint="your variables are kept; aggregate earlier, filter first, or select fewer columns",
                ) from None
            except KeyboardInterrupt:
                lost = self._restart("interrupt")
                raise ExecutionError("the query was interrupted and stopped; nothing was released" + _lost(lost),
                                     hint="your variables are kept") from None
            except (wire.WireClosed, OSError):
                code = _exit_code(self._proc)
                lost = self._restart("crash")
                what = ("it ran out of memory" if code in (-signal.SIGABRT, -signal.SIGKILL, 134)
                        else "the query worker stopped")
                raise ExecutionError(
                    f"the query was stopped: {what} (limit query_memory_mb = {self.limits.query_memory_mb})"
                    + _lost(lost),
                    hint="your variables are kept; aggregate earlier or select fewer columns",
                ) from None
        if not reply.get("ok"):
            if reply.get("internal"):
                raise RemoteError("Bastion hit an internal error; nothing was released. Your variables are kept.",
                                  title="InternalError")
            err = reply.get("error") or {}
            raise RemoteError(err.get("message", "the request failed"), title=err.get("title"),
                              hint=err.get("hint"))
        return reply, out

    def execute(self, code: str) -> dict[str, Any]:
        reply, blobs = self.request("execute", code=code, timeout=float(self.limits.query_timeout_s))
        if reply.get("error") is None and reply.get("assigned"):
            self.history.append(_Cell(code, reply.get("effects", []), blobs))
        return reply

    def complete(self, code: str, pos: int) -> tuple[list[str], int, int]:
        reply, _ = self.request("complete", code=code, pos=pos, timeout=30.0)
        return reply["matches"], reply["start"], reply["end"]

    def inspect(self, code: str, pos: int) -> str | None:
        reply, _ = self.request("inspect", code=code, pos=pos, timeout=30.0)
        text: str | None = reply["text"]
        return text

    def fetch_html(self, request_id: str) -> str:
        reply, _ = self.request("fetch_html", request_id=request_id, timeout=float(self.limits.query_timeout_s))
        return str(reply["html"])

    def cancel(self, request_id: str) -> dict[str, Any]:
        reply, _ = self.request("cancel", request_id=request_id, timeout=30.0)
        request: dict[str, Any] = reply["request"]
        return request

    def close(self) -> None:
        """Ask the worker to end the session (audit session_end), then make sure it is gone."""
        acquired = self._lock.acquire(timeout=5)
        try:
            if acquired and self._sock is not None and self._proc is not None and self._proc.poll() is None:
                try:
                    self._ensure_ready()
                    wire.send(self._sock, {"op": "close"})
                    self._wait(10.0)
                except (TimeoutError, wire.WireClosed, OSError, BastionError):
                    pass
        finally:
            self._kill()
            if acquired:
                self._lock.release()


def _exit_code(proc: subprocess.Popen[bytes] | None) -> int | None:
    """How the worker ended (it closes its socket a moment before the process is gone)."""
    if proc is None:
        return None
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None


def _lost(failed: int) -> str:
    return "" if not failed else f"; {failed} earlier cell(s) could not be restored, re-run them"
