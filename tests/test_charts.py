"""Charts of released aggregates, as a notebook receives them (Vega-Lite bundles over the protocol).

The specification: `released.plot.bar/line/point(x=, y=)` draws exactly the
released rows (and only the drawn columns travel in the spec); `frame.plot.hist`
is an aggregate that goes through the normal policy, so bins with fewer than
k individuals are withheld and said so; masked columns, unreleased frames,
unknown chart kinds and unknown arguments are refused with a position and a
hint. Expected values are computed here with polars on the owner's data.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from jupyter_client.blocking.client import BlockingKernelClient

from conftest import (
    TIMEOUT,
    _wait_reply,
    all_text,
    bastion_cli,
    execute,
    outputs,
    result_data,
    run_kernel,
    validate_message,
    write_variant,
)

VEGA = "application/vnd.vegalite.v5+json"
K = 10  # the demo's min_group_size


@pytest.fixture(scope="module")
def config(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_variant(demo_dir, tmp_path_factory.mktemp("charts"))


@pytest.fixture(scope="module")
def kc(config: Path) -> Iterator[BlockingKernelClient]:
    with run_kernel(config, user="alice") as (_km, client):
        ok(client, 'by_region = patients.group_by("region").agg(n=pl.len(), mean_age=pl.col("age").mean()).collect()')
        yield client


# --------------------------------------------------------------------------- helpers


def ok(kc: BlockingKernelClient, code: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    reply, msgs = execute(kc, code)
    assert reply["status"] == "ok", f"{code!r} failed: {reply.get('evalue')}"
    return reply, msgs


def spec_of(kc: BlockingKernelClient, code: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(Vega-Lite spec, whole bundle, everything received) of a cell that draws a chart."""
    reply, msgs = ok(kc, code)
    data = result_data(msgs)
    assert set(data) == {VEGA, "text/plain"}, set(data)
    spec = data[VEGA]
    assert spec["$schema"].endswith("vega-lite/v5.json")
    return spec, data, all_text(msgs, reply)


def fails(kc: BlockingKernelClient, code: str, ename: str) -> tuple[str, str]:
    """(rendered error, everything received) of a refused cell that draws nothing."""
    reply, msgs = execute(kc, code)
    assert reply["status"] == "error", f"{code!r} did not fail"
    assert reply["ename"] == ename, (reply["ename"], reply["evalue"])
    assert not outputs(msgs, "execute_result")
    return reply["evalue"], all_text(msgs, reply)


def expected_regions(patients: pl.DataFrame) -> pl.DataFrame:
    return (patients.group_by("region").agg(n=pl.len(), mean_age=pl.col("age").mean(),
                                            u=pl.col("patient_id").n_unique())
            .filter(pl.col("u") >= K).drop("u"))


def expected_hist(df: pl.DataFrame, column: str, start: float, width: float, count: int) -> tuple[pl.DataFrame, int]:
    """Released bins (start, end, rows) and how many non-empty bins fall below k individuals."""
    end = start + width * count
    binned = (df.filter((pl.col(column) >= start) & (pl.col(column) < end))
              .with_columns(bin_start=((pl.col(column) - start) / width).floor() * width + start)
              .group_by("bin_start").agg(count=pl.len(), u=pl.col("patient_id").n_unique()))
    kept = binned.filter(pl.col("u") >= K).sort("bin_start")
    return kept.select("bin_start", "count"), binned.height - kept.height


def complete(kc: BlockingKernelClient, code: str) -> dict[str, Any]:
    msg_id = kc.complete(code, len(code))
    reply = _wait_reply(kc.get_shell_msg, msg_id, TIMEOUT)
    if validate_message is not None:
        validate_message(reply, "complete_reply", msg_id)
    content: dict[str, Any] = reply["content"]
    return content


# --------------------------------------------------------------------------- bar, line, point


def test_bar_chart_draws_exactly_the_released_rows(kc: BlockingKernelClient, patients_df: pl.DataFrame) -> None:
    spec, data, seen = spec_of(kc, 'by_region.plot.bar(x="region", y="mean_age")')
    assert spec["mark"]["type"] == "bar"
    assert spec["encoding"]["x"] == {"field": "region", "type": "nominal", "title": "region"}
    assert spec["encoding"]["y"] == {"field": "mean_age", "type": "quantitative", "title": "mean_age"}
    got = {v["region"]: v["mean_age"] for v in spec["data"]["values"]}
    want = dict(expected_regions(patients_df).select("region", "mean_age").iter_rows())
    assert got.keys() == want.keys()
    assert all(got[r] == pytest.approx(want[r], rel=1e-12) for r in want)
    # only the drawn columns travel with the chart; the withheld group is nowhere
    assert all(set(v) == {"region", "mean_age"} for v in spec["data"]["values"])
    assert "Islands" not in seen
    text = data["text/plain"]
    assert text.startswith("bar chart of mean_age by region (5 released rows)")
    assert "Note: groups with fewer than the minimum number of individuals are withheld, if there are any" in text
    # JupyterLab shows only the chart: the notes are its subtitle
    assert spec["title"]["subtitle"] == ["groups with fewer than the minimum number of individuals are withheld, if there are any"]


def test_point_chart_with_colour_and_title(kc: BlockingKernelClient, patients_df: pl.DataFrame) -> None:
    ok(kc, 'by_rs = patients.group_by("region", "sex").agg(n=pl.len(), income=pl.col("income").mean()).collect()')
    spec, _data, _ = spec_of(kc, 'by_rs.plot.point(x="n", y="income", color="sex", title="Income by group size")')
    assert spec["title"]["text"] == "Income by group size"
    assert spec["mark"] == {"type": "point", "tooltip": True, "filled": True}
    assert spec["encoding"]["x"]["type"] == "quantitative"
    assert spec["encoding"]["color"] == {"field": "sex", "type": "nominal", "title": "sex"}
    want = (patients_df.group_by("region", "sex").agg(n=pl.len(), u=pl.col("patient_id").n_unique())
            .filter(pl.col("u") >= K))
    got = sorted((v["sex"], v["n"]) for v in spec["data"]["values"])
    assert got == sorted(want.select("sex", "n").iter_rows())


def test_line_chart_over_years(kc: BlockingKernelClient, demo_dir: Path) -> None:
    ok(kc, 'per_year = visits.group_by(year=pl.col("date").dt.year()).agg(cost=pl.col("cost").sum()).collect()')
    spec, _data, _ = spec_of(kc, 'per_year.sort("year").plot.line(x="year", y="cost")')
    assert spec["mark"]["type"] == "line"
    assert spec["encoding"]["x"] == {"field": "year", "type": "quantitative", "title": "year"}
    visits = pl.read_parquet(demo_dir / "data" / "visits.parquet")
    want = (visits.group_by(year=pl.col("date").dt.year()).agg(cost=pl.col("cost").sum(),
                                                             u=pl.col("patient_id").n_unique())
            .filter(pl.col("u") >= K).sort("year"))
    got = [(v["year"], v["cost"]) for v in spec["data"]["values"]]
    assert [y for y, _ in got] == want["year"].to_list()
    assert [c for _, c in got] == pytest.approx(want["cost"].to_list(), rel=1e-12)


def test_field_names_with_dots_are_escaped_for_vega_lite(kc: BlockingKernelClient) -> None:
    ok(kc, 'dotted = patients.group_by("sex").agg(pl.len().alias("n.rows")).collect()')
    spec, _data, _ = spec_of(kc, 'dotted.plot.bar(x="sex", y="n.rows")')
    assert spec["encoding"]["y"]["field"] == "n\\.rows"
    assert all("n.rows" in v for v in spec["data"]["values"])


# --------------------------------------------------------------------------- histograms


def test_histogram_is_an_aggregate_with_small_bins_withheld(kc: BlockingKernelClient,
                                                            patients_df: pl.DataFrame) -> None:
    central = patients_df.filter(pl.col("region") == "Central")
    want, withheld = expected_hist(central, "age", 0.0, 2.5, 40)
    assert withheld > 0 and want.height > 0  # the case shows both kept and withheld bins
    spec, data, _ = spec_of(kc, 'patients.filter(pl.col("region") == "Central").plot.hist("age", bins=40, '
                                'range=[0, 100])')
    values = spec["data"]["values"]
    assert [(v["bin_start"], v["count"]) for v in values] == list(want.iter_rows())
    assert all(v["bin_end"] == pytest.approx(v["bin_start"] + 2.5) for v in values)
    assert spec["encoding"]["x"]["bin"] == {"binned": True, "step": 2.5}
    assert spec["encoding"]["x"]["scale"] == {"domain": [0.0, 100.0]}  # withheld edge bins show as gaps
    assert spec["encoding"]["x2"] == {"field": "bin_end"}
    text = data["text/plain"]
    assert "Note: groups with fewer than the minimum number of individuals are withheld, if there are any" in text
    assert "bins cover [0, 100) (range as given)" in text
    subtitle = spec["title"]["subtitle"]
    assert "groups with fewer than the minimum number of individuals are withheld, if there are any" in subtitle
    assert any(n.startswith("bins cover [0, 100) (range as given)") for n in subtitle)


def test_histogram_default_bins_come_from_the_released_mean_and_std(kc: BlockingKernelClient,
                                                                     patients_df: pl.DataFrame) -> None:
    spec, data, _ = spec_of(kc, 'patients.plot.hist("income")')
    mean, std = patients_df["income"].mean(), patients_df["income"].std()
    assert f"from the released mean {mean:.6g} ± 3 × std {std:.6g}" in data["text/plain"]
    m = re.search(r"(\d+) bins of width ([\d.e+]+) over \[(-?[\d.e+]+), (-?[\d.e+]+)\)", data["text/plain"])
    assert m, data["text/plain"]
    count, width, start, end = int(m[1]), float(m[2]), float(m[3]), float(m[4])
    assert start <= mean - 3 * std and end >= mean + 3 * std  # the bins cover mean ± 3 std
    assert "scale" not in spec["encoding"]["x"]  # an axis over the data, not over the artificial range
    assert math.isclose(start / width, round(start / width))  # edges on round numbers
    want, _ = expected_hist(patients_df, "income", start, width, count)
    got = [(v["bin_start"], v["count"]) for v in spec["data"]["values"]]
    assert [c for _, c in got] == want["count"].to_list()
    assert [s for s, _ in got] == pytest.approx(want["bin_start"].to_list())


def test_histogram_that_needs_review_draws_nothing(kc: BlockingKernelClient) -> None:
    # a rank computed on rows mixes individuals: the counting query goes to the owner, not to a chart
    # (of income: its bins join the differencing history, and later cells here bin age)
    reply, msgs = ok(kc, 'patients.with_columns(r=pl.col("income").rank()).plot.hist("r", range=[0, 5000])')
    seen = all_text(msgs, reply)
    assert VEGA not in seen
    assert "Review requested" in seen
    # without a range the bins would need the (unreleasable) mean and std: refused, no request made
    evalue, seen = fails(kc, 'patients.with_columns(r=pl.col("income").rank()).plot.hist("r")', "QueryError")
    assert "the bins cannot be chosen from this frame's data" in evalue
    assert "range=[lo, hi]" in evalue
    assert "Review requested" not in seen


@pytest.mark.parametrize(("code", "message"), [
    ('patients.plot.hist("region")', "a histogram needs a numeric column; `region` is String"),
    ('patients.plot.hist("age", bins=0)', "bins must be between 1 and 200"),
    ('patients.plot.hist("age", range=[10, 5])', "range must be two finite numbers [lo, hi] with lo < hi"),
    ('patients.plot.hist("agee")', "no column `agee` in this frame"),
])
def test_histogram_arguments_are_checked(kc: BlockingKernelClient, code: str, message: str) -> None:
    evalue, _ = fails(kc, code, "QueryError")
    assert message in evalue
    assert "line 1" in evalue and "Hint: " in evalue


# --------------------------------------------------------------------------- refusals


def test_masked_column_cannot_be_binned(kc: BlockingKernelClient, patients_df: pl.DataFrame) -> None:
    evalue, seen = fails(kc, 'patients.plot.hist("ssn")', "PolicyError")
    assert "masked column `ssn` cannot be binned" in evalue
    assert "Rule: masked-column on dataset patients" in evalue
    for secret in patients_df["ssn"].to_list()[:200]:
        assert secret not in seen


def test_masked_column_of_a_fetched_result_cannot_be_drawn(kc: BlockingKernelClient, config: Path,
                                                           patients_df: pl.DataFrame) -> None:
    reply, msgs = ok(kc, 'patients.select("name", "age").head(12).collect()')
    m = re.search(r"Review requested: (R[0-9a-f]{8})", all_text(msgs, reply))
    assert m, all_text(msgs, reply)
    out = bastion_cli(config, "review", "approve", m[1], "--by", "owner")
    assert out.returncode == 0, out.stderr
    ok(kc, f'approved = fetch("{m[1]}")')
    names = set(patients_df["name"].to_list())
    for code in ('approved.plot.bar(x="name", y="age")', 'approved.head(5).plot.point(x="age", y="name")'):
        evalue, seen = fails(kc, code, "PolicyError")
        assert "column `name` is masked" in evalue
        assert not [n for n in names if n in seen]
    spec, _data, seen = spec_of(kc, 'approved.plot.bar(x="age", y="age")')  # an unmasked column is fine
    assert not [n for n in names if n in seen]
    assert len(spec["data"]["values"]) == 12


def test_frames_are_not_drawn_before_release(kc: BlockingKernelClient) -> None:
    evalue, _ = fails(kc, 'patients.group_by("region").agg(pl.len()).plot.bar(x="region", y="len")', "GrammarError")
    assert "`bar` is not available on the .plot namespace" in evalue
    assert "Hint: a frame is not released yet: .collect() it first" in evalue


def test_unknown_chart_kind_is_refused_with_a_caret_and_the_kinds(kc: BlockingKernelClient) -> None:
    code = 'by_region.plot.pie(x="region", y="n")'
    evalue, _ = fails(kc, code, "GrammarError")
    col = code.index("pie")
    assert f"(line 1, column {col + 1}): `pie` is not available on the .plot namespace" in evalue
    lines = evalue.splitlines()
    caret = lines[lines.index("    " + code) + 1]
    assert caret == "    " + " " * col + "^^^"
    assert "Hint: charts here: bar, line, point" in evalue
    evalue, _ = fails(kc, 'by_region.plot.bars(x="region", y="n")', "GrammarError")
    assert "did you mean `bar`?" in evalue


def test_unknown_chart_argument_is_refused_with_a_suggestion(kc: BlockingKernelClient) -> None:
    evalue, _ = fails(kc, 'by_region.plot.bar(x="region", y="n", colour="region")', "QueryError")
    assert ".plot.bar() has no argument `colour`" in evalue
    assert "Hint: did you mean `color`?" in evalue
    evalue, _ = fails(kc, 'by_region.plot.bar(x="regio", y="n")', "QueryError")
    assert "no column `regio` in this released result" in evalue and "did you mean `region`?" in evalue
    evalue, _ = fails(kc, 'by_region.plot.bar(x="region")', "QueryError")
    assert "needs the argument `y`" in evalue


# --------------------------------------------------------------------------- discoverability


def test_completion_offers_chart_kinds_and_released_columns(kc: BlockingKernelClient) -> None:
    reply = complete(kc, "by_region.plot.")
    assert reply["matches"] == ["bar", "line", "point"]
    reply = complete(kc, "patients.plot.h")
    assert reply["matches"] == ["hist"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (len("patients.plot."), len("patients.plot.h"))
    code = 'by_region.plot.bar(x="re'
    reply = complete(kc, code)
    assert reply["matches"] == ["region"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (len(code) - 2, len(code))
    assert "plot" in complete(kc, "by_region.")["matches"]


def test_inspection_explains_a_chart_kind(kc: BlockingKernelClient) -> None:
    code = "patients.plot.hist"
    msg_id = kc.inspect(code, len(code))
    reply = _wait_reply(kc.get_shell_msg, msg_id, TIMEOUT)["content"]
    assert reply["found"] is True
    assert "through the policy" in reply["data"]["text/plain"]


def test_a_chart_bundle_is_valid_json(kc: BlockingKernelClient) -> None:
    spec, _data, _ = spec_of(kc, 'patients.plot.hist("age", bins=10, range=[0, 100])')
    assert json.loads(json.dumps(spec, allow_nan=False)) == spec
