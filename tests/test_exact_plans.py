"""The cheap plans decide exactly as the plain ones (issue 8: the policy costs almost nothing).

Why these tests: Bastion no longer counts distinct individuals per group
with `n_unique`, nor lists every group's individuals while a result is being
released. It counts rows where an individual has at most one row, bounds
the count by M rows per individual elsewhere (exact test only for the groups
the bound leaves open), compares sets by size ranges first, and records the
members of released sets in the background. Each shortcut is exact, so each
test here compares the shortcut's decision with a brute-force one computed
directly with polars on the raw rows, on data built to land in the open
ranges (groups with at least k rows but fewer than k individuals, sizes
within k of each other), and checks the fail-closed paths of recording.

The in-process data (k = 3):
- `people`: pid 0..59, one row each, `region` a..f, `flag` every third person;
- `visits`: 0-5 rows per person (pid 7 has 5), some rows without a pid,
  `kind` x/y/z; group "dense" is 2 people with 5 rows each (10 rows >= k, 2
  individuals < k), "thin" is 3 people with one row each.
"""

from __future__ import annotations

import itertools
import random
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from bastion_kernel import config, sources
from bastion_kernel import frames as F
from bastion_kernel import release as R
from bastion_kernel.plan import BinOp, Call, Col, Len, Lit
from bastion_kernel.policy import history as H
from bastion_kernel.policy import members
from bastion_kernel.release import Released, ReviewPending
from bastion_kernel.session import Session

K = 3


def make_people() -> pl.DataFrame:
    pids = list(range(60))
    return pl.DataFrame({
        "pid": pids,
        "region": [("a", "b", "c", "d", "e", "f")[i % 6] for i in pids],
        "flag": [i % 3 == 0 for i in pids],
        "income": [1000.0 + 13.0 * i for i in pids],
    })


def make_visits(seed: int = 8) -> pl.DataFrame:
    rng = random.Random(seed)
    pid: list[int | None] = []
    kind: list[str] = []
    amount: list[float] = []
    for i in range(60):
        n = 5 if i == 7 else rng.randint(0, 4)
        for j in range(n):
            pid.append(i)
            kind.append(("x", "y", "z")[rng.randint(0, 2)])
            amount.append(float(rng.randint(1, 100)))
    for i in (10, 11):  # "dense": 2 individuals, 10 rows
        for _ in range(5):
            pid.append(i)
            kind.append("dense")
            amount.append(1.0)
    for i in (20, 21, 22):  # "thin": 3 individuals, 3 rows
        pid.append(i)
        kind.append("thin")
        amount.append(2.0)
    for _ in range(4):  # rows without an individual
        pid.append(None)
        kind.append("x")
        amount.append(5.0)
    return pl.DataFrame({"pid": pid, "kind": kind, "amount": amount}, schema={"pid": pl.Int64, "kind": pl.String,
                                                                            "amount": pl.Float64})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> config.Deployment:
    root = tmp_path_factory.mktemp("exact")
    make_people().write_parquet(root / "people.parquet")
    make_visits().write_parquet(root / "visits.parquet")
    (root / "bastion.toml").write_text(f"""
[bastion]
state_dir = "state"
min_group_size = {K}

[datasets.people]
path = "people.parquet"
privacy_unit = "pid"

[datasets.visits]
path = "visits.parquet"
privacy_unit = "pid"
""")
    return config.load(root / "bastion.toml")


@pytest.fixture
def deployment(world: config.Deployment, tmp_path: Path) -> config.Deployment:
    return replace(world, state_dir=tmp_path / "state")


@pytest.fixture
def session(deployment: config.Deployment):
    s = Session(deployment, user="ana")
    yield s
    s.close()


def released(s: Session, src: str) -> pl.DataFrame:
    r = s.execute(src)
    assert r.outcome == "released", (src, r.reason, r.error and r.error.message)
    assert isinstance(r.value, Released)
    return r.value.df


def individuals(df: pl.DataFrame, by: str) -> dict[str, int]:
    """Brute force: distinct non-null pids per group."""
    got = df.group_by(by).agg(pl.col("pid").drop_nulls().n_unique().alias("n"))
    return dict(got.iter_rows())


# ------------------------------------------------------------------ facts per dataset file


def test_unit_profile_counts_rows_per_individual_once_per_file_version(deployment: config.Deployment) -> None:
    people = sources.unit_profile(deployment.datasets["people"], deployment.state_dir)
    visits = sources.unit_profile(deployment.datasets["visits"], deployment.state_dir)
    assert (people.rows_max, people.nonnull, people.rows) == (1, True, 60)
    raw = make_visits()
    top = raw.drop_nulls("pid").group_by("pid").len().get_column("len").max()
    assert (visits.rows_max, visits.nonnull, visits.rows) == (top, False, raw.height)
    assert (deployment.state_dir / sources.PROFILE_FILE).exists()  # a new kernel does not measure again


def test_unit_profile_is_measured_again_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pl.DataFrame({"pid": [1, 2, 3]}).write_parquet(path)
    ds = config.DatasetConfig("d", str(path), "parquet", "pid", (), 3, "review", None)
    assert sources.unit_profile(ds, tmp_path).rows_max == 1
    pl.DataFrame({"pid": [1, 1, 1, 2]}).write_parquet(path)
    assert sources.unit_profile(ds, tmp_path).rows_max == 3


def test_values_are_counted_by_rows_only_in_columns_the_file_holds_no_null_in(tmp_path: Path) -> None:
    """Group a has 5 people but only 2 values of x: its x is withheld there, its y (no nulls) released;
    a column made after the scan is counted by its values, whatever the file's column held."""
    df = pl.DataFrame({"pid": list(range(10)), "g": ["a"] * 5 + ["b"] * 5,
                       "x": [1.0, 2.0, None, None, None, 1.0, 2.0, 3.0, 4.0, 5.0], "y": [float(i) for i in range(10)]})
    path = tmp_path / "d.parquet"
    df.write_parquet(path)
    ds = config.DatasetConfig("d", str(path), "parquet", "pid", (), K, "review", None)
    assert sources.unit_profile(ds, tmp_path).filled == ("pid", "g", "y")
    ctx = F.Ctx(itertools.count(), state_dir=tmp_path, sources={"d": ds})
    src = F.source(ds, ctx)
    assert F._file_profile(F.filter_(src, [BinOp(">", Col("y"), Lit(0.0))], ctx), ctx).filled == ("pid", "g", "y")
    made = F.select(src, [Call("alias", Col("x"), ("y",))], ctx, keep=True)  # y now holds x's nulls
    assert F._file_profile(made, ctx) is None  # not the file's columns: none known to be filled
    for frame in (src, made):
        out = F.aggregate(frame, [Col("g")], [Call("mean", Col("x")), Call("alias", Call("mean", Col("y")), ("m",))],
                          ctx)
        fast = R._fast_checks(out)
        two_pass = out.lf.collect() if fast is None else fast.settle(fast.first.collect(), lambda lf: lf.collect())
        for got in (out.lf.collect(), two_pass):
            rows = {g: (x, m) for g, x, m in got.filter(pl.col(F.OK_COLUMN)).select("g", "x", "m").iter_rows()}
            y_a = None if frame is made else 2.0  # `made`'s y is x: 2 values in group a
            assert rows == {"a": (None, y_a), "b": (3.0, 3.0 if frame is made else 7.0)}, rows


def test_the_kernel_process_starts_without_polars() -> None:
    """Start-up: the kernel only relays cells; polars is imported by its query worker."""
    code = "import sys, bastion_kernel.kernel; print('polars' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ the threshold


def test_groups_with_enough_rows_but_too_few_individuals_are_withheld(session: Session) -> None:
    df = released(session, 'visits.group_by("kind").agg(pl.len(), pl.col("amount").sum()).collect()')
    expected = {k for k, n in individuals(make_visits(), "kind").items() if n >= K}
    assert set(df.get_column("kind").to_list()) == expected
    assert "dense" not in expected and "thin" in expected  # 10 rows of 2 people; 3 rows of 3 people


def test_a_condition_splitting_few_individuals_is_suppressed_exactly(session: Session) -> None:
    src = 'visits.group_by("kind").agg(pl.col("amount").filter(pl.col("amount") > 50).sum().alias("big"))'
    df = released(session, src + ".collect()")
    raw = make_visits().filter(pl.col("pid").is_not_null())
    for kind, big in df.iter_rows():
        rows = raw.filter(pl.col("kind") == kind)
        sides = [rows.filter(c).get_column("pid").n_unique() for c in (pl.col("amount") > 50, pl.col("amount") <= 50)]
        assert (big is not None) == all(n >= K for n in sides), (kind, sides)


@pytest.mark.parametrize("seed", range(6))
def test_two_pass_threshold_equals_the_exact_lazy_one(deployment: config.Deployment, seed: int) -> None:
    """`FastChecks` (row counts, then exact tests only for the open groups) against the lazy frame's
    exact tests, on random multi-row data whose groups straddle k and k·M."""
    rng = random.Random(seed)
    rows = []
    for pid in range(40):
        for _ in range(rng.choice([1, 1, 2, 4, 6])):
            rows.append((pid if rng.random() > 0.05 else None, rng.choice("pqrstuvw"), rng.random() < 0.5,
                         float(rng.randint(0, 9))))
    raw = pl.DataFrame(rows, schema={"pid": pl.Int64, "g": pl.String, "c": pl.Boolean, "v": pl.Float64},
                       orient="row")
    path = deployment.state_dir.parent / f"random{seed}.parquet"
    raw.write_parquet(path)
    ds = config.DatasetConfig("r", str(path), "parquet", "pid", (), K, "review", None)
    ctx = F.Ctx(itertools.count(), state_dir=deployment.state_dir)
    src = F.source(ds, ctx)
    assert src.units[0].rows_max and src.units[0].rows_max > 1
    frame = F.aggregate(src, [Col("g")], [Len(), Call("alias", Call("sum", Call("filter", Col("v"), (Col("c"),))),
                                                          ("s",)), Call("mean", Col("v"))], ctx)
    fast = R._fast_checks(frame)
    assert fast is not None
    first = fast.first.collect()
    assert fast.finish(first, None, flag_open=True).collect().get_column(F.OPEN_COLUMN).any()  # a second pass
    two_pass = fast.settle(first, lambda lf: lf.collect())
    lazy = frame.lf.collect()
    cols = [*frame.columns, F.OK_COLUMN, F.SUPPRESSED_COLUMN]
    assert two_pass.select(cols).sort("g").equals(lazy.select(cols).sort("g"))
    truth = individuals(raw, "g")
    for g, ok in lazy.select("g", F.OK_COLUMN).iter_rows():
        assert ok == (truth[g] >= K), (g, truth[g])


def test_join_multiplies_rows_per_individual_and_stays_exact(session: Session) -> None:
    df = released(session, 'visits.join(people, on="pid").group_by("region").agg(pl.len()).collect()')
    joined = make_visits().join(make_people(), on="pid")
    expected = {r for r, n in individuals(joined, "region").items() if n >= K}
    assert set(df.get_column("region").to_list()) == expected
    # the multiplicity the threshold used: visits' M times people's 1 (a cross join: times all rows)
    ctx = F.Ctx(itertools.count(), state_dir=session.deployment.state_dir)
    v = F.source(session.deployment.datasets["visits"], ctx)
    p = F.source(session.deployment.datasets["people"], ctx)
    j = F.join(v, p, ctx, on=[Col("pid")], left_on=None, right_on=None, how="inner", suffix="_r", coalesce=None)
    m = v.units[0].rows_max
    assert [u.rows_max for u in j.units] == [m, m]
    cross = F.join(v, p, ctx, on=None, left_on=None, right_on=None, how="cross", suffix="_r", coalesce=None)
    assert [u.rows_max for u in cross.units] == [m * 60, make_visits().height]


# ------------------------------------------------------------------ the differencing check


def _sets(deployment: config.Deployment) -> list[sqlite3.Row]:
    with sqlite3.connect(deployment.state_dir / H.DB_NAME) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM unit_sets ORDER BY release_id, set_no").fetchall()


def test_released_sets_are_recorded_exactly_in_the_background(session: Session, deployment: config.Deployment) -> None:
    released(session, 'people.group_by("region").agg(pl.col("income").mean()).collect()')
    store = H.open_store(deployment.state_dir)
    store.flush()
    rows = _sets(deployment)
    assert len(rows) == 6 and all(r["state"] == "ok" for r in rows)
    release_id = rows[0]["release_id"]
    with sqlite3.connect(deployment.state_dir / H.DB_NAME) as conn:
        blobs = [b for (b,) in conn.execute("SELECT blob FROM set_blobs WHERE release_id = ?", (release_id,))]
    members = pl.concat([H._decode(b) for b in blobs])
    got = sorted(sorted(g.get_column("idx").to_list()) for _, g in members.group_by("set_no"))
    truth = sorted(sorted(g.get_column("pid").to_list()) for _, g in make_people().group_by("region"))
    assert got == truth


def test_a_re_run_adds_no_sets(session: Session, deployment: config.Deployment) -> None:
    src = 'people.group_by("region").agg(pl.col("income").sum()).collect()'
    released(session, src)
    released(session, src)
    released(session, 'people.group_by("region").agg(pl.col("income").sum()).sort("region").collect()')
    H.open_store(deployment.state_dir).flush()
    assert len(_sets(deployment)) == 6
    total, _ = H.open_store(deployment.state_dir).releases(user="ana", scope=H.scope_of(deployment.datasets["people"]))
    assert total == 3


@pytest.mark.parametrize(("query", "index"), [
    ("SELECT 1 FROM unit_sets WHERE user = 'ana' AND scope IN ('s') AND state = 'lost' LIMIT 1", "unit_sets_lost"),
    ("SELECT COUNT(*) AS n FROM unit_sets WHERE state = 'pending'", "unit_sets_pending"),
], ids=["re-run-looks-for-lost-sets", "recorders-count-pending-sets"])
def test_a_long_history_is_not_read_set_by_set_on_every_cell(deployment: config.Deployment, query: str,
                                                              index: str) -> None:
    """Every re-run looks for lost sets, and every wait for the recorder counts pending ones: through
    an index of just those few, not by reading every set the user ever released."""
    path = H.open_store(deployment.state_dir).path
    with sqlite3.connect(path) as conn:
        plan = " ".join(str(row) for row in conn.execute("EXPLAIN QUERY PLAN " + query))
    assert f"INDEX {index}" in plan, plan


def test_recording_in_partitions_lists_the_same_members(session: Session, deployment: config.Deployment) -> None:
    """A tiny memory budget splits the listing into hash partitions; the sets are the same."""
    ctx = F.Ctx(itertools.count(), state_dir=deployment.state_dir)
    src = F.source(deployment.datasets["visits"], ctx)
    agg = F.aggregate(src, [Col("kind")], [Len()], ctx)
    out = R.release_aggregate(agg, deployment.limits)
    part = out.cover.parts[0]
    scopes = H.open_store(deployment.state_dir)._describe(out.cover, deployment.datasets)
    pu = next(iter(scopes.values())).units[0]
    whole = members.list_members(part, pu, 1024).sort("set_no", "u")
    members.BYTES_PER_ROW, saved = 2**24, members.BYTES_PER_ROW
    try:
        assert members.partitions(part, pu, 64) > 1
        pieces = members.list_members(part, pu, 64).sort("set_no", "u")
    finally:
        members.BYTES_PER_ROW = saved
    assert pieces.equals(whole)


def test_a_set_whose_file_changed_before_recording_is_lost_and_holds_near_ones_back(
        tmp_path: Path, world: config.Deployment) -> None:
    """Fail closed: the data changed before the members were written, so the set cannot be compared;
    a later set within k of its size is held back, one far from it is released."""
    root = tmp_path / "copy"
    root.mkdir()
    make_people().write_parquet(root / "people.parquet")
    make_visits().write_parquet(root / "visits.parquet")
    (root / "bastion.toml").write_text((Path(world.path)).read_text())
    dep = config.load(root / "bastion.toml")
    s = Session(dep, user="ana")
    released(s, 'people.filter(pl.col("pid") < 40).select(pl.col("income").sum()).collect()')
    assert H.open_store(dep.state_dir).pending() == 1
    make_people().with_columns(pl.col("income") + 1).write_parquet(root / "people.parquet")  # a new version
    H.open_store(dep.state_dir).flush()
    assert [r["state"] for r in _sets(dep)] == ["lost"]
    r = s.execute('people.filter(pl.col("pid") < 39).select(pl.col("income").sum()).collect()')
    assert r.outcome == "review" and isinstance(r.value, ReviewPending)
    assert "could not be written" in r.value.reason
    released(s, 'people.filter(pl.col("pid") < 20).select(pl.col("income").sum()).collect()')
    s.close()


def test_a_set_left_pending_by_a_stopped_kernel_holds_near_ones_back(session: Session,
                                                                      deployment: config.Deployment) -> None:
    released(session, 'people.filter(pl.col("pid") < 40).select(pl.col("income").sum()).collect()')
    with H._jobs_cv:  # the kernel that released it died before writing it
        H._jobs.clear()
    with sqlite3.connect(deployment.state_dir / H.DB_NAME) as conn:
        conn.execute("UPDATE unit_sets SET owner = '999999999:gone'")
    r = session.execute('people.filter(pl.col("pid") < 41).select(pl.col("income").sum()).collect()')
    assert r.outcome == "review" and "could not be written" in r.value.reason


def test_groups_of_one_aggregation_are_not_listed_to_be_compared(session: Session,
                                                                 deployment: config.Deployment) -> None:
    """Two groups of one result cannot share an individual (one row each): their sets, all of size 10,
    are not compared member by member, so nothing is listed while the result is released."""
    released(session, 'people.group_by("region").agg(pl.len()).collect()')
    assert H.open_store(deployment.state_dir).pending() == 6


def test_sizes_alone_catch_a_set_within_k_of_another(session: Session) -> None:
    released(session, 'people.filter(pl.col("pid") < 30).select(pl.col("income").sum()).collect()')
    r = session.execute('people.filter((pl.col("pid") < 30) & (pl.col("pid") != 7)).select(pl.col("income").sum())'
                        '.collect()')
    assert r.outcome == "review" and "differ by fewer than 3" in r.value.reason


def test_row_counts_separate_multi_row_sets_of_equal_size(session: Session, deployment: config.Deployment) -> None:
    """Dropping some rows of one person keeps the set's size but not its rows: still caught exactly."""
    released(session, 'visits.select(pl.col("amount").sum()).collect()')
    r = session.execute('visits.filter(~((pl.col("pid") == 7) & (pl.col("amount") > 50)))'
                        '.select(pl.col("amount").sum()).collect()')
    assert r.outcome == "review" and "differ by fewer than 3" in r.value.reason


def test_the_benchmark_queries_stay_exact_on_small_data(session: Session) -> None:
    """The cells `benchmarks/bench_kernels.py` times, against brute force."""
    df = released(session, 'people.filter(pl.col("flag")).group_by("region").agg(pl.len()).collect()')
    truth = make_people().filter(pl.col("flag")).group_by("region").len()
    assert sorted(df.rows()) == sorted(r for r in truth.rows() if r[1] >= K)
    g = released(session, 'people.select(pl.col("income").sum(), pl.len()).collect()')
    assert g.row(0) == (make_people().get_column("income").sum(), 60)


def test_frames_bound_units_by_the_rows_of_their_scans(deployment: config.Deployment) -> None:
    ctx = F.Ctx(itertools.count(), state_dir=deployment.state_dir)
    p = F.source(deployment.datasets["people"], ctx)
    kept = F.filter_(p, [BinOp(">", Col("income"), Lit(1200.0))], ctx)
    assert F._rows_bound(kept, ctx) == 60  # filters never add rows
    assert kept.units[0].rows_max == 1 and kept.units[0].nonnull
