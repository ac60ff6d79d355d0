"""Attack class: exhausting the kernel (deep or huge cells, explosive and endless queries).

Cells are bounded before they are parsed (max_cell_chars) and while they are
checked (max_depth, max_nodes); explosive verbs (`repeat_by`, `explode`,
`int_ranges`, `pl.repeat`, `str.split`) do not exist; a row-level result is
capped by max_release_rows. Those attacks are refused now.

Queries that are small to write but huge to run (a three-way cross join, a
date truncation that loops for minutes, a padded cross join that needs
gigabytes) need the query worker with its time and memory limits (issue 5,
the lead's part, now in place). They run in a kernel of
their own, started under `prlimit --as` so that a memory bomb aborts that
kernel instead of the machine, with a deployment whose limits are small
(query_timeout_s = 2) and a short client timeout; the kernel is killed after.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest

from .conftest import Arena, assert_no_late_leak, assert_no_leak, assert_no_traceback, open_arena
from .dataset import Dataset


def cases(*rows: tuple[str, str, str]) -> list:
    return [pytest.param(code, ename, id=name) for name, code, ename in rows]


CELLS = cases(
    ("nested-arithmetic", 'people.select(' + '(pl.col("age") + ' * 100 + '1' + ')' * 100 + ').collect()', "LimitError"),
    ("long-verb-chain", "people" + '.filter(pl.col("age") > 1)' * 700, "LimitError"),
    ("call-chain", "x = len" + "()" * 2000, "LimitError"),
    ("attribute-chain", "x = pl" + ".col" * 3000, "LimitError"),
    ("ten-thousand-unary-minus", "x = " + "-" * 10000 + "1", "LimitError"),
    ("nested-lists", "x = " + "[" * 1000 + "]" * 1000, "GrammarError"),
    ("thousand-assignments", "\n".join(f"a{i} = {i}" for i in range(1000)), "LimitError"),
    ("sum-of-five-thousand-terms", "x = " + " + ".join(["1"] * 5000), "LimitError"),
    ("huge-integer-literal", "x = " + "9" * 10000, "GrammarError"),
    ("cell-over-the-size-limit", "x = 1\n" + "# padding\n" * 3000, "LimitError"),
    ("is-in-with-too-many-values", 'people.filter(pl.col("age").is_in([' + ",".join(["1"] * 6000) + "]))", "LimitError"),
)

EXPLOSIVE = cases(
    ("repeat-by-explode", 'people.select(pl.col("age").repeat_by(1000000).explode()).collect()', "GrammarError"),
    ("frame-explode", 'people.explode("zip")', "GrammarError"),
    ("int-ranges", "people.select(pl.int_ranges(0, 1000000000)).collect()", "GrammarError"),
    ("int-range", "people.select(pl.int_range(0, 1000000000)).collect()", "GrammarError"),
    ("pl-repeat", "people.select(pl.repeat(1, 1000000000)).collect()", "GrammarError"),
    ("str-split", 'people.select(pl.col("zip").str.split("")).collect()', "GrammarError"),
    ("list-eval", 'people.select(pl.col("age").implode().list.eval(pl.element())).collect()', "GrammarError"),
    ("upsample", 'people.upsample("birth_date", every="1ns")', "GrammarError"),
    ("zfill-beyond-the-cap", 'people.select(pl.col("zip").str.zfill(100000).n_unique()).collect()', "QueryError"),
    ("cross-join-row-level-result", 'people.join(people, how="cross", suffix="_b").select("age").collect()',
     "LimitError"),
)


@pytest.mark.parametrize(("code", "ename"), CELLS)
def test_deep_and_huge_cells_are_refused_by_named_limits(arena: Arena, code: str, ename: str) -> None:
    out = arena.attack(code, "refused", ename=ename)
    if ename == "LimitError":
        assert "limit max_" in out.evalue, out.describe()


@pytest.mark.parametrize(("code", "ename"), EXPLOSIVE)
def test_explosive_verbs_do_not_exist_or_are_capped(arena: Arena, code: str, ename: str) -> None:
    arena.attack(code, "refused", ename=ename)


def test_a_bounded_cross_join_is_an_ordinary_aggregate(arena: Arena) -> None:
    out = arena.attack('people.join(people, how="cross", suffix="_b").select(pl.len()).collect()', "released")
    assert "360000" in out.shown


def test_no_late_message_carries_a_canary(arena: Arena) -> None:
    assert_no_late_leak(arena)


# --------------------------------------------------------------------------- bombs (need the query worker)

SMALL_LIMITS = "\n[limits]\nquery_timeout_s = 2\nquery_memory_mb = 1024\n"
AS_LIMIT = str(3 * 1024**3)  # bytes of address space for the sacrificial kernel


@pytest.fixture
def doomed(sec_data: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    """A kernel an attack may leave busy for minutes or kill: its own, capped, killed afterwards."""
    prefix = ["prlimit", f"--as={AS_LIMIT}", "--"] if shutil.which("prlimit") else None
    if prefix is None:
        pytest.skip("prlimit is needed to run a memory bomb safely")
    with open_arena(sec_data, tmp_path_factory.mktemp("doomed"), "review", extra=SMALL_LIMITS,
                    argv_prefix=prefix, kill=True) as a:
        a.run("len([1])")  # warm up (imports) outside the timed part
        yield a


def _bomb(arena: Arena, code: str, seconds: float = 30.0) -> None:
    """The query must end within the time limit with a clear error; nothing leaks; the kernel survives."""
    before = arena.files()
    out = arena.run(code, timeout=seconds)
    assert out.status == "error" and out.ename in ("LimitError", "ExecutionError"), out.describe()
    assert_no_leak(arena, out)
    assert_no_traceback(out.text)
    arena.assert_alive()
    assert arena.files() == before


def test_a_three_way_cross_join_is_stopped_by_the_time_limit(doomed: Arena) -> None:
    _bomb(doomed, 'people.join(visits, how="cross", suffix="_v").join(people, how="cross", suffix="_p")'
                  ".select(pl.len()).collect()")


def test_a_date_truncation_that_loops_for_minutes_is_stopped_by_the_time_limit(doomed: Arena) -> None:
    """Truncating pre-1970 dates to a 10^8-year period makes polars loop for minutes (it is instant on a literal)."""
    _bomb(doomed, 'people.group_by(pl.col("birth_date").dt.truncate("100000000y")).agg(pl.len()).collect()')


def test_a_padded_cross_join_is_stopped_by_the_memory_limit(doomed: Arena) -> None:
    """360,000 rows x 10,000 characters: 3.6 GB for one column. Under prlimit the kernel aborts today."""
    _bomb(doomed, 'people.join(people, how="cross", suffix="_b").select(pl.col("zip").str.pad_start(10000)'
                  ".n_unique()).collect()", seconds=60)


def test_interrupting_an_endless_query_answers_at_once(doomed: Arena) -> None:
    doomed.run('kept = people.group_by("region").agg(pl.len())')
    msg_id = doomed.kc.execute('people.group_by(pl.col("birth_date").dt.truncate("100000000y")).agg(pl.len())'
                               ".collect()")
    time.sleep(1.0)
    doomed.km.interrupt_kernel()
    deadline = time.monotonic() + 30.0  # a liveness bound: the worker is killed, restarted and replayed
    reply = None
    while reply is None and time.monotonic() < deadline:
        try:
            msg = doomed.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:  # queue.Empty
            break
        if msg["parent_header"].get("msg_id") == msg_id:
            reply = msg
    assert reply is not None, "the interrupted query did not answer within 30 s"
    assert reply["content"]["ename"] == "ExecutionError"
    out = doomed.run("kept.columns", timeout=5)
    assert out.status == "ok" and "region" in out.shown
