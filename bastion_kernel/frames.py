"""Frame verbs: each builds the next `Frame` — plan step, lineage and polars form.

Why here and not in the interpreter: every verb has the same three duties
(record the step, update the lineage the policy reads, extend the compiled
polars query with the bookkeeping columns that lineage needs), and keeping
them together is what makes the invariant checkable after every step: the
polars schema is exactly the visible columns followed by the hidden ones.

Bookkeeping columns (all under the reserved prefix, unreachable by users):
- ``__bastion_u<N>``: the privacy unit id of one source scan (row index when a
  dataset has no privacy_unit), used for exact distinct-individual counts;
- ``__bastion_p<N>``: a condition computed on rows, kept so that aggregating a
  value derived from it later is still checked for singling out;
- ``__bastion_ok`` / ``__bastion_sup``: after an aggregation at the root of a
  query, whether each group holds enough individuals, and how many of its
  cells were suppressed, so the release can say how much it withheld;
- ``__bastion_cov<N>``: after such an aggregation, a small struct per group
  that the differencing check (`policy.history`) starts from: the group's key
  values, per unit column how many rows (with an id) it has and how many of
  them each condition inside its values holds for, and which conditions
  belong to a released value. Which individuals those are is listed only
  when the check needs it (`cover_spec`: a second query over the same input,
  usually run later, in the background). It lives in `Frame.preds` while the
  frame is pending and is dropped with ``__bastion_ok`` by `materialize`.

Cost: the threshold and these counts are sums and row counts that polars
computes in the same pass as the user's aggregates, streaming; a distinct
count of ids is needed only where one individual can have several rows, and
even then only over the first k·M rows of a group (`_at_least`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from . import compile as C
from .config import RESERVED_PREFIX, DatasetConfig
from .errors import PlanError, Position
from .plan import (
    OK_COLUMN,
    SUPPRESSED_COLUMN,
    BinOp,
    Call,
    Col,
    ColumnInfo,
    Expr,
    Frame,
    Func,
    Lit,
    Step,
    Unit,
    UnOp,
    Violation,
    When,
    is_reserved,
    walk,
)
from .policy import rules
from .sources import EXACT_INT, UnitProfile, cleared_key, groups_cleared, note_groups_cleared, scan, unit_profile
from .sources import schema as dataset_schema


@dataclass
class Ctx:
    """Per-session naming of bookkeeping columns and the current cell position."""

    counter: itertools.count
    position: Position | None = None
    state_dir: Path | None = None  # where per-dataset facts are cached (`sources.unit_profile`)
    memory_mb: int = 1024  # what measuring those facts may use
    rows_of: dict[str, int | None] = field(default_factory=dict)  # dataset -> rows in its file (cross joins)
    sources: dict[str, DatasetConfig] = field(default_factory=dict)  # datasets scanned, by name (`_value_bounds`)

    def fresh(self, kind: str) -> str:
        return f"{RESERVED_PREFIX}_{kind}{next(self.counter)}"


def _schema(lf: pl.LazyFrame, position: Position | None) -> pl.Schema:
    try:
        return lf.collect_schema()
    except Exception as exc:  # noqa: BLE001 - polars raises many types; none may leak paths or data
        raise PlanError(
            f"polars cannot build this query ({type(exc).__name__}): {_scrub(str(exc))}",
            hint="check column names and types with .schema",
            position=position,
        ) from None


def _scrub(message: str) -> str:
    """Schema-time polars messages hold no data, but may name files or bookkeeping columns."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    if "/" in first or RESERVED_PREFIX in first:
        return "the types or columns do not fit together"
    return first[:200]


def _finish(frame: Frame, ctx: Ctx) -> Frame:
    """Check the invariant: polars' columns are exactly visible + hidden, in order."""
    names = _schema(frame.lf, ctx.position).names()
    if any(is_reserved(n) for n in frame.columns):
        # A visible column under the reserved prefix would pass the order check
        # below whenever it does not collide with a bookkeeping column *yet*.
        raise PlanError(
            f"column names starting with {RESERVED_PREFIX!r} are reserved",
            hint="choose another name",
            position=ctx.position,
        )
    expected = list(frame.columns) + frame.hidden
    if names != expected:
        bad = [n for n in names if is_reserved(n) and n not in frame.hidden]
        if bad:
            raise PlanError(
                f"column names starting with {RESERVED_PREFIX!r} are reserved",
                hint="choose another name",
                position=ctx.position,
            )
        dup = [n for n in names if names.count(n) > 1]
        raise PlanError(
            f"the step produced unexpected columns ({', '.join(sorted(set(dup or names) - set(expected)))})",
            hint="give each output a distinct name with .alias(...)",
            position=ctx.position,
        )
    return frame


def source(ds: DatasetConfig, ctx: Ctx) -> Frame:
    """A fresh scan of a dataset with its unit bookkeeping column."""
    lf = scan(ds)
    schema = dataset_schema(ds)
    unit_col = ctx.fresh("u")
    if ds.privacy_unit:
        lf = lf.with_columns(pl.col(ds.privacy_unit).alias(unit_col))
    else:
        lf = lf.with_row_index(unit_col)
        lf = lf.select([*schema.names(), unit_col])
    profile = unit_profile(ds, ctx.state_dir, ctx.memory_mb)
    ctx.rows_of[ds.name] = profile.rows
    ctx.sources[ds.name] = ds
    masked = set(ds.masked)
    mine = frozenset({unit_col})
    columns = {
        n: ColumnInfo(dtype=t, masked=n in masked, unit_of=unit_col if n == ds.privacy_unit else None,
                      by_unit=mine if profile.rows_max == 1 or n == ds.privacy_unit else frozenset())
        for n, t in schema.items()
    }
    unit = Unit(unit_col, ds.name, ds.min_group_size, ds.on_violation, profile.rows_max, profile.nonnull,
                ds.max_share)
    return Frame(Step("scan", (), (ds.name,)), columns, (unit,), frozenset({ds.name}), lf)


COVER_KIND = "cov"


def is_cover(name: str) -> bool:
    """A cover column: which individuals each aggregated group covered (see the module docstring)."""
    return name.startswith(f"{RESERVED_PREFIX}_{COVER_KIND}")


def materialize(frame: Frame) -> Frame:
    """Drop groups below the threshold now, before anything else can look at them."""
    if not frame.pending:
        return frame
    covers = [p for p in frame.preds if is_cover(p)]
    lf = frame.lf.filter(pl.col(OK_COLUMN)).drop([OK_COLUMN, SUPPRESSED_COLUMN, *covers])
    # A step of its own keeps the pending frame (and its cover column) reachable for `cover_roots`.
    return frame.evolve(step=Step("materialize", (frame,), ()), lf=lf, pending=False,
                        preds=tuple(p for p in frame.preds if not is_cover(p)))


def cover_roots(frame: Frame) -> list[tuple[Frame, str]]:
    """Every aggregation over individuals `frame` is computed from, with its cover column.

    Why walk the plan: a result computed from aggregated rows (a filter, head
    or join after `group_by`) shows a function of that aggregation's groups,
    so the release checks all of them; `frame` itself, when still pending,
    carries the cover of exactly the rows it releases.
    """
    out: list[tuple[Frame, str]] = []
    seen: set[int] = set()
    stack = [frame]
    while stack:
        f = stack.pop()
        if id(f) in seen:
            continue
        seen.add(id(f))
        inputs = f.step.inputs
        if f.pending and inputs and inputs[0].row_level:
            name = next((p for p in f.preds if is_cover(p)), None)
            if name is not None:
                out.append((f, name))
        stack.extend(inputs)
    return out


@dataclass(frozen=True, eq=False)
class CoverSpec:
    """How to list which individuals an aggregation's groups hold (`policy.history` runs it when needed).

    `disjoint[j]`: each individual of unit j has all its rows in one group (one
    row each, or keys that are a function of the individual), so two groups of
    the aggregation never share one. `split[j][i]`: likewise each individual is
    on one side of condition i only. `plan_id`: identity of the input rows, the
    keys and the units, set only when the plan is deterministic (row-wise
    steps and expressions only): with the same file versions, equal plan_ids
    mean equal sets, so a re-run needs no comparison. `mask_ids` name each
    condition the same way across sessions.
    """

    lf: pl.LazyFrame = field(repr=False, compare=False)
    keys: tuple[pl.Expr, ...]
    masks: tuple[pl.Expr, ...]
    units: tuple[Unit, ...]
    datasets: frozenset[str]
    disjoint: tuple[bool, ...]
    split: tuple[tuple[bool, ...], ...]
    plan_id: str | None
    mask_ids: tuple[str, ...]


def cover_spec(root: Frame) -> CoverSpec:
    """The `CoverSpec` of an aggregation frame (one `cover_roots` returned)."""
    src = root.step.inputs[0]
    keys, aggs = list(root.step.detail[0]), list(root.step.detail[1])
    table = _mask_table(aggs, src.columns)
    key_by = [determined_by(k, src) for k in keys]
    disjoint, split = [], []
    for u in src.units:
        one = u.rows_max == 1
        disjoint.append(one or all(u.column in b for b in key_by))
        row: list[bool] = []
        for key, _, _ in table:
            cond = key[1] if key[0] == "expr" else None
            row.append(one or (cond is not None and u.column in determined_by(rules.aligned(cond), src)))
        split.append(tuple(row))
    mask_ids = tuple(repr(("expr", rules.aligned(key[1])) if key[0] == "expr" else ("flag", src.preds.index(key[1])))
                     for key, _, _ in table)
    canon = _canon(src)
    deterministic = canon is not None and all(rowwise(k) for k in keys) and all(
        rowwise(rules.aligned(key[1])) for key, _, _ in table if key[0] == "expr")
    plan_id = None
    if deterministic:
        plan_id = hashlib.sha256(f"{canon}|keys{tuple(keys)!r}".encode()).hexdigest()
    return CoverSpec(src.lf, tuple(C.expr(k) for k in keys), tuple(m for _, m, _ in table), src.units,
                     src.datasets, tuple(disjoint), tuple(split), plan_id, mask_ids)


_CANON_VERBS = frozenset({"scan", "filter", "select", "with_columns", "rename", "drop", "join"})


def _canon(frame: Frame) -> str | None:
    """A text that determines `frame`'s rows exactly, or None when some step depends on row order."""
    step = frame.step
    if step.verb not in _CANON_VERBS or not frame.row_level:
        return None
    if not all(rowwise(e) for e in _exprs_in_detail(step.detail)):
        return None
    inputs = [_canon(f) for f in step.inputs]
    if any(i is None for i in inputs):
        return None
    return f"{step.verb}{step.detail!r}[{';'.join(inputs)}]"  # type: ignore[arg-type]


def _exprs_in_detail(detail: Any) -> list[Expr]:
    if isinstance(detail, Expr):
        return [detail]
    if isinstance(detail, (list, tuple)):
        return [e for d in detail for e in _exprs_in_detail(d)]
    if isinstance(detail, dict):
        return [e for d in detail.values() for e in _exprs_in_detail(d)]
    return []


def _dataset(frame: Frame) -> str | None:
    return ",".join(sorted(frame.datasets)) or None


def _violations(frame: Frame, found: list[tuple[str, str, str]]) -> tuple[Violation, ...]:
    extra = tuple(Violation(r, _dataset(frame), m, h) for r, m, h in found)
    return frame.violations + tuple(v for v in extra if v not in frame.violations)


_TEMPORAL = ("Date", "Datetime", "Time", "Duration")


def check_columns(node: Expr, frame: Frame, ctx: Ctx) -> None:
    """Every column reference must name a visible column; casts polars cannot do are refused now.

    A cast polars does not support fails only when a row reaches it, so letting
    it run would make "error or not" an oracle on whichever rows a condition kept.
    """
    from .grammar import suggest

    for n in walk(node):
        if isinstance(n, Col) and n.name not in frame.columns:
            raise PlanError(
                f"no column `{n.name}` in this frame",
                hint=suggest(n.name, list(frame.columns)) or f"columns: {', '.join(frame.columns)}",
                position=ctx.position,
            )
    for n in walk(node):
        if isinstance(n, Call) and n.fn == "cast":
            target = dict(n.kwargs).get("dtype")
            if getattr(target, "name", None) in _TEMPORAL:
                src = _schema(frame.lf.select(C.expr(n.recv)), ctx.position).dtypes()[0]
                if src == pl.String:
                    raise PlanError(
                        f"text cannot be cast to {target.name}",
                        hint="parse it with .str.to_date(format) or .str.to_datetime(format)",
                        position=ctx.position,
                    )


def _out_names(frame: Frame, exprs: list[Expr], ctx: Ctx) -> list[tuple[str, Any]]:
    compiled = [C.expr(e) for e in exprs]
    schema = _schema(frame.lf.select(compiled), ctx.position)
    if len(schema) != len(exprs):
        raise PlanError("two outputs have the same name", hint="name them with .alias(...)", position=ctx.position)
    return list(schema.items())


def _info_for(e: Expr, frame: Frame, dtype: Any, new_preds: frozenset[str]) -> ColumnInfo:
    refs = rules.referenced(e)
    masked = any(frame.columns[c].masked for c in refs)
    preds = frozenset().union(*(frame.columns[c].preds for c in refs)) | new_preds if refs else new_preds
    unit_of = None
    base = e
    while isinstance(base, Call) and base.fn in ("alias", "name.suffix", "name.prefix"):
        base = base.recv
    if isinstance(base, Col):
        unit_of = frame.columns[base.name].unit_of
    # products=0: a product kept in a column could be multiplied again later, one product per cell.
    nonlinear = bool(rules.nonlinear_ops(e, frame.columns, products=0))
    return ColumnInfo(dtype=dtype, masked=masked, unit_of=unit_of, preds=preds, nonlinear=nonlinear,
                      by_unit=determined_by(e, frame))


_ROWWISE_KINDS = frozenset({"elem", "pred", "name"})


def rowwise(e: Expr) -> bool:
    """Every node computes from its own row only, the same way on every run (no order, window or aggregate)."""
    for n in walk(e):
        if not isinstance(n, (Col, Lit, Call, Func, BinOp, UnOp, When)):
            return False
        if isinstance(n, Call) and rules.kind_of(n) not in _ROWWISE_KINDS:
            return False
    return True


def determined_by(e: Expr, frame: Frame) -> frozenset[str]:
    """The unit columns whose individuals each see one value of `e` (see `ColumnInfo.by_unit`)."""
    if not frame.row_level or not rowwise(e):
        return frozenset()
    sets = [frame.columns[c].by_unit for c in rules.referenced(e)]
    return frozenset.intersection(*sets) if sets else frozenset(u.column for u in frame.units)


def _materialize_preds(frame: Frame, exprs: list[Expr], ctx: Ctx) -> tuple[list[frozenset[str]], list[pl.Expr], list[str]]:
    """Keep every condition computed on rows as a bookkeeping flag column."""
    per_expr: list[frozenset[str]] = []
    new_cols: list[pl.Expr] = []
    names: list[str] = []
    for e in exprs:
        mine: set[str] = set()
        for n in walk(e):
            if rules.is_predicate(n):
                name = ctx.fresh("p")
                new_cols.append(C.expr(n).fill_null(False).alias(name))
                names.append(name)
                mine.add(name)
        per_expr.append(frozenset(mine))
    return per_expr, new_cols, names


def probe(exprs: list[Expr], frame: Frame, ctx: Ctx, role: str = "a select") -> None:
    """Check lengths (`rules.check_lengths`, as `role`), then types on made-up rows of `frame`'s column types.

    Why every verb, row-level or not: polars checks some types only when a row
    reaches the operation (`-(x > 3)`, `-pl.col("zip")`), so without this the
    error would come only when a filter kept someone, an oracle on who is there.
    `rules.check_masked` does the same for filters, keys and aggregate inputs of
    row-level frames; this covers the rest (row-level select/with_columns, and
    every verb on aggregated frames, whose rows are data too).

    The length rule matters on aggregated frames too: there a value whose count
    depends on the data (`pl.col("m").filter(c) + pl.col("m")`) fails only for
    some values of `m`, an oracle on what review would otherwise guard.
    """
    dtypes = {n: info.dtype for n, info in frame.columns.items()}
    for e in exprs:
        rules.check_lengths(e, role, ctx.position)
        try:
            C.probe(e, dtypes)
        except PlanError as exc:
            raise exc.with_position(ctx.position) from None


def select(frame: Frame, exprs: list[Expr], ctx: Ctx, *, keep: bool = False) -> Frame:
    """`select` (keep=False) or `with_columns` (keep=True) of expanded expressions."""
    for e in exprs:
        check_columns(e, frame, ctx)
    if frame.row_level and not keep and exprs and all(rules.level(e) == "scalar" for e in exprs):
        return aggregate(frame, [], exprs, ctx, verb="select")  # probes each input (`rules.check_masked`)
    probe(exprs, frame, ctx)
    if frame.pending and not all(isinstance(e, Col) for e in exprs):
        frame = materialize(frame)
    violations = frame.violations
    new_pred_cols: list[pl.Expr] = []
    pred_names: list[str] = []
    per_expr = [frozenset()] * len(exprs)
    if frame.row_level:
        for e in exprs:
            violations = _violations(frame.evolve(violations=violations), rules.row_expr_violations(e, "a row-level select"))
        per_expr, new_pred_cols, pred_names = _materialize_preds(frame, exprs, ctx)
    outs = _out_names(frame, exprs, ctx)
    infos = {name: _info_for(e, frame, t, per_expr[i]) if frame.row_level else ColumnInfo(t)
             for i, (e, (name, t)) in enumerate(zip(exprs, outs))}
    compiled = [C.expr(e) for e in exprs]
    # Condition flags are computed on the input rows, before any column is replaced.
    base = frame.lf.with_columns(new_pred_cols) if new_pred_cols else frame.lf
    hidden = [pl.col(h) for h in [*frame.hidden, *pred_names]]
    if keep:
        columns = dict(frame.columns)
        columns.update(infos)
        lf = base.with_columns(compiled).select([*map(pl.col, columns), *hidden])
    else:
        columns = infos
        lf = base.select([*compiled, *hidden])
    out = frame.evolve(
        step=Step("with_columns" if keep else "select", (frame,), tuple(exprs)),
        columns=columns, lf=lf, violations=violations, preds=frame.preds + tuple(pred_names),
    )
    return _finish(out, ctx)


def filter_(frame: Frame, preds: list[Expr], ctx: Ctx) -> Frame:
    frame = materialize(frame)
    for p in preds:
        check_columns(p, frame, ctx)
    violations = frame.violations
    if frame.row_level:
        for p in preds:
            rules.check_masked(p, frame.columns, "a filter condition", _dataset(frame), ctx.position)
            violations = _violations(frame.evolve(violations=violations), rules.row_expr_violations(p, "a filter"))
    else:
        probe(preds, frame, ctx, "a filter")
    lf = frame.lf.filter(*[C.expr(p) for p in preds])
    return _finish(frame.evolve(step=Step("filter", (frame,), tuple(preds)), lf=lf, violations=violations), ctx)


def sort(frame: Frame, by: list[Expr], ctx: Ctx, descending: Any, nulls_last: bool | None) -> Frame:
    for e in by:
        check_columns(e, frame, ctx)
    if frame.pending and not all(isinstance(e, Col) for e in by):
        frame = materialize(frame)
    violations = frame.violations
    if frame.row_level:
        for e in by:
            rules.check_masked(e, frame.columns, "a sort key", _dataset(frame), ctx.position)
            violations = _violations(frame.evolve(violations=violations), rules.row_expr_violations(e, "a sort key"))
    else:
        probe(by, frame, ctx, "a sort key")
    kwargs: dict[str, Any] = {}
    if descending is not None:
        kwargs["descending"] = descending
    if nulls_last is not None:
        kwargs["nulls_last"] = nulls_last
    lf = frame.lf.sort([C.expr(e) for e in by], **kwargs)
    return _finish(frame.evolve(step=Step("sort", (frame,), tuple(by)), lf=lf, violations=violations), ctx)


def slice_(frame: Frame, verb: str, offset: int, length: int | None, ctx: Ctx) -> Frame:
    frame = materialize(frame)
    if verb == "tail":
        lf = frame.lf.tail(length if length is not None else 5)
    else:
        lf = frame.lf.slice(offset, length)
    return _finish(frame.evolve(step=Step(verb, (frame,), (offset, length)), lf=lf), ctx)


def rename(frame: Frame, mapping: dict[str, str], ctx: Ctx) -> Frame:
    for old, new in mapping.items():
        if old not in frame.columns:
            check_columns(Col(old), frame, ctx)
        if is_reserved(new):
            raise PlanError(f"column names starting with {RESERVED_PREFIX!r} are reserved", position=ctx.position)
    columns = {mapping.get(n, n): info for n, info in frame.columns.items()}
    if len(columns) != len(frame.columns):
        raise PlanError("the rename gives two columns the same name", position=ctx.position)
    lf = frame.lf.rename(mapping)
    return _finish(frame.evolve(step=Step("rename", (frame,), (mapping,)), columns=columns, lf=lf), ctx)


def drop(frame: Frame, names: list[str], ctx: Ctx) -> Frame:
    for n in names:
        check_columns(Col(n), frame, ctx)
    columns = {n: i for n, i in frame.columns.items() if n not in names}
    lf = frame.lf.drop(names)
    return _finish(frame.evolve(step=Step("drop", (frame,), tuple(names)), columns=columns, lf=lf), ctx)


def _at_least(u: Unit, mask: pl.Expr | None) -> pl.Expr:
    """Exactly whether the group's rows (where `mask` holds) hold at least k distinct individuals of `u`.

    Why not always `n_unique`: hashing every id per group costs several times
    the user's query, and on the streaming engine it keeps every (group, id)
    pair in memory. With at most M rows per individual (`Unit.rows_max`):
    - M = 1: distinct ids are rows with an id, a plain count;
    - M > 1: any k·M rows with an id hold at least k individuals, so the
      first k·M such rows decide it (fewer rows: they are the whole group);
      a release run straight from the aggregation goes further (`FastChecks`);
    - unknown M: the distinct count itself.
    """
    ids = pl.col(u.column)
    if u.rows_max == 1:
        return _rows_with_id(u, mask) >= u.k
    kept = (ids if mask is None else ids.filter(mask)).drop_nulls()
    if u.rows_max is not None:
        kept = kept.head(u.k * u.rows_max)
    return kept.n_unique() >= u.k


def _rows_with_id(u: Unit, mask: pl.Expr | None) -> pl.Expr:
    """Rows (where `mask` holds) that carry an id of `u`: a sum, free next to any aggregate."""
    if mask is None:
        return pl.len() if u.nonnull else pl.col(u.column).count()
    return (mask if u.nonnull else mask & pl.col(u.column).is_not_null()).sum()


@dataclass(frozen=True, eq=False)
class _Term:
    """One "at least k individuals" test, computed as a column of the aggregation."""

    name: str
    unit: Unit
    exact: pl.Expr  # boolean, exact (what the lazy frame uses)
    rows: pl.Expr | None  # rows with an id, when a row count can decide most groups (M > 1)


@dataclass(frozen=True, eq=False)
class _Checks:
    """The threshold as aggregation columns (`terms`, `zeros`) and tests over them (`group_ok`, `cells`)."""

    terms: list[_Term]
    zeros: list[pl.Expr]  # "no individual on this side" tests, exact and cheap
    group_ok: pl.Expr | None
    cells: list[pl.Expr | None]
    stats: list[pl.Expr] = field(default_factory=list)  # the dominance rule's aggregations (`_Dom`)
    doms: list[_Dom] = field(default_factory=list)  # dominance tests that may need the exact pass

    def with_dominance(self, facts_list: list[rules.AggFacts], units: tuple, ctx: Ctx, numeric: dict[Expr, str],
                       summed: frozenset[Expr], filled: frozenset[str], settled: frozenset[Expr],
                       bounds: dict[Expr, tuple[float, float]] | None = None) -> _Checks:
        """These threshold checks and, per cell, the dominance rule (`_dominance`) over its values.

        `summed`: values the user's own aggregates sum (the rule reuses those sums).
        `filled`: columns without nulls (`UnitProfile.filled`).
        `settled`: values no individual can dominate, as the file's facts show (`_settled_by_file`), or as an
        earlier release over the same file version and group keys saw (`_cleared_groups`).
        `bounds`: values' known ranges, for the two-pass release only (`_dominance_bounded`).
        The threshold's columns are shared by every variant built from the same checks.
        """
        stats: list[pl.Expr] = []
        doms: list[_Dom] = []
        cells: list[pl.Expr | None] = []
        for facts, cell in zip(facts_list, self.cells):
            for value in facts.values:
                if value in settled:
                    continue
                c = _dominance(value, units, ctx, stats, doms, numeric.get(value), value in summed,
                               (bounds or {}).get(value), _values_mask(rules.aligned(value), filled))
                if c is not None:
                    cell = c if cell is None else cell & c
            cells.append(cell)
        return dataclasses.replace(self, cells=cells, stats=stats, doms=doms)


@dataclass(frozen=True, eq=False)
class _Dom:
    """One dominance test (`rules.dominated`): one value's input, one unit, per group.

    The aggregation itself computes, over the values the aggregate is fed,
    their count, mean, sum of squared deviations (var(ddof=0) * count),
    largest and smallest (count and mean shared with the threshold's and the
    user's own aggregates), which decide `rules.dominance_bound` (`quick`:
    True clear, False dominated, null open; M = None, rows per individual
    unknown: open unless all values are equal). With one row per individual
    nothing is open, except where the two-pass release uses the values' range
    instead of each group's extremes (`_dominance_bounded`, `one_row`). An
    open group takes the exact test, ``<name>_x`` (`_dominance_exact`): in the
    lazy frame for every group, in `FastChecks` for the open groups only.
    Same answer either way.
    """

    name: str
    unit: Unit
    value: Expr  # the aggregate's input as written (`x.filter(c)` in `x.filter(c).sum()`)
    quick: pl.Expr
    # One row per individual, bound by the values' range (`_dominance_bounded`): the exact test is the
    # group's own aggregations, then the test over them (built only when some group is left open).
    one_row: Callable[[], tuple[list[pl.Expr], pl.Expr]] | None = None


def _dominance(value: Expr, units: tuple, ctx: Ctx, stats: list[pl.Expr], doms: list[_Dom],
               numeric: str | None = None, summed: bool = False,
               bound: tuple[float, float] | None = None, mask: pl.Expr | None = None) -> pl.Expr | None:
    """Whether no individual of any unit dominates `value` (a column test over the aggregation's output).

    Appends the aggregations it reads to `stats` and the tests that may need
    the exact pass to `doms`. None when every unit switched the rule off.
    `numeric` ("int" or "float"): the value is such a column, aggregated as it
    is (a cast of every row costs more than the five aggregates themselves);
    anything else (booleans, dates, decimals) is read as Float64 row by row.
    Integers beyond 2^53 fail closed: Float64 cannot tell them apart, while
    their integer sum is exact (`(x + 2**62).sum()` must not look all-equal).
    `summed`: the user's aggregates sum this float value too, so its mean is
    that sum over the count, both computed once (polars shares equal
    expressions); otherwise the mean is shared with a user's `mean()`.
    Floats only: an integer column's sum can wrap around, its mean cannot.

    `bound` (lo, hi): every value lies in this range (`_value_bounds`: a dataset
    column's extremes in its file, one row per individual). Then the largest
    squared deviation is at most max((hi - mean)², (lo - mean)²), so a group
    that passes with it passes the exact test, without the per-group max and
    min; a group it cannot clear is left open (null) for the exact test of
    `FastChecks.second`, over just those groups. Same answer either way.
    `mask`: the rows where the value is not null (`_values_mask`; None: all).
    """
    live = [u for u in units if u.max_share < 1]
    if not live:
        return None
    x = C.expr(value) if numeric else C.expr(value).to_physical().cast(pl.Float64, strict=False)
    n, mean, ss, hi, lo = (ctx.fresh("d") for _ in range(5))
    # The count is spelled as the support threshold spells it (`at_least` in `_unit_checks`, `mask` from
    # `_values_mask`), so polars computes it once. (`x.filter(c).is_not_null().sum()` would leave polars'
    # fast group-by path.)
    count = pl.len() if mask is None else mask.sum()
    average = x.sum() / count if summed and numeric == "float" else x.mean()
    # var(), not a sum of squares: as fast on a column, and faster on `x.filter(c)` than squaring its
    # aligned `when(c).then(x)` (measured at 4M rows: 86 vs 98 ms), with no cancellation to allow for.
    stats += [count.alias(n), average.cast(pl.Float64).alias(mean),
              (x.var(ddof=0).cast(pl.Float64) * count).alias(ss)]
    mean_, ss_ = pl.col(mean), pl.col(ss)
    if bound is not None and numeric and all(u.rows_max == 1 for u in live):

        def one_pass() -> tuple[list[pl.Expr], pl.Expr]:
            exact_stats: list[pl.Expr] = []
            exact = _dominance(value, tuple(live), ctx, exact_stats, [], numeric, summed, None, mask)
            assert exact is not None
            return exact_stats, exact

        return _dominance_bounded(value, live, ctx, doms, pl.col(n), mean_, ss_, bound, one_pass)
    stats += [x.max().cast(pl.Float64).alias(hi), x.min().cast(pl.Float64).alias(lo)]
    dev2 = pl.max_horizontal((pl.col(hi) - mean_) ** 2, (pl.col(lo) - mean_) ** 2)
    # NaN compares as the largest value in polars, so finiteness is tested, never implied.
    finite = mean_.is_finite() & ss_.is_finite() & dev2.is_finite()
    if numeric == "int":
        finite = finite & (pl.col(hi).abs() <= EXACT_INT) & (pl.col(lo).abs() <= EXACT_INT)
    equal = pl.col(hi) == pl.col(lo)  # SS = 0: no one dominates (and no rounding noise decides)
    out: pl.Expr | None = None
    for u in live:
        s, m = u.max_share, u.rows_max
        spread_ok = equal if m is None else equal | (dev2 * m <= ss_ * s)
        rows_ok = pl.lit(False) if m is None else pl.col(n) * s >= m
        quick = (pl.when(pl.col(n) == 0).then(True)
                 .when(~finite).then(False)
                 .when(pl.col(n) * s < 1).then(False)  # one value is already too many values
                 .when(~equal & (dev2 > ss_ * s)).then(False)  # one row alone holds too much: its individual does
                 .when(spread_ok & rows_ok).then(True)
                 .otherwise(None))
        if u.rows_max == 1:
            ok = quick.fill_null(False)
        else:
            name = ctx.fresh("dx")
            doms.append(_Dom(name, u, value, quick))
            ok = pl.when(quick.is_not_null()).then(quick).otherwise(pl.col(f"{name}_x").fill_null(False))
        out = ok if out is None else out & ok
    return out


def _dominance_bounded(value: Expr, live: list[Unit], ctx: Ctx, doms: list[_Dom], n: pl.Expr, mean: pl.Expr,
                       ss: pl.Expr, bound: tuple[float, float],
                       exact: Callable[[], tuple[list[pl.Expr], pl.Expr]]) -> pl.Expr:
    """`_dominance` with the values' range known (one row per individual): clear or open, never suppress here.

    With one row per individual the exact test is "all values equal, or the
    largest squared deviation is at most `max_share` of SS". The range's
    deviation is at least the group's, so passing with it is passing; a
    group it does not clear (or where SS is 0, which rounding could also
    give) is open, and `FastChecks` decides it exactly from the group's rows:
    `exact` builds the aggregations and test of the one-pass form, for just those groups.
    """
    lo, hi = bound
    dev2 = pl.max_horizontal((pl.lit(hi) - mean) ** 2, (pl.lit(lo) - mean) ** 2)
    finite = mean.is_finite() & ss.is_finite()
    quick: pl.Expr | None = None
    for u in live:  # every unit's test: clear only where all of them clear
        s = u.max_share
        q = (pl.when(n == 0).then(True)
             .when(~finite).then(False)
             .when(n * s < 1).then(False)  # one value is already too many values
             .when((ss > 0) & (dev2 <= ss * s)).then(True)
             .otherwise(None))
        quick = q if quick is None else pl.when(quick.is_null() | q.is_null()).then(None).otherwise(quick & q)
    assert quick is not None
    name = ctx.fresh("dx")
    doms.append(_Dom(name, live[0], value, quick, exact))
    return pl.when(quick.is_not_null()).then(quick).otherwise(pl.col(f"{name}_x").fill_null(False))


_SAFE_REORDER = frozenset({"drop_nulls", "sort", "sort_by", "reverse"})


def _dominance_rows(value: Expr, keys: tuple[pl.Expr, ...]) -> pl.Expr | None:
    """`value` with one value per input row, as the aggregate sees it per group (None: no such form).

    A filter becomes nulls (`rules.aligned`), which the aggregate skips too;
    anything computed per group inside (`x - x.mean()`) is computed per group
    (`over`). `unique` and friends change which values there are, so they have
    no row form: an open group with them is suppressed (fail closed).
    """
    if any(isinstance(n, Call) and n.fn in rules.REORDERING and n.fn not in _SAFE_REORDER for n in walk(value)):
        return None
    row = C.expr(rules.aligned(value))
    if keys and not rowwise(rules.aligned(value)):
        row = row.over(list(keys))
    return row.to_physical().cast(pl.Float64, strict=False)


def _dominance_exact(source: pl.LazyFrame, keys: tuple[pl.Expr, ...], key_names: tuple[str, ...],
                     doms: list[_Dom]) -> pl.LazyFrame:
    """``<name>_x`` per group: the exact dominance test per individual, `rules.dominated` in polars.

    Per (group, individual): count, mean, squared deviations about the
    individual's own mean, largest and smallest; then per group
    D_u = within_u + n_u (mean_u - mean)^2, which sums exactly to the group's
    squared deviations without subtracting large squares (a shift by 1e15
    must not round the test away). Rows without the unit's id count in the
    totals, never as an individual. Only the columns it needs are read.
    """
    tmp = [f"{RESERVED_PREFIX}_dk{i}" for i in range(len(keys))]
    ident = f"{RESERVED_PREFIX}_did"
    tables: list[pl.LazyFrame] = []
    one_row = [d for d in doms if d.one_row is not None]
    if one_row:  # one row per individual: the group's own aggregations decide (`_dominance_bounded`)
        forms = [d.one_row() for d in one_row]  # type: ignore[misc]
        stats = [e for form_stats, _ in forms for e in form_stats]
        tests = [test.alias(f"{d.name}_x") for d, (_, test) in zip(one_row, forms)]
        agg = (source.group_by([k.alias(t) for k, t in zip(keys, tmp)]).agg(stats) if keys
               else source.select(stats))
        tables.append(agg.select([*tmp, *tests]))
    by_unit: dict[str, list[_Dom]] = {}
    for d in doms:
        if d.one_row is None:
            by_unit.setdefault(d.unit.column, []).append(d)
    for column, group in by_unit.items():
        rows = [_dominance_rows(d.value, keys) for d in group]
        base = source.select([*(k.alias(t) for k, t in zip(keys, tmp)), pl.col(column).alias(ident),
                              *(r.alias(f"v{i}") for i, r in enumerate(rows) if r is not None)])
        per_unit = []
        for i, r in enumerate(rows):
            if r is None:
                continue
            v = pl.col(f"v{i}")
            per_unit += [v.count().cast(pl.Float64).alias(f"n{i}"), v.mean().alias(f"m{i}"),
                         (v.var(ddof=0) * v.count()).alias(f"w{i}"), v.max().alias(f"h{i}"), v.min().alias(f"l{i}")]
        tests = []
        for i, (d, r) in enumerate(zip(group, rows)):
            if r is None:
                tests.append(pl.lit(False).alias(f"{d.name}_x"))
                continue
            n_u, m_u = pl.col(f"n{i}"), pl.col(f"m{i}")
            total_n = n_u.sum()
            mean = (n_u * m_u).sum() / total_n
            dev = pl.col(f"w{i}") + n_u * (m_u - mean) ** 2
            total = dev.sum()
            someone = pl.col(ident).is_not_null()
            top, most = dev.filter(someone).max(), n_u.filter(someone).max()
            share = d.unit.max_share
            ok = (pl.when(total_n == 0).then(True)
                  .when(~total.is_finite()).then(False)
                  .when(most > total_n * share).then(False)
                  .when(top.is_null() | (total <= 0) | (pl.col(f"h{i}").max() == pl.col(f"l{i}").min())).then(True)
                  .otherwise(top <= total * share))
            tests.append(ok.alias(f"{d.name}_x"))
        if per_unit:
            table = base.group_by([*tmp, ident]).agg(per_unit)
            table = table.group_by(tmp).agg(tests) if tmp else table.select(tests)
        else:
            table = (base.group_by(tmp).agg(tests) if tmp else base.select(tests).head(1))
        tables.append(table)
    out = tables[0]
    for t in tables[1:]:
        out = out.join(t, on=tmp, how="left", nulls_equal=True) if tmp else out.join(t, how="cross")
    return out.rename(dict(zip(tmp, key_names)))


def _open_dominance(source: pl.LazyFrame, first: pl.LazyFrame, keys: tuple[pl.Expr, ...],
                    key_names: tuple[str, ...], doms: list[_Dom]) -> pl.LazyFrame | None:
    """The lazy frame's exact dominance tests, over only the groups the bound leaves open.

    Same answer as `FastChecks.second`; reading only the open groups' rows keeps
    a frame computed further (sorted, filtered, joined) near the query's own
    cost where most groups are settled by the bound (polars computes the shared
    aggregation once).
    """
    if not doms:
        return None
    if not keys:
        return _dominance_exact(source, (), (), doms)
    tmp = _key_columns(len(keys))
    open_ = functools.reduce(operator.or_, [d.quick.is_null() for d in doms])
    wanted = first.filter(open_).select([pl.col(n).alias(t) for n, t in zip(key_names, tmp)])
    return _dominance_exact(_rows_of_groups(source, keys, tmp, wanted), tuple(pl.col(t) for t in tmp), key_names, doms)


def _key_columns(n: int) -> list[str]:
    """Names for a second pass's copies of the group keys (new columns: nothing is replaced)."""
    return [f"{RESERVED_PREFIX}_fk{i}" for i in range(n)]


def _rows_of_groups(source: pl.LazyFrame, keys: tuple[pl.Expr, ...], tmp: list[str],
                    wanted: pl.LazyFrame) -> pl.LazyFrame:
    """`source`'s rows in the groups `wanted` lists (keys named `tmp`), with their keys added as `tmp`."""
    return source.with_columns([k.alias(t) for k, t in zip(keys, tmp)]).join(wanted, on=tmp, how="semi",
                                                                          nulls_equal=True)


_ALL_ROWS_VERBS = frozenset({"sort", "drop"})  # keep a scan's columns as they are, and all its rows
_SAME_ROWS_VERBS = _ALL_ROWS_VERBS | {"filter"}  # keep a scan's columns as they are, rows a subset


def _under(frame: Frame, verbs: frozenset[str]) -> Frame:
    """The frame below `frame`'s last steps of these verbs."""
    while frame.step.verb in verbs:
        frame = frame.step.inputs[0]
    return frame


def _column_of(value: Expr) -> Col | None:
    """The column a dominance input is, or filters (`x`, `x.filter(c)`); None for anything computed."""
    base = value.recv if isinstance(value, Call) and value.fn == "filter" else value
    return base if isinstance(base, Col) else None


def _file_profile(frame: Frame, ctx: Ctx) -> UnitProfile | None:
    """The facts measured on the file (`sources.unit_profile`) where they hold for `frame`'s columns.

    Only where that is certain: the frame is one dataset's scan followed by
    filters, sorts and drops, so its columns are the file's own and its rows
    a subset of the file's. The facts are the file's current version's
    (`unit_profile` checks the version), cached once measured.
    """
    ds = _file_of(frame, ctx, _SAME_ROWS_VERBS)
    return None if ds is None else unit_profile(ds, ctx.state_dir, ctx.memory_mb)


def _file_of(frame: Frame, ctx: Ctx, verbs: frozenset[str]) -> DatasetConfig | None:
    """The dataset whose scan `frame` is, below steps of these verbs only (None: anything else)."""
    f = _under(frame, verbs)
    return ctx.sources.get(f.step.detail[0]) if f.step.verb == "scan" else None


def _one_each_over_file(frame: Frame, profile: UnitProfile | None) -> bool:
    """One individual per row, a dominance rule in force, and every row of the file (the scan, sorted
    or with columns dropped), as the file's facts (`profile`, from `_file_profile`) confirm."""
    return len(frame.units) == 1 and frame.units[0].rows_max == 1 and frame.units[0].max_share < 1 \
        and _under(frame, _ALL_ROWS_VERBS).step.verb == "scan" and profile is not None and profile.rows_max == 1


def _values_mask(value: Expr, filled: frozenset[str]) -> pl.Expr | None:
    """The rows where `value` (one per input row, `rules.aligned`) is not null: None for all of them.

    All of them for a column without nulls: then counting its values is the
    group's row count, which polars has at no cost (a count per value column
    measured about 5 ms per 4M rows on a 1000-group query). Such a column
    filtered (`x.filter(c)`, aligned `when(c).then(x)`) has a value exactly
    where `c` holds: the very mask the differencing counts read (`_mask_table`),
    which polars computes once, where a `when` would be computed per use.
    """
    if isinstance(value, Col) and value.name in filled:
        return None
    if isinstance(value, When) and len(value.branches) == 1 and value.otherwise is None:
        (cond, inner), = value.branches
        if isinstance(inner, Col) and inner.name in filled:
            return C.expr(cond).fill_null(False)
    return C.expr(value).is_not_null()


def _settled_by_file(frame: Frame, keys: list[Expr], facts: list[rules.AggFacts],
                     profile: UnitProfile | None) -> frozenset[Expr]:
    """Dominance inputs that the file's own facts clear, so the query computes nothing for them.

    Where one row is one individual and a column without nulls is aggregated
    over every row of its file (no group keys, no filter: the frame is the
    scan, sorted or with columns dropped), the one group is the whole file.
    Its sum of squared deviations is rows × the column's variance, and no
    value lies further from the mean than the column's range, so
    range² <= max_share × rows × variance clears it for every individual
    (`rules.dominated` with one row each), exactly as the query's own test
    would; a margin of 1e-9 keeps rounding from deciding. Otherwise the
    query tests the value as usual. `profile`: the file's facts (`_file_profile`).
    """
    if keys or not _one_each_over_file(frame, profile) or profile is None or profile.rows is None:
        return frozenset()
    share = frame.units[0].max_share
    out = set()
    for v in (v for fa in facts for v in fa.values):
        spread = profile.spread_of(v.name) if isinstance(v, Col) and v.name in profile.filled else None
        if spread is not None:
            lo, hi, var = spread
            if var > 0 and profile.rows * share >= 1 and (hi - lo) ** 2 <= share * profile.rows * var * (1 - 1e-9):
                out.add(v)
    return frozenset(out)


def _cleared_groups(frame: Frame, keys: list[Expr], facts: list[rules.AggFacts], profile: UnitProfile | None,
                    ctx: Ctx) -> tuple[frozenset[Expr], dict[Expr, Callable[[], None]]]:
    """Dominance inputs whose every group an earlier release over this file version cleared, and,
    for the others, how a release would note that it saw every group clear (`FastChecks.learn`).

    Where one row is one individual and the whole file (a scan, sorted or
    with columns dropped: no filter) is grouped by columns of its own, each
    group feeds an aggregate of a column (or of a column filtered by a
    row-wise condition, `x.filter(c)`) the same values in every query, so
    the rule's verdict per group is the same too: once a release saw every
    group clear, a later one over the same file version (sum, mean, std of
    that value by those keys, in any cell) computes no variance for it. A
    single group that did not clear, or was left open for the second pass,
    and nothing is noted: the query tests the value as usual.
    """
    ds = _file_of(frame, ctx, _ALL_ROWS_VERBS)
    if not keys or not all(isinstance(k, Col) for k in keys) or ds is None or not _one_each_over_file(frame, profile):
        return frozenset(), {}
    key = cleared_key(ds, tuple(k.name for k in keys if isinstance(k, Col)))
    share = frame.units[0].max_share
    seen = groups_cleared(key)
    cleared: set[Expr] = set()
    learn: dict[Expr, Callable[[], None]] = {}
    for v in dict.fromkeys(v for fa in facts for v in fa.values):
        # A column, or a column filtered by a condition computed from each row alone: the same values per
        # group in every query. (Learned only where the release bounds it by the column's range.)
        if _column_of(v) is not None and rowwise(rules.aligned(v)):
            what = repr(v)
            if (what, share) in seen:
                cleared.add(v)
            else:
                learn[v] = functools.partial(note_groups_cleared, ds, key, what, share)
    return frozenset(cleared), learn


def _value_bounds(frame: Frame, facts: list[rules.AggFacts], numeric: dict[Expr, str],
                  profile: UnitProfile | None) -> dict[Expr, tuple[float, float]]:
    """Ranges that hold for every value of each dominance input (`_dominance_bounded`), where known:
    the file's range of a column (`profile`, from `_file_profile`), with one row per individual, the
    input a column or a filter of one."""
    if len(frame.units) != 1 or frame.units[0].rows_max != 1:
        return {}
    if profile is None or profile.rows_max != 1:  # not the file's columns, or the file changed since
        return {}
    out: dict[Expr, tuple[float, float]] = {}
    for v in dict.fromkeys(v for fa in facts for v in fa.values):
        column = _column_of(v)
        bound = profile.range_of(column.name) if column is not None and numeric.get(v) else None
        if bound is not None:
            out[v] = bound
    return out


def _numeric_values(frame: Frame, facts: list[rules.AggFacts]) -> dict[Expr, str]:
    """The dominance inputs that are integer ("int") or float ("float") columns: a column's (or a
    filtered column's) type from the frame's schema, anything else's from one polars schema lookup."""
    values = list(dict.fromkeys(v for f in facts for v in f.values))
    types: dict[Expr, Any] = {}
    for v in values:
        column = _column_of(v)
        if column is not None and column.name in frame.columns:
            types[v] = frame.columns[column.name].dtype
    rest = [v for v in values if v not in types]
    if rest:
        try:
            found = frame.lf.select([C.expr(rules.aligned(v)).alias(f"v{i}") for i, v in enumerate(rest)]) \
                .collect_schema().dtypes()
        except Exception:  # noqa: BLE001 - no type, no shortcut: every row is read as Float64 instead
            found = [None] * len(rest)
        types.update(zip(rest, found))
    return {v: "int" if t.is_integer() else "float" for v, t in types.items()
            if t is not None and (t.is_integer() or t.is_float())}


def _with_dominance(lf: pl.LazyFrame, exact: pl.LazyFrame | None, key_names: tuple[str, ...],
                    doms: list[_Dom]) -> pl.LazyFrame:
    """The aggregation with each open dominance test's exact answer beside it (null where not computed)."""
    if not doms:
        return lf
    if exact is None:
        return lf.with_columns([pl.lit(None, pl.Boolean).alias(f"{d.name}_x") for d in doms])
    if key_names:
        return lf.join(exact, on=list(key_names), how="left", nulls_equal=True, maintain_order="left")
    return lf.join(exact, how="cross")


def _unit_checks(units: tuple, facts_list: list[rules.AggFacts], ctx: Ctx, filled: frozenset[str]) -> _Checks:
    """Polars aggregations deciding the group threshold and each cell's support (dominance:
    `_Checks.with_dominance`); `filled`: columns without nulls (`UnitProfile.filled`)."""
    terms: list[_Term] = []
    zeros: list[pl.Expr] = []

    def at_least(u: Unit, mask: pl.Expr | None) -> pl.Expr:
        name = ctx.fresh("q")
        rows = _rows_with_id(u, mask).cast(pl.Int64) if u.rows_max not in (None, 1) else None
        terms.append(_Term(name, u, _at_least(u, mask), rows))
        return pl.col(name)

    def none_with_id(u: Unit, mask: pl.Expr) -> pl.Expr:
        name = ctx.fresh("z")
        zeros.append((_rows_with_id(u, mask) == 0).alias(name))
        return pl.col(name)

    group_ok: pl.Expr | None = None
    for u in units:
        cond = at_least(u, None)
        group_ok = cond if group_ok is None else group_ok & cond
    cells: list[pl.Expr | None] = []
    for facts in facts_list:
        cell: pl.Expr | None = None
        for u in units:
            for s in facts.supports:
                c = at_least(u, _values_mask(s, filled))
                cell = c if cell is None else cell & c
            flags = [C.expr(p).fill_null(False) for p in facts.predicates]
            flags += [pl.col(q) for q in sorted(facts.lineage_preds)]
            for f in flags:
                c = at_least(u, f) & at_least(u, ~f)
                cell = c if cell is None else cell & c
            for p in facts.natural_null_checks:
                f = C.expr(p)
                c = (at_least(u, f) | none_with_id(u, f)) & at_least(u, ~f)
                cell = c if cell is None else cell & c
        cells.append(cell)
    return _Checks(terms, zeros, group_ok, cells)


OPEN_COLUMN = f"{RESERVED_PREFIX}_open"  # `FastChecks.finish(flag_open=True)`: the first pass left the answer open


def _learn_columns(n: int) -> list[str]:
    """`FastChecks.finish(flag_open=True)`'s columns: whether every group cleared each `learn` value's bound."""
    return [f"{RESERVED_PREFIX}_cleared{i}" for i in range(n)]


@dataclass(frozen=True, eq=False)
class FastChecks:
    """The same aggregation with the threshold decided in two passes, for a release run straight from it.

    Why: where individuals have several rows (M > 1), the exact test in the
    lazy frame reads each group's first k·M ids, which polars' streaming
    engine cannot do, so the whole query falls back to the in-memory engine
    (several times slower on a join, and all rows in memory). Here the first
    pass counts rows only (it streams): a group with at least k·M rows holds
    at least k individuals, one with fewer than k rows fewer than k; only the
    groups in between get the exact test, in a second pass over just those
    groups (`release.release_aggregate`). Same answer, bit for bit. The
    dominance rule works the same way (`_Dom`): its bound rides in the first
    pass, and only groups it leaves open get the exact per-individual test.
    """

    first: pl.LazyFrame  # aggregates + row counts per fast term + everything else the frame computes
    source: pl.LazyFrame  # the aggregation's input rows
    keys: tuple[pl.Expr, ...]
    key_names: tuple[str, ...]
    terms: tuple[_Term, ...]  # the terms with a row-count form
    post: Any  # LazyFrame with every term column as a boolean -> the frame's final columns
    doms: tuple[_Dom, ...] = ()  # dominance tests whose bound may leave a group open
    # Values whose every group, once seen to clear their bound, is noted for this file version (`_cleared_groups`).
    learn: tuple[tuple[Expr, Callable[[], None]], ...] = ()

    def _open(self) -> tuple[pl.Expr, pl.Expr]:
        """Which first-pass rows a term's row count leaves open, and which a dominance bound does."""
        terms = [(pl.col(t.name) >= t.unit.k) & (pl.col(t.name) < t.unit.k * (t.unit.rows_max or 1))
                 for t in self.terms]
        doms = [d.quick.is_null() for d in self.doms]
        return (functools.reduce(operator.or_, terms, pl.lit(False)),
                functools.reduce(operator.or_, doms, pl.lit(False)))

    def settle(self, first: pl.DataFrame, run: Callable[[pl.LazyFrame], pl.DataFrame]) -> pl.DataFrame:
        """The frame's result from the first pass (`run` collects each further step).

        Finished at once, saying beside each group whether a row count or
        bound left it open; where none did (the usual case at scale) that is
        the answer, in one small query. Otherwise the second pass decides the
        open groups (`second`), and the first pass is finished with its answers.
        """
        both = run(self.finish(first, None, flag_open=True))
        seen = _learn_columns(len(self.learn))
        for (_, note), name in zip(self.learn, seen):
            if both.get_column(name).all():
                note()
        both = both.drop(seen)
        is_open = both.get_column(OPEN_COLUMN)
        if not is_open.any():
            return both.drop(OPEN_COLUMN)
        return run(self.finish(first, run(self.second(first.filter(is_open)))))

    def second(self, rows: pl.DataFrame) -> pl.LazyFrame:
        """The exact terms (and dominance tests, as ``<name>_x``) for those groups only, each test
        only where it is open: the two passes read just the rows of their own groups."""
        exact = [t.exact.alias(t.name) for t in self.terms]
        if not self.keys:
            dom = _dominance_exact(self.source, (), (), list(self.doms)) if self.doms else None
            if not exact:
                assert dom is not None
                return dom
            out = self.source.select(exact)
            return out if dom is None else out.join(dom, how="cross")
        tmp = _key_columns(len(self.keys))
        term_open = self._open()[0]

        def only(cond: pl.Expr) -> pl.LazyFrame:
            wanted = rows.filter(cond).select([pl.col(n).alias(t) for n, t in zip(self.key_names, tmp)]).lazy()
            return _rows_of_groups(self.source, self.keys, tmp, wanted)

        groups = rows.select([pl.col(n).alias(t) for n, t in zip(self.key_names, tmp)]).lazy()
        if rows.filter(term_open).height:
            out = groups.join(only(term_open).group_by(tmp).agg(exact), on=tmp, how="left", nulls_equal=True)
        else:  # every term settled by its row count: do not read the input for nothing
            out = groups.with_columns([pl.lit(None, pl.Boolean).alias(t.name) for t in self.terms])
        # Per unit, only its tests that some group leaves open, over only those groups: on a cross
        # join each pass reads tens of millions of rows, so a test the bound settled costs nothing.
        for unit in dict.fromkeys(d.unit.column for d in self.doms):
            mine = [d for d in self.doms if d.unit.column == unit and rows.filter(d.quick.is_null()).height]
            if mine:
                cond = functools.reduce(operator.or_, [d.quick.is_null() for d in mine])
                dom = _dominance_exact(only(cond), tuple(pl.col(t) for t in tmp), tuple(tmp), mine)
                out = out.join(dom, on=tmp, how="left", nulls_equal=True)
        return out.rename(dict(zip(tmp, self.key_names)))

    def finish(self, df: pl.DataFrame, exact: pl.DataFrame | None, *, flag_open: bool = False) -> pl.LazyFrame:
        """The frame's result from the first pass and the exact answers where they were needed
        (`flag_open`: and ``OPEN_COLUMN``, whether the first pass left the row's answer open)."""
        lf = df.lazy()
        keep: tuple[str, ...] = ()
        if flag_open:
            seen = _learn_columns(len(self.learn))
            cleared = [functools.reduce(operator.and_, [d.quick.fill_null(False) for d in self.doms if d.value == v])
                       .alias(name) for (v, _), name in zip(self.learn, seen)]
            lf = lf.with_columns(functools.reduce(operator.or_, self._open()).fill_null(True).alias(OPEN_COLUMN),
                                 *cleared)
            keep = (OPEN_COLUMN, *seen)
        dom_x = [f"{d.name}_x" for d in self.doms]
        if exact is not None and exact.height and dom_x:
            exact = exact.with_columns([pl.lit(None, pl.Boolean).alias(x) for x in dom_x if x not in exact.columns])
            lf = _with_dominance(lf, exact.select([*self.key_names, *dom_x]).lazy(), self.key_names, list(self.doms))
            exact = exact.drop(dom_x)
        else:
            lf = _with_dominance(lf, None, self.key_names, list(self.doms))
        if exact is not None and exact.height:
            renamed = exact.rename({t.name: f"{t.name}_x" for t in self.terms})
            if self.key_names:
                lf = lf.join(renamed.lazy(), on=list(self.key_names), how="left", nulls_equal=True,
                             maintain_order="left")
            else:
                lf = lf.with_columns([pl.lit(renamed.get_column(f"{t.name}_x")[0]).alias(f"{t.name}_x")
                                      for t in self.terms])
        else:
            lf = lf.with_columns([pl.lit(None, pl.Boolean).alias(f"{t.name}_x") for t in self.terms])
        decided = [pl.when(pl.col(t.name) >= t.unit.k * (t.unit.rows_max or 1)).then(True)
                   .when(pl.col(t.name) < t.unit.k).then(False)
                   .otherwise(pl.col(f"{t.name}_x").fill_null(False)).alias(t.name) for t in self.terms]
        return self.post(lf.with_columns(decided), keep)


def aggregate(frame: Frame, keys: list[Expr], aggs: list[Expr], ctx: Ctx, *, verb: str = "group_by",
              maintain_order: bool = False) -> Frame:
    """`group_by(keys).agg(aggs)` (or a summary `select` when keys is empty)."""
    frame = materialize(frame)
    for e in [*keys, *aggs]:
        check_columns(e, frame, ctx)
    if not frame.row_level:
        return _plain_aggregate(frame, keys, aggs, ctx, maintain_order)
    ds = _dataset(frame)
    for k in keys:
        rules.check_masked(k, frame.columns, "a group key", ds, ctx.position)
    violations = frame.violations
    for k in keys:
        violations = _violations(frame.evolve(violations=violations), rules.row_expr_violations(k, "a group key"))
    for a in aggs:
        rules.check_masked(a, frame.columns, "an aggregate input", ds, ctx.position)
    keyed_units = {frame.columns[k.name].unit_of for k in keys if isinstance(k, Col)} - {None}
    if keys and all(u.column in keyed_units for u in frame.units):
        return _per_individual(frame, keys, aggs, ctx, maintain_order, violations)
    facts = [rules.analyse_agg(a, frame.columns) for a in aggs]
    for a, f in zip(aggs, facts):
        violations = _violations(frame.evolve(violations=violations), rules.agg_violations(f, ds, "an aggregate"))
    summed = frozenset(n.recv for a in aggs for n in walk(a) if isinstance(n, Call) and n.fn == "sum")
    numeric = _numeric_values(frame, facts)
    profile = _file_profile(frame, ctx)
    filled = frozenset(profile.filled if profile is not None else ())  # columns without a null
    cleared, learnable = _cleared_groups(frame, keys, facts, profile, ctx)
    settled = _settled_by_file(frame, keys, facts, profile) | cleared
    threshold = _unit_checks(frame.units, facts, ctx, filled)
    checks = threshold.with_dominance(facts, frame.units, ctx, numeric, summed, filled, settled)
    bounds = _value_bounds(frame, facts, numeric, profile)
    # The two-pass release may clear dominance with the values' ranges instead of per-group extremes;
    # the lazy frame (read when a later step follows) keeps the one-pass exact form.
    fast_checks = threshold.with_dominance(facts, frame.units, ctx, numeric, summed, filled, settled, bounds) \
        if bounds else checks
    outs = _out_names_agg(frame, keys, aggs, ctx)
    agg_exprs = [C.expr(a) for a in aggs]
    masks = _cover_masks(aggs, frame.columns)
    cover_counts, cover_fields = _cover_counts(frame.units, masks, ctx)
    cover = ctx.fresh(COVER_KIND)
    key_exprs = [C.expr(k) for k in keys]
    out_names = [n for n, _ in outs]
    agg_names = out_names[len(keys):]

    def first_pass(checks: _Checks, term_columns: list[pl.Expr]) -> pl.LazyFrame:
        common = [*checks.zeros, *checks.stats, *cover_counts]
        if keys:
            return frame.lf.group_by(key_exprs, maintain_order=maintain_order).agg(
                [*agg_exprs, *term_columns, *common])
        return frame.lf.select([*agg_exprs, *term_columns, *common])

    def post_of(checks: _Checks) -> Any:
        cell_names = [ctx.fresh("c") if c is not None else None for c in checks.cells]
        return functools.partial(post, checks, cell_names)

    def post(checks: _Checks, cell_names: list[str | None], lf: pl.LazyFrame, keep: tuple[str, ...] = ()) \
            -> pl.LazyFrame:
        decided = [c.alias(n) for c, n in zip(checks.cells, cell_names) if c is not None and n is not None]
        decided.append((checks.group_ok if checks.group_ok is not None else pl.lit(True)).alias(OK_COLUMN))
        lf = lf.with_columns(decided)
        suppress = []
        sup_count: pl.Expr = pl.lit(0, dtype=pl.UInt32)
        for name, cname in zip(agg_names, cell_names):
            if cname is not None:
                suppress.append(pl.when(pl.col(cname)).then(pl.col(name)).otherwise(None).alias(name))
                sup_count = sup_count + (~pl.col(cname)).cast(pl.UInt32)
        if suppress:
            lf = lf.with_columns(suppress)
        lf = lf.with_columns(sup_count.alias(SUPPRESSED_COLUMN))
        key_fields = [pl.col(n).alias(f"k{i}") for i, n in enumerate(out_names[:len(keys)])]
        lf = lf.with_columns(pl.struct([*key_fields, *cover_fields, *_released_words(masks, cell_names)]).alias(cover))
        return lf.select([*map(pl.col, out_names), pl.col(cover), pl.col(OK_COLUMN), pl.col(SUPPRESSED_COLUMN),
                          *map(pl.col, keep)])

    key_names = tuple(out_names[:len(keys)])
    lazy_first = first_pass(checks, [t.exact.alias(t.name) for t in checks.terms])
    dom_exact = _open_dominance(frame.lf, lazy_first, tuple(key_exprs), key_names, checks.doms)
    lf = post_of(checks)(_with_dominance(lazy_first, dom_exact, key_names, checks.doms))
    fast = None
    if any(t.rows is not None for t in fast_checks.terms) or fast_checks.doms:
        fc = fast_checks
        first = first_pass(fc, [(t.rows if t.rows is not None else t.exact).alias(t.name) for t in fc.terms])
        bounded = {d.value for d in fc.doms if d.one_row is not None}
        fast = FastChecks(first, frame.lf, tuple(key_exprs), key_names,
                          tuple(t for t in fc.terms if t.rows is not None), post_of(fc), tuple(fc.doms),
                          tuple((v, note) for v, note in learnable.items() if v in bounded))
    columns = {n: ColumnInfo(t) for n, t in outs}
    out = Frame(
        Step(verb, (frame,), (tuple(keys), tuple(aggs), fast)), columns, (), frame.datasets, lf,
        preds=(cover,), violations=violations, aggregated=True, pending=True,
    )
    return _finish(out, ctx)


Mask = tuple[pl.Expr, tuple[int, ...]]


def _conditions(node: Expr) -> list[Expr]:
    """The conditions that decide which individuals a value covers: each condition not
    nested in another one (`x.filter(c)`, `when(c)`, `x * (c)`, a `null_count`'s nulls).

    Why only the outermost: `x.filter(A & B)` covers the individuals where
    `A & B` holds; `A` alone is no part of the value (the split check still
    makes each part leave k individuals on both sides).
    """
    if rules.is_predicate(node):
        return [node]
    out: list[Expr] = []
    if isinstance(node, When):
        for cond, value in node.branches:
            if rules.referenced(cond):
                out.append(cond)
            out += _conditions(value)
        if node.otherwise is not None:
            out += _conditions(node.otherwise)
        return out
    if isinstance(node, Call) and node.fn == "filter":
        pred = dict(node.kwargs).get("predicate", node.args[0] if node.args else None)
        if isinstance(pred, Expr) and rules.referenced(pred):
            out.append(pred)
        return out + _conditions(node.recv)
    if isinstance(node, Call) and node.fn == "null_count":
        out.append(Call("is_null", node.recv))
    for child in node.children():
        out += _conditions(child)
    return out


def _cover_masks(aggs: list[Expr], columns: dict[str, ColumnInfo]) -> list[Mask]:
    return [(mask, users) for _, mask, users in _mask_table(aggs, columns)]


def _mask_table(aggs: list[Expr], columns: dict[str, ColumnInfo]) -> list[tuple[tuple[str, Any], pl.Expr, tuple[int, ...]]]:
    """Each distinct condition inside the aggregates, with the values (cells) that use it.

    A value over one side of a condition covers only that side's individuals,
    so each side is a set the history compares. A boolean column computed
    from conditions in an earlier cell is itself the condition; any other
    column computed from conditions brings all of their flags (more sets,
    never fewer). Null-skipping alone is not a condition: missing values add
    nothing to a sum or mean, and how many are missing is the null_count
    rule's business.
    """
    found: dict[tuple[str, Any], tuple[pl.Expr, list[int]]] = {}
    for cell, a in enumerate(aggs):
        keyed: list[tuple[tuple[str, Any], pl.Expr]] = [
            (("expr", c), C.expr(rules.aligned(c)).fill_null(False)) for c in _conditions(a)
        ]
        for name in sorted(rules.referenced(a)):
            info = columns[name]
            if info.preds and info.dtype == pl.Boolean:
                keyed.append((("expr", Col(name)), pl.col(name).fill_null(False)))
            elif info.preds:
                keyed += [(("flag", q), pl.col(q)) for q in sorted(info.preds)]
        for key, mask in keyed:
            users = found.setdefault(key, (mask, []))[1]
            if cell not in users:
                users.append(cell)
    return [(key, mask, tuple(users)) for key, (mask, users) in found.items()]


def _bits(flags: list[pl.Expr]) -> list[pl.Expr]:
    """Boolean flags packed into UInt64 words, bit i of word i // 64."""
    words = []
    for w in range(0, len(flags), 64):
        terms = [pl.when(f).then(pl.lit(1 << (i - w), pl.UInt64)).otherwise(pl.lit(0, pl.UInt64))
                 for i, f in enumerate(flags[w:w + 64], start=w)]
        words.append(functools.reduce(operator.add, terms))
    return words


def _cover_counts(units: tuple[Unit, ...], masks: list[Mask], ctx: Ctx) -> tuple[list[pl.Expr], list[pl.Expr]]:
    """Aggregations counting, per unit column, the group's rows with an id (``n<j>``) and how many
    of them each condition holds for (``t<j>_<i>``); and the struct fields that read them back.

    Counts, not ids: they bound each covered set's size (exactly, with one row
    per individual), which is all the differencing check needs unless a size
    comes within k of another set's (`policy.history`).
    """
    aggs: list[pl.Expr] = []
    fields: list[pl.Expr] = []
    for j, u in enumerate(units):
        has_id = None if u.nonnull else pl.col(u.column).is_not_null()
        parts = [(f"n{j}", pl.len() if has_id is None else pl.col(u.column).count())]
        parts += [(f"t{j}_{i}", (mask if has_id is None else mask & has_id).sum()) for i, (mask, _) in enumerate(masks)]
        for label, e in parts:
            name = ctx.fresh("t")
            aggs.append(e.cast(pl.Int64).alias(name))
            fields.append(pl.col(name).alias(label))
    return aggs, fields


def _released_words(masks: list[Mask], cell_names: list[str | None]) -> list[pl.Expr]:
    """Per group: bit i set when a value using condition i was released (not suppressed)."""
    shown = [
        functools.reduce(operator.or_, [pl.col(n) if (n := cell_names[c]) is not None else pl.lit(True)
                                        for c in users])
        for _, users in masks
    ]
    return [word.alias(f"m{w}") for w, word in enumerate(_bits(shown))]


def _out_names_agg(frame: Frame, keys: list[Expr], aggs: list[Expr], ctx: Ctx) -> list[tuple[str, Any]]:
    k = [C.expr(e) for e in keys]
    a = [C.expr(e) for e in aggs]
    lf = frame.lf.group_by(k).agg(a) if keys else frame.lf.select(a)
    schema = _schema(lf, ctx.position)
    if len(schema) != len(keys) + len(aggs):
        raise PlanError("two outputs have the same name", hint="name them with .alias(...)", position=ctx.position)
    for name in schema.names():
        if is_reserved(name):
            raise PlanError(f"column names starting with {RESERVED_PREFIX!r} are reserved", position=ctx.position)
    return list(schema.items())


def _plain_aggregate(frame: Frame, keys: list[Expr], aggs: list[Expr], ctx: Ctx, maintain_order: bool) -> Frame:
    """Aggregating already-released-grade groups: no individuals left to protect per row."""
    probe(keys, frame, ctx, "a group key")
    probe(aggs, frame, ctx, rules.AGGREGATE_INPUT)
    outs = _out_names_agg(frame, keys, aggs, ctx)
    k = [C.expr(e) for e in keys]
    a = [C.expr(e) for e in aggs]
    lf = frame.lf.group_by(k, maintain_order=maintain_order).agg(a) if keys else frame.lf.select(a)
    columns = {n: ColumnInfo(t) for n, t in outs}
    return _finish(frame.evolve(step=Step("group_by", (frame,), (tuple(keys), tuple(aggs))), columns=columns, lf=lf, preds=()), ctx)


def _per_individual(frame: Frame, keys: list[Expr], aggs: list[Expr], ctx: Ctx, maintain_order: bool,
                    violations: tuple[Violation, ...]) -> Frame:
    """Grouping by the privacy unit: each output row is still one individual (row-level)."""
    unit_cols = [pl.col(u.column) for u in frame.units]
    new_preds: list[str] = []
    pred_aggs: list[pl.Expr] = []
    infos_preds: list[frozenset[str]] = []
    infos_nonlinear: list[bool] = []
    for a in aggs:
        infos_nonlinear.append(bool(rules.nonlinear_ops(a, frame.columns, products=0)))
        facts = rules.analyse_agg(a, frame.columns)
        mine: set[str] = set()
        for p in facts.predicates:
            name = ctx.fresh("p")
            pred_aggs.append(C.expr(p).fill_null(False).any().alias(name))
            mine.add(name)
        for q in sorted(facts.lineage_preds):
            name = ctx.fresh("p")
            pred_aggs.append(pl.col(q).any().alias(name))
            mine.add(name)
        new_preds += sorted(mine)
        infos_preds.append(frozenset(mine))
    outs = _out_names_agg(frame, keys, aggs, ctx)
    k = [C.expr(e) for e in keys]
    lf = frame.lf.group_by([*k, *unit_cols], maintain_order=maintain_order).agg([*(C.expr(a) for a in aggs), *pred_aggs])
    names = [n for n, _ in outs]
    lf = lf.select([*map(pl.col, names), *unit_cols, *map(pl.col, new_preds)])
    columns: dict[str, ColumnInfo] = {}
    for i, (n, t) in enumerate(outs):
        if i < len(keys):
            columns[n] = _info_for(keys[i], frame, t, frozenset())
        else:
            columns[n] = ColumnInfo(t, preds=infos_preds[i - len(keys)], nonlinear=infos_nonlinear[i - len(keys)])
    out = frame.evolve(
        step=Step("group_by", (frame,), (tuple(keys), tuple(aggs))), columns=columns, lf=lf,
        preds=tuple(new_preds), violations=violations,
    )
    return _finish(out, ctx)


JOIN_HOWS = ("inner", "left", "right", "full", "cross")


def join(left: Frame, right: Frame, ctx: Ctx, *, on: list[Expr] | None, left_on: list[Expr] | None,
         right_on: list[Expr] | None, how: str, suffix: str, coalesce: bool | None) -> Frame:
    if how not in JOIN_HOWS:
        hint = "use how='inner' (semi/anti joins let one side's individuals steer the other's rows unseen)" \
            if how in ("semi", "anti") else f"allowed: {', '.join(JOIN_HOWS)}"
        raise PlanError(f"join how={how!r} is not available", hint=hint, position=ctx.position)
    if is_reserved(suffix):
        raise PlanError(f"column names starting with {RESERVED_PREFIX!r} are reserved", position=ctx.position)
    left, right = materialize(left), materialize(right)
    # Fresh names for the right side's bookkeeping columns, so a self-join keeps both.
    mapping = {h: ctx.fresh(h[len(RESERVED_PREFIX) + 1]) for h in right.hidden}
    r_lf = right.lf.rename(mapping)
    r_units = tuple(dataclasses.replace(u, column=mapping[u.column]) for u in right.units)
    r_preds = tuple(mapping[p] for p in right.preds)
    r_columns = {n: ColumnInfo(i.dtype, i.masked, mapping.get(i.unit_of) if i.unit_of else None,
                               frozenset(mapping[p] for p in i.preds), i.nonlinear,
                               frozenset(mapping[u] for u in i.by_unit)) for n, i in right.columns.items()}
    lk = on if on is not None else left_on
    rk = on if on is not None else right_on
    if how != "cross" and not lk:
        raise PlanError("join needs on=... (or left_on=/right_on=)", position=ctx.position)
    for side, keys, frame in (("left", lk or [], left), ("right", rk or [], right)):
        for k in keys:
            check_columns(k, frame, ctx)
            cols = frame.columns if side == "left" else r_columns
            rules.check_masked(k, cols, "a join key", _dataset(frame), ctx.position)
    kwargs: dict[str, Any] = {"how": how, "suffix": suffix}
    if coalesce is not None:
        kwargs["coalesce"] = coalesce
    if how != "cross":
        kwargs["left_on"] = [C.expr(k) for k in lk or []]
        kwargs["right_on"] = [C.expr(k) for k in rk or []]
    lf = left.lf.join(r_lf, **kwargs)
    schema = _schema(lf, ctx.position)
    hidden = set(left.hidden) | set(mapping.values())
    columns: dict[str, ColumnInfo] = {}
    for name, dtype in schema.items():
        if name in hidden:
            continue
        if is_reserved(name):
            raise PlanError(f"column names starting with {RESERVED_PREFIX!r} are reserved", position=ctx.position)
        if name in left.columns:
            info = left.columns[name]
        elif name in r_columns:
            info = r_columns[name]
        elif name.endswith(suffix) and name[: -len(suffix)] in r_columns:
            info = r_columns[name[: -len(suffix)]]
        else:
            info = ColumnInfo(dtype)
        columns[name] = ColumnInfo(dtype, info.masked, info.unit_of, info.preds, info.nonlinear,
                                   _same_individuals(info.by_unit, lk or [], rk or [], left.columns, r_columns))
    # How many rows one individual can have now: its rows times the other side's matches per key.
    if how == "cross":  # every row meets every row of the other side: at most its sources' rows multiplied
        match_r, match_l = _rows_bound(right, ctx), _rows_bound(left, ctx)
    else:
        match_r = _max_match(rk or [], r_columns, r_units)
        match_l = _max_match(lk or [], left.columns, left.units)
    units = tuple(dataclasses.replace(u, rows_max=_times(u.rows_max, match_r),
                                      nonnull=u.nonnull and how in ("inner", "left", "cross")) for u in left.units) + \
        tuple(dataclasses.replace(u, rows_max=_times(u.rows_max, match_l),
                                  nonnull=u.nonnull and how in ("inner", "right", "cross")) for u in r_units)
    preds = left.preds + r_preds
    lf = lf.select([*map(pl.col, columns), *(pl.col(u.column) for u in units), *map(pl.col, preds)])
    out = Frame(
        Step("join", (left, right), (how, tuple(lk or ()), tuple(rk or ()), suffix, coalesce)), columns, units,
        left.datasets | right.datasets, lf,
        preds=preds, violations=left.violations + tuple(v for v in right.violations if v not in left.violations),
        aggregated=left.aggregated or right.aggregated,
    )
    return _finish(out, ctx)


def _same_individuals(by_unit: frozenset[str], lk: list[Expr], rk: list[Expr], left: dict[str, ColumnInfo],
                      right: dict[str, ColumnInfo]) -> frozenset[str]:
    """`by_unit` after a join on unit ids: where a left key holds unit a's ids and the paired right key
    unit b's, every joined row has a = b, so a value fixed per individual of one is fixed per individual
    of the other (rows without a match have no id on the other side)."""
    out = set(by_unit)
    for a_key, b_key in zip(lk, rk):
        if not (isinstance(a_key, Col) and isinstance(b_key, Col)):
            continue
        a = left[a_key.name].unit_of if a_key.name in left else None
        b = right[b_key.name].unit_of if b_key.name in right else None
        if a and b:
            if a in out:
                out.add(b)
            if b in out:
                out.add(a)
    return frozenset(out)


def _max_match(keys: list[Expr], columns: dict[str, ColumnInfo], units: tuple[Unit, ...]) -> int | None:
    """At most this many rows of one side share a join key value: a key column holding a unit id
    has at most that unit's rows per value (None: not known)."""
    best: int | None = None
    by_column = {u.column: u for u in units}
    for k in keys:
        if isinstance(k, Col) and k.name in columns:
            unit = by_column.get(columns[k.name].unit_of or "")
            if unit is not None and unit.rows_max is not None:
                best = unit.rows_max if best is None else min(best, unit.rows_max)
    return best


def _rows_bound(frame: Frame, ctx: Ctx) -> int | None:
    """At most this many rows in a row-level frame: each unit is one scan, and no verb makes more rows
    than the product of its inputs' (None: not known, e.g. an aggregated frame)."""
    if not frame.row_level:
        return None
    out = 1
    for u in frame.units:
        rows = ctx.rows_of.get(u.dataset)
        if rows is None:
            return None
        out *= rows
    return out


def _times(rows_max: int | None, matches: int | None) -> int | None:
    """Rows per individual after a join (a row without a match still appears once in outer joins)."""
    return None if rows_max is None or matches is None else rows_max * max(1, matches)


def unique(frame: Frame, subset: list[Expr] | None, ctx: Ctx, maintain_order: bool, keep: str | None) -> Frame:
    """Distinct rows of individuals are groups: each distinct value must cover k individuals."""
    if frame.row_level:
        keys = subset if subset is not None else [Col(n) for n in frame.columns]
        others = [Call("first", Col(n)) for n, info in frame.columns.items()
                  if subset is not None and Col(n) not in subset and not info.masked]
        return aggregate(frame, keys, others, ctx, verb="unique", maintain_order=maintain_order)
    frame = materialize(frame)
    probe(list(subset or []), frame, ctx, "a unique subset")
    kwargs: dict[str, Any] = {"maintain_order": maintain_order}
    if keep:
        kwargs["keep"] = keep
    lf = frame.lf.unique(subset=[C.expr(e) for e in subset] if subset else None, **kwargs)
    return _finish(frame.evolve(step=Step("unique", (frame,), ()), lf=lf), ctx)

