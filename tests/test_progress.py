"""Elapsed time for long cells: `progress.Progress` and what the notebook receives.

The timer's contract (delays shortened, real threads): nothing for a quick
cell; after `delay` one "show", then "update"s; nothing after the `with` block
ends. Over the protocol: a query that runs for seconds on the demo data gets a
display_data with a display_id, update_display_data messages for the same id
with growing elapsed times, then a clear_output(wait=True) so the result
replaces the progress line; a quick cell gets none of that.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.blocking.client import BlockingKernelClient

from conftest import execute, outputs, result_data, run_kernel

from bastion_kernel.progress import Progress  # noqa: E402

# A cross join of every patient with every visit (85 million rows), grouped: several seconds
# on the demo data (more on a busy machine; SLOW_TIMEOUT leaves room for that).
SLOW_CELL = ('patients.join(visits, how="cross").group_by("department", "sex")'
             '.agg(pl.len(), pl.col("age").mean(), pl.col("cost").mean()).collect()')
SLOW_TIMEOUT = 600.0
ELAPSED = re.compile(r"Running… (\d+\.\d) s")


class Recorder:
    """A send callback that remembers (event, elapsed, thread) of every report."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, str]] = []
        self.lock = threading.Lock()

    def __call__(self, event: str, elapsed: float) -> None:
        with self.lock:
            self.events.append((event, elapsed, threading.current_thread().name))


def test_a_quick_cell_shows_nothing() -> None:
    rec = Recorder()
    with Progress(rec, delay=0.5, interval=0.1) as p:
        pass
    assert rec.events == [] and p.shown is False


def test_a_slow_cell_shows_then_updates_from_a_timer_thread() -> None:
    rec = Recorder()
    with Progress(rec, delay=0.05, interval=0.05) as p:
        deadline = time.monotonic() + 10
        while len(rec.events) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    kinds = [e for e, _, _ in rec.events]
    assert kinds[0] == "show" and set(kinds[1:]) == {"update"} and len(kinds) >= 3
    elapsed = [t for _, t, _ in rec.events]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0.05
    assert {name for _, _, name in rec.events} == {"bastion-progress"}
    assert p.shown is True and p.reports == len(rec.events)


def test_no_report_arrives_after_the_block_ends() -> None:
    rec = Recorder()
    with Progress(rec, delay=0.01, interval=0.01):
        time.sleep(0.1)
    n = len(rec.events)
    time.sleep(0.1)
    assert n > 0 and len(rec.events) == n


def test_one_timer_thread_serves_every_block() -> None:
    """Starting a thread per cell cost ~0.6 ms of a trivial cell; the timer thread is started once."""
    for _ in range(5):
        with Progress(Recorder(), delay=0.5):
            pass
    assert len([t for t in threading.enumerate() if t.name == "bastion-progress"]) == 1


def test_blocks_after_a_quiet_one_still_report() -> None:
    with Progress(Recorder(), delay=10):
        pass
    rec = Recorder()
    with Progress(rec, delay=0.02, interval=0.02):
        time.sleep(0.1)
    assert rec.events and rec.events[0][0] == "show"


def test_a_failing_send_stops_the_reports_but_not_the_cell() -> None:
    calls: list[str] = []

    def broken(event: str, elapsed: float) -> None:
        calls.append(event)
        raise OSError("socket closed")

    with Progress(broken, delay=0.01, interval=0.01) as p:
        time.sleep(0.1)
    assert calls == ["show"] and p.shown is False


# --------------------------------------------------------------------------- over the protocol


@pytest.fixture(scope="module")
def kc(demo_config: Path) -> Iterator[BlockingKernelClient]:
    with run_kernel(demo_config, user="alice") as (_km, client):
        yield client


def test_long_query_shows_elapsed_time_updated_in_place_then_the_result(kc: BlockingKernelClient) -> None:
    reply, msgs = execute(kc, SLOW_CELL, timeout=SLOW_TIMEOUT)
    assert reply["status"] == "ok", reply
    kinds = [m["msg_type"] for m in msgs]
    shows = [i for i, k in enumerate(kinds) if k == "display_data"]
    updates = [i for i, k in enumerate(kinds) if k == "update_display_data"]
    assert len(shows) == 1, kinds
    assert updates, f"the query finished before a second report: {kinds}"
    display_id = msgs[shows[0]]["content"]["transient"]["display_id"]
    assert all(msgs[i]["content"]["transient"]["display_id"] == display_id for i in updates)
    times = [float(ELAPSED.fullmatch(msgs[i]["content"]["data"]["text/plain"])[1]) for i in shows + updates]
    assert times[0] >= 1.0 and times == sorted(times) and times[-1] > times[0]
    assert "bastion-progress" in msgs[shows[0]]["content"]["data"]["text/html"]
    # the result replaces the progress line: clear_output(wait=True), then the result, nothing after
    clear = kinds.index("clear_output")
    assert msgs[clear]["content"] == {"wait": True}
    result = kinds.index("execute_result")
    assert shows[0] < min(updates) <= max(updates) < clear < result
    assert "display_data" not in kinds[result:] and "update_display_data" not in kinds[result:]
    assert "len" in result_data(msgs)["text/plain"]


def test_quick_cell_has_no_progress_messages(kc: BlockingKernelClient) -> None:
    reply, msgs = execute(kc, 'patients.group_by("region").agg(pl.len()).collect()')
    assert reply["status"] == "ok"
    assert not outputs(msgs, "display_data") and not outputs(msgs, "update_display_data")
    assert not outputs(msgs, "clear_output")


def test_long_silent_cell_sends_nothing(kc: BlockingKernelClient) -> None:
    reply, msgs = execute(kc, SLOW_CELL, silent=True, timeout=SLOW_TIMEOUT)
    assert reply["status"] == "ok"
    assert [m["msg_type"] for m in msgs] == ["status", "status"]
