"""Attack class: an aggregate over enough people that one outlier dominates.

The threshold counts individuals, not their weight in the value. The canary's
income is 8,675,309; everyone else earns below 80,000. So a sum over any ten
people that include the canary is, within a few percent, the canary's income,
and the whole table's standard deviation times sqrt(n) is too. Statistical
disclosure control calls this dominance and answers it with a rule such as
"(1, 50%)": suppress a value when one individual contributes more than half
of it (of the sum, or of the sum of squared deviations for std/var).

A module of its own: each case must be judged on a fresh release history, so
that a differencing hold (a different rule) cannot pass for a dominance one.
"""

from __future__ import annotations

import pytest

from .conftest import Arena

INCOME_SUM = 'select(pl.col("income").sum()).collect()'


@pytest.mark.xfail(reason="LEAK: a sum/mean/std over >= k people dominated by one outlier reveals it (no dominance "
                          "rule) — fix in frames.py (_unit_checks: per-unit share of each sum/std cell) with the rule "
                          "stated in policy/rules.py", strict=True)
@pytest.mark.parametrize("code", [
    pytest.param(f"people.tail(10).{INCOME_SUM}", id="tail-ten-sum"),
    pytest.param('people.sort("income", descending=True).head(10).select(pl.col("income").mean()).collect()',
                 id="top-ten-mean"),
    pytest.param('people.select(pl.col("income").std()).collect()', id="whole-table-std"),
])
def test_an_outlier_dominated_aggregate_is_not_released_automatically(arena: Arena, code: str) -> None:
    out = arena.run(code)
    assert "were suppressed" in out.shown or out.review_id is not None, out.describe()
    arena.assert_alive()


def test_a_balanced_aggregate_over_the_same_people_is_released(arena: Arena) -> None:
    """The control: the same positional group without the outlier's column is an ordinary release."""
    out = arena.attack('people.tail(10).select(pl.col("age").mean()).collect()', "released")
    assert "age" in out.shown
