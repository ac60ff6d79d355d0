"""Walk a checked syntax tree and build Bastion values from explicit tables.

Why an interpreter and not `eval`: the user's code never runs. Each allowed
node has a handler; names resolve only against the session's registry; method
names resolve only through the allow-list tables; arguments are converted by
declared type. The only things produced are `plan` objects, plain literals,
and results the policy released.
"""

from __future__ import annotations

import ast
import datetime as dt
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from . import frames as F
from .charts import Chart, PlotAccessor
from .errors import BastionError, GrammarError, PlanError, Position
from .grammar import suggest
from .grammar.allowlists import (
    DTYPES, EXPR_METHODS, FRAME_AGG_VERBS, FRAME_NAMESPACES, FRAME_PLOT_METHODS, FRAME_PROPERTIES, FRAME_VERBS,
    GROUPBY_VERBS, HORIZONTAL, NAMESPACES, PL_FUNCTIONS, PL_SHORTHAND_AGGS, PLOT_METHODS, RELEASED_METHODS,
    RELEASED_PROPERTIES, SESSION_FUNCTIONS, MethodSpec, Param,
)
import polars as pl

from .plan import BinOp, Call, Col, DType, Expr, Frame, Func, Len, Lit, UnOp, When, Wild

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session

LITERALS = (str, int, float, bool, type(None), dt.date, dt.datetime)

_ESCAPE_HINTS = {
    "map_elements": "Python functions (UDFs) never run in Bastion; use polars expressions",
    "map_batches": "Python functions (UDFs) never run in Bastion; use polars expressions",
    "pipe": "Python functions never run in Bastion; chain the verbs directly",
    "serialize": "plans cannot be exported", "deserialize": "plans cannot be imported",
    "to_pandas": "data leaves the kernel only as released results", "rows": "use .collect()",
    "explain": "the physical plan names the owner's files; use .schema", "show_graph": "use .schema",
    "sql": "SQL contexts can read files; use the polars verbs", "SQLContext": "SQL contexts can read files",
    "Config": "display settings are fixed by the kernel", "LazyFrame": "analyst-built frames are not available",
    "DataFrame": "analyst-built frames are not available", "plugins": "plugins are not available",
}


@dataclass
class PLModule:
    """The `pl` name: expression builders and dtypes only."""


@dataclass(frozen=True)
class Bound:
    """An allowed attribute waiting for its call: receiver + table entry name."""

    recv: Any
    name: str
    table: str  # frame | groupby | expr | ns:<ns> | pl | session | released | when | dtype | plot


@dataclass(frozen=True)
class GroupBy:
    frame: Frame
    keys: tuple[Expr, ...]
    maintain_order: bool


@dataclass(frozen=True)
class WhenStart:
    """`pl.when(cond)` (or `chain.when(cond)`) before `.then(...)`."""

    branches: tuple[tuple[Expr, Expr], ...]
    cond: Expr


@dataclass(frozen=True)
class Namespace:
    expr: Expr
    name: str


@dataclass
class Interpreter:
    session: "Session"
    source: str = ""
    position: Position | None = None
    ctx: F.Ctx = field(init=False)

    def __post_init__(self) -> None:
        self.ctx = self.session.ctx

    # ------------------------------------------------------------ statements
    def run(self, tree: ast.Module) -> Any:
        """Run statements; return the value of a final expression statement (or None)."""
        result: Any = None
        env = self.session.namespace
        staged: dict[str, Any] = {}
        for i, stmt in enumerate(tree.body):
            self.namespace_view = {**env, **staged}
            if isinstance(stmt, ast.Assign):
                staged[stmt.targets[0].id] = self.eval(stmt.value)  # type: ignore[attr-defined]
                result = None
            else:
                assert isinstance(stmt, ast.Expr)
                value = self.eval(stmt.value)
                result = value if i == len(tree.body) - 1 else None
        env.update(staged)
        return result

    # ------------------------------------------------------------ expressions
    def at(self, node: ast.AST) -> Position:
        line = getattr(node, "lineno", 1)
        end = getattr(node, "end_col_offset", None) if getattr(node, "end_lineno", line) == line else None
        return Position(line, getattr(node, "col_offset", 0), end)

    def eval(self, node: ast.AST) -> Any:
        handler = _HANDLERS.get(type(node))
        if handler is None:  # the grammar checker refuses these first; keep deny-by-default here too
            raise GrammarError(f"`{type(node).__name__}` syntax is not allowed", position=self.at(node))
        previous = self.position
        self.position = self.at(node)
        self.ctx.position = self.position
        try:
            return handler(self, node)
        except BastionError as exc:  # errors raised deep in planning/compiling point at this node
            raise exc.with_position(self.position) from exc.__cause__
        finally:
            self.position = previous
            self.ctx.position = previous

    def e_constant(self, node: ast.Constant) -> Any:
        return node.value

    def e_name(self, node: ast.Name) -> Any:
        name = node.id
        view = self.namespace_view
        if name in view:
            return view[name]
        if name == "pl":
            return PLModule()
        if name in self.session.visible_datasets:
            return F.source(self.session.visible_datasets[name], self.ctx)
        if name in SESSION_FUNCTIONS:
            return Bound(self.session, name, "session")
        options = [*view, "pl", *self.session.visible_datasets, *SESSION_FUNCTIONS]
        hint = suggest(name, options)
        if hint is None:
            hint = "available: pl, " + ", ".join([*self.session.visible_datasets, *view, *SESSION_FUNCTIONS])
        raise GrammarError(f"name `{name}` is not defined", hint=hint, position=self.at(node))

    def e_list(self, node: ast.List) -> list[Any]:
        return [self.eval(e) for e in node.elts]

    def e_tuple(self, node: ast.Tuple) -> tuple[Any, ...]:
        return tuple(self.eval(e) for e in node.elts)

    def e_dict(self, node: ast.Dict) -> dict[Any, Any]:
        out = {}
        for k, v in zip(node.keys, node.values):
            key = self.eval(k)  # type: ignore[arg-type]
            if not isinstance(key, (str, int, float, bool)):
                raise PlanError("dict keys must be strings or numbers", position=self.at(k))  # type: ignore[arg-type]
            out[key] = self.eval(v)
        return out

    def e_binop(self, node: ast.BinOp) -> Any:
        op = _BINOP_SYMBOLS[type(node.op)]
        return self.binop(op, self.eval(node.left), self.eval(node.right), node)

    def e_compare(self, node: ast.Compare) -> Any:
        op = _CMP_SYMBOLS[type(node.ops[0])]
        return self.binop(op, self.eval(node.left), self.eval(node.comparators[0]), node)

    def binop(self, op: str, left: Any, right: Any, node: ast.AST) -> Expr:
        if isinstance(left, Expr) or isinstance(right, Expr):
            return BinOp(op, self.to_expr(left, node), self.to_expr(right, node))
        if isinstance(left, LITERALS) and isinstance(right, LITERALS):
            return BinOp(op, Lit(left), Lit(right))
        raise PlanError(
            f"operator `{op}` works on polars expressions, not on {_kind(left)} and {_kind(right)}",
            hint="build expressions with pl.col(...) and pl.lit(...)",
            position=self.at(node),
        )

    def e_unaryop(self, node: ast.UnaryOp) -> Any:
        value = self.eval(node.operand)
        if isinstance(node.op, ast.USub) and isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value
        op = {ast.USub: "neg", ast.UAdd: "pos", ast.Invert: "invert"}[type(node.op)]
        return UnOp(op, self.to_expr(value, node))

    def e_subscript(self, node: ast.Subscript) -> Any:
        value = self.eval(node.value)
        if not isinstance(value, Frame):
            raise GrammarError(
                f"subscripts work on frames only, not on {_kind(value)}",
                hint='frame["column"] or frame[["a", "b"]] selects columns',
                position=self.at(node),
            )
        if isinstance(node.slice, ast.Slice):
            lo = self.eval(node.slice.lower) if node.slice.lower else 0
            hi = self.eval(node.slice.upper) if node.slice.upper else None
            if node.slice.step is not None or not isinstance(lo, int) or not (hi is None or isinstance(hi, int)):
                raise PlanError("frame slices take integer bounds without a step", position=self.at(node))
            if lo < 0 or (hi is not None and hi < lo):
                raise PlanError("frame slices take non-negative, increasing bounds", position=self.at(node))
            return F.slice_(value, "slice", lo, None if hi is None else hi - lo, self.ctx)
        key = self.eval(node.slice)
        names = [key] if isinstance(key, str) else key
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise PlanError('frame subscripts take a column name or a list of names', position=self.at(node))
        return F.select(value, [Col(n) for n in names], self.ctx)

    def e_attribute(self, node: ast.Attribute) -> Any:
        value = self.eval(node.value)
        return self.attribute(value, node.attr, node)

    def e_call(self, node: ast.Call) -> Any:
        func = self.eval(node.func)
        args = [self.eval(a) for a in node.args]
        kwargs = {kw.arg: self.eval(kw.value) for kw in node.keywords}
        if isinstance(func, DType):
            return self.make_dtype(func, args, kwargs, node)
        if not isinstance(func, Bound):
            hint = "choose a chart: .plot.bar(x=..., y=...), .line, .point; on a frame .plot.hist(\"column\")" \
                if isinstance(func, PlotAccessor) else None
            raise PlanError(f"{_kind(func)} cannot be called", hint=hint, position=self.at(node))
        handler = _CALLS[func.table]
        return handler(self, func, args, kwargs, node)  # type: ignore[arg-type]

    # ------------------------------------------------------------ attributes
    def attribute(self, value: Any, name: str, node: ast.AST) -> Any:
        if isinstance(value, PLModule):
            if name in PL_FUNCTIONS:
                return Bound(value, name, "pl")
            if name in DTYPES:
                return DType(name)
            return self.unknown(name, [*PL_FUNCTIONS, *DTYPES], "pl", node)
        if isinstance(value, Frame):
            if name in FRAME_PROPERTIES:
                return self.session.frame_property(value, name, self.source)
            if name in FRAME_VERBS:
                return Bound(value, name, "frame")
            if name in FRAME_NAMESPACES:
                return PlotAccessor(value)
            return self.unknown(name, [*FRAME_VERBS, *FRAME_PROPERTIES, *FRAME_NAMESPACES], "a frame", node)
        if isinstance(value, PlotAccessor):
            return self.plot_method(value, name, node)
        if isinstance(value, GroupBy):
            if name in GROUPBY_VERBS:
                return Bound(value, name, "groupby")
            return self.unknown(name, list(GROUPBY_VERBS), "a group_by", node)
        if isinstance(value, WhenStart):
            if name == "then":
                return Bound(value, name, "when")
            return self.unknown(name, ["then"], "pl.when(...)", node)
        if isinstance(value, When) and value.otherwise is None and name in ("when", "otherwise"):
            return Bound(value, name, "when")
        if isinstance(value, Expr):
            if name in NAMESPACES:
                return Namespace(value, name)
            if name in EXPR_METHODS:
                return Bound(value, name, "expr")
            return self.unknown(name, [*EXPR_METHODS, *NAMESPACES], "an expression", node)
        if isinstance(value, Namespace):
            table = NAMESPACES[value.name]
            if name in table:
                return Bound(value.expr, f"{value.name}.{name}", "expr")
            return self.unknown(name, list(table), f"the .{value.name} namespace", node)
        released = self.session.released_attribute(value, name)
        if released is not None:
            return released
        if self.session.is_released(value):
            if name in RELEASED_METHODS:
                return Bound(value, name, "released")
            return self.unknown(name, [*RELEASED_METHODS, *RELEASED_PROPERTIES], "a released result", node)
        raise GrammarError(
            f"attribute `{name}` of {_kind(value)} is not available",
            hint="only frames, expressions, `pl` and released results have attributes",
            position=self.at(node),
        )

    def plot_method(self, value: PlotAccessor, name: str, node: ast.AST) -> Bound:
        """`.plot.<kind>`: released tables draw bar/line/point, frames only compute a histogram."""
        on_frame = isinstance(value.target, Frame)
        table = FRAME_PLOT_METHODS if on_frame else PLOT_METHODS
        if name in table:
            return Bound(value, name, "plot")
        hint = None
        if on_frame and name in PLOT_METHODS:
            hint = f"a frame is not released yet: .collect() it first, then .plot.{name}(x=..., y=...)"
        elif not on_frame and name in FRAME_PLOT_METHODS:
            hint = f"histograms are computed from a frame: frame.plot.{name}(\"column\", bins=20)"
        hint = hint or suggest(name, list(table)) or f"charts here: {', '.join(table)}"
        return self.unknown(name, list(table), "the .plot namespace", node, hint=hint)

    def unknown(self, name: str, options: list[str], where: str, node: ast.AST, *, hint: str | None = None) -> Any:
        hint = hint or _ESCAPE_HINTS.get(name)
        if name.startswith(("read_", "scan_", "write_", "sink_")):
            hint = "Bastion never reads or writes files; the datasets are predefined names"
        hint = hint or suggest(name, options) or f"see Tab completion for what {where} offers"
        pos = self.at(node)
        if pos.end_col is not None:  # point at the attribute name itself
            pos = Position(pos.line, max(pos.end_col - len(name), 0), pos.end_col)
        raise GrammarError(f"`{name}` is not available on {where}", hint=hint, position=pos)

    # ------------------------------------------------------------ conversions
    def to_expr(self, value: Any, node: ast.AST | None = None) -> Expr:
        if isinstance(value, Expr):
            return value
        if isinstance(value, WhenStart):
            raise PlanError("pl.when(...) needs .then(...)", position=self.position)
        if isinstance(value, LITERALS):
            return Lit(value)
        raise PlanError(f"expected an expression, got {_kind(value)}", hint="use pl.col(...) or a literal",
                        position=self.position)

    def convert(self, value: Any, param: Param, where: str) -> Any:
        t = param.type
        bad = PlanError(f"argument `{param.name}` of {where} must be {_TYPE_WORDS.get(t, t)}, not {_kind(value)}",
                        position=self.position)
        if t == "expr":
            return self.to_expr(value)
        if t == "col":
            return Col(value) if isinstance(value, str) else self.to_expr(value)
        if t == "cols":
            items = value if isinstance(value, (list, tuple)) else [value]
            return [Col(v) if isinstance(v, str) else self.to_expr(v) for v in items]
        if t == "str":
            if not isinstance(value, str):
                raise bad
            if len(value) > 1000:
                raise PlanError(f"argument `{param.name}` is too long", position=self.position)
            return value
        if t == "strs":
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
                raise bad
            return list(items)
        if t == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
            return value
        if t == "num":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad
            return value
        if t == "bool":
            if isinstance(value, list) and all(isinstance(v, bool) for v in value):
                return value
            if not isinstance(value, bool):
                raise bad
            return value
        if t == "dtype":
            if not isinstance(value, DType):
                raise bad
            return value
        if t == "lits":
            items = value if isinstance(value, (list, tuple)) else None
            if items is None or not all(isinstance(v, LITERALS) for v in items) or len(items) > 10_000:
                raise bad
            return list(items)
        if t == "scalar":
            if isinstance(value, dict) and all(isinstance(v, LITERALS) for v in value.values()):
                return value
            if isinstance(value, (list, tuple)) and all(isinstance(v, LITERALS) for v in value):
                return list(value)
            if not isinstance(value, LITERALS):
                raise bad
            return value
        if t == "mapping":
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise bad
            return value
        if t == "frame":
            if not isinstance(value, Frame):
                raise bad
            return value
        raise AssertionError(t)

    def bind(self, params: tuple[Param, ...], args: list[Any], kwargs: dict[str, Any], where: str) -> dict[str, Any]:
        """Match call arguments to a table signature; unknown keywords are refused."""
        if len(args) > len(params):
            raise PlanError(f"{where} takes at most {len(params)} positional arguments", position=self.position)
        out: dict[str, Any] = {}
        for p, a in zip(params, args):
            out[p.name] = self.convert(a, p, where)
        names = {p.name: p for p in params}
        for k, v in kwargs.items():
            if k not in names:
                raise PlanError(
                    f"{where} has no argument `{k}`",
                    hint=suggest(k, list(names)) or (f"arguments: {', '.join(names)}" if names else "it takes no arguments"),
                    position=self.position,
                )
            if k in out:
                raise PlanError(f"argument `{k}` given twice", position=self.position)
            out[k] = self.convert(v, names[k], where)
        for p in params:
            if p.required and p.name not in out:
                raise PlanError(f"{where} needs the argument `{p.name}`", position=self.position)
        return out

    # ------------------------------------------------------------ expansion
    def expand(self, e: Expr, frame: Frame, *, exclude_masked: bool = False) -> list[Expr]:
        """Expand wildcards against the frame's *visible* columns."""
        wilds = {n for n in _walk_all(e) if isinstance(n, Wild)}
        if not wilds:
            return [e]
        if len(wilds) > 1:
            raise PlanError("one expression may hold only one multi-column selection", position=self.position)
        wild = wilds.pop()
        names = self.match(wild, frame)
        if exclude_masked:
            names = [n for n in names if not frame.columns[n].masked]
        return [_substitute(e, wild, Col(n)) for n in names]

    def match(self, wild: Wild, frame: Frame) -> list[str]:
        cols = list(frame.columns)
        if wild.kind == "all":
            names = cols
        elif wild.kind == "names":
            for n in wild.spec:
                F.check_columns(Col(n), frame, self.ctx)
            names = list(wild.spec)
        elif wild.kind == "regex":
            try:
                rx = re.compile(wild.spec[0])
            except re.error:
                raise PlanError(f"invalid regex {wild.spec[0]!r}", position=self.position) from None
            names = [c for c in cols if rx.fullmatch(c) or rx.search(c) and wild.spec[0].startswith("^") and wild.spec[0].endswith("$")]
        elif wild.kind == "dtype":
            from .compile import dtype as to_polars

            wanted = [to_polars(d) for d in wild.spec]
            names = [c for c in cols if any(frame.columns[c].dtype == w or frame.columns[c].dtype.base_type() == w for w in wanted)]
        elif wild.kind == "nth":
            try:
                names = [cols[i] for i in wild.spec]
            except IndexError:
                raise PlanError(f"pl.nth: this frame has {len(cols)} columns", position=self.position) from None
        else:  # pragma: no cover
            raise AssertionError(wild.kind)
        return [n for n in names if n not in wild.exclude]

    def exprs_for(self, frame: Frame, args: list[Any], kwargs: dict[str, Any], *, strings_are_columns: bool = True,
                  exclude_masked: bool = False) -> list[Expr]:
        out: list[Expr] = []
        items: list[Any] = []
        for a in args:
            items += list(a) if isinstance(a, (list, tuple)) else [a]
        for a in items:
            e = Col(a) if isinstance(a, str) and strings_are_columns else self.to_expr(a)
            out += self.expand(e, frame, exclude_masked=exclude_masked)
        for name, v in kwargs.items():
            e = self.to_expr(v)
            expanded = self.expand(e, frame)
            if len(expanded) != 1:
                raise PlanError(f"`{name}=` needs a single-column expression", position=self.position)
            out.append(Call("alias", expanded[0], (name,)))
        return out

    def make_dtype(self, d: DType, args: list[Any], kwargs: dict[str, Any], node: ast.AST) -> DType:
        if d.name not in ("Datetime", "Duration") or d.params:
            raise PlanError(f"pl.{d.name} takes no arguments", position=self.at(node))
        params = self.bind((Param("time_unit", "str"), Param("time_zone", "str")), args, kwargs, f"pl.{d.name}")
        if params.get("time_unit", "us") not in ("ns", "us", "ms"):
            raise PlanError("time_unit must be 'ns', 'us' or 'ms'", position=self.at(node))
        if d.name == "Duration" and "time_zone" in params:
            raise PlanError("pl.Duration takes no time_zone", position=self.at(node))
        return DType(d.name, tuple(sorted(params.items())))


# ---------------------------------------------------------------- call handlers


def _call_pl(it: Interpreter, b: Bound, args: list[Any], kwargs: dict[str, Any], node: ast.AST) -> Any:
    name = b.name
    where = f"pl.{name}"
    if name == "col":
        if kwargs:
            raise PlanError("pl.col takes column names, a regex or a dtype", position=it.at(node))
        items: list[Any] = []
        for a in args:
            items += list(a) if isinstance(a, (list, tuple)) else [a]
        if not items:
            raise PlanError("pl.col needs a column name", position=it.at(node))
        if all(isinstance(i, DType) for i in items):
            return Wild("dtype", tuple(items))
        if not all(isinstance(i, str) for i in items):
            raise PlanError("pl.col takes column names (strings), a regex '^...$' or dtypes", position=it.at(node))
        if len(items) == 1:
            s = items[0]
            if s.startswith("^") and s.endswith("$"):
                return Wild("regex", (s,))
            if s == "*":
                return Wild("all")
            return Col(s)
        return Wild("names", tuple(items))
    if name == "lit":
        p = it.bind((Param("value", "scalar", True), Param("dtype", "dtype")), args, kwargs, where)
        if isinstance(p["value"], (dict, list)):
            raise PlanError("pl.lit takes a single value", position=it.at(node))
        return Lit(p["value"], p.get("dtype"))
    if name == "len":
        it.bind((), args, kwargs, where)
        return Len()
    if name == "all":
        it.bind((), args, kwargs, where)
        return Wild("all")
    if name == "nth":
        if kwargs or not args or not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            raise PlanError("pl.nth takes column positions", position=it.at(node))
        return Wild("nth", tuple(args))
    if name == "exclude":
        names = it.convert(list(args), Param("columns", "strs"), where)
        return Wild("all", (), tuple(names))
    if name == "when":
        if kwargs or len(args) != 1:
            raise PlanError("pl.when takes one condition", position=it.at(node))
        return WhenStart((), it.to_expr(args[0]))
    if name in HORIZONTAL:
        items = []
        for a in args:
            items += list(a) if isinstance(a, (list, tuple)) else [a]
        exprs = tuple(Col(i) if isinstance(i, str) else it.to_expr(i) for i in items)
        kw = {}
        if name == "concat_str":
            kw = it.bind((Param("separator", "str"), Param("ignore_nulls", "bool")), [], kwargs, where)
        elif kwargs:
            raise PlanError(f"{where} takes columns only", position=it.at(node))
        if not exprs:
            raise PlanError(f"{where} needs at least one column", position=it.at(node))
        return Func(name, (list(exprs),) if name == "concat_str" else exprs, tuple(sorted(kw.items())))
    if name in ("date", "datetime"):
        if kwargs or not 3 <= len(args) <= (3 if name == "date" else 6):
            raise PlanError(f"{where} takes year, month, day" + ("" if name == "date" else "[, hour, minute, second]"),
                            position=it.at(node))
        if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            raise PlanError(f"{where} takes integers", position=it.at(node))
        try:
            return Lit(dt.date(*args) if name == "date" else dt.datetime(*args))
        except ValueError as exc:
            raise PlanError(f"{where}: {exc}", position=it.at(node)) from None
    if name in PL_SHORTHAND_AGGS:
        names = it.convert(list(args), Param("columns", "strs"), where)
        if kwargs or not names:
            raise PlanError(f"{where} takes column names", position=it.at(node))
        target: Expr = Col(names[0]) if len(names) == 1 else Wild("names", tuple(names))
        return Call(name, target)
    raise AssertionError(name)  # pragma: no cover


def _call_expr(it: Interpreter, b: Bound, args: list[Any], kwargs: dict[str, Any], node: ast.AST) -> Expr:
    from .compile import spec_for

    spec: MethodSpec = spec_for(b.name)
    params = it.bind(spec.params, args, kwargs, f".{b.name.split('.')[-1]}()")
    # Every argument is passed by its polars keyword name: the table's names match polars'.
    keywords = tuple((p.name, _freeze(params[p.name])) for p in spec.params if p.name in params)
    if b.name.startswith("str.") and "pattern" in params and not params.get("literal"):
        _check_regex(params["pattern"], it)
    if spec.name == "replace" and "new" not in params and not isinstance(params.get("old"), dict):
        raise PlanError(".replace() takes old and new values, or a dict old -> new", position=it.at(node))
    return Call(b.name, b.recv, (), keywords)


def _check_regex(pattern: str, it: Interpreter) -> None:
    """Polars compiles a regex only when rows reach it; an invalid one must fail now, for every row set."""
    try:
        pl.select(pl.lit("x").str.contains(pattern))
    except Exception:  # noqa: BLE001 - any failure means polars rejects the pattern
        raise PlanError(f"invalid regular expression {pattern!r}",
                        hint="polars uses Rust regex syntax; pass literal=True to match text as is",
                        position=it.position) from None


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return _FrozenDict(value)
    return value


class _FrozenDict(dict):  # noqa: D401 - a hashable dict for frozen plan nodes
    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=repr)))


def _call_when(it: Interpreter, b: Bound, args: list[Any], kwargs: dict[str, Any], node: ast.AST) -> Any:
    if kwargs or len(args) != 1:
        raise PlanError(f".{b.name}() takes one argument", position=it.at(node))
    value = it.to_expr(args[0]) if not isinstance(args[0], str) else Lit(args[0])
    if b.name == "then":
        start: WhenStart = b.recv
        return When(start.branches + ((start.cond, value),))
    chain: When = b.recv
    if b.name == "when":
        return WhenStart(chain.branches, value)
    return When(chain.branches, value)


def _call_session(it: Interpreter, b: Bound, args: list[Any], kwargs: dict[str, Any], node: ast.AST) -> Any:
    return it.session.call_function(b.name, args, kwargs, it)


def _call_released(it: Interpreter, b: Bound, args: list[Any], kwargs: dict[str, Any], node: ast.AST) -> Any:
    return it.session.call_released(b.recv, b.name, args, kwargs, it)


def _call_plot(it: Interpreter, b: Bound, args: list[Any], kwargs: dict[str, Any], node: ast.AST) -> Any:
    accessor: PlotAccessor = b.recv
    if isinstance(accessor.target, Frame):
        p = it.bind(FRAME_PLOT_METHODS[b.name].params, args, kwargs, f".plot.{b.name}()")
        return it.session.plot_histogram(accessor.target, p, it)
    p = it.bind(PLOT_METHODS[b.name].params, args, kwargs, f".plot.{b.name}()")
    return it.session.plot_released(accessor.target, b.name, p, it)


def _call_groupby(it: Interpreter, b: Bound, args: list[Any], kwargs: dict[str, Any], node: ast.AST) -> Frame:
    g: GroupBy = b.recv
    keys = list(g.keys)
    if b.name == "agg":
        aggs = it.exprs_for(g.frame, args, kwargs)
        if not aggs:
            raise PlanError(".agg() needs at least one aggregate, e.g. pl.len()", position=it.at(node))
    elif b.name == "len":
        p = it.bind((Param("name", "str"),), args, kwargs, ".len()")
        aggs = [Call("alias", Len(), (p.get("name", "len"),))]
    else:
        it.bind((), args, kwargs, f".{b.name}()")
        key_names = {k.name for k in keys if isinstance(k, Col)}
        others = [n for n in g.frame.columns if n not in key_names and not g.frame.columns[n].masked]
        aggs = [Call(b.name, Col(n)) for n in others]
        if b.name in ("sum", "mean", "std", "var", "median"):  # numbers only, as for the frame-wide verbs
            aggs = [a for a in aggs if _numeric(g.frame, a)]
        if not aggs:
            raise PlanError(f".{b.name}(): no unmasked columns to summarise besides the keys",
                            hint=".agg(...) names the aggregates, e.g. .agg(pl.len())", position=it.at(node))
    return F.aggregate(g.frame, keys, aggs, it.ctx, maintain_order=g.maintain_order)


def _call_frame(it: Interpreter, b: Bound, args: list[Any], kwargs: dict[str, Any], node: ast.AST) -> Any:
    frame: Frame = b.recv
    name = b.name
    spec = FRAME_VERBS[name]
    where = f".{name}()"
    if name in ("select", "with_columns"):
        exprs = it.exprs_for(frame, args, kwargs)
        if not exprs:
            raise PlanError(f"{where} needs at least one column or expression", position=it.at(node))
        return F.select(frame, exprs, it.ctx, keep=name == "with_columns")
    if name == "filter":
        preds = [it.to_expr(a) for a in args]
        preds += [BinOp("==", Col(k), it.to_expr(v)) for k, v in kwargs.items()]
        if not preds:
            raise PlanError(".filter() needs a condition", position=it.at(node))
        expanded = [e for p in preds for e in it.expand(p, frame)]
        return F.filter_(frame, expanded, it.ctx)
    if name == "group_by":
        p = it.bind(spec.params, [], {k: v for k, v in kwargs.items() if k == "maintain_order"}, where)
        extra = {k: v for k, v in kwargs.items() if k != "maintain_order"}
        keys = it.exprs_for(frame, args, extra)
        if not keys:
            raise PlanError(".group_by() needs at least one key", hint="for one summary row use .select(...)",
                            position=it.at(node))
        for k in keys:
            F.check_columns(k, frame, it.ctx)
        return GroupBy(frame, tuple(keys), bool(p.get("maintain_order", False)))
    if name == "join":
        p = it.bind(spec.params, args, kwargs, where)
        return F.join(
            frame, p["other"], it.ctx, on=p.get("on"), left_on=p.get("left_on"), right_on=p.get("right_on"),
            how=p.get("how", "inner"), suffix=p.get("suffix", "_right"), coalesce=p.get("coalesce"),
        )
    if name == "sort":
        p = it.bind(spec.params, [], kwargs, where)
        by = it.exprs_for(frame, args, {})
        if not by:
            raise PlanError(".sort() needs a column", position=it.at(node))
        for flag in ("descending", "nulls_last"):
            value = p.get(flag)
            if isinstance(value, (list, tuple)) and len(value) != len(by):
                raise PlanError(f"{where}: `{flag}` has {len(value)} entries for {len(by)} sort key(s)",
                                hint=f"give one {flag} per key, or a single True/False", position=it.at(node))
        return F.sort(frame, by, it.ctx, p.get("descending"), p.get("nulls_last"))
    if name in ("head", "limit", "tail"):
        p = it.bind(spec.params, args, kwargs, where)
        n = p.get("n", 5)
        if n < 0:
            raise PlanError(f"{where} takes a non-negative n", position=it.at(node))
        return F.slice_(frame, name, 0, n, it.ctx)
    if name == "slice":
        p = it.bind(spec.params, args, kwargs, where)
        if p["offset"] < 0 or (p.get("length") is not None and p["length"] < 0):
            raise PlanError(".slice() takes non-negative offset and length", position=it.at(node))
        return F.slice_(frame, "slice", p["offset"], p.get("length"), it.ctx)
    if name == "rename":
        p = it.bind(spec.params, args, kwargs, where)
        return F.rename(frame, p["mapping"], it.ctx)
    if name == "drop":
        names = it.convert([x for a in args for x in (a if isinstance(a, list) else [a])], Param("columns", "strs"), where)
        if kwargs:
            raise PlanError(".drop() takes column names", position=it.at(node))
        return F.drop(frame, names, it.ctx)
    if name == "unique":
        p = it.bind(spec.params, args, kwargs, where)
        subset = p.get("subset")
        if subset is not None:
            for s in subset:
                F.check_columns(s, frame, it.ctx)
        return F.unique(frame, subset, it.ctx, bool(p.get("maintain_order", False)), p.get("keep"))
    if name == "collect_schema":
        it.bind((), args, kwargs, where)
        return it.session.frame_property(frame, "schema", it.source)
    if name in FRAME_AGG_VERBS:
        it.bind((), args, kwargs, where)
        exprs = it.expand(Call(name, Wild("all")), frame, exclude_masked=True)
        if name in ("sum", "mean", "std", "var", "median"):  # numbers only, as polars users expect
            exprs = [e for e in exprs if _numeric(frame, e)]
        if not exprs:
            raise PlanError(f"{where}: no unmasked columns to summarise", position=it.at(node))
        return F.select(frame, exprs, it.ctx)
    if name == "collect":
        it.bind((), args, {k: v for k, v in kwargs.items() if k not in ("streaming", "engine")}, where)
        return it.session.release(frame, it.source)
    if name == "describe":
        it.bind((), args, kwargs, where)
        return it.session.describe(frame, it.source, it)
    raise AssertionError(name)  # pragma: no cover


_CALLS: dict[str, Callable[..., Any]] = {
    "pl": _call_pl, "expr": _call_expr, "when": _call_when, "session": _call_session,
    "released": _call_released, "groupby": _call_groupby, "frame": _call_frame, "plot": _call_plot,
}

_HANDLERS: dict[type, Callable[[Interpreter, Any], Any]] = {
    ast.Constant: Interpreter.e_constant, ast.Name: Interpreter.e_name, ast.List: Interpreter.e_list,
    ast.Tuple: Interpreter.e_tuple, ast.Dict: Interpreter.e_dict, ast.BinOp: Interpreter.e_binop,
    ast.Compare: Interpreter.e_compare, ast.UnaryOp: Interpreter.e_unaryop, ast.Subscript: Interpreter.e_subscript,
    ast.Attribute: Interpreter.e_attribute, ast.Call: Interpreter.e_call,
}

_BINOP_SYMBOLS = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
    ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^",
}
_CMP_SYMBOLS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_TYPE_WORDS = {
    "expr": "an expression or literal", "col": "a column name or expression", "cols": "column names or expressions",
    "str": "a string", "strs": "a string or list of strings", "int": "an integer", "num": "a number",
    "bool": "True or False", "dtype": "a polars dtype such as pl.Int64", "lits": "a list of literal values",
    "scalar": "a literal value", "mapping": "a dict of names", "frame": "a frame",
}


def _numeric(frame: Frame, e: Expr) -> bool:
    col = e.recv if isinstance(e, Call) else e
    return isinstance(col, Col) and (frame.columns[col.name].dtype.is_numeric()
                                     or frame.columns[col.name].dtype == pl.Boolean)


def _kind(value: Any) -> str:
    if isinstance(value, Frame):
        return "a frame"
    if isinstance(value, Expr):
        return "an expression"
    if isinstance(value, PLModule):
        return "the pl module"
    if isinstance(value, Bound):
        return f"the method `{value.name}`"
    if isinstance(value, PlotAccessor):
        return "the .plot namespace"
    if isinstance(value, Chart):
        return "a chart"
    if value is None:
        return "None"
    return f"a {type(value).__name__}"


def _walk_all(e: Any) -> list[Any]:
    out = [e]
    if isinstance(e, Expr):
        for c in e.children():
            out += _walk_all(c)
        if isinstance(e, Call):
            for a in e.args:
                if isinstance(a, (list, tuple)):
                    for x in a:
                        out += _walk_all(x)
    return out


def _substitute(e: Any, old: Expr, new: Expr) -> Any:
    """Replace every occurrence of `old` in an expression tree (frozen dataclasses)."""
    from dataclasses import fields, replace

    if e == old and isinstance(e, Wild):
        return new
    if isinstance(e, (list, tuple)) and not isinstance(e, _FrozenDict):
        return type(e)(_substitute(x, old, new) for x in e)
    if isinstance(e, Expr) and not isinstance(e, (Col, Lit, Len, Wild)):
        return replace(e, **{f.name: _substitute(getattr(e, f.name), old, new) for f in fields(e)})
    return e
