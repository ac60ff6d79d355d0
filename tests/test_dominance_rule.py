"""The dominance rule: no released sum, mean, std or var is one individual's value in disguise.

What it says (`policy.rules.dominated`): in each group, the values an
aggregate is fed spread around their mean by SS = sum of (x - mean)^2; one
individual whose rows hold more than `max_share` (default 0.5) of SS, or more
than that share of the values, gets the value suppressed, as a cell that
fails the support rule is.

How it is checked here:
- the pure rule and its per-row bound as truth tables;
- the polars form (one pass where one row is one individual; a bound, then an
  exact per-individual pass for the groups it leaves open) against the pure
  rule on random data, through the lazy frame and the two-pass `FastChecks`,
  which must agree bit for bit;
- the range bound (one row each, a dataset column): what it clears, what it
  leaves open, where it never applies;
- the deployment key `max_share` (global and per dataset, strictly checked);
- a real kernel on a small deployment: a dominated sum is suppressed, a
  balanced one released, and `max_share = 1` switches the rule off.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import polars as pl
import pytest
from conftest import execute, result_text, run_kernel

from bastion_kernel import config
from bastion_kernel import frames as F
from bastion_kernel import release as R
from bastion_kernel.errors import ConfigError
from bastion_kernel.plan import BinOp, Call, Col, Lit
from bastion_kernel.policy import rules

K = 3
OUTLIER = 987654.0

# ------------------------------------------------------------------ the pure rule

BALANCED = [[10.0], [12.0], [11.0], [13.0], [9.0]]
ONE_OUTLIER = [[10.0], [12.0], [11.0], [13.0], [OUTLIER]]


@pytest.mark.parametrize(("rows", "share", "expected"), [
    pytest.param(BALANCED, 0.5, False, id="balanced"),
    pytest.param(ONE_OUTLIER, 0.5, True, id="one-outlier"),
    pytest.param([[x + 1e9 for x in r] for r in ONE_OUTLIER], 0.5, True, id="shifted-outlier"),
    pytest.param([[x * -1e-3 for x in r] for r in ONE_OUTLIER], 0.5, True, id="scaled-outlier"),
    pytest.param([[5.0], [5.0], [5.0]], 0.5, False, id="all-equal"),
    pytest.param([], 0.5, False, id="no-values"),
    pytest.param([[0.0], [0.0], [1.0], [1.0]], 0.5, False, id="two-at-each-end"),
    pytest.param([[0.0], [0.0], [0.0], [1.0]], 0.5, True, id="one-alone-at-an-end"),
    pytest.param([[0.0], [0.0], [0.0], [1.0]], 0.8, False, id="a-looser-share"),
    pytest.param(ONE_OUTLIER, 1.0, False, id="share-1-switches-it-off"),
    pytest.param([[1.0], [2.0], [math.nan]], 0.5, True, id="nan-fails-closed"),
    pytest.param([[1.0], [2.0], [math.inf]], 0.5, True, id="inf-fails-closed"),
    pytest.param([[1e308], [-1e308], [0.0]], 0.5, True, id="overflow-fails-closed"),
    pytest.param([[7.0]], 0.5, True, id="one-value"),
    # Most of the rows at one value: little of the spread, but the mean is theirs.
    pytest.param([[2718.0] * 40, [900.0, 910.0], [920.0], [930.0, 940.0], [905.0]], 0.5, True, id="heavy-rows"),
    pytest.param([[50.0] * 6, [40.0], [60.0], [45.0], [55.0]], 0.5, True, id="most-rows-even-if-ordinary"),
    # Half the rows, spread like everyone else's: no dominance.
    pytest.param([[4.0, 6.0] * 3, [1.0], [9.0], [2.0], [8.0], [3.0], [7.0]], 0.5, False, id="many-plain-rows"),
    # A third of the rows, but at both ends: most of the spread (what std and var release).
    pytest.param([[1.0, 9.0] * 2, [4.0], [6.0], [5.0, 5.0], [4.5], [5.5], [5.0], [5.0]], 0.5, True,
                 id="spread-rows"),
])
def test_the_rule_as_a_truth_table(rows: list[list[float]], share: float, expected: bool) -> None:
    assert rules.dominated(rows, share) is expected


def test_the_per_row_bound_never_contradicts_the_rule() -> None:
    """Whenever the bound decides, it decides as the rule (it may only leave a group open)."""
    rng = random.Random(5)
    decided = 0
    for _ in range(2000):
        m = rng.choice([1, 2, 4])
        rows = [[rng.choice([rng.gauss(0, 1), rng.gauss(0, 1), 30.0]) for _ in range(rng.randint(1, m))]
                for _ in range(rng.randint(2, 8))]
        values = [x for r in rows for x in r]
        mean = sum(values) / len(values)
        total = sum((x - mean) ** 2 for x in values)
        top = max((x - mean) ** 2 for x in values)
        bound = rules.dominance_bound(m, len(values), top, total, 0.5)
        if m == 1:
            assert bound is not None, "one row per individual: the bound is the rule"
        if bound is not None and max(values) != min(values):
            decided += 1
            assert bound is rules.dominated(rows, 0.5), rows
    assert decided > 500


# ------------------------------------------------------------------ the polars form, both engine paths


def _deploy(folder: Path, frames: dict[str, pl.DataFrame], share: float | None = None,
            per_dataset: dict[str, float] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = f'[bastion]\nstate_dir = "state"\nmin_group_size = {K}\n'
    if share is not None:
        text += f"max_share = {share}\n"
    for name, df in frames.items():
        df.write_parquet(folder / f"{name}.parquet")
        text += f'\n[datasets.{name}]\npath = "{name}.parquet"\nprivacy_unit = "pid"\n'
        if per_dataset and name in per_dataset:
            text += f"max_share = {per_dataset[name]}\n"
    (folder / "bastion.toml").write_text(text, encoding="utf-8")
    return folder / "bastion.toml"


def _random_rows(rng: random.Random, rows_each: tuple[int, ...], outliers: bool = True) -> pl.DataFrame:
    out = []
    for pid in range(rng.randint(3, 12)):
        for _ in range(rng.choice(rows_each)):
            x = rng.choice([rng.gauss(50, 10), rng.gauss(50, 10), rng.gauss(50, 10), 900.0 if outliers else 50.0,
                            None])
            out.append((pid, rng.choice("ab"), x))
    return pl.DataFrame(out, schema={"pid": pl.Int64, "g": pl.String, "x": pl.Float64}, orient="row")


def _both_paths(frame: object) -> pl.DataFrame:
    """The lazy frame's answer, after checking that the two-pass release answers exactly the same."""
    lazy = frame.lf.collect()  # type: ignore[attr-defined]
    fast = R._fast_checks(frame)  # type: ignore[arg-type]
    if fast is not None:
        two_pass = fast.settle(fast.first.collect(), lambda lf: lf.collect())
        by = [c for c in lazy.columns[:1]]
        left, right = lazy.sort(by, nulls_last=True), two_pass.sort(by, nulls_last=True)
        # Which values were suppressed must agree exactly (float sums may differ in the last bit
        # between engines, as they did before this rule).
        assert left.select(pl.all().is_null()).equals(right.select(pl.all().is_null()))
        assert left.get_column(R.SUPPRESSED_COLUMN).equals(right.get_column(R.SUPPRESSED_COLUMN))
    return lazy


def _open_groups(fast: object) -> int:
    """How many groups the first pass leaves open, for the second pass to decide."""
    first = fast.first.collect()  # type: ignore[attr-defined]
    return int(fast.finish(first, None, flag_open=True).collect().get_column(F.OPEN_COLUMN).sum())  # type: ignore


@pytest.mark.parametrize("rows_each", [(1,), (1, 1, 2, 5)], ids=["one-row-each", "several-rows"])
def test_the_polars_form_decides_as_the_rule_on_both_engine_paths(tmp_path: Path, rows_each: tuple[int, ...]) -> None:
    rng = random.Random(11)
    checked = suppressed = 0
    for trial in range(25):
        df = _random_rows(rng, rows_each)
        dep = config.load(_deploy(tmp_path / f"t{trial}", {"t": df}))
        ctx = F.Ctx(itertools.count(), state_dir=dep.state_dir)
        src = F.source(dep.datasets["t"], ctx)
        frame = F.aggregate(src, [Col("g")], [Call("sum", Col("x"))], ctx)
        got = _both_paths(frame)
        for row in got.filter(pl.col(R.OK_COLUMN)).iter_rows(named=True):
            sub = df.filter((pl.col("g") == row["g"]) & pl.col("x").is_not_null())
            if sub.get_column("pid").n_unique() < K:
                continue  # the support rule decides this one
            per = [s.get_column("x").to_list() for _, s in sub.group_by("pid")]
            checked += 1
            suppressed += row["x"] is None
            assert (row["x"] is None) is rules.dominated(per, 0.5), (row, per)
    assert checked > 20 and 0 < suppressed < checked


# ------------------------------------------------------------------ the range bound (one row each)
# Where one row is one individual and the input is a dataset column (or a filter of it), the
# two-pass release clears groups with the column's range in the file instead of each group's
# extremes (`frames._dominance_bounded`); groups it cannot clear are decided exactly in the
# second pass. Same answers as the lazy frame, which keeps the one-pass exact form.


def test_without_outliers_the_range_clears_every_group_in_the_first_pass(tmp_path: Path) -> None:
    rng = random.Random(3)
    df = pl.DataFrame([(pid, rng.choice("abcd"), rng.gauss(50, 10)) for pid in range(400)],
                      schema={"pid": pl.Int64, "g": pl.String, "x": pl.Float64}, orient="row")
    dep = config.load(_deploy(tmp_path, {"t": df}))
    ctx = F.Ctx(itertools.count(), state_dir=dep.state_dir)
    frame = F.aggregate(F.source(dep.datasets["t"], ctx), [Col("g")], [Call("mean", Col("x"))], ctx)
    fast = R._fast_checks(frame)  # type: ignore[arg-type]
    assert fast is not None and [d.one_row is not None for d in fast.doms] == [True]  # type: ignore[attr-defined]
    assert _open_groups(fast) == 0
    assert _both_paths(frame).get_column("x").null_count() == 0


def test_an_outlier_in_the_file_leaves_groups_open_and_the_exact_pass_decides(tmp_path: Path) -> None:
    """The outlier's group is suppressed; the other group, open under the wide range, is released."""
    xs = [float(10 + i % 7) for i in range(40)]
    df = pl.DataFrame({"pid": list(range(41)), "g": ["a"] * 20 + ["b"] * 21, "x": [*xs, OUTLIER]})
    dep = config.load(_deploy(tmp_path, {"t": df}))
    ctx = F.Ctx(itertools.count(), state_dir=dep.state_dir)
    frame = F.aggregate(F.source(dep.datasets["t"], ctx), [Col("g")], [Call("sum", Col("x"))], ctx)
    fast = R._fast_checks(frame)  # type: ignore[arg-type]
    assert fast is not None
    assert _open_groups(fast) == 2
    got = _both_paths(frame).sort("g")
    assert got.get_column("x").to_list() == [sum(xs[:20]), None]


# The values' kinds: floats; integers; floats shifted by 1e9 (a mean far larger than the spread, where
# rounding could decide); a column without nulls, whose values are counted by rows (`frames._values_mask`).
VALUE_KINDS = {"float": (pl.col("x"), 0.0), "int": (pl.col("x").round().cast(pl.Int64), 0.0),
               "shifted": (pl.col("x") + 1e9, 1e9), "no-nulls": (pl.col("x").fill_null(35.0), 0.0)}


@pytest.mark.parametrize("filtered", [False, True], ids=["column", "filtered-column"])
@pytest.mark.parametrize("kind", list(VALUE_KINDS))
def test_the_range_bound_decides_as_the_rule_on_random_data(tmp_path: Path, filtered: bool, kind: str) -> None:
    rng = random.Random(17)
    values, shift = VALUE_KINDS[kind]
    checked = bounded = 0
    for trial in range(20):
        df = pl.concat([_random_rows(rng, (1,), outliers=trial % 2 == 0).with_columns(pl.col("pid") + 100 * i)
                        for i in range(4)]).with_columns(values)  # 12 to 48 individuals: x > 40 often has k a side
        dep = config.load(_deploy(tmp_path / f"t{trial}", {"t": df}))
        ctx = F.Ctx(itertools.count(), state_dir=dep.state_dir)
        value = Call("filter", Col("x"), (BinOp(">", Col("x"), Lit(40.0 + shift)),)) if filtered else Col("x")
        frame = F.aggregate(F.source(dep.datasets["t"], ctx), [Col("g")], [Call("sum", value)], ctx)
        fast = R._fast_checks(frame)  # type: ignore[arg-type]
        bounded += fast is not None and any(d.one_row is not None for d in fast.doms)  # type: ignore[attr-defined]
        got = _both_paths(frame)
        for row in got.filter(pl.col(R.OK_COLUMN)).iter_rows(named=True):
            keep = pl.col("x").is_not_null() & ((pl.col("x") > 40.0 + shift) if filtered else pl.lit(True))
            sub = df.filter((pl.col("g") == row["g"]) & keep)
            other_side = df.filter(pl.col("g") == row["g"]).height - sub.height
            if sub.height < K or (filtered and other_side < K):
                continue  # the support rule (and, for x > 40, the split rule: k on each side) decides this one
            checked += 1
            per = [[float(v)] for v in sub.get_column("x")]
            assert (row["x"] is None) is rules.dominated(per, 0.5), row
    assert checked > 15 and bounded >= 10  # the range stood in for the extremes in most trials


def test_no_range_where_values_are_computed_or_the_file_has_no_exact_one(tmp_path: Path) -> None:
    n = 1000
    df = pl.DataFrame({"pid": list(range(n)), "g": ["a"] * n, "x": [float(i % 12) for i in range(n)],
                       "y": [1.0] * (n - 1) + [math.nan], "big": [2**60 + i for i in range(n)],
                       "tail": [float(i % 3) for i in range(n - 1)] + [1e6]})
    dep = config.load(_deploy(tmp_path, {"t": df}))
    ctx = F.Ctx(itertools.count(), state_dir=dep.state_dir)
    src = F.source(dep.datasets["t"], ctx)
    profile = F.unit_profile(dep.datasets["t"], dep.state_dir)
    assert profile.range_of("x") == (0.0, 11.0) and profile.range_of("pid") == (0.0, n - 1.0)
    assert profile.range_of("y") is None and profile.range_of("big") is None  # NaN; beyond 2^53
    # One value far out: every group would need its own extremes in a second pass, so they stay in the first.
    assert [r[0] for r in profile.ranges].count("tail") == 1 and profile.range_of("tail") is None

    def bounded(frame: object, value: object) -> bool:
        agg = F.aggregate(frame, [Col("g")], [Call("sum", value)], ctx)  # type: ignore[arg-type]
        fast = R._fast_checks(agg)  # type: ignore[arg-type]
        return fast is not None and any(d.one_row is not None for d in fast.doms)  # type: ignore[attr-defined]

    assert bounded(src, Col("x"))
    assert bounded(F.filter_(src, [BinOp(">", Col("x"), Lit(2.0))], ctx), Col("x"))
    assert not bounded(src, BinOp("*", Col("x"), Lit(2.0)))  # a computed value: no known range
    # The same name, other values: a frame computed by with_columns is not the file's column.
    rescaled = F.select(src, [Call("alias", BinOp("*", Col("x"), Lit(1000.0)), ("x",))], ctx, keep=True)
    assert rescaled.columns["x"].dtype == pl.Float64 and not bounded(rescaled, Col("x"))
    assert not bounded(src, Col("y")) and not bounded(src, Col("big")) and not bounded(src, Col("tail"))


def test_a_column_over_its_whole_file_is_cleared_by_the_files_own_facts(tmp_path: Path) -> None:
    """No group keys, no filter, one row each: the one group is the file, so the column's variance and
    range (measured once per file version) clear it with nothing computed in the query. A far outlier
    they cannot clear is tested by the query, and suppressed."""
    n = 40
    xs = [float(10 + i % 7) for i in range(n)]
    df = pl.DataFrame({"pid": list(range(n)), "g": ["a", "b"] * (n // 2), "x": xs,
                       "tail": xs[:-1] + [OUTLIER], "gap": xs[:-1] + [None]})
    dep = config.load(_deploy(tmp_path, {"t": df}))
    ctx = F.Ctx(itertools.count(), state_dir=dep.state_dir)
    src = F.source(dep.datasets["t"], ctx)

    def settled(frame: object, keys: list, value: Col) -> bool:
        facts = [rules.analyse_agg(Call("sum", value), frame.columns)]  # type: ignore[attr-defined]
        return value in F._settled_by_file(frame, keys, facts, F._file_profile(frame, ctx))  # type: ignore[arg-type]

    assert settled(src, [], Col("x"))
    assert settled(F.sort(src, [Col("x")], ctx, False, None), [], Col("x"))  # the same rows
    assert not settled(src, [Col("g")], Col("x"))  # a group: its own spread decides
    assert not settled(F.filter_(src, [BinOp(">", Col("x"), Lit(12.0))], ctx), [], Col("x"))  # a subset
    assert not settled(src, [], Col("tail")) and not settled(src, [], Col("gap"))  # an outlier; nulls
    aggs = [Call("alias", Call("sum", Col(c)), (c,)) for c in ("x", "tail", "gap")]
    row = _both_paths(F.aggregate(src, [], aggs, ctx, verb="select")).row(0, named=True)
    assert (row["x"], row["tail"], row["gap"]) == (sum(xs), None, sum(xs[:-1]))


def test_a_grouping_whose_every_group_cleared_is_not_tested_again_on_the_same_file(tmp_path: Path) -> None:
    """Once a release saw every group of `g` clear `x` (one row each, the whole file grouped by its own
    column), later queries grouping the same file version by `g` compute nothing for `x`, with the same
    answer. Other keys, a filter, a group the bound left open, a new file version: tested as usual."""
    rng = random.Random(5)
    n = 400
    groups = [rng.choice("abc") for _ in range(n)]
    df = pl.DataFrame({"pid": list(range(n)), "g": groups, "h": [rng.choice("pq") for _ in range(n)],
                       "x": [rng.gauss(50, 10) for _ in range(n)],
                       "z": [7.0 if g == "c" else rng.gauss(50, 10) for g in groups]})  # "c": all alike
    dep = config.load(_deploy(tmp_path, {"t": df}))
    ctx = F.Ctx(itertools.count(), state_dir=dep.state_dir)
    src = F.source(dep.datasets["t"], ctx)

    def query(frame: object, key: str, column: str, where: object = None) -> tuple[bool, object]:
        """The aggregation (of `column`, filtered by `where` if given), and whether it computes the
        dominance rule for that value."""
        value = Col(column) if where is None else Call("filter", Col(column), (where,))
        agg = F.aggregate(frame, [Col(key)], [Call("alias", Call("sum", value), (column,))], ctx)  # type: ignore
        fast = R._fast_checks(agg)  # type: ignore[arg-type]
        return fast is not None and any(d.value == value for d in fast.doms), agg  # type: ignore[attr-defined]

    tested, agg = query(src, "g", "x")
    assert tested
    shown = ["g", "x", R.SUPPRESSED_COLUMN]
    first = _both_paths(agg).sort("g").select(shown)  # the two-pass release sees every group clear
    tested, agg = query(src, "g", "x")
    assert not tested
    assert _both_paths(agg).sort("g").select(shown).equals(first) and first.get_column("x").null_count() == 0
    assert not query(F.sort(src, [Col("x")], ctx, False, None), "g", "x")[0]  # the same groups
    assert query(src, "h", "x")[0]  # other groups
    assert query(F.filter_(src, [BinOp(">", Col("x"), Lit(40.0))], ctx), "g", "x")[0]  # subsets of them
    tested, agg = query(src, "g", "z")
    assert tested
    _both_paths(agg)  # "c" holds one value seven times: left open by the bound, decided by the exact pass
    assert query(src, "g", "z")[0]
    over_40 = BinOp(">", Col("x"), Lit(40.0))  # a value filtered inside the aggregate: the same, per condition
    tested, agg = query(src, "g", "x", over_40)
    assert tested
    filtered = _both_paths(agg).sort("g").select(shown)
    tested, agg = query(src, "g", "x", over_40)
    assert not tested and _both_paths(agg).sort("g").select(shown).equals(filtered)
    assert query(src, "g", "x", BinOp(">", Col("x"), Lit(45.0)))[0]  # another condition: other values
    df.write_parquet(tmp_path / "t.parquet")  # the owner replaces the file: a new version
    assert query(src, "g", "x")[0]


def test_the_shift_and_scale_of_an_expression_do_not_change_the_decision(tmp_path: Path) -> None:
    df = pl.DataFrame({"pid": list(range(10)), "g": ["a"] * 10, "x": [float(i) for i in range(9)] + [OUTLIER]})
    dep = config.load(_deploy(tmp_path, {"t": df}))
    ctx = F.Ctx(itertools.count(), state_dir=dep.state_dir)
    src = F.source(dep.datasets["t"], ctx)
    shifted = BinOp("+", Col("x"), Lit(1e15))
    scaled = BinOp("*", Col("x"), Lit(-1e-6))
    aggs = [Call(f, e) for f in ("sum", "mean", "std", "var") for e in (Col("x"), shifted, scaled)]
    aggs = [Call("alias", a, (f"c{i}",)) for i, a in enumerate(aggs)]
    got = _both_paths(F.aggregate(src, [Col("g")], aggs, ctx))
    assert got.row(0, named=True)[R.SUPPRESSED_COLUMN] == len(aggs)


def test_integers_a_float_cannot_tell_apart_fail_closed(tmp_path: Path) -> None:
    """Nine zeros and one 500, all shifted by 2**62: as floats all equal, as an integer sum exact."""
    df = pl.DataFrame({"pid": list(range(10)), "g": ["a"] * 10, "x": [0] * 9 + [500]})
    dep = config.load(_deploy(tmp_path, {"t": df}))
    ctx = F.Ctx(itertools.count(), state_dir=dep.state_dir)
    src = F.source(dep.datasets["t"], ctx)
    shifted = Call("alias", Call("sum", BinOp("+", Col("x"), Lit(2**62))), ("shifted",))
    got = _both_paths(F.aggregate(src, [Col("g")], [shifted], ctx))
    assert got.get_column("shifted").to_list() == [None]


def test_a_join_is_checked_per_individual_of_each_side(tmp_path: Path) -> None:
    """Ten people with balanced incomes, one of them with many costly visits: the visits side dominates."""
    people = pl.DataFrame({"pid": list(range(10)), "g": ["a"] * 10, "income": [100.0 + i for i in range(10)]})
    visits = pl.DataFrame({"pid": [0] * 30 + list(range(1, 10)), "cost": [500.0] * 30 + [10.0 + i for i in range(9)]})
    dep = config.load(_deploy(tmp_path, {"people": people, "visits": visits}))
    ctx = F.Ctx(itertools.count(), state_dir=dep.state_dir)
    joined = F.join(F.source(dep.datasets["visits"], ctx), F.source(dep.datasets["people"], ctx), ctx,
                    on=[Col("pid")], left_on=None, right_on=None, how="inner", suffix="_r", coalesce=None)
    got = _both_paths(F.aggregate(joined, [Col("g")], [Call("sum", Col("cost")), Call("mean", Col("income"))], ctx))
    row = got.row(0, named=True)
    assert row["cost"] is None, "person 0's visits are most of the cost"
    # Income repeats once per visit: person 0 holds 30 of the 39 joined rows, so the mean is theirs
    # too. Each side's individuals are weighed on their own.
    assert row["income"] is None


def test_a_per_dataset_share_applies_to_that_datasets_individuals(tmp_path: Path) -> None:
    df = pl.DataFrame({"pid": list(range(4)), "g": ["a"] * 4, "x": [0.0, 0.0, 0.0, 1.0]})  # the 1 holds 100%
    dep = config.load(_deploy(tmp_path, {"t": df}, share=0.5, per_dataset={"t": 1.0}))
    ctx = F.Ctx(itertools.count(), state_dir=dep.state_dir)
    got = _both_paths(F.aggregate(F.source(dep.datasets["t"], ctx), [Col("g")], [Call("sum", Col("x"))], ctx))
    assert got.get_column("x").to_list() == [1.0]


# ------------------------------------------------------------------ the deployment key


def _load(tmp_path: Path, bastion: str = "", dataset: str = "") -> config.Deployment:
    pl.DataFrame({"pid": [1, 2]}).write_parquet(tmp_path / "t.parquet")
    (tmp_path / "b.toml").write_text(
        f'[bastion]\n{bastion}\n[datasets.t]\npath = "t.parquet"\nprivacy_unit = "pid"\n{dataset}\n', encoding="utf-8")
    return config.load(tmp_path / "b.toml")


def test_max_share_defaults_to_one_half_and_a_dataset_may_override_it(tmp_path: Path) -> None:
    assert _load(tmp_path).datasets["t"].max_share == 0.5
    dep = _load(tmp_path, "max_share = 0.3", "max_share = 1")
    assert dep.max_share == 0.3 and dep.datasets["t"].max_share == 1.0
    assert _load(tmp_path, "max_share = 0.25").datasets["t"].max_share == 0.25


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5", '"half"', "true", "nan", "inf"])
@pytest.mark.parametrize("where", ["bastion", "dataset"])
def test_max_share_outside_zero_to_one_is_refused_naming_the_key(tmp_path: Path, value: str, where: str) -> None:
    line = f"max_share = {value}"
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, line if where == "bastion" else "", line if where == "dataset" else "")
    key = "bastion.max_share" if where == "bastion" else "datasets.t.max_share"
    assert key in str(info.value) and "at most 1" in str(info.value)


# ------------------------------------------------------------------ through the real kernel


@pytest.fixture(scope="module")
def outlier_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twenty people in two towns; one in "Hill" earns OUTLIER, everyone else about 40,000."""
    folder = tmp_path_factory.mktemp("dominance")
    pl.DataFrame({
        "pid": list(range(20)),
        "town": ["Hill"] * 10 + ["Vale"] * 10,
        "age": [20 + (i * 7) % 50 for i in range(20)],
        "income": [40_000.0 + 100 * i for i in range(19)] + [OUTLIER],
    }).with_columns(town=pl.when(pl.col("pid") == 19).then(pl.lit("Hill")).otherwise("town")) \
        .with_columns(town=pl.when(pl.col("pid") == 9).then(pl.lit("Vale")).otherwise("town")) \
        .write_parquet(folder / "people.parquet")
    return folder


def _kernel_config(folder: Path, name: str, share: str = "") -> Path:
    sub = folder / name
    sub.mkdir(exist_ok=True)
    text = (f'[bastion]\nstate_dir = "state"\nmin_group_size = 5\n{share}\n'
            f'[datasets.people]\npath = {json.dumps(str(folder / "people.parquet"))}\nprivacy_unit = "pid"\n')
    (sub / "bastion.toml").write_text(text, encoding="utf-8")
    return sub / "bastion.toml"


def test_the_kernel_suppresses_the_dominated_town_and_releases_the_other(outlier_data: Path) -> None:
    with run_kernel(_kernel_config(outlier_data, "default")) as (_, kc):
        reply, msgs = execute(kc, 'people.group_by("town").agg(pl.col("income").mean(), pl.col("age").mean())'
                                  '.sort("town").collect()')
        assert reply["status"] == "ok"
        text = result_text(msgs)
        assert "1 value(s) were suppressed" in text and "one individual dominated the value" in text
        assert str(int(OUTLIER)) not in text and "987654" not in text
        lines = [ln for ln in text.splitlines() if "Hill" in ln or "Vale" in ln]
        assert "null" in lines[0] and "null" not in lines[1], lines  # Hill's income only; ages stay
        # The same cell again (the grouping's cleared columns are remembered): the same answer.
        _reply, msgs = execute(kc, 'people.group_by("town").agg(pl.col("income").mean(), pl.col("age").mean())'
                                   '.sort("town").collect()')
        assert result_text(msgs) == text and "987654" not in text
        reply, msgs = execute(kc, 'people.select((pl.col("income") + 1e9).mean()).collect()')
        assert "were suppressed" in result_text(msgs) and "987654" not in result_text(msgs)
        _reply, msgs = execute(kc, 'policy("people")')
        assert "more than 50% of its values or of their spread around the mean (dominance)" in result_text(msgs)


def test_max_share_one_switches_the_rule_off(outlier_data: Path) -> None:
    with run_kernel(_kernel_config(outlier_data, "off", "max_share = 1")) as (_, kc):
        reply, msgs = execute(kc, 'people.filter(pl.col("town") == "Hill").select(pl.col("income").sum()).collect()')
        assert reply["status"] == "ok"
        text = result_text(msgs)
        assert "were suppressed" not in text and "null" not in text
        _reply, msgs = execute(kc, 'policy("people")')
        assert "dominance" not in result_text(msgs)
