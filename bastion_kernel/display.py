"""Turn session values into Jupyter display bundles (text/plain + text/html, Vega-Lite for charts).

Why here: only released data, schemas and messages ever reach this module;
it formats, it never decides. Masked cells are styled so a reader sees at a
glance that '*' is the policy at work, not the data; withheld groups and
suppressed values are noted under the table, and the shape is shown above it.
Charts carry their spec (built in `charts.py` from released rows only) and a
text table for clients without a Vega-Lite renderer.
"""

from __future__ import annotations

import functools
import html
from typing import Any

import polars as pl

from .charts import VEGA_LITE_MIME, Chart, PlotAccessor
from .plan import Expr, Frame
from .release import Released, ReviewPending
from .session import Message

_CSS = (
    "<style>.bastion-table{border-collapse:collapse;font-size:12px}"
    ".bastion-table th,.bastion-table td{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
    ".bastion-table th{background:#f4f4f4}.bastion-masked{color:#999;background:#f7f7f7;text-align:center}"
    ".bastion-note{color:#8a6d3b;font-size:12px;margin:4px 0}.bastion-shape{color:#666;font-size:11px}"
    ".bastion-table th.bastion-dtype{font-weight:normal;color:#888;font-size:10px}"
    ".bastion-null{color:#aaa;font-style:italic}.bastion-progress{color:#666;font-size:12px}</style>"
)
MAX_HTML_ROWS = 200


def bundle(value: Any) -> dict[str, Any] | None:
    """The mime bundle for a cell's final value; None shows nothing."""
    if value is None:
        return None
    if isinstance(value, Released):
        return _released(value)
    if isinstance(value, Chart):
        return _chart(value)
    if isinstance(value, PlotAccessor):
        kinds = "hist(column, bins=20, range=[lo, hi])" if isinstance(value.target, Frame) else \
            "bar(x=..., y=...), line(x=..., y=...), point(x=..., y=...)"
        return {"text/plain": f"charts available here: .plot.{kinds}"}
    if isinstance(value, ReviewPending):
        text = (f"Review requested: {value.request_id}\nWhy: {value.reason}\n"
                f"The owner decides; then fetch(\"{value.request_id}\") shows the result. requests() lists yours.")
        return {"text/plain": text,
                "text/html": f"<div class='bastion-note'><b>Review requested</b>: <code>{value.request_id}</code><br>"
                             f"Why: {html.escape(value.reason)}<br>When the owner approves, "
                             f"<code>fetch(\"{value.request_id}\")</code> shows it.</div>"}
    if isinstance(value, Frame):
        return _frame(value)
    if isinstance(value, pl.DataFrame):
        return _released(Released(value))
    if isinstance(value, Message):
        return {"text/plain": value.text}
    if isinstance(value, Expr):
        return {"text/plain": f"<expression {_short(repr(value))}>"}
    if isinstance(value, pl.Schema):
        return {"text/plain": "Schema(" + ", ".join(f"{n}: {t}" for n, t in value.items()) + ")"}
    return {"text/plain": _short(repr(value), 2000)}


def _short(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _frame(frame: Frame) -> dict[str, str]:
    cols = ", ".join(f"{n}: {i.dtype}{' (masked)' if i.masked else ''}" for n, i in frame.columns.items())
    text = (f"LazyFrame [{frame.describe_lineage()}] with {len(frame.columns)} columns: {cols}\n"
            "No data is shown until you call .collect().")
    rows = "".join(
        f"<tr><td style='text-align:left'>{html.escape(n)}</td><td style='text-align:left'>{html.escape(str(i.dtype))}</td>"
        f"<td>{'masked' if i.masked else ''}</td></tr>"
        for n, i in frame.columns.items()
    )
    page = (f"{_CSS}<div class='bastion-shape'>LazyFrame: {html.escape(frame.describe_lineage())}; "
            f"call <code>.collect()</code> to ask for a release</div>"
            f"<table class='bastion-table'><tr><th>column</th><th>type</th><th></th></tr>{rows}</table>")
    return {"text/plain": text, "text/html": page}


@functools.cache
def _table_format() -> None:
    """polars' text table format for released tables, set once for the process.

    Why not `with pl.Config(...)` per table: on exit it restores every one of
    polars' options, about 1 ms per cell. The process that formats (the query
    worker) formats nothing but released tables and charts, all alike.
    """
    pl.Config.set_tbl_rows(40)
    pl.Config.set_tbl_cols(30)
    pl.Config.set_fmt_str_lengths(60)


def _released(r: Released) -> dict[str, str]:
    df = r.df
    _table_format()
    text = str(df)
    notes = list(r.notes)
    if r.masked:
        notes.append(f"masked by the owner's policy (shown as *): {', '.join(r.masked)}")
    if notes:
        text += "\n" + "\n".join(f"Note: {n}" for n in notes)
    masked = set(r.masked)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    dtypes = "".join(f"<th class='bastion-dtype'>{html.escape(str(t))}</th>" for t in df.dtypes)
    body = []
    for row in df.head(MAX_HTML_ROWS).iter_rows():
        cells = []
        for c, v in zip(df.columns, row):
            if c in masked:
                cells.append("<td class='bastion-masked' title='masked by the owner'>*</td>")
            elif v is None:
                cells.append("<td class='bastion-null'>null</td>")
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<div class='bastion-shape'>showing {MAX_HTML_ROWS} of {df.height} rows</div>" if df.height > MAX_HTML_ROWS else ""
    note_html = "".join(f"<div class='bastion-note'>{html.escape(n)}</div>" for n in notes)
    page = (f"{_CSS}<div class='bastion-shape'>shape: {df.height} × {df.width}</div>"
            f"<table class='bastion-table'><thead><tr>{head}</tr><tr>{dtypes}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>{more}{note_html}")
    return {"text/plain": text, "text/html": page}


def _chart(c: Chart) -> dict[str, Any]:
    """Vega-Lite for JupyterLab; a text table of exactly the drawn rows for everything else."""
    _table_format()
    text = f"{c.summary}\n{c.table}"
    if c.notes:
        text += "\n" + "\n".join(f"Note: {n}" for n in c.notes)
    return {VEGA_LITE_MIME: c.spec, "text/plain": text}


def progress_bundle(elapsed: float) -> dict[str, str]:
    """What a long-running cell shows while it runs (see progress.py)."""
    text = f"Running… {elapsed:.1f} s"
    return {"text/plain": text, "text/html": f"<div class='bastion-progress'>{html.escape(text)}</div>"}
