"""`bastion audit html`: one session as a page a reviewer can read.

The session is made by a real kernel (an aggregate with a withheld small
group, a masked column, a review request the owner approves through the CLI,
a fetch, a refused cell, and a cell whose source is HTML). The page must show
each cell, its outcome, what was released, the review decision, and whether
the hash chain verifies, with every value escaped, and say so loudly when the
log has been altered.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import all_text, bastion_cli, execute, run_kernel, write_variant

from bastion_kernel.audit import list_sessions, read_session
from bastion_kernel.audit_html import render

INJECTION = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def session(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """(deployment file, session id, approved request id) of one finished kernel session."""
    config = write_variant(demo_dir, tmp_path_factory.mktemp("audit-html"))
    with run_kernel(config, user="alice") as (_, kc):
        reply, _ = execute(kc, 'patients.group_by("region").agg(n=pl.len(), income=pl.col("income").mean()).collect()')
        assert reply["status"] == "ok"
        reply, msgs = execute(kc, 'patients.select("name", "region").head(3).collect()')
        rid = re.search(r"R[0-9a-f]{8}", all_text(msgs, reply))
        assert rid, all_text(msgs, reply)
        approved = bastion_cli(config, "review", "approve", rid.group(0), "--by", "owner")
        assert approved.returncode == 0, approved.stderr
        reply, _ = execute(kc, f'fetch("{rid.group(0)}")')
        assert reply["status"] == "ok"
        execute(kc, "import os")
        execute(kc, f'patients.filter(pl.col("region") == {json.dumps(INJECTION)}).height')
    state = config.parent / "state"
    (only,) = list_sessions(state)
    return config, only["session"], rid.group(0)


def _html(config: Path, session_id: str, out: Path) -> tuple[int, str, str]:
    result = bastion_cli(config, "audit", "html", session_id, "-o", str(out))
    return result.returncode, result.stdout + result.stderr, out.read_text(encoding="utf-8") if out.exists() else ""


def test_the_page_shows_cells_outcomes_releases_and_decisions(session: tuple[Path, str, str], tmp_path: Path) -> None:
    config, sid, rid = session
    code, said, page = _html(config, sid, tmp_path / "report.html")
    assert code == 0, said
    assert f"wrote {tmp_path / 'report.html'}: session {sid}, chain verifies" in said
    records = read_session(config.parent / "state", sid)
    assert "Hash chain verifies: " + str(len(records)) + " records" in page
    cells = [r for r in records if r["event"] == "cell"]
    assert len(cells) == 5
    for cell in cells:  # every cell's source, escaped exactly as html.escape does
        assert cell["source"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace(
            '"', "&quot;").replace("'", "&#x27;") in page
    assert {c["outcome"] for c in cells} >= {"released", "review", "refused"}
    for outcome in ("released", "review", "refused"):
        assert f">{outcome}</span>" in page
    released = next(c for c in cells if c["outcome"] == "released")
    assert f"sha256:{released['output_digest']}" in page
    assert "income" in page and "region" in page  # released columns are listed
    fetch = next(r for r in records if r["event"] == "fetch")
    assert f"sha256:{fetch['output_digest']}" in page
    assert f'<tr id="req-{rid}">' in page  # the request, with its decision in the same row
    row = page[page.index(f'<tr id="req-{rid}">'):]
    row = row[: row.index("</tr>")]
    fetches = [r for r in records if r["event"] == "fetch" and r["request_id"] == rid]
    assert fetches  # by the cell, and perhaps already by the review widget when the approval landed
    assert ">approved</span> by owner" in row and f"<td>{len(fetches)}</td>" in row
    assert "alice" in page and "Session ended" in page


def test_everything_is_escaped_and_no_script_runs(session: tuple[Path, str, str], tmp_path: Path) -> None:
    config, sid, _ = session
    _, _, page = _html(config, sid, tmp_path / "r.html")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_page_holds_no_data_values(session: tuple[Path, str, str], tmp_path: Path, patients_df: object) -> None:
    """The log stores digests and shapes, not data; the page must not add any."""
    config, sid, _ = session
    _, _, page = _html(config, sid, tmp_path / "r.html")
    first = patients_df.row(0, named=True)  # type: ignore[attr-defined]
    for secret in (first["name"], first["ssn"]):
        assert str(secret) not in page


def test_an_altered_log_is_flagged_and_the_page_still_written(
    session: tuple[Path, str, str], tmp_path: Path
) -> None:
    config, sid, _ = session
    state = config.parent / "state"
    path = state / "audit" / f"{sid}.jsonl"
    original = path.read_bytes()
    lines = original.split(b"\n")
    assert b'"outcome":"released"' in lines[1]
    lines[1] = lines[1].replace(b'"outcome":"released"', b'"outcome":"refused"', 1)  # tamper with record 2
    try:
        path.write_bytes(b"\n".join(lines))
        code, said, page = _html(config, sid, tmp_path / "bad.html")
    finally:
        path.write_bytes(original)
    assert code == 1 and "chain does NOT verify" in said
    assert "Hash chain does NOT verify" in page and "line 2: " in page
    assert 'class="record broken" id="rec-2"' in page


def test_latest_session_by_default_and_unknown_sessions_are_an_error(
    session: tuple[Path, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, sid, _ = session
    monkeypatch.chdir(tmp_path)
    result = bastion_cli(config, "audit", "html")
    assert result.returncode == 0 and (tmp_path / f"{sid}.html").is_file()
    missing = bastion_cli(config, "audit", "html", "20990101T000000Z-nobody-abcdef")
    assert missing.returncode == 2 and "unknown audit session" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_unknown_events_and_fields_are_shown_not_dropped() -> None:
    """A record type added later still appears, with every field, escaped."""
    records = [
        {"seq": 1, "ts": "2026-01-01T00:00:00Z", "session": "s", "event": "session_start", "user": "<b>bob</b>",
         "prev": "0" * 64, "hash": "a" * 64},
        {"seq": 2, "ts": "2026-01-01T00:00:01Z", "session": "s", "event": "policy_change", "what": "k=5 & more",
         "prev": "a" * 64, "hash": "b" * 64},
    ]
    page = render("s", records, [])
    assert "policy_change" in page and "k=5 &amp; more" in page and "&lt;b&gt;bob&lt;/b&gt;" in page
    assert "<b>bob" not in page
