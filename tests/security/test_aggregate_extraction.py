"""Attack class: pulling one individual's value out through an aggregate.

The group is large (all 600 people, or a region), so the threshold holds; the
attack lives inside the aggregate: an order statistic that *is* one person's
value, a list that holds every value, a sort then a pick, or a condition (or
arithmetic that acts as one) that zeroes everyone but the canary. Order
statistics and lists go to the owner ("violation"); conditions are checked on
both sides and the value is suppressed ("suppressed"); arithmetic that could
build an indicator without a condition goes to the owner. Every "violation"
case is also run against the reject deployment, where it is a PolicyError.
"""

from __future__ import annotations

import pytest

from .conftest import Arena, assert_no_late_leak, violations
from .dataset import CANARY_ID

ME = f'(pl.col("person_id") == {CANARY_ID})'


def sel(expr: str) -> str:
    return f"people.select({expr}).collect()"


def by_region(expr: str) -> str:
    return f'people.group_by("region").agg({expr}).collect()'


def cases(*rows: tuple[str, str, str]) -> list:
    return [pytest.param(code, expect, id=name) for name, code, expect in rows]


ORDER_STATISTICS = cases(
    ("max", sel('pl.col("income").max()'), "violation"),
    ("min", sel('pl.col("income").min()'), "violation"),
    ("median", sel('pl.col("income").median()'), "violation"),
    ("quantile-top", sel('pl.col("income").quantile(0.999)'), "violation"),
    ("quantile-nearest", sel('pl.col("income").quantile(1.0, interpolation="nearest")'), "violation"),
    ("top-k", sel('pl.col("income").top_k(1)'), "violation"),
    ("bottom-k", sel('pl.col("income").bottom_k(1)'), "violation"),
    ("mode-of-zip", sel('pl.col("zip").mode()'), "violation"),
    ("first", sel('pl.col("income").first()'), "violation"),
    ("last-the-canary-is-last", sel('pl.col("income").last()'), "violation"),
    ("arg-max", sel('pl.col("income").arg_max()'), "violation"),
    ("product", sel('pl.col("income").product()'), "violation"),
    ("pl-max-shorthand", sel('pl.max("income")'), "violation"),
    ("frame-max", "people.max().collect()", "violation"),
    ("group-max", by_region('pl.col("income").max()'), "violation"),
    ("group-by-max-shorthand", 'people.group_by("region").max().collect()', "violation"),
    ("range-max-minus-min", by_region('(pl.col("income").max() - pl.col("income").min()).alias("r")'), "violation"),
    ("max-inside-arithmetic", sel('(pl.col("income").max() * 0 + pl.col("income").max())'), "violation"),
)

SORT_AND_PICK = cases(
    ("sort-last", sel('pl.col("income").sort().last()'), "violation"),
    ("sort-desc-first", sel('pl.col("income").sort(descending=True).first()'), "violation"),
    ("sort-by-last", sel('pl.col("age").sort_by("income").last()'), "violation"),
    ("sort-get", sel('pl.col("income").sort().get(599)'), "violation"),
    ("sort-tail-sum", sel('pl.col("income").sort().tail(1).sum()'), "violation"),
    ("sort-slice-sum", sel('pl.col("income").sort().slice(599, 1).sum()'), "violation"),
    ("reverse-head-mean", sel('pl.col("income").sort().reverse().head(1).mean()'), "violation"),
    ("cum-max-last", sel('pl.col("income").cum_max().last()'), "violation"),
    ("rolling-sum", sel('pl.col("income").rolling_sum(600).sum()'), "violation"),
    ("rank-weighted-sum", sel('(pl.col("income") * (pl.col("income").rank() == 600)).sum()'), "violation"),
)

LISTS = cases(
    ("bare-column-in-agg", by_region('pl.col("income")'), "violation"),
    ("implode", by_region('pl.col("income").implode()'), "violation"),
    ("head-in-agg", by_region('pl.col("income").head(3)'), "violation"),
    ("unique-values", by_region('pl.col("zip").unique()'), "violation"),
    ("value-counts", by_region('pl.col("zip").value_counts()'), "violation"),
    ("drop-nulls-list", by_region('pl.col("income").drop_nulls()'), "violation"),
    ("select-bare-column", sel('pl.col("income").implode()'), "violation"),
    ("over-broadcast", sel('pl.col("income").sum().over("zip")'), "violation"),
)

CONDITIONS = cases(
    ("when-then-unit", sel(f'pl.when({ME}).then(pl.col("income")).otherwise(0).sum()'), "suppressed"),
    ("when-then-no-otherwise", sel('pl.when(pl.col("zip") == "97999").then(pl.col("income")).sum()'), "suppressed"),
    ("product-with-condition", sel(f'(pl.col("income") * {ME}).sum()'), "suppressed"),
    ("product-with-cast-condition", sel(f'(pl.col("income") * {ME}.cast(pl.Int64)).sum()'), "suppressed"),
    ("filter-unit", sel(f'pl.col("income").filter({ME}).sum()'), "suppressed"),
    ("filter-everyone-but", sel(f'pl.col("income").filter(pl.col("person_id") != {CANARY_ID}).sum()'),
     "suppressed"),
    ("filter-outlier-mean", sel('pl.col("income").filter(pl.col("income") > 8000000).mean()'), "suppressed"),
    ("is-in-weight", sel(f'(pl.col("income") * pl.col("person_id").is_in([{CANARY_ID}])).sum()'), "suppressed"),
    ("total-minus-everyone-but",
     sel(f'(pl.col("income").sum() - pl.col("income").filter(pl.col("person_id") != {CANARY_ID}).sum()).alias("d")'),
     "suppressed"),
    ("count-of-exact-income", sel('(pl.col("income") == 8675309).sum()'), "suppressed"),
    ("any-above-threshold", sel('(pl.col("income") > 8000000).any()'), "suppressed"),
    ("zip-contains", sel('pl.col("zip").str.contains("97999").sum()'), "suppressed"),
    ("flag-from-earlier-step",
     f'people.with_columns(flag={ME}).select((pl.col("income") * pl.col("flag")).sum()).collect()', "suppressed"),
    ("weight-from-earlier-step",
     f'people.with_columns(x=pl.col("income") * {ME}).select(pl.col("x").sum()).collect()', "suppressed"),
    ("group-filter-zip", by_region('pl.col("income").filter(pl.col("zip") == "97999").mean()'), "suppressed"),
    ("condition-across-cells",
     f'flagged = people.with_columns(f={ME})\nflagged.select((pl.col("f") * pl.col("income")).sum()).collect()',
     "suppressed"),
)

ARITHMETIC_INDICATORS = cases(
    ("abs-clip-indicator", sel(f'(pl.col("income") * (1 - (pl.col("person_id") - {CANARY_ID}).abs().clip(0, 1))).sum()'),
     "violation"),
    ("sign-indicator", sel(f'(pl.col("income") * (pl.col("person_id") - {CANARY_ID}).sign().abs()).sum()'), "violation"),
    ("division-by-distance", sel(f'(pl.col("income") / (pl.col("person_id") - {CANARY_ID - 1})).sum()'), "violation"),
    ("power-zero-trick", sel(f'(pl.col("income") * 0 ** (pl.col("person_id") - {CANARY_ID}).abs()).sum()'),
     "violation"),
    ("max-horizontal", sel('pl.max_horizontal("income", "age").sum()'), "violation"),
    ("derived-column-from-earlier-step",
     f'people.with_columns(x=(pl.col("person_id") - {CANARY_ID}).abs()).select((pl.col("income") * pl.col("x")).sum())'
     ".collect()", "violation"),
    ("two-products", sel('(pl.col("income") * pl.col("age") * pl.col("age")).sum()'), "violation"),
    ("string-length-indicator", sel('(pl.col("income") * pl.col("zip").str.count_matches("97999")).sum()'), "violation"),
)


@pytest.mark.parametrize(("code", "expect"), ORDER_STATISTICS)
def test_order_statistics_are_never_released_automatically(arena: Arena, code: str, expect: str) -> None:
    arena.attack(code, expect)


@pytest.mark.parametrize(("code", "expect"), SORT_AND_PICK)
def test_sorting_then_picking_inside_an_aggregate(arena: Arena, code: str, expect: str) -> None:
    arena.attack(code, expect)


@pytest.mark.parametrize(("code", "expect"), LISTS)
def test_list_aggregations_are_never_released_automatically(arena: Arena, code: str, expect: str) -> None:
    arena.attack(code, expect)


@pytest.mark.parametrize(("code", "expect"), CONDITIONS)
def test_conditions_inside_aggregates_are_checked_on_both_sides(arena: Arena, code: str, expect: str) -> None:
    out = arena.attack(code, expect)
    assert "null" in out.shown, out.describe()


@pytest.mark.parametrize(("code", "expect"), ARITHMETIC_INDICATORS)
def test_arithmetic_that_builds_an_indicator_needs_review(arena: Arena, code: str, expect: str) -> None:
    arena.attack(code, expect)


@pytest.mark.parametrize(("code", "expect"), violations(ORDER_STATISTICS + SORT_AND_PICK + LISTS + ARITHMETIC_INDICATORS))
def test_what_needs_a_decision_is_refused_when_the_deployment_rejects(reject_arena: Arena, code: str,
                                                                      expect: str) -> None:
    reject_arena.attack(code, "violation")


def test_no_late_message_carries_a_canary(arena: Arena, reject_arena: Arena) -> None:
    assert_no_late_leak(arena)
    assert_no_late_leak(reject_arena, seconds=0.2)
