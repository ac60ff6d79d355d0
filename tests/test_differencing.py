"""Differencing attacks: no two automatic releases may cover nearly the same individuals.

Why: each release below meets the threshold on its own; subtracting two of
them would give one person's value. The kernel keeps, per user and dataset,
which individuals every released row covered (`policy.history`), and holds
back a result whose rows differ from an earlier row (or from each other) by
fewer than `min_group_size` individuals, but not by none (a re-run is fine).

Most attack variants run in-process through `Session.execute` on a small
dataset with a canary; the main shapes also run through the real kernel on
the demo data, checking every message the client receives.

The in-process data (k = 10):
- `people`: pid 0..199 (privacy unit), `region` north 100 / south 60 /
  east 35 / west 5, `age` = 20 + 7·pid mod 50, `income` = 1000 + 37.5·pid;
  the canary pid 77 (age 59, north) has income 987654.32.
- `events`: 1-3 rows per person; the canary has 40.
- `members`: `people` with a text privacy unit (`sid` = "S077" ...).
- `strict`: the `people` file again, with on_violation = "reject".
"""

from __future__ import annotations

import random
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import (
    all_text,
    bastion_cli,
    execute,
    outputs,
    result_text,
    run_kernel,
    write_variant,
)
from jupyter_client.blocking.client import BlockingKernelClient

from bastion_kernel import config
from bastion_kernel.display import bundle
from bastion_kernel.policy import history as H
from bastion_kernel.release import Released, ReviewPending
from bastion_kernel.review.decide import decide
from bastion_kernel.session import Session

K = 10
CANARY_PID = 77
CANARY_INCOME = "987654.32"
REVIEW_RE = re.compile(r"Review requested: (R[0-9a-f]{8})\b")
RELEASE_ID = re.compile(r"\bH[0-9a-f]{8}\b")
SUM_ALL = 'people.select(pl.col("income").sum()).collect()'
SUM_BUT_CANARY = 'people.filter(pl.col("pid") != 77).select(pl.col("income").sum()).collect()'


# ------------------------------------------------------------------ in-process world


def make_people() -> pl.DataFrame:
    pids = list(range(200))
    regions = ["north"] * 100 + ["south"] * 60 + ["east"] * 35 + ["west"] * 5
    return pl.DataFrame({
        "pid": pids,
        "name": [f"Person {i:03d}" for i in pids],
        "region": regions,
        "age": [20 + (i * 7) % 50 for i in pids],
        "income": [987654.32 if i == CANARY_PID else 1000.0 + 37.5 * i for i in pids],
    })


def make_events() -> pl.DataFrame:
    pid, channel, amount = [], [], []
    for i in range(200):
        for j in range(40 if i == CANARY_PID else i % 3 + 1):
            pid.append(i)
            channel.append(("web", "phone")[j % 2])
            amount.append(float((i * 13 + j * 7) % 100))
    return pl.DataFrame({"pid": pid, "channel": channel, "amount": amount})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> config.Deployment:
    root = tmp_path_factory.mktemp("differencing")
    people = make_people()
    people.write_parquet(root / "people.parquet")
    make_events().write_parquet(root / "events.parquet")
    people.with_columns(sid=pl.format("S{}", pl.col("pid").cast(pl.String).str.zfill(3))).drop("pid") \
        .write_parquet(root / "members.parquet")
    (root / "bastion.toml").write_text(f"""
[bastion]
state_dir = "state"
min_group_size = {K}
on_violation = "review"

[datasets.people]
path = "people.parquet"
privacy_unit = "pid"
masked = ["name"]

[datasets.events]
path = "events.parquet"
privacy_unit = "pid"

[datasets.members]
path = "members.parquet"
privacy_unit = "sid"
masked = ["name"]

[datasets.strict]
path = "people.parquet"
privacy_unit = "pid"
masked = ["name"]
on_violation = "reject"
""")
    return config.load(root / "bastion.toml")


@pytest.fixture
def deployment(world: config.Deployment, tmp_path: Path) -> config.Deployment:
    """The world with a fresh state folder: every test starts with an empty history."""
    return replace(world, state_dir=tmp_path / "state")


@pytest.fixture
def mallory(deployment: config.Deployment) -> Iterator[Session]:
    s = Session(deployment, user="mallory")
    yield s
    s.close()


def seen(result: Any, src: str) -> str:
    """Everything the analyst is shown for a cell."""
    parts = list(bundle(result.value).values()) if bundle(result.value) else []
    if result.error is not None:
        parts.append(result.error.render(src))
    parts.append(result.reason or "")
    return "\n".join(parts)


def released(s: Session, src: str) -> Released:
    r = s.execute(src)
    assert r.outcome == "released", (src, r.reason, r.error and r.error.message)
    assert isinstance(r.value, Released)
    return r.value


def held(s: Session, src: str) -> str:
    """The cell must go to review for differencing; returns what the analyst saw."""
    r = s.execute(src)
    assert r.outcome == "review", (src, r.outcome, r.reason, r.error and r.error.message)
    assert isinstance(r.value, ReviewPending)
    assert "differ by fewer than 10" in r.value.reason, r.value.reason
    text = seen(r, src)
    assert CANARY_INCOME not in text
    req = s.store.get(r.value.request_id)
    assert req.status == "pending" and req.user == s.user and "differ by fewer than" in req.reason
    return r.value.reason


# ------------------------------------------------------------------ attacks, in-process

# (first half, second half): each half meets the threshold alone; together they
# would give the canary's (or a few people's) values by subtraction.
ATTACKS = [
    pytest.param([SUM_ALL], SUM_BUT_CANARY, id="global-sum-all-vs-all-but-one"),
    pytest.param(['people.select(pl.col("income").mean(), pl.len()).collect()'],
                 'people.filter(pl.col("pid") != 77).select(pl.col("income").mean(), pl.len()).collect()',
                 id="global-mean-and-count"),
    pytest.param(['people.filter(pl.col("age") < 50).select(pl.col("income").sum()).collect()'],
                 'people.filter((pl.col("age") < 50) | (pl.col("pid") == 77)).select(pl.col("income").sum()).collect()',
                 id="tracker-filter-A-or-one-person"),
    # Ages, not incomes: with the canary's income in it the second sum is suppressed (dominance) first.
    pytest.param(['people.select(pl.col("age").filter(pl.col("age") < 50).sum()).collect()'],
                 'people.select(pl.col("age").filter((pl.col("age") < 50) | pl.col("pid").is_between(77, 86))'
                 '.sum()).collect()',
                 id="tracker-inside-the-aggregate"),
    pytest.param(['people.select(pl.when(pl.col("age") < 50).then(pl.col("income")).otherwise(0).sum()).collect()'],
                 'people.filter(pl.col("pid") != 77).select(pl.when(pl.col("age") < 50).then(pl.col("income"))'
                 '.otherwise(0).sum()).collect()',
                 id="tracker-when-branch"),
    pytest.param(['people.group_by("region").agg(pl.col("income").sum()).collect()'],
                 'people.filter(pl.col("pid") != 77).group_by("region").agg(pl.col("income").sum()).collect()',
                 id="group-by-with-and-without-one-person"),
    pytest.param([SUM_ALL],
                 'people.filter(~pl.col("pid").is_in([77, 78, 79, 80, 81, 82, 83])).select(pl.col("income").sum())'
                 '.collect()',
                 id="several-people-removed-at-once"),
    pytest.param(['people.group_by("region").agg(pl.col("income").sum()).collect()'],
                 'people.filter(~pl.col("pid").is_in([77, 120])).group_by("region").agg(pl.col("income").sum())'
                 '.collect()',
                 id="difference-spread-over-two-groups"),
    pytest.param(['people.group_by(pl.col("pid") < 100).agg(pl.col("income").sum()).collect()'],
                 'people.filter(pl.col("pid") != 77).select(pl.col("income").filter(pl.col("pid") < 100).sum())'
                 '.collect()',
                 id="group-then-condition-inside-another-query"),
    pytest.param([SUM_ALL], 'strict.filter(pl.col("pid") != 77).select(pl.col("age").sum()).collect()',
                 id="second-dataset-name-over-the-same-file-rejects"),
    pytest.param(['members.select(pl.col("income").sum()).collect()'],
                 'members.filter(pl.col("sid") != "S077").select(pl.col("income").sum()).collect()',
                 id="text-privacy-unit"),
    pytest.param(['events.select(pl.col("amount").sum()).collect()'],
                 'events.filter(~((pl.col("pid") == 77) & (pl.col("amount") < 50))).select(pl.col("amount").sum())'
                 '.collect()',
                 id="some-rows-of-one-person-dropped"),
    pytest.param(['people.group_by("region").agg(pl.col("income").sum()).collect()'],
                 'people.filter(pl.col("pid") != 77).group_by("region").agg(pl.col("income").sum())'
                 '.filter(pl.col("region") == "north").collect()',
                 id="post-processed-aggregate"),
]


@pytest.mark.parametrize(("first", "second"), ATTACKS)
def test_differencing_attack_is_held_back(mallory: Session, first: list[str], second: str) -> None:
    for cell in first:
        released(mallory, cell)
    r = mallory.execute(second)
    text = seen(r, second)
    assert CANARY_INCOME not in text
    if second.startswith("strict"):
        assert r.outcome == "refused" and r.error is not None
        assert r.error.kind == "policy" and r.error.rule == "differencing"
        assert "this deployment rejects such results" in r.error.message
        message = r.error.message
    else:
        assert r.outcome == "review", (r.outcome, r.reason, r.error and r.error.message)
        assert isinstance(r.value, ReviewPending)
        message = r.value.reason
        snap = mallory.store.snapshot(r.value.request_id)  # the owner sees what would have been released
        assert snap.height >= 1
    assert "differ by fewer than 10" in message
    earlier = RELEASE_ID.findall(message)
    assert len(earlier) == 1, message  # names the release it would be subtracted from
    assert first[-1][:40] in message


def test_the_reason_names_the_earlier_release_and_its_cell(mallory: Session) -> None:
    released(mallory, SUM_ALL)
    reason = held(mallory, SUM_BUT_CANARY)
    rid = RELEASE_ID.search(reason).group(0)
    total, latest = H.open_store(mallory.deployment.state_dir).releases(
        user="mallory", scope=H.scope_of(mallory.deployment.datasets["people"]))
    assert mallory.audit.session_id in reason
    # The held result joined the history as a review request (the owner may approve it).
    assert total == 2 and latest[1].id == rid and latest[1].cell == SUM_ALL and latest[1].request is None
    request = mallory.store.list(status=None)[0]
    assert latest[0].request == request.id and latest[0].cell == SUM_BUT_CANARY


def test_reason_never_says_how_many_individuals_differ(mallory: Session) -> None:
    """'differ by 1' would confirm that the extra condition matched exactly one person."""
    released(mallory, SUM_ALL)
    reason = held(mallory, SUM_BUT_CANARY)
    assert "by fewer than 10" in reason
    assert not re.search(r"differ by \d", reason)


def test_rows_of_one_result_are_compared_with_each_other(mallory: Session) -> None:
    """Two aggregations joined into one result: nothing earlier, yet one is the other minus the canary."""
    mallory.execute('a = people.select(pl.col("income").sum().alias("all"))')
    mallory.execute('b = people.filter(pl.col("pid") != 77).select(pl.col("income").sum().alias("rest"))')
    r = mallory.execute('a.join(b, how="cross").collect()')
    assert r.outcome == "review", r.reason
    assert "two rows or values of this result" in r.value.reason
    assert CANARY_INCOME not in seen(r, "")


def test_repeated_threshold_probing(mallory: Session) -> None:
    """Sliding a threshold by a few people at a time: only the first probe is released."""
    released(mallory, 'people.filter(pl.col("income") < 4000).select(pl.col("income").sum()).collect()')
    for t in (4040, 4080, 4120, 4160, 4200, 4240, 4280, 4320):
        held(mallory, f'people.filter(pl.col("income") < {t}).select(pl.col("income").sum()).collect()')
    # Held probes joined the history as review requests (any of them may be approved): a probe near the
    # last one is held too, one at least ten people from every probe is released.
    held(mallory, 'people.filter(pl.col("income") < 4400).select(pl.col("income").sum()).collect()')
    released(mallory, 'people.filter(pl.col("income") < 4800).select(pl.col("income").sum()).collect()')


def test_counting_probes_one_person_at_a_time(mallory: Session) -> None:
    released(mallory, 'people.filter(pl.col("pid") < 20).select(pl.len()).collect()')
    for n in (21, 22, 23, 25, 28):
        held(mallory, f'people.filter(pl.col("pid") < {n}).select(pl.len()).collect()')


def test_height_counts_as_a_release(mallory: Session) -> None:
    assert mallory.execute("people.height").value == 200
    held(mallory, 'people.filter(pl.col("pid") != 77).select(pl.col("income").sum()).collect()')


def test_reject_deployment_refuses_and_names_the_earlier_release(mallory: Session) -> None:
    released(mallory, 'strict.select(pl.col("income").sum()).collect()')
    r = mallory.execute('strict.filter(pl.col("pid") != 77).select(pl.col("income").sum()).collect()')
    assert r.outcome == "refused" and r.error is not None and r.value is None
    assert r.error.rule == "differencing" and r.error.dataset == "strict"
    assert RELEASE_ID.search(r.error.message)
    assert mallory.store.list(status=None) == []  # rejected outright: no review request
    assert CANARY_INCOME not in seen(r, "")


# ------------------------------------------------------------------ results released by review


SUM_AND_MAX = 'people.select(pl.col("income").sum(), pl.col("income").max().alias("top")).collect()'


@pytest.mark.parametrize("decision", ["approved", "rejected", "pending"])
def test_a_result_asked_for_review_is_in_the_history_whatever_the_owner_decides(mallory: Session,
                                                                                decision: str) -> None:
    """The owner approves everyone's sum (with a max beside it, which needs review); a later automatic
    sum over everyone but the canary would be the canary's income. The request joined the history when
    it was made, so that later result is held, naming it. Rejected or still pending: the same (fail closed)."""
    r = mallory.execute(SUM_AND_MAX)
    assert r.outcome == "review" and isinstance(r.value, ReviewPending)
    request = r.value.request_id
    if decision != "pending":
        decide(mallory.store, request, decision, by="owner", reason=None if decision == "approved" else "no")
    if decision == "approved":
        fetched = mallory.execute(f'fetch("{request}")')
        assert fetched.outcome == "released" and fetched.value.df.height == 1
    reason = held(mallory, SUM_BUT_CANARY)
    assert f"your review request {request}" in reason
    total, latest = H.open_store(mallory.deployment.state_dir).releases(
        user="mallory", scope=H.scope_of(mallory.deployment.datasets["people"]))
    assert total == 2 and latest[1].request == request and latest[1].cell == SUM_AND_MAX


def test_a_result_identical_to_one_asked_for_review_is_still_compared_with_the_rest(mallory: Session) -> None:
    """A result held for being near an earlier release is in the history unchecked: the same result
    asked again (another spelling, the same people) must meet the earlier release again, not pass
    as a repeat of something already shown."""
    released(mallory, SUM_ALL)
    held(mallory, SUM_BUT_CANARY)
    for again in ('people.filter(pl.col("pid") != 77).select(pl.col("income").sum().alias("again")).collect()',
                  'people.filter(pl.col("income") < 900000).select(pl.col("income").sum()).collect()'):
        reason = held(mallory, again)  # the same plan; another plan selecting the same people
        assert RELEASE_ID.search(reason) and "your review request" not in reason  # the earlier release decides
    released(mallory, SUM_ALL)  # shown before: a repeat of an automatic release is harmless


def test_a_result_of_several_rows_over_one_group_is_recorded_as_that_group(mallory: Session) -> None:
    """`mode()` without keys shows one row per tie, each covering everyone: recorded as one group (and
    the condition's sides), listed exactly, so a later result near it is compared, not held as unrecorded."""
    r = mallory.execute('people.select(pl.col("age").mode(), pl.col("pid").filter(pl.col("age") > 40).sum())'
                        '.collect()')
    assert r.outcome == "review" and isinstance(r.value, ReviewPending)
    H.open_store(mallory.deployment.state_dir).flush()
    with sqlite3.connect(mallory.deployment.state_dir / H.DB_NAME) as conn:
        sets = conn.execute("SELECT size, state FROM unit_sets ORDER BY set_no").fetchall()
    assert sets == [(200, "ok"), (116, "ok"), (84, "ok")]
    reason = held(mallory, SUM_BUT_CANARY)
    assert f"your review request {r.value.request_id}" in reason and "could not be written" not in reason


def test_a_lost_record_of_a_request_is_replaced_by_the_same_set_released_later(mallory: Session) -> None:
    """A request's set whose record failed (marked lost: near results are then held back, fail closed)
    is replaced by the very same set asked again (same plan, same files), which is released."""
    r = mallory.execute('people.filter(pl.col("pid") < 40)'
                        '.select(pl.col("age").sum(), pl.col("age").max().alias("top")).collect()')
    assert r.outcome == "review"
    H.open_store(mallory.deployment.state_dir).flush()
    with sqlite3.connect(mallory.deployment.state_dir / H.DB_NAME) as conn:
        conn.execute("UPDATE unit_sets SET state = 'lost'")  # as if the data had changed while listing it
    released(mallory, 'people.filter(pl.col("pid") < 40).select(pl.col("age").sum()).collect()')
    H.open_store(mallory.deployment.state_dir).flush()
    with sqlite3.connect(mallory.deployment.state_dir / H.DB_NAME) as conn:
        assert conn.execute("SELECT COUNT(*) FROM unit_sets WHERE state = 'lost'").fetchone() == (0,)


def test_individual_rows_asked_for_review_add_nothing_to_the_history(mallory: Session) -> None:
    r = mallory.execute('people.filter(pl.col("pid") < 3).select("pid", "income").collect()')
    assert r.outcome == "review"
    assert H.open_store(mallory.deployment.state_dir).releases(
        user="mallory", scope=H.scope_of(mallory.deployment.datasets["people"]))[0] == 0
    released(mallory, SUM_ALL)


# ------------------------------------------------------------------ ordinary analysis is not blocked


ORDINARY = [
    pytest.param([SUM_ALL, SUM_ALL, SUM_ALL], id="same-query-re-run"),
    pytest.param(['people.group_by("region").agg(pl.col("income").mean()).collect()'] * 2
                 + ['people.group_by("region").agg(pl.col("income").mean()).sort("region").collect()'],
                 id="same-grouped-query-re-run-and-sorted"),
    pytest.param(['people.filter(pl.col("region") == "north").select(pl.col("income").mean()).collect()',
                  'people.filter(pl.col("region") == "south").select(pl.col("income").mean()).collect()',
                  'people.filter(pl.col("region") == "east").select(pl.col("income").mean()).collect()',
                  'people.group_by("region").agg(pl.col("income").mean()).collect()'],
                 id="disjoint-subgroups"),
    pytest.param([SUM_ALL,
                  'people.filter(pl.col("age") > 30).select(pl.col("income").sum()).collect()',
                  'people.filter(pl.col("age") > 45).select(pl.col("income").sum()).collect()',
                  'people.filter((pl.col("age") > 45) & (pl.col("pid") < 100)).select(pl.col("income").sum()).collect()'],
                 id="nested-filters-differing-by-many-people"),
    pytest.param(['people.group_by("region").agg(pl.col("income").mean()).collect()',
                  'people.group_by("region").agg(pl.col("age").mean(), pl.len()).collect()',
                  'people.group_by("region").agg(pl.col("income").sum(), pl.col("age").std()).collect()'],
                 id="different-columns-over-the-same-groups"),
    pytest.param([('people.select(pl.col("income").filter((pl.col("age") > 30) & (pl.col("region") != "west"))'
                   '.sum()).collect()')],
                 id="compound-condition-inside-one-value"),
    pytest.param(['people.group_by("region").agg(pl.len()).collect()',
                  'people.group_by("region").agg(pl.len()).filter(pl.col("len") > 50).collect()',
                  'people.group_by("region").agg(pl.len()).sort("len").head(2).collect()'],
                 id="post-processing-released-groups"),
    pytest.param(['events.group_by("channel").agg(pl.col("amount").sum()).collect()',
                  'events.join(people, on="pid").group_by("region").agg(pl.col("amount").mean()).collect()'],
                 id="multi-row-units-and-joins"),
]


@pytest.mark.parametrize("cells", ORDINARY)
def test_ordinary_analysis_is_released(mallory: Session, cells: list[str]) -> None:
    for cell in cells:
        released(mallory, cell)


def test_re_run_in_a_new_session_is_released(deployment: config.Deployment) -> None:
    for _ in range(2):
        s = Session(deployment, user="mallory")
        released(s, SUM_ALL)
        s.close()


# ------------------------------------------------------------------ persistence and users


def test_history_survives_a_new_session_and_process(deployment: config.Deployment) -> None:
    first = Session(deployment, user="mallory")
    released(first, SUM_ALL)
    first.close()
    H.open_store.cache_clear()  # a new kernel process starts with nothing in memory
    second = Session(deployment, user="mallory")
    held(second, SUM_BUT_CANARY)
    second.close()


def test_users_have_separate_histories(deployment: config.Deployment) -> None:
    alice = Session(deployment, user="alice")
    bob = Session(deployment, user="bob")
    released(alice, SUM_ALL)
    released(bob, SUM_BUT_CANARY)
    held(alice, SUM_BUT_CANARY)
    held(bob, SUM_ALL)


def test_text_units_keep_their_indices_across_processes(deployment: config.Deployment) -> None:
    s = Session(deployment, user="mallory")
    released(s, 'members.filter(pl.col("sid") < "S100").select(pl.col("income").sum()).collect()')
    H.open_store.cache_clear()
    s2 = Session(deployment, user="mallory")
    # new units are appended; the earlier ones keep their index, so the attack is still seen
    released(s2, 'members.select(pl.col("income").sum()).collect()')
    held(s2, 'members.filter((pl.col("sid") < "S100") & (pl.col("sid") != "S077")).select(pl.col("income").sum())'
             '.collect()')


# ------------------------------------------------------------------ exactness of the pruned search


@pytest.mark.parametrize("seed", [6, 7, 8])
def test_decisions_equal_a_brute_force_comparison(mallory: Session, seed: int) -> None:
    """Random subsets, many within a few people of each other: the pruned search (sizes,
    shared prefix, sketch) decides exactly as comparing every pair would."""
    rng = random.Random(seed)
    universe = list(range(200))
    bases = [set(rng.sample(universe, n)) for n in (150, 150, 60, 30, 12)]
    shown: list[set[int]] = []
    released_sets: list[set[int]] = []
    for step in range(60):
        base = rng.choice(bases + shown[-3:]) if shown else bases[0]
        s = set(base)
        for _ in range(rng.choice([0, 1, 2, 4, 9, 10, 12])):
            if rng.random() < 0.5 and len(s) > K:
                s.discard(rng.choice(sorted(s)))
            else:
                s.add(rng.choice(universe))
        if len(s) < K:
            continue
        # A set released before is harmless to show again; any other set must differ from every set
        # released or asked for review by none or by at least K.
        dangerous = s not in released_sets and any(0 < len(s ^ t) < K for t in shown)
        src = f'people.filter(pl.col("pid").is_in({sorted(s)})).select(pl.col("age").sum()).collect()'
        r = mallory.execute(src)
        assert r.outcome == ("review" if dangerous else "released"), (step, len(s), r.reason)
        shown.append(s)  # released, or asked for review: both are in the history
        if not dangerous:
            released_sets.append(s)
    assert len(shown) > 10 and mallory.store.list(status=None)  # both outcomes happened


@pytest.mark.parametrize("n", [10, 5_000, 200_000])
def test_symmetric_difference_counts_units_and_row_counts(n: int) -> None:
    rng = random.Random(n)
    a = {i: rng.choice([1, 1, 2]) for i in rng.sample(range(3 * n), n)}
    b = dict(a)
    for u in rng.sample(sorted(a), 3):
        del b[u]
    b[3 * n + 1] = 1
    b[next(iter(b))] += 5
    expected = len(set(a) ^ set(b)) + sum(1 for u in set(a) & set(b) if a[u] != b[u])
    frame = lambda d: pl.DataFrame({"idx": sorted(d), "count": [d[u] for u in sorted(d)]},
                                   schema={"idx": pl.Int64, "count": pl.Int64})
    assert H._delta(frame(a), frame(b), cap=10**9) == expected == 5
    assert H._delta(frame(a), frame(a), cap=10) == 0


# ------------------------------------------------------------------ the owner's view


def test_review_show_lists_the_release_history(deployment: config.Deployment, world: config.Deployment) -> None:
    s = Session(deployment, user="mallory")
    released(s, SUM_ALL)
    released(s, 'people.group_by("region").agg(pl.len()).collect()')
    r = s.execute(SUM_BUT_CANARY)
    rid = r.value.request_id
    s.close()
    cfg = deployment.path.parent / "own_state.toml"
    cfg.write_text(deployment.path.read_text().replace('state_dir = "state"',
                                                       f'state_dir = "{deployment.state_dir}"'))
    out = bastion_cli(cfg, "review", "show", rid)
    assert out.returncode == 0, out.stderr
    assert "Releases to mallory on people in the differencing history (automatic, or asked for review): 3" \
        in out.stdout
    assert f"review {rid} (this request)" in out.stdout
    earlier = RELEASE_ID.search(r.value.reason).group(0)
    assert earlier in out.stdout and "people.group_by" in out.stdout


# ------------------------------------------------------------------ through the real kernel


@pytest.fixture(scope="module")
def victim(patients_df: pl.DataFrame) -> dict[str, Any]:
    """The demo patient the attacks single out: the highest income outside the smallest region."""
    row = patients_df.filter(pl.col("region") != "Islands").sort("income", descending=True).row(0, named=True)
    return row


def _secrets(victim: dict[str, Any]) -> list[str]:
    income = victim["income"]
    return [str(income), f"{income:.2f}", f"{income:,.2f}"]


def _held(kc: BlockingKernelClient, code: str) -> tuple[str, str]:
    reply, msgs = execute(kc, code)
    assert reply["status"] == "ok", reply.get("evalue")
    text = result_text(msgs)
    m = REVIEW_RE.search(text)
    assert m, f"{code!r} was not sent to review: {text}"
    assert "differ by fewer than 10" in text
    return m.group(1), all_text(msgs, reply)


def _released(kc: BlockingKernelClient, code: str) -> str:
    reply, msgs = execute(kc, code)
    assert reply["status"] == "ok" and not outputs(msgs, "error"), reply.get("evalue")
    text = all_text(msgs, reply)
    assert "Review requested" not in text, text
    return text


def test_kernel_global_and_group_by_attacks_go_to_review(demo_dir: Path, tmp_path: Path,
                                                         victim: dict[str, Any]) -> None:
    cfg = write_variant(demo_dir, tmp_path / "review")
    vid = victim["patient_id"]
    with run_kernel(cfg, user="mallory") as (_km, kc):
        _released(kc, 'patients.select(pl.col("income").sum()).collect()')
        rid, text = _held(kc, f'patients.filter(pl.col("patient_id") != {vid}).select(pl.col("income").sum()).collect()')
        assert RELEASE_ID.search(text)
        for secret in _secrets(victim):
            assert secret not in text
        _released(kc, 'patients.group_by("region").agg(pl.col("income").mean()).collect()')
        _, text = _held(kc, f'patients.filter(pl.col("patient_id") != {vid}).group_by("region")'
                            '.agg(pl.col("income").mean()).collect()')
        for secret in _secrets(victim):
            assert secret not in text
        # ordinary work in the same kernel goes on
        _released(kc, 'patients.group_by("region").agg(pl.col("income").mean()).collect()')
        _released(kc, 'patients.group_by("sex").agg(pl.col("age").mean()).collect()')
    shown = bastion_cli(cfg, "review", "show", rid)
    assert shown.returncode == 0, shown.stderr
    assert "on patients in the differencing history (automatic, or asked for review): 6" in shown.stdout


def test_kernel_a_result_the_owner_approved_cannot_be_differenced(demo_dir: Path, tmp_path: Path,
                                                                   victim: dict[str, Any]) -> None:
    """Everyone's income sum, asked with a min beside it (review), approved from the CLI and fetched;
    the same sum without the victim is then held, naming that request, and nothing reveals the income."""
    cfg = write_variant(demo_dir, tmp_path / "approved")
    vid = victim["patient_id"]
    with run_kernel(cfg, user="mallory") as (_km, kc):
        _reply, msgs = execute(kc, 'patients.select(pl.col("income").sum(), pl.col("income").min().alias("low"))'
                                   '.collect()')
        m = REVIEW_RE.search(result_text(msgs))
        assert m, result_text(msgs)
        request = m.group(1)
        assert bastion_cli(cfg, "review", "approve", request, "--by", "owner").returncode == 0
        reply, msgs = execute(kc, f'fetch("{request}")')
        assert reply["status"] == "ok" and "low" in result_text(msgs)
        _rid, text = _held(kc, f'patients.filter(pl.col("patient_id") != {vid}).select(pl.col("income").sum())'
                               '.collect()')
        assert f"your review request {request}" in text
        for secret in _secrets(victim):
            assert secret not in text


def test_kernel_tracker_is_rejected_where_the_deployment_rejects(demo_dir: Path, tmp_path: Path,
                                                                 patients_df: pl.DataFrame,
                                                                 victim: dict[str, Any]) -> None:
    cfg = write_variant(demo_dir, tmp_path / "reject", on_violation="reject")
    vid, age = victim["patient_id"], victim["age"]
    a = f"pl.col('age') != {age}"  # everyone of another age: thousands, and not the victim
    assert patients_df.filter(pl.col("age") != age).height > 1000
    with run_kernel(cfg, user="mallory") as (_km, kc):
        _released(kc, f'patients.filter({a}).select(pl.col("income").sum()).collect()')
        reply, msgs = execute(kc, f'patients.filter(({a}) | (pl.col("patient_id") == {vid}))'
                                  '.select(pl.col("income").sum()).collect()')
        assert reply["status"] == "error" and reply["ename"] == "PolicyError"
        assert "differencing" in reply["evalue"] and RELEASE_ID.search(reply["evalue"])
        text = all_text(msgs, reply)
        for secret in _secrets(victim):
            assert secret not in text
    assert bastion_cli(cfg, "review", "list", "--all", "--json").stdout.strip() == "[]"


def test_kernel_history_survives_a_restart_and_is_per_user(demo_dir: Path, tmp_path: Path,
                                                           victim: dict[str, Any]) -> None:
    cfg = write_variant(demo_dir, tmp_path / "restart")
    vid = victim["patient_id"]
    first = 'patients.group_by("diagnosis").agg(pl.col("income").sum()).collect()'
    second = (f'patients.filter(pl.col("patient_id") != {vid}).group_by("diagnosis")'
              '.agg(pl.col("income").sum()).collect()')
    with run_kernel(cfg, user="mallory") as (_km, kc):
        _released(kc, first)
    with run_kernel(cfg, user="mallory") as (_km, kc):
        _, text = _held(kc, second)
        for secret in _secrets(victim):
            assert secret not in text
    with run_kernel(cfg, user="trudy") as (_km, kc):
        _released(kc, second)  # another user's history is their own
