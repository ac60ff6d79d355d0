"""Elapsed time for a long cell, shown while it runs.

Why a thread: a query runs synchronously on the kernel's main thread (polars
releases the GIL while it collects), so nothing on that thread can report
progress until it is over. One long-lived timer thread calls a `send`
callback after `delay` seconds and then every `interval` seconds; the caller
decides what a report looks like. The session never sees this: the kernel
wraps the cell in `Progress(send)` and its callback speaks Jupyter
(display_data, then update_display_data with the same display_id). Nothing
here reads data: the only thing reported is the time.

Why one thread for every cell, not one per cell: starting and joining a
thread cost about 0.6 ms of a trivial cell's 7 ms round trip on a two-core
machine (measured with `benchmarks/bench_kernels.py`'s trivial cell).

No report can arrive after `with` returns: the thread sends while holding
`_sending`, and leaving the block first disarms (under the condition the
thread checks) and then waits for `_sending`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

SHOW_AFTER_S = 1.0  # a cell that finishes sooner shows nothing extra
UPDATE_EVERY_S = 0.5

# send(event, elapsed_seconds); event is "show" for the first report, then "update"
Send = Callable[[str, float], None]


class _Timer:
    """The one thread that reports for every armed `Progress`, started on first use.

    It is woken only when a block is armed that is due before the thread's
    next wake-up: back-to-back quick cells cost no thread switch at all (a
    disarmed block is simply not found when the thread next looks).
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._armed: dict[int, tuple[Progress, float]] = {}  # id -> (progress, when its next report is due)
        self._wake_at: float | None = None  # when the waiting thread looks next; None: only when woken
        self._sending = threading.Lock()
        self._thread: threading.Thread | None = None

    def arm(self, p: Progress) -> None:
        due = p._clock() + p._delay
        with self._cv:
            self._armed[id(p)] = (p, due)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="bastion-progress", daemon=True)
                self._thread.start()
            elif self._wake_at is None or due < self._wake_at:
                self._cv.notify()

    def disarm(self, p: Progress) -> None:
        with self._cv:
            self._armed.pop(id(p), None)
        with self._sending:  # a report already on its way finishes before the caller moves on
            pass

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._armed:
                    self._wake_at = None
                    self._cv.wait()
                    continue
                key, (p, due) = min(self._armed.items(), key=lambda item: item[1][1])
                wait = due - p._clock()
                if wait > 0:
                    self._wake_at = due
                    self._cv.wait(wait)
                    continue
                self._armed[key] = (p, due + p._interval)
                self._sending.acquire()  # still under the condition: a disarm now waits for this report
            try:
                if not p._report():
                    with self._cv:
                        self._armed.pop(key, None)
            finally:
                self._sending.release()


_TIMER = _Timer()


class Progress:
    """`with Progress(send): run()` reports elapsed time while `run()` takes longer than `delay`."""

    def __init__(self, send: Send, *, delay: float = SHOW_AFTER_S, interval: float = UPDATE_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self._delay = delay
        self._interval = interval
        self._clock = clock
        self._start = 0.0
        self.shown = False  # whether a "show" was sent: the caller then clears or replaces it
        self.reports = 0

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    def __enter__(self) -> Progress:
        self._start = self._clock()
        _TIMER.arm(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _TIMER.disarm(self)

    def _report(self) -> bool:
        """Send one report; False stops this block's reports (a failing send is never worth a failed cell)."""
        event = "update" if self.shown else "show"
        try:
            self._send(event, self.elapsed)
        except Exception:  # noqa: BLE001
            return False
        self.shown = True
        self.reports += 1
        return True
