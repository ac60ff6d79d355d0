"""Listing which individuals a released result's sets hold: the second query behind `policy.history`.

Why separate: the history decides from counts which sets must be compared and
records every set; this module turns one aggregation's `frames.CoverSpec` and
its released rows' counts back into members, (set, unit id, rows) per set,
with a query over the aggregation's own input (only the columns it needs,
streaming), in hash partitions of the unit ids so that memory stays within
a share of `query_memory_mb` however many individuals there are. Every
listing is checked against the counts the released query computed: a
mismatch (say the file changed in between) raises `Mismatch`, and the
history fails closed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:  # pragma: no cover
    from .history import CoverPart

BYTES_PER_ROW = 128  # peak memory per listed member while recording (copies included), to size partitions
BYTES_PER_DISTINCT = 32  # peak memory per distinct (group, id) pair of an exact size (a hash table entry)


@dataclass
class PartUnit:
    """Unit j of cover part `part`: its set numbering within its scope."""

    part: int
    j: int
    base: int
    stride: int
    nbits: int


def bit(column: str, i: int) -> pl.Expr:
    """Bit i of a multi-word bit set stored as UInt64 columns `<column><i // 64>`."""
    return (pl.col(f"{column}{i // 64}") & pl.lit(1 << (i % 64), pl.UInt64)) != 0


def released_conditions(rows: pl.DataFrame) -> int:
    """How many condition bits are in play: one past the highest bit released on any row."""
    nbits = 0
    w = 0
    while f"m{w}" in rows.columns:
        top = int(rows.get_column(f"m{w}").max() or 0)
        if top:
            nbits = w * 64 + top.bit_length()
        w += 1
    return nbits


def membership(part: CoverPart, unit: PartUnit, parts: int, p: int) -> pl.LazyFrame:
    """(row, u, n, t<i>) for unit j of `part`: each individual's rows in each of the part's rows'
    groups, and how many of them condition i holds for. Streams; hash partition p of `parts`."""
    spec = part.spec
    u = spec.units[unit.j]
    rows = part.rows.struct.unnest()
    keys = [f"k{i}" for i in range(len(spec.keys))]
    cols = [k.alias(f"__k{i}") for i, k in enumerate(spec.keys)]
    bits = [pl.when(m).then(pl.lit(1, pl.Int64)).otherwise(pl.lit(0, pl.Int64)).alias(f"t{i}")
            for i, m in enumerate(spec.masks[:unit.nbits])]
    q = spec.lf.select(*cols, pl.col(u.column).alias("u"), *bits).filter(pl.col("u").is_not_null())
    if parts > 1:
        q = q.filter(pl.col("u").hash(seed=29) % parts == p)
    if keys:
        table = rows.select([pl.col(k).alias(f"__k{i}") for i, k in enumerate(keys)]).with_row_index("row")
        q = q.join(table.lazy(), on=[f"__k{i}" for i in range(len(keys))], how="inner", nulls_equal=True)
    else:
        q = q.with_columns(pl.lit(0, pl.UInt32).alias("row"))
    ts = [f"t{i}" for i in range(unit.nbits)]
    if u.rows_max == 1:
        return q.select(pl.col("row").cast(pl.Int64), "u", pl.lit(1, pl.Int64).alias("n"), *ts)
    return q.group_by("row", "u").agg(pl.len().cast(pl.Int64).alias("n"), *[pl.col(t).sum() for t in ts]) \
        .select(pl.col("row").cast(pl.Int64), "u", "n", *ts)


def expand(part: CoverPart, unit: PartUnit, runs: pl.DataFrame) -> pl.DataFrame:
    """(set_no, u, count) of every set unit j of `part` covers, from its `membership` runs."""
    rows = part.rows.struct.unnest()
    nbits = unit.nbits
    frames = [runs.select((pl.col("row") * unit.stride + unit.base).alias("set_no"), "u", pl.col("n").alias("count"))]
    if nbits:
        released = rows.with_row_index("row").select(pl.col("row").cast(pl.Int64),
                                                     *[bit("m", i).alias(f"rel{i}") for i in range(nbits)])
        runs = runs.join(released, on="row", how="left", maintain_order="left")
        for i in range(nbits):
            for side, count in ((1, pl.col(f"t{i}")), (2, pl.col("n") - pl.col(f"t{i}"))):
                frames.append(
                    runs.filter(pl.col(f"rel{i}") & (count > 0))
                    .select((pl.col("row") * unit.stride + unit.base + 2 * i + side).alias("set_no"), "u",
                            count.alias("count"))
                )
    return pl.concat(frames)


def totals(part: CoverPart, unit: PartUnit) -> pl.DataFrame:
    """What the query counted per row (rows with an id, rows per condition): listing must agree."""
    rows = part.rows.struct.unnest()
    return rows.select(pl.col(f"n{unit.j}").alias("n"),
                       *[pl.col(f"t{unit.j}_{i}").alias(f"t{i}") for i in range(unit.nbits)]).with_row_index("row") \
        .with_columns(pl.col("row").cast(pl.Int64))


def partitions(part: CoverPart, unit: PartUnit, memory_mb: int, bytes_each: int | None = None) -> int:
    """Hash partitions for listing unit j's members within an eighth of the memory limit (the cap counts
    address space, which polars' allocator keeps once used, and the next cell needs the rest): the
    group sets hold its rows once, each released condition's two sides once more, at `bytes_each`
    (`BYTES_PER_ROW` by default; `exact_sizes` counts hash-table entries instead)."""
    each = BYTES_PER_ROW if bytes_each is None else bytes_each
    total = int(part.rows.struct.field(f"n{unit.j}").sum() or 0) * (1 + unit.nbits)
    return max(1, math.ceil(total * each / (max(memory_mb, 64) * 2**20 / 8)))


def exact_sizes(part: CoverPart, unit: PartUnit, memory_mb: int = 4_096) -> dict[tuple[int, int], int]:
    """(row, side) -> distinct individuals of unit j in that set (the group, each side of each condition).

    Why in hash partitions of the ids: a distinct count keeps every (group, id)
    pair in a hash table, on the streaming engine too, which is what pushed a
    capped run past its memory (16M visits rows, three groups: ~12M pairs). Ids
    in different partitions are different individuals, so the counts of the
    partitions add up to the exact count; each pass stays within an eighth of
    `memory_mb` (like `list_members`), at one more read of the input per pass.
    """
    spec = part.spec
    ids = pl.col(spec.units[unit.j].column)
    aggs = [ids.drop_nulls().n_unique().alias("s0")]
    for i, m in enumerate(spec.masks[:unit.nbits]):
        holds = m.fill_null(False)
        aggs += [ids.filter(holds).drop_nulls().n_unique().alias(f"s{2 * i + 1}"),
                 ids.filter(~holds).drop_nulls().n_unique().alias(f"s{2 * i + 2}")]
    names = [f"s{x}" for x in range(1 + 2 * unit.nbits)]
    parts = partitions(part, unit, memory_mb, BYTES_PER_DISTINCT)
    table = None
    if spec.keys:
        rows = part.rows.struct.unnest()
        table = rows.select([pl.col(f"k{i}").alias(f"__k{i}") for i in range(len(spec.keys))]).with_row_index("row")
    counted: list[pl.DataFrame] = []
    for p in range(parts):
        lf = spec.lf if parts == 1 else spec.lf.filter(ids.hash(seed=31) % parts == p)
        if table is not None:
            got = lf.group_by([k.alias(f"__k{i}") for i, k in enumerate(spec.keys)]).agg(aggs) \
                .join(table.lazy(), on=[f"__k{i}" for i in range(len(spec.keys))], how="inner", nulls_equal=True) \
                .select("row", *names).collect(engine="streaming")
        else:
            got = lf.select(aggs).select(pl.lit(0, pl.UInt32).alias("row"), *names).collect(engine="streaming")
        counted.append(got.select(pl.col("row").cast(pl.Int64), *[pl.col(n).cast(pl.Int64) for n in names]))
    got = counted[0] if parts == 1 else pl.concat(counted).group_by("row").agg(pl.col(names).sum())
    out: dict[tuple[int, int], int] = {}
    for values in got.iter_rows():
        for side, n in enumerate(values[1:]):
            out[(int(values[0]), side)] = int(n)
    return out


class Mismatch(Exception):
    """The listed members do not add up to what the released query counted."""


def list_members(part: CoverPart, unit: PartUnit, memory_mb: int,
                  each: Any = None) -> pl.DataFrame | None:
    """All sets of unit j of `part`, as (set_no, u, count); or, with `each`, handed over partition by
    partition (memory stays within the limit) and None returned. Checks the counts add up."""
    parts = partitions(part, unit, memory_mb)
    sums: pl.DataFrame | None = None
    kept: list[pl.DataFrame] = []
    for p in range(parts):
        runs = membership(part, unit, parts, p).collect(engine="streaming")
        got = runs.group_by("row").agg(pl.col("n").sum(), *[pl.col(f"t{i}").sum() for i in range(unit.nbits)])
        sums = got if sums is None else pl.concat([sums, got]).group_by("row").agg(pl.all().sum())
        sets = expand(part, unit, runs)
        del runs
        if each is None:
            kept.append(sets)
        else:
            each(sets)
    want = totals(part, unit).filter(pl.col("n") > 0)
    have = (sums if sums is not None else want.clear()).select(want.columns).sort("row")
    if not have.cast(want.schema).equals(want.sort("row")):  # type: ignore[arg-type]
        raise Mismatch
    return pl.concat(kept) if each is None else None
