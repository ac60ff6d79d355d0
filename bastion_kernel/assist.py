"""Completion and inspection: static text analysis over the allow-lists.

Why static: a restricted kernel must not run a half-typed cell to learn what
its receiver is, and must never touch data to offer a suggestion. These
functions read the text before the cursor with a small scanner (strings,
brackets, names, dots), guess the type of the chain being typed (dataset,
frame, group_by, expression, namespace, released result) and offer only names
from the allow-lists, user variables and the schemas of visible datasets
(parquet/csv metadata, never rows). Names starting with "_" are never offered.

Both entry points take any object with `namespace` and `visible_datasets`
(a `Session`) and return plain values; the kernel wraps them in replies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .grammar.allowlists import (
    DTYPES,
    EXPR_METHODS,
    FRAME_NAMESPACES,
    FRAME_PLOT_METHODS,
    FRAME_PROPERTIES,
    FRAME_VERBS,
    GROUPBY_VERBS,
    NAMESPACES,
    PL_FUNCTIONS,
    PLOT_METHODS,
    RELEASED_METHODS,
    RELEASED_PROPERTIES,
    SESSION_FUNCTIONS,
)

_IDENT = re.compile(r"[A-Za-z_]\w*")
_WORD_CHARS = re.compile(r"\w")
# calls whose string arguments are column names (`col` only as `pl.col`)
_COLUMN_CALLS = {"select", "group_by", "sort", "drop", "unique", "col", "exclude", "hist"}
_COLUMN_KEYWORDS = {"on", "left_on", "right_on", "subset", "x", "y", "color"}  # x/y/color: .plot.bar(x="…

KIND_TEXT = {
    "agg": "aggregate: auto-released over enough individuals",
    "noauto": "picks or exposes one value: needs owner review",
    "list": "several values per group: needs owner review",
    "elem": "one value per row, from that row only (released through an aggregate)",
    "pred": "a condition (boolean per row): aggregates over it need enough individuals on each side",
    "shape": "depends on other rows' order: not auto-released",
    "filter": "keeps only the rows where the condition holds",
    "name": "renames the output",
    "chart": "draws a chart (Vega-Lite) of released data",
}


# --------------------------------------------------------------------------- scanning


@dataclass
class _Level:
    """One bracket level: the chain of tokens of the expression being typed there."""

    chain: list[tuple[str, str]] = field(default_factory=list)  # (kind, text): name | dot | call | index
    keyword: str | None = None  # `on=` just before the current argument
    callee: list[tuple[str, str]] = field(default_factory=list)  # parent's chain when this level opened


@dataclass
class _Scan:
    levels: list[_Level]
    names: list[str]  # identifiers seen in the current statement (chain heads only)
    in_string: bool = False
    string_start: int = 0  # index just after the opening quote


def _scan(text: str) -> _Scan:
    levels = [_Level()]
    names: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        top = levels[-1]
        if c in "\"'":
            # prefixes like f/r/b were read as a name; drop it
            if top.chain and top.chain[-1][0] == "name" and top.chain[-1][1].lower() in ("f", "r", "b", "rb", "br", "fr", "rf", "u"):
                top.chain.pop()
            triple = text[i:i + 3] == c * 3
            q = c * 3 if triple else c
            j = i + len(q)
            while j < n:
                if text[j] == "\\":
                    j += 2
                    continue
                if text.startswith(q, j):
                    break
                if not triple and text[j] == "\n":
                    break
                j += 1
            if j >= n:
                return _Scan(levels, names, True, i + len(q))
            top.chain = [("string", "")]
            i = j + len(q)
            continue
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        m = _IDENT.match(text, i)
        if m and not (i > 0 and (text[i - 1].isdigit() or text[i - 1] == "_")):
            word = m.group()
            if not top.chain or top.chain[-1][0] != "dot":
                top.chain = []
                names.append(word)
            top.chain.append(("name", word))
            i = m.end()
            continue
        if c == ".":
            top.chain.append(("dot", "."))
        elif c in "([{":
            levels.append(_Level(callee=list(top.chain)))
        elif c in ")]}":
            if len(levels) > 1:
                levels.pop()
                levels[-1].chain.append(("call" if c == ")" else "index", ""))
        elif c == "=" and text[i + 1:i + 2] != "=" and (i == 0 or text[i - 1] not in "=!<>"):
            if len(levels) == 1:
                names.clear()
                top.chain = []
            else:
                kw = top.chain[-1][1] if len(top.chain) == 1 and top.chain[0][0] == "name" else None
                top.keyword, top.chain = kw, []
        elif c in ";\n" and len(levels) == 1:
            names.clear()
            top.chain, top.keyword = [], None
        elif c == ",":
            top.chain, top.keyword = [], None
        elif c.isspace():
            pass
        else:  # operators, digits, ...: a new expression starts
            top.chain = []
        i += 1
    return _Scan(levels, names)


# --------------------------------------------------------------------------- types of chains


def _value_state(value: Any) -> str | None:
    from . import release as R
    from .charts import PlotAccessor
    from .interpreter import GroupBy, PLModule, WhenStart
    from .plan import Expr, Frame, When

    if isinstance(value, Frame):
        return "frame"
    if isinstance(value, GroupBy):
        return "groupby"
    if isinstance(value, WhenStart):
        return "whenstart"
    if isinstance(value, When):
        return "when" if value.otherwise is None else "expr"
    if isinstance(value, Expr):
        return "expr"
    if isinstance(value, R.Released):
        return "released"
    if isinstance(value, PlotAccessor):
        return "frameplot" if isinstance(value.target, Frame) else "plot"
    if isinstance(value, PLModule):
        return "pl"
    return None


def _head_state(name: str, session: Any) -> str | None:
    if name in session.namespace:
        return _value_state(session.namespace[name])
    if name == "pl":
        return "pl"
    if name in session.visible_datasets:
        return "frame"
    return None


def _step(state: str | None, name: str, called: bool) -> str | None:
    if state == "pl":
        if name in PL_FUNCTIONS and called:
            return "whenstart" if name == "when" else "expr"
        return None
    if state == "frame":
        if name == "group_by" and called:
            return "groupby"
        if name in ("collect", "describe") and called:
            return "released"
        if name in FRAME_VERBS and name != "collect_schema" and called:
            return "frame"
        if name in FRAME_NAMESPACES and not called:
            return "frameplot"
        return None
    if state == "groupby":
        return "frame" if name in GROUPBY_VERBS and called else None
    if state == "whenstart":
        return "when" if name == "then" and called else None
    if state == "when":
        if name == "when" and called:
            return "whenstart"
        if name == "otherwise" and called:
            return "expr"
        return _step("expr", name, called)
    if state == "expr":
        if name in NAMESPACES and not called:
            return "ns:" + name
        return "expr" if name in EXPR_METHODS and called else None
    if state and state.startswith("ns:"):
        return "expr" if name in NAMESPACES[state[3:]] and called else None
    if state == "released":
        if name == "plot" and not called:
            return "plot"
        return "released" if name in ("head", "tail", "sort") and called else None
    return None


def _chain_state(chain: list[tuple[str, str]], session: Any) -> str | None:
    """The type of a chain of tokens like `patients . select () . gro`-minus-the-last-name."""
    if not chain or chain[0][0] != "name":
        return None
    state = _head_state(chain[0][1], session)
    i = 1
    while i < len(chain) and state is not None:
        if chain[i][0] != "dot" or i + 1 >= len(chain) or chain[i + 1][0] != "name":
            return None
        name = chain[i + 1][1]
        called = i + 2 < len(chain) and chain[i + 2][0] == "call"
        state = _step(state, name, called)
        i += 3 if called else 2
        if i < len(chain) and chain[i][0] in ("call", "index"):
            return None  # f()() or x[0]: unknown
    return state


def _members(state: str | None) -> dict[str, str]:
    """name -> one-line doc of what may follow `<state>.`."""
    if state == "pl":
        return {**PL_FUNCTIONS, **{k: f"data type: {v}" for k, v in DTYPES.items()}}
    if state == "frame":
        return {**{k: v.doc for k, v in FRAME_VERBS.items()}, **FRAME_PROPERTIES, **FRAME_NAMESPACES}
    if state == "frameplot":
        return {k: v.doc for k, v in FRAME_PLOT_METHODS.items()}
    if state == "plot":
        return {k: v.doc for k, v in PLOT_METHODS.items()}
    if state == "groupby":
        return dict(GROUPBY_VERBS)
    if state == "whenstart":
        return {"then": "the value where the condition holds"}
    if state == "expr" or state == "when":
        out = {k: v.doc for k, v in EXPR_METHODS.items()}
        out |= {k: f"the .{k} namespace" for k in NAMESPACES}
        if state == "when":
            out |= {"when": "another condition", "otherwise": "the value where no condition holds"}
        return out
    if state and state.startswith("ns:"):
        return {k: v.doc for k, v in NAMESPACES[state[3:]].items()}
    if state == "released":
        return {**RELEASED_METHODS, **RELEASED_PROPERTIES}
    return {}


def _is_frame_name(name: str, session: Any) -> bool:
    return _head_state(name, session) in ("frame", "released") and name != "pl"


# --------------------------------------------------------------------------- columns


def dataset_columns(ds: Any) -> dict[str, Any]:
    """column -> dtype of a dataset, from the file's schema only (no rows are read)."""
    from .sources import schema

    return dict(schema(ds).items())


def _columns_of(name: str, session: Any) -> list[str]:
    from .plan import Frame
    from .release import Released

    value = session.namespace.get(name)
    if isinstance(value, Frame):
        return list(value.columns)
    if isinstance(value, Released):  # its column names are part of what was released
        return list(value.df.columns)
    if name in session.visible_datasets and name not in session.namespace:
        return list(dataset_columns(session.visible_datasets[name]))
    return []


def _column_names(scan_: _Scan, session: Any) -> list[str]:
    heads = [scan_.levels[0].chain[0][1]] if scan_.levels[0].chain and scan_.levels[0].chain[0][0] == "name" else []
    frames = [n for n in dict.fromkeys(heads + scan_.names) if _is_frame_name(n, session)]
    if not frames:
        frames = list(session.visible_datasets)
    out: dict[str, None] = {}
    for f in frames:
        out |= dict.fromkeys(_columns_of(f, session))
    return list(out)


def _string_wants_columns(scan_: _Scan) -> bool:
    level = scan_.levels[-1]
    if level.keyword in _COLUMN_KEYWORDS:
        return True
    if len(scan_.levels) >= 3 and scan_.levels[-2].keyword in _COLUMN_KEYWORDS and scan_.levels[-1].callee == []:
        return True  # on=["a", "
    callee = level.callee
    if len(callee) >= 2 and callee[-1][0] == "name" and callee[-2][0] == "dot":
        name = callee[-1][1]
        if name == "col" or name == "exclude":
            return len(callee) == 3 and callee[0] == ("name", "pl")
        return name in _COLUMN_CALLS
    return False


# --------------------------------------------------------------------------- entry points


def complete(code: str, cursor_pos: int, session: Any) -> tuple[list[str], int, int]:
    """(matches, cursor_start, cursor_end) for the text before `cursor_pos`."""
    cursor_pos = max(0, min(cursor_pos, len(code)))
    text = code[:cursor_pos]
    scan_ = _scan(text)
    if scan_.in_string:
        if not _string_wants_columns(scan_):
            return [], cursor_pos, cursor_pos
        partial = text[scan_.string_start:]
        names = [c for c in _column_names(scan_, session) if c.startswith(partial) and not c.startswith("_")]
        return sorted(names), scan_.string_start, cursor_pos
    m = re.search(r"\w*$", text)
    prefix = m.group() if m else ""
    if prefix and not _IDENT.fullmatch(prefix):
        return [], cursor_pos, cursor_pos
    start = cursor_pos - len(prefix)
    chain = scan_.levels[-1].chain
    if prefix:
        chain = chain[:-1]
    if chain and chain[-1][0] == "dot":
        options: list[str] = list(_members(_chain_state(chain[:-1], session)))
    elif chain:
        return [], cursor_pos, cursor_pos  # after a call or string without a dot
    else:
        if not prefix and text and not text[-1].isspace() and text[-1] not in "([{,=":
            return [], cursor_pos, cursor_pos
        options = ["pl", *session.visible_datasets, *session.namespace, *SESSION_FUNCTIONS]
    matches = sorted({o for o in options if o.startswith(prefix) and not o.startswith("_")})
    return matches, start, cursor_pos


def _dataset_text(name: str, ds: Any) -> str:
    lines = [f"Dataset {name}"]
    try:
        schema = dataset_columns(ds)
    except Exception:  # noqa: BLE001 - a missing file must not break inspection
        schema = {}
    if schema:
        lines.append("Columns:")
        for col, dtype in schema.items():
            mark = "  (masked: shown only as '*')" if col in ds.masked else ""
            lines.append(f"  {col}: {dtype}{mark}")
    lines.append(f"Privacy unit: {ds.privacy_unit or 'each row'}")
    lines.append(f"Masked columns: {', '.join(ds.masked) or 'none'}")
    lines.append(f"min_group_size: {ds.min_group_size}")
    lines.append(f"on_violation: {ds.on_violation}")
    return "\n".join(lines)


def _method_text(state: str | None, name: str) -> str | None:
    if state == "expr" or state == "when":
        spec = EXPR_METHODS.get(name)
        if spec is not None:
            return f".{name}(): {spec.doc}\nkind: {spec.kind} - {KIND_TEXT.get(spec.kind, spec.kind)}"
    if state and state.startswith("ns:"):
        spec = NAMESPACES[state[3:]].get(name)
        if spec is not None:
            return (f".{state[3:]}.{name}(): {spec.doc}\n"
                    f"kind: {spec.kind} - {KIND_TEXT.get(spec.kind, spec.kind)}")
    if state == "frame" and name in FRAME_VERBS:
        verb = FRAME_VERBS[name]
        extra = "\nreleases results: goes through the owner's privacy policy" if verb.releases else ""
        return f".{name}(): {verb.doc}{extra}"
    doc = _members(state).get(name)
    return None if doc is None else f".{name}: {doc}"


def inspect(code: str, cursor_pos: int, session: Any) -> str | None:
    """Plain-text help for the name under (or just before) the cursor; None when unknown."""
    cursor_pos = max(0, min(cursor_pos, len(code)))
    start = cursor_pos
    while start > 0 and _WORD_CHARS.match(code[start - 1]):
        start -= 1
    end = cursor_pos
    while end < len(code) and _WORD_CHARS.match(code[end]):
        end += 1
    word = code[start:end]
    if not _IDENT.fullmatch(word or "") or word.startswith("_"):
        return None
    scan_ = _scan(code[:end])
    if scan_.in_string:
        return None
    chain = scan_.levels[-1].chain
    if len(chain) >= 2 and chain[-2][0] == "dot":
        state = _chain_state(chain[:-2], session)
        if state is None:  # unknown receiver: the first table that knows the name
            for guess in ("expr", "frame", "pl", "groupby", "ns:str", "ns:dt", "ns:name"):
                text = _method_text(guess, word)
                if text is not None:
                    return text
            return None
        return _method_text(state, word)
    if word in session.namespace:
        value = session.namespace[word]
        state = _value_state(value)
        from .plan import Frame

        if isinstance(value, Frame):
            cols = "\n".join(f"  {c}: {i.dtype}{'  (masked)' if i.masked else ''}" for c, i in value.columns.items()
                             if not c.startswith("_"))
            return f"{word}: a frame over {', '.join(sorted(value.datasets))}\nColumns:\n{cols}"
        return f"{word}: {state or type(value).__name__}"
    if word in session.visible_datasets:
        return _dataset_text(word, session.visible_datasets[word])
    if word == "pl":
        return "pl: the allowed polars functions and data types (pl.col, pl.len, pl.when, ...)"
    if word in SESSION_FUNCTIONS:
        return SESSION_FUNCTIONS[word]
    return None
