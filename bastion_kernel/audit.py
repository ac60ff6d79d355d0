"""Tamper-evident, append-only audit log: one JSON-lines file per kernel session.

Why: the data owner must be able to see afterwards what every user ran and what
left the kernel, and to trust that nobody (including the user, who can read
and write the state folder in some deployments) quietly edited that history.

Layout::

    state_dir/audit/<session_id>.jsonl   one record per line, append-only
    state_dir/bastion.db                 SQLite; table ``audit_heads`` keeps
                                         (session, seq, hash) of the last record

Session ids look like ``20261123T142700Z-alice-3f9a1c``: UTC start time, the
user sanitised to ``[A-Za-z0-9_.-]``, six random hex digits. They sort by time.

Record format (one line, compact JSON, ASCII only)::

    {"seq": n, "ts": "<UTC ISO 8601>", "session": id, "event": name,
     ...fields..., "prev": "<hash of record n-1, or 64 zeros for n = 1>",
     "hash": "<sha256 hex>"}

``seq`` starts at 1 (so it equals the line number while the file is intact).
``hash`` is the SHA-256 of the canonical JSON of the record without ``hash``:
``json.dumps(record, sort_keys=True, separators=(",", ":"))`` (default
``ensure_ascii=True``), UTF-8 encoded. Each line is written as
``json.dumps(record, separators=(",", ":"))`` in the key order above; `verify`
also checks that every line is byte-identical to that serialisation, so even
edits that parse to the same value (``1e5`` → ``1E5``) are caught.

Events written by the kernel and the owner's CLI:

``session_start``   user, kernel_id, notebook_path, config_digest
``cell``            source, outcome ("released" | "review" | "refused" |
                    "error" | "ok"), reason, rows, columns, output_digest
``review_request``  request_id, dataset, reason
``review_decision`` request_id, decision, by, reason
``fetch``           request_id
``session_end``     (no fields)

What is detected (`verify`): an altered byte (hash mismatch, invalid JSON, or
non-canonical bytes), a removed or reordered record (``seq`` gap or ``prev``
mismatch), a truncated tail (the SQLite head is ahead of the file), a deleted
file whose head is still known, and a file with no head. The chain is not
keyed: someone able to rewrite *both* the file and the database consistently
can forge history. The head in SQLite raises the bar; shipping heads off-box
(or signing them) is the next step if that threat matters.

Concurrency: the kernel (several threads) and the owner's CLI may append to
one session at once. Every append opens the file, takes an exclusive
``fcntl.flock``, reads the last record and the SQLite head under that lock,
appends, fsyncs, then updates the head — so the chain is linear no matter who
writes. A crash between the fsync and the head update leaves the file one
record ahead of its head; `verify` reports it and appending refuses until the
owner has looked, which is the safe direction for an audit log.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from . import db
from .errors import AuditError

GENESIS = "0" * 64
RESERVED_KEYS = frozenset({"seq", "ts", "session", "event", "prev", "hash"})
EVENTS = frozenset({"session_start", "cell", "review_request", "review_decision", "fetch", "worker_restart",
                    "session_end"})
DB_NAME = "bastion.db"
AUDIT_DIR = "audit"

_SESSION_RE = re.compile(r"^\d{8}T\d{6}Z-[A-Za-z0-9_.-]{1,64}-[0-9a-f]{6}$")
_USER_BAD = re.compile(r"[^A-Za-z0-9_.-]")
_EVENT_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class Problem:
    """One reason a session does not verify.

    `line` is 1-based; 0 means the problem concerns the session as a whole
    (missing file, missing head); ``last line + 1`` means records are missing
    after the end of the file (truncation).
    """

    session: str
    line: int
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "whole session"
        return f"session {self.session}, {where}: {self.reason}"


# --------------------------------------------------------------------------- helpers


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _canonical(record: dict[str, Any]) -> bytes:
    """The bytes the hash covers: sorted keys, no whitespace, ASCII."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of `record` minus its ``hash`` key."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


def _line(record: dict[str, Any]) -> bytes:
    """How a record is stored: insertion order kept for humans reading raw files."""
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\n"


def _sanitise_user(user: str) -> str:
    cleaned = _USER_BAD.sub("_", user)[:64]
    return cleaned or "unknown"


def _check_session_id(session_id: str) -> None:
    """Session ids become file names: refuse anything that is not one of ours."""
    if not isinstance(session_id, str) or not _SESSION_RE.match(session_id):
        raise AuditError(f"{session_id!r} is not an audit session id", hint="see `bastion audit list`")


def _audit_dir(state_dir: Path) -> Path:
    return Path(state_dir) / AUDIT_DIR


def _session_file(state_dir: Path, session_id: str) -> Path:
    return _audit_dir(state_dir) / f"{session_id}.jsonl"


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS audit_heads ("
    " session TEXT PRIMARY KEY, user TEXT NOT NULL, started TEXT NOT NULL,"
    " seq INTEGER NOT NULL, hash TEXT NOT NULL, last_event TEXT NOT NULL, updated TEXT NOT NULL)"
)


def _connect(state_dir: Path) -> sqlite3.Connection:
    """This thread's connection to the heads database, kept open (`db.shared`): one per record was most of a cell's cost."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    return db.shared(Path(state_dir) / DB_NAME, _SCHEMA)


def _head(conn: sqlite3.Connection, session_id: str) -> tuple[int, str] | None:
    row = conn.execute("SELECT seq, hash FROM audit_heads WHERE session = ?", (session_id,)).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def _last_line(fh: IO[bytes]) -> bytes | None:
    """The last complete line of the file, read backwards in chunks (files grow large)."""
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    if end == 0:
        return None
    fh.seek(end - 1)
    if fh.read(1) != b"\n":
        raise AuditError("the audit file ends in an incomplete record", hint="run `bastion audit verify`")
    pos = end - 1  # buf holds bytes [pos, end - 1): everything but the final newline
    buf = b""
    while pos > 0:
        step = min(8192, pos)
        pos -= step
        fh.seek(pos)
        buf = fh.read(step) + buf
        cut = buf.rfind(b"\n")
        if cut != -1:
            return buf[cut + 1 :]
    return buf


def _fsync_dir(path: Path) -> None:
    """Make a newly created file's directory entry durable too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_fields(event: str, fields: dict[str, Any]) -> None:
    if not isinstance(event, str) or not _EVENT_RE.match(event):
        raise AuditError(f"{event!r} is not a valid audit event name")
    clash = RESERVED_KEYS.intersection(fields)
    if clash:
        raise AuditError(f"audit field name(s) {', '.join(sorted(clash))} are reserved")


def _append(
    state_dir: Path,
    session_id: str,
    event: str,
    fields: dict[str, Any],
    *,
    start_user: str | None = None,
) -> dict[str, Any]:
    """Append one record under the file lock; `start_user` set means "create the session"."""
    _check_fields(event, fields)
    path = _session_file(state_dir, session_id)
    starting = start_user is not None
    try:
        # "xb" so two starters can never share a file; "r+b" so a deleted
        # file is an error rather than silently recreated.
        fh = open(path, "xb" if starting else "r+b")  # noqa: SIM115 - closed by `with`
    except FileNotFoundError:
        raise AuditError(f"the audit file of session {session_id} is missing", hint="run `bastion audit verify`") from None
    with fh:
        # flock belongs to this open file description, so threads of one
        # process exclude each other too; closing the file releases it.
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        conn = _connect(state_dir)
        head = _head(conn, session_id)
        if starting:
            if head is not None:
                raise AuditError(f"audit session {session_id} already exists")
            seq, prev = 1, GENESIS
        else:
            seq, prev = _next_link(fh, head, session_id)
        record: dict[str, Any] = {"seq": seq, "ts": _iso(_utc_now()), "session": session_id, "event": event}
        record.update(fields)
        record["prev"] = prev
        try:
            record["hash"] = record_hash(record)
            data = _line(record)
        except (TypeError, ValueError) as exc:
            raise AuditError(f"audit record {event!r} cannot be stored as JSON: {exc}") from None
        fh.seek(0, os.SEEK_END)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
        if starting:
            _fsync_dir(path.parent)
        _store_head(conn, session_id, record, head, start_user)
    result: dict[str, Any] = json.loads(data)
    return result


def _next_link(fh: IO[bytes], head: tuple[int, str] | None, session_id: str) -> tuple[int, str]:
    """seq and prev for the next record; refuse if the file and its head disagree,
    since appending would paper over a truncation or an injected record."""
    if head is None:
        raise AuditError(f"audit session {session_id} has no recorded head", hint="run `bastion audit verify`")
    last = _last_line(fh)
    try:
        rec = json.loads(last) if last is not None else None
        last_link = (int(rec["seq"]), str(rec["hash"])) if isinstance(rec, dict) else None
    except (ValueError, KeyError, TypeError):
        last_link = None
    if last_link != head:
        raise AuditError(
            f"the audit file of session {session_id} does not end at its recorded head;"
            " refusing to append to a log that may have been altered",
            hint="run `bastion audit verify`",
        )
    return head[0] + 1, head[1]


def _store_head(
    conn: sqlite3.Connection,
    session_id: str,
    record: dict[str, Any],
    old: tuple[int, str] | None,
    start_user: str | None,
) -> None:
    with db.transaction(conn):
        if start_user is not None:
            conn.execute(
                "INSERT INTO audit_heads (session, user, started, seq, hash, last_event, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (session_id, start_user, record["ts"], record["seq"], record["hash"], record["event"], record["ts"]),
            )
        else:
            assert old is not None
            cur = conn.execute(
                "UPDATE audit_heads SET seq = ?, hash = ?, last_event = ?, updated = ?"
                " WHERE session = ? AND seq = ? AND hash = ?",
                (record["seq"], record["hash"], record["event"], record["ts"], session_id, old[0], old[1]),
            )
            if cur.rowcount != 1:
                raise AuditError(f"the head of audit session {session_id} changed underneath an append")


# --------------------------------------------------------------------------- the log


class AuditLog:
    """Appends records to one session's log.

    `open_session` starts a new session (the kernel, once per start);
    `attach` appends to an existing one (the owner's CLI recording a review
    decision in the requesting session). Safe to share between threads.
    """

    def __init__(self, state_dir: Path, session_id: str, *, owner: bool) -> None:
        self.state_dir = Path(state_dir)
        self.session_id = session_id
        self._owner = owner
        self._closed = False

    @classmethod
    def open_session(
        cls,
        state_dir: Path,
        *,
        user: str,
        kernel_id: str,
        notebook_path: str | None,
        config_digest: str,
    ) -> AuditLog:
        """Create a new session file and write its ``session_start`` record."""
        state_dir = Path(state_dir)
        _audit_dir(state_dir).mkdir(parents=True, exist_ok=True)
        fields = {"user": user, "kernel_id": kernel_id, "notebook_path": notebook_path, "config_digest": config_digest}
        try:
            _line(fields)  # fail before a file exists, not after
        except (TypeError, ValueError) as exc:
            raise AuditError(f"session_start fields cannot be stored as JSON: {exc}") from None
        for _ in range(8):
            stamp = _utc_now().strftime("%Y%m%dT%H%M%SZ")
            session_id = f"{stamp}-{_sanitise_user(user)}-{secrets.token_hex(3)}"
            try:
                _append(state_dir, session_id, "session_start", fields, start_user=user)
            except FileExistsError:
                continue
            return cls(state_dir, session_id, owner=True)
        raise AuditError("could not allocate a fresh audit session id")

    @classmethod
    def attach(cls, state_dir: Path, session_id: str) -> AuditLog:
        """An appender for an existing session; `AuditError` if it is unknown."""
        _check_session_id(session_id)
        state_dir = Path(state_dir)
        head = _head(_connect(state_dir), session_id)
        if head is None or not _session_file(state_dir, session_id).is_file():
            raise AuditError(f"unknown audit session {session_id}", hint="see `bastion audit list`")
        return cls(state_dir, session_id, owner=False)

    @classmethod
    def resume(cls, state_dir: Path, session_id: str) -> AuditLog:
        """Continue a session this kernel opened, from a restarted query worker.

        Unlike `attach`, the resumed log owns the session: it writes its
        ``session_end`` when the kernel shuts down.
        """
        attached = cls.attach(state_dir, session_id)
        return cls(attached.state_dir, session_id, owner=True)

    def record(self, event: str, /, **fields: Any) -> dict[str, Any]:
        """Append one record and return it exactly as stored."""
        if self._closed:
            raise AuditError(f"audit session {self.session_id} is closed")
        if event == "session_start":
            raise AuditError("session_start is written only by AuditLog.open_session")
        return _append(self.state_dir, self.session_id, event, fields)

    def close(self) -> None:
        """Write ``session_end`` once. An attached log writes nothing: the session
        belongs to whoever opened it, and a CLI decision must not end it."""
        if self._closed:
            return
        self._closed = True
        if self._owner:
            _append(self.state_dir, self.session_id, "session_end", {})

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog({self.session_id!r})"


# --------------------------------------------------------------------------- reading


def _heads(state_dir: Path) -> dict[str, dict[str, Any]]:
    rows = _connect(state_dir).execute("SELECT session, user, started, seq, hash, last_event FROM audit_heads").fetchall()
    return {r[0]: {"user": r[1], "started": r[2], "seq": int(r[3]), "hash": r[4], "last_event": r[5]} for r in rows}


def _files(state_dir: Path) -> set[str]:
    folder = _audit_dir(state_dir)
    if not folder.is_dir():
        return set()
    return {p.stem for p in folder.glob("*.jsonl") if _SESSION_RE.match(p.stem)}


def list_sessions(state_dir: Path) -> list[dict[str, Any]]:
    """Every known session, oldest first: session, user, started, records, last_event."""
    state_dir = Path(state_dir)
    heads = _heads(state_dir)
    out: list[dict[str, Any]] = []
    for sid in sorted(set(heads) | _files(state_dir)):
        head = heads.get(sid)
        if head is not None:
            out.append(
                {
                    "session": sid,
                    "user": head["user"],
                    "started": head["started"],
                    "records": head["seq"],
                    "last_event": head["last_event"],
                }
            )
            continue
        # A file without a head: describe it from its contents, best effort.
        try:
            records = read_session(state_dir, sid)
        except AuditError:
            records = []
        first = records[0] if records else {}
        out.append(
            {
                "session": sid,
                "user": first.get("user"),
                "started": first.get("ts"),
                "records": len(records),
                "last_event": records[-1].get("event") if records else None,
            }
        )
    return out


def read_session(state_dir: Path, session_id: str) -> list[dict[str, Any]]:
    """All records of a session, in file order. Does not verify; see `verify`."""
    _check_session_id(session_id)
    state_dir = Path(state_dir)
    path = _session_file(state_dir, session_id)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if session_id in _heads(state_dir):
            raise AuditError(f"the audit file of session {session_id} is missing", hint="run `bastion audit verify`") from None
        raise AuditError(f"unknown audit session {session_id}", hint="see `bastion audit list`") from None
    records: list[dict[str, Any]] = []
    for n, raw in enumerate(data.splitlines(), start=1):
        try:
            rec = json.loads(raw)
        except ValueError:
            rec = None
        if not isinstance(rec, dict):
            raise AuditError(f"line {n} of audit session {session_id} is not a JSON record", hint="run `bastion audit verify`")
        records.append(rec)
    return records


def verify(state_dir: Path, session_id: str | None = None) -> list[Problem]:
    """Check one session (or all); an empty list means everything verified."""
    state_dir = Path(state_dir)
    heads = _heads(state_dir)
    if session_id is not None:
        _check_session_id(session_id)
        if session_id not in heads and not _session_file(state_dir, session_id).exists():
            raise AuditError(f"unknown audit session {session_id}", hint="see `bastion audit list`")
        sessions = [session_id]
    else:
        sessions = sorted(set(heads) | _files(state_dir))
    problems: list[Problem] = []
    for sid in sessions:
        head = heads.get(sid)
        problems.extend(_verify_one(state_dir, sid, (head["seq"], head["hash"]) if head else None))
    return problems


_REQUIRED: tuple[tuple[str, type], ...] = (
    ("seq", int),
    ("ts", str),
    ("session", str),
    ("event", str),
    ("prev", str),
    ("hash", str),
)


def _verify_one(state_dir: Path, sid: str, head: tuple[int, str] | None) -> list[Problem]:
    path = _session_file(state_dir, sid)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [Problem(sid, 0, "audit file is missing but the session is recorded in bastion.db")]
    problems: list[Problem] = []
    if head is None:
        problems.append(Problem(sid, 0, "no recorded head in bastion.db for this file (file injected or database replaced)"))
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    elif data:
        problems.append(Problem(sid, len(lines), "last record is incomplete (no newline)"))
    expected_seq: int | None = 1
    prev_hash: str | None = GENESIS
    last: tuple[int, str] | None = None
    for n, raw in enumerate(lines, start=1):
        reason, rec = _check_record(raw, sid, n, expected_seq, prev_hash)
        if reason:
            problems.append(Problem(sid, n, reason))
        if rec is None:
            # Unreadable: we cannot know what the next record should link to.
            expected_seq, prev_hash, last = None, None, None
            continue
        expected_seq, prev_hash = rec["seq"] + 1, rec["hash"]
        last = (rec["seq"], rec["hash"])
    if not lines:
        problems.append(Problem(sid, 1, "audit file is empty (session_start removed)"))
    if head is not None and last is not None and last != head:
        if last[0] < head[0]:
            problems.append(
                Problem(sid, len(lines) + 1, f"file ends at record {last[0]} but {head[0]} were written (tail truncated)")
            )
        else:
            problems.append(Problem(sid, len(lines), f"last record does not match the recorded head (seq {head[0]})"))
    elif head is not None and not lines:
        problems.append(Problem(sid, 1, f"file is empty but {head[0]} records were written (truncated)"))
    return problems


def _check_record(
    raw: bytes, sid: str, n: int, expected_seq: int | None, prev_hash: str | None
) -> tuple[str | None, dict[str, Any] | None]:
    """(reason or None, parsed record or None if it cannot be linked)."""
    try:
        rec = json.loads(raw)
    except ValueError:
        return "not valid JSON (record altered)", None
    if not isinstance(rec, dict):
        return "not a JSON object (record altered)", None
    for key, typ in _REQUIRED:
        if not isinstance(rec.get(key), typ) or isinstance(rec.get(key), bool):
            return f"field {key!r} missing or of the wrong type (record altered)", None
    if rec["hash"] != record_hash(rec):
        return "hash does not match the record's contents (record altered)", rec
    try:
        if _line(rec)[:-1] != raw:
            return "record bytes are not in their canonical form (record altered)", rec
    except ValueError:
        return "record holds non-standard JSON (record altered)", rec
    if rec["session"] != sid:
        return f"record belongs to session {rec['session']} (records moved between files)", rec
    if n == 1 and rec["event"] != "session_start":
        if rec["seq"] != 1:
            return f"first record has seq {rec['seq']} (earlier records removed)", rec
        return "first record is not session_start", rec
    if expected_seq is not None and rec["seq"] != expected_seq:
        return f"expected seq {expected_seq}, found {rec['seq']} (records removed or reordered)", rec
    if prev_hash is not None and rec["prev"] != prev_hash:
        return "prev does not match the previous record's hash (records removed or altered)", rec
    return None, rec
