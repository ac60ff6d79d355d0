"""Truth tables for the pure policy rules in bastion_kernel/policy/rules.py.

Why truth tables over hand-built trees: the rules read `plan.Expr` trees only,
so each row states one fact about one tree without polars, files or sessions.
A change to the allow-list kinds or to the rules shows up as a named row.
"""

from __future__ import annotations

import polars as pl
import pytest

from bastion_kernel.errors import PolicyError, Position
from bastion_kernel.plan import BinOp, Call, Col, ColumnInfo, Func, Len, Lit, UnOp, When
from bastion_kernel.policy import rules

P1 = "__bastion_p1"
COLUMNS = {
    "id": ColumnInfo(pl.Int64, unit_of="__bastion_u0"),
    "x": ColumnInfo(pl.Float64),
    "y": ColumnInfo(pl.Float64),
    "s": ColumnInfo(pl.String),
    "name": ColumnInfo(pl.String, masked=True),
    "nick": ColumnInfo(pl.String, masked=True),  # derived from a masked column
    "flag": ColumnInfo(pl.Boolean, preds=frozenset({P1})),
}

X, Y, ID, S, NAME, FLAG = Col("x"), Col("y"), Col("id"), Col("s"), Col("name"), Col("flag")
ID_IS_5 = BinOp("==", ID, Lit(5))
ID_NOT_5 = BinOp("!=", ID, Lit(5))
X_GT_3 = BinOp(">", X, Lit(3))


def call(fn: str, recv, *args, **kwargs) -> Call:
    return Call(fn, recv, tuple(args), tuple(kwargs.items()))


def filt(recv, pred) -> Call:
    """`recv.filter(pred)` as the interpreter builds it (keyword `predicate`)."""
    return Call("filter", recv, (), (("predicate", pred),))


# ------------------------------------------------------------------ kind_of

KIND_ROWS = [
    ("col", X, "elem"),
    ("lit", Lit(1), "elem"),
    ("len", Len(), "agg"),
    ("sum", call("sum", X), "agg"),
    ("n_unique", call("n_unique", X), "agg"),
    ("null_count", call("null_count", X), "agg"),
    ("max", call("max", X), "noauto"),
    ("median", call("median", X), "noauto"),
    ("quantile", call("quantile", X, quantile=0.5), "noauto"),
    ("first", call("first", X), "noauto"),
    ("top_k", call("top_k", X), "noauto"),
    ("implode", call("implode", X), "list"),
    ("unique", call("unique", X), "list"),
    ("head", call("head", X), "list"),
    ("shift", call("shift", X), "shape"),
    ("cum_sum", call("cum_sum", X), "shape"),
    ("sort_by", call("sort_by", X, by=(Y,)), "shape"),
    ("over", call("over", X, partition_by=(S,)), "shape"),
    ("filter", filt(X, ID_IS_5), "filter"),
    ("alias", call("alias", X, "z"), "name"),
    ("name.suffix", call("name.suffix", X, "_z"), "name"),
    ("eq", ID_IS_5, "pred"),
    ("ne", ID_NOT_5, "pred"),
    ("and", BinOp("&", ID_IS_5, X_GT_3), "pred"),
    ("or", BinOp("|", ID_IS_5, X_GT_3), "pred"),
    ("xor", BinOp("^", ID_IS_5, X_GT_3), "pred"),
    ("invert", UnOp("invert", ID_IS_5), "pred"),
    ("neg", UnOp("neg", X), "elem"),
    ("plus", BinOp("+", X, Lit(1)), "elem"),
    ("times", BinOp("*", X, ID_IS_5), "elem"),
    ("is_in", call("is_in", ID, other=(5, 6)), "pred"),
    ("is_null", call("is_null", X), "pred"),
    ("str.contains", call("str.contains", S, pattern="a"), "pred"),
    ("str.to_uppercase", call("str.to_uppercase", S), "elem"),
    ("dt.year", call("dt.year", X), "elem"),
    ("cast", call("cast", X, dtype=None), "elem"),
    ("when", When(((ID_IS_5, X),)), "elem"),
    ("concat_str", Func("concat_str", ((S, S),)), "elem"),
]


@pytest.mark.parametrize("node,expected", [r[1:] for r in KIND_ROWS], ids=[r[0] for r in KIND_ROWS])
def test_kind_of(node, expected):
    assert rules.kind_of(node) == expected


# ------------------------------------------------------------------ level

LEVEL_ROWS = [
    ("col", X, "row"),
    ("lit", Lit(1), "scalar"),
    ("len", Len(), "scalar"),
    ("sum", call("sum", X), "scalar"),
    ("max", call("max", X), "scalar"),
    ("quantile", call("quantile", X, quantile=0.5), "scalar"),
    ("implode", call("implode", X), "row"),
    ("unique", call("unique", X), "row"),
    ("shift", call("shift", X), "row"),
    ("filter", filt(X, ID_IS_5), "row"),
    ("filter-sum", call("sum", filt(X, ID_IS_5)), "scalar"),
    ("unique-len", call("len", call("unique", X)), "scalar"),
    ("sort_by-last", call("last", call("sort_by", X, by=(Y,))), "scalar"),
    ("col+1", BinOp("+", X, Lit(1)), "row"),
    ("sum+1", BinOp("+", call("sum", X), Lit(1)), "scalar"),
    ("sum/len", BinOp("/", call("sum", X), Len()), "scalar"),
    ("sum+col", BinOp("+", call("sum", X), X), "row"),
    ("alias-sum", call("alias", call("sum", X), "t"), "scalar"),
    ("alias-col", call("alias", X, "t"), "row"),
    ("comparison", ID_IS_5, "row"),
    ("lit-comparison", BinOp("==", Lit(1), Lit(2)), "scalar"),
    ("when-row", When(((ID_IS_5, X),)), "row"),
    ("when-sum", call("sum", When(((ID_IS_5, X),))), "scalar"),
    ("neg-sum", UnOp("neg", call("sum", X)), "scalar"),
    ("concat_str", Func("concat_str", ((S, S),)), "row"),
]


@pytest.mark.parametrize("node,expected", [r[1:] for r in LEVEL_ROWS], ids=[r[0] for r in LEVEL_ROWS])
def test_level(node, expected):
    assert rules.level(node) == expected


# ------------------------------------------------------------------ analyse_agg

# (id, node, reduced, noauto, listy, shape, predicates, supports, lineage_preds, natural_null_checks)
AGG_ROWS = [
    ("sum", call("sum", X), True, [], [], [], [], [X], set(), []),
    ("len", Len(), True, [], [], [], [], [], set(), []),
    ("col.len", call("len", X), True, [], [], [], [], [], set(), []),
    ("count", call("count", X), True, [], [], [], [], [X], set(), []),
    ("mean", call("mean", X), True, [], [], [], [], [X], set(), []),
    ("sum-lit", call("sum", Lit(1)), True, [], [], [], [], [], set(), []),
    ("bare-col", X, False, [], [], [], [], [], set(), []),
    ("max", call("max", X), True, ["max"], [], [], [], [], set(), []),
    ("median", call("median", X), True, ["median"], [], [], [], [], set(), []),
    ("quantile", call("quantile", X, quantile=0.5), True, ["quantile"], [], [], [], [], set(), []),
    ("implode", call("implode", X), False, [], ["implode"], [], [], [], set(), []),
    ("head-sum", call("sum", call("head", X)), True, [], ["head"], [], [], [X], set(), []),
    ("unique-len", call("len", call("unique", X)), True, [], [], [], [], [], set(), []),
    ("unique-sum", call("sum", call("unique", X)), True, [], [], [], [], [X], set(), []),
    ("drop_nulls-mean", call("mean", call("drop_nulls", X)), True, [], [], [], [], [X], set(), []),
    ("shift-sum", call("sum", call("shift", X)), True, [], [], ["shift"], [], [call("shift", X)], set(), []),
    ("cum_sum-mean", call("mean", call("cum_sum", X)), True, [], [], ["cum_sum"], [], [call("cum_sum", X)], set(), []),
    ("sort-first", call("first", call("sort", X)), True, ["first"], [], [], [], [], set(), []),
    ("sort_by-last", call("last", call("sort_by", X, by=(Y,))), True, ["last"], [], [], [], [], set(), []),
    ("indicator-product", call("sum", BinOp("*", X, ID_IS_5)), True, [], [], [], [ID_IS_5],
     [BinOp("*", X, ID_IS_5)], set(), []),
    ("comparison-sum", call("sum", ID_IS_5), True, [], [], [], [ID_IS_5], [ID_IS_5], set(), []),
    ("when-then", call("sum", When(((ID_IS_5, X),))), True, [], [], [], [ID_IS_5],
     [When(((ID_IS_5, X),))], set(), []),
    ("when-two-branches", call("mean", When(((ID_IS_5, X), (X_GT_3, Y)), Lit(0))), True, [], [], [],
     [ID_IS_5, X_GT_3], [When(((ID_IS_5, X), (X_GT_3, Y)), Lit(0))], set(), []),
    ("filter-sum (row-aligned support)", call("sum", filt(X, ID_NOT_5)), True, [], [], [], [ID_NOT_5],
     [When(((ID_NOT_5, X),))], set(), []),
    ("and-of-comparisons", call("sum", BinOp("&", ID_IS_5, X_GT_3)), True, [], [], [],
     [BinOp("&", ID_IS_5, X_GT_3), ID_IS_5, X_GT_3], [BinOp("&", ID_IS_5, X_GT_3)], set(), []),
    ("is_in", call("sum", BinOp("*", X, call("is_in", ID, other=(5,)))), True, [], [], [],
     [call("is_in", ID, other=(5,))], [BinOp("*", X, call("is_in", ID, other=(5,)))], set(), []),
    ("str.contains", call("sum", call("str.contains", S, pattern="a")), True, [], [], [],
     [call("str.contains", S, pattern="a")], [call("str.contains", S, pattern="a")], set(), []),
    ("literal-comparison-is-no-condition", call("sum", BinOp("*", X, BinOp("==", Lit(1), Lit(1)))), True, [], [],
     [], [], [BinOp("*", X, BinOp("==", Lit(1), Lit(1)))], set(), []),
    ("null_count-natural", call("null_count", X), True, [], [], [], [], [], set(), [call("is_null", X)]),
    ("null_count-of-flag", call("null_count", FLAG), True, [], [], [], [call("is_null", FLAG)], [], {P1}, []),
    ("null_count-computed", call("null_count", BinOp("+", X, Y)), True, [], [], [],
     [call("is_null", BinOp("+", X, Y))], [], set(), []),
    ("lineage-flag", call("sum", BinOp("*", X, FLAG)), True, [], [], [], [], [BinOp("*", X, FLAG)], {P1}, []),
    ("two-aggs", BinOp("/", call("sum", X), call("count", Y)), True, [], [], [], [], [X, Y], set(), []),
    ("max-and-shift", call("max", call("shift", X)), True, ["max"], [], ["shift"], [], [], set(), []),
]


@pytest.mark.parametrize(
    "node,reduced,noauto,listy,shape,predicates,supports,lineage,natural",
    [r[1:] for r in AGG_ROWS], ids=[r[0] for r in AGG_ROWS],
)
def test_analyse_agg(node, reduced, noauto, listy, shape, predicates, supports, lineage, natural):
    facts = rules.analyse_agg(node, COLUMNS)
    assert facts.reduced is reduced
    assert facts.noauto == noauto
    assert facts.listy == listy
    assert facts.shape == shape
    assert facts.predicates == predicates
    assert len(facts.predicates) == len(predicates)
    assert facts.supports == supports
    assert facts.lineage_preds == lineage
    assert facts.natural_null_checks == natural


# ------------------------------------------------------------------ agg_violations

VIOLATION_ROWS = [
    ("sum", call("sum", X), []),
    ("len", Len(), []),
    ("mean", call("mean", X), []),
    ("n_unique", call("n_unique", X), []),
    ("std", call("std", X), []),
    ("var", call("var", X), []),
    ("null_count", call("null_count", X), []),
    ("any", call("any", FLAG), []),
    ("all", call("all", FLAG), []),
    ("count", call("count", X), []),
    ("indicator-sum (suppressed, not refused)", call("sum", BinOp("*", X, ID_IS_5)), []),
    ("filter-sum", call("sum", filt(X, ID_NOT_5)), []),
    ("unique-len", call("len", call("unique", X)), []),
    ("min", call("min", X), ["order-statistic"]),
    ("max", call("max", X), ["order-statistic"]),
    ("median", call("median", X), ["order-statistic"]),
    ("quantile", call("quantile", X, quantile=0.9), ["order-statistic"]),
    ("first", call("first", X), ["order-statistic"]),
    ("last", call("last", X), ["order-statistic"]),
    ("mode", call("mode", X), ["order-statistic"]),
    ("top_k", call("top_k", X), ["order-statistic"]),
    ("product", call("product", X), ["order-statistic"]),
    ("bare-col", X, ["list-aggregation"]),
    ("col+1", BinOp("+", X, Lit(1)), ["list-aggregation"]),
    ("implode", call("implode", X), ["list-aggregation"]),
    ("value_counts", call("value_counts", X), ["list-aggregation"]),
    ("head-sum", call("sum", call("head", X)), ["list-aggregation"]),
    ("shift-sum", call("sum", call("shift", X)), ["row-order"]),
    ("cum_sum-sum", call("sum", call("cum_sum", X)), ["row-order"]),
    ("rank-mean", call("mean", call("rank", X)), ["row-order"]),
    ("sort_by-last", call("last", call("sort_by", X, by=(Y,))), ["order-statistic"]),
    ("max-of-shift", call("max", call("shift", X)), ["order-statistic", "row-order"]),
    ("shift-bare", call("shift", X), ["list-aggregation", "row-order"]),
]


@pytest.mark.parametrize("node,expected", [r[1:] for r in VIOLATION_ROWS], ids=[r[0] for r in VIOLATION_ROWS])
def test_agg_violations(node, expected):
    found = rules.agg_violations(rules.analyse_agg(node, COLUMNS), "people", "an aggregate")
    assert [rule for rule, _, _ in found] == expected
    for _, message, hint in found:
        assert "an aggregate" in message
        assert hint


def test_agg_violation_names_the_method():
    (rule, message, _), = rules.agg_violations(rules.analyse_agg(call("median", X), COLUMNS), None, "agg")
    assert rule == "order-statistic" and "`median`" in message


# ------------------------------------------------------------------ check_masked

MASKED_ROWS = [
    ("masked-col", NAME, True),
    ("masked-derived-col", Col("nick"), True),
    ("masked-comparison", BinOp("==", NAME, Lit("Zelda")), True),
    ("masked-str.slice", call("str.slice", NAME, offset=0, length=1), True),
    ("masked-in-concat_str", Func("concat_str", ((S, NAME),)), True),
    ("masked-in-when", When(((BinOp("==", NAME, Lit("a")), Lit(1)),), Lit(0)), True),
    ("masked-in-len_chars-sum", call("sum", call("str.len_chars", NAME)), True),
    ("masked-in-filter-of-other", filt(X, BinOp("==", NAME, Lit("a"))), True),
    ("masked-in-sort_by", call("sort_by", X, by=(NAME,)), True),
    ("plain-col", X, False),
    ("plain-comparison", ID_IS_5, False),
    ("unit-col", ID, False),
    ("flag-col", FLAG, False),
    ("len", Len(), False),
    ("literal", Lit("name"), False),
]


@pytest.mark.parametrize("node,refused", [r[1:] for r in MASKED_ROWS], ids=[r[0] for r in MASKED_ROWS])
@pytest.mark.parametrize("role", ["a filter condition", "a group key", "a sort key", "a join key", "an aggregate input"])
def test_check_masked(node, refused, role):
    pos = Position(2, 4, 9)
    if not refused:
        assert rules.check_masked(node, COLUMNS, role, "people", pos) is None
        return
    with pytest.raises(PolicyError) as info:
        rules.check_masked(node, COLUMNS, role, "people", pos)
    err = info.value
    assert err.rule == "masked-column"
    assert err.kind == "policy"
    assert err.dataset == "people"
    assert err.position == pos
    assert role in err.message
    assert "'*'" in err.message
    assert err.hint


def test_check_masked_names_first_masked_column_sorted():
    with pytest.raises(PolicyError) as info:
        rules.check_masked(BinOp("+", Col("nick"), NAME), COLUMNS, "a group key", None, None)
    assert "`name`" in info.value.message


# ------------------------------------------------------------------ row_expr_violations / is_predicate

ROW_EXPR_ROWS = [
    ("col", X, []),
    ("arithmetic", BinOp("*", X, Lit(2)), []),
    ("comparison", ID_IS_5, []),
    ("when", When(((ID_IS_5, X),), Lit(0)), []),
    ("broadcast-sum", BinOp("-", X, call("mean", X)), ["row-broadcast"]),
    ("len", Len(), ["row-broadcast"]),
    ("max", call("max", X), ["row-broadcast"]),
    ("over", call("over", call("sum", X), partition_by=(S,)), ["row-broadcast"]),
    ("shift", call("shift", X), ["row-broadcast"]),
    ("implode", call("implode", X), ["row-broadcast"]),
    ("filter", filt(X, ID_IS_5), ["row-broadcast"]),
]


@pytest.mark.parametrize("node,expected", [r[1:] for r in ROW_EXPR_ROWS], ids=[r[0] for r in ROW_EXPR_ROWS])
def test_row_expr_violations(node, expected):
    assert [r for r, _, _ in rules.row_expr_violations(node, "a row-level select")] == expected


PRED_ROWS = [
    ("eq-col", ID_IS_5, True),
    ("eq-lits", BinOp("==", Lit(1), Lit(1)), False),
    ("invert", UnOp("invert", ID_IS_5), True),
    ("is_null", call("is_null", X), True),
    ("and", BinOp("&", ID_IS_5, X_GT_3), True),
    ("plus", BinOp("+", X, Lit(1)), False),
    ("col", FLAG, False),
    ("sum-of-pred", call("sum", ID_IS_5), False),
]


@pytest.mark.parametrize("node,expected", [r[1:] for r in PRED_ROWS], ids=[r[0] for r in PRED_ROWS])
def test_is_predicate(node, expected):
    assert rules.is_predicate(node) is expected


# ------------------------------------------------------------------ aligned (row-aligned checks)

ALIGNED_ROWS = [
    ("col", X, X),
    ("filter", filt(X, ID_NOT_5), When(((ID_NOT_5, X),))),
    ("nested-filter", filt(filt(X, ID_NOT_5), X_GT_3), When(((X_GT_3, When(((ID_NOT_5, X),))),))),
    ("filter-in-arith", BinOp("*", filt(X, ID_NOT_5), Lit(2)), BinOp("*", When(((ID_NOT_5, X),)), Lit(2))),
    ("drop_nulls", call("drop_nulls", X), X),
    ("unique", call("unique", X), X),
    ("sort", call("sort", X), X),
    ("sort_by", call("sort_by", X, by=(Y,)), X),
    ("head", call("head", X, n=3), X),
    ("elementwise kept", call("abs", X), call("abs", X)),
    ("comparison kept", ID_IS_5, ID_IS_5),
]


@pytest.mark.parametrize("node,expected", [r[1:] for r in ALIGNED_ROWS], ids=[r[0] for r in ALIGNED_ROWS])
def test_aligned(node, expected):
    assert rules.aligned(node) == expected


def test_referenced_walks_kwargs_and_branches():
    node = When(((BinOp("==", NAME, Lit("a")), call("sort_by", X, by=(Y,))),), Col("s"))
    assert rules.referenced(node) == {"name", "x", "y", "s"}
