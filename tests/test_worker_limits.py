"""Queries run in a worker process the kernel can kill: time limit, stop button, memory cap.

A polars query cannot be cancelled and a thread cannot be killed, so the
kernel runs cells in a child process. These tests run real slow and
memory-hungry queries on the demo data and check, through the protocol,
that each ends with one clear error, that the kernel keeps answering, and
that the session keeps its variables (lazy frames, released results and
pending review requests) without re-running anything or re-writing the
audit log.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, execute, result_data, result_text, run_kernel, write_variant

from bastion_kernel.audit import read_session
from bastion_kernel.review import ReviewStore

# 5000 x 17036 x 5000 rows (4e11) streamed into a grouped count: hours, in constant memory. (A 5000 x 5000
# cross join used to take ~20 s with the threshold's bookkeeping; it now takes about as long as in polars.)
SLOW = ('patients.join(visits, how="cross").join(patients.select("sex"), how="cross")'
        '.group_by("department").agg(pl.len()).collect()')
# 5000 x 17036 rows into ~77 million groups (income x cost): gigabytes of hash table, even streaming.
HUNGRY = 'patients.join(visits, how="cross").group_by("income", "cost").agg(pl.len()).collect()'


def deployment(demo_dir: Path, folder: Path, *, timeout_s: int = 120, memory_mb: int = 4096) -> Path:
    config = write_variant(demo_dir, folder)
    with open(config, "a", encoding="utf-8") as fh:
        fh.write(f"\n[limits]\nquery_timeout_s = {timeout_s}\nquery_memory_mb = {memory_mb}\n")
    return config


def ok(kc: Any, code: str) -> list[dict[str, Any]]:
    reply, msgs = execute(kc, code)
    assert reply["status"] == "ok", reply
    return msgs


def setup_variables(kc: Any) -> dict[str, str]:
    """A lazy frame, a released result and a pending review request, before anything goes wrong."""
    ok(kc, 'by_region = patients.group_by("region").agg(pl.len().alias("n"))')
    ok(kc, "released = by_region.sort(\"region\").collect()")
    msgs = ok(kc, "held = patients.head(2).collect()")
    shown = [m["content"]["data"] for m in msgs if m["msg_type"] == "display_data"]
    rid = shown[0]["text/plain"].split()[2]
    before = result_text(ok(kc, "released"))
    return {"rid": rid, "released": before}


def check_variables_survived(kc: Any, state: dict[str, str], config: Path) -> None:
    assert result_text(ok(kc, "released")) == state["released"]  # the cached release, not a re-run
    assert "North" in result_text(ok(kc, 'by_region.filter(pl.col("region") == "North").collect()'))
    data = result_data(ok(kc, "held"))
    assert data["text/plain"].split()[2] == state["rid"]  # the same request, not a new one
    store = ReviewStore(config.parent / "state")
    assert [r.id for r in store.list(status=None)].count(state["rid"]) == 1
    assert len(store.list(status=None)) == 1


def audit(config: Path) -> list[dict[str, Any]]:
    store = ReviewStore(config.parent / "state")
    sid = store.list(status=None)[0].session_id
    return read_session(config.parent / "state", sid)


def test_a_query_past_the_time_limit_is_stopped_and_the_session_survives(demo_dir: Path, tmp_path: Path) -> None:
    config = deployment(demo_dir, tmp_path / "d", timeout_s=3)
    with run_kernel(config) as (_km, kc):
        state = setup_variables(kc)
        started = time.monotonic()
        reply, msgs = execute(kc, SLOW)
        took = time.monotonic() - started
        assert reply["status"] == "error" and reply["ename"] == "LimitError"
        assert "ran longer than 3 s" in reply["evalue"] and "query_timeout_s" in reply["evalue"]
        assert "variables are kept" in reply["evalue"]
        assert took < 60, f"the limit did not stop the query ({took:.0f} s)"
        check_variables_survived(kc, state, config)
    records = audit(config)
    restarts = [r for r in records if r["event"] == "worker_restart"]
    assert [r["why"] for r in restarts] == ["timeout"]
    cells = [r["source"] for r in records if r["event"] == "cell"]
    assert cells.count('by_region = patients.group_by("region").agg(pl.len().alias("n"))') == 1  # replay is silent
    assert records[-1]["event"] == "session_end"  # the resumed worker still ends the session


def test_the_stop_button_interrupts_a_running_query(demo_dir: Path, tmp_path: Path) -> None:
    config = deployment(demo_dir, tmp_path / "d")
    with run_kernel(config) as (km, kc):
        state = setup_variables(kc)
        timer = threading.Timer(2.0, km.interrupt_kernel)
        timer.start()
        started = time.monotonic()
        reply, _msgs = execute(kc, SLOW)
        timer.join()
        assert reply["status"] == "error" and "interrupted" in reply["evalue"], reply
        assert time.monotonic() - started < 30
        check_variables_survived(kc, state, config)
    assert [r["why"] for r in audit(config) if r["event"] == "worker_restart"] == ["interrupt"]


def test_a_query_that_exhausts_its_memory_fails_alone(demo_dir: Path, tmp_path: Path) -> None:
    config = deployment(demo_dir, tmp_path / "d", memory_mb=300)
    with run_kernel(config) as (_km, kc):
        state = setup_variables(kc)
        reply, _msgs = execute(kc, HUNGRY, timeout=TIMEOUT * 3)
        assert reply["status"] == "error" and reply["ename"] == "ExecutionError", reply
        assert "ran out of memory" in reply["evalue"] and "query_memory_mb = 300" in reply["evalue"]
        check_variables_survived(kc, state, config)
        assert "patients" in result_text(ok(kc, "datasets()"))
    assert [r["why"] for r in audit(config) if r["event"] == "worker_restart"] == ["crash"]


@pytest.mark.parametrize("code", ['len(["a", "b"])', "datasets()"])
def test_ordinary_cells_run_in_the_worker_unchanged(demo_dir: Path, tmp_path: Path, code: str) -> None:
    config = deployment(demo_dir, tmp_path / "d")
    with run_kernel(config) as (_km, kc):
        assert result_text(ok(kc, code))


# What the cap sees between queries, in a process of its own (setrlimit is per process): memory the
# worker kept after one query (an allocator keeps address space) is held, as a bytearray here.
REARM = """
import resource
from bastion_kernel.worker import server as S

def soft():
    return resource.getrlimit(resource.RLIMIT_DATA)[0]

S._cap_memory(64)
first, ceiling = soft(), S._cap["ceiling"]
kept = [bytearray(48 * 2**20)]
S._rearm()
second = soft()
kept.append(bytearray(48 * 2**20))
S._rearm()
third = soft()
try:
    kept.append(bytearray(80 * 2**20))
    over = "allocated"
except MemoryError:
    over = "refused"
print(first, second, third, ceiling, over)
"""


def test_the_memory_cap_is_re_armed_before_each_request_up_to_its_ceiling() -> None:
    """Each request gets its budget on top of what the worker holds then (what polars kept after one
    query does not eat the next one's budget), but the worker as a whole never passes its ceiling:
    its start-up size plus twice the budget."""
    out = subprocess.run([sys.executable, "-c", REARM], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    first, second, third, ceiling, over = out.stdout.split()
    mb = 2**20
    assert 40 * mb <= int(second) - int(first) <= 56 * mb  # moved up by what is now held
    assert int(third) == int(ceiling) < int(second) + 48 * mb  # held + budget would pass the ceiling
    assert over == "refused"  # past the ceiling, an allocation fails (the worker then restarts)
