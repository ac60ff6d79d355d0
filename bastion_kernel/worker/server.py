"""The query worker: the process where cells are interpreted and queries run.

Why a separate process: polars cannot cancel a running query
(`collect(background=True).cancel()` and cancelling `collect_async` let it
run to the end) and a Python thread cannot be killed, so the only way to
honour a time limit, JupyterLab's stop button, or a memory cap is to run
queries where they can be killed. The kernel owns this process; on timeout,
interrupt or death it kills it, starts a fresh one, and replays the cells
that defined the session's variables (see `client.py`), with every release,
fetch and cancellation answered from what the first run recorded, so a
replay neither re-runs a query nor writes the audit log twice.

The memory cap is `RLIMIT_DATA` (private writable memory) set once the
interpreter, polars and the session are up, at that baseline plus
`query_memory_mb`. Measured: polars aborts the process when an allocation
fails under the cap (it does not raise), which is why the cap lives here and
not in the kernel. SIGINT is ignored: interrupts are the kernel's to handle
(it kills this process), and a stray KeyboardInterrupt must not leave a
half-run cell.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import signal
import socket
import sys
from typing import Any

import polars as pl

from .. import config
from ..display import bundle
from ..errors import BastionError
from ..release import ReviewPending, ipc, panic_error
from ..session import Effect, Session
from . import wire


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us if the kernel dies (prctl PR_SET_PDEATHSIG); best effort elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _private_memory() -> int:
    """VmData of this process in bytes (what RLIMIT_DATA counts)."""
    try:
        with open(f"/proc/{os.getpid()}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


_cap: dict[str, int] = {}  # "query": one query's bytes; "ceiling": the most the worker may ever hold


def _cap_memory(query_mb: int) -> None:
    """Cap private memory (RLIMIT_DATA) at what the worker holds plus `query_mb`; re-armed per request.

    Why per request (`_rearm`): address space polars' allocator and its threads
    keep after a query (measured: VmData 272 MB for 85 MB resident after the
    start-up unit profile of 16M rows) counted against every later query, so
    a re-run that fitted the first time ran out (the benchmark's capped run).
    Only the soft limit moves; the hard one is left as the owner set it. The budget is for one query,
    on top of what the worker holds when it starts; the ceiling (start-up
    baseline plus twice the budget) still bounds the worker as a whole, and a
    worker that crowds its queries out is restarted like any out-of-memory.
    """
    # Warm polars' thread pool first: its threads are part of the baseline, not of a query.
    pl.DataFrame({"a": [1, 2]}).lazy().group_by("a").agg(pl.len()).collect()
    _cap["query"] = query_mb * 2**20
    _cap["ceiling"] = _private_memory() + 2 * _cap["query"]
    _rearm()


def _rearm() -> None:
    """Before each request: the soft RLIMIT_DATA at what is held now plus one query's budget."""
    if not _cap:
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = min(_private_memory() + _cap["query"], _cap["ceiling"])
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (ValueError, OSError):
        pass


# --------------------------------------------------------------------------- effects on the wire


def effects_out(effects: list[Effect]) -> tuple[list[dict[str, Any]], list[bytes]]:
    metas: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for e in effects:
        meta: dict[str, Any] = {"kind": e.kind, "meta": e.meta, "blob": None}
        if e.df is not None:
            meta["blob"] = len(blobs)
            blobs.append(e.ipc if e.ipc is not None else ipc(e.df))
        metas.append(meta)
    return metas, blobs


def effects_in(metas: list[dict[str, Any]], blobs: list[bytes]) -> list[Effect]:
    return [
        Effect(m["kind"], m["meta"], None if m["blob"] is None else pl.read_ipc(io.BytesIO(blobs[m["blob"]])))
        for m in metas
    ]


def _pending(p: ReviewPending) -> dict[str, str]:
    return {"request_id": p.request_id, "reason": p.reason, "dataset": p.dataset, "cell": p.cell}


# --------------------------------------------------------------------------- requests


class Worker:
    def __init__(self, session: Session) -> None:
        self.session = session

    def execute(self, msg: dict[str, Any], blobs: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        code = msg["code"]
        result = self.session.execute(code)
        # The cell's value, if it is a review request, becomes the live widget in the kernel; other
        # requests the cell created (e.g. assigned to a variable) get a widget of their own.
        value = result.value if isinstance(result.value, ReviewPending) else None
        out: dict[str, Any] = {
            "outcome": result.outcome, "assigned": result.assigned, "error": None, "data": None,
            "value_pending": None if value is None else _pending(value),
            "pending": [_pending(p) for p in result.pending if p is not value],
        }
        if result.error is not None:
            out["error"] = {"title": result.error.title, "text": result.error.render(code)}
            return out, []
        if value is None:
            out["data"] = bundle(result.value)
        metas, effect_blobs = effects_out(result.effects)
        out["effects"] = metas
        return out, effect_blobs

    def replay(self, msg: dict[str, Any], blobs: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        failed = 0
        for cell in msg["cells"]:
            effects = effects_in(cell["effects"], [blobs[i] for i in cell["blob_ids"]])
            if not self.session.replay(cell["code"], effects):
                failed += 1
        return {"failed": failed}, []

    def complete(self, msg: dict[str, Any], blobs: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        from .. import assist  # on first use: the worker's start-up is on the way to the first cell

        matches, start, end = assist.complete(msg["code"], msg["pos"], self.session)
        return {"matches": matches, "start": start, "end": end}, []

    def inspect(self, msg: dict[str, Any], blobs: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        from .. import assist

        return {"text": assist.inspect(msg["code"], msg["pos"], self.session)}, []

    def fetch_html(self, msg: dict[str, Any], blobs: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        released = self.session.fetch_approved(msg["request_id"], via="widget")
        data = bundle(released) or {}
        return {"html": data.get("text/html", "")}, []

    def cancel(self, msg: dict[str, Any], blobs: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        req = self.session.cancel_request(msg["request_id"])
        return {"request": req.to_dict()}, []

    def close(self, msg: dict[str, Any], blobs: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        self.session.close()
        return {}, []


OPS = {
    "execute": Worker.execute,
    "replay": Worker.replay,
    "complete": Worker.complete,
    "inspect": Worker.inspect,
    "fetch_html": Worker.fetch_html,
    "cancel": Worker.cancel,
    "close": Worker.close,
}


def _failed(exc: BastionError) -> dict[str, Any]:
    """The reply for a request that failed with a user-facing error (the kernel shows it as is)."""
    return {"ok": False, "error": {"title": exc.title, "message": exc.message, "hint": exc.hint}}


def serve(sock: socket.socket, worker: Worker) -> None:
    """Answer requests one at a time until the kernel closes the socket or says close."""
    while True:
        try:
            msg, blobs = wire.recv(sock)
        except wire.WireClosed:
            return
        op = OPS.get(msg.get("op", ""))
        _rearm()
        try:
            if op is None:
                raise BastionError(f"unknown worker request {msg.get('op')!r}")
            out, out_blobs = op(worker, msg, blobs)
            reply = {"ok": True, **out}
        except BastionError as exc:
            reply, out_blobs = _failed(exc), []
        except pl.exceptions.PanicException:  # a BaseException: uncaught, it would end the worker unanswered
            reply, out_blobs = _failed(panic_error()), []
        except Exception:  # noqa: BLE001 - a bug must not take the session down; the kernel logs it
            import traceback

            print(traceback.format_exc(), file=sys.stderr, flush=True)
            reply, out_blobs = {"ok": False, "internal": True}, []
        wire.send(sock, reply, out_blobs)
        if msg.get("op") == "close":
            return


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bastion-worker")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--kernel-id", required=True)
    p.add_argument("--resume", default=None, help="audit session to continue (after a restart)")
    p.add_argument("--why", default="restart", help="why the previous worker was stopped (audited)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    sock = socket.socket(fileno=args.fd)
    try:
        deployment = config.load()
        session = Session(deployment, kernel_id=args.kernel_id, resume_session=args.resume)
        if args.resume:
            session.audit.record("worker_restart", why=args.why)
    except BastionError as exc:
        wire.send(sock, _failed(exc))
        return
    _cap_memory(deployment.limits.query_memory_mb)
    wire.send(sock, {"ok": True, "session_id": session.audit.session_id, "user": session.user})
    _warm_up(session)
    serve(sock, Worker(session))


def _warm_up(session: Session) -> None:
    """Measure the datasets' unit profiles (`sources.unit_profile`) while the user has not run a cell yet."""
    import threading

    from ..policy.history import idle_for
    from ..sources import warm

    datasets = list(session.visible_datasets.values())
    threading.Thread(target=warm, args=(datasets, session.deployment.state_dir, session.limits.query_memory_mb,
                                        idle_for), name="bastion-warm", daemon=True).start()


if __name__ == "__main__":
    main()
