"""Bastion against the plain IPython kernel: the same polars cells on the same files.

Run (one command; a few minutes on 2 cores; data is generated once into the cache folder):

    /work/venv/bin/python benchmarks/bench_kernels.py
    /work/venv/bin/python benchmarks/bench_kernels.py --sizes 1M,4M --repeat 5
    /work/venv/bin/python benchmarks/bench_kernels.py --sizes 1M --memory-cap 0      # skip the capped run

What it does, per size (rows of the one-row-per-individual table `people`;
`visits` is twice as long, 0 to ~12 rows per person):

1. writes both tables as Parquet (once, under ``--cache``, default
   ``~/.cache/bastion-bench``), and a deployment file with a fresh state
   folder (k = 10, privacy unit ``pid`` in both);
2. starts the IPython kernel (``kernel_name="python3"``) and the Bastion kernel
   through jupyter_client, timing start-up to the ``kernel_info`` reply and to
   the first cell's result, then a trivial cell's round trip (median of 30);
3. runs each query cell in both kernels, alternately: IPython gets
   ``people = pl.scan_parquet(...)`` etc. first, so both run the very same
   text; Bastion's answer must be an automatic release. The first run of a
   cell is a new release for Bastion (the differencing check runs in full;
   it also measures the per-file unit profile the first time a dataset is
   used); the next ``--repeat`` runs are re-runs, reported as medians;
4. after each Bastion cell, waits until its release history has no set left
   to record (Bastion writes the members of released sets in the background
   once the kernel is idle) and reports that time as "record", so no
   background work overlaps the next measurement;
5. reports peak memory of the process that runs the queries (IPython's
   kernel; Bastion's query worker), from ``/proc/<pid>/status`` VmHWM, reset
   before each cell through ``/proc/<pid>/clear_refs``.

Then it prints how time and memory grow from the smallest to the largest
size, and (``--memory-cap MB``, default 512, 0 to skip) a larger-than-memory
run at the largest size, on `visits` (larger in memory than the cap) and one
`people` cell: Bastion with ``query_memory_mb`` = MB (its worker's
RLIMIT_DATA), IPython with the same RLIMIT_DATA set in the kernel; both
aggregate through polars' streaming engine (polars' default). A kernel that
cannot stay under the cap is reported as failed.

Timings are client-side round trips (request to idle); other processes on
the machine add noise, so the load average is printed with the results.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

REPO = Path(__file__).resolve().parents[1]
K = 10
TIMEOUT = 1800.0

# name -> (cell text, kind). "unique": one row per individual; "distinct": individuals have several rows.
QUERIES: dict[str, tuple[str, str]] = {
    "grouped": ('people.group_by("region").agg(pl.len(), pl.col("income").mean()).collect()', "unique"),
    "grouped_1000": ('people.group_by("zip").agg(pl.col("income").sum(), pl.col("age").mean()).collect()', "unique"),
    "filtered": ('people.filter(pl.col("age") >= 40).group_by("region").agg(pl.col("income").mean(), pl.len())'
                 ".collect()", "unique"),
    "condition": ('people.group_by("region").agg(pl.col("income").filter(pl.col("age") < 30).mean()).collect()',
                  "unique"),
    "global": ('people.select(pl.col("income").sum(), pl.col("age").mean(), pl.len()).collect()', "unique"),
    "multi_row": ('visits.group_by("kind").agg(pl.col("amount").mean(), pl.len()).collect()', "distinct"),
    "join": ('visits.join(people, on="pid").group_by("region").agg(pl.col("amount").sum(), pl.len()).collect()',
             "distinct"),
}
# The larger-than-memory run: `visits` (~40 bytes a row in memory) is larger than the cap at the largest size.
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
    h = lambda seed: pl.col("pid").hash(seed)  # noqa: E731 - deterministic pseudo-random columns
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
    limits = f"\n[limits]\nquery_memory_mb = {memory_mb}\nquery_timeout_s = 3600\n" if memory_mb else \
        "\n[limits]\nquery_timeout_s = 3600\n"
    text = (f'[bastion]\nstate_dir = "state"\nmin_group_size = {K}\n\n'
            f'[datasets.people]\npath = {json.dumps(str(people))}\nprivacy_unit = "pid"\n\n'
            f'[datasets.visits]\npath = {json.dumps(str(visits))}\nprivacy_unit = "pid"\n{limits}')
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bastion.toml").write_text(text, encoding="utf-8")
    return folder / "bastion.toml"


# ---------------------------------------------------------------- kernels


@dataclass
class Kernel:
    name: str
    km: KernelManager
    kc: Any
    startup_info: float = 0.0
    startup_first: float = 0.0
    history: Path | None = None  # Bastion: its history database, polled for pending sets

    def run(self, code: str, *, timeout: float = TIMEOUT) -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
        """(seconds from request to idle, reply content, iopub messages of the request)."""
        start = time.perf_counter()
        msg_id = self.kc.execute(code, store_history=False, allow_stdin=False, stop_on_error=False)
        msgs: list[dict[str, Any]] = []
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=1.0)
            except queue.Empty:
                if not self.km.is_alive():
                    raise KernelDied(f"{self.name} died running {code!r}") from None
                if time.perf_counter() - start > timeout:
                    raise TimeoutError(f"{self.name}: no answer to {code!r}") from None
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            msgs.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        elapsed = time.perf_counter() - start
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        return elapsed, reply["content"], msgs

    def query_pid(self) -> int | None:
        """The process that runs queries: the kernel itself, or Bastion's query worker (its child)."""
        pid = self.km.provisioner.process.pid if self.km.provisioner else None  # type: ignore[union-attr]
        if pid is None or self.name == "ipython":
            return pid
        for child in _children(pid):
            try:
                if b"bastion_kernel.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return child
            except OSError:
                continue
        return None

    def stop(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)
        self.km.cleanup_resources()


class KernelDied(RuntimeError):
    """The kernel process ended (the IPython kernel aborts when polars cannot allocate under a cap)."""


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(x) for x in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def start(name: str, spec_dir: Path | None, env: dict[str, str] | None = None) -> Kernel:
    """Start a kernel; time to kernel_info reply and to the first cell's result."""
    if spec_dir is None:
        km = KernelManager(kernel_name="python3")
    else:
        km = KernelManager(kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir)]),
                           kernel_name="bastion-bench")
    t0 = time.perf_counter()
    km.start_kernel(env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    kernel = Kernel(name, km, kc, startup_info=time.perf_counter() - t0)
    _, reply, _ = kernel.run("1")
    assert reply["status"] == "ok", reply
    kernel.startup_first = time.perf_counter() - t0
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


def wait_recorded(history: Path | None, limit: float = 600.0) -> float:
    """Seconds until the history database has no pending set (Bastion's background recording)."""
    if history is None:
        return 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        try:
            with sqlite3.connect(f"file:{history}?mode=ro", uri=True, timeout=30) as conn:
                n = conn.execute("SELECT COUNT(*) FROM unit_sets WHERE state = 'pending'").fetchone()[0]
        except sqlite3.Error:
            n = 0  # no history yet
        if not n:
            return time.perf_counter() - start
        time.sleep(0.05)
    return float("nan")


def cpu_seconds(pid: int | None) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, TypeError):
        return 0.0


def wait_quiet(pid: int | None, limit: float = 600.0) -> float:
    """Seconds until a process stops using CPU (Bastion's worker finishing background work),
    so that it never competes with the next measured cell of either kernel."""
    start = time.perf_counter()
    last, still = cpu_seconds(pid), 0
    while pid is not None and still < 3 and time.perf_counter() - start < limit:
        time.sleep(0.1)
        now = cpu_seconds(pid)
        still = still + 1 if now - last < 0.005 else 0
        last = now
    return time.perf_counter() - start


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
            for other in kernels:
                if other.history is not None and other.name not in out.failed:
                    wait_quiet(other.query_pid())
            pid = k.query_pid()
            reset_peak(pid)
            try:
                elapsed, reply, msgs = k.run(code)
                check_answer(k.name, reply, msgs, name)
            except (KernelDied, RuntimeError) as exc:
                if strict:
                    raise
                out.failed[k.name] = str(exc).splitlines()[0][:160]
                continue
            mb = peak_mb(pid)
            if mb is not None:
                peaks[k.name].append(mb)
            if rep == 0:
                out.first[k.name] = elapsed
            else:
                runs[k.name].append(elapsed)
            if k.history is not None:
                waited = wait_recorded(k.history)
                if rep == 0:
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
    if memory_mb:  # the same cap Bastion's worker has: RLIMIT_DATA at the current size plus the budget
        lines += ["import resource",
                  "pl.DataFrame({'a': [1, 2]}).lazy().group_by('a').agg(pl.len()).collect()",
                  "_vm = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmData:')][0]",
                  f"resource.setrlimit(resource.RLIMIT_DATA, (_vm + {memory_mb} * 2**20, _vm + {memory_mb} * 2**20))"]
    return "\n".join(lines)


def run_size(n: int, cache: Path, work: Path, repeat: int, queries: dict[str, str], memory_mb: int | None = None,
             ) -> tuple[dict[str, Result], dict[str, Kernel]]:
    people, visits = generate(cache, n)
    folder = work / (label(n) + (f"-cap{memory_mb}" if memory_mb else ""))
    config = deployment(folder, people, visits, memory_mb)
    kernels = [start("ipython", None), start("bastion", bastion_spec(folder, config))]
    kernels[1].history = folder / "state" / "history.db"
    try:
        _, reply, msgs = kernels[0].run(setup_cell(people, visits, memory_mb))
        check_answer("ipython", reply, msgs, "setup")
        results = {}
        for q, code in queries.items():
            results[q] = r = measure(kernels, q, code, repeat, strict=memory_mb is None)
            if r.failed:
                print(f"  {q:15} failed: {r.failed}", flush=True)
            if len(r.median) == 2:
                print(f"  {q:15} ipython {r.median['ipython']*1000:8.0f} ms  bastion {r.median['bastion']*1000:8.0f} ms"
                      f"  ratio {r.median['bastion'] / r.median['ipython']:5.2f}   (first run: "
                      f"{r.first['ipython']*1000:.0f} / {r.first['bastion']*1000:.0f} ms, record {r.record:.1f} s)",
                      flush=True)
            if any(not k.km.is_alive() for k in kernels):  # a capped kernel that died cannot go on
                break
        return results, {k.name: k for k in kernels}
    finally:
        for k in kernels:
            try:
                k.stop()
            except Exception:  # noqa: BLE001 - a kernel killed by its memory cap is already gone
                pass


def trivial(kernel: Kernel, n: int = 30) -> tuple[float, float]:
    times = sorted(kernel.run("1")[0] for _ in range(n))
    return statistics.median(times), times[int(0.9 * (n - 1))]


# ---------------------------------------------------------------- report


def machine() -> str:
    cpu = "?"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mem = int(next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines()
                       if l.startswith("MemTotal"))) / 2**20
    except (OSError, StopIteration):
        mem = float("nan")
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GB RAM, Python {platform.python_version()}, "
            f"polars {pl.__version__}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def in_memory_mb(path: Path) -> float:
    """The table's size once read into polars, one column at a time (the benchmark's own memory stays small)."""
    names = pl.scan_parquet(path).collect_schema().names()
    return sum(pl.read_parquet(path, columns=[c]).estimated_size() for c in names) / 2**20


def fmt_ms(s: float) -> str:
    return f"{s * 1000:.0f}"


def fmt_mb(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1M,4M,16M", help="rows of the people table (visits is twice as long)")
    p.add_argument("--repeat", type=int, default=2, help="re-runs per cell after the first (medians)")
    p.add_argument("--queries", default=",".join(QUERIES), help=f"any of {', '.join(QUERIES)}")
    p.add_argument("--memory-cap", type=int, default=512,
                   help="MB for the larger-than-memory run at the largest size (0: skip)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "bastion-bench")
    args = p.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    queries = [q.strip() for q in args.queries.split(",") if q.strip()]
    print(f"machine: {machine()}", flush=True)
    print("generating data (once per size)...", flush=True)
    for n in sizes:
        generate(args.cache, n)
    all_results: dict[int, dict[str, Result]] = {}
    startups: dict[int, dict[str, Kernel]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_kernels_") as tmp:
        work = Path(tmp)
        for n in sizes:
            print(f"\n== {label(n)} people rows, {label(2 * n)} visits rows ==", flush=True)
            results, kernels = run_size(n, args.cache, work, args.repeat, {q: QUERIES[q][0] for q in queries})
            all_results[n] = results
            startups[n] = kernels
        # start-up and trivial cells on fresh kernels (the largest size's data is irrelevant here)
        people, visits = generate(args.cache, sizes[0])
        folder = work / "startup"
        config = deployment(folder, people, visits)
        starts: dict[str, list[tuple[float, float]]] = {"ipython": [], "bastion": []}
        rts: dict[str, tuple[float, float]] = {}
        for _ in range(3):
            for name, spec in (("ipython", None), ("bastion", bastion_spec(folder, config))):
                k = start(name, spec)
                starts[name].append((k.startup_info, k.startup_first))
                if name not in rts:
                    rts[name] = trivial(k)
                k.stop()
        capped: dict[str, Result] = {}
        if args.memory_cap:
            n = sizes[-1]
            print(f"\n== larger than memory: {label(n)} people rows, {label(2 * n)} visits rows, "
                  f"{args.memory_cap} MB per query ==", flush=True)
            sizes_mb = {name: in_memory_mb(path) for name, path in zip(("people", "visits"), generate(args.cache, n))}
            print(f"  in memory: people {sizes_mb['people']:.0f} MB, visits {sizes_mb['visits']:.0f} MB", flush=True)
            capped, _ = run_size(n, args.cache, work, 1, CAPPED, args.memory_cap)

    print(f"\n# Results ({machine()})\n")
    print("## Start-up and trivial cell (median of 3 starts; trivial cell: median / p90 of 30)\n")
    print("| kernel | to kernel_info reply (ms) | to first cell result (ms) | trivial cell round trip (ms) |")
    print("|---|---:|---:|---:|")
    for name in ("ipython", "bastion"):
        info = statistics.median(s[0] for s in starts[name])
        first = statistics.median(s[1] for s in starts[name])
        med, p90 = rts[name]
        print(f"| {name} | {info * 1000:.0f} | {first * 1000:.0f} | {med * 1000:.1f} / {p90 * 1000:.1f} |")
    for n in sizes:
        print(f"\n## {label(n)} people rows ({label(2 * n)} visits rows): median of {args.repeat} re-runs, "
              "first run (a new release) beside it\n")
        print("| query | ipython ms | bastion ms | ratio | first: ipython ms | first: bastion ms | first ratio "
              "| record s | peak MB ipython | peak MB bastion |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for q, r in all_results[n].items():
            print(f"| {q} | {fmt_ms(r.median['ipython'])} | {fmt_ms(r.median['bastion'])} | "
                  f"{r.median['bastion'] / r.median['ipython']:.2f} | {fmt_ms(r.first['ipython'])} | "
                  f"{fmt_ms(r.first['bastion'])} | {r.first['bastion'] / r.first['ipython']:.2f} | {r.record:.1f} | "
                  f"{fmt_mb(r.peak['ipython'])} | {fmt_mb(r.peak['bastion'])} |")
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        print(f"\n## Growth {label(lo)} -> {label(hi)} ({hi // lo}x rows): time and peak memory factors\n")
        print("| query | time ipython | time bastion | memory ipython | memory bastion |")
        print("|---|---:|---:|---:|---:|")
        for q in all_results[lo]:
            a, b = all_results[lo][q], all_results[hi][q]
            g = lambda x, y: "n/a" if not x or not y else f"{y / x:.1f}x"  # noqa: E731
            print(f"| {q} | {g(a.median['ipython'], b.median['ipython'])} | "
                  f"{g(a.median['bastion'], b.median['bastion'])} | {g(a.peak['ipython'], b.peak['ipython'])} | "
                  f"{g(a.peak['bastion'], b.peak['bastion'])} |")
    if capped:
        n = sizes[-1]
        print(f"\n## Larger than memory: {label(n)} rows, {args.memory_cap} MB per query (RLIMIT_DATA), "
              "streaming engine; first run / re-run\n")
        print(f"(people is {sizes_mb['people']:.0f} MB in memory, visits {sizes_mb['visits']:.0f} MB)\n")
        print("| query | ipython ms | bastion ms | ratio | record s | peak MB ipython | peak MB bastion |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for q, r in capped.items():
            cell = {k: (f"{fmt_ms(r.first[k])} / {fmt_ms(r.median[k])}" if k in r.median else
                        f"failed: {r.failed.get(k, '?')}") for k in ("ipython", "bastion")}
            ratio = f"{r.median['bastion'] / r.median['ipython']:.2f}" if len(r.median) == 2 else "n/a"
            print(f"| {q} | {cell['ipython']} | {cell['bastion']} | {ratio} | {r.record:.1f} | "
                  f"{fmt_mb(r.peak.get('ipython'))} | {fmt_mb(r.peak.get('bastion'))} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
