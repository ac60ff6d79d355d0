"""The audit log must make every edit, removal and truncation visible, and stay
linear when the kernel and the owner's CLI append at the same moment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the package is not necessarily pip-installed

from bastion_kernel.audit import (  # noqa: E402
    GENESIS,
    AuditLog,
    Problem,
    list_sessions,
    read_session,
    record_hash,
    verify,
)
from bastion_kernel.errors import AuditError  # noqa: E402


def _open(state: Path, user: str = "alice") -> AuditLog:
    return AuditLog.open_session(state, user=user, kernel_id="k-1", notebook_path="nb.ipynb", config_digest="d" * 64)


def _fill(state: Path, n_cells: int = 5) -> AuditLog:
    log = _open(state)
    for i in range(n_cells):
        log.record(
            "cell",
            source=f"df.group_by('region').agg(pl.len())  # {i}\n",
            outcome="released",
            reason=None,
            rows=i,
            columns=["region", "len"],
            output_digest=f"{i:064x}",
        )
    log.close()
    return log


def _path(state: Path, log: AuditLog) -> Path:
    return state / "audit" / f"{log.session_id}.jsonl"


def test_session_id_shape_and_chain_verifies(tmp_path: Path) -> None:
    log = _fill(tmp_path)
    assert log.session_id.split("-")[1] == "alice"
    assert len(log.session_id.split("-")[-1]) == 6
    records = read_session(tmp_path, log.session_id)
    assert [r["event"] for r in records] == ["session_start"] + ["cell"] * 5 + ["session_end"]
    assert [r["seq"] for r in records] == list(range(1, 8))
    assert records[0]["prev"] == GENESIS
    assert records[0]["user"] == "alice" and records[0]["config_digest"] == "d" * 64
    for prev, rec in zip(records, records[1:]):
        assert rec["prev"] == prev["hash"]
    assert all(r["hash"] == record_hash(r) for r in records)
    assert verify(tmp_path) == []
    assert verify(tmp_path, log.session_id) == []
    [info] = list_sessions(tmp_path)
    assert info == {
        "session": log.session_id,
        "user": "alice",
        "started": records[0]["ts"],
        "records": 7,
        "last_event": "session_end",
    }


def test_user_is_sanitised_in_session_id(tmp_path: Path) -> None:
    log = _open(tmp_path, user="../eve smith")
    assert "/" not in log.session_id and " " not in log.session_id
    assert _path(tmp_path, log).parent == tmp_path / "audit"
    assert read_session(tmp_path, log.session_id)[0]["user"] == "../eve smith"


def test_every_single_byte_change_is_detected(tmp_path: Path) -> None:
    log = _fill(tmp_path, n_cells=2)
    path = _path(tmp_path, log)
    original = path.read_bytes()
    lines = original.split(b"\n")
    line_no = 3  # a middle record: the second cell
    start = sum(len(line) + 1 for line in lines[: line_no - 1])
    end = start + len(lines[line_no - 1])
    for offset in range(start, end):
        data = bytearray(original)
        # flip to a byte that keeps the file ASCII and single-line where possible
        data[offset] = ord("x") if data[offset] != ord("x") else ord("y")
        path.write_bytes(bytes(data))
        problems = verify(tmp_path)
        assert problems, f"change at byte {offset - start} of line {line_no} not detected"
        assert problems[0] == Problem(log.session_id, line_no, problems[0].reason)
    path.write_bytes(original)
    assert verify(tmp_path) == []


def test_equivalent_but_different_bytes_are_detected(tmp_path: Path) -> None:
    log = _open(tmp_path)
    log.record("cell", source="x", outcome="ok", reason=None, rows=100000000000000000000.0, columns=[], output_digest="")
    path = _path(tmp_path, log)
    text = path.read_bytes()
    assert b"1e+20" in text
    path.write_bytes(text.replace(b"1e+20", b"1E+20"))  # parses to the same float
    [problem] = verify(tmp_path)
    assert problem.line == 2 and "canonical" in problem.reason


def test_removed_middle_record_is_detected(tmp_path: Path) -> None:
    log = _fill(tmp_path)
    path = _path(tmp_path, log)
    lines = path.read_bytes().splitlines(keepends=True)
    del lines[3]
    path.write_bytes(b"".join(lines))
    problems = verify(tmp_path)
    assert problems and problems[0].session == log.session_id and problems[0].line == 4
    assert "removed" in problems[0].reason


def test_removed_first_record_is_detected(tmp_path: Path) -> None:
    log = _fill(tmp_path)
    path = _path(tmp_path, log)
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[1:]))
    problems = verify(tmp_path)
    assert problems and problems[0].line == 1


def test_truncated_tail_is_detected_and_blocks_appends(tmp_path: Path) -> None:
    log = _open(tmp_path)
    for i in range(3):
        log.record("fetch", request_id=f"R{i:08x}")
    path = _path(tmp_path, log)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))
    problems = verify(tmp_path, log.session_id)
    assert len(problems) == 1
    assert problems[0].session == log.session_id and problems[0].line == 4
    assert "truncated" in problems[0].reason
    # Appending now would hide the truncation behind a fresh, valid chain.
    with pytest.raises(AuditError):
        log.record("fetch", request_id="R99999999")
    with pytest.raises(AuditError):
        AuditLog.attach(tmp_path, log.session_id).record("fetch", request_id="R99999999")


def test_missing_file_and_unknown_sessions(tmp_path: Path) -> None:
    log = _fill(tmp_path, n_cells=1)
    other = _fill(tmp_path, n_cells=1)
    _path(tmp_path, log).unlink()
    problems = verify(tmp_path)
    assert [(p.session, p.line) for p in problems] == [(log.session_id, 0)]
    assert "missing" in problems[0].reason
    assert verify(tmp_path, other.session_id) == []
    with pytest.raises(AuditError, match="missing"):
        read_session(tmp_path, log.session_id)
    with pytest.raises(AuditError, match="unknown"):
        read_session(tmp_path, "20200101T000000Z-nobody-abcdef")
    with pytest.raises(AuditError):
        read_session(tmp_path, "../../etc/passwd")
    with pytest.raises(AuditError, match="unknown"):
        AuditLog.attach(tmp_path, "20200101T000000Z-nobody-abcdef")
    with pytest.raises(AuditError, match="unknown"):
        verify(tmp_path, "20200101T000000Z-nobody-abcdef")


def test_injected_file_without_head_is_detected(tmp_path: Path) -> None:
    log = _fill(tmp_path, n_cells=1)
    fake = tmp_path / "audit" / "20200101T000000Z-mallory-abcdef.jsonl"
    fake.write_bytes(_path(tmp_path, log).read_bytes().replace(log.session_id.encode(), fake.stem.encode()))
    problems = verify(tmp_path)
    assert any(p.session == fake.stem and p.line == 0 and "head" in p.reason for p in problems)


def test_reserved_and_unserialisable_fields_are_refused(tmp_path: Path) -> None:
    log = _open(tmp_path)
    with pytest.raises(AuditError, match="reserved"):
        log.record("cell", seq=5)
    with pytest.raises(AuditError, match="JSON"):
        log.record("cell", rows=object())
    with pytest.raises(AuditError, match="JSON"):
        log.record("cell", rows=float("nan"))
    assert verify(tmp_path) == []  # nothing half-written
    assert len(read_session(tmp_path, log.session_id)) == 1


def test_attach_appends_without_ending_the_session(tmp_path: Path) -> None:
    log = _open(tmp_path)
    cli = AuditLog.attach(tmp_path, log.session_id)
    cli.record("review_decision", request_id="R00000001", decision="approved", by="owner", reason=None)
    cli.close()
    log.record("fetch", request_id="R00000001")
    log.close()
    log.close()  # idempotent
    events = [r["event"] for r in read_session(tmp_path, log.session_id)]
    assert events == ["session_start", "review_decision", "fetch", "session_end"]
    with pytest.raises(AuditError, match="closed"):
        log.record("fetch", request_id="R00000002")
    assert verify(tmp_path) == []


_WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bastion_kernel.audit import AuditLog
state, session, tag, n, go = Path(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), Path(sys.argv[6])
log = AuditLog.attach(state, session)
while not go.exists():
    time.sleep(0.001)
for i in range(n):
    log.record("cell", source=f"{tag}:{i}", outcome="ok", reason=None, rows=i, columns=[], output_digest=tag)
"""


def test_two_processes_appending_concurrently(tmp_path: Path) -> None:
    log = _open(tmp_path)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(REPO), str(tmp_path), log.session_id, tag, "200", str(go)]
        )
        for tag in ("kernel", "cli")
    ]
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    records = read_session(tmp_path, log.session_id)
    assert len(records) == 401
    assert [r["seq"] for r in records] == list(range(1, 402))
    for tag in ("kernel", "cli"):
        mine = [r["source"] for r in records if r.get("output_digest") == tag]
        assert mine == [f"{tag}:{i}" for i in range(200)]  # each writer's order kept
    # Interleaved, not one after the other (otherwise the test proves little).
    tags = [r.get("output_digest") for r in records[1:]]
    switches = sum(1 for a, b in zip(tags, tags[1:]) if a != b)
    assert switches > 1, "writers did not overlap"
    assert verify(tmp_path) == []
    assert list_sessions(tmp_path)[0]["records"] == 401


def test_file_lines_are_compact_ascii_json(tmp_path: Path) -> None:
    log = _open(tmp_path, user="zoë")
    log.record("cell", source="naïve = 1", outcome="ok", reason=None, rows=0, columns=[], output_digest="")
    raw = _path(tmp_path, log).read_bytes()
    raw.decode("ascii")
    first = json.loads(raw.splitlines()[0])
    assert list(first)[:4] == ["seq", "ts", "session", "event"] and list(first)[-2:] == ["prev", "hash"]
    assert first["ts"].endswith("Z")
    assert verify(tmp_path) == []
    assert os.path.getsize(_path(tmp_path, log)) == len(raw)


def test_threads_of_one_process_share_a_session(tmp_path: Path) -> None:
    import threading

    log = _open(tmp_path)

    def work(tag: str) -> None:
        for i in range(50):
            log.record("fetch", request_id=f"{tag}{i}")

    threads = [threading.Thread(target=work, args=(f"t{n}-",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = read_session(tmp_path, log.session_id)
    assert len(records) == 201 and verify(tmp_path) == []
