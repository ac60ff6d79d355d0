"""Completion and inspection (`bastion_kernel.assist`) and their protocol replies.

Why both levels: the pure functions are where the cursor arithmetic lives
(cursor_start must sit exactly at the partial token), and the protocol tests
check the kernel wraps them in valid complete_reply / inspect_reply messages.
Nothing here runs the typed text: assist only reads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient

from conftest import TIMEOUT, _wait_reply, execute, run_kernel, validate_message

from bastion_kernel import assist, config  # noqa: E402
from bastion_kernel.demo import generate  # noqa: E402
from bastion_kernel.session import Session  # noqa: E402


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    path = generate(tmp_path_factory.mktemp("assist"))
    s = Session(config.load(path), user="alice")
    result = s.execute('young = patients.filter(pl.col("age") < 30)\nage = pl.col("age")')
    assert result.error is None
    yield s
    s.close()


def complete(code: str, session: Session) -> tuple[list[str], int, int]:
    return assist.complete(code, len(code), session)


def test_bare_prefix_offers_datasets_variables_pl_and_session_functions(session: Session) -> None:
    assert complete("pat", session) == (["patients"], 0, 3)
    matches, start, end = complete("", session)
    assert {"pl", "patients", "visits", "young", "age", "datasets", "policy"} <= set(matches)
    assert (start, end) == (0, 0)


def test_frame_verbs_after_a_dataset(session: Session) -> None:
    code = "patients.gro"
    assert complete(code, session) == (["group_by"], code.index("g"), len(code))
    matches, start, _ = complete("young.", session)
    assert {"select", "group_by", "collect", "columns", "height"} <= set(matches)
    assert start == len("young.")


def test_pl_functions_and_dtypes(session: Session) -> None:
    matches, start, end = complete("pl.co", session)
    assert {"col", "concat_str", "coalesce"} <= set(matches)
    assert (start, end) == (3, 5)
    assert complete("pl.Int6", session)[0] == ["Int64"]


def test_namespaces_and_expression_methods(session: Session) -> None:
    code = 'pl.col("x").str.con'
    matches, start, end = complete(code, session)
    assert "contains" in matches and all(m.startswith("con") for m in matches)
    assert (start, end) == (len(code) - 3, len(code))
    matches, _, _ = complete('pl.col("x").',  session)
    assert {"sum", "mean", "alias", "str", "dt", "name"} <= set(matches)
    assert "select" not in matches
    assert complete("age.me", session)[0] == ["mean", "median"]


def test_chains_and_group_by(session: Session) -> None:
    matches, _, _ = complete('patients.group_by("region").', session)
    assert "agg" in matches and "select" not in matches
    matches, _, _ = complete('x = patients.group_by("region").agg(pl.len()).', session)
    assert "collect" in matches
    assert complete('x = (\n  patients\n  .filter(pl.col("age") > 3)\n  .so', session)[0] == ["sort"]


def test_column_names_inside_strings(session: Session) -> None:
    code = 'patients.select(pl.col("re'
    assert complete(code, session) == (["region"], code.rindex('"') + 1, len(code))
    code = 'young.group_by("'
    matches, start, end = complete(code, session)
    assert "age" in matches and start == end == len(code)
    matches, _, _ = complete('patients.join(visits, on="pat', session)
    assert matches == ["patient_id"]
    # a string that is not a column argument gets nothing
    assert complete('policy("pat', session)[0] == []


def test_never_offers_private_names(session: Session) -> None:
    for code in ("", "_", "patients.", 'pl.col("a").', "pl."):
        assert not [m for m in complete(code, session)[0] if m.startswith("_")]


def test_garbage_is_harmless(session: Session) -> None:
    for code in (")))", '"""', "1 +", "patients.select(", "x[0].", "pl.col(\"a\")(1).", "import os; os."):
        matches, start, end = complete(code, session)
        assert 0 <= start <= end == len(code)


def test_inspect_dataset(session: Session) -> None:
    text = assist.inspect("patients", 3, session)
    assert text is not None
    assert "patient_id" in text and "masked" in text
    assert "min_group_size: 10" in text and "on_violation: review" in text
    assert "ssn: String  (masked" in text


def test_inspect_methods(session: Session) -> None:
    text = assist.inspect('pl.col("x").sum', 14, session)
    assert text is not None and "auto-released over enough individuals" in text
    text = assist.inspect('pl.col("x").max()', 14, session)
    assert text is not None and "needs owner review" in text
    text = assist.inspect("patients.group_by", 12, session)
    assert text is not None and "group rows" in text
    assert assist.inspect("nothing_here", 3, session) is None
    assert assist.inspect("patients.nope", 11, session) is None


# --------------------------------------------------------------------------- through the kernel


@pytest.fixture(scope="module")
def kc(demo_config: Path) -> Iterator[BlockingKernelClient]:
    with run_kernel(demo_config, user="alice") as (_km, client):
        yield client


def _request(kc: BlockingKernelClient, kind: str, code: str, cursor_pos: int | None = None) -> dict[str, Any]:
    pos = len(code) if cursor_pos is None else cursor_pos
    msg_id = kc.complete(code, pos) if kind == "complete" else kc.inspect(code, pos)
    reply = _wait_reply(kc.get_shell_msg, msg_id, TIMEOUT)
    if validate_message is not None:
        validate_message(reply, f"{kind}_reply", msg_id)
    content: dict[str, Any] = reply["content"]
    return content


def test_protocol_complete(kc: BlockingKernelClient) -> None:
    reply = _request(kc, "complete", "patients.gro")
    assert reply["status"] == "ok"
    assert reply["matches"] == ["group_by"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (9, 12)
    code = 'patients.select(pl.col("re'
    reply = _request(kc, "complete", code)
    assert reply["matches"] == ["region"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (len(code) - 2, len(code))
    execute(kc, 'mine = patients.select("age", "region")')
    reply = _request(kc, "complete", "mi")
    assert reply["matches"] == ["mine"]


def test_protocol_inspect(kc: BlockingKernelClient) -> None:
    reply = _request(kc, "inspect", "patients")
    assert reply["status"] == "ok" and reply["found"] is True
    text = reply["data"]["text/plain"]
    assert "patient_id" in text and "masked" in text
    reply = _request(kc, "inspect", "nope")
    assert reply["status"] == "ok" and reply["found"] is False
