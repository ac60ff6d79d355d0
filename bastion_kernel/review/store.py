"""The review queue: held-back results waiting for the data owner's decision.

Why SQLite in ``state_dir/bastion.db``: the kernel (several threads) creates
requests and fetches approved ones while the owner's ``bastion review`` CLI
decides them from another process, possibly at the same moment. SQLite in
WAL mode with a long busy timeout gives each operation an atomic view without
a server; every read-modify-write runs under ``BEGIN IMMEDIATE`` so two
deciders can never both decide the same request.

Each operation opens its own connection: connections are not shared between
threads, and a forked process never inherits a live one.

The snapshot is the exact frame that would have been released, stored as
Arrow IPC bytes with its SHA-256, so what the owner reviews is byte for byte
what the requester later fetches.

Who may do what is enforced here only where it protects data: `fetch` and
`cancel` belong to the requester. Whether the caller of `approve`/`reject`
is the owner is the deployment's business (file permissions on the state
folder, the CLI being the owner's tool).
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import db
from ..errors import ReviewError

if TYPE_CHECKING:  # imported where snapshots are read or checked, so the kernel process starts without polars
    import polars as pl

DB_NAME = "bastion.db"
STATUSES = ("pending", "approved", "rejected", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_requests (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    dataset TEXT NOT NULL,
    session_id TEXT NOT NULL,
    cell TEXT NOT NULL,
    reason TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'cancelled')),
    created TEXT NOT NULL,
    decided_by TEXT,
    decided_at TEXT,
    decision_reason TEXT,
    rows INTEGER NOT NULL,
    columns TEXT NOT NULL,
    snapshot BLOB NOT NULL,
    snapshot_digest TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS review_requests_status ON review_requests (status, created);
"""

_FIELDS = (
    "id, user, dataset, session_id, cell, reason, status, created,"
    " decided_by, decided_at, decision_reason, rows, columns, snapshot_digest"
)


@dataclass(frozen=True)
class ReviewRequest:
    """One request as stored, without the snapshot bytes (fetch those on demand)."""

    id: str
    user: str
    dataset: str
    session_id: str
    cell: str
    reason: str
    status: str
    created: str
    decided_by: str | None
    decided_at: str | None
    decision_reason: str | None
    rows: int
    columns: tuple[str, ...]
    snapshot_digest: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (columns as a list) for the CLI's ``--json``."""
        out = asdict(self)
        out["columns"] = list(self.columns)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReviewRequest:
        """The inverse of `to_dict` (requests cross from the query worker as JSON)."""
        return cls(**{**data, "columns": tuple(data["columns"])})

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> ReviewRequest:
        return cls(
            id=row["id"],
            user=row["user"],
            dataset=row["dataset"],
            session_id=row["session_id"],
            cell=row["cell"],
            reason=row["reason"],
            status=row["status"],
            created=row["created"],
            decided_by=row["decided_by"],
            decided_at=row["decided_at"],
            decision_reason=row["decision_reason"],
            rows=int(row["rows"]),
            columns=tuple(json.loads(row["columns"])),
            snapshot_digest=row["snapshot_digest"],
        )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _nonempty(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ReviewError(f"{what} must be a non-empty string")
    return value


class ReviewStore:
    """Create, list, decide and fetch review requests in ``state_dir/bastion.db``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / DB_NAME
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: once, when the store is opened
            conn.executescript(_SCHEMA)

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One short-lived connection per operation (threads, processes, forks)."""
        conn = db.connect(self.path, named_rows=True)
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front, so a read inside it cannot go stale."""
        with self._connect() as conn, db.transaction(conn):
            yield conn

    @staticmethod
    def _row(conn: sqlite3.Connection, request_id: str) -> sqlite3.Row | None:
        if not isinstance(request_id, str):
            return None
        row: sqlite3.Row | None = conn.execute(
            f"SELECT {_FIELDS} FROM review_requests WHERE id = ?", (request_id,)
        ).fetchone()
        return row

    # ------------------------------------------------------------------ create / read

    def create(
        self,
        *,
        user: str,
        dataset: str,
        session_id: str,
        cell: str,
        reason: str,
        snapshot: pl.DataFrame,
    ) -> str:
        """Queue `snapshot` for the owner's review; returns the new request id."""
        _nonempty(user, "user")
        _nonempty(dataset, "dataset")
        _nonempty(session_id, "session_id")
        _nonempty(reason, "reason")
        if not isinstance(cell, str):
            raise ReviewError("cell must be a string")
        import polars as pl

        if not isinstance(snapshot, pl.DataFrame):
            raise ReviewError("the snapshot must be a polars DataFrame")
        buf = io.BytesIO()
        snapshot.write_ipc(buf)
        blob = buf.getvalue()
        digest = hashlib.sha256(blob).hexdigest()
        columns = json.dumps(list(snapshot.columns))
        for _ in range(8):
            request_id = "R" + secrets.token_hex(4)
            try:
                with self._write() as conn:
                    conn.execute(
                        "INSERT INTO review_requests (id, user, dataset, session_id, cell, reason, status,"
                        " created, rows, columns, snapshot, snapshot_digest)"
                        " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                        (request_id, user, dataset, session_id, cell, reason, _now(),
                         snapshot.height, columns, blob, digest),
                    )
            except sqlite3.IntegrityError:
                continue  # id collision: draw another
            return request_id
        raise ReviewError("could not allocate a fresh review request id")

    def get(self, request_id: str) -> ReviewRequest:
        """The request with this id; `ReviewError` if there is none."""
        with self._connect() as conn:
            row = self._row(conn, request_id)
        if row is None:
            raise ReviewError(f"no review request {request_id}", hint="see `bastion review list --all`")
        return ReviewRequest._from_row(row)

    def get_many(self, request_ids: builtins.list[str]) -> dict[str, ReviewRequest]:
        """The requests among `request_ids` that exist, in one query (the widget watcher polls this)."""
        ids = builtins.list(dict.fromkeys(request_ids))[:500]
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {_FIELDS} FROM review_requests WHERE id IN ({marks})", ids).fetchall()
        return {r["id"]: ReviewRequest._from_row(r) for r in rows}

    def snapshot(self, request_id: str) -> pl.DataFrame:
        """The held-back frame, checked against its digest (owner's view; no user check)."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT snapshot, snapshot_digest FROM review_requests WHERE id = ?", (request_id,)
            ).fetchone()
        if row is None:
            raise ReviewError(f"no review request {request_id}", hint="see `bastion review list --all`")
        return self._decode(request_id, row["snapshot"], row["snapshot_digest"])

    @staticmethod
    def _decode(request_id: str, blob: bytes, digest: str) -> pl.DataFrame:
        if hashlib.sha256(blob).hexdigest() != digest:
            raise ReviewError(f"the snapshot of request {request_id} does not match its digest; it was altered")
        import polars as pl

        return pl.read_ipc(io.BytesIO(blob))

    def list(
        self,
        *,
        status: str | None = "pending",
        user: str | None = None,
        dataset: str | None = None,
    ) -> builtins.list[ReviewRequest]:
        """Requests matching every given filter, oldest first (None = any)."""
        if status is not None and status not in STATUSES:
            raise ReviewError(f"unknown status {status!r}", hint=f"one of {', '.join(STATUSES)}")
        where: builtins.list[str] = []
        params: builtins.list[str] = []
        for column, value in (("status", status), ("user", user), ("dataset", dataset)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {_FIELDS} FROM review_requests"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created, rowid"
        with self._connect() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [ReviewRequest._from_row(r) for r in rows]

    # ------------------------------------------------------------------ decisions

    def approve(self, request_id: str, *, by: str) -> ReviewRequest:
        """Release the snapshot to its requester."""
        return self._decide(request_id, "approved", by=by, reason=None)

    def reject(self, request_id: str, *, by: str, reason: str) -> ReviewRequest:
        """Refuse for good; the reason is shown to the requester, so it is required."""
        _nonempty(reason, "a rejection reason")
        return self._decide(request_id, "rejected", by=by, reason=reason.strip())

    def cancel(self, request_id: str, *, by: str) -> ReviewRequest:
        """The requester withdraws their own pending request (the owner rejects instead)."""
        return self._decide(request_id, "cancelled", by=by, reason=None, requester_only=True)

    def _decide(
        self,
        request_id: str,
        status: str,
        *,
        by: str,
        reason: str | None,
        requester_only: bool = False,
    ) -> ReviewRequest:
        _nonempty(by, "the decider's name")
        with self._write() as conn:
            row = self._row(conn, request_id)
            if row is None or (requester_only and row["user"] != by):
                raise ReviewError(f"no review request {request_id}" + (f" for user {by}" if requester_only else ""))
            if row["status"] != "pending":
                raise ReviewError(
                    f"request {request_id} was already {row['status']} by {row['decided_by']}"
                    f" at {row['decided_at']}; a decision is final"
                )
            cur = conn.execute(
                "UPDATE review_requests SET status = ?, decided_by = ?, decided_at = ?, decision_reason = ?"
                " WHERE id = ? AND status = 'pending'",
                (status, by, _now(), reason, request_id),
            )
            if cur.rowcount != 1:  # cannot happen under BEGIN IMMEDIATE; refuse loudly if it does
                raise ReviewError(f"request {request_id} changed while being decided")
            decided = self._row(conn, request_id)
        assert decided is not None
        return ReviewRequest._from_row(decided)

    # ------------------------------------------------------------------ fetch

    def fetch(self, request_id: str, *, user: str) -> pl.DataFrame:
        """The approved snapshot, for its requester only.

        Anyone else is told the request does not exist for them: the same
        message as a truly unknown id, so nothing about it leaks.
        """
        with self._connect() as conn:
            row = conn.execute(
                "SELECT user, status, decided_by, decision_reason, snapshot, snapshot_digest"
                " FROM review_requests WHERE id = ?",
                (request_id,),
            ).fetchone()
        if row is None or row["user"] != user:
            raise ReviewError(f"no review request {request_id} for user {user}")
        status = row["status"]
        if status == "pending":
            raise ReviewError(
                f"request {request_id} is still pending: the data owner has not decided yet",
                hint="try again after the owner has reviewed it",
            )
        if status == "rejected":
            raise ReviewError(f"request {request_id} was rejected by {row['decided_by']}: {row['decision_reason']}")
        if status == "cancelled":
            raise ReviewError(f"request {request_id} was cancelled")
        return self._decode(request_id, row["snapshot"], row["snapshot_digest"])
