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
A result sent to review is recorded when the request is made, without being
compared (`HistoryStore.record`): once approved it is released like any
other, and the owner who approves it cannot see the later results.

Units are stable integer indices per dataset: an integer `privacy_unit` is
its own index (nothing to keep in step when the data changes); any other type
gets an append-only dictionary in the history database, so when the data
changes, individuals keep their index and new ones get new indices.

Cost, all exact (no false negatives). The query itself only counts rows per
set (`frames._cover_counts`), which bounds each set's size: exactly with one
row per individual, else between rows / M and rows. Since |A Δ B| >= ||A| -
|B||, a set needs its members listed only when its size range comes within
k-1 of another set's, and two groups of one aggregation never need it when
no individual can be in both (`frames.CoverSpec.disjoint`). A re-run of a
deterministic query over unchanged files has sets identical to the recorded
ones (same `plan_id`, same key values, same file versions), so it needs no
comparison at all. Sets that must be compared are listed at once by a second
query over the same input (only the columns it needs); then, as before,
two sets with |A Δ B| < k share one of their k smallest elements (prefix
filter) and the L1 distance of 64-bucket sketches bounds |A Δ B|; only then
are the sets compared.

Every released set is still recorded exactly: its members are listed by
that same second query, run in the background once the kernel has been idle
for `IDLE_S` (or at once when a check needs them, and before the session
closes), in hash partitions sized to an eighth of the memory limit. Until then the set's
row holds its size range and the state ``pending``. If its files change
before it is written, or the kernel stops first, the state becomes ``lost``:
a later set within k-1 of its size range is then held back, because it
cannot be compared (fail closed; `Finding.unrecorded`).

Storage: ``state_dir/history.db`` (SQLite, WAL, one short-lived connection per
operation, like the review store, but its own file so a long check never
blocks the owner's review commands). Per (release, dataset) rows of
zstd-compressed Arrow IPC of (set, delta-coded sorted index, count) hold the
release's new sets; per set one row holds its size (range), its `PREFIX`
smallest indices and a 64-bucket count sketch, indexed by (user, scope,
size). Identical sets are stored once.

The check and the write happen in one ``BEGIN IMMEDIATE`` transaction, so two
kernels of the same user cannot both pass with a dangerous pair; members are
listed before it (a second pass re-checks inside it that nothing new needs
listing), so a long listing never blocks other kernels' checks.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import hashlib
import io
import math
import os
import secrets
import sqlite3
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from .. import db
from ..config import DatasetConfig
from ..errors import ExecutionError
from ..plan import Unit, Violation
from .members import Mismatch as _Mismatch
from .members import PartUnit as _PartUnit
from .members import bit as _bit
from .members import exact_sizes as _exact_sizes
from .members import list_members as _list_members
from .members import released_conditions as _released_conditions

DB_NAME = "history.db"
PREFIX = 32  # indices kept per set for the prefix filter (covers any k <= PREFIX; larger k skips the filter)
BUCKETS = 64  # sketch: units per bucket (`bucket`)
SMALL = 4_096  # sets up to this size are compared in Python, larger ones with a polars join
BLOB_CACHE = 64  # decoded (release, scope) blobs kept per process
IDLE_S = 0.5  # background recording starts once no cell has run for this long
WAIT_OTHERS_S = 30.0  # how long a check waits for another kernel to finish recording a set it needs

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
CREATE TABLE IF NOT EXISTS set_blobs (
    release_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    piece INTEGER NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (release_id, scope, piece)
);
"""
# Columns added to unit_sets for size ranges and background recording (older files get them on open).
_SET_COLUMNS = {"lo": "INTEGER", "state": "TEXT NOT NULL DEFAULT 'ok'", "ident": "TEXT", "owner": "TEXT",
                "rows": "INTEGER", "m": "INTEGER"}


# ---------------------------------------------------------------- what release hands over


@dataclass(frozen=True)
class CoverPart:
    """The released (or computed-on) rows of one aggregation over individuals.

    `rows` is the aggregation's hidden cover column for those rows: a struct
    with the group key values (``k<i>``), per unit j of `units` the rows with
    an id (``n<j>``) and how many of them condition i holds for (``t<j>_<i>``),
    and which conditions belong to a value released on that row (``m<w>``).
    `spec` (a `frames.CoverSpec`) lists the individuals behind those counts.
    """

    units: tuple[Unit, ...]
    rows: pl.Series
    label: str = ""
    spec: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Cover:
    """Everything a result covered, as `release.release_aggregate` found it."""

    parts: tuple[CoverPart, ...]


@dataclass(frozen=True)
class ReleaseInfo:
    """One earlier release, as the owner and the reasons name it (`request`: the review request it
    was asked in, None for an automatic release)."""

    id: str
    dataset: str
    session_id: str
    cell: str
    created: str
    rows: int
    request: str | None = None

    def what(self) -> str:
        """How the user knows it: "your earlier release H…" or "your review request R… (history H…)"."""
        return f"your review request {self.request} (history {self.id})" if self.request else \
            f"your earlier release {self.id}"


@dataclass(frozen=True)
class Finding:
    """Why a result is held back: which dataset, and which earlier release (None: this result itself).

    `unrecorded`: the earlier release's set could not be recorded exactly (its
    file changed, or its kernel stopped first), so this result cannot be
    compared with it and is held back rather than guessed about.
    """

    dataset: str
    k: int
    on_violation: str
    earlier: ReleaseInfo | None
    unrecorded: bool = False

    def violation(self) -> Violation:
        if self.unrecorded:
            e = self.earlier
            which = f"{e.what()} (cell `{_short(e.cell)}`)" if e else "an earlier release"
            return Violation(
                "differencing", self.dataset,
                f"this result covers a set of {self.dataset} individuals close in size to one of {which}, whose "
                "exact record could not be written (its data file changed, or its kernel stopped first), so the "
                "two cannot be compared",
                "ask the owner to review it",
            )
        # Never the size of the difference: "1" would tell the analyst their
        # extra condition matched exactly one person.
        if self.earlier is None:
            what = "two rows or values of this result cover"
        else:
            e = self.earlier
            what = (f"this result and {e.what()} (cell `{_short(e.cell)}` at "
                    f"{e.created[:19].replace('T', ' ')}Z, session {e.session_id}) cover")
        return Violation(
            "differencing", self.dataset,
            f"{what} sets of {self.dataset} individuals that differ by fewer than {self.k}: subtracting one "
            f"from the other would reveal values of those few individuals",
            f"make the selections differ by at least {self.k} individuals (or not at all), or ask the owner",
        )


def _one_row_per_group(cover: Cover) -> Cover:
    """`cover` with one row for each part of an aggregation without keys, which covers one group however
    many rows it shows (`select(pl.col("x").mode())`): its listing finds that one group. A condition
    counts as released where any of the rows released it (more sets: fail closed)."""
    return Cover(tuple(_one_row(part) for part in cover.parts))


def _one_row(part: CoverPart) -> CoverPart:
    if part.rows.len() <= 1 or any(f.startswith("k") and f[1:].isdigit() for f in part.rows.struct.fields):
        return part  # one row, or one per group
    rows = part.rows.struct.unnest()
    words = [c for c in rows.columns if c.startswith("m") and c[1:].isdigit()]
    released = rows.select([pl.col(w).fill_null(0).bitwise_or().cast(rows.schema[w]) for w in words])
    one = rows.head(1).drop(words).hstack(released).select(rows.columns)
    return dataclasses.replace(part, rows=one.to_struct(part.rows.name))


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


# ---------------------------------------------------------------- when the kernel is busy

_activity = threading.Condition()
_busy = 0
_last_activity = 0.0


@contextmanager
def foreground() -> Iterator[None]:
    """Mark a cell as running: background recording waits until the kernel has been idle `IDLE_S`."""
    global _busy, _last_activity
    with _activity:
        _busy += 1
    try:
        yield
    finally:
        with _activity:
            _busy -= 1
            _last_activity = time.monotonic()
            _activity.notify_all()


def idle_for() -> float:
    """0 when background work may start now, else how long to wait before asking again."""
    return _idle_enough()


def _idle_enough() -> float:
    """0 when background work may start now, else how long to wait before asking again."""
    with _activity:
        if _busy:
            return IDLE_S
        return max(0.0, _last_activity + IDLE_S - time.monotonic())


# ---------------------------------------------------------------- sets of one result


@dataclass
class _Desc:
    """One set a result covers, before its members are known: where it comes from and its size range."""

    part: int
    j: int
    row: int
    side: int  # 0: the group; 2i+1: where condition i holds; 2i+2: where it does not
    lo: int
    hi: int
    ident: str | None
    set_no: int
    label: str
    rows: int = 0  # rows with an id (the sum of the members' counts)
    m: int | None = None  # at most this many rows per individual (None: unknown)
    dup: bool = False
    replaces: tuple[str, int] | None = None  # a lost record of this very set, rewritten by this one


@dataclass
class _Scope:
    dataset: str
    k: int
    on_violation: str
    descs: list[_Desc] = field(default_factory=list)
    units: list[_PartUnit] = field(default_factory=list)
    specs: dict[tuple[int, int], Any] = field(default_factory=dict)  # (part, j) -> frames.CoverSpec
    next_set: int = 0

    def unit(self, part: int, j: int) -> _PartUnit:
        return next(u for u in self.units if u.part == part and u.j == j)


@dataclass
class _Stored:
    release_id: str
    set_no: int
    lo: int
    hi: int
    state: str
    owner: str | None
    rows: int | None = None
    m: int | None = None


def _bounds(rows: int, rows_max: int | None) -> tuple[int, int]:
    """Individuals behind `rows` rows when one individual has at most `rows_max` of them."""
    if rows <= 0:
        return 0, 0
    return (math.ceil(rows / rows_max) if rows_max else 1), rows


def _hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _digest(cover: Cover, datasets: Mapping[str, DatasetConfig]) -> str | None:
    """Identity of every set a result covers, when each part's plan is deterministic (`plan_id`): the
    plans, the file versions, and the per-row counts and key values that `_describe` reads."""
    items = []
    for part in cover.parts:
        spec = part.spec
        if spec is None or spec.plan_id is None:
            return None
        items.append((spec.plan_id, _versions(spec, datasets), spec.mask_ids, part.label,
                      [(u.dataset, u.rows_max) for u in part.units], _sorted_rows(part.rows)))
    return hashlib.sha256(repr(items).encode()).hexdigest()


def _sorted_rows(rows: pl.Series) -> list[Any]:
    """A cover's per-group structs, every value, in an order that does not depend on the groups' order
    (group_by returns them in any; a set's identity is its key values, not its row).

    Sorted by polars column by column: about 5x faster than sorting each row's repr at 1000 groups.
    """
    try:
        table = rows.struct.unnest().sort(pl.all())
    except Exception:  # noqa: BLE001 - a field polars cannot sort by: each row's repr, sorted
        return sorted(map(repr, rows.to_list()))
    return [rows.struct.fields, *(c.to_list() for c in table.get_columns())]


def _versions(spec: Any, datasets: Mapping[str, DatasetConfig]) -> str:
    from ..sources import version

    return repr(sorted((name, version(datasets[name])) for name in spec.datasets if name in datasets))


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


def _sort_sets(data: pl.DataFrame) -> pl.DataFrame:
    """By set, then index: two stable one-key sorts (a two-key sort is ~5x slower), the first skipped
    when the indices already rise (members listed in file order of a sorted unit column)."""
    if not data.select((pl.col("idx").diff() >= 0).all()).item():
        data = data.sort("idx")
    return data.sort("set_no", maintain_order=True)


def _split(data: pl.DataFrame) -> dict[int, pl.DataFrame]:
    """set_no -> its (idx, count) rows, sorted by idx."""
    parts = _sort_sets(data).partition_by("set_no", as_dict=True, include_key=False, maintain_order=True)
    return {int(key[0]): df for key, df in parts.items()}


def _pack(values: list[int] | tuple[int, ...], fmt: str) -> bytes:
    return struct.pack(f"<{len(values)}{fmt}", *values)


def _unpack(blob: bytes, fmt: str) -> tuple[int, ...]:
    return struct.unpack(f"<{len(blob) // struct.calcsize(fmt)}{fmt}", blob)


def _windows(ranges: list[tuple[int, int]], k: int) -> list[tuple[int, int]]:
    """Merged size ranges [lo-k+1, hi+k-1] around each (lo, hi)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(set(ranges)):
        a, b = lo - k + 1, hi + k - 1
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _near(a_lo: int, a_hi: int, b_lo: int, b_hi: int, k: int) -> bool:
    """Whether two sets with these size ranges could differ by fewer than k (|A Δ B| >= ||A| - |B||)."""
    return b_lo - a_hi < k and a_lo - b_hi < k


def _close(a: _Desc, b: _Desc | _Stored, k: int) -> bool:
    """`_near`, and the row counts allow it too: an individual's count differs between two sets by at
    most M (the larger bound of the two), so |A Δ B| >= |rows(A) - rows(B)| / M."""
    if not _near(a.lo, a.hi, b.lo, b.hi, k):
        return False
    if a.m and b.m and b.rows is not None and abs(a.rows - b.rows) >= k * max(a.m, b.m):
        return False
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class _Index:
    """Members of some sets with their per-set facts (size, k smallest indices, sketch)."""

    data: pl.DataFrame  # set_no, idx, count
    sizes: dict[int, int]
    prefixes: dict[int, tuple[int, ...]]
    sketches: dict[int, tuple[int, ...]]
    _parts: dict[int, pl.DataFrame] | None = None

    def part(self, set_no: int) -> pl.DataFrame:
        if self._parts is None:
            self._parts = _split(self.data)
        return self._parts[set_no]


def _facts(data: pl.DataFrame, k: int) -> tuple[dict[int, int], dict[int, tuple[int, ...]], dict[int, tuple[int, ...]]]:
    meta = data.group_by("set_no").agg(pl.len().alias("size"), pl.col("idx").bottom_k(max(PREFIX, k)).sort())
    sizes = dict(zip(meta.get_column("set_no").to_list(), meta.get_column("size").to_list()))
    prefixes = {s: tuple(p) for s, p in zip(meta.get_column("set_no").to_list(), meta.get_column("idx").to_list())}
    return sizes, prefixes, sketches(data)


def _pair_differs(a: tuple[int, tuple, tuple], b: tuple[int, tuple, tuple], k: int) -> bool:
    """True when sizes, prefixes or sketches prove |A Δ B| >= k (no need to compare members)."""
    (sa, pa, ka), (sb, pb, kb) = a, b
    if abs(sa - sb) >= k:
        return True
    if ka and kb and _l1(ka, kb) >= k:
        return True
    if sa >= k and sb >= k and len(pa) >= k and len(pb) >= k and not set(pa[:k]) & set(pb[:k]):
        return True
    return False


# ---------------------------------------------------------------- background recording


@dataclass
class _Job:
    """Write the members of a release's pending sets in one scope."""

    release_id: str
    scope: str
    units: list[tuple[CoverPart, _PartUnit]]
    set_nos: frozenset[int]
    versions: dict[int, str]  # part index -> file versions when released
    datasets: Mapping[str, DatasetConfig]
    memory_mb: int
    k: int
    store: HistoryStore
    state: str = "queued"  # queued | running | done
    sized: bool = False  # exact sizes already written (`HistoryStore._refine_stored`)


# One queue per process (every store's jobs): a check waiting for a set runs its job itself.
_jobs: list[_Job] = []
_jobs_cv = threading.Condition()
_thread: threading.Thread | None = None


def _background() -> None:
    """Write pending sets once the kernel is idle, one job at a time."""
    while True:
        with _jobs_cv:
            while not any(j.state == "queued" for j in _jobs):
                _jobs_cv.wait()
        wait = _idle_enough()
        if wait > 0:
            with _activity:
                _activity.wait(timeout=wait)
            continue
        with _jobs_cv:
            job = next((j for j in _jobs if j.state == "queued"), None)
            if job is None:
                continue
            job.state = "running"
        job.store._run(job)


# ---------------------------------------------------------------- the store


class HistoryStore:
    """Per (user, dataset) history of released unit sets (automatic, or asked for review), in
    ``state_dir/history.db``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / DB_NAME
        self._lock = threading.Lock()  # the in-memory caches below
        self._blobs: OrderedDict[tuple[str, str], dict[int, pl.DataFrame]] = OrderedDict()
        self._keys: dict[str, tuple[int, pl.DataFrame]] = {}
        self._token = f"{os.getpid()}:{secrets.token_hex(6)}"
        self._local = threading.local()
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            have = {r["name"] for r in conn.execute("PRAGMA table_info(unit_sets)")}
            for name, decl in _SET_COLUMNS.items():
                if name not in have:
                    conn.execute(f"ALTER TABLE unit_sets ADD COLUMN {name} {decl}")
            have = {r["name"] for r in conn.execute("PRAGMA table_info(releases)")}
            if "digest" not in have:
                conn.execute("ALTER TABLE releases ADD COLUMN digest TEXT")
            if "request" not in have:  # the review request whose result this is (NULL: an automatic release)
                conn.execute("ALTER TABLE releases ADD COLUMN request TEXT")
            conn.execute("CREATE INDEX IF NOT EXISTS unit_sets_ident ON unit_sets (user, scope, ident)")
            conn.execute("CREATE INDEX IF NOT EXISTS releases_digest ON releases (user, digest)")
            # Lost and pending sets are few and looked up on every re-run and by every recorder; without
            # these the lookups read every set a user ever released (0.5 ms per 1000 sets, per cell).
            conn.execute("CREATE INDEX IF NOT EXISTS unit_sets_lost ON unit_sets (user, scope) WHERE state = 'lost'")
            conn.execute("CREATE INDEX IF NOT EXISTS unit_sets_pending ON unit_sets (state) WHERE state = 'pending'")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection (one per thread and process: opening one per operation costs
        about a millisecond, a WAL checkpoint when it closes, and this runs on every release)."""
        key = (os.getpid(), threading.get_ident())
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "key", None) != key:
            conn = db.connect(self.path, named_rows=True)
            self._local.conn, self._local.key = conn, key
        yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn, db.transaction(conn):
            yield conn

    # ------------------------------------------------------------ the check

    def check_and_record(self, *, user: str, session_id: str, cell: str, cover: Cover,
                         datasets: Mapping[str, DatasetConfig], rows: int, memory_mb: int = 1024) -> Finding | None:
        """Compare `cover` with itself and with `user`'s history; record it when nothing is too close.

        Returns the first problem found (and records nothing), or None once the
        release and its sets are recorded (members now, or pending: see the
        module docstring).
        """
        if not any(part.rows.len() for part in cover.parts):
            return None
        cover = _one_row_per_group(cover)
        digest = _digest(cover, datasets)
        try:
            if digest is not None:  # a re-run: the very sets of an earlier release, nothing to compare
                with self._lock, self._write() as conn:
                    if self._rerun(conn, user, session_id, cell, rows, cover, datasets, digest):
                        return None
            scopes = self._describe(cover, datasets)
            with self._lock, self._write() as conn:  # the usual case: sizes settle everything
                plan = self._plan(conn, user, scopes)
                if isinstance(plan, Finding):
                    return plan
                if not any(inner or outer for inner, outer in plan.values()):
                    jobs = self._insert(conn, "H" + secrets.token_hex(4), user, session_id, cell, _now(), rows,
                                        scopes, {}, {}, cover, datasets, memory_mb, digest)
                    done = True
                else:
                    done = False
            if done:
                self._enqueue(jobs)
                return None
            listed: dict[tuple[int, int], pl.DataFrame] = {}
            sized: set[tuple[int, int]] = set()
            for _attempt in range(6):
                with self._connect() as conn:
                    plan = self._plan(conn, user, scopes)
                if isinstance(plan, Finding):
                    return plan
                if self._refine(plan, cover, scopes, sized, memory_mb):
                    continue  # exact sizes replaced ranges: the pairs may be gone
                self._prepare(plan, cover, scopes, listed, memory_mb)
                with self._lock, self._write() as conn:
                    plan = self._plan(conn, user, scopes)
                    if isinstance(plan, Finding):
                        return plan
                    if not self._ready(conn, plan, listed):
                        continue
                    finding, indexes = self._compare(conn, user, scopes, plan, listed)
                    if finding is not None:
                        return finding
                    rid = "H" + secrets.token_hex(4)
                    jobs = self._insert(conn, rid, user, session_id, cell, _now(), rows, scopes, listed, indexes,
                                        cover, datasets, memory_mb, digest)
                self._enqueue(jobs)
                return None
        except sqlite3.Error as exc:  # fail closed: nothing is released unchecked or unrecorded
            raise ExecutionError(
                f"the release history could not be checked ({type(exc).__name__}); nothing was released",
                hint="run the cell again; if it keeps failing, tell the data owner",
            ) from None
        first = next(iter(scopes.values()))
        return Finding(first.dataset, first.k, first.on_violation, None, unrecorded=True)

    def record(self, *, user: str, session_id: str, cell: str, cover: Cover, datasets: Mapping[str, DatasetConfig],
               rows: int, request: str, memory_mb: int = 1024) -> str | None:
        """Record a review request's result as if released, without comparing it: its history id (None:
        it covers no one).

        Why at request time, whatever the owner decides: an approved result
        is released as surely as an automatic one, and a later automatic
        result differing from it by one person would reveal that person, which
        the owner who approved the first never saw. Its sets can only be
        listed while this kernel runs over the same file versions (as any
        release's), and the owner may decide days later. A request still
        pending counts too (it may be approved), and a rejected or cancelled
        one stays (fail closed: later releases may share its sets).
        """
        if not any(part.rows.len() for part in cover.parts):
            return None
        cover = _one_row_per_group(cover)
        scopes = self._describe(cover, datasets)
        rid = "H" + secrets.token_hex(4)
        try:
            with self._lock, self._write() as conn:
                for scope, sc in scopes.items():
                    self._match_idents(conn, user, scope, sc)
                jobs = self._insert(conn, rid, user, session_id, cell, _now(), rows, scopes, {}, {}, cover, datasets,
                                    memory_mb, request=request)
        except sqlite3.Error as exc:  # the caller withdraws the request: nothing is reviewed unrecorded
            raise ExecutionError(
                f"the release history could not be written ({type(exc).__name__}); the request was withdrawn",
                hint="run the cell again; if it keeps failing, tell the data owner",
            ) from None
        self._enqueue(jobs)
        return rid

    def _rerun(self, conn: sqlite3.Connection, user: str, session_id: str, cell: str, rows: int, cover: Cover,
               datasets: Mapping[str, DatasetConfig], digest: str) -> bool:
        """Record a re-run (same `_digest` as an earlier release of this user) without any comparison.

        Its sets are exactly that release's, which were compared with
        everything before them, and everything after them was compared with
        them. Not taken while any set of these datasets is lost: the full path
        then records the sets again in their place.
        """
        scopes: dict[str, str] = {}
        for part in cover.parts:
            for u in part.units:
                scopes.setdefault(scope_of(datasets[u.dataset]), u.dataset)
        if conn.execute("SELECT 1 FROM releases WHERE user = ? AND digest = ? LIMIT 1", (user, digest)).fetchone() \
                is None:
            return False
        marks = ",".join("?" * len(scopes))
        if conn.execute(f"SELECT 1 FROM unit_sets WHERE user = ? AND scope IN ({marks}) AND state = 'lost' LIMIT 1",
                        (user, *scopes)).fetchone() is not None:
            return False
        rid, created = "H" + secrets.token_hex(4), _now()
        conn.executemany(
            "INSERT INTO releases (id, scope, user, dataset, session_id, cell, created, rows, sets, blob, digest)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, ?)",
            [(rid, scope, user, ds, session_id, cell, created, rows, digest) for scope, ds in scopes.items()],
        )
        return True

    def _describe(self, cover: Cover, datasets: Mapping[str, DatasetConfig]) -> dict[str, _Scope]:
        """Every set the result covers, with its size range and (deterministic plans) its identity."""
        out: dict[str, _Scope] = {}
        for pi, part in enumerate(cover.parts):
            if part.rows.len() == 0:
                continue
            rows = part.rows.struct.unnest()
            nbits = _released_conditions(rows)
            stride = 1 + 2 * nbits
            spec = part.spec
            keys = [c for c in rows.columns if c.startswith("k") and c[1:].isdigit()]
            keyvals = [repr(r) for r in rows.select(keys).iter_rows()] if keys else ["()"] * rows.height
            released = [[False] * nbits for _ in range(rows.height)]
            for i in range(nbits):
                for r, on in enumerate(rows.select(_bit("m", i)).to_series().to_list()):
                    released[r][i] = bool(on)
            head = f"{part.label}, " if part.label else ""
            versions = _versions(spec, datasets) if spec is not None and spec.plan_id else ""
            for j, unit in enumerate(part.units):
                scope = scope_of(datasets[unit.dataset])
                sc = out.setdefault(scope, _Scope(unit.dataset, unit.k, unit.on_violation))
                sc.k = max(sc.k, unit.k)
                if unit.on_violation == "reject":
                    sc.on_violation = "reject"
                base = sc.next_set
                sc.next_set += stride * rows.height
                sc.units.append(_PartUnit(pi, j, base, stride, nbits))
                sc.specs[(pi, j)] = spec
                n = rows.get_column(f"n{j}").to_list()
                t = [rows.get_column(f"t{j}_{i}").to_list() for i in range(nbits)]
                ident = _hash(spec.plan_id, versions, str(j)) if versions else None
                for r in range(rows.height):
                    sets = [(0, n[r], "", "g")]
                    for i in range(nbits):
                        if released[r][i]:
                            mid = spec.mask_ids[i] if spec is not None else str(i)
                            sets.append((2 * i + 1, t[i][r], f", where condition {i + 1} holds", f"c{mid}|1"))
                            sets.append((2 * i + 2, n[r] - t[i][r], f", where condition {i + 1} does not hold",
                                         f"c{mid}|2"))
                    for side, count, what, kind in sets:
                        if count <= 0:
                            continue
                        lo, hi = _bounds(count, unit.rows_max)
                        sc.descs.append(_Desc(pi, j, r, side, lo, hi,
                                              _hash(ident, keyvals[r], kind) if ident else None,
                                              base + r * stride + side, f"{head}row {r + 1}{what}", count,
                                              unit.rows_max))
        return out

    def _plan(self, conn: sqlite3.Connection, user: str,
              scopes: dict[str, _Scope]) -> dict[str, tuple[list[tuple[_Desc, _Desc]], list[tuple[_Desc, _Stored]]]] | Finding:
        """Per scope: the pairs of sets (within the result, and with stored sets) that sizes cannot tell apart.

        Also marks re-recorded sets as duplicates (identity match), and answers
        at once where sizes alone prove two sets of one aggregation too close.
        """
        out = {}
        for scope, sc in scopes.items():
            for d in sc.descs:
                d.dup, d.replaces = False, None
            self._match_idents(conn, user, scope, sc)
            live = [d for d in sc.descs if not d.dup]
            inner, finding = self._inner_pairs(sc, live)
            if finding is not None:
                return finding
            outer = self._stored_pairs(conn, user, scope, sc, live)
            for d, s in outer:
                if s.state == "lost" or (s.state == "pending" and not self._alive(s.owner)):
                    return Finding(sc.dataset, sc.k, sc.on_violation, self._info(conn, s.release_id, scope),
                                   unrecorded=True)
            out[scope] = (inner, outer)
        return out

    def _match_idents(self, conn: sqlite3.Connection, user: str, scope: str, sc: _Scope) -> None:
        """Sets recorded before with the same identity: a duplicate of an automatic release's set
        (compared with everything before it, and shown), or the replacement of a lost one.

        A review request's set is neither: it was recorded without being
        compared (it may be held for being too close to another), so the same
        set again is compared as a new one; once lost, it is replaced like any.
        """
        idents = [d.ident for d in sc.descs if d.ident]
        found: dict[str, tuple[str, str, int]] = {}
        for i in range(0, len(idents), 500):
            chunk = idents[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for r in conn.execute(f"SELECT s.ident, s.state, s.release_id, s.set_no, r.request IS NULL AS auto"
                                  f" FROM unit_sets s JOIN releases r ON r.id = s.release_id AND r.scope = s.scope"
                                  f" WHERE s.user = ? AND s.scope = ? AND s.ident IN ({marks})", (user, scope, *chunk)):
                if r["state"] == "lost":
                    found.setdefault(r["ident"], ("lost", r["release_id"], int(r["set_no"])))
                elif r["auto"]:
                    found[r["ident"]] = ("dup", r["release_id"], int(r["set_no"]))
        for d in sc.descs:
            hit = found.get(d.ident or "")
            if hit is None:
                continue
            if hit[0] == "lost":
                d.replaces = (hit[1], hit[2])  # the same set again: record it, and drop the lost row
            else:
                d.dup = True

    def _inner_pairs(self, sc: _Scope, live: list[_Desc]) -> tuple[list[tuple[_Desc, _Desc]], Finding | None]:
        """Pairs of this result's sets whose sizes cannot tell them apart, minus those that the
        structure of one aggregation settles (`frames.CoverSpec.disjoint` / `split`).

        Why grouped: a grouped result has one set per group, often thousands of
        similar size; groups that cannot share an individual are never paired,
        so only sets of one row, and of different aggregations, are swept.
        """
        k = sc.k
        pairs: list[tuple[_Desc, _Desc]] = []
        by_unit: dict[tuple[int, int], list[_Desc]] = {}
        for d in live:
            by_unit.setdefault((d.part, d.j), []).append(d)
        candidates: list[tuple[_Desc, _Desc]] = []
        for key, group in by_unit.items():
            spec = sc.specs.get(key)
            if spec is not None and spec.disjoint[key[1]] and 2 * min(d.lo for d in group) >= k:
                by_row: dict[int, list[_Desc]] = {}
                for d in group:
                    by_row.setdefault(d.row, []).append(d)
                for same in by_row.values():
                    candidates += [(a, b) for i, a in enumerate(same) for b in same[i + 1:]]
            else:
                candidates += _sweep(group, group, k)
        keys = sorted(by_unit)
        for i, a_key in enumerate(keys):
            for b_key in keys[i + 1:]:
                candidates += _sweep(by_unit[a_key], by_unit[b_key], k)
        for a, b in candidates:
            if not _close(a, b, k):
                continue
            settled = self._settled(sc, a, b)
            if settled is True:
                continue
            if settled is False:
                return [], Finding(sc.dataset, k, sc.on_violation, None)
            pairs.append((a, b))
        return pairs, None

    @staticmethod
    def _settled(sc: _Scope, a: _Desc, b: _Desc) -> bool | None:
        """True: provably |A Δ B| >= k or A = B (then b is marked a duplicate); False: provably
        0 < |A Δ B| < k; None: only comparing members can tell."""
        if a.part != b.part or a.j != b.j:
            return None
        spec = sc.specs.get((a.part, a.j))
        if spec is None:
            return None
        k = sc.k
        if a.row != b.row:
            # different groups of one aggregation: disjoint when no individual can be in both
            return True if spec.disjoint[a.j] and a.lo + b.lo >= k else None
        g, s = (a, b) if a.side == 0 else (b, a) if b.side == 0 else (None, None)
        if g is not None and s is not None:
            i = (s.side - 1) // 2
            if not spec.split[a.j][i]:
                return None
            # each individual is on one side only: A Δ B is exactly the other side's individuals
            other = next((d for d in sc.descs if d.part == a.part and d.j == a.j and d.row == a.row
                          and d.side == (s.side + 1 if s.side % 2 else s.side - 1)), None)
            lo, hi = (other.lo, other.hi) if other is not None else (0, 0)
            if hi == 0:
                s.dup = True  # that side is the whole group
                return True
            if lo >= k:
                return True
            if hi < k:
                return False
            return None
        if (a.side - 1) // 2 == (b.side - 1) // 2 and spec.split[a.j][(a.side - 1) // 2]:
            return True if a.lo + b.lo >= k else None  # the two sides of one condition: disjoint
        return None

    def _stored_pairs(self, conn: sqlite3.Connection, user: str, scope: str, sc: _Scope,
                      live: list[_Desc]) -> list[tuple[_Desc, _Stored]]:
        k = sc.k
        if not live:
            return []
        order = sorted(live, key=lambda d: d.lo)
        los = [d.lo for d in order]
        width = max(d.hi - d.lo for d in order)
        replaced = {d.replaces for d in live if d.replaces}
        pairs: list[tuple[_Desc, _Stored]] = []
        for lo, hi in _windows([(d.lo, d.hi) for d in live], k):
            rows = conn.execute(
                "SELECT release_id, set_no, size, COALESCE(lo, size) AS lo, state, owner, rows, m FROM unit_sets"
                " WHERE user = ? AND scope = ? AND size >= ? AND COALESCE(lo, size) <= ?", (user, scope, lo, hi),
            ).fetchall()
            for r in rows:
                s = _Stored(r["release_id"], int(r["set_no"]), int(r["lo"]), int(r["size"]), r["state"], r["owner"],
                            r["rows"], r["m"])
                if (s.release_id, s.set_no) in replaced:
                    continue
                start = bisect.bisect_left(los, s.lo - width - k + 1)
                for d in order[start:bisect.bisect_right(los, s.hi + k - 1)]:
                    if _close(d, s, k) and d.replaces != (s.release_id, s.set_no):
                        pairs.append((d, s))
        return pairs

    def _alive(self, owner: str | None) -> bool:
        """Whether the process recording a pending set may still write it."""
        if not owner:
            return False
        if owner == self._token:
            return True
        try:
            os.kill(int(owner.split(":")[0]), 0)
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            return True
        return True

    def _prepare(self, plan: dict, cover: Cover, scopes: dict[str, _Scope], listed: dict[tuple[int, int], pl.DataFrame],
                 memory_mb: int) -> None:
        """List the members of this result's sets that must be compared, and make sure the stored
        ones they are compared with are written (running this process's pending jobs now)."""
        need: set[tuple[int, int]] = set()
        stored: set[tuple[str, str]] = set()
        for scope, (inner, outer) in plan.items():
            for a, b in inner:
                need |= {(a.part, a.j), (b.part, b.j)}
            for d, s in outer:
                need.add((d.part, d.j))
                if s.state == "pending":
                    stored.add((s.release_id, scope))
        for key in sorted(need - set(listed)):
            pu = next(u for sc in scopes.values() for u in sc.units if (u.part, u.j) == key)
            part = cover.parts[key[0]]
            try:
                got = _list_members(part, pu, memory_mb)
            except _Mismatch:
                got = None
            if got is None:
                raise ExecutionError("the individuals behind this result could not be listed; nothing was released",
                                     hint="run the cell again; if it keeps failing, tell the data owner")
            listed[key] = got
        for release_id, scope in sorted(stored):
            self._await(release_id, scope)

    def _refine(self, plan: dict, cover: Cover, scopes: dict[str, _Scope], sized: set[tuple[int, int]],
                memory_mb: int = 1024) -> bool:
        """Exact sizes for the sets in a pair that only have a size range (several rows per individual):
        one distinct count per group, far cheaper than listing members. True when some changed."""
        todo: set[tuple[int, int]] = set()
        stored: set[tuple[str, str]] = set()
        for scope, (inner, outer) in plan.items():
            for d in [x for pair in inner for x in pair] + [d for d, _ in outer]:
                if d.lo != d.hi and (d.part, d.j) not in sized:
                    todo.add((d.part, d.j))
            stored |= {(s.release_id, scope) for _, s in outer if s.state == "pending" and s.lo != s.hi}
        changed = any(self._refine_stored(rid, scope) for rid, scope in sorted(stored))
        for key in sorted(todo):
            sc = next(sc for sc in scopes.values() if any((u.part, u.j) == key for u in sc.units))
            pu = sc.unit(*key)
            sizes = _exact_sizes(cover.parts[key[0]], pu, memory_mb)
            for d in sc.descs:
                if (d.part, d.j) == key:
                    size = sizes.get((d.row, d.side))
                    if size is None or not d.lo <= size <= d.hi:
                        raise ExecutionError("the individuals behind this result could not be counted; nothing "
                                             "was released", hint="run the cell again; if it keeps failing, tell "
                                             "the data owner")
                    d.lo = d.hi = size
            sized.add(key)
        return bool(todo) or changed

    def _refine_stored(self, release_id: str, scope: str) -> bool:
        """Exact sizes for a pending set of this process that only has a size range (see `_refine`)."""
        with _jobs_cv:
            job = next((j for j in _jobs if j.release_id == release_id and j.scope == scope), None)
            if job is None or job.sized or job.state != "queued":
                return False
            job.sized = True
        updates = []
        for part, pu in job.units:
            if part.spec.units[pu.j].rows_max == 1:
                continue
            for (row, side), size in _exact_sizes(part, pu, job.memory_mb).items():
                no = pu.base + row * pu.stride + side
                if no in job.set_nos:
                    updates.append((size, size, release_id, scope, no))
        if not updates:
            return False
        with self._write() as conn:
            conn.executemany("UPDATE unit_sets SET size = ?, lo = ? WHERE release_id = ? AND scope = ? AND set_no = ?"
                             " AND state = 'pending' AND lo <= size AND ? IS NOT NULL",
                             [(*u, u[0]) for u in updates])
        return True

    def _ready(self, conn: sqlite3.Connection, plan: dict, listed: dict[tuple[int, int], pl.DataFrame]) -> bool:
        for _scope, (inner, outer) in plan.items():
            for a, b in inner:
                if (a.part, a.j) not in listed or (b.part, b.j) not in listed:
                    return False
            for d, s in outer:
                if (d.part, d.j) not in listed or s.state != "ok":
                    return False
        return True

    def _compare(self, conn: sqlite3.Connection, user: str, scopes: dict[str, _Scope], plan: dict,
                 listed: dict[tuple[int, int], pl.DataFrame]) -> tuple[Finding | None, dict[str, _NewIndex]]:
        """Members of the pairs sizes could not tell apart: too close (a Finding), equal (a duplicate) or far."""
        indexes: dict[str, _NewIndex] = {}
        for scope, (inner, outer) in plan.items():
            sc = scopes[scope]
            if not inner and not outer:
                continue
            k = sc.k
            index = indexes[scope] = self._new_index(conn, scope, sc, listed, k)
            for a, b in sorted(inner, key=lambda p: (p[0].set_no, p[1].set_no)):
                first, second = (a, b) if a.set_no < b.set_no else (b, a)
                if first.dup or second.dup:
                    continue
                fa, fb = index.facts(first.set_no), index.facts(second.set_no)
                if _pair_differs(fa, fb, k):
                    continue
                d = _delta(index.part(first.set_no), index.part(second.set_no), k)
                if d == 0:
                    second.dup = True
                elif d < k:
                    return Finding(sc.dataset, k, sc.on_violation, None), indexes
            meta = self._stored_facts(conn, scope, {(s.release_id, s.set_no) for _, s in outer})
            close: dict[int, tuple[_Desc, Finding]] = {}
            for d, s in outer:
                if d.dup:
                    continue
                fd = index.facts(d.set_no)
                if _pair_differs(fd, meta[(s.release_id, s.set_no)], k):
                    continue
                delta = _delta(index.part(d.set_no), self._stored(conn, s.release_id, scope, s.set_no), k)
                if delta == 0:
                    # The same set as an automatic release: shown before, so harmless whatever else is near
                    # it. The same set as a review request's is not: that one was never compared (it may be
                    # held for being too close to another), so the others still decide.
                    if self._info(conn, s.release_id, scope).request is None:
                        d.dup = True
                elif delta < k:
                    close.setdefault(d.set_no, (d, Finding(sc.dataset, k, sc.on_violation,
                                                           self._info(conn, s.release_id, scope))))
            for d, finding in close.values():
                if not d.dup:
                    return finding, indexes
        return None, indexes

    def _new_index(self, conn: sqlite3.Connection, scope: str, sc: _Scope,
                   listed: dict[tuple[int, int], pl.DataFrame], k: int) -> _NewIndex:
        frames = [listed[(pu.part, pu.j)] for pu in sc.units if (pu.part, pu.j) in listed]
        data = pl.concat(frames) if frames else pl.DataFrame(schema={"set_no": pl.Int64, "u": pl.Int64,
                                                                     "count": pl.Int64})
        units = data.get_column("u")
        data = data.select("set_no", self._unit_index(conn, scope, units).alias("idx"), pl.col("count").cast(pl.Int64))
        sizes, prefixes, sk = _facts(data, k)
        return _NewIndex(data, sizes, prefixes, sk)

    def _stored_facts(self, conn: sqlite3.Connection, scope: str,
                      keys: set[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, tuple, tuple]]:
        out = {}
        for rid, set_no in keys:
            r = conn.execute("SELECT size, prefix, sketch FROM unit_sets WHERE release_id = ? AND scope = ? AND"
                             " set_no = ?", (rid, scope, set_no)).fetchone()
            out[(rid, set_no)] = (int(r["size"]), _unpack(r["prefix"], "q"), _unpack(r["sketch"], "I"))
        return out

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

    def _stored(self, conn: sqlite3.Connection, release_id: str, scope: str, set_no: int) -> pl.DataFrame:
        key = (release_id, scope)
        parts = self._blobs.get(key)
        if parts is None:
            blobs = [r["blob"] for r in conn.execute("SELECT blob FROM set_blobs WHERE release_id = ? AND scope = ?"
                                                     " ORDER BY piece", key)]
            legacy = conn.execute("SELECT blob FROM releases WHERE id = ? AND scope = ?", key).fetchone()
            if legacy is not None and legacy["blob"] is not None:
                blobs.append(legacy["blob"])
            parts = _split(pl.concat([_decode(b) for b in blobs])) if blobs else {}
            self._blobs[key] = parts
            while len(self._blobs) > BLOB_CACHE:
                self._blobs.popitem(last=False)
        else:
            self._blobs.move_to_end(key)
        return parts[set_no]

    def _info(self, conn: sqlite3.Connection, release_id: str, scope: str) -> ReleaseInfo:
        r = conn.execute("SELECT id, dataset, session_id, cell, created, rows, request FROM releases"
                         " WHERE id = ? AND scope = ?", (release_id, scope)).fetchone()
        return ReleaseInfo(r["id"], r["dataset"], r["session_id"], r["cell"], r["created"], int(r["rows"]),
                           r["request"])

    # ------------------------------------------------------------ recording

    def _insert(self, conn: sqlite3.Connection, rid: str, user: str, session_id: str, cell: str, created: str,
                rows: int, scopes: dict[str, _Scope], listed: dict[tuple[int, int], pl.DataFrame],
                indexes: dict[str, _NewIndex], cover: Cover, datasets: Mapping[str, DatasetConfig],
                memory_mb: int, digest: str | None = None, request: str | None = None) -> list[_Job]:
        """The release and its new sets: with members where they were listed, else pending (a job)."""
        jobs = []
        for scope, sc in scopes.items():
            keep = [d for d in sc.descs if not d.dup]
            conn.execute(
                "INSERT INTO releases (id, scope, user, dataset, session_id, cell, created, rows, sets, blob, digest,"
                " request) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                (rid, scope, user, sc.dataset, session_id, cell, created, rows, len(keep), digest, request),
            )
            for d in keep:
                if d.replaces:
                    conn.execute("DELETE FROM unit_sets WHERE release_id = ? AND scope = ? AND set_no = ?",
                                 (d.replaces[0], scope, d.replaces[1]))
            done = [d for d in keep if (d.part, d.j) in listed]
            later = [d for d in keep if (d.part, d.j) not in listed]
            if done:
                index = indexes.get(scope) or self._new_index(conn, scope, sc, listed, sc.k)
                nos = [d.set_no for d in done]
                conn.execute("INSERT INTO set_blobs (release_id, scope, piece, blob) VALUES (?, ?, 0, ?)",
                             (rid, scope, _encode(_sort_sets(index.data.filter(pl.col("set_no").is_in(nos))))))
                conn.executemany(
                    "INSERT INTO unit_sets (release_id, scope, user, set_no, size, label, prefix, sketch, lo, state,"
                    " ident, owner, rows, m) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'ok', ?, NULL, ?, ?)",
                    [(rid, scope, user, d.set_no, index.sizes[d.set_no], d.label,
                      _pack(index.prefixes[d.set_no], "q"), _pack(index.sketches[d.set_no], "I"),
                      index.sizes[d.set_no], d.ident, d.rows, d.m) for d in done],
                )
            if later:
                conn.executemany(
                    "INSERT INTO unit_sets (release_id, scope, user, set_no, size, label, prefix, sketch, lo, state,"
                    " ident, owner, rows, m) VALUES (?, ?, ?, ?, ?, ?, x'', x'', ?, 'pending', ?, ?, ?, ?)",
                    [(rid, scope, user, d.set_no, d.hi, d.label, d.lo, d.ident, self._token, d.rows, d.m)
                     for d in later],
                )
                units = sorted({(d.part, d.j) for d in later})
                pus = [next(u for u in sc.units if (u.part, u.j) == key) for key in units]
                parts = {pu.part for pu in pus}
                jobs.append(_Job(rid, scope, [(cover.parts[pu.part], pu) for pu in pus],
                                 frozenset(d.set_no for d in later),
                                 {p: _versions(cover.parts[p].spec, datasets) for p in parts},
                                 datasets, memory_mb, sc.k, self))
        return jobs

    def _enqueue(self, jobs: list[_Job]) -> None:
        global _thread
        if not jobs:
            return
        with _jobs_cv:
            _jobs.extend(jobs)
            if _thread is None or not _thread.is_alive():
                _thread = threading.Thread(target=_background, name="bastion-history", daemon=True)
                _thread.start()
            _jobs_cv.notify_all()

    def _await(self, release_id: str, scope: str) -> None:
        """Make sure a pending set of `release_id` is written (or known lost) before comparing with it."""
        with _jobs_cv:
            job = next((j for j in _jobs if j.release_id == release_id and j.scope == scope), None)
            mine = job is not None and job.state == "queued"
            if mine:
                job.state = "running"  # type: ignore[union-attr]
        if mine:
            job.store._run(job)  # type: ignore[union-attr]
            return
        if job is not None:
            with _jobs_cv:
                while job.state != "done":
                    _jobs_cv.wait()
            return
        deadline = time.monotonic() + WAIT_OTHERS_S  # another kernel (or store) is writing it
        while time.monotonic() < deadline:
            with self._connect() as conn:
                r = conn.execute("SELECT state, owner FROM unit_sets WHERE release_id = ? AND scope = ? AND"
                                 " state = 'pending' LIMIT 1", (release_id, scope)).fetchone()
            if r is None or not self._alive(r["owner"]):
                return
            time.sleep(0.05)

    def _run(self, job: _Job) -> None:
        """List the members of a job's sets and write them; on any doubt, mark them lost."""
        try:
            ok = self._materialize(job)
        except Exception:  # noqa: BLE001 - a failed write must fail closed, never take the kernel down
            ok = False
        if not ok:
            try:
                with self._write() as conn:
                    conn.execute("UPDATE unit_sets SET state = 'lost', owner = NULL WHERE release_id = ? AND"
                                 " scope = ? AND state = 'pending'", (job.release_id, job.scope))
            except sqlite3.Error:
                pass
        with _jobs_cv:
            job.state = "done"
            if job in _jobs:
                _jobs.remove(job)
            _jobs_cv.notify_all()

    def _materialize(self, job: _Job) -> bool:
        for p, seen in job.versions.items():
            if _versions(_part_spec(job, p), job.datasets) != seen:
                return False
        sizes: dict[int, int] = {}
        prefixes: dict[int, list[int]] = {}
        sks: dict[int, list[int]] = {}
        piece = [0]

        def store(sets: pl.DataFrame) -> None:
            sets = sets.filter(pl.col("set_no").is_in(list(job.set_nos)))
            if sets.height == 0:
                return
            units = sets.get_column("u")
            if units.dtype.is_integer():  # its own index: no dictionary, so no transaction while sorting
                idx = units.cast(pl.Int64, wrap_numerical=True)
            else:
                with self._write() as conn:
                    idx = self._unit_index(conn, job.scope, units)
            # Grouped by set only: members come in file order, which delta-codes well when the unit
            # column is sorted; comparing sorts the few sets it loads (`_split`).
            data = sets.select("set_no", idx.alias("idx"), pl.col("count").cast(pl.Int64)) \
                .sort("set_no", maintain_order=True)
            blob = _encode(data)
            with self._write() as conn:
                conn.execute("INSERT INTO set_blobs (release_id, scope, piece, blob) VALUES (?, ?, ?, ?)",
                             (job.release_id, job.scope, piece[0], blob))
            piece[0] += 1
            s, pre, sk = _facts(data, job.k)
            for no, n in s.items():
                sizes[no] = sizes.get(no, 0) + n
                prefixes[no] = sorted(prefixes.get(no, []) + list(pre[no]))[:max(PREFIX, job.k)]
                acc = sks.setdefault(no, [0] * BUCKETS)
                for b, c in enumerate(sk[no]):
                    acc[b] += c

        try:
            for part, pu in job.units:
                _list_members(part, pu, job.memory_mb, each=store)
        except _Mismatch:
            return False
        for p, seen in job.versions.items():
            if _versions(_part_spec(job, p), job.datasets) != seen:
                return False
        if set(sizes) != set(job.set_nos):
            return False
        with self._write() as conn:
            conn.executemany(
                "UPDATE unit_sets SET size = ?, lo = ?, prefix = ?, sketch = ?, state = 'ok', owner = NULL"
                " WHERE release_id = ? AND scope = ? AND set_no = ? AND state = 'pending'",
                [(sizes[no], sizes[no], _pack(prefixes[no], "q"), _pack(sks[no], "I"), job.release_id, job.scope, no)
                 for no in sorted(job.set_nos)],
            )
        with self._lock:
            self._blobs.pop((job.release_id, job.scope), None)
        return True

    def flush(self) -> None:
        """Write every pending set of this process now (a session closing)."""
        while True:
            with _jobs_cv:
                job = next((j for j in _jobs if j.state == "queued"), None)
                if job is None and not any(j.state == "running" for j in _jobs):
                    return
                if job is not None:
                    job.state = "running"
                else:
                    _jobs_cv.wait()
                    continue
            job.store._run(job)

    def pending(self) -> int:
        """How many sets (of any process) are still waiting to be written."""
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) AS n FROM unit_sets WHERE state = 'pending'").fetchone()["n"])

    # ------------------------------------------------------------ for the owner

    def releases(self, *, user: str, scope: str, limit: int = 5) -> tuple[int, list[ReleaseInfo]]:
        """How many releases of `user` on this dataset the history holds, and the most recent `limit`."""
        with self._connect() as conn:
            total = conn.execute("SELECT COUNT(*) AS n FROM releases WHERE user = ? AND scope = ?",
                                 (user, scope)).fetchone()["n"]
            rows = conn.execute(
                "SELECT id, dataset, session_id, cell, created, rows, request FROM releases WHERE user = ? AND"
                " scope = ? ORDER BY created DESC, rowid DESC LIMIT ?", (user, scope, limit),
            ).fetchall()
        return int(total), [ReleaseInfo(r["id"], r["dataset"], r["session_id"], r["cell"], r["created"],
                                        int(r["rows"]), r["request"]) for r in rows]


@dataclass
class _NewIndex(_Index):
    def facts(self, set_no: int) -> tuple[int, tuple, tuple]:
        return self.sizes[set_no], self.prefixes[set_no], self.sketches[set_no]


def _sweep(left: list[_Desc], right: list[_Desc], k: int) -> list[tuple[_Desc, _Desc]]:
    """Pairs (a from left, b from right; each pair once when both are the same list) whose size
    ranges may come within k - 1 of each other (`_near` decides exactly)."""
    order = sorted(right, key=lambda d: d.lo)
    los = [d.lo for d in order]
    if left is right:  # b after a in `lo` order: b.lo >= a.lo, so near means b.lo <= a.hi + k - 1
        return [(a, b) for i, a in enumerate(order) for b in order[i + 1:bisect.bisect_right(los, a.hi + k - 1)]]
    width = max((d.hi - d.lo for d in order), default=0)
    return [(a, b) for a in left
            for b in order[bisect.bisect_left(los, a.lo - width - k + 1):bisect.bisect_right(los, a.hi + k - 1)]]


def _part_spec(job: _Job, p: int) -> Any:
    return next(part.spec for part, pu in job.units if pu.part == p)


@functools.lru_cache(maxsize=16)
def open_store(state_dir: Path) -> HistoryStore:
    """One store per state folder and process: it keeps decoded sets and unit dictionaries in memory."""
    return HistoryStore(state_dir)


__all__ = ["Cover", "CoverPart", "Finding", "HistoryStore", "ReleaseInfo", "foreground", "open_store", "scope_of"]
