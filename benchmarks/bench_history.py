"""How much the differencing check costs: release time with and without it, history size x data size.

Run (a few minutes; other processes on the machine make the numbers noisy):

    /work/venv/bin/python benchmarks/bench_history.py
    /work/venv/bin/python benchmarks/bench_history.py --rows 1000000 --history 0,100,1000 --repeat 3

For each data size it writes a Parquet file (4 rows per individual, like a
visits table; 8 regions assigned per individual) and, for each history size,
times two fresh releases (each removes a different 1% of individuals first,
so every measured release is new, not a re-run):

- grouped: ``data.filter(bucket != i).group_by("region").agg(pl.len(), pl.col("value").mean())``
- global:  ``data.filter(bucket != i).select(pl.col("value").sum())``

"without" is the same query with the cover column pruned (`frames.materialize`;
polars drops the unused lists), i.e. the query as it ran before the check;
"with" is `release.release_aggregate` (query plus per-set counts) followed by
`HistoryStore.check_and_record` (size ranges, comparison where needed, write)
and the recording of the sets' members, which a kernel does in the background
when idle (`HistoryStore.flush` here, so it is counted).

The earlier releases are synthetic (written straight into the store, 8 sets
each, like grouped results): sizes log-uniform between k and a group's size,
one in ten sized within k of the measured query's sets so that the size
window is never empty; contents are contiguous id ranges, which keeps the
history database small (real sets cost about the "stored" column per release).
A last line times an adversarial history: 1000 sets that are one real group
minus 10-40 individuals each (same size window, same smallest ids), which
only the sketch bound prunes.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion_kernel import config
from bastion_kernel import frames as F
from bastion_kernel import release as R
from bastion_kernel.plan import BinOp, Call, Col, Len, Lit
from bastion_kernel.policy import history as H

K = 10
USER = "bench"


def make_data(folder: Path, rows: int) -> config.Deployment:
    units = rows // 4
    uid = pl.int_range(0, rows, eager=True) % units
    df = pl.DataFrame({"uid": uid}).with_columns(
        region=(pl.col("uid").hash(7) % 8).cast(pl.Int32),
        bucket=(pl.col("uid") % 97).cast(pl.Int32),
        value=((pl.col("uid") * 7919 + pl.int_range(0, rows)) % 1000).cast(pl.Float64),
    )
    df.write_parquet(folder / "data.parquet")
    (folder / "bastion.toml").write_text(
        f'[bastion]\nstate_dir = "state"\nmin_group_size = {K}\n'
        '[datasets.data]\npath = "data.parquet"\nprivacy_unit = "uid"\n'
    )
    return config.load(folder / "bastion.toml")


def frames_for(dep: config.Deployment, i: int) -> dict[str, F.Frame]:
    ctx = F.Ctx(itertools.count())
    src = F.source(dep.datasets["data"], ctx)
    kept = F.filter_(src, [BinOp("!=", Col("bucket"), Lit(i))], ctx)
    return {
        "grouped": F.aggregate(kept, [Col("region")], [Len(), Call("mean", Col("value"))], ctx),
        "global": F.aggregate(kept, [], [Call("sum", Col("value"))], ctx, verb="select"),
    }


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def synthetic_history(store: H.HistoryStore, scope: str, n: int, near: list[int], universe: int,
                      rng: random.Random, start: int) -> None:
    """`n` earlier releases of 8 range sets each, written without checking (they are the past)."""
    top = max(near)
    with store._write() as conn:
        for r in range(start, start + n):
            sizes, offsets = [], []
            for s in range(8):
                size = rng.choice(near) + rng.randint(-K + 1, K - 1) if rng.random() < 0.1 else \
                    int(math.exp(rng.uniform(math.log(K), math.log(top))))
                sizes.append(size)
                offsets.append(rng.randrange(0, max(1, universe - size)))
            data = pl.concat([
                pl.DataFrame({"set_no": pl.repeat(s, size, eager=True, dtype=pl.Int64),
                              "idx": pl.int_range(o, o + size, eager=True, dtype=pl.Int64),
                              "count": pl.repeat(4, size, eager=True, dtype=pl.Int64)})
                for s, (size, o) in enumerate(zip(sizes, offsets))
            ])
            _insert_sets(store, conn, f"S{r:08d}", scope, data)


def _insert_sets(store: H.HistoryStore, conn: sqlite3.Connection, rid: str, scope: str, data: pl.DataFrame) -> None:
    """Earlier releases written straight into the store's tables (recorded, members and facts)."""
    sizes, prefixes, sk = H._facts(data, K)
    set_nos = sorted(sizes)
    conn.execute("INSERT INTO releases (id, scope, user, dataset, session_id, cell, created, rows, sets, blob)"
                 " VALUES (?, ?, ?, 'data', 'bench-session', 'synthetic', '2000-01-01T00:00:00Z', 8, ?, NULL)",
                 (rid, scope, USER, len(set_nos)))
    conn.execute("INSERT INTO set_blobs (release_id, scope, piece, blob) VALUES (?, ?, 0, ?)",
                 (rid, scope, H._encode(data.sort("set_no", "idx"))))
    conn.executemany(
        "INSERT INTO unit_sets (release_id, scope, user, set_no, size, label, prefix, sketch, lo, state, rows, m)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'ok', ?, NULL)",
        [(rid, scope, USER, s, sizes[s], f"set {s}", H._pack(prefixes[s], "q"), H._pack(sk[s], "I"), sizes[s],
          sizes[s] * 4) for s in set_nos],
    )


def measure(dep: config.Deployment, store: H.HistoryStore, shape: str, i: int) -> tuple[float, float, float, int]:
    """(without, with: query part, with: check part, bytes stored) for one fresh release."""
    frame = frames_for(dep, i)[shape]
    base, _ = timed(lambda: R.run(R.visible(F.materialize(frame))))
    frame = frames_for(dep, i)[shape]
    q, released = timed(lambda: R.release_aggregate(frame, dep.limits))
    before = _db_bytes(store)
    c, finding = timed(lambda: store.check_and_record(user=USER, session_id="bench-session", cell=f"{shape} {i}",
                                                      cover=released.cover, datasets=dep.datasets,
                                                      rows=released.df.height))
    assert finding is None, finding
    w, _ = timed(store.flush)  # the members, written in the background by a kernel: counted here
    c += w
    return base, q, c, _db_bytes(store) - before


def _db_bytes(store: H.HistoryStore) -> int:
    with store._connect() as conn:
        return int(conn.execute("SELECT COALESCE(SUM(LENGTH(blob)), 0) FROM set_blobs").fetchone()[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1000000,4000000")
    p.add_argument("--history", default="0,100,1000,5000")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-adversarial", action="store_true")
    args = p.parse_args(argv)
    rows_list = [int(x) for x in args.rows.split(",")]
    hist_list = sorted(int(x) for x in args.history.split(","))
    rng = random.Random(6)
    print(f"{'rows':>9} {'history':>8} {'query':>8} {'without ms':>11} {'with ms':>9} {'(query':>8} "
          f"{'+ check)':>9} {'ratio':>6} {'stored KB':>10}")
    counter = itertools.count(1)
    for rows in rows_list:
        with tempfile.TemporaryDirectory(prefix="bench_history_") as tmp:
            dep = make_data(Path(tmp), rows)
            store = H.HistoryStore(dep.state_dir)
            scope = H.scope_of(dep.datasets["data"])
            probe = R.release_aggregate(frames_for(dep, 96)["grouped"], dep.limits)
            near = [int(n) for n in probe.df.get_column("len").to_list()]  # rows per group; sets are ~1/4
            near = [n // 4 for n in near] + [rows // 4]
            have = 0
            for h in hist_list:
                synthetic_history(store, scope, h - have, near, rows // 4, rng, have)
                have = h
                for shape in ("grouped", "global"):
                    runs = [measure(dep, store, shape, next(counter) % 90) for _ in range(args.repeat)]
                    base = statistics.median(r[0] for r in runs)
                    q = statistics.median(r[1] for r in runs)
                    c = statistics.median(r[2] for r in runs)
                    kb = statistics.median(r[3] for r in runs) / 1024
                    print(f"{rows:>9} {h:>8} {shape:>8} {base * 1000:>11.0f} {(q + c) * 1000:>9.0f} "
                          f"{q * 1000:>8.0f} {c * 1000:>9.0f} {(q + c) / base:>6.2f} {kb:>10.1f}", flush=True)
            if not args.no_adversarial and rows == rows_list[0]:
                adversarial(dep, store, scope, rng, args.repeat)
    return 0


def adversarial(dep: config.Deployment, store: H.HistoryStore, scope: str, rng: random.Random, repeat: int) -> None:
    """Near sets of the measured query's first group (minus 10-40 individuals each); then that query."""
    picks = [90 + i for i in range(repeat)]
    per = 1000 // len(picks)
    with store._write() as conn:
        for i in picks:
            group = (pl.scan_parquet(dep.datasets["data"].path).filter((pl.col("region") == 0) & (pl.col("bucket") != i))
                     .select(pl.col("uid").unique().sort()).collect().get_column("uid"))
            for r in range(per):
                drop = rng.sample(range(group.len()), rng.randint(K, 40))
                keep = group.filter(~pl.int_range(0, group.len(), eager=True).is_in(drop))
                data = pl.DataFrame({"set_no": pl.repeat(0, keep.len(), eager=True, dtype=pl.Int64),
                                     "idx": keep.cast(pl.Int64),
                                     "count": pl.repeat(4, keep.len(), eager=True, dtype=pl.Int64)})
                _insert_sets(store, conn, f"A{i:03d}{r:05d}", scope, data)
    runs = [measure(dep, store, "grouped", i) for i in picks]
    base = statistics.median(r[0] for r in runs)
    q = statistics.median(r[1] for r in runs)
    c = statistics.median(r[2] for r in runs)
    print(f"adversarial: +{per * len(picks)} sets within 40 individuals of the measured group: grouped without "
          f"{base * 1000:.0f} ms, with {(q + c) * 1000:.0f} ms (query {q * 1000:.0f} + check {c * 1000:.0f}), "
          f"ratio {(q + c) / base:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
