"""Bastion against the plain IPython kernel: the same polars cells on the same files.

Run (one command; about 4-5 minutes on 2 busy cores; data is generated once into the cache folder):

    /work/venv/bin/python benchmarks/bench_kernels.py
    /work/venv/bin/python benchmarks/bench_kernels.py --sizes 1M,4M,16M        # growth to 16M (opt-in, slow)
    /work/venv/bin/python benchmarks/bench_kernels.py --sizes 100k --repeat 1 --memory-cap 0   # smoke test
    /work/venv/bin/python benchmarks/bench_kernels.py --parts capped --capped-size 16M --memory-cap 512

What it does, per size (rows of the one-row-per-individual table `people`;
`visits` is twice as long, 0 to ~12 rows per person):

1. writes both tables as Parquet (once, under ``--cache``, default
   ``~/.cache/bastion-bench``), and a deployment file with a fresh state
   folder (k = 10, privacy unit ``pid`` in both);
2. starts the IPython kernel (``kernel_name="python3"``) and the Bastion kernel
   through jupyter_client;
3. runs each query cell in both kernels, alternately: IPython gets
   ``people = pl.scan_parquet(...)`` etc. first, so both run the very same
   text; Bastion's answer must be an automatic release. The first run of a
   cell is a new release for Bastion (the differencing check runs in full);
   the next ``--repeat`` runs are re-runs, reported as medians;
4. after each Bastion cell, waits until its query worker has no released set
   left to record (Bastion writes the members of released sets in the
   background once the kernel is idle) and reports that time as "record",
   then until the worker stops using CPU, so no background work overlaps the
   next measurement of either kernel;
5. reports peak memory of the process that runs the queries (IPython's
   kernel; Bastion's query worker, a child of its kernel), from
   ``/proc/<pid>/status`` VmHWM, reset before each cell through
   ``/proc/<pid>/clear_refs``.

Then start-up (three fresh starts of each kernel: to the ``kernel_info``
reply, to the first cell's result, to the first schema, i.e. polars
imported and a Parquet footer read) and a trivial cell's round trip (median
and p90 of 30), how time and memory grow from the smallest to the largest
size, and a larger-than-memory run (``--capped-size``, default 8M people /
16M visits rows, whose `visits` is ~305 MB in memory; ``--memory-cap MB``,
default 256, 0 to skip): Bastion with ``query_memory_mb`` = MB (its worker's
RLIMIT_DATA above its start-up baseline), IPython with the same RLIMIT_DATA
set in the kernel the same way, the streaming engine as its default and
the allocator setting Bastion's worker runs with (``_RJEM_MALLOC_CONF=
retain:false,...``: `worker.client.MALLOC_CONF`). A kernel that cannot stay under the
cap is reported as failed, beside the other's time and peak memory. Below
~128 MB polars itself (IPython) fails at 4M rows: the cap counts address
space, thread stacks and allocator arenas included.

Engines: Bastion's worker runs every query on polars' streaming engine
(worker/client.py); the IPython kernel runs polars' default (``auto``, the
in-memory engine), as a scientist's notebook does today, except in the
capped run.

Every wait has a limit (``--step-timeout``, default 300 s): a step that takes
longer stops the run with the step, the kernel, and what its processes were
doing (alive, CPU, sets still to record, the end of the kernel's log). A step
running longer than 30 s says so while it waits.

Timings are client-side round trips (request to idle); other processes on
the machine add noise, so the load average is printed with the results. The
end of the output is a Markdown block for the README's Performance section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from bastion_kernel.worker.client import MALLOC_CONF

REPO = Path(__file__).resolve().parents[1]
K = 10
STEP_TIMEOUT = 300.0  # --step-timeout
SAY_AFTER = 30.0  # a step running this long prints that it is still waiting
TARGET_SIZE = 4_000_000  # the targets are measured at 4M rows

# name -> (cell text, kind). "unique": one row per individual; "distinct": individuals have several rows.
QUERIES: dict[str, tuple[str, str]] = {
    "grouped": ('people.group_by("region").agg(pl.len(), pl.col("income").mean()).collect()', "unique"),
    "grouped_1000": ('people.group_by("zip").agg(pl.col("income").sum(), pl.col("age").mean()).collect()', "unique"),
    "filtered": (('people.filter(pl.col("age") >= 40).group_by("region").agg(pl.col("income").mean(), pl.len())'
                  ".collect()"), "unique"),
    "condition": ('people.group_by("region").agg(pl.col("income").filter(pl.col("age") < 30).mean()).collect()',
                  "unique"),
    "global": ('people.select(pl.col("income").sum(), pl.col("age").mean(), pl.len()).collect()', "unique"),
    "multi_row": ('visits.group_by("kind").agg(pl.col("amount").mean(), pl.len()).collect()', "distinct"),
    "join": ('visits.join(people, on="pid").group_by("region").agg(pl.col("amount").sum(), pl.len()).collect()',
             "distinct"),
}
# The larger-than-memory run: `visits` is larger in memory than the cap.
CAPPED: dict[str, str] = {
    "multi_row": QUERIES["multi_row"][0],
    "visits_global": 'visits.select(pl.col("amount").mean(), pl.len()).collect()',
    "grouped": QUERIES["grouped"][0],
}
REGIONS = ["north", "south", "east", "west", "centre", "coast", "hills", "islands"]


# ---------------------------------------------------------------- data


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6}.get(text[-1:], 1)
    return int(float(text[:-1] if text[-1:] in "KM" else text) * scale)


def label(n: int) -> str:
    return f"{n // 10**6}M" if n % 10**6 == 0 else f"{n // 10**3}K"


def generate(cache: Path, n: int) -> tuple[Path, Path]:
    """people (n rows, one per pid) and visits (2n rows, pid drawn at random), written once."""
    folder = cache / label(n)
    people, visits = folder / "people.parquet", folder / "visits.parquet"
    if people.exists() and visits.exists():
        return people, visits
    folder.mkdir(parents=True, exist_ok=True)
    pid = pl.int_range(0, n, eager=True, dtype=pl.Int64).alias("pid")
    h = lambda seed: pl.col("pid").hash(seed)  # deterministic pseudo-random columns
    pl.DataFrame(pid).with_columns(
        region=pl.lit(REGIONS).list.get((h(1) % len(REGIONS)).cast(pl.Int64)),
        zip=(h(2) % 1000).cast(pl.Int32),
        age=(18 + h(3) % 72).cast(pl.Int32),
        income=(20_000 + h(4) % 100_000).cast(pl.Float64),
    ).write_parquet(people.with_suffix(".tmp"))
    people.with_suffix(".tmp").rename(people)
    pl.DataFrame(pl.int_range(0, 2 * n, eager=True, dtype=pl.Int64).alias("row")).select(
        pid=(pl.col("row").hash(5) % n).cast(pl.Int64),
        amount=(pl.col("row").hash(6) % 500).cast(pl.Float64),
        kind=pl.lit(["lab", "visit", "call"]).list.get((pl.col("row").hash(7) % 3).cast(pl.Int64)),
    ).write_parquet(visits.with_suffix(".tmp"))
    visits.with_suffix(".tmp").rename(visits)
    return people, visits


def deployment(folder: Path, people: Path, visits: Path, memory_mb: int | None = None) -> Path:
    limits = "\n[limits]\nquery_timeout_s = 3600\n" + (f"query_memory_mb = {memory_mb}\n" if memory_mb else "")
    text = (f'[bastion]\nstate_dir = "state"\nmin_group_size = {K}\n\n'
            f'[datasets.people]\npath = {json.dumps(str(people))}\nprivacy_unit = "pid"\n\n'
            f'[datasets.visits]\npath = {json.dumps(str(visits))}\nprivacy_unit = "pid"\n{limits}')
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bastion.toml").write_text(text, encoding="utf-8")
    return folder / "bastion.toml"


# ---------------------------------------------------------------- waiting, with a limit


class Stall(RuntimeError):
    """A step took longer than --step-timeout; the message says which and what the kernels were doing."""


class KernelDied(RuntimeError):
    """The kernel process ended (the IPython kernel aborts when polars cannot allocate under a cap)."""


def wait_until(step: str, done: Callable[[], bool], *, kernels: list[Kernel], limit: float | None = None,
               every: float = 0.05) -> float:
    """Poll `done` until true; seconds waited. Says so past SAY_AFTER; past the limit raises Stall."""
    limit = STEP_TIMEOUT if limit is None else limit
    start = time.perf_counter()
    said = SAY_AFTER
    while not done():
        waited = time.perf_counter() - start
        if waited > limit:
            raise Stall(f"STALLED after {waited:.0f} s: {step}\n{diagnose(kernels)}")
        if waited > said:
            print(f"    ... still waiting ({waited:.0f} s): {step}", flush=True)
            said += SAY_AFTER
        time.sleep(every)
    return time.perf_counter() - start


def diagnose(kernels: list[Kernel]) -> str:
    """What each kernel's processes are doing: alive, state, CPU used, sets still to record, log tail."""
    lines = []
    for k in kernels:
        kpid = k.kernel_pid()
        lines.append(f"  {k.name}: kernel pid {kpid} alive={k.km.is_alive()} {_proc_state(kpid)}")
        if k.history is not None:
            wpid = k.query_pid()
            lines.append(f"    query worker pid {wpid} {_proc_state(wpid)}; sets still to record: "
                         f"{k.pending_sets()} (this worker), {k.pending_sets(any_owner=True)} (any)")
        if k.log is not None and k.log.exists():
            tail = k.log.read_text(errors="replace").strip().splitlines()[-8:]
            lines += [f"    log: {line[:200]}" for line in tail]
    return "\n".join(lines)


def _proc_state(pid: int | None) -> str:
    if pid is None:
        return "(no process)"
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return "(gone)"
    return f"state {fields[0]}, cpu {cpu_seconds(pid):.1f} s"


# ---------------------------------------------------------------- kernels


@dataclass
class Kernel:
    name: str
    km: KernelManager
    kc: Any
    log: Path | None = None
    startup_info: float = 0.0
    history: Path | None = None  # Bastion: its history database, polled for sets still to record

    def run(self, code: str, step: str) -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
        """(seconds from request to idle, reply content, iopub messages of the request).

        Waits for this request's own `status: idle` on iopub and its own
        execute_reply on shell (other messages are skipped by parent msg_id).
        """
        start = time.perf_counter()
        msg_id = self.kc.execute(code, store_history=False, allow_stdin=False, stop_on_error=False)
        msgs: list[dict[str, Any]] = []
        said = SAY_AFTER
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.5)
            except queue.Empty:
                waited = time.perf_counter() - start
                if not self.km.is_alive():
                    raise KernelDied(f"{self.name} died during {step}") from None
                if waited > STEP_TIMEOUT:
                    raise Stall(f"STALLED after {waited:.0f} s: {self.name} did not finish {step} "
                                f"(no status: idle for its request)\n{diagnose([self])}") from None
                if waited > said:
                    print(f"    ... still waiting ({waited:.0f} s): {self.name} {step}", flush=True)
                    said += SAY_AFTER
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            msgs.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        elapsed = time.perf_counter() - start
        while True:  # the reply is sent before idle, so it is already there (or the kernel is broken)
            try:
                reply = self.kc.get_shell_msg(timeout=STEP_TIMEOUT)
            except queue.Empty:
                raise Stall(f"STALLED: {self.name} sent no execute_reply for {step}\n{diagnose([self])}") from None
            if reply["parent_header"].get("msg_id") == msg_id:
                return elapsed, reply["content"], msgs

    def kernel_pid(self) -> int | None:
        prov = self.km.provisioner
        proc = getattr(prov, "process", None) if prov is not None else None
        return proc.pid if proc is not None else None

    def query_pid(self) -> int | None:
        """The process that runs queries: the kernel itself, or Bastion's query worker (its child)."""
        pid = self.kernel_pid()
        if pid is None or self.history is None:
            return pid
        for child in _children(pid):
            try:
                if b"bastion_kernel.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return child
            except OSError:
                continue
        return None

    def pending_sets(self, *, any_owner: bool = False) -> int:
        """Released sets whose members this kernel's query worker has not written yet."""
        if self.history is None or not self.history.exists():
            return 0
        wpid = self.query_pid()
        if wpid is None and not any_owner:
            return 0
        sql = "SELECT COUNT(*) FROM unit_sets WHERE state = 'pending'"
        args: tuple[Any, ...] = ()
        if not any_owner:  # the owner token is "<pid>:<random>" (policy/history.py); a dead worker's stay pending
            sql += " AND owner LIKE ?"
            args = (f"{wpid}:%",)
        try:
            with sqlite3.connect(f"file:{self.history}?mode=ro", uri=True, timeout=30) as conn:
                return int(conn.execute(sql, args).fetchone()[0])
        except sqlite3.Error:
            return 0  # no history table yet

    def stop(self) -> None:
        try:
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=False)
        except Exception:  # noqa: BLE001 - a kernel killed by its memory cap is already gone
            try:
                self.km.shutdown_kernel(now=True)
            except Exception:  # noqa: BLE001, S110 - best effort: the kernel is already gone
                pass
        try:
            self.km.cleanup_resources()
        except Exception:  # noqa: BLE001, S110 - best effort: the kernel is already gone
            pass


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(x) for x in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def start(name: str, spec_dir: Path | None, log: Path, env: dict[str, str] | None = None,
          kernel_name: str = "bastion-bench") -> Kernel:
    """Start a kernel (stderr to `log`, `env` added to the environment) and wait for its kernel_info reply."""
    if spec_dir is None:
        km = KernelManager(kernel_name="python3")  # jupyter_client runs "python" as this very interpreter
    else:
        km = KernelManager(kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir)]),
                           kernel_name=kernel_name)
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = log.open("ab")
    t0 = time.perf_counter()
    km.start_kernel(stdout=subprocess.DEVNULL, stderr=fh, **({"env": {**os.environ, **env}} if env else {}))
    fh.close()
    kc = km.client()
    kc.start_channels()
    kernel = Kernel(name, km, kc, log=log)
    try:
        kc.wait_for_ready(timeout=STEP_TIMEOUT)
    except RuntimeError as exc:  # jupyter_client: "Kernel didn't respond" / "Kernel died before replying"
        msg = f"STALLED: {name} did not start ({exc})\n{diagnose([kernel])}"
        kernel.stop()
        raise Stall(msg) from None
    kernel.startup_info = time.perf_counter() - t0
    return kernel


def bastion_spec(folder: Path, config: Path) -> Path:
    spec = folder / "kernels" / "bastion-bench"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "bastion_kernel", "-f", "{connection_file}"],
        "display_name": "Bastion (benchmark)", "language": "python",
        "env": {"BASTION_CONFIG": str(config), "JUPYTERHUB_USER": "bench",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
    }))
    return folder / "kernels"


# ---------------------------------------------------------------- measuring


def reset_peak(pid: int | None) -> None:
    if pid is None:
        return
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
    except OSError:
        pass


def peak_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_seconds(pid: int | None) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, TypeError):
        return 0.0


def wait_recorded(k: Kernel, step: str) -> float:
    """Seconds until Bastion's worker has written every set it released (0 for IPython)."""
    if k.history is None:
        return 0.0
    return wait_until(f"{k.name}: recording the sets released by {step}", lambda: k.pending_sets() == 0,
                      kernels=[k])


def wait_quiet(k: Kernel, step: str) -> float:
    """Seconds until Bastion's worker stops using CPU (background recording, unit profiles), so that
    it never competes with the next measured cell of either kernel. Not fatal: a busy machine is noted."""
    if k.history is None:
        return 0.0
    pid = k.query_pid()
    state = {"last": cpu_seconds(pid), "still": 0}

    def quiet() -> bool:
        now = cpu_seconds(pid)
        state["still"] = state["still"] + 1 if now - state["last"] < 0.005 else 0
        state["last"] = now
        return pid is None or state["still"] >= 3

    try:
        return wait_until(f"{k.name}: worker busy before {step}", quiet, kernels=[k], every=0.1)
    except Stall as exc:
        print(f"    note: worker still using CPU before {step}; measuring anyway\n{exc}", flush=True)
        return float("nan")


def check_answer(name: str, reply: dict[str, Any], msgs: list[dict[str, Any]], what: str) -> None:
    text = json.dumps([m["content"] for m in msgs])
    if reply.get("status") != "ok" or any(m["msg_type"] == "error" for m in msgs):
        raise RuntimeError(f"{name} failed on {what}: {reply.get('evalue', '')[:500]}")
    if "Review requested" in text:
        raise RuntimeError(f"{name}: {what} was not released automatically: {text[:500]}")


@dataclass
class Result:
    first: dict[str, float] = field(default_factory=dict)
    median: dict[str, float] = field(default_factory=dict)
    peak: dict[str, float | None] = field(default_factory=dict)
    record: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)  # kernel -> why (only when failures are allowed)


def measure(kernels: list[Kernel], name: str, code: str, repeat: int, *, strict: bool = True) -> Result:
    """First run and `repeat` re-runs of `code`, alternating kernels; Bastion's background work
    (recording released sets, measuring unit profiles) never overlaps a measured cell."""
    out = Result()
    runs: dict[str, list[float]] = {k.name: [] for k in kernels}
    peaks: dict[str, list[float]] = {k.name: [] for k in kernels}
    for rep in range(1 + repeat):
        for k in kernels:
            if k.name in out.failed:
                continue
            step = f"{name} (run {rep + 1} of {1 + repeat})"
            for other in kernels:
                if other.name not in out.failed:
                    wait_quiet(other, step)
            pid = k.query_pid()
            reset_peak(pid)
            try:
                elapsed, reply, msgs = k.run(code, step)
                check_answer(k.name, reply, msgs, name)
            except (KernelDied, RuntimeError) as exc:
                if strict or isinstance(exc, Stall):
                    raise
                out.failed[k.name] = f"run {rep + 1}: " + " ".join(str(exc).split())[:200]
                continue
            mb = peak_mb(pid)
            if mb is not None:
                peaks[k.name].append(mb)
            if rep == 0:
                out.first[k.name] = elapsed
            else:
                runs[k.name].append(elapsed)
            waited = wait_recorded(k, step)
            if rep == 0 and k.history is not None:
                out.record = waited
    for k in kernels:
        if k.name in out.failed:
            continue
        out.median[k.name] = statistics.median(runs[k.name]) if runs[k.name] else out.first[k.name]
        out.peak[k.name] = max(peaks[k.name]) if peaks[k.name] else None
    return out


def setup_cell(people: Path, visits: Path, memory_mb: int | None = None) -> str:
    lines = ["import polars as pl",
             f"people = pl.scan_parquet({str(people)!r})",
             f"visits = pl.scan_parquet({str(visits)!r})"]
    if memory_mb:  # the same cap as Bastion's worker (worker/server.py): RLIMIT_DATA at the baseline plus MB
        lines += ["import resource",
                  "pl.Config.set_engine_affinity('streaming')  # as Bastion's worker (worker/client.py)",
                  "pl.DataFrame({'a': [1, 2]}).lazy().group_by('a').agg(pl.len()).collect()",
                  "_vm = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmData:')][0]",
                  f"resource.setrlimit(resource.RLIMIT_DATA, (_vm + {memory_mb} * 2**20, _vm + {memory_mb} * 2**20))"]
    return "\n".join(lines)


def start_pair(folder: Path, people: Path, visits: Path, memory_mb: int | None = None) -> list[Kernel]:
    """IPython (with the tables as lazy frames) and Bastion (worker up, unit profiles measured), idle."""
    config = deployment(folder, people, visits, memory_mb)
    # Capped: IPython's polars gets the allocator setting Bastion's worker runs with (worker/client.py), so
    # that both caps mean the same thing: jemalloc's default keeps freed address space, which RLIMIT_DATA counts.
    env = {"_RJEM_MALLOC_CONF": MALLOC_CONF} if memory_mb else None
    kernels = [start("ipython", None, folder / "ipython.log", env)]
    try:
        kernels.append(start("bastion", bastion_spec(folder, config), folder / "bastion.log"))
        kernels[1].history = folder / "state" / "history.db"
        _, reply, msgs = kernels[0].run(setup_cell(people, visits, memory_mb), "setup")
        check_answer("ipython", reply, msgs, "setup")
        _, reply, msgs = kernels[1].run("people.columns", "first cell")  # waits for the worker to be up
        check_answer("bastion", reply, msgs, "first cell")
    except BaseException:
        for k in kernels:
            k.stop()
        raise
    return kernels


def run_size(n: int, cache: Path, work: Path, repeat: int, queries: dict[str, str], memory_mb: int | None = None,
             ) -> dict[str, Result]:
    people, visits = generate(cache, n)
    folder = work / (label(n) + (f"-cap{memory_mb}" if memory_mb else ""))
    print("  starting both kernels ...", flush=True)
    kernels = start_pair(folder, people, visits, memory_mb)
    try:
        results = {}
        for q, code in queries.items():
            results[q] = r = measure(kernels, q, code, repeat, strict=memory_mb is None)
            print("  " + progress_line(q, r), flush=True)
            if any(not k.km.is_alive() for k in kernels):  # a capped kernel that died cannot go on
                break
        return results
    finally:
        for k in kernels:
            k.stop()


def progress_line(q: str, r: Result) -> str:
    def cell(k: str) -> str:
        if k in r.failed:
            return f"{k} FAILED ({r.failed[k][:90]})"
        return f"{k} {r.median[k] * 1000:7.0f} ms (first {r.first[k] * 1000:.0f}, peak {fmt_mb(r.peak.get(k))} MB)"
    ratio = f"ratio {r.median['bastion'] / r.median['ipython']:5.2f}" if len(r.median) == 2 else ""
    return f"{q:14} {cell('ipython')}  {cell('bastion')}  {ratio}  record {r.record:.1f} s"


@dataclass
class Startup:
    info: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    schema: list[float] = field(default_factory=list)
    trivial: tuple[float, float] = (0.0, 0.0)


# The least any ipykernel-based kernel can do: echo the cell back. Its round trip is the floor of
# both kernels' trivial cell on this machine (ipykernel's threads, ZeroMQ, the client).
ECHO_KERNEL = """from ipykernel.kernelapp import IPKernelApp
from ipykernel.kernelbase import Kernel


class Echo(Kernel):
    implementation = "echo"
    implementation_version = "1"
    banner = "echo"
    language_info = {"name": "python", "mimetype": "text/x-python", "file_extension": ".py"}

    async def do_execute(self, code, silent, store_history=True, user_expressions=None, allow_stdin=False,
                         **kwargs):
        self.send_response(self.iopub_socket, "execute_result",
                           {"execution_count": self.execution_count, "data": {"text/plain": code}, "metadata": {}})
        return {"status": "ok", "execution_count": self.execution_count, "payload": [], "user_expressions": {}}


IPKernelApp.launch_instance(kernel_class=Echo)
"""


def trivial_cells(k: Kernel, n: int = 30) -> tuple[float, float]:
    """Median and p90 seconds of `n` trivial cells `1`."""
    times = sorted(k.run("1", "trivial cell")[0] for _ in range(n))
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def measure_floor(work: Path) -> tuple[float, float]:
    """The trivial cell of a kernel that only echoes (`ECHO_KERNEL`): ipykernel's own round trip here."""
    folder = work / "floor"
    spec = folder / "kernels" / "echo-bench"
    spec.mkdir(parents=True, exist_ok=True)
    (folder / "echo_kernel.py").write_text(ECHO_KERNEL)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, str(folder / "echo_kernel.py"), "-f", "{connection_file}"],
        "display_name": "echo", "language": "python"}))
    k = start("echo", folder / "kernels", folder / "echo.log", kernel_name="echo-bench")
    try:
        trivial_cells(k, 5)
        return trivial_cells(k)
    finally:
        k.stop()


def measure_startup(cache: Path, n: int, work: Path, starts: int = 3) -> dict[str, Startup]:
    """Fresh kernels, alternately: to kernel_info, to the first cell `1`, to the first schema; trivial cells."""
    people, visits = generate(cache, n)
    folder = work / "startup"
    config = deployment(folder, people, visits)
    spec = bastion_spec(folder, config)
    schema_cell = {"ipython": f"import polars as pl\npl.scan_parquet({str(people)!r}).collect_schema().names()",
                   "bastion": "people.columns"}
    out = {"ipython": Startup(), "bastion": Startup()}
    for i in range(starts):
        for name in ("ipython", "bastion"):
            k = start(name, None if name == "ipython" else spec, folder / f"{name}.log")
            if name == "bastion":
                k.history = folder / "state" / "history.db"
            try:
                t0 = time.perf_counter() - k.startup_info
                _, reply, _ = k.run("1", "start-up: first cell")
                assert reply["status"] == "ok", reply
                out[name].first.append(time.perf_counter() - t0)
                _, reply, _ = k.run(schema_cell[name], "start-up: first schema")
                assert reply["status"] == "ok", reply
                out[name].schema.append(time.perf_counter() - t0)
                out[name].info.append(k.startup_info)
                if i == 0:
                    wait_quiet(k, "trivial cells")
                    out[name].trivial = trivial_cells(k)
            finally:
                k.stop()
    return out


# ---------------------------------------------------------------- report


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mem = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal"))) / 2**20
    except (OSError, StopIteration):
        mem = float("nan")
    import ipykernel
    import jupyter_client

    return {"CPU": f"{cpu}, {os.cpu_count()} cores", "RAM": f"{mem:.0f} GB",
            "versions": f"Python {platform.python_version()}, polars {pl.__version__}, "
                        f"ipykernel {ipykernel.__version__}, jupyter_client {jupyter_client.__version__}",
            "OS": f"{platform.system()} {platform.release()}"}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def in_memory_mb(path: Path) -> float:
    """The table's size once read into polars, one column at a time (the benchmark's own memory stays small)."""
    names = pl.scan_parquet(path).collect_schema().names()
    return sum(pl.read_parquet(path, columns=[c]).estimated_size() for c in names) / 2**20


def fmt_ms(s: float | None) -> str:
    return "n/a" if s is None else f"{s * 1000:.0f}"


def fmt_mb(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def ratio(r: Result, which: str = "median") -> float | None:
    d = getattr(r, which)
    return d["bastion"] / d["ipython"] if "bastion" in d and "ipython" in d and d["ipython"] else None


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def report(args: argparse.Namespace, sizes: list[int], results: dict[int, dict[str, Result]],
           startup: dict[str, Startup] | None, capped: dict[str, Result], capped_info: str,
           loads: list[str], elapsed: float, runs: list[dict[str, Result]] | None = None) -> str:
    """The Markdown block for the README (machine, targets, tables).

    `runs`: every run of the target size (`--runs`); the targets then use each query's median
    ratio over them, and a table shows every run's ratio, since one run moves by up to 30% here.
    """
    out: list[str] = []
    w = out.append
    facts = machine()
    w(f"Measured {time.strftime('%Y-%m-%d')} with `{' '.join(['benchmarks/bench_kernels.py', *sys.argv[1:]])}` "
      f"({elapsed / 60:.1f} min).\n")
    w("| machine | |")
    w("|---|---|")
    for key, value in facts.items():
        w(f"| {key} | {value} |")
    w(f"| load average (1/5/15 min) | start {loads[0]}; end {loads[-1]} |")
    w("")
    target_n = min(sizes, key=lambda s: abs(s - TARGET_SIZE)) if sizes else None
    runs = runs if runs and len(runs) > 1 else None
    per_run: dict[str, list[float]] = {}
    for run in runs or []:
        for q, r in run.items():
            if (x := ratio(r)) is not None:
                per_run.setdefault(q, []).append(x)
    if target_n is not None or startup:
        over = f"median ratio over {len(runs)} runs" if runs else "re-run medians"
        w(f"**Targets** (issue 8; ratios at {label(target_n) if target_n else '-'} rows, {over}):\n")
        w("| target | measured | met |")
        w("|---|---|---|")
        if target_n is not None:
            for kind, limit, text in (("unique", 1.15, "one row per individual: within 1.15x of IPython"),
                                      ("distinct", 1.5, "distinct individuals across a join / several rows: within 1.5x")):
                rs = {q: statistics.median(per_run[q]) if q in per_run else ratio(r)
                      for q, r in results[target_n].items() if QUERIES[q][1] == kind}
                rs = {q: x for q, x in rs.items() if x is not None}
                if rs:
                    worst = max(rs, key=lambda q: rs[q])
                    w(f"| {text} | worst {rs[worst]:.2f}x ({worst}); "
                      f"{', '.join(f'{q} {x:.2f}' for q, x in rs.items())} | {'yes' if rs[worst] <= limit else 'no'} |")
        if startup:
            b, i = (statistics.median(startup[n].schema) for n in ("bastion", "ipython"))
            w(f"| start-up no slower than IPython (to first schema) | {b * 1000:.0f} ms vs {i * 1000:.0f} ms "
              f"| {'yes' if b <= i else 'no'} |")
            t = startup["bastion"].trivial[0]
            floor = f"; a kernel that only echoes: {startup['floor'].trivial[0] * 1000:.1f} ms" if "floor" in startup else ""
            w(f"| trivial cell round trip under 5 ms | {t * 1000:.1f} ms (IPython "
              f"{startup['ipython'].trivial[0] * 1000:.1f} ms{floor}) | {'yes' if t < 0.005 else 'no'} |")
        w("")
    if runs and target_n is not None:
        w(f"**Every run at {label(target_n)} rows** (Bastion/IPython, re-run medians; the first run is the one "
          "tabled below):\n")
        w("| query | ratio per run | min | median | max |")
        w("|---|---|---:|---:|---:|")
        for q, xs in per_run.items():
            w(f"| {q} | {' / '.join(f'{x:.2f}' for x in xs)} | {min(xs):.2f} | {statistics.median(xs):.2f} | "
              f"{max(xs):.2f} |")
        w("")
    if startup:
        w("**Start-up and trivial cell** (median of 3 fresh starts; trivial cell `1`: median / p90 of 30). "
          "First schema: IPython `import polars` + a Parquet footer, Bastion `people.columns`.\n")
        w("| kernel | kernel_info reply ms | first cell ms | first schema ms | trivial cell ms |")
        w("|---|---:|---:|---:|---:|")
        for name in ("ipython", "bastion"):
            s = startup[name]
            w(f"| {name} | {statistics.median(s.info) * 1000:.0f} | {statistics.median(s.first) * 1000:.0f} | "
              f"{statistics.median(s.schema) * 1000:.0f} | {s.trivial[0] * 1000:.1f} / {s.trivial[1] * 1000:.1f} |")
        if "floor" in startup:
            f = startup["floor"].trivial
            w(f"| ipykernel floor (a kernel that only echoes the cell) | | | | {f[0] * 1000:.1f} / {f[1] * 1000:.1f} |")
        w("")
    for n in sizes:
        w(f"**{label(n)} people rows, {label(2 * n)} visits rows**: median of {args.repeat} re-runs; first run "
          "(for Bastion a new release: full differencing check) beside it; record: Bastion's background "
          "writing of the released sets after the first run.\n")
        w("| query | kind | IPython ms | Bastion ms | ratio | first: IPython | first: Bastion | first ratio "
          "| record s | peak MB IPython | peak MB Bastion |")
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for q, r in results[n].items():
            w(f"| {q} | {QUERIES[q][1]} | {fmt_ms(r.median.get('ipython'))} | {fmt_ms(r.median.get('bastion'))} | "
              f"{fmt_ratio(ratio(r))} | {fmt_ms(r.first.get('ipython'))} | {fmt_ms(r.first.get('bastion'))} | "
              f"{fmt_ratio(ratio(r, 'first'))} | {r.record:.1f} | {fmt_mb(r.peak.get('ipython'))} | "
              f"{fmt_mb(r.peak.get('bastion'))} |")
        w("")
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        w(f"**Growth {label(lo)} -> {label(hi)}** ({hi / lo:g}x rows): factor by which re-run time and peak "
          "memory grew.\n")
        w("| query | time IPython | time Bastion | memory IPython | memory Bastion |")
        w("|---|---:|---:|---:|---:|")

        def g(x: float | None, y: float | None) -> str:
            return "n/a" if not x or not y else f"{y / x:.1f}x"

        for q in results[lo]:
            a, b = results[lo][q], results[hi].get(q, Result())
            w(f"| {q} | {g(a.median.get('ipython'), b.median.get('ipython'))} | "
              f"{g(a.median.get('bastion'), b.median.get('bastion'))} | "
              f"{g(a.peak.get('ipython'), b.peak.get('ipython'))} | {g(a.peak.get('bastion'), b.peak.get('bastion'))} |")
        w("")
    if capped:
        w(f"**Larger than memory**: {capped_info}; streaming engine; first run / re-run; peak = resident high-water "
          "mark of the process that runs the query.\n")
        w("| query | IPython ms | Bastion ms | ratio | record s | peak MB IPython | peak MB Bastion |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for q, r in capped.items():
            cell = {k: (f"{fmt_ms(r.first[k])} / {fmt_ms(r.median[k])}" if k in r.median else
                        f"failed: {r.failed.get(k, 'not run')}") for k in ("ipython", "bastion")}
            w(f"| {q} | {cell['ipython']} | {cell['bastion']} | {fmt_ratio(ratio(r))} | {r.record:.1f} | "
              f"{fmt_mb(r.peak.get('ipython'))} | {fmt_mb(r.peak.get('bastion'))} |")
        w("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    global STEP_TIMEOUT
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1M,4M", help="rows of the people table (visits is twice as long); "
                   "the issue's 16M is opt-in: --sizes 1M,4M,16M")
    p.add_argument("--repeat", type=int, default=3, help="re-runs per cell after the first (medians)")
    p.add_argument("--runs", type=int, default=1,
                   help="measure the target size (4M) this many times with fresh kernels; the targets then "
                        "use each query's median ratio (one run moves by up to 30%% on a busy 2-core machine)")
    p.add_argument("--queries", default=",".join(QUERIES), help=f"any of {', '.join(QUERIES)}")
    p.add_argument("--parts", default="sizes,startup,capped", help="any of sizes, startup, capped")
    p.add_argument("--memory-cap", type=int, default=256,
                   help="MB per query for the larger-than-memory run (0: skip); keep it under visits' in-memory size")
    p.add_argument("--capped-size", default="8M", help="people rows for the larger-than-memory run (visits: twice)")
    p.add_argument("--step-timeout", type=float, default=STEP_TIMEOUT,
                   help="seconds any one step may take before the run stops and says which (default 300)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "bastion-bench")
    args = p.parse_args(argv)
    STEP_TIMEOUT = args.step_timeout
    t_start = time.perf_counter()
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    parts = {x.strip() for x in args.parts.split(",")}
    unknown = [q for q in args.queries.split(",") if q.strip() and q.strip() not in QUERIES]
    if unknown:
        p.error(f"unknown queries {unknown}; choose from {', '.join(QUERIES)}")
    queries = {q.strip(): QUERIES[q.strip()][0] for q in args.queries.split(",") if q.strip()}
    loads = [load_average()]
    print(f"machine: {machine()}; load average {loads[0]}", flush=True)
    print("generating data (once per size) ...", flush=True)
    capped_n = parse_size(args.capped_size)
    for n in sorted({*sizes, *([capped_n] if "capped" in parts and args.memory_cap else [])}):
        generate(args.cache, n)
    results: dict[int, dict[str, Result]] = {}
    runs: list[dict[str, Result]] = []
    startup: dict[str, Startup] | None = None
    capped: dict[str, Result] = {}
    capped_info = ""
    with tempfile.TemporaryDirectory(prefix="bench_kernels_") as tmp:
        work = Path(tmp)
        try:
            if "sizes" in parts:
                for n in sizes:
                    print(f"\n== {label(n)} people rows, {label(2 * n)} visits rows ==", flush=True)
                    results[n] = run_size(n, args.cache, work, args.repeat, queries)
                target_n = min(sizes, key=lambda s: abs(s - TARGET_SIZE)) if sizes else None
                if target_n is not None and args.runs > 1:
                    runs.append(results[target_n])
                    for i in range(2, args.runs + 1):
                        print(f"\n== {label(target_n)} people rows again: run {i} of {args.runs} ==", flush=True)
                        runs.append(run_size(target_n, args.cache, work, args.repeat, queries))
            else:
                sizes = []
            if "startup" in parts:
                print("\n== start-up and trivial cell ==", flush=True)
                startup = measure_startup(args.cache, min(sizes or [capped_n]), work)
                startup["floor"] = Startup(trivial=measure_floor(work))
                print(f"  floor    trivial {startup['floor'].trivial[0] * 1000:.1f} ms (a kernel that only echoes)",
                      flush=True)
                for name, s in ((n, s) for n, s in startup.items() if n != "floor"):
                    print(f"  {name:8} kernel_info {statistics.median(s.info) * 1000:.0f} ms, first cell "
                          f"{statistics.median(s.first) * 1000:.0f} ms, first schema "
                          f"{statistics.median(s.schema) * 1000:.0f} ms, trivial {s.trivial[0] * 1000:.1f} ms "
                          f"(p90 {s.trivial[1] * 1000:.1f})", flush=True)
            cap = args.memory_cap
            if "capped" in parts and cap != 0:
                people, visits = generate(args.cache, capped_n)
                mb = {"people": in_memory_mb(people), "visits": in_memory_mb(visits)}
                if mb["visits"] <= cap:
                    print(f"  note: visits ({mb['visits']:.0f} MB in memory) is not larger than the cap "
                          f"({cap} MB); use a larger --capped-size or a smaller --memory-cap", flush=True)
                capped_info = (f"{label(capped_n)} people rows ({mb['people']:.0f} MB in memory), "
                               f"{label(2 * capped_n)} visits rows ({mb['visits']:.0f} MB in memory), "
                               f"{cap} MB per query (Bastion `query_memory_mb`, IPython the same RLIMIT_DATA)")
                print(f"\n== larger than memory: {capped_info} ==", flush=True)
                capped = run_size(capped_n, args.cache, work, 1, CAPPED, cap)
        except Stall as exc:
            print(f"\n{exc}\n", flush=True)
            return 2
    loads.append(load_average())
    block = report(args, sizes, results, startup, capped, capped_info, loads, time.perf_counter() - t_start, runs)
    print("\n<!-- bench_kernels.py output: paste under README > Performance > Latest figures -->\n")
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
