"""Attack class: errors and other side channels.

Two ways an error can leak. Its text can quote data (a strict cast naming the
value that failed, a parse error quoting the string). And its mere presence
can be an oracle: if a query fails only when some row reaches a method, then
"error or not" after `filter(income > X)` says whether anyone earns more than
X, and a binary search over X gives the canary's income exactly.

So every construct below runs twice, once behind a filter that keeps exactly
the canary (`income > 8,000,000`) and once behind one that keeps nobody
(`income > 9,000,000`): the analyst must get the same kind of answer both
times (and, where the construct is invalid, a refusal before anything runs).
"""

from __future__ import annotations

import pytest

from .conftest import POSITION_RE, Arena, Outcome, assert_no_late_leak, assert_no_traceback

CANARY_ONLY = 'pl.col("income") > 8000000'
NOBODY = 'pl.col("income") > 9000000'
ALL_BUT_CANARY = 'pl.col("income") < 8000000'
EVERYONE = 'pl.col("income") < 9000000'


def pair(name: str, template: str, expect: str, *, xfail: str | None = None) -> pytest.param:
    """`template` holds {F} (a filter keeping the canary, or nobody) and/or {G} (everyone but, or everyone)."""
    marks = [pytest.mark.xfail(reason=xfail, strict=True)] if xfail else []
    return pytest.param(template, expect, id=name, marks=marks)


# {X}: a threshold on an aggregated column that keeps the canary's group (8,000,000) or no group (9,000,000).
AFTER_AGG = 'people.group_by("region").agg(m=pl.col("income").max()).filter(pl.col("m") > {X})'


ORACLES = [
    # invalid arguments polars checks only when a row reaches the method: refused before running
    pair("truncate-bad-duration", 'people.filter({F}).select(pl.col("birth_date").dt.truncate("1x").n_unique()).collect()',
         "refused:QueryError"),
    pair("truncate-negative-duration",
         'people.filter({F}).group_by(pl.col("birth_date").dt.truncate("-1d")).agg(pl.len()).collect()',
         "refused:QueryError"),
    pair("date-format-bad-directive",
         'people.filter({F}).select(pl.col("birth_date").dt.to_string("%").n_unique()).collect()', "refused:QueryError"),
    pair("strftime-unknown-directive",
         'people.filter({F}).group_by(pl.col("birth_date").dt.strftime("%Q")).agg(pl.len()).collect()',
         "refused:QueryError"),
    pair("to-integer-bad-base", 'people.filter({F}).select(pl.col("zip").str.to_integer(base=1).sum()).collect()',
         "refused:QueryError"),
    pair("cut-duplicate-breaks", 'people.filter({F}).group_by(pl.col("age").cut([1, 1])).agg(pl.len()).collect()',
         "refused:QueryError"),
    pair("zfill-huge", 'people.filter({F}).select(pl.col("zip").str.zfill(1000000000).n_unique()).collect()',
         "refused:QueryError"),
    pair("pad-huge", 'people.filter({F}).group_by(pl.col("zip").str.pad_start(1000000000)).agg(pl.len()).collect()',
         "refused:QueryError"),
    pair("quantile-out-of-range", 'people.filter({F}).select(pl.col("age").quantile(2.0)).collect()',
         "refused:QueryError"),
    pair("head-negative-in-agg", 'people.filter({F}).group_by("region").agg(pl.col("age").head(-1)).collect()',
         "refused:QueryError"),
    # values whose count depends on the data, lined up against rows: refused before running
    pair("plus-filtered-column", 'people.select((pl.col("age") + pl.col("age").filter({G})).sum()).collect()',
         "refused:QueryError"),
    pair("filtered-select", 'people.select(pl.col("age").filter({F})).collect()', "refused:QueryError"),
    pair("filtered-with-columns", 'people.with_columns(x=pl.col("age").filter({F})).select(pl.col("x").mean()).collect()',
         "refused:QueryError"),
    pair("sort-by-filtered", 'people.group_by("region").agg(pl.col("age").sort_by(pl.col("age").filter({G})).sum()).collect()',
         "refused:QueryError"),
    pair("filter-by-filtered-condition",
         'people.select(pl.col("age").filter(pl.col("age").filter({G}) > 0).sum()).collect()', "refused:QueryError"),
    pair("group-key-filtered", 'people.group_by(pl.col("age").filter({G})).agg(pl.len()).collect()',
         "refused:QueryError"),
    pair("filter-condition-filtered", 'people.filter(pl.col("age").filter({F}) > 0).select(pl.len()).collect()',
         "refused:QueryError"),
    pair("sort-key-filtered", 'people.sort(pl.col("age").filter({G})).select(pl.len()).collect()',
         "refused:QueryError"),
    pair("join-key-filtered",
         'people.join(visits, left_on=pl.col("person_id").filter({G}), right_on="person_id").select(pl.len()).collect()',
         "refused:QueryError"),
    pair("head-lined-up", 'people.filter({F}).select(pl.col("age").head(1) + pl.col("age")).collect()',
         "refused:QueryError"),
    # types polars checks only when a row reaches the operation: refused before running (made-up rows)
    pair("negated-condition-in-aggregate", 'people.filter({F}).select((-(pl.col("age") > 3)).sum()).collect()',
         "refused:QueryError"),
    pair("negated-text-group-key", 'people.filter({F}).group_by(-pl.col("zip")).agg(pl.len()).collect()',
         "refused:QueryError"),
    pair("int-and-float-bitwise", 'people.filter({F}).select((pl.col("age") & pl.col("score")).sum()).collect()',
         "refused:QueryError"),
    pair("text-condition-in-when", 'people.filter({F}).select(pl.when(pl.col("zip")).then(1).otherwise(0).sum())'
         ".collect()", "refused:QueryError"),
    pair("negated-condition-as-filter", 'people.filter(({F}) & (-(pl.col("age") > 3) == 1)).select(pl.len()).collect()',
         "refused:QueryError"),
    # regressions, row_level_select_not_type_probed: select/with_columns of rows were not probed
    pair("negated-condition-in-with-columns", 'people.filter({F}).with_columns(x=-(pl.col("age") > 3)).collect()',
         "refused:QueryError"),
    pair("negated-text-in-select", 'people.filter({F}).select(-pl.col("zip")).collect()', "refused:QueryError"),
    pair("int-and-float-bitwise-in-select", 'people.filter({F}).select(pl.col("age") & pl.col("score")).collect()',
         "refused:QueryError"),
    # regressions, aggregated_frame_verbs_not_type_probed: every verb on an aggregated frame ran unprobed,
    # so the type error came only when the canary's group passed a filter on its max
    pair("negated-condition-in-select-after-aggregation", AFTER_AGG + '.select(-(pl.col("m") > 3)).collect()',
         "refused:QueryError"),
    pair("negated-condition-in-with-columns-after-aggregation",
         AFTER_AGG + '.with_columns(x=-(pl.col("m") > 3)).collect()', "refused:QueryError"),
    pair("negated-condition-as-filter-after-aggregation", AFTER_AGG + '.filter(-(pl.col("m") > 3) == 1).collect()',
         "refused:QueryError"),
    pair("negated-text-sort-key-after-aggregation", AFTER_AGG + '.sort(-pl.col("region")).collect()',
         "refused:QueryError"),
    pair("negated-text-unique-subset-after-aggregation", AFTER_AGG + '.unique(subset=[-pl.col("region")]).collect()',
         "refused:QueryError"),
    pair("negated-text-group-key-after-aggregation", AFTER_AGG + '.group_by(-pl.col("region")).agg(pl.len()).collect()',
         "refused:QueryError"),
    pair("negated-condition-in-aggregate-after-aggregation",
         AFTER_AGG + '.group_by("region").agg((-(pl.col("m") > 3)).sum()).collect()', "refused:QueryError"),
    # regressions, aggregated_frame_lengths_not_checked: on an aggregated frame a filtered column lined up
    # against the whole one broadcasts when one group passes and fails when none does (or several do)
    pair("filtered-plus-whole-after-aggregation",
         'people.group_by("region").agg(m=pl.col("income").max())'
         '.select(pl.col("m").filter(pl.col("m") > {X}) + pl.col("m")).collect()', "refused:QueryError"),
    pair("filtered-in-with-columns-after-aggregation",
         'people.group_by("region").agg(m=pl.col("income").max())'
         '.with_columns(x=pl.col("m").filter(pl.col("m") > {X})).collect()', "refused:QueryError"),
    pair("filtered-sort-key-after-aggregation",
         'people.group_by("region").agg(m=pl.col("income").max())'
         '.sort(pl.col("m").filter(pl.col("m") > {X})).collect()', "refused:QueryError"),
    pair("filtered-filter-after-aggregation",
         'people.group_by("region").agg(m=pl.col("income").max())'
         '.filter(pl.col("m").filter(pl.col("m") > {X}) > 0).collect()', "refused:QueryError"),
    # regressions, computed_datetime_panics: a number turned into a date can leave the calendar's range, and
    # polars then panics in Rust (dt.month_start, truncate, to_string...) on exactly the rows holding it
    pair("number-cast-to-datetime", 'people.filter({F}).select((pl.col("income") * 1000000000).cast(pl.Datetime("ms"))'
         '.dt.month_start().n_unique()).collect()', "refused:QueryError"),
    pair("number-cast-to-date-in-with-columns",
         'people.filter({F}).with_columns(d=(pl.col("income") * 1000).cast(pl.Date)).collect()', "refused:QueryError"),
    pair("date-plus-computed-duration", 'people.filter({F}).select((pl.col("birth_date") + (pl.col("birth_date") - '
         'pl.date(1, 1, 1))).dt.to_string("%Y").n_unique()).collect()', "refused:QueryError"),
    pair("number-as-clip-bound-of-a-date", 'people.filter({F}).select(pl.col("birth_date").clip(pl.col("income") * '
         '1000).dt.month_end().n_unique()).collect()', "refused:QueryError"),
    pair("number-typed-as-datetime-in-a-branch",
         'people.select(pl.when({F}).then(pl.lit(100000000000000000, pl.Datetime("ms"))).otherwise(pl.col("birth_date"))'
         '.dt.truncate("1mo").n_unique()).collect()', "refused:QueryError"),
    # constructs that never fail: the same ordinary answer both times
    pair("integer-division-by-zero", 'people.filter({F}).select((pl.col("income") // 0).sum()).collect()', "violation"),
    pair("division-by-zero-keyed-on-one-person",
         'people.filter({F}).select((pl.col("age") // (pl.col("income") - 8675309)).sum()).collect()', "violation"),
    pair("float-division-by-zero-keyed-on-one-person",
         'people.filter({F}).select((pl.col("age") / (pl.col("income") - 8675309)).sum()).collect()', "violation"),
    pair("division-by-zero-in-a-filter",
         'people.filter(({F}) & ((pl.col("age") // (pl.col("income") - 8675309)) == 0)).select(pl.len()).collect()',
         "withheld"),
    pair("cast-overflow", 'people.filter({F}).select(pl.col("income").cast(pl.Int16).n_unique()).collect()',
         "violation"),
    pair("parse-garbage-date", 'people.filter({F}).select(pl.col("zip").str.to_date("%Y-%m-%d").null_count()).collect()',
         "violation"),
    pair("parse-datetime", 'people.filter({F}).select(pl.col("zip").str.to_datetime("%Y").n_unique()).collect()',
         "violation"),
    pair("parse-datetime-as-a-condition",
         'people.filter(({F}) & pl.col("zip").str.to_datetime("%Y").is_null()).select(pl.len()).collect()', "withheld"),
    pair("extract-missing-group", 'people.filter({F}).select(pl.col("zip").str.extract("(9)", 5).n_unique()).collect()',
         "violation"),
    pair("get-out-of-range", 'people.filter({F}).group_by("region").agg(pl.col("age").get(5)).collect()', "violation"),
    pair("wrapping-multiplication", 'people.filter({F}).select((pl.col("income") * 1000000000000000).sum()).collect()',
         "withheld"),
    pair("mixed-type-replace", 'people.filter({F}).select(pl.col("income").replace(8675309, "x").n_unique()).collect()',
         "refused:QueryError"),
]

STRICT_AND_QUOTING = [
    pytest.param('people.select(pl.col("zip").cast(pl.Int64, strict=True).sum()).collect()', "QueryError",
                 id="strict-cast"),
    pytest.param('people.select(pl.col("zip").cast(pl.Date).n_unique()).collect()', "QueryError", id="text-to-date-cast"),
    pytest.param('people.select(pl.col("zip").str.to_date("%Y", strict=True).n_unique()).collect()', "QueryError",
                 id="strict-parse"),
    pytest.param('people.select(pl.col("zip").str.to_integer(strict=True).sum()).collect()', "QueryError",
                 id="strict-to-integer"),
    pytest.param('people.select(pl.col("zip").str.contains("(").sum()).collect()', "QueryError", id="invalid-regex"),
    pytest.param('people.select(pl.col("zip").str.contains("(a{1000}){1000}").sum()).collect()', "QueryError",
                 id="regex-too-big"),
    pytest.param('people.filter(pl.col("zip").str.json_decode().is_null()).select(pl.len()).collect()', "GrammarError",
                 id="json-decode"),
    pytest.param('people.select(pl.col("income").fill_null("x").sum()).collect()', "QueryError",
                 id="type-error-at-planning"),
]


def _fill(template: str, canary: bool) -> str:
    return template.replace("{F}", CANARY_ONLY if canary else NOBODY).replace(
        "{G}", ALL_BUT_CANARY if canary else EVERYONE).replace("{X}", "8000000" if canary else "9000000")


def _kind(out: Outcome) -> tuple[str, str | None, bool]:
    return out.status, out.ename, out.review_id is not None


@pytest.mark.parametrize(("template", "expect"), ORACLES)
def test_error_or_not_does_not_depend_on_the_canary(arena: Arena, template: str, expect: str) -> None:
    outcomes = []
    for canary in (True, False):
        code = _fill(template, canary)
        if expect.startswith("refused:"):
            out = arena.attack(code, "refused", ename=expect.split(":", 1)[1])
        else:
            out = arena.attack(code, expect)
        outcomes.append(out)
    assert _kind(outcomes[0]) == _kind(outcomes[1]), f"\n{outcomes[0].describe()}\n{outcomes[1].describe()}"


@pytest.mark.parametrize(("code", "ename"), STRICT_AND_QUOTING)
def test_errors_that_could_quote_values_are_refused_before_running(arena: Arena, code: str, ename: str) -> None:
    arena.attack(code, "refused", ename=ename)


@pytest.mark.parametrize("code", [
    pytest.param('people.select(pl.col("income").round(-1).sum()).collect()', id="round-negative"),
    pytest.param('people.select(pl.col("income").std(ddof=-1)).collect()', id="ddof-negative"),
    pytest.param('people.select(pl.col("income").quantile(0.5, interpolation="bogus")).collect()',
                 id="unknown-interpolation"),
    pytest.param('people.select(pl.col("income").is_between(1, 2, closed="bogus").sum()).collect()',
                 id="unknown-closed"),
    pytest.param('people.select(pl.col("income").rank(method="bogus")).collect()', id="unknown-rank-method"),
    pytest.param('people.select(pl.col("income").rolling_mean(-1)).collect()', id="negative-window"),
    pytest.param('people.select(pl.col("birth_date").dt.epoch("xx").sum()).collect()', id="unknown-time-unit"),
    pytest.param('people.select(pl.col("zip").str.pad_start(8, "ab").n_unique()).collect()', id="two-char-fill"),
    pytest.param('people.select(pl.col("income").cast(pl.Datetime("us", "Not/AZone")).n_unique()).collect()',
                 id="unknown-time-zone"),
    pytest.param('people.select(pl.lit(1000000000000, pl.Int8)).collect()', id="literal-does-not-fit"),
])
def test_polars_argument_checks_are_refusals_not_internal_errors(arena: Arena, code: str) -> None:
    """Regression: these reached polars' Python-side validation and came back as InternalError."""
    out = arena.attack(code, "refused", ename="QueryError")
    assert ("cannot" in out.evalue or "not a valid type" in out.evalue) and "InternalError" not in out.text


@pytest.mark.parametrize("code", [
    pytest.param('people.with_columns(x=pl.col("income").round(-1)).collect()', id="polars-argument-check"),
    pytest.param('people.select(pl.col("age").filter(pl.col("income") > 9000000)).collect()', id="row-level-length"),
])
def test_refusals_found_while_compiling_carry_a_position(arena: Arena, code: str) -> None:
    out = arena.run(code)
    assert out.status == "error" and POSITION_RE.search(out.evalue), out.describe()


def test_sort_with_mismatched_descending_list_is_a_refusal(arena: Arena) -> None:
    arena.attack('people.sort("income", descending=[True, False]).select(pl.len()).collect()', "refused",
                 ename="QueryError")


PANIC = ('people.filter((pl.col("income") * {scale}).cast(pl.Datetime("ms")).dt.month_start().is_not_null())'
         ".select(pl.len()).collect()")


def test_a_value_dependent_panic_gets_the_same_answer_whatever_the_data(arena: Arena) -> None:
    """Regression, computed_datetime_panics: income * 1e9 ms is past the year 262143 for the canary only, and
    month_start panicked in Rust on it (no reply at all), while income * 1e8 ms ran for everyone. Casting a
    computed number to a date is now refused before anything runs, so both scales get the same refusal,
    word for word: whether one person's value is in range is no longer observable."""
    outs = [arena.attack(PANIC.format(scale=scale), "refused", ename="QueryError")
            for scale in ("1000000000", "100000000")]
    for out in outs:
        assert_no_traceback(out.text)
        assert POSITION_RE.search(out.evalue) and "Hint:" in out.evalue, out.describe()

    def words(out: Outcome) -> tuple[str | None, list[str]]:  # all but the quoted cell excerpt, which differs
        return out.ename, [line for line in out.evalue.splitlines() if not line.startswith("    ")]

    assert words(outs[0]) == words(outs[1])
    assert "casting a number to pl.Datetime" in outs[0].evalue


@pytest.mark.parametrize("code", [
    pytest.param('people.group_by(pl.col("birth_date").dt.month_start()).agg(pl.len()).collect()', id="month-start-key"),
    pytest.param('people.group_by(pl.col("birth_date").cast(pl.Datetime("ms")).dt.truncate("100y")).agg(pl.len())'
                 '.collect()', id="date-cast-to-datetime"),
    pytest.param('people.group_by((pl.col("birth_date") - pl.date(2000, 1, 1)).dt.total_days() > 0).agg(pl.len())'
                 '.collect()', id="difference-of-dates"),
])
def test_temporal_methods_on_the_data_still_run(arena: Arena, code: str) -> None:
    """The control: dates read from the data (or a difference of two dates) stay within the calendar."""
    arena.attack(code, "released")


def test_no_late_message_carries_a_canary(arena: Arena) -> None:
    assert_no_late_leak(arena)
