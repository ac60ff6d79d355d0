"""Opening the owner's datasets: the only place Bastion reads data files.

Why separate: the grammar never names a file; the interpreter only ever asks
for a dataset by its configured name, and this module turns the owner's path
into a polars scan. Nothing a user types reaches a reader function.

It also knows facts about each dataset *file version* (path, size, mtime,
inode, ctime of every file it covers), measured once and cached in the
owner's state folder: how many rows one individual has at most, whether
any row lacks a privacy unit id, and the range of each numeric column
(`unit_profile`). With at most one row per individual, "at least k
individuals" is "at least k rows", which polars counts for free instead of
hashing every id (`frames._at_least`); the ranges let the dominance rule
clear most groups without their extremes (`frames._dominance_bounded`).
It also remembers, in memory, which groupings of a file version a release
saw the dominance rule clear (`note_groups_cleared`).
"""

from __future__ import annotations

import functools
import glob
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from .config import DatasetConfig

PROFILE_FILE = "unit_profiles.json"
_lock = threading.Lock()
_profiles: dict[tuple[str, str, tuple], UnitProfile] = {}
_measuring: dict[tuple[str, str, tuple], threading.Lock] = {}  # one measurement per key at a time


def scan(ds: DatasetConfig) -> pl.LazyFrame:
    """A lazy scan of the dataset with projection and predicate pushdown intact."""
    if ds.format == "csv":
        return pl.scan_csv(ds.path)
    return pl.scan_parquet(ds.path)


@functools.lru_cache(maxsize=256)
def schema(ds: DatasetConfig) -> pl.Schema:
    """The dataset's columns and types, read once per process (file metadata only, no rows).

    Every reference to a dataset name, every completion request and the startup
    check need it; reading Parquet footers again each time is wasted I/O.
    """
    return scan(ds).collect_schema()


def version(ds: DatasetConfig) -> tuple[tuple[str, int, int, int, int, int], ...]:
    """Identity of the bytes behind a dataset now: per file (path, size, mtime, inode, device, ctime).

    Replacing a file (new inode) or rewriting it in place (new ctime) changes it.
    """
    paths = sorted(glob.glob(ds.path)) if any(ch in ds.path for ch in "*?[") else [ds.path]
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        out.append((os.path.realpath(p), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns))
    return tuple(out)


@dataclass(frozen=True)
class UnitProfile:
    """Per dataset version: the most rows any one individual has (None: unknown), no missing ids,
    how many rows the file holds (None: unknown), which bounds a cross join's multiplicity,
    (column, smallest, largest, variance) of each integer or float column whose values are all
    finite (integers within 2^53, which Float64 holds exactly; other columns have no range), and
    the columns without a null."""

    rows_max: int | None
    nonnull: bool
    rows: int | None = None
    ranges: tuple[tuple[str, float, float, float], ...] = ()
    filled: tuple[str, ...] = ()

    def spread_of(self, column: str) -> tuple[float, float, float] | None:
        """The column's (smallest, largest, variance), if measured; else None."""
        for name, lo, hi, var in self.ranges:
            if name == column:
                return lo, hi, var
        return None

    def range_of(self, column: str) -> tuple[float, float] | None:
        """The column's range, if it is narrow enough to clear groups (`NARROW_RANGE`); else None."""
        spread = self.spread_of(column)
        if spread is None:
            return None
        lo, hi, var = spread
        return (lo, hi) if var > 0 and (hi - lo) ** 2 <= NARROW_RANGE * var else None


# How wide a column's range may be, in its variances, for the range to stand in for each group's
# extremes (`frames._dominance_bounded`). A group of n rows with about the column's spread clears
# when (range / 2)^2 <= max_share * n * variance: uniform values (ratio 12) from a handful of rows,
# normal ones (ratio ~110 at millions of rows) from about 60. One outlier in the file makes the
# ratio huge; then every group would need its exact extremes in a second pass over the data
# (measured: twice the query's time), so such a column keeps them in the first pass instead.
NARROW_RANGE = 200.0


UNKNOWN = UnitProfile(None, False)


def unit_profile(ds: DatasetConfig, state_dir: Path | None = None, memory_mb: int = 1024) -> UnitProfile:
    """The dataset's `UnitProfile`, measured once per file version (cached in memory and in `state_dir`).

    Why cached by version: it is one full pass over the unit column, cheap next
    to any query, but not worth paying per cell; when the owner changes the
    file, the version changes and it is measured again. A dataset without a
    privacy unit counts each row as an individual: one row each, never null.
    """
    key = (ds.path, ds.privacy_unit or "", version(ds))
    with _lock:
        found = _profiles.get(key)
        gate = _measuring.setdefault(key, threading.Lock())
    if found is not None:
        return found
    with gate:  # a cell and the start-up warm-up (`warm`) never measure the same file twice
        with _lock:
            found = _profiles.get(key)
        if found is not None:
            return found
        stored = _read_cache(state_dir).get(_cache_key(key))
        found = _from_cache(stored)
        if found is None:
            found = _measure(ds, memory_mb)
            if found is not UNKNOWN and version(ds) == key[2]:  # unchanged while measuring
                _write_cache(state_dir, _cache_key(key), found)
        with _lock:
            _profiles[key] = found
    return found


def warm(datasets: list[DatasetConfig], state_dir: Path | None, memory_mb: int, idle: Any = None) -> None:
    """Measure the profiles of `datasets` ahead of the first cell (the query worker runs this in a
    thread after start-up; `idle()` returns how long to wait before the kernel counts as idle)."""
    import time

    for ds in datasets:
        while idle is not None and (wait := idle()) > 0:
            time.sleep(wait)
        unit_profile(ds, state_dir, memory_mb)


# Per file version and group key columns, what releases saw: the values (a column, or one filtered by a
# row-wise condition, as `repr`) whose every group the dominance rule cleared (`frames._cleared_groups`).
# Bounded: old file versions fall out.
_cleared: dict[tuple, set[tuple[str, float]]] = {}
CLEARED_ENTRIES = 1024


def cleared_key(ds: DatasetConfig, keys: tuple[str, ...]) -> tuple:
    """The file's current version grouped by `keys` (in any order)."""
    return (ds.path, version(ds), tuple(sorted(set(keys))))


def groups_cleared(key: tuple) -> frozenset[tuple[str, float]]:
    """(value, max_share) pairs a release over this file version saw every group of these keys clear."""
    with _lock:
        return frozenset(_cleared.get(key, ()))


def note_groups_cleared(ds: DatasetConfig, key: tuple, value: str, share: float) -> None:
    """Remember that every group cleared `value`, if the file is still the version the query was planned on.

    Why this is a fact of the file and not of the query: the values an
    aggregate of it is fed per group are the same in every query that groups
    the whole file by those keys, so the dominance rule's verdict
    (`rules.dominated`) is too.
    """
    if version(ds) != key[1]:
        return
    with _lock:
        _cleared.setdefault(key, set()).add((value, share))
        while len(_cleared) > CLEARED_ENTRIES:
            del _cleared[next(iter(_cleared))]


EXACT_INT = float(2**53)  # integers Float64 still holds exactly


def _columns(ds: DatasetConfig) -> tuple[tuple[tuple[str, float, float, float], ...], tuple[str, ...]]:
    """`UnitProfile.ranges` and `UnitProfile.filled`, in one streaming pass.

    Ranges: (column, min, max, variance) of the numeric columns whose values
    are all finite. Why exact values only: a range is used as a bound that
    must hold for every row (`frames._dominance_bounded`); a NaN or infinity,
    or an integer Float64 rounds, leaves the column without one (its groups
    take the exact test). Filled: the columns whose null count is 0.
    """
    types = schema(ds)
    names = list(types)
    cols = [(n, t) for n, t in types.items() if t.is_integer() or t.is_float()]
    aggs: list[pl.Expr] = [pl.col(n).null_count().alias(f"nulls{i}") for i, n in enumerate(names)]
    for i, (n, t) in enumerate(cols):
        c = pl.col(n)
        aggs += [c.min().cast(pl.Float64).alias(f"lo{i}"), c.max().cast(pl.Float64).alias(f"hi{i}"),
                 c.cast(pl.Float64).var(ddof=0).alias(f"var{i}")]
        bad = (~c.is_finite()).any() if t.is_float() else (c.abs().cast(pl.Float64) > EXACT_INT).any()
        aggs.append(bad.fill_null(False).alias(f"bad{i}"))
    if not aggs:
        return (), ()
    row = scan(ds).select(aggs).collect(engine="streaming").row(0)
    filled = tuple(n for n, nulls in zip(names, row) if nulls == 0)
    row = row[len(names):]
    out = []
    for i, (n, _) in enumerate(cols):
        lo, hi, var, bad = row[4 * i: 4 * i + 4]
        if None not in (lo, hi, var) and not bad and all(math.isfinite(v) for v in (lo, hi, var)):
            out.append((n, float(lo), float(hi), float(var)))
    return tuple(out), filled


def _measure(ds: DatasetConfig, memory_mb: int) -> UnitProfile:
    """Max rows per non-null unit id, in hash partitions small enough for `memory_mb` (streaming engine)."""
    try:
        ranges, filled = _columns(ds)
    except Exception:  # noqa: BLE001 - no ranges: the dominance rule uses each group's own extremes
        ranges, filled = (), ()
    if not ds.privacy_unit:  # each row is an individual
        try:
            rows = int(scan(ds).select(pl.len()).collect(engine="streaming").item())
            return UnitProfile(1, True, rows, ranges, filled)
        except Exception:  # noqa: BLE001
            return UnitProfile(1, True, None, ranges, filled)
    unit = pl.col(ds.privacy_unit)
    try:
        lf = scan(ds).select(unit)
        counts = lf.select(pl.len().alias("rows"), unit.null_count().alias("nulls")).collect(engine="streaming")
        rows, nulls = int(counts["rows"][0]), int(counts["nulls"][0])
        # ~64 bytes per distinct id in a hash table is generous; an eighth of the budget per pass (the
        # worker's cap counts address space the allocator keeps, and a cell may run alongside).
        parts = max(1, math.ceil(rows * 64 / (memory_mb * 2**20 / 8)))
        top = 0
        ids = lf.filter(unit.is_not_null())
        for p in range(parts):
            part = ids if parts == 1 else ids.filter(unit.hash(seed=17) % parts == p)
            m = part.group_by(unit).agg(pl.len().alias("n")).select(pl.col("n").max()).collect(engine="streaming")
            top = max(top, int(m.item() or 0))
        return UnitProfile(max(top, 1), nulls == 0, rows, ranges, filled)
    except Exception:  # noqa: BLE001 - an unreadable file just means the exact (slower) counts are used
        return UNKNOWN


def _from_cache(stored: Any) -> UnitProfile | None:
    """A cached profile, or None when absent or in an older shape (then it is measured again)."""
    try:
        rows_max, nonnull, rows, ranges, filled = stored
        return UnitProfile(rows_max, bool(nonnull), rows,
                           tuple((str(c), float(lo), float(hi), float(v)) for c, lo, hi, v in ranges),
                           tuple(str(c) for c in filled))
    except (TypeError, ValueError):
        return None


def _cache_key(key: tuple[str, str, tuple]) -> str:
    return json.dumps([key[0], key[1], [list(v) for v in key[2]]])


def _read_cache(state_dir: Path | None) -> dict[str, list]:
    if state_dir is None:
        return {}
    try:
        data = json.loads((Path(state_dir) / PROFILE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(state_dir: Path | None, key: str, profile: UnitProfile) -> None:
    """Atomic replace; concurrent writers lose nothing but a cache entry (measured again later)."""
    if state_dir is None:
        return
    path = Path(state_dir) / PROFILE_FILE
    with _lock:
        data = _read_cache(state_dir)
        data[key] = [profile.rows_max, profile.nonnull, profile.rows, [list(r) for r in profile.ranges],
                     list(profile.filled)]
        if len(data) > 512:  # old versions of rewritten files: keep the newest entries
            data = dict(list(data.items())[-512:])
        tmp = path.with_name(f"{PROFILE_FILE}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            pass
