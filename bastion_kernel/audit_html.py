"""One audit session as a self-contained, readable HTML page (`bastion audit html`).

Why: reviewers browse what a scientist did session by session. `audit show`
prints records; this page answers the reviewer's questions at a glance: does
the hash chain verify, what was run, what left the kernel (rows, columns,
digest), which requests were made and how they were decided.

Everything shown comes from the log (`audit.read_session`) and the check
(`audit.verify`); every value is escaped with `html.escape`, so a cell whose
source is ``<script>`` shows as text. No JavaScript, no external resources:
the file can be mailed, archived, or opened offline.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .audit import Problem, read_session, verify
from .errors import AuditError

_HEADER_KEYS = frozenset({"seq", "ts", "session", "event", "prev", "hash"})

# How each known event is titled and which fields get a row of their own;
# any other field (and any event added later) is still shown, generically.
_TITLES: dict[str, str] = {
    "session_start": "Session started",
    "cell": "Cell",
    "review_request": "Review requested",
    "review_decision": "Review decided",
    "fetch": "Approved result fetched",
    "worker_restart": "Query worker restarted",
    "session_end": "Session ended",
}

_OUTCOME_CLASS: dict[str, str] = {
    "released": "ok",
    "ok": "ok",
    "review": "warn",
    "refused": "bad",
    "error": "bad",
    "approved": "ok",
    "rejected": "bad",
    "cancelled": "warn",
}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;
color:#1d2330;line-height:1.45}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde1e8}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
pre{background:#f5f6f8;border:1px solid #e2e5ea;border-radius:4px;padding:.6rem .8rem;overflow-x:auto;
white-space:pre-wrap;word-break:break-word;margin:.3rem 0}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
th,td{text-align:left;vertical-align:top;padding:.25rem .6rem;border-bottom:1px solid #e6e8ec}
th{background:#f0f2f5;font-weight:600}
.verdict{padding:.7rem 1rem;border-radius:6px;font-weight:600;margin:1rem 0}
.verdict.ok{background:#e5f5ea;border:1px solid #7cc495;color:#14522b}
.verdict.bad{background:#fde8e8;border:1px solid #e08a8a;color:#7a1616}
.badge{display:inline-block;padding:0 .5rem;border-radius:999px;font-size:.85em;font-weight:600;
border:1px solid #c5cad3;background:#eef0f3}
.badge.ok{background:#e5f5ea;border-color:#7cc495;color:#14522b}
.badge.warn{background:#fff4dc;border-color:#e0b95a;color:#6b4a00}
.badge.bad{background:#fde8e8;border-color:#e08a8a;color:#7a1616}
.record{border:1px solid #e2e5ea;border-radius:6px;padding:.6rem .9rem;margin:.8rem 0}
.record.broken{border-color:#e08a8a;background:#fff7f7}
.record h3{font-size:1rem;margin:0 0 .3rem 0}
.meta{color:#5b6475;font-size:.85em}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:.3rem 0}
dt{color:#5b6475}dd{margin:0}
"""


def _e(value: object) -> str:
    """Escape anything for HTML text and attribute values."""
    return html.escape(value if isinstance(value, str) else str(value), quote=True)


def _fmt(value: object) -> str:
    """A field value as escaped, readable text (lists as comma-separated, None as a dash)."""
    if value is None:
        return "—"
    if isinstance(value, (list, tuple)):
        return _e(", ".join(str(v) for v in value)) if value else "(none)"
    if isinstance(value, (dict, bool, int, float)):
        return _e(json.dumps(value, ensure_ascii=False))
    return _e(value)


def _badge(label: object) -> str:
    text = "—" if label is None else str(label)
    return f'<span class="badge {_OUTCOME_CLASS.get(text, "")}">{_e(text)}</span>'


def _time(ts: object) -> str:
    return _e(str(ts)[:19].replace("T", " ") + " UTC") if ts else "—"


def _dl(rows: Iterable[tuple[str, str]]) -> str:
    """A definition list; values are already escaped HTML."""
    items = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in rows)
    return f"<dl>{items}</dl>" if items else ""


def _released(rec: dict[str, Any]) -> list[tuple[str, str]]:
    if not rec.get("rows") and not rec.get("columns") and not rec.get("output_digest"):
        return [("released", "nothing")]
    rows: list[tuple[str, str]] = []
    if rec.get("rows") is not None:
        rows.append(("rows", _fmt(rec.get("rows"))))
    if rec.get("columns") is not None:
        rows.append(("columns", _fmt(rec.get("columns"))))
    if rec.get("output_digest"):
        rows.append(("digest", f"<code>sha256:{_e(rec['output_digest'])}</code>"))
    return rows


def _rest(rec: dict[str, Any], shown: set[str]) -> list[tuple[str, str]]:
    """Fields not shown otherwise: nothing in the log is left off the page."""
    return [(k, _fmt(v)) for k, v in rec.items() if k not in _HEADER_KEYS and k not in shown]


def _body_cell(rec: dict[str, Any]) -> str:
    rows = [("outcome", _badge(rec.get("outcome")))]
    if rec.get("reason"):
        rows.append(("reason", _fmt(rec["reason"])))
    rows += _released(rec)
    rows += _rest(rec, {"source", "outcome", "reason", "rows", "columns", "output_digest"})
    return f"<pre>{_e(rec.get('source', ''))}</pre>{_dl(rows)}"


def _body_review_request(rec: dict[str, Any]) -> str:
    rid = str(rec.get("request_id", ""))
    rows = [("request", f'<a href="#req-{_e(rid)}"><code>{_e(rid)}</code></a>'),
            ("dataset", _fmt(rec.get("dataset"))), ("reason", _fmt(rec.get("reason")))]
    rows += _rest(rec, {"request_id", "dataset", "reason"})
    return _dl(rows)


def _body_review_decision(rec: dict[str, Any]) -> str:
    rid = str(rec.get("request_id", ""))
    rows = [("request", f'<a href="#req-{_e(rid)}"><code>{_e(rid)}</code></a>'),
            ("decision", _badge(rec.get("decision"))), ("by", _fmt(rec.get("by")))]
    if rec.get("reason"):
        rows.append(("reason", _fmt(rec["reason"])))
    rows += _rest(rec, {"request_id", "decision", "by", "reason"})
    return _dl(rows)


def _body_fetch(rec: dict[str, Any]) -> str:
    rid = str(rec.get("request_id", ""))
    rows = [("request", f'<a href="#req-{_e(rid)}"><code>{_e(rid)}</code></a>')]
    rows += _released(rec)
    rows += _rest(rec, {"request_id", "rows", "columns", "output_digest"})
    return _dl(rows)


def _body_generic(rec: dict[str, Any]) -> str:
    return _dl(_rest(rec, set()))


_BODIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "cell": _body_cell,
    "review_request": _body_review_request,
    "review_decision": _body_review_decision,
    "fetch": _body_fetch,
}


def _record(rec: dict[str, Any], broken: set[int], line: int) -> str:
    event = str(rec.get("event", "?"))
    title = _TITLES.get(event, event)
    body = _BODIES.get(event, _body_generic)(rec)
    cls = "record broken" if line in broken else "record"
    warn = ' <span class="badge bad">does not verify</span>' if line in broken else ""
    meta = (f'<div class="meta">#{_e(rec.get("seq", "?"))} · {_time(rec.get("ts"))} · '
            f'hash <code>{_e(str(rec.get("hash", ""))[:16])}…</code></div>')
    return f'<section class="{cls}" id="rec-{line}"><h3>{_e(title)}{warn}</h3>{meta}{body}</section>'


def _verdict(problems: list[Problem], n_records: int) -> str:
    if not problems:
        return (f'<div class="verdict ok">Hash chain verifies: {n_records} records, '
                "unaltered and complete up to the head recorded in bastion.db.</div>")
    items = "".join(
        f"<li>{'whole session' if p.line == 0 else f'line {p.line}'}: {_e(p.reason)}</li>" for p in problems
    )
    return (f'<div class="verdict bad">Hash chain does NOT verify ({len(problems)} problem'
            f'{"s" if len(problems) != 1 else ""}): this log may have been altered.<ul>{items}</ul></div>')


def _requests_table(records: list[dict[str, Any]]) -> str:
    """Each review request with its decision(s) and fetches, in request order."""
    order: list[str] = []
    info: dict[str, dict[str, Any]] = {}
    for rec in records:
        rid = rec.get("request_id")
        if not isinstance(rid, str):
            continue
        entry = info.setdefault(rid, {"dataset": None, "reason": None, "decisions": [], "fetched": 0})
        if rid not in order:
            order.append(rid)
        if rec.get("event") == "review_request":
            entry["dataset"], entry["reason"] = rec.get("dataset"), rec.get("reason")
        elif rec.get("event") == "review_decision":
            entry["decisions"].append(rec)
        elif rec.get("event") == "fetch":
            entry["fetched"] += 1
    if not order:
        return "<p>No review requests in this session.</p>"
    rows = []
    for rid in order:
        entry = info[rid]
        decisions = "<br>".join(
            f"{_badge(d.get('decision'))} by {_fmt(d.get('by'))}"
            + (f": {_fmt(d.get('reason'))}" if d.get("reason") else "")
            for d in entry["decisions"]
        ) or _badge("no decision in this log")
        rows.append(
            f'<tr id="req-{_e(rid)}"><td><code>{_e(rid)}</code></td><td>{_fmt(entry["dataset"])}</td>'
            f'<td>{_fmt(entry["reason"])}</td><td>{decisions}</td><td>{entry["fetched"]}</td></tr>'
        )
    head = "<tr><th>Request</th><th>Dataset</th><th>Why review</th><th>Decision</th><th>Fetched</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _summary(records: list[dict[str, Any]]) -> str:
    cells = [r for r in records if r.get("event") == "cell"]
    outcomes: dict[str, int] = {}
    for r in cells:
        key = str(r.get("outcome"))
        outcomes[key] = outcomes.get(key, 0) + 1
    released_rows = sum(int(r.get("rows") or 0) for r in records
                        if (r.get("event") == "cell" and r.get("outcome") == "released") or r.get("event") == "fetch")
    parts = ", ".join(f"{n} {_e(k)}" for k, n in sorted(outcomes.items())) or "none"
    return _dl([("cells", f"{len(cells)} ({parts})"), ("rows released", _e(released_rows))])


def render(session_id: str, records: list[dict[str, Any]], problems: list[Problem],
           read_error: str | None = None) -> str:
    """The page for one session, from its records and its verification problems."""
    start = next((r for r in records if r.get("event") == "session_start"), {})
    ends = [r for r in records if r.get("event") == "session_end"]
    broken = {p.line for p in problems}
    header = _dl([
        ("session", f"<code>{_e(session_id)}</code>"),
        ("user", _fmt(start.get("user"))),
        ("started", _time(start.get("ts"))),
        ("ended", _time(ends[-1].get("ts")) if ends else "not ended (still running, or the kernel died)"),
        ("notebook", _fmt(start.get("notebook_path"))),
        ("kernel", _fmt(start.get("kernel_id"))),
        ("deployment file", f"<code>sha256:{_e(start.get('config_digest', '—'))}</code>"),
    ])
    unreadable = (f'<div class="verdict bad">The log could not be read: {_e(read_error)}</div>'
                  if read_error else "")
    timeline = "".join(_record(rec, broken, n) for n, rec in enumerate(records, start=1))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Bastion audit · {_e(session_id)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_CSS}</style></head><body>"
        f"<h1>Bastion audit session</h1>{header}"
        f"{_verdict(problems, len(records))}{unreadable}"
        f"<h2>Summary</h2>{_summary(records)}"
        f"<h2>Review requests</h2>{_requests_table(records)}"
        f"<h2>Timeline</h2>{timeline or '<p>No records.</p>'}"
        "</body></html>\n"
    )


def render_session(state_dir: Path, session_id: str) -> tuple[str, list[Problem]]:
    """Read, verify and render one session; returns (html, problems).

    Unknown sessions raise `AuditError`. A log that cannot be parsed still
    gives a page: the verification problems and the reading error.
    """
    problems = verify(state_dir, session_id)  # raises for an unknown session
    try:
        records = read_session(state_dir, session_id)
        read_error = None
    except AuditError as exc:
        records, read_error = [], exc.message
    return render(session_id, records, problems, read_error), problems
