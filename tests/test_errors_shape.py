"""Errors that teach: the shape of every error kind as the notebook receives it.

Every error is one `error` message (and the same text in the reply) shaped as

    Title (line L, column C): what went wrong
        the offending line
        ^^^^ under the offending token          (when the problem has a place)
    Rule: <rule> on dataset <name> ...          (policy refusals)
    Hint: what is allowed instead                (always)

with no Python traceback, and the session keeps its variables afterwards.
One test per kind: grammar, plan (QueryError), policy, limit, execution, review.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import KernelManager
from jupyter_client.blocking.client import BlockingKernelClient

from conftest import _wait_reply, all_text, execute, outputs, run_kernel

from bastion_kernel.errors import (  # noqa: E402
    BastionError, ExecutionError, GrammarError, LimitError, PlanError, PolicyError, Position, ReviewError,
)

TRACEBACK_MARKERS = ("Traceback", 'File "', "site-packages", "polars/")
SLOW_CELL = ('patients.join(visits, how="cross").group_by("department", "sex")'
             '.agg(pl.len(), pl.col("age").mean(), pl.col("cost").mean()).collect()')


@pytest.fixture(scope="module")
def kernel(demo_config: Path) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    with run_kernel(demo_config, user="alice") as (km, kc):
        yield km, kc


@pytest.fixture(scope="module")
def kc(kernel: tuple[KernelManager, BlockingKernelClient]) -> BlockingKernelClient:
    return kernel[1]


@pytest.fixture(scope="module")
def strict(strict_config: Path) -> Iterator[BlockingKernelClient]:
    with run_kernel(strict_config, user="alice") as (_km, client):
        yield client


def error_of(kc: BlockingKernelClient, code: str, ename: str) -> str:
    """The rendered error of a failing cell, checked to be one clean error message."""
    reply, msgs = execute(kc, code)
    return _checked(reply, msgs, ename)


def _checked(reply: dict[str, Any], msgs: list[dict[str, Any]], ename: str) -> str:
    assert reply["status"] == "error", reply
    assert reply["ename"] == ename, (reply["ename"], reply["evalue"])
    errors = outputs(msgs, "error")
    assert len(errors) == 1 and errors[0]["evalue"] == reply["evalue"] and errors[0]["traceback"] == [reply["evalue"]]
    assert not outputs(msgs, "execute_result")
    seen = all_text(msgs, reply)
    for marker in TRACEBACK_MARKERS:
        assert marker not in seen, marker
    text: str = reply["evalue"]
    lines = text.splitlines()
    assert lines[0].startswith(f"{ename}"), lines[0]
    assert sum(1 for line in lines if line.startswith("Hint: ")) == 1 and lines[-1].startswith("Hint: "), text
    return text


def caret_under(text: str, code_line: str, token: str) -> None:
    """The excerpt quotes `code_line` and the caret line underlines exactly `token`."""
    lines = text.splitlines()
    i = lines.index("    " + code_line)
    col = code_line.index(token)
    assert lines[i + 1] == "    " + " " * col + "^" * len(token), (lines[i + 1], token)


def still_works(kc: BlockingKernelClient, name: str) -> None:
    reply, msgs = execute(kc, f"{name}")
    assert reply["status"] == "ok", reply
    assert outputs(msgs, "execute_result")


# --------------------------------------------------------------------------- grammar


def test_grammar_error_points_at_the_token_and_suggests(kc: BlockingKernelClient) -> None:
    execute(kc, "kept_g = [1, 2]")
    code = 'x = 1\nby = patients.group_bY("region")'
    text = error_of(kc, code, "GrammarError")
    assert text.splitlines()[0] == "GrammarError (line 2, column 15): `group_bY` is not available on a frame"
    caret_under(text, 'by = patients.group_bY("region")', "group_bY")
    assert text.endswith("Hint: did you mean `group_by`?")
    still_works(kc, "kept_g")


def test_syntax_error_has_a_caret_and_says_what_a_cell_holds(kc: BlockingKernelClient) -> None:
    text = error_of(kc, "patients.select(", "GrammarError")
    assert text.startswith("GrammarError (line 1, column 16): invalid syntax")
    lines = text.splitlines()
    assert lines[1] == "    patients.select(" and lines[2] == "    " + " " * 15 + "^"
    assert "Hint: a cell holds Python-syntax assignments and polars expressions" in text


def test_forbidden_syntax_says_what_is_allowed_instead(kc: BlockingKernelClient) -> None:
    text = error_of(kc, "import os", "GrammarError")
    assert text.splitlines()[0] == "GrammarError (line 1, column 1): `import` is not allowed"
    assert text.endswith("Hint: imports are not available; `pl` is already defined")


# --------------------------------------------------------------------------- plan


def test_query_error_names_the_problem_and_the_near_miss(kc: BlockingKernelClient) -> None:
    code = 'patients.select(pl.col("agee")).collect()'
    text = error_of(kc, code, "QueryError")
    assert text.splitlines()[0].startswith("QueryError (line 1, column 1): no column `agee` in this frame")
    assert "    " + code in text.splitlines()
    assert text.endswith("Hint: did you mean `age`?")


def test_query_error_without_a_specific_hint_gets_general_advice(kc: BlockingKernelClient) -> None:
    text = error_of(kc, "len(patients)", "QueryError")
    assert "len() works on lists and released results" in text
    assert text.endswith("Hint: check the names and types with .columns and .schema; "
                         "Shift+Tab on a method explains it")


# --------------------------------------------------------------------------- policy


def test_policy_refusal_names_rule_dataset_and_what_would_be_released(strict: BlockingKernelClient) -> None:
    text = error_of(strict, 'patients.select("age", "region").collect()', "PolicyError")
    lines = text.splitlines()
    assert "rule row-level on patients: the result holds individual rows of patients" in lines[0]
    assert "Rule: row-level on dataset patients (the owner's policy); nothing was released" in lines
    assert lines[-1] == "Hint: aggregate it: .group_by(...).agg(pl.len(), pl.col(...).mean())"


def test_masked_column_refusal_names_rule_and_dataset(kc: BlockingKernelClient) -> None:
    code = 'patients.group_by("name").agg(pl.len()).collect()'
    text = error_of(kc, code, "PolicyError")
    assert "masked column `name` cannot be used as a group key" in text.splitlines()[0]
    assert "Rule: masked-column on dataset patients (the owner's policy); nothing was released" in text
    assert text.endswith("Hint: select it to see '*', or aggregate other columns")


# --------------------------------------------------------------------------- limits


def test_limit_error_names_the_limit_and_points_into_the_cell(kc: BlockingKernelClient) -> None:
    code = "x = 1" + " + 1" * 100
    text = error_of(kc, code, "LimitError")
    assert "(limit max_depth)" in text.splitlines()[0]
    assert text.splitlines()[0].startswith("LimitError (line 1, column ")
    assert "^" in text
    assert text.endswith("Hint: assign intermediate results to names")


def test_limit_error_without_a_place_still_says_what_to_do(kc: BlockingKernelClient) -> None:
    text = error_of(kc, "x = 1\n" + "# padding\n" * 2500, "LimitError")
    assert text.splitlines()[0].startswith("LimitError: the cell has ")
    assert "(limit max_cell_chars)" in text
    assert text.endswith("Hint: split the work over several cells")


# --------------------------------------------------------------------------- execution


def test_interrupted_query_is_an_execution_error_and_the_session_survives(
        kernel: tuple[KernelManager, BlockingKernelClient]) -> None:
    km, kc = kernel
    execute(kc, "kept_e = [3]")
    msg_id = kc.execute(SLOW_CELL, allow_stdin=False, stop_on_error=False)
    msgs: list[dict[str, Any]] = []
    deadline = time.monotonic() + 600  # the query takes seconds; a busy machine makes it longer
    interrupted = False
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        msgs.append(msg)
        if msg["msg_type"] == "display_data" and not interrupted:
            km.interrupt_kernel()  # the query is running: its progress line is showing
            interrupted = True
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    assert interrupted, [m["msg_type"] for m in msgs]
    reply = _wait_reply(kc.get_shell_msg, msg_id, 600)["content"]
    text = _checked(reply, msgs, "ExecutionError")
    assert "interrupted" in text.splitlines()[0]
    assert "variables are kept" in text.splitlines()[-1]
    kinds = [m["msg_type"] for m in msgs]
    assert kinds.index("clear_output") < kinds.index("error")  # the error replaces the progress line
    still_works(kc, "kept_e")


# --------------------------------------------------------------------------- review


def test_review_error_says_where_to_look(kc: BlockingKernelClient) -> None:
    text = error_of(kc, 'fetch("R00000000")', "ReviewError")
    assert text.splitlines()[0] == "ReviewError (line 1, column 1): no review request R00000000 for user alice"
    assert text.endswith("Hint: requests() lists your review requests and their status")


# --------------------------------------------------------------------------- render, per class


@pytest.mark.parametrize("cls", [GrammarError, PlanError, LimitError, ExecutionError, ReviewError])
def test_every_kind_renders_a_hint_even_when_the_raise_site_gave_none(cls: type[BastionError]) -> None:
    text = cls("something went wrong", position=Position(1, 4, 7)).render("abc defgh")
    lines = text.splitlines()
    assert lines[0] == f"{cls.title} (line 1, column 5): something went wrong"
    assert lines[1:3] == ["    abc defgh", "        ^^^"]
    assert lines[-1].startswith("Hint: ") and len(lines[-1]) > len("Hint: ") + 10


def test_policy_error_without_hint_points_to_the_policy_explanation() -> None:
    text = PolicyError("refused", rule="row-level", dataset="patients").render()
    assert text.splitlines() == [
        "PolicyError: refused",
        "Rule: row-level on dataset patients (the owner's policy); nothing was released",
        'Hint: policy("patients") explains the rules',
    ]
