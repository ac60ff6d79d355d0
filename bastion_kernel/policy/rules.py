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
  null-skipping aggregate (`mean(x)`) must see k individuals with a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..compile import spec_for
from ..errors import PolicyError, Position
from ..plan import BinOp, Call, Col, ColumnInfo, Expr, Func, Len, Lit, UnOp, When, walk

COMPARISONS = frozenset({"==", "!=", "<", "<=", ">", ">="})
LOGICAL = frozenset({"&", "|", "^"})
AUTO_AGGS = frozenset({"sum", "mean", "count", "len", "n_unique", "std", "var", "null_count", "any", "all"})
NULL_SKIPPING = frozenset({"sum", "mean", "count", "n_unique", "std", "var", "any", "all"})


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
    if isinstance(node, BinOp) and node.op in LOGICAL | {"invert"}:
        pass
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


def check_masked(
    node: Expr, columns: dict[str, ColumnInfo], role: str, dataset: str | None, position: Position | None
) -> None:
    """Rule 3: a masked column (or one derived from it) cannot drive `role`."""
    bad = sorted(c for c in referenced(node) if columns[c].masked)
    if bad:
        raise PolicyError(
            f"masked column `{bad[0]}` cannot be used as {role}: masked values are only ever shown as '*'",
            rule="masked-column",
            dataset=dataset,
            hint="select it to see '*', or aggregate other columns",
            position=position,
        )


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
    return facts


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
    return out


def row_expr_violations(node: Expr, where: str) -> list[tuple[str, str, str]]:
    """Non-elementwise expressions on rows of individuals (windows, broadcasts)."""
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


def func_or_col_only(node: Expr) -> bool:
    return isinstance(node, (Col, Func))
