"""Truth tables for the pure policy rules in bastion_kernel/policy/rules.py.

Why truth tables over hand-built trees: the rules read `plan.Expr` trees only,
so each row states one fact about one tree without polars, files or sessions.
A change to the allow-list kinds or to the rules shows up as a named row.
"""

from __future__ import annotations

import polars as pl
import pytest

from bastion_kernel.errors import PlanError, PolicyError, Position
from bastion_kernel.plan import BinOp, Call, Col, ColumnInfo, DType, Func, Len, Lit, UnOp, When
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
    "r": ColumnInfo(pl.Float64, nonlinear=True),  # e.g. with_columns(r=pl.col("x").round())
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
    ("implode", call("implode", X), ["list-aggregation", "non-linear"]),
    ("value_counts", call("value_counts", X), ["list-aggregation", "non-linear"]),
    ("head-sum", call("sum", call("head", X)), ["list-aggregation", "non-linear"]),
    ("shift-sum", call("sum", call("shift", X)), ["row-order", "non-linear"]),
    ("cum_sum-sum", call("sum", call("cum_sum", X)), ["row-order", "non-linear"]),
    ("rank-mean", call("mean", call("rank", X)), ["row-order", "non-linear"]),
    ("sort_by-last", call("last", call("sort_by", X, by=(Y,))), ["order-statistic"]),
    ("max-of-shift", call("max", call("shift", X)), ["order-statistic", "row-order", "non-linear"]),
    ("shift-bare", call("shift", X), ["list-aggregation", "row-order", "non-linear"]),
    ("abs-sum", call("sum", call("abs", X)), ["non-linear"]),
    ("round-after-mean", call("round", call("mean", X), decimals=1), []),
    ("derived-col-sum", call("sum", Col("r")), ["non-linear"]),
]


@pytest.mark.parametrize("node,expected", [r[1:] for r in VIOLATION_ROWS], ids=[r[0] for r in VIOLATION_ROWS])
def test_agg_violations(node, expected):
    found = rules.agg_violations(rules.analyse_agg(node, COLUMNS), "people", "an aggregate")
    assert [rule for rule, _, _ in found] == expected
    for _, message, hint in found:
        assert "an aggregate" in message
        assert hint


def test_agg_violation_names_the_nonlinear_op():
    (rule, message, hint), = rules.agg_violations(rules.analyse_agg(call("mean", call("round", X)), COLUMNS), None,
                                                  "an aggregate")
    assert rule == "non-linear" and "`round`" in message and "singles out one individual" in message
    assert ".mean().round(1)" in hint


def test_agg_violation_names_the_method():
    (rule, message, _), = rules.agg_violations(rules.analyse_agg(call("median", X), COLUMNS), None, "agg")
    assert rule == "order-statistic" and "`median`" in message


# ------------------------------------------------------------------ nonlinear_ops

R = Col("r")
PID_DIST = BinOp("-", ID, Lit(77))


def cast(recv, name: str) -> Call:
    return call("cast", recv, dtype=DType(name))


NONLINEAR_ROWS = [
    # allowed: linear value construction, conditions (split-checked), scalar-level transforms
    ("sum", call("sum", X), []),
    ("len", Len(), []),
    ("mean-then-round (scalar level)", call("round", call("mean", X), decimals=1), []),
    ("sum-over-len (scalar level)", BinOp("/", call("sum", X), Len()), []),
    ("product-of-aggs (scalar level)", BinOp("*", call("sum", X), call("sum", Y)), []),
    ("plus-minus", call("sum", BinOp("-", BinOp("+", X, Y), Lit(1))), []),
    ("neg", call("sum", UnOp("neg", X)), []),
    ("times-literal", call("sum", BinOp("*", X, Lit(2))), []),
    ("one-product", call("sum", BinOp("*", X, Y)), []),
    ("square", call("sum", BinOp("*", X, X)), []),
    ("one-product-per-aggregate", BinOp("+", call("sum", BinOp("*", X, Y)), call("sum", BinOp("*", X, Y))), []),
    ("product-with-condition", call("sum", BinOp("*", X, ID_IS_5)), []),
    ("product-and-condition", call("sum", BinOp("*", BinOp("*", X, Y), ID_IS_5)), []),
    ("one-minus-condition", call("sum", BinOp("*", X, BinOp("-", Lit(1), ID_IS_5))), []),
    ("product-with-group-constant", call("sum", BinOp("*", X, call("mean", Y))), []),
    ("divide-by-literal", call("sum", BinOp("/", X, Lit(100))), []),
    ("divide-by-group-constant", call("sum", BinOp("/", X, call("sum", Y))), []),
    ("sum-of-condition", call("sum", ID_IS_5), []),
    ("when-branches", call("sum", When(((ID_IS_5, X), (X_GT_3, Y)), Lit(0))), []),
    ("when-abs-in-condition", call("sum", When(((BinOp(">", call("abs", X), Lit(3)), X),))), []),
    ("filter", call("sum", filt(X, ID_NOT_5)), []),
    ("cast-float", call("sum", cast(ID, "Float64")), []),
    ("cast-float32", call("mean", cast(X, "Float32")), []),
    ("cast-condition", call("sum", cast(ID_IS_5, "Int64")), []),
    ("fill_null-literal", call("sum", call("fill_null", X, value=Lit(0))), []),
    ("fill_nan-literal", call("mean", call("fill_nan", X, value=Lit(0.0))), []),
    ("alias", call("alias", call("sum", call("alias", X, "z")), "t"), []),
    ("drop_nulls-mean", call("mean", call("drop_nulls", X)), []),
    ("unique-len", call("len", call("unique", X)), []),
    ("method-add-mul", call("sum", call("mul", call("add", X, other=Lit(1)), other=Y)), []),
    ("max (order statistic, not non-linear)", call("max", X), []),
    ("plain-col", X, []),
    # refused: non-linear value construction in the row-level part
    ("round-then-mean", call("mean", call("round", X)), ["round"]),
    ("abs-clip-indicator", call("sum", BinOp("*", X, BinOp("-", Lit(1), call("clip", call("abs", PID_DIST),
                                                                                    lower_bound=Lit(0),
                                                                                    upper_bound=Lit(1))))),
     ["clip", "abs"]),
    ("abs-sign-indicator", call("sum", BinOp("*", X, BinOp("-", Lit(1), call("sign", call("abs", PID_DIST))))),
     ["sign", "abs"]),
    ("count_matches-indicator", call("sum", BinOp("*", X, call("str.count_matches", S, pattern="9999"))),
     ["str.count_matches"]),
    ("two-products", call("sum", BinOp("*", BinOp("*", X, Y), ID)), ["*"]),
    ("two-products-right", call("sum", BinOp("*", X, BinOp("*", Y, ID))), ["*"]),
    ("product-of-nonlinear", call("sum", BinOp("*", X, call("abs", Y))), ["abs"]),
    ("divide-by-column", call("sum", BinOp("/", X, Y)), ["/"]),
    ("divide-by-condition", call("sum", BinOp("/", X, ID_IS_5)), ["/"]),
    ("method-truediv-column", call("sum", call("truediv", X, other=Y)), ["truediv"]),
    ("pow-op", call("sum", BinOp("**", X, Lit(2))), ["**"]),
    ("pow-method", call("sum", call("pow", X, exponent=Lit(2))), ["pow"]),
    ("floordiv", call("sum", BinOp("//", X, Lit(10))), ["//"]),
    ("mod", call("sum", BinOp("%", ID, Lit(2))), ["%"]),
    ("floor", call("sum", call("floor", X)), ["floor"]),
    ("log", call("mean", call("log", X)), ["log"]),
    ("sqrt", call("mean", call("sqrt", X)), ["sqrt"]),
    ("exp", call("mean", call("exp", X)), ["exp"]),
    ("cast-int", call("sum", cast(X, "Int64")), ["cast"]),
    ("cast-bool", call("sum", cast(X, "Boolean")), ["cast"]),
    ("cast-string-n_unique", call("n_unique", cast(X, "String")), ["cast"]),
    ("fill_null-column", call("sum", call("fill_null", X, value=Y)), ["fill_null"]),
    ("str.len_chars", call("sum", call("str.len_chars", S)), ["str.len_chars"]),
    ("dt.year", call("mean", call("dt.year", X)), ["dt.year"]),
    ("replace", call("sum", call("replace", ID, old=77, new=1)), ["replace"]),
    ("concat_str", call("n_unique", Func("concat_str", ((S, S),))), ["concat_str"]),
    ("coalesce", call("sum", Func("coalesce", ((X, Y),))), ["coalesce"]),
    ("min_horizontal", call("sum", Func("min_horizontal", ((X, Y),))), ["min_horizontal"]),
    ("when-branch-value", call("sum", When(((ID_IS_5, call("abs", X)),), Lit(0))), ["abs"]),
    ("when-otherwise", call("sum", When(((ID_IS_5, X),), call("sign", Y))), ["sign"]),
    ("filter-receiver", call("sum", filt(call("abs", X), ID_NOT_5)), ["abs"]),
    ("inside-order-statistic", call("max", call("abs", X)), ["abs"]),
    ("shift", call("sum", call("shift", X)), ["shift"]),
    ("derived-column (lineage via with_columns)", call("sum", R), ["derived:r"]),
    ("derived-column-in-product", call("sum", BinOp("*", X, R)), ["derived:r"]),
    ("scalar-level-then-row", call("round", call("mean", call("abs", X))), ["abs"]),
]


@pytest.mark.parametrize("node,expected", [r[1:] for r in NONLINEAR_ROWS], ids=[r[0] for r in NONLINEAR_ROWS])
def test_nonlinear_ops(node, expected):
    assert rules.nonlinear_ops(node, COLUMNS) == expected
    assert rules.analyse_agg(node, COLUMNS).nonlinear == expected


LINEAGE_ROWS = [
    # products=0 (what a stored column may hold): a product kept in a column could be multiplied again later
    ("product", BinOp("*", X, Y), ["*"]),
    ("product-with-condition", BinOp("*", X, ID_IS_5), []),
    ("linear", BinOp("+", BinOp("*", X, Lit(2)), BinOp("/", Y, Lit(3))), []),
    ("condition", ID_IS_5, []),
    ("round", call("round", X), ["round"]),
    ("derived", BinOp("+", R, Lit(1)), ["derived:r"]),
    ("per-individual-product-sum", call("sum", BinOp("*", X, Y)), ["*"]),
    ("per-individual-sum", call("sum", X), []),
]


@pytest.mark.parametrize("node,expected", [r[1:] for r in LINEAGE_ROWS], ids=[r[0] for r in LINEAGE_ROWS])
def test_nonlinear_ops_for_lineage(node, expected):
    assert rules.nonlinear_ops(node, COLUMNS, products=0) == expected


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
    ("filter-reduced", call("sum", filt(X, ID_IS_5)), ["row-broadcast"]),
]


@pytest.mark.parametrize("node,expected", [r[1:] for r in ROW_EXPR_ROWS], ids=[r[0] for r in ROW_EXPR_ROWS])
def test_row_expr_violations(node, expected):
    assert [r for r, _, _ in rules.row_expr_violations(node, "a row-level select")] == expected


# Values whose count depends on the data cannot stand for rows (the row-level `filter`
# that used to be a review request): refused before running, whatever the data.
def test_row_expr_violations_refuses_a_data_dependent_number_of_values():
    with pytest.raises(PlanError, match="depends on the data"):
        rules.row_expr_violations(filt(X, ID_IS_5), "a row-level select")


# ------------------------------------------------------------------ length_of / check_lengths

LENGTH_ROWS = [
    ("col", X, "rows"),
    ("lit", Lit(1), "one"),
    ("sum", call("sum", X), "one"),
    ("broadcast", BinOp("-", X, call("mean", X)), "rows"),
    ("filter", filt(X, ID_IS_5), "varying"),
    ("filter-reduced", call("sum", filt(X, ID_IS_5)), "one"),
    ("filter-times-literal", BinOp("*", filt(X, ID_IS_5), Lit(2)), "varying"),
    ("unique-len", call("len", call("unique", X)), "one"),
    ("head", call("head", X, n=3), "varying"),
    ("implode", call("implode", filt(X, ID_IS_5)), "one"),
    ("sort-keeps-rows", call("sort", X), "rows"),
    ("over-of-sum", call("over", call("sum", X), partition_by=(S,)), "rows"),
    ("reduced-parts", BinOp("/", call("sum", filt(X, ID_IS_5)), call("sum", X)), "one"),
]


@pytest.mark.parametrize("node,expected", [r[1:] for r in LENGTH_ROWS], ids=[r[0] for r in LENGTH_ROWS])
def test_length_of(node, expected):
    assert rules.length_of(node) == expected


MISALIGNED_ROWS = [
    ("rows-plus-filtered", BinOp("+", Y, filt(X, ID_IS_5))),
    ("two-filters", BinOp("+", filt(Y, ID_IS_5), filt(X, X_GT_3))),
    ("filter-of-filtered-condition", filt(X, BinOp(">", filt(Y, ID_IS_5), Lit(0)))),
    ("filter-after-filter", filt(filt(X, ID_IS_5), X_GT_3)),
    ("sort-by-filtered", call("sort_by", X, by=(filt(Y, ID_IS_5),))),
    ("over-of-filtered", call("over", filt(X, ID_IS_5), partition_by=(S,))),
    ("when-with-head", When(((ID_IS_5, call("head", X, n=1)),), X)),
    ("concat-with-unique", Func("concat_str", ([S, call("unique", S)],))),
]


@pytest.mark.parametrize("node", [r[1] for r in MISALIGNED_ROWS], ids=[r[0] for r in MISALIGNED_ROWS])
@pytest.mark.parametrize("role", ["a filter condition", rules.AGGREGATE_INPUT])
def test_check_lengths_refuses_misaligned_values_everywhere(node, role):
    pos = Position(1, 2, 5)
    with pytest.raises(PlanError) as info:
        rules.check_lengths(node, role, pos)
    assert "may not line up" in info.value.message and info.value.position == pos


@pytest.mark.parametrize(("node", "role", "refused"), [
    (filt(X, ID_IS_5), rules.AGGREGATE_INPUT, False),  # a list aggregation: reviewed, never misaligned
    (filt(X, ID_IS_5), "a group key", True),
    (call("unique", X), "a join key", True),
    (call("sum", filt(X, ID_IS_5)), "a filter condition", False),
    (BinOp(">", X, call("max", X)), "a filter condition", False),  # broadcast: one value per row
])
def test_check_lengths_by_role(node, role, refused):
    if refused:
        with pytest.raises(PlanError, match="depends on the data"):
            rules.check_lengths(node, role)
    else:
        rules.check_lengths(node, role)


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
