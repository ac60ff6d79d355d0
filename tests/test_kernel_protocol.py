"""Bastion as a notebook sees it: the real kernel process, spoken to over the Jupyter protocol.

A specification of behaviour at the boundary that matters: every message a
client receives. Kernels are module-scoped (one per deployment and user);
tests that need a fresh audit log or a broken deployment start their own.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from jupyter_client.blocking.client import BlockingKernelClient

from conftest import (
    REPO,
    TIMEOUT,
    all_text,
    bastion_cli,
    control_request,
    execute,
    outputs,
    result_data,
    result_text,
    run_kernel,
    write_variant,
)

from bastion_kernel.audit import list_sessions, read_session  # noqa: E402
from bastion_kernel.review import ReviewStore  # noqa: E402

REVIEW_RE = re.compile(r"Review requested: (R[0-9a-f]{8})\b")

# What a leaked polars error or Python traceback would look like in a message.
TRACEBACK_MARKERS = ("Traceback", 'File "', "site-packages", "polars/", "This error occurred", "Error originated")


# --------------------------------------------------------------------------- kernels


@pytest.fixture(scope="module")
def alice(demo_config: Path) -> Iterator[BlockingKernelClient]:
    with run_kernel(demo_config, user="alice") as (_km, kc):
        yield kc


@pytest.fixture(scope="module")
def bob(demo_config: Path) -> Iterator[BlockingKernelClient]:
    with run_kernel(demo_config, user="bob") as (_km, kc):
        yield kc


@pytest.fixture(scope="module")
def strict_alice(strict_config: Path) -> Iterator[BlockingKernelClient]:
    with run_kernel(strict_config, user="alice") as (_km, kc):
        yield kc


@pytest.fixture(scope="module")
def strict_bob(strict_config: Path) -> Iterator[BlockingKernelClient]:
    with run_kernel(strict_config, user="bob") as (_km, kc):
        yield kc


# --------------------------------------------------------------------------- helpers


def ok(kc: BlockingKernelClient, code: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    reply, msgs = execute(kc, code)
    assert reply["status"] == "ok", f"{code!r} failed: {reply.get('evalue')}"
    assert not outputs(msgs, "error")
    return reply, msgs


def fails(kc: BlockingKernelClient, code: str, ename: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The cell fails with `ename`, both in the reply and in one iopub error message, and shows no result."""
    reply, msgs = execute(kc, code)
    assert reply["status"] == "error", f"{code!r} did not fail: {[m['msg_type'] for m in msgs]}"
    assert reply["ename"] == ename, f"{code!r}: expected {ename}, got {reply['ename']}: {reply['evalue']}"
    errors = outputs(msgs, "error")
    assert len(errors) == 1 and errors[0]["ename"] == ename and errors[0]["evalue"] == reply["evalue"]
    assert not outputs(msgs, "execute_result")
    return reply, msgs


def value(kc: BlockingKernelClient, code: str) -> Any:
    """A cell whose text/plain is a Python literal (an int, a list of dicts...), parsed."""
    _reply, msgs = ok(kc, code)
    return ast.literal_eval(result_text(msgs))


def request_review(kc: BlockingKernelClient, code: str) -> tuple[str, str]:
    """Run a cell that must become a review request; return (request id, everything received)."""
    reply, msgs = ok(kc, code)
    text = result_text(msgs)
    m = REVIEW_RE.search(text)
    assert m, f"{code!r} did not request a review: {text}"
    return m.group(1), all_text(msgs, reply)


def review_list(config: Path, *extra: str) -> list[dict[str, Any]]:
    out = bastion_cli(config, "review", "list", "--json", *extra)
    assert out.returncode == 0, out.stderr
    items: list[dict[str, Any]] = json.loads(out.stdout)
    return items


def approve(config: Path, rid: str) -> None:
    out = bastion_cli(config, "review", "approve", rid, "--by", "owner")
    assert out.returncode == 0, out.stderr


def html_rows(html: str) -> list[list[str]]:
    """Cells of a released table's HTML, one list per row (header excluded)."""
    rows = re.findall(r"<tr>(.*?)</tr>", html, flags=re.S)
    return [re.findall(r"<td[^>]*>(.*?)</td>", r, flags=re.S) for r in rows if "<td" in r]


def assert_no_traceback(text: str) -> None:
    for marker in TRACEBACK_MARKERS:
        assert marker not in text, f"{marker!r} leaked into a message: {text[:2000]}"


def secrets_of(df: pl.DataFrame) -> set[str]:
    """Every masked value of the demo's patients (names and SSNs)."""
    return set(df.get_column("name").to_list()) | set(df.get_column("ssn").to_list())


def assert_no_secret(text: str, secrets: set[str]) -> None:
    leaked = sorted(s for s in secrets if s in text)
    assert not leaked, f"masked values leaked: {leaked[:5]}"


# --------------------------------------------------------------------------- kernel_info and refused features


def test_kernel_info_names_bastion_and_offers_no_subshells_or_debugger(alice: BlockingKernelClient) -> None:
    reply = alice.kernel_info(reply=True, timeout=TIMEOUT)
    content = reply["content"]
    assert content["status"] == "ok"
    assert content["implementation"] == "bastion"
    assert content["language_info"]["name"] == "python"
    assert content["language_info"]["file_extension"] == ".py"
    features = content.get("supported_features", [])
    assert "kernel subshells" not in features
    assert "debugger" not in features
    assert content.get("debugger", False) is False


@pytest.mark.parametrize(
    ("request_type", "content"),
    [
        ("create_subshell_request", {}),
        ("list_subshell_request", {}),
        ("delete_subshell_request", {"subshell_id": "anything"}),
        ("debug_request", {"type": "request", "seq": 1, "command": "initialize", "arguments": {}}),
        ("debug_request", {"type": "request", "seq": 2, "command": "evaluate", "arguments": {"expression": "1"}}),
    ],
)
def test_subshells_and_debugger_are_refused(alice: BlockingKernelClient, request_type: str,
                                            content: dict[str, Any]) -> None:
    reply = control_request(alice, request_type, content)
    assert reply["msg_type"] == request_type.replace("_request", "_reply")
    assert reply["content"]["status"] == "error"
    assert "subshell_id" not in reply["content"]
    assert "body" not in reply["content"]  # no debug adapter response
    # The kernel is still alive and still answers cells.
    assert value(alice, "len([1, 2, 3, 4])") == 4


def test_execute_request_aimed_at_a_subshell_is_not_run(alice: BlockingKernelClient) -> None:
    msg = alice.session.msg("execute_request", {
        "code": "leaked_subshell = 1", "silent": False, "store_history": True, "user_expressions": {},
        "allow_stdin": False, "stop_on_error": False,
    })
    msg["header"]["subshell_id"] = "not-a-subshell"
    alice.shell_channel.send(msg)
    reply = alice.get_shell_msg(timeout=TIMEOUT)
    assert reply["parent_header"]["msg_id"] == msg["header"]["msg_id"]
    assert reply["content"]["status"] == "error"
    fails(alice, "leaked_subshell", "GrammarError")


def test_user_expressions_are_never_evaluated(alice: BlockingKernelClient) -> None:
    ok(alice, "ux_secret = 5")
    reply, msgs = execute(alice, "len([1])", user_expressions={"a": "ux_secret", "b": '__import__("os").getcwd()'})
    assert reply["status"] == "ok"
    assert reply["user_expressions"] == {}
    assert os.getcwd() not in all_text(msgs, reply)


def test_no_message_names_the_owners_files(alice: BlockingKernelClient, demo_dir: Path) -> None:
    cells = [
        "patients", "visits", "patients.schema", 'policy("patients")', "datasets()",
        'patients.explain()', 'patients.select(pl.col("nope")).collect()',
        'patients.select(pl.col("diagnosis").cast(pl.Date).count()).collect()', "patients.describe()",
        'patients.join(visits, on="patient_id").group_by("region").agg(pl.len()).collect()',
    ]
    for code in cells:
        reply, msgs = execute(alice, code)
        text = all_text(msgs, reply)
        for needle in (str(demo_dir), "parquet", "bastion.toml", str(demo_dir / "state")):
            assert needle not in text, f"{code!r} shows {needle!r}"


# --------------------------------------------------------------------------- released aggregates


AGG_CELL = (
    'patients.group_by("region").agg(pl.len().alias("n"), pl.col("income").mean().alias("mean_income"))'
    '.sort("region").collect()'
)


def _expected_regions(patients_df: pl.DataFrame) -> pl.DataFrame:
    return (
        patients_df.group_by("region")
        .agg(pl.len().alias("n"), pl.col("patient_id").n_unique().alias("people"), pl.col("income").mean().alias("mean_income"))
        .filter(pl.col("people") >= 10)
        .drop("people")
        .sort("region")
    )


def test_grouped_aggregate_is_exactly_what_polars_computes(alice: BlockingKernelClient,
                                                            patients_df: pl.DataFrame) -> None:
    expected = _expected_regions(patients_df)
    assert "Islands" not in expected["region"].to_list()  # the demo's tiny region, withheld
    assert patients_df.filter(pl.col("region") == "Islands").height == 3

    got = value(alice, AGG_CELL + ".to_dicts()")
    want = expected.to_dicts()
    assert [r["region"] for r in got] == [r["region"] for r in want]
    assert [r["n"] for r in got] == [r["n"] for r in want]
    for g, w in zip(got, want):
        assert g["mean_income"] == pytest.approx(w["mean_income"], rel=1e-12)


def test_grouped_aggregate_display_has_text_and_html_and_the_withheld_note(alice: BlockingKernelClient,
                                                                            patients_df: pl.DataFrame) -> None:
    _reply, msgs = ok(alice, AGG_CELL)
    data = result_data(msgs)
    assert set(data) >= {"text/plain", "text/html"}
    text, html = data["text/plain"], data["text/html"]
    assert "Note: groups with fewer than the minimum number of individuals are withheld, if there are any" in text
    assert "groups with fewer than the minimum number of individuals are withheld, if there are any" in html
    assert "Islands" not in text and "Islands" not in html
    expected = _expected_regions(patients_df)
    rows = html_rows(html)
    assert [r[0] for r in rows] == expected["region"].to_list()
    assert [int(r[1]) for r in rows] == expected["n"].to_list()
    for region, n in zip(expected["region"], expected["n"]):
        assert re.search(rf"{region}\s*┆\s*{n}\b", text), (region, n, text)


def test_scalar_aggregate_released(alice: BlockingKernelClient, patients_df: pl.DataFrame) -> None:
    got = value(alice, 'patients.select(pl.len().alias("n"), pl.col("age").mean().alias("age")).collect().to_dicts()')
    assert got == [{"n": patients_df.height, "age": pytest.approx(patients_df["age"].mean(), rel=1e-12)}]


# --------------------------------------------------------------------------- the grammar


GRAMMAR_REFUSED = [
    "import os",
    '__import__("os")',
    "lambda x: x",
    "[x for x in y]",
    'f"{patients}"',
    "!ls",
    "%time 1",
    "patients.map_batches(1)",
    'pl.read_csv("x")',
    "patients.__class__",
]


@pytest.mark.parametrize("code", GRAMMAR_REFUSED)
def test_grammar_refuses_with_position_and_hint_and_keeps_state(alice: BlockingKernelClient, code: str) -> None:
    name = f"kept_{GRAMMAR_REFUSED.index(code)}"
    ok(alice, f"{name} = [{GRAMMAR_REFUSED.index(code)}, 42]")
    reply, msgs = fails(alice, code, "GrammarError")
    assert "line 1" in reply["evalue"]
    assert "Hint:" in reply["evalue"]
    assert reply["traceback"] and all(isinstance(t, str) for t in reply["traceback"])
    assert_no_traceback(all_text(msgs, reply))
    assert value(alice, name) == [GRAMMAR_REFUSED.index(code), 42]


def test_a_failing_cell_assigns_nothing(alice: BlockingKernelClient) -> None:
    reply, _ = fails(alice, "first_of_two = 1\nsecond_of_two = patients.no_such_verb()", "GrammarError")
    assert "line 2" in reply["evalue"]
    reply, _ = fails(alice, "first_of_two", "GrammarError")
    assert "name `first_of_two` is not defined" in reply["evalue"]
    fails(alice, "second_of_two", "GrammarError")


def test_a_cell_refused_by_policy_in_its_last_statement_assigns_nothing(alice: BlockingKernelClient) -> None:
    fails(alice, 'staged = 7\npatients.filter(pl.col("ssn") == "1").select(pl.len()).collect()', "PolicyError")
    reply, _ = fails(alice, "staged", "GrammarError")
    assert "name `staged` is not defined" in reply["evalue"]


def test_assignment_then_use_across_cells(alice: BlockingKernelClient, patients_df: pl.DataFrame) -> None:
    ok(alice, 'adults = patients.filter(pl.col("age") >= 18)')
    _reply, msgs = ok(alice, "adults")
    assert "No data is shown until you call .collect()" in result_text(msgs)
    assert value(alice, 'adults.select(pl.len()).collect().item()') == patients_df.filter(pl.col("age") >= 18).height


@pytest.mark.parametrize(("code", "status"), [("x = (", "incomplete"), ("x = 1", "complete"), ("x = )", "invalid")])
def test_is_complete(alice: BlockingKernelClient, code: str, status: str) -> None:
    msg_id = alice.is_complete(code)
    reply = alice.get_shell_msg(timeout=TIMEOUT)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["msg_type"] == "is_complete_reply"
    assert reply["content"]["status"] == status


def test_silent_execution_shows_nothing(alice: BlockingKernelClient) -> None:
    reply, msgs = execute(alice, "len([1, 2])", silent=True)
    assert reply["status"] == "ok"
    assert not outputs(msgs, "execute_result") and not outputs(msgs, "execute_input")
    reply, msgs = execute(alice, "import os", silent=True)
    assert reply["status"] == "error" and reply["ename"] == "GrammarError"
    assert not outputs(msgs, "error")


# --------------------------------------------------------------------------- masked columns


@pytest.mark.parametrize(
    ("code", "use"),
    [
        ('patients.filter(pl.col("name") == "x")', "filter condition"),
        ('patients.filter(pl.col("name") == "x").select(pl.len()).collect()', "filter condition"),
        ('patients.group_by("name").agg(pl.len()).collect()', "group key"),
        ('patients.sort("ssn").select("age").head(2).collect()', "sort key"),
        ('patients.select(pl.col("name").n_unique()).collect()', "aggregate input"),
        ('patients.join(patients, on="ssn").select(pl.len()).collect()', "join key"),
    ],
)
def test_masked_columns_cannot_be_used(alice: BlockingKernelClient, patients_df: pl.DataFrame, code: str,
                                       use: str) -> None:
    reply, msgs = fails(alice, code, "PolicyError")
    assert "masked column" in reply["evalue"] and use in reply["evalue"]
    assert_no_secret(all_text(msgs, reply), secrets_of(patients_df))


def test_masked_column_in_a_review_shows_only_stars(alice: BlockingKernelClient, demo_config: Path,
                                                    patients_df: pl.DataFrame) -> None:
    secrets = secrets_of(patients_df)
    rid, seen = request_review(alice, 'patients.select("name", "age").head(3).collect()')
    assert_no_secret(seen, secrets)
    approve(demo_config, rid)

    reply, msgs = ok(alice, f'fetch("{rid}")')
    seen = all_text(msgs, reply)
    data = result_data(msgs)
    assert "*" in data["text/plain"]
    assert "bastion-masked" in data["text/html"]
    rows = value(alice, f'fetch("{rid}").to_dicts()')
    assert rows == [{"name": "*", "age": a} for a in patients_df["age"].head(3).to_list()]
    assert_no_secret(seen, secrets)


def test_casting_a_masked_column_stays_masked(alice: BlockingKernelClient, demo_config: Path,
                                              patients_df: pl.DataFrame) -> None:
    secrets = secrets_of(patients_df)
    reply, msgs = ok(alice, 'patients.select(pl.col("name").cast(pl.Int64))')
    assert "(masked)" in result_text(msgs)
    rid, seen = request_review(alice, 'patients.select(pl.col("name").cast(pl.Int64), "age").head(3).collect()')
    assert_no_secret(seen, secrets)
    approve(demo_config, rid)
    assert value(alice, f'fetch("{rid}").to_dicts()') == [
        {"name": "*", "age": a} for a in patients_df["age"].head(3).to_list()
    ]


# --------------------------------------------------------------------------- errors never quote data


@pytest.mark.parametrize(
    "code",
    [
        # String -> Date is not a cast polars can do: polars would fail at run time, quoting values,
        # and only when some row reaches the cast (an oracle). Bastion refuses it before running.
        'patients.select(pl.col("diagnosis").cast(pl.Date).count()).collect()',
        'patients.select(pl.col("region").cast(pl.Date)).head(3).collect()',
        # An invalid regex would likewise fail at run time only when rows reach it.
        'patients.select(pl.col("diagnosis").str.contains("(").sum()).collect()',
    ],
)
def test_data_dependent_failures_are_refused_before_running(alice: BlockingKernelClient,
                                                            patients_df: pl.DataFrame, code: str) -> None:
    reply, msgs = fails(alice, code, "QueryError")
    text = all_text(msgs, reply)
    assert_no_traceback(text)
    for column in ("diagnosis", "region"):
        for v in patients_df[column].unique().to_list():
            assert v not in text, f"value {v!r} of {column} quoted in an error"
    # state survives
    assert value(alice, "len([0])") == 1


def test_failing_cast_of_a_masked_column_quotes_nothing(alice: BlockingKernelClient,
                                                            patients_df: pl.DataFrame) -> None:
    reply, msgs = execute(alice, 'patients.select(pl.col("ssn").cast(pl.Date)).head(2).collect()')
    text = all_text(msgs, reply)
    assert_no_traceback(text)
    assert_no_secret(text, secrets_of(patients_df))


def test_plan_errors_name_columns_not_values(alice: BlockingKernelClient, patients_df: pl.DataFrame) -> None:
    reply, msgs = fails(alice, 'patients.select((pl.col("region") + 1).sum()).collect()', "QueryError")
    text = all_text(msgs, reply)
    assert_no_traceback(text)
    for v in patients_df["region"].unique().to_list():
        assert v not in text


# Regression: an unsupported cast failed only when a row reached it, so error/no-error was a
# one-bit oracle on one patient's diagnosis. Such casts are now refused before anything runs.
def test_run_time_failures_are_not_an_oracle_on_individuals(alice: BlockingKernelClient,
                                                            patients_df: pl.DataFrame) -> None:
    row = patients_df.row(0, named=True)
    other = next(d for d in patients_df["diagnosis"].unique().sort().to_list() if d != row["diagnosis"])

    def probe(diagnosis: str) -> tuple[str, str]:
        code = (
            f'patients.select(pl.when((pl.col("patient_id") == {row["patient_id"]}) & '
            f'(pl.col("diagnosis") == "{diagnosis}")).then(pl.col("region")).cast(pl.Date).count()).collect()'
        )
        reply, msgs = execute(alice, code)
        return reply["status"], reply.get("ename", "")

    # The true diagnosis and a false one must look the same to the analyst.
    assert probe(row["diagnosis"]) == probe(other)


@pytest.mark.parametrize("tail", ['.select(pl.col("age").get(0))', '.select(pl.col("age").sort().get(0))'])
def test_out_of_bounds_get_is_not_an_existence_oracle(alice: BlockingKernelClient,
                                                      patients_df: pl.DataFrame, tail: str) -> None:
    """Regression: `get(0)` on an empty filter raised OutOfBounds, revealing whether an id exists."""
    real = patients_df["patient_id"][0]
    missing = int(patients_df["patient_id"].max()) + 1
    outcomes = []
    for pid in (real, missing):
        reply, msgs = execute(alice, f'patients.filter(pl.col("patient_id") == {pid}){tail}.collect()')
        outcomes.append((reply["status"], "Review requested" in all_text(msgs, reply)))
    assert outcomes[0] == outcomes[1] == ("ok", True)


# --------------------------------------------------------------------------- the review flow


ROW_CELL = 'patients.filter(pl.col("region") == "North").select("patient_id", "age", "diagnosis").head(5).collect()'


def _row_cell_expected(patients_df: pl.DataFrame) -> pl.DataFrame:
    return patients_df.filter(pl.col("region") == "North").select("patient_id", "age", "diagnosis").head(5)


def test_review_flow_request_list_approve_fetch(alice: BlockingKernelClient, bob: BlockingKernelClient,
                                               demo_config: Path, demo_dir: Path,
                                               patients_df: pl.DataFrame) -> None:
    expected = _row_cell_expected(patients_df)
    ids = [str(i) for i in expected["patient_id"].to_list()]

    rid, seen = request_review(alice, ROW_CELL)
    assert "individual rows of patients" in seen
    for pid in ids:
        assert pid not in seen  # nothing of the data before the owner decides

    # requests() lists it as pending
    _reply, msgs = ok(alice, "requests()")
    rows = {r[0]: r for r in html_rows(result_data(msgs)["text/html"])}
    assert rid in rows and rows[rid][1] == "pending" and rows[rid][2] == "patients"

    # the owner sees it, with the requester, the cell and the exact snapshot
    items = {i["id"]: i for i in review_list(demo_config)}
    assert rid in items
    assert items[rid]["user"] == "alice" and items[rid]["status"] == "pending"
    assert items[rid]["dataset"] == "patients" and items[rid]["cell"] == ROW_CELL
    store = ReviewStore(demo_dir / "state")
    assert store.snapshot(rid).equals(expected)

    # pending: fetch says so and shows nothing
    reply, msgs = fails(alice, f'fetch("{rid}")', "ReviewError")
    assert "pending" in reply["evalue"]

    approve(demo_config, rid)
    assert {i["id"] for i in review_list(demo_config)}.isdisjoint({rid})  # no longer pending

    reply, msgs = ok(alice, f'fetch("{rid}")')
    text = result_text(msgs)
    assert f"released by the owner after review of {rid}" in text
    for pid in ids:
        assert pid in text
    assert value(alice, f'fetch("{rid}").to_dicts()') == expected.to_dicts() == store.snapshot(rid).to_dicts()

    _reply, msgs = ok(alice, "requests()")
    rows = {r[0]: r for r in html_rows(result_data(msgs)["text/html"])}
    assert rows[rid][1] == "approved"

    # another user cannot fetch it, and learns nothing about it
    reply, msgs = fails(bob, f'fetch("{rid}")', "ReviewError")
    leaked = all_text(msgs, reply)
    for pid in ids:
        assert pid not in leaked
    assert "alice" not in leaked and "approved" not in leaked
    unknown_reply, _ = fails(bob, 'fetch("R00000000")', "ReviewError")
    assert reply["evalue"].replace(rid, "R00000000") == unknown_reply["evalue"]
    _reply, msgs = ok(bob, "requests()")
    assert rid not in all_text(msgs)


def test_review_flow_reject_shows_the_owners_reason(alice: BlockingKernelClient, demo_config: Path) -> None:
    rid, _ = request_review(alice, 'patients.select("age", "income").head(4).collect()')
    out = bastion_cli(demo_config, "review", "reject", rid, "--by", "owner", "--reason", "too granular for this study")
    assert out.returncode == 0, out.stderr

    _reply, msgs = ok(alice, "requests()")
    rows = {r[0]: r for r in html_rows(result_data(msgs)["text/html"])}
    assert rows[rid][1] == "rejected"
    assert rows[rid][4] == "too granular for this study"

    reply, _ = fails(alice, f'fetch("{rid}")', "ReviewError")
    assert "rejected" in reply["evalue"] and "too granular for this study" in reply["evalue"]


def test_order_statistics_go_to_review(alice: BlockingKernelClient, demo_config: Path,
                                      patients_df: pl.DataFrame) -> None:
    rid, seen = request_review(alice, 'patients.select(pl.col("income").max()).collect()')
    assert str(patients_df["income"].max()) not in seen
    assert any(i["id"] == rid for i in review_list(demo_config))


# --------------------------------------------------------------------------- on_violation = "reject"


def test_reject_deployment_refuses_row_level_results(strict_alice: BlockingKernelClient, strict_config: Path,
                                                     patients_df: pl.DataFrame) -> None:
    reply, msgs = fails(strict_alice, 'patients.select("age", "income").head(3).collect()', "PolicyError")
    assert "row-level" in reply["evalue"]
    assert "Review requested" not in all_text(msgs, reply)
    reply, _ = fails(strict_alice, 'patients.select(pl.col("income").max()).collect()', "PolicyError")
    assert "order-statistic" in reply["evalue"]
    assert review_list(strict_config, "--all") == []
    # aggregates are still released
    assert value(strict_alice, 'patients.select(pl.len()).collect().item()') == patients_df.height


# --------------------------------------------------------------------------- datasets restricted to users


def test_restricted_dataset_does_not_exist_for_other_users(strict_bob: BlockingKernelClient,
                                                           strict_alice: BlockingKernelClient) -> None:
    reply, msgs = fails(strict_bob, "visits", "GrammarError")
    assert "name `visits` is not defined" in reply["evalue"]
    # not even hinted at: neither in the list of names nor as a suggestion
    reply, msgs = fails(strict_bob, "visit", "GrammarError")
    assert "visits" not in all_text(msgs, reply)
    reply, msgs = fails(strict_bob, 'policy("visits")', "QueryError")
    _reply, msgs = ok(strict_bob, "datasets()")
    names = [r[0] for r in html_rows(result_data(msgs)["text/html"])]
    assert names == ["patients"]
    assert "visits" not in all_text(msgs)
    fails(strict_bob, 'patients.join(visits, on="patient_id").select(pl.len()).collect()', "GrammarError")

    # the user it is granted to sees it
    _reply, msgs = ok(strict_alice, "datasets()")
    assert [r[0] for r in html_rows(result_data(msgs)["text/html"])] == ["patients", "visits"]
    ok(strict_alice, "visits.columns")


# --------------------------------------------------------------------------- startup


def _start_raw(config: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    conn = tmp_path / "kernel.json"  # never written: the kernel must stop before it needs it
    env = {k: v for k, v in os.environ.items() if k != "JUPYTERHUB_USER"}
    env["BASTION_CONFIG"] = str(config)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "bastion_kernel", "-f", str(conn)], capture_output=True,
                          text=True, env=env, timeout=30)


@pytest.mark.parametrize(
    ("extra", "key"),
    [('colour = "blue"\n', "bastion.colour"), ("", "datasets.visits.owner")],
)
def test_deployment_file_with_unknown_key_stops_the_kernel(demo_dir: Path, tmp_path: Path, extra: str,
                                                           key: str) -> None:
    config = write_variant(demo_dir, tmp_path / "dep", extra_bastion=extra)
    if key.startswith("datasets."):
        config.write_text(config.read_text(encoding="utf-8") + 'owner = "carol"\n', encoding="utf-8")
    out = _start_raw(config, tmp_path)
    assert out.returncode != 0
    assert key in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_kernel_without_deployment_file_does_not_start(tmp_path: Path) -> None:
    out = _start_raw(tmp_path / "missing.toml", tmp_path)
    assert out.returncode != 0
    assert "missing.toml" in out.stderr and "Traceback" not in out.stderr


# --------------------------------------------------------------------------- audit


def test_audit_log_records_the_session_and_verifies(demo_dir: Path, tmp_path: Path) -> None:
    config = write_variant(demo_dir, tmp_path / "audit")
    state = tmp_path / "audit" / "state"
    cells = [
        ('patients.group_by("sex").agg(pl.len()).collect()', "released"),
        ('patients.select("age").head(2).collect()', "review"),
        ("import os", "refused"),
        ('patients.filter(pl.col("name") == "x").select(pl.len()).collect()', "refused"),
        ("x = 1", "ok"),
    ]
    server_id = "5f0c2a9e-1d3b-4c7a-9e61-0b8d2f4a7c13"  # as jupyter_server names connection files
    with run_kernel(config, user="alice", connection_file=tmp_path / f"kernel-{server_id}.json") as (km, kc):
        shown_rid = None
        for code, _ in cells:
            reply, msgs = execute(kc, code)
            m = REVIEW_RE.search(all_text(msgs))
            shown_rid = shown_rid or (m.group(1) if m else None)
        assert shown_rid is not None
        km.shutdown_kernel(now=False)
        assert not km.is_alive()

    out = bastion_cli(config, "audit", "verify")
    assert out.returncode == 0, out.stdout + out.stderr

    sessions = list_sessions(state)
    assert len(sessions) == 1 and sessions[0]["user"] == "alice"
    records = read_session(state, sessions[0]["session"])
    events = [r["event"] for r in records]
    assert events[0] == "session_start" and events[-1] == "session_end"
    start = records[0]
    assert start["user"] == "alice"
    assert start["kernel_id"] == server_id  # the server's id for the kernel, so its logs and the audit line up
    assert start["config_digest"] == hashlib.sha256(config.read_bytes()).hexdigest()

    cell_records = [r for r in records if r["event"] == "cell"]
    assert [(r["source"], r["outcome"]) for r in cell_records] == cells
    released = cell_records[0]
    assert released["columns"] == ["sex", "len"] and released["rows"] == 2 and released["output_digest"]

    reviews = [r for r in records if r["event"] == "review_request"]
    assert [r["request_id"] for r in reviews] == [shown_rid]
    assert reviews[0]["dataset"] == "patients"
    assert events.index("review_request") < events.index("cell", events.index("review_request"))

    # one flipped byte anywhere breaks verification
    path = state / "audit" / f"{sessions[0]['session']}.jsonl"
    data = bytearray(path.read_bytes())
    pos = data.index(b'"outcome":"refused"') + len(b'"outcome":"')
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))
    out = bastion_cli(config, "audit", "verify")
    assert out.returncode != 0
    assert "FAIL" in out.stdout


def test_audit_records_fetch_and_the_owners_decision(demo_dir: Path, tmp_path: Path) -> None:
    config = write_variant(demo_dir, tmp_path / "audit2")
    state = tmp_path / "audit2" / "state"
    with run_kernel(config, user="alice") as (km, kc):
        rid, _ = request_review(kc, 'patients.select("age").head(2).collect()')
        approve(config, rid)
        ok(kc, f'fetch("{rid}")')
        km.shutdown_kernel(now=False)
    (session,) = list_sessions(state)
    records = read_session(state, session["session"])
    # The pending widget also fetches the approved snapshot when it sees the decision (audited with
    # via="widget"); when that happens relative to the fetch cell is a race, so it is checked apart.
    widget = [r for r in records if r["event"] == "fetch" and r.get("via") == "widget"]
    assert len(widget) <= 1 and all(r["request_id"] == rid for r in widget)
    records = [r for r in records if r not in widget]
    events = [r["event"] for r in records]
    assert events == ["session_start", "review_request", "cell", "review_decision", "fetch", "cell", "session_end"]
    decision = records[events.index("review_decision")]
    assert decision["request_id"] == rid and decision["decision"] == "approved" and decision["by"] == "owner"
    assert records[events.index("fetch")]["request_id"] == rid and records[events.index("fetch")]["via"] == "cell"
    assert records[-2]["outcome"] == "released"
    assert bastion_cli(config, "audit", "verify").returncode == 0
