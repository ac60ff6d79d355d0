"""Elapsed time for a long cell, shown while it runs.

Why a thread: a query runs synchronously on the kernel's main thread (polars
releases the GIL while it collects), so nothing on that thread can report
progress until it is over. A small timer thread calls a `send` callback after
`delay` seconds and then every `interval` seconds; the caller decides what a
report looks like. The session never sees this: the kernel wraps the cell in
`Progress(send)` and its callback speaks Jupyter (display_data, then
update_display_data with the same display_id). Nothing here reads data: the
only thing reported is the time.

The timer thread is always stopped and joined before `with` returns, so no
report can arrive after the caller has moved on to the cell's result.
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


class Progress:
    """`with Progress(send): run()` reports elapsed time while `run()` takes longer than `delay`."""

    def __init__(self, send: Send, *, delay: float = SHOW_AFTER_S, interval: float = UPDATE_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self._delay = delay
        self._interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0
        self.shown = False  # whether a "show" was sent: the caller then clears or replaces it
        self.reports = 0

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    def __enter__(self) -> Progress:
        self._start = self._clock()
        self._thread = threading.Thread(target=self._run, name="bastion-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        wait = self._delay
        while not self._stop.wait(wait):
            event = "update" if self.shown else "show"
            try:
                self._send(event, self.elapsed)
            except Exception:  # noqa: BLE001 - a progress line is never worth a failed cell
                return
            self.shown = True
            self.reports += 1
            wait = self._interval
