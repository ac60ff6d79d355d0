"""The review queue: exact snapshots, requester-only fetches, final decisions,
and no lost or double-decided request under concurrent writers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the package is not necessarily pip-installed

from bastion_kernel.errors import ReviewError  # noqa: E402
from bastion_kernel.review import ReviewRequest, ReviewStore  # noqa: E402

SECRET_CELL = "patients.filter(pl.col('ssn') == 'SECRET-CELL-TEXT')"


def _frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "region": ["north", "south", "east"],
            "diagnosis": ["SECRET-VALUE-1", "SECRET-VALUE-2", None],
            "n": [3, 1, 7],
            "score": [0.5, float("nan"), -1.25],
            "when": pl.Series([1, 2, 3]).cast(pl.Datetime("us", "UTC")),
        }
    )


def _create(store: ReviewStore, user: str = "alice", dataset: str = "patients", **kw: object) -> str:
    args: dict[str, object] = {
        "user": user,
        "dataset": dataset,
        "session_id": "20261123T142700Z-alice-3f9a1c",
        "cell": SECRET_CELL,
        "reason": "group smaller than 10",
        "snapshot": _frame(),
    }
    args.update(kw)
    return store.create(**args)  # type: ignore[arg-type]


def test_create_get_and_fields(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path / "state")
    rid = _create(store)
    assert rid.startswith("R") and len(rid) == 9 and int(rid[1:], 16) >= 0
    req = store.get(rid)
    assert isinstance(req, ReviewRequest)
    assert (req.user, req.dataset, req.status, req.cell) == ("alice", "patients", "pending", SECRET_CELL)
    assert req.rows == 3 and req.columns == ("region", "diagnosis", "n", "score", "when")
    assert req.created.endswith("Z") and req.decided_by is None and req.decided_at is None
    assert len(req.snapshot_digest) == 64
    assert_frame_equal(store.snapshot(rid), _frame())
    assert json.loads(json.dumps(req.to_dict()))["columns"] == list(req.columns)
    mode = store._connect  # WAL is what lets readers and the CLI work side by side
    with mode() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000


def test_list_filters_and_order(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path)
    a1 = _create(store, "alice", "patients")
    b1 = _create(store, "bob", "patients")
    a2 = _create(store, "alice", "visits")
    a3 = _create(store, "alice", "patients")
    assert [r.id for r in store.list()] == [a1, b1, a2, a3]
    assert [r.id for r in store.list(user="alice")] == [a1, a2, a3]
    assert [r.id for r in store.list(user="alice", dataset="patients")] == [a1, a3]
    store.approve(b1, by="owner")
    assert [r.id for r in store.list()] == [a1, a2, a3]
    assert [r.id for r in store.list(status="approved")] == [b1]
    assert [r.id for r in store.list(status=None)] == [a1, b1, a2, a3]
    with pytest.raises(ReviewError, match="unknown status"):
        store.list(status="done")


def test_approve_then_fetch_returns_exact_snapshot(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path)
    rid = _create(store)
    with pytest.raises(ReviewError, match="pending"):
        store.fetch(rid, user="alice")
    done = store.approve(rid, by="owner")
    assert (done.status, done.decided_by) == ("approved", "owner") and done.decided_at
    got = store.fetch(rid, user="alice")
    assert_frame_equal(got, _frame())
    assert got.equals(_frame())
    assert store.get(rid).status == "approved"


def test_fetch_by_someone_else_reveals_nothing(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path)
    rid = _create(store)
    store.approve(rid, by="owner")
    with pytest.raises(ReviewError) as other:
        store.fetch(rid, user="mallory")
    with pytest.raises(ReviewError) as unknown:
        store.fetch("R00000000", user="mallory")
    text = str(other.value) + " " + (other.value.hint or "")
    for secret in ("SECRET", "ssn", "patients", "alice", "approved", "owner", "region"):
        assert secret not in text
    # Indistinguishable from an id that does not exist.
    assert str(other.value).replace(rid, "ID") == str(unknown.value).replace("R00000000", "ID")


def test_reject_requires_reason_and_fetch_shows_it(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path)
    rid = _create(store)
    for empty in ("", "   "):
        with pytest.raises(ReviewError, match="reason"):
            store.reject(rid, by="owner", reason=empty)
    assert store.get(rid).status == "pending"
    done = store.reject(rid, by="owner", reason="too few patients per region")
    assert (done.status, done.decision_reason) == ("rejected", "too few patients per region")
    with pytest.raises(ReviewError, match="rejected by owner: too few patients per region"):
        store.fetch(rid, user="alice")


def test_cancel_is_the_requesters_only(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path)
    rid = _create(store)
    with pytest.raises(ReviewError, match="no review request"):
        store.cancel(rid, by="mallory")
    assert store.get(rid).status == "pending"
    assert store.cancel(rid, by="alice").status == "cancelled"
    with pytest.raises(ReviewError, match="cancelled"):
        store.fetch(rid, user="alice")


@pytest.mark.parametrize("first", ["approve", "reject", "cancel"])
@pytest.mark.parametrize("second", ["approve", "reject", "cancel"])
def test_deciding_twice_is_an_error(tmp_path: Path, first: str, second: str) -> None:
    store = ReviewStore(tmp_path)
    rid = _create(store)
    calls = {
        "approve": lambda: store.approve(rid, by="alice"),
        "reject": lambda: store.reject(rid, by="alice", reason="no"),
        "cancel": lambda: store.cancel(rid, by="alice"),
    }
    before = calls[first]()
    with pytest.raises(ReviewError, match="already"):
        calls[second]()
    assert store.get(rid) == before


def test_unknown_ids(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path)
    for call in (
        lambda: store.get("R12345678"),
        lambda: store.snapshot("R12345678"),
        lambda: store.approve("R12345678", by="owner"),
        lambda: store.reject("R12345678", by="owner", reason="x"),
        lambda: store.cancel("R12345678", by="owner"),
        lambda: store.fetch("R12345678", user="alice"),
    ):
        with pytest.raises(ReviewError, match="no review request R12345678"):
            call()


def test_tampered_snapshot_is_refused(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path)
    rid = _create(store)
    store.approve(rid, by="owner")
    other = _frame().with_columns(pl.col("n") * 100)
    import io

    buf = io.BytesIO()
    other.write_ipc(buf)
    with store._connect() as conn:
        conn.execute("UPDATE review_requests SET snapshot = ? WHERE id = ?", (buf.getvalue(), rid))
    with pytest.raises(ReviewError, match="digest"):
        store.fetch(rid, user="alice")


def test_state_survives_a_new_store_instance(tmp_path: Path) -> None:
    rid = _create(ReviewStore(tmp_path))
    assert ReviewStore(tmp_path).get(rid).status == "pending"


_CREATOR = """
import sys, json
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import polars as pl
from bastion_kernel.review import ReviewStore
state, who, n = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
store = ReviewStore(state)
ids = []
for i in range(n):
    df = pl.DataFrame({"who": [who], "i": [i]})
    ids.append(store.create(user=who, dataset="d", session_id="s", cell=f"{who}:{i}", reason="k", snapshot=df))
print(json.dumps(ids))
"""

_DECIDER = """
import sys, json, random, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bastion_kernel.review import ReviewStore
from bastion_kernel.errors import ReviewError
state, me, done_flag = Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
store = ReviewStore(state)
rng = random.Random(me)
mine, lost = [], 0
while True:
    finished = done_flag.exists()  # read before listing: nothing can be created after
    pending = store.list()
    if not pending and finished:
        break
    for req in pending:
        try:
            if rng.random() < 0.5:
                store.approve(req.id, by=me)
            else:
                store.reject(req.id, by=me, reason="r-" + me)
            mine.append(req.id)
        except ReviewError as exc:
            assert "already" in str(exc), str(exc)
            lost += 1
    time.sleep(0.001)
print(json.dumps({"decided": mine, "lost": lost}))
"""


def test_concurrent_creators_and_deciders(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ReviewStore(state)  # schema first, so the race is about requests, not DDL
    done_flag = tmp_path / "creators-done"
    deciders = [
        subprocess.Popen(
            [sys.executable, "-c", _DECIDER, str(REPO), str(state), f"owner{i}", str(done_flag)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    creators = [
        subprocess.Popen(
            [sys.executable, "-c", _CREATOR, str(REPO), str(state), f"user{i}", "25"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    created: list[str] = []
    for p in creators:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0
        created += json.loads(out)
    done_flag.touch()
    decided_by_process: dict[str, list[str]] = {}
    races_lost = 0
    for i, p in enumerate(deciders):
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0
        result = json.loads(out)
        decided_by_process[f"owner{i}"] = result["decided"]
        races_lost += result["lost"]

    store = ReviewStore(state)
    everything = store.list(status=None)
    assert len(created) == len(set(created)) == 200
    assert sorted(r.id for r in everything) == sorted(created)  # nothing lost
    statuses = Counter(r.status for r in everything)
    assert statuses["pending"] == 0 and statuses["approved"] + statuses["rejected"] == 200
    claimed = [rid for ids in decided_by_process.values() for rid in ids]
    assert len(claimed) == len(set(claimed)) == 200  # each decided exactly once
    assert races_lost > 0, "deciders never raced for a request; the test proved nothing"
    for owner, ids in decided_by_process.items():
        for rid in ids:
            req = store.get(rid)
            assert req.decided_by == owner  # the one that succeeded is the one recorded
            assert req.decision_reason in (None, f"r-{owner}")
    # Every snapshot still belongs to its request.
    for req in everything[:20]:
        who, i = req.cell.split(":")
        assert store.snapshot(req.id).to_dicts() == [{"who": who, "i": int(i)}]
