"""Pure policy rules over Bastion expressions.

Why pure functions: each rule reads a `plan.Expr` tree and the input frame's
column facts and answers with facts or `Violation`s carrying a reason; no
polars, no I/O. They are tested as truth tables (tests/test_policy_rules.py).

The rules, in the words of the deployment's privacy officer:
- an aggregate auto-releases only when it is one of count/len, sum, mean,
  n_unique, std, var (plus null_count/any/all, which are counts in disguise);
  order statistics and list-producing aggregates are never auto-released;
- masked columns, and anything computed from them, are never a filter, key,
  sort key, condition or aggregate input;
- every condition inside an aggregate (comparison, `is_in`, `when`, `filter`)
  splits the group in two; each side must hold at least k individuals, or a
  single person could be isolated (`(income * (id == 5)).sum()`); a
  null-skipping aggregate (`mean(x)`) must see k individuals with a value;
- values inside an auto-released aggregate are built linearly (+, -, one
  product of two columns, division by a constant, float casts, conditions);
  anything else (`abs`, `clip`, `sign`, `round`, `**`, `str.*`, ...) can turn
  a value into an indicator of one person without writing a condition
  (`(income * (1 - (id - 5).abs().clip(0, 1))).sum()`), so it goes to review;
- no individual may dominate a released sum, mean, std or var: when one
  holds more than `max_share` of the value's squared deviations, or of its
  values, the value is suppressed (`dominated`), or the group's sum is just
  that person's;
- values whose number depends on the data (`x.filter(c)`, `x.unique()`,
  `x.head(n)`...) are never lined up against rows or against each other:
  polars would fail only when the counts differ, so "error or not" would tell
  whether anyone matches `c` (is anyone's income above X?). They are refused
  before anything runs (`check_lengths`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..compile import spec_for
from ..errors import PlanError, PolicyError, Position
from ..plan import BinOp, Call, Col, ColumnInfo, Expr, Func, Len, Lit, UnOp, When, walk

COMPARISONS = frozenset({"==", "!=", "<", "<=", ">", ">="})
LOGICAL = frozenset({"&", "|", "^"})
AUTO_AGGS = frozenset({"sum", "mean", "count", "len", "n_unique", "std", "var", "null_count", "any", "all"})
NULL_SKIPPING = frozenset({"sum", "mean", "count", "n_unique", "std", "var", "any", "all"})
# Auto-released aggregates whose value is a linear (sum, mean) or quadratic (std, var) function of
# the individual values: the dominance rule applies to them. The others are counts (count, len,
# n_unique, null_count, any, all), which the threshold and the split check already govern.
VALUE_AGGS = frozenset({"sum", "mean", "std", "var"})


def kind_of(node: Expr) -> str:
    """The allow-list kind of a node: elem, pred, agg, noauto, list, shape, filter, name."""
    if isinstance(node, Call):
        return spec_for(node.fn).kind
    if isinstance(node, Len):
        return "agg"
    if isinstance(node, BinOp) and (node.op in COMPARISONS or node.op in LOGICAL):
        return "pred"
    if isinstance(node, UnOp) and node.op == "invert":
        return "pred"
    return "elem"


def is_predicate(node: Expr) -> bool:
    """A boolean-valued node that refers to at least one column."""
    if kind_of(node) != "pred":
        return False
    return any(isinstance(n, Col) for n in walk(node))


def level(node: Expr) -> str:
    """'row' when the node yields one value per row, 'scalar' when one per group."""
    if isinstance(node, (Lit,)):
        return "scalar"
    if isinstance(node, Len):
        return "scalar"
    if isinstance(node, Col):
        return "row"
    kind = kind_of(node)
    if kind in ("agg", "noauto") and isinstance(node, Call):
        return "scalar"
    if kind in ("list", "shape", "filter"):
        return "row"
    children = node.children()
    return "row" if any(level(c) == "row" for c in children) else "scalar"


# Methods that change how many rows an expression has, or their order. The unit
# checks evaluate supports and conditions row by row next to the unit id column,
# so inside those checks each is replaced by a row-aligned equivalent.
REORDERING = frozenset({
    "drop_nulls", "drop_nans", "unique", "head", "tail", "slice", "sort", "sort_by", "reverse", "top_k",
    "bottom_k", "mode", "implode", "value_counts",
})


def aligned(node: Expr) -> Expr:
    """`node` rewritten to keep one value per input row, in the input's order.

    `x.filter(c)` becomes `when(c).then(x)` (null where dropped), and methods in
    `REORDERING` become their receiver, so `x.filter(c).sum()` is checked over
    the individuals where `c` holds and `x` is not null instead of failing on a
    length mismatch with the unit column.
    """
    if isinstance(node, Call) and node.fn == "filter":
        pred = dict(node.kwargs).get("predicate", node.args[0] if node.args else None)
        if isinstance(pred, Expr):
            return When(((aligned(pred), aligned(node.recv)),))
    if isinstance(node, Call) and node.fn in REORDERING:
        return aligned(node.recv)
    if isinstance(node, Call):
        return Call(node.fn, aligned(node.recv), tuple(_aligned_arg(a) for a in node.args),
                    tuple((k, _aligned_arg(v)) for k, v in node.kwargs))
    if isinstance(node, BinOp):
        return BinOp(node.op, aligned(node.left), aligned(node.right))
    if isinstance(node, UnOp):
        return UnOp(node.op, aligned(node.operand))
    if isinstance(node, When):
        other = aligned(node.otherwise) if node.otherwise is not None else None
        return When(tuple((aligned(c), aligned(v)) for c, v in node.branches), other)
    if isinstance(node, Func):
        return Func(node.fn, tuple(_aligned_arg(a) for a in node.args),
                    tuple((k, _aligned_arg(v)) for k, v in node.kwargs))
    return node


def _aligned_arg(value: object) -> object:
    if isinstance(value, Expr):
        return aligned(value)
    if isinstance(value, tuple):
        return tuple(_aligned_arg(v) for v in value)
    if isinstance(value, list):
        return [_aligned_arg(v) for v in value]
    return value


def referenced(node: Expr) -> set[str]:
    return {n.name for n in walk(node) if isinstance(n, Col)}


# Methods whose number of values depends on the data rather than on the number of rows.
VARYING_LENGTH = frozenset({
    "filter", "drop_nulls", "drop_nans", "unique", "head", "tail", "slice", "top_k", "bottom_k", "mode",
    "value_counts",
})
AGGREGATE_INPUT = "an aggregate input"


class _Misaligned(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _label(node: Expr) -> str:
    if isinstance(node, (Call, Func)):
        return f".{node.fn}()" if isinstance(node, Call) else f"pl.{node.fn}()"
    return f"`{getattr(node, 'op', type(node).__name__)}`"


def _align(node: Expr, lengths: list[str]) -> str:
    """Combine the lengths of values used together; two that may differ cannot be combined."""
    varying = lengths.count("varying")
    if varying and (varying > 1 or "rows" in lengths):
        raise _Misaligned(_label(node))
    if varying:
        return "varying"
    return "rows" if "rows" in lengths else "one"


def length_of(node: Expr) -> str:
    """How many values `node` yields: "one", "rows" (one per row) or "varying" (data-dependent).

    Raises `_Misaligned` naming the first place where values of possibly different
    counts are combined (an operator, a method and its arguments, a filter and its
    condition, a value and its `over` partition).
    """
    if isinstance(node, (Lit, Len)):
        return "one"
    if isinstance(node, Col):
        return "rows"
    parts = [length_of(c) for c in node.children()]
    if isinstance(node, Call):
        combined = _align(node, parts)
        if node.fn in VARYING_LENGTH:
            return "varying"
        if node.fn == "implode" or kind_of(node) in ("agg", "noauto"):
            return "one"
        return combined
    if not parts:
        return "rows"  # a node kind this rule does not know: assume one value per row
    return _align(node, parts)


def check_lengths(node: Expr, role: str, position: Position | None = None) -> None:
    """Refuse, before anything runs, values whose count depends on the data where counts must match.

    Inside an aggregate (`role` == AGGREGATE_INPUT) a data-dependent count is fine
    as long as it is reduced or listed as a whole; anywhere else (a row-level
    select, a filter, a key) it must line up with the rows, which polars checks
    only when it runs, on the owner's data.
    """
    try:
        length = length_of(node)
    except _Misaligned as exc:
        raise PlanError(
            f"{exc.name} combines values whose numbers depend on the data, so they may not line up",
            hint="aggregate each part first (pl.col('x').filter(cond).sum()), or filter the frame: frame.filter(cond)",
            position=position,
        ) from None
    if length == "varying" and role != AGGREGATE_INPUT:
        culprit = next((n for n in walk(node) if isinstance(n, Call) and n.fn in VARYING_LENGTH), node)
        raise PlanError(
            f"{_label(culprit)} in {role} keeps a number of values that depends on the data, not one per row",
            hint="filter the frame with frame.filter(cond), or aggregate: .group_by(...).agg(...)",
            position=position,
        )


def check_masked(
    node: Expr, columns: dict[str, ColumnInfo], role: str, dataset: str | None, position: Position | None
) -> None:
    """Rule 3: a masked column (or one derived from it) cannot drive `role`.

    Frames call this for every expression that drives rows of individuals (a
    filter, a group/sort/join key, an aggregate input), so the rules that stop
    run-time failures from becoming an oracle ride along, with the same
    position: the length rule (`check_lengths`) and the type probe
    (`compile.probe`, which runs the expression on made-up rows, not data).
    """
    bad = sorted(c for c in referenced(node) if columns[c].masked)
    if bad:
        raise PolicyError(
            f"masked column `{bad[0]}` cannot be used as {role}: masked values are only ever shown as '*'",
            rule="masked-column",
            dataset=dataset,
            hint="select it to see '*', or aggregate other columns",
            position=position,
        )
    check_lengths(node, role, position)
    from ..compile import probe  # the only polars in this module: made-up rows, never the owner's

    try:
        probe(node, {n: info.dtype for n, info in columns.items()})
    except PlanError as exc:
        raise exc.with_position(position) from None


@dataclass
class AggFacts:
    """What one aggregate expression needs before it may auto-release."""

    reduced: bool
    noauto: list[str] = field(default_factory=list)
    listy: list[str] = field(default_factory=list)
    shape: list[str] = field(default_factory=list)
    predicates: list[Expr] = field(default_factory=list)
    natural_null_checks: list[Expr] = field(default_factory=list)
    supports: list[Expr] = field(default_factory=list)
    lineage_preds: set[str] = field(default_factory=set)
    nonlinear: list[str] = field(default_factory=list)
    values: list[Expr] = field(default_factory=list)  # inputs of VALUE_AGGS, as written (`dominated`)


def analyse_agg(node: Expr, columns: dict[str, ColumnInfo]) -> AggFacts:
    """Facts about one expression inside `agg(...)` (or a summary `select`)."""
    facts = AggFacts(reduced=level(node) == "scalar")
    seen: set[Expr] = set()
    for n in walk(node):
        kind = kind_of(n)
        if isinstance(n, Call):
            name = n.fn
            if kind == "noauto":
                facts.noauto.append(name)
            elif kind == "list" and name not in ("drop_nulls", "drop_nans", "unique"):
                facts.listy.append(name)
            elif kind == "shape" and name not in ("sort", "sort_by"):
                facts.shape.append(name)
            if name in NULL_SKIPPING and not isinstance(n.recv, (Lit, Len)):
                facts.supports.append(aligned(n.recv))
            if name in VALUE_AGGS and referenced(n.recv) and n.recv not in facts.values:
                facts.values.append(n.recv)
            if name == "null_count":
                check = Call("is_null", aligned(n.recv))
                if isinstance(n.recv, Col) and not columns[n.recv.name].preds:
                    facts.natural_null_checks.append(check)
                else:
                    facts.predicates.append(check)
        if is_predicate(n) and n not in seen:
            seen.add(n)
            facts.predicates.append(aligned(n))
        if isinstance(n, When):
            for cond, _ in n.branches:
                if cond not in seen and any(isinstance(x, Col) for x in walk(cond)):
                    seen.add(cond)
                    facts.predicates.append(aligned(cond))
        if isinstance(n, Col):
            facts.lineage_preds |= columns[n.name].preds
    facts.nonlinear = nonlinear_ops(node, columns)
    return facts


# Methods that only drop nulls or reorder inside an aggregate: the values are the
# input's (the list/row-order rules already exempt exactly these).
VALUE_PRESERVING = frozenset({"drop_nulls", "drop_nans", "unique", "sort", "sort_by"})
FLOAT_TYPES = frozenset({"Float32", "Float64"})


def nonlinear_ops(node: Expr, columns: dict[str, ColumnInfo], *, products: int = 1) -> list[str]:
    """Operations in the row-level part of `node` that build values non-linearly.

    Why: a condition splits a group and is checked on both sides, but arithmetic
    can build the same indicator without one (`1 - (id - 5).abs().clip(0, 1)` is
    1 for one person, 0 for all others), and no split check sees it. Inside an
    aggregate only linear value construction is allowed: columns, literals,
    `+`/`-`, at most `products` products of two row-level column sides per
    aggregate argument (a product with a condition is split-checked instead),
    `/` by a per-group constant, float casts, literal `fill_null`, `when`
    branch values and `filter` receivers. Conditions are skipped (split-checked).
    Scalar-level nodes (`x.mean().round()`) are fine; their children are read.
    A column whose `ColumnInfo.nonlinear` is set is named `derived:<col>`.
    Lineage callers pass `products=0`: a product stored in a column could be
    multiplied again in a later cell, one product per cell.
    """
    out: list[str] = []

    def row_side(e: Expr) -> bool:
        return not (is_predicate(e) or kind_of(e) == "pred") and level(e) == "row" and bool(referenced(e))

    def product(left: Expr, right: Expr, budget: list[int], op: str) -> None:
        if row_side(left) and row_side(right):
            budget[0] -= 1
            if budget[0] < 0:
                out.append(op)
        visit(left, budget)
        visit(right, budget)

    def divide(left: Expr, right: Expr, budget: list[int], op: str) -> None:
        if level(right) == "row" and referenced(right):
            out.append(op)
        visit(left, budget)
        visit(right, budget)

    def visit(n: Expr, budget: list[int]) -> None:
        if is_predicate(n) or kind_of(n) == "pred":
            return
        if isinstance(n, Col):
            info = columns.get(n.name)
            if info is not None and info.nonlinear:
                out.append(f"derived:{n.name}")
            return
        if isinstance(n, (Lit, Len)):
            return
        kind = kind_of(n)
        if isinstance(n, Call) and kind in ("agg", "noauto"):
            visit(n.recv, [products])  # a fresh aggregate argument
            return
        if level(n) == "scalar":
            for c in n.children():
                visit(c, budget)
            return
        if isinstance(n, BinOp):
            if n.op in ("+", "-"):
                visit(n.left, budget)
                visit(n.right, budget)
            elif n.op == "*":
                product(n.left, n.right, budget, "*")
            elif n.op == "/":
                divide(n.left, n.right, budget, "/")
            else:
                out.append(n.op)
                visit(n.left, budget)
                visit(n.right, budget)
            return
        if isinstance(n, UnOp):  # neg / pos (invert is a condition)
            visit(n.operand, budget)
            return
        if isinstance(n, When):
            for _, value in n.branches:
                visit(value, budget)
            if n.otherwise is not None:
                visit(n.otherwise, budget)
            return
        if isinstance(n, Call):
            kw = dict(n.kwargs)
            if kind == "name" or n.fn in VALUE_PRESERVING or n.fn in ("filter", "neg"):
                visit(n.recv, budget)
                return
            other = kw.get("other")
            if n.fn in ("add", "sub") and isinstance(other, Expr):
                visit(n.recv, budget)
                visit(other, budget)
                return
            if n.fn == "mul" and isinstance(other, Expr):
                product(n.recv, other, budget, "mul")
                return
            if n.fn == "truediv" and isinstance(other, Expr):
                divide(n.recv, other, budget, "truediv")
                return
            if n.fn == "cast":
                if getattr(kw.get("dtype"), "name", None) not in FLOAT_TYPES and not is_predicate(n.recv):
                    out.append("cast")
                visit(n.recv, budget)
                return
            if n.fn in ("fill_null", "fill_nan"):
                value = kw.get("value", n.args[0] if n.args else None)
                if isinstance(value, Expr) and referenced(value):
                    out.append(n.fn)
                for c in n.children():
                    visit(c, budget)
                return
            out.append(n.fn)
            for c in n.children():
                visit(c, budget)
            return
        if isinstance(n, Func):
            out.append(n.fn)
            for c in n.children():
                visit(c, budget)
            return
        out.append(type(n).__name__)  # deny by default: a node kind this rule does not know

    visit(node, [products])
    return out


def dominated(rows: list[list[float]], max_share: float) -> bool:
    """The dominance rule: does one individual hold more than `max_share` of a value?

    `rows[u]` are individual u's values among those the aggregate is fed (after
    any filter or condition inside it, nulls skipped); mean is their mean over
    the whole group and SS = sum of (x - mean)^2 over every row. The value is
    dominated when one individual has
    - D_u = sum over u's rows of (x - mean)^2 greater than max_share * SS, or
    - more than max_share of the values (rows).

    Why: the threshold counts individuals, not their weight, so ten people of
    whom one earns 8.7M have a sum that *is* that person's income.
    Why squared deviations, not shares of the sum (the classic p% rule): a
    share of the sum is not shift-invariant: `(income + 1e9).mean()` gives
    every person about the same share, passes, and minus 1e9 is the outlier's
    income again. Deviations from the mean do not change when a constant is
    added or multiplied, and SS is exactly what std and var release.
    Why rows too: a mean is the individuals' own means weighted by their rows.
    Someone with 437 visits at one price among 52 other visits pulls the
    mean onto their price while holding little of the spread; no value can
    shift or scale a row count. (With one row each this part only asks for
    at least 1 / max_share values, which the threshold already demands.)

    All values equal (SS = 0) passes the first part. A non-finite value (NaN,
    inf, an overflow) fails closed: dominated. A `max_share` of 1 switches the
    rule off. What it does not catch: a group whose values are all alike
    reveals them all (ten equal incomes, one mean), two outliers just under
    the share each reveal their sum, and differences of releases are the
    differencing check's business.
    """
    if max_share >= 1:
        return False
    values = [x for r in rows for x in r]
    if not values:
        return False
    if not all(math.isfinite(x) for x in values):
        return True
    if max(len(r) for r in rows) > max_share * len(values):
        return True
    mean = sum(values) / len(values)
    total = sum((x - mean) * (x - mean) for x in values)  # `*`: an overflow gives inf, not an exception
    if not math.isfinite(total):
        return True
    if total <= 0 or max(values) == min(values):
        return False
    return max(sum((x - mean) * (x - mean) for x in r) for r in rows) > max_share * total


def dominance_bound(rows_max: int | None, values: int, max_row: float, total: float,
                    max_share: float) -> bool | None:
    """`dominated` decided from per-row figures alone, when that is possible (None: weigh each individual).

    `values`: how many values; `max_row`: the largest (x - mean)^2 of one row;
    `total`: SS. With at most M rows per individual, D_u <= M * max_row and
    each holds at most M values, while any single row is a lower bound of its
    individual's D_u. So a group is clear when M * max_row <= max_share * SS
    and M <= max_share * values, dominated when one row alone exceeds the
    first, and open otherwise (M = 1: open never). This is what lets the check
    ride in the same aggregation pass as the query.
    """
    if max_share >= 1 or values == 0:
        return False
    if not (math.isfinite(max_row) and math.isfinite(total)):
        return True
    if 1 > max_share * values or max_row > max_share * total:
        return True
    spread_ok = total <= 0 or max_row <= 0 or (rows_max is not None and rows_max * max_row <= max_share * total)
    if spread_ok and rows_max is not None and rows_max <= max_share * values:
        return False
    return None


def agg_violations(facts: AggFacts, dataset: str | None, label: str) -> list[tuple[str, str, str]]:
    """(rule, message, hint) for an aggregate that cannot auto-release."""
    out = []
    if facts.noauto:
        out.append((
            "order-statistic",
            f"`{facts.noauto[0]}` in {label} reveals one individual's value",
            "count, sum, mean, n_unique, std and var release automatically; this one needs owner review",
        ))
    if facts.listy or not facts.reduced:
        what = facts.listy[0] if facts.listy else "a bare column"
        out.append((
            "list-aggregation",
            f"{what} in {label} yields individual values per group",
            "reduce it to one number per group, e.g. .mean() or .n_unique()",
        ))
    if facts.shape:
        out.append((
            "row-order",
            f"`{facts.shape[0]}` in {label} depends on individual rows' order",
            "aggregate first, then transform the aggregated result",
        ))
    if facts.nonlinear:
        out.append((
            "non-linear",
            f"`{facts.nonlinear[0]}` inside {label} can turn values into an indicator that singles out one individual",
            "aggregate the plain column, then transform the released result (e.g. .agg(pl.col('x').mean().round(1)))",
        ))
    return out


def row_expr_violations(node: Expr, where: str) -> list[tuple[str, str, str]]:
    """Non-elementwise expressions on rows of individuals (windows, broadcasts).

    Values that would not line up with the rows are refused outright (`check_lengths`).
    """
    check_lengths(node, where)
    for n in walk(node):
        kind = kind_of(n)
        if kind in ("agg", "noauto", "list", "shape", "filter") or isinstance(n, Len):
            name = n.fn if isinstance(n, Call) else "len"
            return [(
                "row-broadcast",
                f"`{name}` in {where} mixes several individuals' rows into each row",
                "aggregate with group_by(...).agg(...) instead",
            )]
    return []
