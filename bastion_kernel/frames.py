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
- ``__bastion_cov<N>``: after such an aggregation, which individuals each group
  covered (sorted unit ids per unit column, with the conditions inside its
  values as bits), so the release can be checked against the user's earlier
  ones (`policy.history`). It lives in `Frame.preds` while the frame is
  pending and is dropped with ``__bastion_ok`` by `materialize`.
"""

from __future__ import annotations

import functools
import itertools
import operator
from dataclasses import dataclass
from typing import Any

import polars as pl

from . import compile as C
from .config import RESERVED_PREFIX, DatasetConfig
from .errors import PlanError, Position
from .plan import (
    OK_COLUMN, SUPPRESSED_COLUMN, Call, Col, ColumnInfo, Expr, Frame, Step, Unit, Violation, When, is_reserved, walk,
)
from .policy import rules
from .sources import scan
from .sources import schema as dataset_schema


@dataclass
class Ctx:
    """Per-session naming of bookkeeping columns and the current cell position."""

    counter: itertools.count
    position: Position | None = None

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
    masked = set(ds.masked)
    columns = {
        n: ColumnInfo(dtype=t, masked=n in masked, unit_of=unit_col if n == ds.privacy_unit else None)
        for n, t in schema.items()
    }
    unit = Unit(unit_col, ds.name, ds.min_group_size, ds.on_violation)
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
    return ColumnInfo(dtype=dtype, masked=masked, unit_of=unit_of, preds=preds, nonlinear=nonlinear)


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


def select(frame: Frame, exprs: list[Expr], ctx: Ctx, *, keep: bool = False) -> Frame:
    """`select` (keep=False) or `with_columns` (keep=True) of expanded expressions."""
    for e in exprs:
        check_columns(e, frame, ctx)
    if frame.row_level and not keep and exprs and all(rules.level(e) == "scalar" for e in exprs):
        return aggregate(frame, [], exprs, ctx, verb="select")
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


def _unit_checks(units: tuple, facts_list: list[rules.AggFacts]) -> tuple[pl.Expr | None, list[pl.Expr | None]]:
    """Polars aggregations deciding the group threshold and each cell's support."""
    group_ok: pl.Expr | None = None
    for u in units:
        cond = pl.col(u.column).drop_nulls().n_unique() >= u.k
        group_ok = cond if group_ok is None else group_ok & cond
    cells: list[pl.Expr | None] = []
    for facts in facts_list:
        cell: pl.Expr | None = None
        for u in units:
            uid = pl.col(u.column)

            def n(mask: pl.Expr) -> pl.Expr:
                return uid.filter(mask).drop_nulls().n_unique()

            for s in facts.supports:
                c = n(C.expr(s).is_not_null()) >= u.k
                cell = c if cell is None else cell & c
            flags = [C.expr(p).fill_null(False) for p in facts.predicates]
            flags += [pl.col(q) for q in sorted(facts.lineage_preds)]
            for f in flags:
                c = (n(f) >= u.k) & (n(~f) >= u.k)
                cell = c if cell is None else cell & c
            for p in facts.natural_null_checks:
                f = C.expr(p)
                c = ((n(f) >= u.k) | (n(f) == 0)) & (n(~f) >= u.k)
                cell = c if cell is None else cell & c
        cells.append(cell)
    return group_ok, cells


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
    group_ok, cells = _unit_checks(frame.units, facts)
    outs = _out_names_agg(frame, keys, aggs, ctx)
    cell_names = [ctx.fresh("c") if c is not None else None for c in cells]
    agg_exprs = [C.expr(a) for a in aggs]
    extra = [c.alias(n) for c, n in zip(cells, cell_names) if c is not None and n is not None]
    extra.append((group_ok if group_ok is not None else pl.lit(True)).alias(OK_COLUMN))
    masks = _cover_masks(aggs, frame.columns)
    cover_lists, cover_fields = _cover_lists(frame.units, masks, ctx, grouped=bool(keys))
    extra += cover_lists
    cover = ctx.fresh(COVER_KIND)
    key_exprs = [C.expr(k) for k in keys]
    if keys:
        lf = frame.lf.group_by(key_exprs, maintain_order=maintain_order).agg([*agg_exprs, *extra])
    else:
        lf = frame.lf.select([*agg_exprs, *extra])
    out_names = [n for n, _ in outs]
    agg_names = out_names[len(keys):]
    suppress = []
    sup_count: pl.Expr = pl.lit(0, dtype=pl.UInt32)
    for name, cname in zip(agg_names, cell_names):
        if cname is not None:
            suppress.append(pl.when(pl.col(cname)).then(pl.col(name)).otherwise(None).alias(name))
            sup_count = sup_count + (~pl.col(cname)).cast(pl.UInt32)
    if suppress:
        lf = lf.with_columns(suppress)
    lf = lf.with_columns(sup_count.alias(SUPPRESSED_COLUMN))
    lf = lf.with_columns(pl.struct([*cover_fields, *_released_words(masks, cell_names)]).alias(cover))
    lf = lf.select([*map(pl.col, out_names), pl.col(cover), pl.col(OK_COLUMN), pl.col(SUPPRESSED_COLUMN)])
    columns = {n: ColumnInfo(t) for n, t in outs}
    out = Frame(
        Step(verb, (frame,), (tuple(keys), tuple(aggs))), columns, (), frame.datasets, lf,
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
    return [(mask, tuple(users)) for mask, users in found.values()]


def _bits(flags: list[pl.Expr]) -> list[pl.Expr]:
    """Boolean flags packed into UInt64 words, bit i of word i // 64."""
    words = []
    for w in range(0, len(flags), 64):
        terms = [pl.when(f).then(pl.lit(1 << (i - w), pl.UInt64)).otherwise(pl.lit(0, pl.UInt64))
                 for i, f in enumerate(flags[w:w + 64], start=w)]
        words.append(functools.reduce(operator.add, terms))
    return words


def _cover_lists(units: tuple[Unit, ...], masks: list[Mask], ctx: Ctx, *,
                 grouped: bool) -> tuple[list[pl.Expr], list[pl.Expr]]:
    """Aggregations listing each group's unit ids (sorted) with their rows' condition bits,
    and the struct fields that read them back."""
    lists: list[pl.Expr] = []
    fields: list[pl.Expr] = []
    words = _bits([m for m, _ in masks])
    for j, u in enumerate(units):
        ids = pl.col(u.column).filter(pl.col(u.column).is_not_null())
        parts = [(f"u{j}", ids.sort())]
        parts += [(f"b{j}_{w}", word.filter(pl.col(u.column).is_not_null()).sort_by(ids))
                  for w, word in enumerate(words)]
        for field, e in parts:
            name = ctx.fresh("t")
            lists.append((e if grouped else e.implode()).alias(name))
            fields.append(pl.col(name).alias(field))
    return lists, fields


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
    r_units = tuple(Unit(mapping[u.column], u.dataset, u.k, u.on_violation) for u in right.units)
    r_preds = tuple(mapping[p] for p in right.preds)
    r_columns = {n: ColumnInfo(i.dtype, i.masked, mapping.get(i.unit_of) if i.unit_of else None,
                               frozenset(mapping[p] for p in i.preds), i.nonlinear) for n, i in right.columns.items()}
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
        columns[name] = ColumnInfo(dtype, info.masked, info.unit_of, info.preds, info.nonlinear)
    units = left.units + r_units
    preds = left.preds + r_preds
    lf = lf.select([*map(pl.col, columns), *(pl.col(u.column) for u in units), *map(pl.col, preds)])
    out = Frame(
        Step("join", (left, right), (how,)), columns, units, left.datasets | right.datasets, lf,
        preds=preds, violations=left.violations + tuple(v for v in right.violations if v not in left.violations),
        aggregated=left.aggregated or right.aggregated,
    )
    return _finish(out, ctx)


def unique(frame: Frame, subset: list[Expr] | None, ctx: Ctx, maintain_order: bool, keep: str | None) -> Frame:
    """Distinct rows of individuals are groups: each distinct value must cover k individuals."""
    if frame.row_level:
        keys = subset if subset is not None else [Col(n) for n in frame.columns]
        others = [Call("first", Col(n)) for n, info in frame.columns.items()
                  if subset is not None and Col(n) not in subset and not info.masked]
        return aggregate(frame, keys, others, ctx, verb="unique", maintain_order=maintain_order)
    frame = materialize(frame)
    kwargs: dict[str, Any] = {"maintain_order": maintain_order}
    if keep:
        kwargs["keep"] = keep
    lf = frame.lf.unique(subset=[C.expr(e) for e in subset] if subset else None, **kwargs)
    return _finish(frame.evolve(step=Step("unique", (frame,), ()), lf=lf), ctx)

