"""What the analyst is told when a cell fails part-way, or a query cannot run.

Regressions named after what they pin:
- rust_panic_gets_an_answer: a Rust panic inside polars is a BaseException
  (pyo3's PanicException); `release.run` answers it with one fixed error;
- request_filed_before_a_failing_statement: a cell that filed a review request
  and then failed kept nothing but the error; the error now names the request;
- hist_stats_held_back_said_too_few_individuals: a histogram whose mean/std
  were held back by the differencing check blamed the group size.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from bastion_kernel import config
from bastion_kernel import release as R
from bastion_kernel.errors import ExecutionError
from bastion_kernel.session import Session

K = 10
REQUEST_RE = re.compile(r"\bR[0-9a-f]{8}\b")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> config.Deployment:
    root: Path = tmp_path_factory.mktemp("cell_failures")
    pl.DataFrame({
        "pid": list(range(200)),
        "region": ["north"] * 100 + ["south"] * 100,
        "income": [1000.0 + 37.5 * i for i in range(200)],
    }).write_parquet(root / "people.parquet")
    (root / "bastion.toml").write_text(f"""
[bastion]
state_dir = "state"
min_group_size = {K}
on_violation = "review"

[datasets.people]
path = "people.parquet"
privacy_unit = "pid"
""")
    return config.load(root / "bastion.toml")


@pytest.fixture
def session(deployment: config.Deployment, tmp_path: Path):
    s = Session(replace(deployment, state_dir=tmp_path / "state"), user="analyst")
    yield s
    s.close()


def test_rust_panic_gets_an_answer_that_quotes_nothing() -> None:
    """income * 1e9 as milliseconds is past the year 262143: polars panics in Rust on that value."""
    lf = pl.LazyFrame({"income": [8675309]}).select(
        (pl.col("income") * 1_000_000_000).cast(pl.Datetime("ms")).dt.month_start())
    with pytest.raises(ExecutionError) as info:
        R.run(lf)
    assert info.value.message == R.panic_error().message
    assert "8675309" not in info.value.message and "panic" not in info.value.message.lower()


def test_request_filed_before_a_failing_statement_is_named_in_the_error(session: Session) -> None:
    cell = 'r = people.head(3).collect()\nx = fetch("R00000000")'
    result = session.execute(cell)
    assert result.error is not None and len(result.pending) == 1
    rid = result.pending[0].request_id
    text = result.error.render(cell)
    assert f"filed review request {rid}" in text and f'fetch("{rid}")' in text
    assert "no review request R00000000" in text  # the actual failure is still the error
    listed = session.execute("requests()").value
    assert listed.filter(pl.col("id") == rid).get_column("status").to_list() == ["pending"]
    assert "r" not in session.namespace  # the cell changed nothing else


def test_a_failing_cell_without_requests_says_nothing_of_requests(session: Session) -> None:
    result = session.execute('x = fetch("R00000000")')
    assert result.error is not None and "review request R00000000" in result.error.message
    assert "filed review request" not in result.error.message


def test_hist_stats_held_back_say_so_not_too_few_individuals(session: Session) -> None:
    first = session.execute('people.plot.hist("income")')
    assert first.error is None, first.error and first.error.message
    result = session.execute('people.filter(pl.col("pid") != 77).plot.hist("income")')
    assert result.error is not None
    message = result.error.message
    assert "too few individuals" not in message
    assert "mean and std of `income` that would choose the bins were held back" in message
    assert "differ by fewer than 10" in message  # the differencing check's own reason
    assert "range=[lo, hi]" in (result.error.hint or "")
    # the held-back statistics went to the owner as a review request, and the error says which
    assert result.pending and result.pending[0].request_id in message


def test_hist_of_a_group_below_the_threshold_still_says_too_few_individuals(session: Session) -> None:
    result = session.execute('people.filter(pl.col("pid") < 5).plot.hist("income")')
    assert result.error is not None and "too few individuals" in result.error.message


def test_kernel_shows_the_request_filed_before_a_failing_statement(demo_config: Path) -> None:
    """Over the real protocol: the request's widget is displayed, then the error naming it."""
    from conftest import all_text, execute, run_kernel

    with run_kernel(demo_config, user="carol") as (_km, kc):
        reply, msgs = execute(kc, 'r = patients.head(3).collect()\nx = fetch("R00000000")')
        assert reply["status"] == "error"
        kinds = [m["msg_type"] for m in msgs]
        assert "display_data" in kinds and kinds.index("display_data") < kinds.index("error")
        shown = re.search(r"Review requested: (R[0-9a-f]{8})", all_text(msgs))
        assert shown is not None
        assert f"filed review request {shown.group(1)}" in reply["evalue"]
        reply, msgs = execute(kc, "requests()")
        assert reply["status"] == "ok" and shown.group(1) in all_text(msgs)
