"""Attack class: an aggregate over enough people that one outlier dominates.

The threshold counts individuals, not their weight in the value. The canary's
income is 8,675,309; everyone else earns below 80,000. So a sum over any ten
people that include the canary is, within a few percent, the canary's income,
and the whole table's standard deviation times sqrt(n) is too. Statistical
disclosure control calls this dominance. Bastion's rule (`policy.rules.dominated`)
suppresses a value when one individual holds more than half of its squared
deviations from the group mean, or more than half of its values (rows):
unlike a share of the sum, neither moves when the input is shifted or
scaled, so `(income + 1e9).mean()` is caught too, and one person with 437
visits at one price cannot pass for a crowd.

A module of its own: each case must be judged on a fresh release history, so
that a differencing hold (a different rule) cannot pass for a dominance one.
"""

from __future__ import annotations

import pytest

from .conftest import Arena

INCOME_SUM = 'select(pl.col("income").sum()).collect()'
TAIL = "people.tail(10)"  # the canary is the last row: nine ordinary people and the outlier


@pytest.mark.parametrize("code", [
    pytest.param(f"{TAIL}.{INCOME_SUM}", id="tail-ten-sum"),
    pytest.param('people.sort("income", descending=True).head(10).select(pl.col("income").mean()).collect()',
                 id="top-ten-mean"),
    pytest.param('people.select(pl.col("income").std()).collect()', id="whole-table-std"),
    pytest.param('people.select(pl.col("income").var()).collect()', id="whole-table-var"),
    pytest.param(f"{TAIL}.{INCOME_SUM.replace('.sum()', '.sum() / 10')}", id="post-processed-sum"),
    pytest.param('people.select(pl.sum("income")).collect()', id="pl-sum-shorthand"),
    pytest.param("people.sum().collect()", id="frame-wide-sum"),
])
def test_an_outlier_dominated_aggregate_is_not_released_automatically(arena: Arena, code: str) -> None:
    arena.attack(code, "suppressed")


@pytest.mark.parametrize("code", [
    # Absolute shares (the classic p% rule) would pass these: every person holds about a tenth of the
    # shifted sum, and subtracting the shift gives the outlier back. Deviations do not move.
    pytest.param(f'{TAIL}.select((pl.col("income") + 1e9).mean()).collect()', id="shifted-mean"),
    pytest.param(f'{TAIL}.select((pl.col("income") - 1e15).sum()).collect()', id="huge-shift-sum"),
    pytest.param(f'{TAIL}.select((pl.col("income") * 1000).sum()).collect()', id="scaled-sum"),
    # Past 2**53 a float cannot tell the incomes apart, but the integer sum still can (and wraps).
    pytest.param(f'{TAIL}.select((pl.col("income") + 4611686018427387904).sum()).collect()', id="int-beyond-float"),
    pytest.param(f'{TAIL}.select(((pl.col("income") - 40000) / 7).mean()).collect()', id="shifted-scaled-mean"),
    pytest.param(f'{TAIL}.select((pl.col("income") + pl.col("age")).sum()).collect()', id="plus-a-column"),
])
def test_shifting_or_scaling_the_outlier_does_not_get_it_released(arena: Arena, code: str) -> None:
    arena.attack(code, "suppressed")


@pytest.mark.parametrize("code", [
    # What the aggregate is fed is what is weighed: the condition keeps the outlier among many zeros.
    pytest.param('people.select(pl.when(pl.col("region") == "West").then(pl.col("income")).otherwise(0).sum())'
                 '.collect()', id="when-inside"),
    pytest.param('people.select(pl.col("income").filter(pl.col("region") == "West").mean()).collect()',
                 id="filter-inside"),
    pytest.param('people.group_by("region").agg(pl.col("income").sum()).collect()', id="the-outlier's-group"),
])
def test_an_outlier_is_weighed_in_what_the_aggregate_is_fed(arena: Arena, code: str) -> None:
    out = arena.attack(code, "suppressed")
    if "group_by" in code:  # the other regions are ordinary groups and stay released
        assert "1 value(s) were suppressed" in out.shown and out.shown.count(" null ") == 1, out.describe()


@pytest.mark.parametrize("code", [
    # One person with 437 visits at one price: over all visits they hold most of the spread; over the
    # costly ones most of the rows, so the mean is their price even though their rows barely spread.
    pytest.param('visits.select(pl.col("cost").sum()).collect()', id="all-visits-sum"),
    pytest.param('visits.filter(pl.col("cost") > 900).select(pl.col("cost").mean()).collect()',
                 id="heavy-visitor-mean"),
    pytest.param('visits.filter(pl.col("cost") > 900).select((pl.col("cost") - 1e6).mean(), pl.len()).collect()',
                 id="heavy-visitor-shifted-mean"),
    pytest.param('visits.select(pl.col("cost").std()).collect()', id="all-visits-std"),
    # A step after the aggregation: the release runs the lazy frame, not the two-pass plan.
    pytest.param('visits.filter(pl.col("cost") > 900).group_by(pl.col("cost") > 0).agg(pl.col("cost").mean()'
                 '.alias("m")).sort("m").collect()', id="heavy-visitor-mean-sorted"),
])
def test_an_individual_with_many_rows_does_not_dominate_a_release(arena: Arena, code: str) -> None:
    arena.attack(code, "suppressed")


@pytest.mark.parametrize("code", [
    pytest.param(f'{TAIL}.select(pl.col("age").mean()).collect()', id="same-people-age"),
    pytest.param('people.head(10).select(pl.col("income").sum()).collect()', id="ten-ordinary-incomes"),
    pytest.param('people.group_by("region").agg(pl.col("age").std()).collect()', id="age-by-region"),
    pytest.param('visits.group_by("ward").agg(pl.col("cost").mean()).collect()', id="visits-by-ward"),
])
def test_a_balanced_aggregate_over_the_same_people_is_released(arena: Arena, code: str) -> None:
    """The control: without the outlier's weight these are ordinary releases."""
    out = arena.attack(code, "released")
    assert "were suppressed" not in out.shown and "null" not in out.shown, out.describe()
