"""Vega-Lite charts of released results, and the bins of a histogram.

Why its own module: a chart is a *view* of data the policy already released,
so everything here is a pure function of a `Released` table (or, for a
histogram, of numbers chosen before the query runs). Nothing in this module
reads a frame, runs a query or decides a release: `Session.plot_histogram`
sends the binned aggregate through the normal policy and hands the released
counts back here to be drawn. The spec carries the data inline
(`data.values`), limited to the columns the chart draws, so the notebook never
needs to fetch anything and nothing else of the table travels with it.

JupyterLab renders ``application/vnd.vegalite.v5+json`` natively; the bundle
also carries a ``text/plain`` table for every other client.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from dataclasses import dataclass
from typing import Any

import polars as pl

from .errors import PlanError, PolicyError
from .grammar import suggest
from .plan import BinOp, Call, Col, Expr, Len, Lit
from .release import Released

VEGA_LITE_MIME = "application/vnd.vegalite.v5+json"
SCHEMA_URL = "https://vega.github.io/schema/vega-lite/v5.json"
MAX_HIST_BINS = 200  # a histogram is one group per bin: more bins only means more withheld bins
DEFAULT_HIST_BINS = 20
BIN_START, BIN_END, COUNT = "bin_start", "bin_end", "count"


@dataclass(frozen=True)
class PlotAccessor:
    """`released.plot` or `frame.plot`: the chart kinds, bound to what they draw from.

    On a `Released` table the kinds are `bar`, `line` and `point`; on a frame
    only `hist`, which is an aggregate query of its own.
    """

    target: Any  # Released | plan.Frame


@dataclass(frozen=True)
class Chart:
    """A Vega-Lite spec plus the released rows it draws (for the text fallback)."""

    spec: dict[str, Any]
    table: pl.DataFrame
    summary: str
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------- released tables


def chart(released: Released, kind: str, *, x: str, y: str, color: str | None = None,
          title: str | None = None) -> Chart:
    """`bar`, `line` or `point` chart of a released table; columns are checked, masked ones refused."""
    df = released.df
    used = [c for c in (x, y, color) if c is not None]
    for c in used:
        _check_column(df, released, c)
    table = df.select(list(dict.fromkeys(used)))
    encoding: dict[str, Any] = {
        "x": _channel(x, _field_type(df.schema[x], kind, "x", df.schema[y])),
        "y": _channel(y, _field_type(df.schema[y], kind, "y", df.schema[x])),
    }
    if color is not None:
        encoding["color"] = _channel(color, "quantitative" if df.schema[color].is_numeric() else "nominal")
    if kind == "line":
        encoding["order"] = {"field": _field(x)}
    mark: dict[str, Any] = {"type": kind, "tooltip": True}
    if kind == "point":
        mark["filled"] = True
    if kind == "line":
        mark["point"] = True
    spec = _spec(title or f"{y} by {x}", table, mark, encoding, released.notes)
    summary = f"{kind} chart of {y} by {x}" + (f", coloured by {color}" if color else "") + \
        f" ({table.height} released rows)"
    return Chart(spec, table, summary, released.notes)


def _check_column(df: pl.DataFrame, released: Released, name: str) -> None:
    if name not in df.columns:
        raise PlanError(f"no column `{name}` in this released result",
                        hint=suggest(name, df.columns) or f"columns: {', '.join(df.columns)}")
    if name in released.masked:
        raise PolicyError(
            f"column `{name}` is masked: it holds only '*', so there is nothing to draw",
            rule="masked-column",
            hint="chart an aggregated column instead, e.g. counts per group from .group_by(...).agg(pl.len())",
        )
    dtype = df.schema[name]
    if isinstance(dtype, (pl.List, pl.Array, pl.Struct, pl.Object)):
        raise PlanError(f"column `{name}` holds {dtype} values, which a chart cannot draw",
                        hint="chart a column of numbers, text, dates or booleans")


def _field(name: str) -> str:
    """Vega-Lite reads '.' and '[' in a field name as nesting: escape them."""
    out = name.replace("\\", "\\\\")
    for ch in ".[]":
        out = out.replace(ch, "\\" + ch)
    return out


def _channel(name: str, vtype: str) -> dict[str, Any]:
    return {"field": _field(name), "type": vtype, "title": name}


def _field_type(dtype: Any, kind: str, channel: str, other: Any) -> str:
    """quantitative for measures, nominal/ordinal for categories, temporal for dates on lines and points."""
    if dtype.is_temporal():
        return "ordinal" if kind == "bar" else "temporal"
    if dtype.is_numeric():
        if kind == "bar" and channel == "x" and other.is_numeric():
            return "ordinal"  # bars over numeric keys (years, ages) are categories, one bar each
        return "quantitative"
    return "nominal"


def _spec(title: str, table: pl.DataFrame, mark: dict[str, Any], encoding: dict[str, Any],
          notes: tuple[str, ...]) -> dict[str, Any]:
    """The whole spec; the release's notes (withheld groups, ...) are the subtitle, visible with the chart."""
    heading: dict[str, Any] = {"text": title}
    if notes:
        heading |= {"subtitle": list(notes), "subtitleFontSize": 11, "subtitleColor": "#8a6d3b"}
    return {
        "$schema": SCHEMA_URL,
        "title": heading,
        "width": 480,
        "height": 300,
        "data": {"values": values(table)},
        "mark": mark,
        "encoding": encoding,
    }


def values(table: pl.DataFrame) -> list[dict[str, Any]]:
    """The rows as JSON values: dates as ISO text, NaN and infinities as null."""
    return [{k: _json(v) for k, v in row.items()} for row in table.iter_rows(named=True)]


def _json(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, decimal.Decimal):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    return str(v)


# --------------------------------------------------------------------------- histograms


@dataclass(frozen=True)
class Bins:
    """Equal-width bins [start + i*width, start + (i+1)*width), i < count."""

    start: float
    width: float
    count: int

    @property
    def end(self) -> float:
        return self.start + self.width * self.count


def check_hist_column(columns: dict[str, Any], name: str, dataset: str | None) -> None:
    """The histogram's column must exist, be visible and hold numbers."""
    if name not in columns:
        raise PlanError(f"no column `{name}` in this frame",
                        hint=suggest(name, list(columns)) or f"columns: {', '.join(columns)}")
    info = columns[name]
    if info.masked:
        raise PolicyError(
            f"masked column `{name}` cannot be binned: masked values are only ever shown as '*'",
            rule="masked-column",
            dataset=dataset,
            hint="draw a histogram of an unmasked numeric column",
        )
    if not info.dtype.is_numeric():
        raise PlanError(
            f"a histogram needs a numeric column; `{name}` is {info.dtype}",
            hint=f'for categories count the groups and draw bars: '
                 f'.group_by("{name}").agg(pl.len()).collect().plot.bar(x="{name}", y="len")',
        )


def check_bins(bins: int | None) -> int:
    n = DEFAULT_HIST_BINS if bins is None else bins
    if not 1 <= n <= MAX_HIST_BINS:
        raise PlanError(f"bins must be between 1 and {MAX_HIST_BINS}, not {n}",
                        hint="fewer, wider bins keep more of them above the minimum group size")
    return n


def check_range(value: list[Any] | None) -> tuple[float, float] | None:
    if value is None:
        return None
    ok = (len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
          and all(math.isfinite(v) for v in value) and value[0] < value[1])
    if not ok:
        raise PlanError("range must be two finite numbers [lo, hi] with lo < hi", hint="e.g. range=[0, 100]")
    return float(value[0]), float(value[1])


def make_bins(lo: float, hi: float, bins: int, *, integer: bool) -> Bins:
    """`bins` equal bins over [lo, hi); with an explicit range exactly those, never wider than asked."""
    width = (hi - lo) / bins
    if integer and width < 1:
        width = 1.0
        bins = max(1, math.ceil(hi - lo))
    return Bins(lo, width, bins)


def nice_bins(mean: float, std: float, bins: int, *, integer: bool) -> Bins:
    """Bins over mean ± 3 std, widened to round numbers (both are released aggregates)."""
    lo, hi = mean - 3 * std, mean + 3 * std
    if not std > 0:
        lo, hi = mean - 0.5, mean + 0.5
    width = _nice((hi - lo) / bins)
    if integer:
        width = max(1.0, float(math.ceil(width)))
    start = math.floor(lo / width) * width
    count = max(1, math.ceil((hi - start) / width))
    return Bins(start, width, min(count, MAX_HIST_BINS))


def _nice(step: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k not below `step`."""
    if not step > 0 or not math.isfinite(step):
        return 1.0
    base = 10.0 ** math.floor(math.log10(step))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * base >= step * (1 - 1e-9):
            return m * base
    return 10.0 * base  # pragma: no cover


def range_predicate(column: str, b: Bins) -> Expr:
    """start <= x < end, as a plan expression (what the policy reads)."""
    col = Col(column)
    return BinOp("&", BinOp(">=", col, Lit(b.start)), BinOp("<", col, Lit(b.end)))


def bin_key(column: str, b: Bins) -> Expr:
    """floor((x - start) / width) * width + start: the bin's lower edge, the group key."""
    index = Call("floor", BinOp("/", BinOp("-", Col(column), Lit(b.start)), Lit(b.width)))
    return Call("alias", BinOp("+", BinOp("*", index, Lit(b.width)), Lit(b.start)), (BIN_START,))


def count_agg() -> Expr:
    return Call("alias", Len(), (COUNT,))


def histogram(released: Released, column: str, b: Bins, *, title: str | None, notes: tuple[str, ...],
              full_axis: bool = False) -> Chart:
    """Draw the released counts per bin; withheld bins are gaps, and the notes say how many.

    `full_axis` (a range the user chose) spans the axis over the whole range, so
    empty and withheld bins at its ends show as gaps too.
    """
    digits = max(0, 6 - math.floor(math.log10(b.width))) if b.width > 0 else 6
    table = (
        released.df.select(pl.col(BIN_START).cast(pl.Float64).round(digits), pl.col(COUNT))
        .with_columns((pl.col(BIN_START) + b.width).round(digits).alias(BIN_END))
        .select(BIN_START, BIN_END, COUNT)
        .sort(BIN_START)
    )
    encoding = {
        "x": {"field": BIN_START, "type": "quantitative", "bin": {"binned": True, "step": b.width},
              "title": column},
        "x2": {"field": BIN_END},
        "y": {"field": COUNT, "type": "quantitative", "title": "rows"},
    }
    if full_axis:
        encoding["x"]["scale"] = {"domain": [b.start, b.end]}
    spec = _spec(title or f"{column}: rows per bin", table, {"type": "bar", "tooltip": True}, encoding, notes)
    summary = (f"histogram of {column}: {b.count} bins of width {_num(b.width)} over "
               f"[{_num(b.start)}, {_num(b.end)}), {table.height} released")
    return Chart(spec, table, summary, notes)


def _num(v: float) -> str:
    return f"{v:.10g}"


def range_note(b: Bins, column: str, source: str) -> str:
    return (f"bins cover [{_num(b.start)}, {_num(b.end)}) ({source}); rows with {column} outside it "
            "or null are not counted")
