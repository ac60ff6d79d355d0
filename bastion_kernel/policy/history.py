"""Release history: stop differencing attacks across (and within) released results.

Why: thresholds alone fall to subtraction. `sum(income)` over everyone and
over everyone but one person both cover thousands; their difference is that
person's income. Trackers (`filter(A | one_person)` against `filter(A)`) and
the same grouped query with and without one person work the same way. So,
like Google's Ads Data Hub, Bastion remembers what each user was shown and
holds back a result when one of its rows covers a set of individuals that
differs from an earlier row's set (or another row of the same result) by
fewer than `min_group_size`, but not by zero (a re-run is harmless).

What a row "covers", per dataset the row counts (see `frames.aggregate`):
- its group: every individual with a row in the group, with how many rows
  each contributed (so dropping some of one person's rows changes the set
  too: the count is part of each element);
- for each condition inside a released (not suppressed) value, the
  individuals on each side of it (`pl.col("x").filter(cond).sum()` covers
  the group where `cond` holds, `when(cond)` both sides).
Results computed from aggregated rows (a `filter`, `head` or `join` after an
aggregation) count every group of that aggregation, seen or not: whatever
they show is a function of those groups.

Units are stable integer indices per dataset: an integer `privacy_unit` is
its own index (nothing to keep in step when the data changes); any other type
gets an append-only dictionary in the history database, so when the data
changes, individuals keep their index and new ones get new indices.

Storage: ``state_dir/history.db`` (SQLite, WAL, one short-lived connection per
operation, like the review store, but its own file so a long check never
blocks the owner's review commands). Per (release, dataset) one row holds the
release's new sets as zstd-compressed Arrow IPC of (set, delta-coded sorted
index, count) written by polars: dense sets compress to almost nothing, and
decoding is vectorised. Per set one row holds its size, its `PREFIX` smallest
indices and a 64-bucket count sketch, indexed by (user, scope, size).

Speed, all exact (no false negatives): |A Δ B| >= ||A| - |B||, so only sets
whose size is within k-1 can be dangerous (one index range scan); two sets
with |A Δ B| < k share one of their k smallest elements (prefix filter: the
smallest common element has fewer than k elements of either set below it), so
only sets sharing a prefix element are compared; the L1 distance of the
bucket sketches is a lower bound on |A Δ B|; only then are the sets decoded
and compared. Identical sets are stored once.

The check and the write happen in one ``BEGIN IMMEDIATE`` transaction, so two
kernels of the same user cannot both pass with a dangerous pair.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import io
import os
import secrets
import sqlite3
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from ..config import DatasetConfig
from ..errors import ExecutionError
from ..plan import Unit, Violation

DB_NAME = "history.db"
BUSY_TIMEOUT_MS = 30_000
PREFIX = 32  # indices kept per set for the prefix filter (covers any k <= PREFIX; larger k skips the filter)
BUCKETS = 64  # sketch: units per bucket (`bucket`)
SMALL = 4_096  # sets up to this size are compared in Python, larger ones with a polars join
BLOB_CACHE = 64  # decoded (release, scope) blobs kept per process

_SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    id TEXT NOT NULL,
    scope TEXT NOT NULL,
    user TEXT NOT NULL,
    dataset TEXT NOT NULL,
    session_id TEXT NOT NULL,
    cell TEXT NOT NULL,
    created TEXT NOT NULL,
    rows INTEGER NOT NULL,
    sets INTEGER NOT NULL,
    blob BLOB,
    PRIMARY KEY (id, scope)
);
CREATE INDEX IF NOT EXISTS releases_user_scope ON releases (user, scope, created);
CREATE TABLE IF NOT EXISTS unit_sets (
    release_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    user TEXT NOT NULL,
    set_no INTEGER NOT NULL,
    size INTEGER NOT NULL,
    label TEXT NOT NULL,
    prefix BLOB NOT NULL,
    sketch BLOB NOT NULL,
    PRIMARY KEY (release_id, scope, set_no)
);
CREATE INDEX IF NOT EXISTS unit_sets_size ON unit_sets (user, scope, size);
CREATE TABLE IF NOT EXISTS unit_keys (
    scope TEXT PRIMARY KEY,
    n INTEGER NOT NULL,
    blob BLOB NOT NULL
);
"""


# ---------------------------------------------------------------- what release hands over


@dataclass(frozen=True)
class CoverPart:
    """The released (or computed-on) rows of one aggregation over individuals.

    `rows` is the aggregation's hidden cover column for those rows: a struct
    with, per unit j of `units`, the sorted unit ids of the group's rows
    (``u<j>``) and their condition bits (``b<j>_<w>``), plus which conditions
    belong to a value that was released on that row (``m<w>``).
    """

    units: tuple[Unit, ...]
    rows: pl.Series
    label: str = ""


@dataclass(frozen=True)
class Cover:
    """Everything a result covered, as `release.release_aggregate` found it."""

    parts: tuple[CoverPart, ...]


@dataclass(frozen=True)
class ReleaseInfo:
    """One earlier automatic release, as the owner and the reasons name it."""

    id: str
    dataset: str
    session_id: str
    cell: str
    created: str
    rows: int


@dataclass(frozen=True)
class Finding:
    """Why a result is held back: which dataset, and which earlier release (None: this result itself)."""

    dataset: str
    k: int
    on_violation: str
    earlier: ReleaseInfo | None

    def violation(self) -> Violation:
        # Never the size of the difference: "1" would tell the analyst their
        # extra condition matched exactly one person.
        if self.earlier is None:
            what = "two rows or values of this result cover"
        else:
            e = self.earlier
            what = (f"this result and your earlier release {e.id} (cell `{_short(e.cell)}` at "
                    f"{e.created[:19].replace('T', ' ')}Z, session {e.session_id}) cover")
        return Violation(
            "differencing", self.dataset,
            f"{what} sets of {self.dataset} individuals that differ by fewer than {self.k}: subtracting one "
            f"from the other would reveal values of those few individuals",
            f"make the selections differ by at least {self.k} individuals (or not at all), or ask the owner",
        )


def _short(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def scope_of(ds: DatasetConfig) -> str:
    """The history key of a dataset: its file and privacy unit, not its name.

    Two dataset names over the same file (say a reviewed and a rejecting
    variant) share one history, so one cannot be subtracted from the other.
    """
    ident = f"{os.path.realpath(ds.path)}\n{ds.privacy_unit or ''}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


# ---------------------------------------------------------------- unit sets of a cover


@dataclass
class _Raw:
    """One scope's sets before indexing: long (set_no, u, count) frames and labels."""

    dataset: str
    k: int
    on_violation: str
    frames: list[pl.DataFrame] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)


@dataclass
class _Sets:
    """The sets of one scope in one result: data (set_no, idx, count) sorted, plus per-set facts."""

    dataset: str
    k: int
    on_violation: str
    data: pl.DataFrame
    set_nos: list[int]
    sizes: list[int]
    labels: list[str]
    prefixes: list[tuple[int, ...]]
    sketches: list[tuple[int, ...]]
    _parts: dict[int, pl.DataFrame] | None = None

    def part(self, set_no: int) -> pl.DataFrame:
        if self._parts is None:
            self._parts = _split(self.data)
        return self._parts[set_no]


def _split(data: pl.DataFrame) -> dict[int, pl.DataFrame]:
    """set_no -> its (idx, count) rows."""
    parts = data.partition_by("set_no", as_dict=True, include_key=False, maintain_order=True)
    return {int(key[0]): df for key, df in parts.items()}


def _bit(column: str, i: int) -> pl.Expr:
    """Bit i of a multi-word bit set stored as UInt64 columns `<column><i // 64>`."""
    return (pl.col(f"{column}{i // 64}") & pl.lit(1 << (i % 64), pl.UInt64)) != 0


def _released_conditions(rows: pl.DataFrame) -> int:
    """How many condition bits are in play: one past the highest bit released on any row."""
    nbits = 0
    w = 0
    while f"m{w}" in rows.columns:
        top = int(rows.get_column(f"m{w}").max() or 0)
        if top:
            nbits = w * 64 + top.bit_length()
        w += 1
    return nbits


def _unit_runs(rows: pl.DataFrame, j: int, nbits: int) -> pl.DataFrame:
    """Per (row, unit) of unit column j: rows contributed (`n`) and rows with condition bit i set (`t<i>`)."""
    words = [f"b{j}_{w}" for w in range((nbits + 63) // 64)]
    e = rows.select("row", pl.col(f"u{j}").alias("u"), *words).explode(["u", *words]).drop_nulls("u")
    bits = [_bit(f"b{j}_", i).cast(pl.Int64).alias(f"t{i}") for i in range(nbits)]
    e = e.select("row", "u", *bits)
    # Units are sorted within each row (`frames.aggregate`), so equal (row, unit) pairs are adjacent:
    # runs are found by comparing neighbours, with no hashing.
    start = ((pl.col("row") != pl.col("row").shift()) | (pl.col("u") != pl.col("u").shift())).fill_null(True)
    n_total = e.height
    cums = [pl.col(f"t{i}").cum_sum().shift(1, fill_value=0).alias(f"c{i}") for i in range(nbits)]
    totals = {i: int(e.get_column(f"t{i}").sum() or 0) for i in range(nbits)}
    runs = e.with_row_index("i").with_columns(cums).filter(start)
    runs = runs.select(
        "row", "u",
        (pl.col("i").shift(-1, fill_value=n_total) - pl.col("i")).cast(pl.Int64).alias("n"),
        *[(pl.col(f"c{i}").shift(-1, fill_value=totals[i]) - pl.col(f"c{i}")).alias(f"t{i}") for i in range(nbits)],
    )
    return runs


def _part_sets(part: CoverPart, j: int, base: int) -> tuple[pl.DataFrame, dict[int, str], int]:
    """The sets unit j of `part` covers: long (set_no, u, count), labels, next free set_no."""
    rows = part.rows.struct.unnest().with_row_index("row")
    nbits = _released_conditions(rows)
    runs = _unit_runs(rows, j, nbits)
    stride = 1 + 2 * nbits
    frames = [runs.select((pl.col("row").cast(pl.Int64) * stride + base).alias("set_no"), "u",
                          pl.col("n").alias("count"))]
    if nbits:
        released = rows.select("row", *[_bit("m", i).alias(f"rel{i}") for i in range(nbits)])
        runs = runs.join(released, on="row", how="left", maintain_order="left")
        for i in range(nbits):
            for side, count in ((1, pl.col(f"t{i}")), (2, pl.col("n") - pl.col(f"t{i}"))):
                frames.append(
                    runs.filter(pl.col(f"rel{i}") & (count > 0))
                    .select((pl.col("row").cast(pl.Int64) * stride + base + 2 * i + side).alias("set_no"), "u",
                            count.alias("count"))
                )
    out = pl.concat(frames)
    head = f"{part.label}, " if part.label else ""
    labels: dict[int, str] = {}
    for row in range(rows.height):
        labels[base + row * stride] = f"{head}row {row + 1}"
        for i in range(nbits):
            labels[base + row * stride + 2 * i + 1] = f"{head}row {row + 1}, where condition {i + 1} holds"
            labels[base + row * stride + 2 * i + 2] = f"{head}row {row + 1}, where condition {i + 1} does not hold"
    return out, labels, base + rows.height * stride


# ---------------------------------------------------------------- comparing sets


def bucket(idx: pl.Expr) -> pl.Expr:
    """The sketch bucket of a unit index: a fixed modular scramble, so that contiguous ranges
    and evenly spread removals do not fill every bucket alike (as `idx mod 64` would).

    Stored sketches depend on it: changing it invalidates the bound for every stored set.
    """
    return ((idx % _SCRAMBLE_P) * _SCRAMBLE_M % _SCRAMBLE_P) % BUCKETS


_SCRAMBLE_P = 1_000_003  # prime; products stay below 2**42, far from Int64 overflow
_SCRAMBLE_M = 2_654_435


def sketches(data: pl.DataFrame) -> dict[int, tuple[int, ...]]:
    """set_no -> units per bucket: the L1 distance of two sketches is at most |A Δ B|."""
    out: dict[int, list[int]] = {}
    keys = data.select((pl.col("set_no") * BUCKETS + bucket(pl.col("idx"))).alias("key"))
    for key, n in keys.get_column("key").value_counts().iter_rows():
        out.setdefault(key // BUCKETS, [0] * BUCKETS)[key % BUCKETS] = n
    return {s: tuple(v) for s, v in out.items()}


def _grouped_and_sorted(data: pl.DataFrame) -> bool:
    """Each set's rows contiguous, with strictly increasing indices (what the prefix filter needs)."""
    if data.height == 0:
        return True
    same = pl.col("set_no") == pl.col("set_no").shift()
    checks = data.select(
        (~same).fill_null(True).sum().alias("runs"),
        pl.col("set_no").n_unique().alias("sets"),
        (pl.col("idx") > pl.col("idx").shift()).or_(~same).fill_null(True).all().alias("rising"),
    ).row(0)
    return checks[0] == checks[1] and bool(checks[2])


def _l1(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return sum(abs(x - y) for x, y in zip(a, b))


def _delta(a: pl.DataFrame, b: pl.DataFrame, cap: int) -> int:
    """|A Δ B| counting a unit whose row count differs as different; exact below `cap`."""
    if a.height == b.height and a.equals(b):
        return 0
    if a.height <= SMALL and b.height <= SMALL:
        da = dict(zip(a.get_column("idx").to_list(), a.get_column("count").to_list()))
        db = dict(zip(b.get_column("idx").to_list(), b.get_column("count").to_list()))
        d = 0
        for u, c in da.items():
            if db.get(u) != c:
                d += 1
                if d >= cap:
                    return d
        return d + sum(1 for u in db if u not in da)
    joined = a.join(b, on="idx", how="full", coalesce=True, suffix="_b")
    return int(joined.select(pl.col("count").ne_missing(pl.col("count_b")).sum()).item())


def _encode(data: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    data.select(
        pl.col("set_no").cast(pl.UInt32),
        pl.when(pl.col("set_no") == pl.col("set_no").shift()).then(pl.col("idx").diff())
        .otherwise(pl.col("idx")).alias("d"),
        pl.col("count").cast(pl.UInt32),
    ).write_ipc(buf, compression="zstd")
    return buf.getvalue()


def _decode(blob: bytes) -> pl.DataFrame:
    df = pl.read_ipc(io.BytesIO(blob))
    return df.select(
        pl.col("set_no").cast(pl.Int64),
        pl.col("d").cum_sum().over("set_no").alias("idx"),
        pl.col("count").cast(pl.Int64),
    )


def _pack(values: list[int] | tuple[int, ...], fmt: str) -> bytes:
    return struct.pack(f"<{len(values)}{fmt}", *values)


def _unpack(blob: bytes, fmt: str) -> tuple[int, ...]:
    return struct.unpack(f"<{len(blob) // struct.calcsize(fmt)}{fmt}", blob)


def _windows(sizes: list[int], k: int) -> list[tuple[int, int]]:
    """Merged size ranges [s-k+1, s+k-1] around each size."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(sizes)):
        lo, hi = s - k + 1, s + k - 1
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- the store


class HistoryStore:
    """Per (user, dataset) history of automatically released unit sets, in ``state_dir/history.db``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / DB_NAME
        self._lock = threading.Lock()  # the in-memory caches below
        self._blobs: OrderedDict[tuple[str, str], dict[int, pl.DataFrame]] = OrderedDict()
        self._keys: dict[str, tuple[int, pl.DataFrame]] = {}
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One short-lived connection per operation (threads, processes, forks)."""
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ------------------------------------------------------------ the check

    def check_and_record(self, *, user: str, session_id: str, cell: str, cover: Cover,
                         datasets: Mapping[str, DatasetConfig], rows: int) -> Finding | None:
        """Compare `cover` with itself and with `user`'s history; record it when nothing is too close.

        Returns the first problem found (and records nothing), or None once the
        release's new sets are stored.
        """
        raw = self._raw_sets(cover, datasets)
        if not raw:
            return None
        try:
            with self._lock, self._write() as conn:
                scoped = {scope: self._index(conn, scope, spec) for scope, spec in raw.items()}
                keep: dict[str, list[int]] = {}
                for scope, sets in scoped.items():
                    finding, fresh = self._check_scope(conn, user, scope, sets)
                    if finding is not None:
                        return finding
                    keep[scope] = fresh
                rid = "H" + secrets.token_hex(4)
                created = _now()
                for scope, sets in scoped.items():
                    self._insert(conn, rid, scope, user, session_id, cell, created, rows, sets, keep[scope])
        except sqlite3.Error as exc:  # fail closed: nothing is released unchecked or unrecorded
            raise ExecutionError(
                f"the release history could not be checked ({type(exc).__name__}); nothing was released",
                hint="run the cell again; if it keeps failing, tell the data owner",
            ) from None
        return None

    def _raw_sets(self, cover: Cover, datasets: Mapping[str, DatasetConfig]) -> dict[str, _Raw]:
        """Long (set_no, u, count) frames per scope, with labels and the dataset's policy."""
        out: dict[str, _Raw] = {}
        base = 0
        for part in cover.parts:
            if part.rows.len() == 0:
                continue
            for j, unit in enumerate(part.units):
                scope = scope_of(datasets[unit.dataset])
                long, labels, base = _part_sets(part, j, base)
                raw = out.setdefault(scope, _Raw(unit.dataset, unit.k, unit.on_violation))
                raw.k = max(raw.k, unit.k)
                if unit.on_violation == "reject":
                    raw.on_violation = "reject"
                raw.frames.append(long)
                raw.labels.update(labels)
        return out

    def _index(self, conn: sqlite3.Connection, scope: str, raw: _Raw) -> _Sets:
        """Map unit ids to indices, sort, and compute each set's size, prefix and sketch."""
        k = raw.k
        long = pl.concat(raw.frames)
        units = long.get_column("u")
        long = long.with_columns(self._unit_index(conn, scope, units).alias("idx"))
        data = long.select("set_no", "idx", pl.col("count").cast(pl.Int64))
        if not _grouped_and_sorted(data):
            # Usually each set is already contiguous and sorted (`_part_sets`, integer ids);
            # a dictionary index (or a wrapped UInt64) needs sorting again.
            data = data.sort("set_no", "idx")
        meta = data.group_by("set_no", maintain_order=True).agg(
            pl.len().alias("size"), pl.col("idx").head(max(PREFIX, k)).alias("prefix"),
        )
        sk = sketches(data)
        set_nos = meta.get_column("set_no").to_list()
        return _Sets(
            raw.dataset, k, raw.on_violation, data, set_nos, meta.get_column("size").to_list(),
            [raw.labels.get(s, "") for s in set_nos], [tuple(p) for p in meta.get_column("prefix").to_list()],
            [sk[s] for s in set_nos],
        )

    def _unit_index(self, conn: sqlite3.Connection, scope: str, values: pl.Series) -> pl.Series:
        """Stable integer index per unit id: integers are their own; other types go through a dictionary."""
        if values.dtype.is_integer():
            return values.cast(pl.Int64, wrap_numerical=True)
        keys = values.cast(pl.String)
        n_stored = conn.execute("SELECT n FROM unit_keys WHERE scope = ?", (scope,)).fetchone()
        n = int(n_stored["n"]) if n_stored else 0
        cached = self._keys.get(scope)
        if cached is None or cached[0] != n:
            blob = conn.execute("SELECT blob FROM unit_keys WHERE scope = ?", (scope,)).fetchone()
            table = pl.read_ipc(io.BytesIO(blob["blob"])) if blob else \
                pl.DataFrame(schema={"key": pl.String, "idx": pl.Int64})
            cached = (n, table)
        n, table = cached
        missing = keys.unique().to_frame("key").join(table, on="key", how="anti").sort("key")
        if missing.height:
            missing = missing.with_columns((pl.int_range(0, missing.height, dtype=pl.Int64) + n).alias("idx"))
            table = pl.concat([table, missing])
            n += missing.height
            buf = io.BytesIO()
            table.write_ipc(buf, compression="zstd")
            conn.execute("INSERT INTO unit_keys (scope, n, blob) VALUES (?, ?, ?) ON CONFLICT(scope) DO UPDATE"
                         " SET n = excluded.n, blob = excluded.blob", (scope, n, buf.getvalue()))
        self._keys[scope] = (n, table)
        return keys.to_frame("key").join(table, on="key", how="left", maintain_order="left").get_column("idx")

    def _check_scope(self, conn: sqlite3.Connection, user: str, scope: str,
                     sets: _Sets) -> tuple[Finding | None, list[int]]:
        """(finding, positions of the sets not already in the history)."""
        k = sets.k
        n = len(sets.set_nos)
        index: dict[int, list[int]] = {}
        for pos, prefix in enumerate(sets.prefixes):
            for x in prefix[:k]:
                index.setdefault(x, []).append(pos)

        def candidates(prefix: tuple[int, ...], size: int) -> set[int]:
            if size < k or len(prefix) < min(k, size):  # the prefix filter needs k smallest of each side
                return set(range(n))
            found: set[int] = set()
            for x in prefix[:k]:
                found.update(index.get(x, ()))
            return found | {p for p in range(n) if sets.sizes[p] < k}

        dup = [False] * n
        for a in range(n):
            if dup[a]:
                continue
            for b in sorted(candidates(sets.prefixes[a], sets.sizes[a])):
                if b <= a or dup[b] or abs(sets.sizes[a] - sets.sizes[b]) >= k:
                    continue
                if _l1(sets.sketches[a], sets.sketches[b]) >= k:
                    continue
                d = _delta(sets.part(sets.set_nos[a]), sets.part(sets.set_nos[b]), k)
                if d == 0:
                    dup[b] = True
                elif d < k:
                    return Finding(sets.dataset, k, sets.on_violation, None), []
        live = [p for p in range(n) if not dup[p]]
        if not live:
            return None, []
        order = sorted(live, key=lambda p: sets.sizes[p])
        sorted_sizes = [sets.sizes[p] for p in order]
        for lo, hi in _windows([sets.sizes[p] for p in live], k):
            rows = conn.execute(
                "SELECT release_id, set_no, size, prefix, sketch FROM unit_sets"
                " WHERE user = ? AND scope = ? AND size BETWEEN ? AND ?", (user, scope, lo, hi),
            ).fetchall()
            for r in rows:
                size = int(r["size"])
                prefix = _unpack(r["prefix"], "q")
                near = order[bisect.bisect_left(sorted_sizes, size - k + 1):bisect.bisect_right(sorted_sizes, size + k - 1)]
                if not near:
                    continue
                ok = candidates(prefix, size)
                sketch = _unpack(r["sketch"], "I")
                for a in near:
                    if dup[a] or a not in ok or _l1(sets.sketches[a], sketch) >= k:
                        continue
                    other = self._stored(conn, r["release_id"], scope, int(r["set_no"]))
                    d = _delta(sets.part(sets.set_nos[a]), other, k)
                    if d == 0:
                        dup[a] = True
                    elif d < k:
                        return Finding(sets.dataset, k, sets.on_violation, self._info(conn, r["release_id"], scope)), []
        return None, [p for p in range(n) if not dup[p]]

    def _stored(self, conn: sqlite3.Connection, release_id: str, scope: str, set_no: int) -> pl.DataFrame:
        key = (release_id, scope)
        parts = self._blobs.get(key)
        if parts is None:
            row = conn.execute("SELECT blob FROM releases WHERE id = ? AND scope = ?", key).fetchone()
            parts = _split(_decode(row["blob"]))
            self._blobs[key] = parts
            while len(self._blobs) > BLOB_CACHE:
                self._blobs.popitem(last=False)
        else:
            self._blobs.move_to_end(key)
        return parts[set_no]

    def _info(self, conn: sqlite3.Connection, release_id: str, scope: str) -> ReleaseInfo:
        r = conn.execute("SELECT id, dataset, session_id, cell, created, rows FROM releases WHERE id = ? AND scope = ?",
                         (release_id, scope)).fetchone()
        return ReleaseInfo(r["id"], r["dataset"], r["session_id"], r["cell"], r["created"], int(r["rows"]))

    def _insert(self, conn: sqlite3.Connection, rid: str, scope: str, user: str, session_id: str, cell: str,
                created: str, rows: int, sets: _Sets, fresh: list[int]) -> None:
        keep = [sets.set_nos[p] for p in fresh]
        data = sets.data.filter(pl.col("set_no").is_in(keep)) if keep else None
        blob = _encode(data) if data is not None else None
        conn.execute(
            "INSERT INTO releases (id, scope, user, dataset, session_id, cell, created, rows, sets, blob)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rid, scope, user, sets.dataset, session_id, cell, created, rows, len(keep), blob),
        )
        conn.executemany(
            "INSERT INTO unit_sets (release_id, scope, user, set_no, size, label, prefix, sketch)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(rid, scope, user, sets.set_nos[p], sets.sizes[p], sets.labels[p], _pack(sets.prefixes[p], "q"),
              _pack(sets.sketches[p], "I")) for p in fresh],
        )

    # ------------------------------------------------------------ for the owner

    def releases(self, *, user: str, scope: str, limit: int = 5) -> tuple[int, list[ReleaseInfo]]:
        """How many automatic releases `user` had on this dataset, and the most recent `limit`."""
        with self._connect() as conn:
            total = conn.execute("SELECT COUNT(*) AS n FROM releases WHERE user = ? AND scope = ?",
                                 (user, scope)).fetchone()["n"]
            rows = conn.execute(
                "SELECT id, dataset, session_id, cell, created, rows FROM releases WHERE user = ? AND scope = ?"
                " ORDER BY created DESC, rowid DESC LIMIT ?", (user, scope, limit),
            ).fetchall()
        return int(total), [ReleaseInfo(r["id"], r["dataset"], r["session_id"], r["cell"], r["created"],
                                        int(r["rows"])) for r in rows]


@functools.lru_cache(maxsize=16)
def open_store(state_dir: Path) -> HistoryStore:
    """One store per state folder and process: it keeps decoded sets and unit dictionaries in memory."""
    return HistoryStore(state_dir)


__all__ = ["Cover", "CoverPart", "Finding", "HistoryStore", "ReleaseInfo", "open_store", "scope_of"]
