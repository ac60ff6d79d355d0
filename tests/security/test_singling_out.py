"""Attack class: singling out one individual (the canary) with ordinary verbs.

Every attack here is grammatical: filters on the privacy unit or on a value
only the canary has, positional selection (head/tail/slice), sort-then-limit,
group keys that are unique per person, the person with 437 visits, and joins
meant to bring in a frame of the analyst's making. What needs a decision is
a review request on the review deployment ("violation"), and every such case
is also run against the reject deployment, where it must be a PolicyError;
small groups are withheld either way, and the answer for "the canary
matches" must look exactly like "nobody matches".
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from .conftest import Arena, Outcome, assert_no_late_leak, open_arena, violations
from .dataset import CANARY_ID, HEAVY_ID

INCOME_SUM = 'select(pl.col("income").sum()).collect()'


def cases(*rows: tuple[str, str, str]) -> list:
    return [pytest.param(code, expect, id=name) for name, code, expect in rows]


UNIT_AND_UNIQUE_FILTERS = cases(
    ("unit-id-row", f'people.filter(pl.col("person_id") == {CANARY_ID}).collect()', "violation"),
    ("unit-id-sum", f'people.filter(pl.col("person_id") == {CANARY_ID}).{INCOME_SUM}', "withheld"),
    ("unit-id-keyword-filter", f"people.filter(person_id={CANARY_ID}).{INCOME_SUM}", "withheld"),
    ("unit-id-is-in-with-decoys",
     f'people.filter(pl.col("person_id").is_in([{CANARY_ID}, 1, 2, 4, 5, 7, 8, 10, 11, 13])).{INCOME_SUM}', "withheld"),
    ("unit-id-between", f'people.filter(pl.col("person_id").is_between({CANARY_ID}, {CANARY_ID})).{INCOME_SUM}',
     "withheld"),
    ("unique-zip-mean", 'people.filter(pl.col("zip") == "97999").select(pl.col("income").mean()).collect()', "withheld"),
    ("unique-zip-count", 'people.filter(pl.col("zip") == "97999").select(pl.len()).collect()', "withheld"),
    ("outlier-income-count", 'people.filter(pl.col("income") > 8000000).select(pl.len()).collect()', "withheld"),
    ("outlier-income-age", 'people.filter(pl.col("income") > 8000000).select(pl.col("age").mean()).collect()',
     "withheld"),
    ("outlier-age-height", "people.filter(pl.col(\"age\") > 100).height", "released"),
    ("unique-zip-describe", 'people.filter(pl.col("zip") == "97999").describe()', "withheld"),
    ("unit-id-rows-of-visits", f'visits.filter(pl.col("person_id") == {HEAVY_ID}).collect()', "violation"),
)

POSITIONAL = cases(
    ("head-one-row", "people.head(1).collect()", "violation"),
    ("limit-one-row", "people.limit(1).collect()", "violation"),
    ("tail-one-row", "people.tail(1).collect()", "violation"),
    ("head-one-sum", f"people.head(1).{INCOME_SUM}", "withheld"),
    ("tail-one-sum-the-canary-is-last", f"people.tail(1).{INCOME_SUM}", "withheld"),
    ("tail-nine-sum", f"people.tail(9).{INCOME_SUM}", "withheld"),
    ("slice-last-row-mean", 'people.slice(599, 1).select(pl.col("income").mean()).collect()', "withheld"),
    ("subscript-slice-sum", f"people[599:600].{INCOME_SUM}", "withheld"),
    ("with-row-index", "people.with_row_index().collect()", "refused:GrammarError"),
    ("with-row-count", "people.with_row_count()", "refused:GrammarError"),
    ("int-range-index", "people.with_columns(pl.int_range(pl.len()).alias(\"i\"))", "refused:GrammarError"),
    ("cum-count-as-index",
     'people.with_columns(pl.col("income").cum_count().alias("i")).filter(pl.col("i") == 600).'
     + INCOME_SUM, "violation"),
    ("gather-row", "people.gather([599])", "refused:GrammarError"),
    ("expression-get", 'people.select(pl.col("income").get(599)).collect()', "violation"),
)

SORT_THEN_LIMIT = cases(
    ("sort-desc-head-one-row", 'people.sort("income", descending=True).head(1).collect()', "violation"),
    ("sort-desc-head-one-sum", f'people.sort("income", descending=True).head(1).{INCOME_SUM}', "withheld"),
    ("sort-tail-one-age", 'people.sort("income").tail(1).select(pl.col("age").sum()).collect()', "withheld"),
    ("sort-by-expression-head", 'people.sort(pl.col("income") * -1).head(1).select("zip").collect()', "violation"),
    ("rank-filter", 'people.with_columns(pl.col("income").rank().alias("r")).filter(pl.col("r") == 600).'
     + INCOME_SUM, "violation"),
    ("top-k-row", 'people.select(pl.col("income").top_k(1)).collect()', "violation"),
    ("sort-desc-head-one-visits-join",
     'people.sort("income", descending=True).head(1).join(visits, on="person_id").select(pl.len()).collect()',
     "withheld"),
)

UNIQUE_KEYS = cases(
    ("group-by-zip", 'people.group_by("zip").agg(pl.col("income").mean()).collect()', "withheld"),
    ("group-by-unit", 'people.group_by("person_id").agg(pl.col("income").sum()).collect()', "violation"),
    ("group-by-unit-times-one", 'people.group_by(pl.col("person_id") * 1).agg(pl.col("income").sum()).collect()',
     "withheld"),
    ("group-by-unit-as-text", 'people.group_by(pl.col("person_id").cast(pl.String)).agg(pl.len()).collect()',
     "withheld"),
    ("group-by-income", 'people.group_by("income").agg(pl.len()).collect()', "withheld"),
    ("group-by-birth-date", 'people.group_by("birth_date").agg(pl.col("income").mean()).collect()', "withheld"),
    ("group-by-age-and-zip", 'people.group_by("age", "zip").agg(pl.len()).collect()', "withheld"),
    ("distinct-zips", 'people.select("zip").unique().collect()', "withheld"),
    ("unique-subset-keeps-first-row", 'people.unique(subset=["zip"]).collect()', "violation"),
    ("group-by-zip-len-shorthand", 'people.group_by("zip").len().collect()', "withheld"),
    ("group-by-zip-frame-sum", 'people.select("zip", "income").group_by("zip").sum().collect()', "withheld"),
    ("group-by-high-income-flag", 'people.group_by(pl.col("income") > 8000000).agg(pl.col("age").mean()).collect()',
     "withheld"),
    ("group-by-zip-then-filter",
     'people.group_by("zip").agg(pl.col("income").mean()).filter(pl.col("zip") == "97999").collect()', "released"),
)

MANY_ROWS = cases(
    ("heavy-ward-count", 'visits.filter(pl.col("ward") == "Oubliette").select(pl.len(), pl.col("cost").sum()).collect()',
     "withheld"),
    ("group-by-ward", 'visits.group_by("ward").agg(pl.len(), pl.col("cost").mean()).collect()', "withheld"),
    ("heavy-person-by-date", f'visits.filter(pl.col("person_id") == {HEAVY_ID}).group_by("visit_date").agg(pl.len())'
     ".collect()", "withheld"),
    ("heavy-person-by-month",
     f'visits.filter(pl.col("person_id") == {HEAVY_ID}).group_by(pl.col("visit_date").dt.month()).agg(pl.len())'
     ".collect()", "withheld"),
    ("visits-per-person-histogram",
     'visits.group_by("person_id").agg(pl.len()).group_by("len").agg(pl.len().alias("people")).collect()',
     "withheld"),
    ("max-visits-per-person", 'visits.group_by("person_id").agg(pl.len()).select(pl.col("len").max()).collect()',
     "violation"),
    ("costly-visits-count", 'visits.filter(pl.col("cost") > 2000).select(pl.len()).collect()', "withheld"),
    ("heavy-ward-joined-ages",
     'people.join(visits.filter(pl.col("ward") == "Oubliette"), on="person_id").select(pl.col("age").mean())'
     ".collect()", "withheld"),
)

ANALYST_FRAMES = cases(
    ("join-dataframe-literal", f'people.join(pl.DataFrame({{"person_id": [{CANARY_ID}]}}), on="person_id")',
     "refused:GrammarError"),
    ("join-lazyframe-literal", f'people.join(pl.LazyFrame({{"person_id": [{CANARY_ID}]}}), on="person_id")',
     "refused:GrammarError"),
    ("join-from-dict", f'people.join(pl.from_dict({{"person_id": [{CANARY_ID}]}}), on="person_id")',
     "refused:GrammarError"),
    ("join-from-records", f'people.join(pl.from_records([[{CANARY_ID}]]), on="person_id")', "refused:GrammarError"),
    ("join-a-dict", f'people.join({{"person_id": [{CANARY_ID}]}}, on="person_id")', "refused:QueryError"),
    ("join-the-requests-table", 'people.join(requests(), on="person_id")', "refused:QueryError"),
    ("join-the-datasets-table", 'people.join(datasets(), left_on="zip", right_on="dataset")', "refused:QueryError"),
    ("join-a-released-result",
     'people.join(people.group_by("region").agg(pl.len()).collect(), on="region")', "refused:QueryError"),
    ("concat-frames", "pl.concat([people, people])", "refused:GrammarError"),
    ("semi-join", 'people.join(visits.filter(pl.col("ward") == "Oubliette"), on="person_id", how="semi")',
     "refused:QueryError"),
    ("anti-join", 'people.join(visits, on="person_id", how="anti").select(pl.len()).collect()', "refused:QueryError"),
    ("self-join-on-filtered-copy",
     f'people.join(people.filter(pl.col("person_id") == {CANARY_ID}), on="person_id").{INCOME_SUM}', "withheld"),
    ("join-on-masked-key", 'people.join(people, on="name").select(pl.len()).collect()', "refused:PolicyError"),
)


def _attack(arena: Arena, code: str, expect: str) -> Outcome:
    if expect.startswith("refused:"):
        return arena.attack(code, "refused", ename=expect.split(":", 1)[1])
    return arena.attack(code, expect)


@pytest.mark.parametrize(("code", "expect"), UNIT_AND_UNIQUE_FILTERS)
def test_filters_on_the_unit_or_a_unique_value(arena: Arena, code: str, expect: str) -> None:
    _attack(arena, code, expect)


@pytest.mark.parametrize(("code", "expect"), POSITIONAL)
def test_positional_selection_head_tail_slice_row_index(arena: Arena, code: str, expect: str) -> None:
    _attack(arena, code, expect)


@pytest.mark.parametrize(("code", "expect"), SORT_THEN_LIMIT)
def test_sort_then_limit(arena: Arena, code: str, expect: str) -> None:
    _attack(arena, code, expect)


@pytest.fixture(scope="module")
def keys_arena(sec_data: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    """A kernel with a history of its own: these cases expect groups withheld, not held back for being
    close to what other attacks asked for review (everyone, in `expression-get`: a group of everyone but
    the canary would be 1 away, which the differencing check rightly holds)."""
    with open_arena(sec_data, tmp_path_factory.mktemp("keys_arena"), "review") as a:  # type: ignore[arg-type]
        yield a


@pytest.mark.parametrize(("code", "expect"), UNIQUE_KEYS)
def test_group_keys_unique_per_person(keys_arena: Arena, code: str, expect: str) -> None:
    out = _attack(keys_arena, code, expect)
    if expect == "released":  # a filter after the aggregation sees no small group at all
        assert "shape: (0, 2)" in out.shown, out.describe()


@pytest.mark.parametrize(("code", "expect"), MANY_ROWS)
def test_one_person_with_many_rows_is_one_individual(arena: Arena, code: str, expect: str) -> None:
    _attack(arena, code, expect)


@pytest.mark.parametrize(("code", "expect"), ANALYST_FRAMES)
def test_joins_with_analyst_made_frames(arena: Arena, code: str, expect: str) -> None:
    _attack(arena, code, expect)


@pytest.mark.parametrize(("canary", "nobody"), [
    pytest.param(f'people.filter(pl.col("person_id") == {CANARY_ID}).{INCOME_SUM}',
                 f'people.filter(pl.col("person_id") == 7).{INCOME_SUM}', id="unit-id"),
    pytest.param('people.filter(pl.col("income") > 8000000).select(pl.len()).collect()',
                 'people.filter(pl.col("income") > 9000000).select(pl.len()).collect()', id="outlier-threshold"),
    pytest.param('people.filter(pl.col("zip") == "97999").select(pl.col("age").mean()).collect()',
                 'people.filter(pl.col("zip") == "00000").select(pl.col("age").mean()).collect()', id="unique-zip"),
    pytest.param('people.group_by("zip").agg(pl.len()).filter(pl.col("zip") == "97999").collect()',
                 'people.group_by("zip").agg(pl.len()).filter(pl.col("zip") == "00000").collect()',
                 id="filter-after-group-by"),
    pytest.param(f'visits.filter(pl.col("person_id") == {HEAVY_ID}).select(pl.len()).collect()',
                 'visits.filter(pl.col("person_id") == 7).select(pl.len()).collect()', id="heavy-person"),
    pytest.param('people.filter(pl.col("age") > 100).height', 'people.filter(pl.col("age") > 200).height',
                 id="height-of-the-oldest"),
])
def test_the_canary_is_indistinguishable_from_nobody(arena: Arena, canary: str, nobody: str) -> None:
    """Membership: 'exactly one person matches' and 'nobody matches' give the same answer."""
    a, b = arena.run(canary), arena.run(nobody)
    assert _shape_of(a) == _shape_of(b), f"\n{a.describe()}\n{b.describe()}"
    arena.assert_alive()


@pytest.mark.parametrize(("code", "expect"), violations(
    UNIT_AND_UNIQUE_FILTERS + POSITIONAL + SORT_THEN_LIMIT + UNIQUE_KEYS + MANY_ROWS))
def test_what_needs_a_decision_is_refused_when_the_deployment_rejects(reject_arena: Arena, code: str,
                                                                      expect: str) -> None:
    reject_arena.attack(code, "violation")


@pytest.mark.parametrize("keys", ['"region"', '"sex", "region"', 'pl.col("age") > 50'])
def test_the_withheld_groups_note_does_not_reveal_that_someone_matches(arena: Arena, keys: str) -> None:
    canary = arena.run(f'people.filter(pl.col("income") > 8000000).group_by({keys}).agg(pl.len()).collect()')
    nobody = arena.run(f'people.filter(pl.col("income") > 9000000).group_by({keys}).agg(pl.len()).collect()')
    assert _shape_of(canary) == _shape_of(nobody), f"\n{canary.describe()}\n{nobody.describe()}"


def test_a_tracker_differing_by_the_canary_is_held_back(arena: Arena) -> None:
    """Differencing: ten people released, then the same ten plus the canary: the second is not auto-released."""
    first = arena.attack(f'people.filter(pl.col("person_id") < 1030).{INCOME_SUM}', "released")
    assert "income" in first.shown
    arena.attack(f'people.filter((pl.col("person_id") < 1030) | (pl.col("person_id") == {CANARY_ID})).{INCOME_SUM}',
                "violation")


def test_no_late_message_carries_a_canary(arena: Arena, reject_arena: Arena, keys_arena: Arena) -> None:
    assert_no_late_leak(arena)
    assert_no_late_leak(reject_arena, seconds=0.2)
    assert_no_late_leak(keys_arena, seconds=0.2)


def _shape_of(out: Outcome) -> tuple[str, str | None, str]:
    """What the analyst can compare between two answers: kind, error name, and the display without ids."""
    shown = re.sub(r"R[0-9a-f]{8}", "R…", out.shown)
    shown = shown.replace(out.code, "CELL")
    return out.status, out.ename, shown
