"""Bastion expressions -> polars expressions.

Why a separate stage: the policy reads `plan.Expr` trees; only this module
touches polars' expression API. Method names reach `getattr` only after the
interpreter matched them against the allow-list tables, and the name used is
the table's (`MethodSpec.target`), so no string a user typed is ever looked up
on a polars object unchecked.

Why arguments are checked here: polars validates some arguments in Python
(`round(-1)`, `rank(method="x")`) and some only when a row reaches the
method (`dt.truncate("1x")`, `str.to_integer(base=1)`, `cut([1, 1])`). The
first kind must be a clear refusal, not an internal error; the second kind
would make "error or not" an oracle on whichever rows a filter kept (is
anyone's income above X?). So every method called with literal arguments is
also tried on one literal value per plausible type before anything runs: if
polars refuses it for every type, the arguments are refused (`PlanError`),
the same answer whatever the data holds. Likewise polars checks some types
only on rows (`-(x > 3)`, `pl.col("age") & pl.col("score")`, `clip("a")`):
`probe` runs a whole expression on three made-up rows of the real column
types, so such a type error is refused before the owner's rows are read.
"""

from __future__ import annotations

import datetime as _dt
import functools
import operator
from typing import Any, Callable

import polars as pl

from .errors import PlanError
from .grammar.allowlists import EXPR_METHODS, NAMESPACES, MethodSpec
from .plan import BinOp, Call, Col, DType, Expr, Func, Len, Lit, UnOp, When, Wild

_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "//": operator.floordiv, "%": operator.mod, "**": operator.pow,
    "&": operator.and_, "|": operator.or_, "^": operator.xor,
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}
_UNOPS: dict[str, Callable[[Any], Any]] = {"neg": operator.neg, "pos": operator.pos, "invert": operator.invert}

_FUNCS: dict[str, Callable[..., pl.Expr]] = {
    "concat_str": pl.concat_str,
    "coalesce": pl.coalesce,
    "max_horizontal": pl.max_horizontal,
    "min_horizontal": pl.min_horizontal,
    "sum_horizontal": pl.sum_horizontal,
    "mean_horizontal": pl.mean_horizontal,
}

_DTYPES: dict[str, Any] = {
    "Int8": pl.Int8, "Int16": pl.Int16, "Int32": pl.Int32, "Int64": pl.Int64,
    "UInt8": pl.UInt8, "UInt16": pl.UInt16, "UInt32": pl.UInt32, "UInt64": pl.UInt64,
    "Float32": pl.Float32, "Float64": pl.Float64, "Boolean": pl.Boolean, "String": pl.String,
    "Utf8": pl.String, "Date": pl.Date, "Datetime": pl.Datetime, "Duration": pl.Duration,
    "Time": pl.Time, "Categorical": pl.Categorical,
}


# Polars methods whose argument is `*args` only: passing it by keyword would not
# fail but change meaning (`Expr.filter(predicate=x)` is the constraint
# `pl.col("predicate") == x`), so these table parameters go positionally.
_POSITIONAL: dict[str, tuple[str, ...]] = {"filter": ("predicate",), "and_": ("other",), "or_": ("other",)}


# polars' Rust panics surface as pyo3's PanicException, a BaseException: caught by name.
_PANIC: tuple[type[BaseException], ...] = tuple(
    t for t in (getattr(pl.exceptions, "PanicException", None),) if isinstance(t, type)
)
_REFUSALS: tuple[type[BaseException], ...] = (Exception, *_PANIC)

# Lengths polars would allocate per row (str.zfill(10**9) panics or exhausts memory on the
# first row that reaches it): far above any real formatting need, far below harm.
MAX_TEXT_LENGTH = 10_000
_LENGTH_ARGS: dict[str, tuple[str, ...]] = {
    "str.zfill": ("length",), "str.pad_start": ("length",), "str.pad_end": ("length",),
}

# One literal per type a method may plausibly receive, by namespace (see `_probe`).
_PROBES: dict[str, tuple[Any, ...]] = {
    "str": ("10100",),
    "dt": (_dt.date(2000, 1, 31), _dt.datetime(2000, 1, 31, 12, 30), _dt.timedelta(days=1, hours=2)),
    "": (1, 1.5, "10100", True, _dt.date(2000, 1, 31), _dt.datetime(2000, 1, 31, 12, 30)),
}


def _refuse(name: str, why: str = "polars refuses these arguments") -> PlanError:
    return PlanError(
        f"`.{name}()` cannot take these arguments: {why}",
        hint=f"Shift+Tab on .{name.split('.')[-1]}() shows its arguments and their ranges",
    )


def dtype(d: DType) -> Any:
    base = _DTYPES[d.name]
    if not d.params:
        return base
    try:
        out = base(**dict(d.params))
        pl.select(pl.lit(None).cast(out))  # an unknown time zone fails here, not on the owner's rows
    except _REFUSALS:
        raise PlanError(f"pl.{d.name}{tuple(v for _, v in d.params)!r} is not a valid type",
                        hint="time_unit is 'ns', 'us' or 'ms'; time_zone an IANA name such as 'Europe/Paris'") from None
    return out


def spec_for(fn: str) -> MethodSpec:
    """The allow-list entry of a method name such as ``sum`` or ``str.contains``."""
    if "." in fn:
        ns, name = fn.split(".", 1)
        return NAMESPACES[ns][name]
    return EXPR_METHODS[fn]


def expr(e: Expr) -> pl.Expr:
    """Compile one expression. Wildcards must have been expanded before."""
    if isinstance(e, Col):
        return pl.col(e.name)
    if isinstance(e, Lit):
        value = e.value
        if e.dtype is not None:
            try:
                return pl.lit(value, dtype=dtype(e.dtype))
            except PlanError:
                raise
            except _REFUSALS:
                raise PlanError(f"the literal {value!r} cannot have type pl.{e.dtype.name}",
                                hint="pass a value of that type, or .cast() it (values that do not fit become null)") from None
        return pl.lit(value)
    if isinstance(e, Len):
        return pl.len()
    if isinstance(e, BinOp):
        return _BINOPS[e.op](expr(e.left), expr(e.right))
    if isinstance(e, UnOp):
        return _UNOPS[e.op](expr(e.operand))
    if isinstance(e, When):
        (cond0, val0), *rest = e.branches
        chain: Any = pl.when(expr(cond0)).then(expr(val0))
        for cond, val in rest:
            chain = chain.when(expr(cond)).then(expr(val))
        return chain.otherwise(expr(e.otherwise)) if e.otherwise is not None else chain
    if isinstance(e, Func):
        try:
            return _FUNCS[e.fn](*[arg(a) for a in e.args], **{k: arg(v) for k, v in e.kwargs})
        except PlanError:
            raise
        except _REFUSALS:
            raise _refuse(e.fn) from None
    if isinstance(e, Call):
        spec = spec_for(e.fn)
        target: Any = expr(e.recv)
        _check_lengths(e)
        _probe(e.fn, e.args, e.kwargs)
        return _call(target, e.fn, spec, e.args, e.kwargs)
    if isinstance(e, Wild):  # pragma: no cover - the interpreter expands these first
        raise AssertionError("wildcard reached the compiler unexpanded")
    raise AssertionError(f"unknown expression node {type(e).__name__}")


def _call(target: Any, fn: str, spec: MethodSpec, args_: tuple[Any, ...], kwargs_: tuple[tuple[str, Any], ...]) -> Any:
    """`target.<ns>.<method>(...)` with the table's name and fixed keywords; a polars refusal is a PlanError."""
    try:
        if "." in fn:
            target = getattr(target, fn.split(".", 1)[0])  # namespace name from NAMESPACES keys
        method = getattr(target, spec.target)
        positional = _POSITIONAL.get(fn, ())
        kwargs = {k: arg(v) for k, v in kwargs_ if k not in positional}
        kwargs.update(dict(spec.fixed))
        args = [arg(a) for a in args_] + [arg(v) for k, v in kwargs_ if k in positional]
        return method(*args, **kwargs)
    except PlanError:
        raise
    except _REFUSALS:
        raise _refuse(fn) from None


def _check_lengths(e: Call) -> None:
    for name in _LENGTH_ARGS.get(e.fn, ()):
        value = dict(e.kwargs).get(name)
        if isinstance(value, int) and not 0 <= value <= MAX_TEXT_LENGTH:
            raise _refuse(e.fn, f"`{name}` must be between 0 and {MAX_TEXT_LENGTH}")


def _literal(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_literal(v) for v in value)
    if isinstance(value, dict):
        return all(_literal(v) for v in value.values())
    if isinstance(value, Expr):
        return isinstance(value, Lit)
    return True


def _probe(fn: str, args_: tuple[Any, ...], kwargs_: tuple[tuple[str, Any], ...]) -> None:
    """Refuse arguments polars rejects whatever the values (see the module docstring).

    Only calls whose arguments are all literals are tried (the result is cached
    per call): on one literal per plausible receiver type, and refused only
    when every one fails, so a method that fits some type is never refused
    here for the type it happens to get (that is a schema question).
    """
    if not all(_literal(a) for a in args_) or not all(_literal(v) for _, v in kwargs_):
        return
    try:
        key = (fn, args_, kwargs_)
        hash(key)
    except TypeError:
        return
    if not _probe_cached(*key):
        raise _refuse(fn)


@functools.lru_cache(maxsize=4096)
def _probe_cached(fn: str, args_: tuple[Any, ...], kwargs_: tuple[tuple[str, Any], ...]) -> bool:
    spec = spec_for(fn)
    values = _PROBES.get(fn.split(".", 1)[0] if "." in fn else "", _PROBES[""])
    for value in values:
        column = pl.DataFrame({"x": [value, value, None]})  # a column like the owner's, with a null
        try:
            column.select(_call(pl.col("x"), fn, spec, args_, kwargs_))
            return True
        except PlanError:
            raise  # the builder itself refuses the arguments, for every type
        except _REFUSALS:
            continue
    return False


def _sample(dtype: Any) -> list[Any] | None:
    """Two made-up values and a null of `dtype` (None when the type is not one a probe can fake)."""
    base = dtype.base_type() if hasattr(dtype, "base_type") else dtype
    if dtype.is_integer():
        return [1, 2, None]
    if dtype.is_float():
        return [1.5, 2.5, None]
    if base == pl.String or base == pl.Categorical:
        return ["10100", "a", None]
    if base == pl.Boolean:
        return [True, False, None]
    if base == pl.Date:
        return [_dt.date(2000, 1, 31), _dt.date(1960, 6, 15), None]
    if base == pl.Datetime:
        return [_dt.datetime(2000, 1, 31, 12), _dt.datetime(1960, 6, 15), None]
    if base == pl.Duration:
        return [_dt.timedelta(days=1), _dt.timedelta(hours=5), None]
    if base == pl.Time:
        return [_dt.time(12, 30), _dt.time(1), None]
    return None


def probe(e: Expr, dtypes: dict[str, Any]) -> None:
    """Run `e` on three made-up rows with the columns' real types; refuse what polars refuses there.

    Why: polars checks some types only when a row reaches the operation, so on
    the owner's data "error or not" would depend on which rows a filter kept.
    On made-up rows the answer is the same whatever the data holds. Panics
    that only out-of-range values cause are ruled out first (`check_temporal`),
    since made-up rows hold no such value.
    """
    from .plan import walk

    names = sorted({n.name for n in walk(e) if isinstance(n, Col)})
    key = (repr(e), tuple((n, repr(dtypes.get(n))) for n in names))
    if key in _PROBED:
        return
    _probe_rows(e, dtypes, names)
    _PROBED[key] = None
    if len(_PROBED) > _PROBED_MAX:
        del _PROBED[next(iter(_PROBED))]


# Expressions `probe` has let through, by structure and column types: the answer depends on nothing
# else (no data), and a cell's expressions are probed several times over (every verb and rule checks
# its own), at about a millisecond per polars frame built. A dict keeps insertion order: oldest first out.
_PROBED: dict[tuple[str, tuple[tuple[str, str], ...]], None] = {}
_PROBED_MAX = 4096


def _probe_rows(e: Expr, dtypes: dict[str, Any], names: list[str]) -> None:
    """`probe` itself: the temporal check, then the expression on made-up rows."""
    check_temporal(e, dtypes)
    columns = {}
    for name in names:
        if name not in dtypes:
            return
        values = _sample(dtypes[name])
        if values is None:
            return  # a nested or exotic type: polars' schema check is all we have
        columns[name] = pl.Series(name, values).cast(dtypes[name], strict=False)
    frame = pl.DataFrame(list(columns.values())) if columns else pl.DataFrame({"_": [1, 2, None]})
    try:
        frame.select(expr(e))
    except PlanError:
        raise
    except _REFUSALS:
        raise PlanError(
            "polars cannot compute this expression for these column types",
            hint="check the types with .schema; .cast() converts (values that do not fit become null)",
        ) from None


# Temporal values out of the calendar's range (years beyond ±262143) make polars panic in Rust
# in `dt.month_start/month_end/truncate/to_string/strftime/date` and casts to text, on exactly
# the rows that hold them (pola-rs/polars#15313, #13592, #21910 are this family). Such a value
# cannot come from the data, a literal date or a parse (all within the calendar); only from
# turning numbers into temporal values. These are the constructs that do, refused before
# anything runs, so "panic or not" can never depend on one person's value.
_PARSES = frozenset({"str.to_date", "str.to_datetime"})
_ARITH_METHODS = frozenset({"add", "sub", "mul", "truediv", "floordiv", "mod", "pow"})
_VALUE_ARGS: dict[str, tuple[str, ...]] = {  # arguments whose values end up in the result
    "fill_null": ("value",), "fill_nan": ("value",), "clip": ("lower_bound", "upper_bound"), "replace": ("old", "new"),
}
_TEMPORAL_SCALARS = (_dt.date, _dt.datetime, _dt.time, _dt.timedelta)
_ABSENT = object()
_TEMPORAL_HINT = ("work with numbers instead (.dt.epoch(), .dt.year(), .dt.total_days()), or compare dates with "
                  "dates: temporal values may come only from the data, pl.date()/pl.datetime() or .str.to_date()")


def _temporal_refusal(what: str) -> PlanError:
    return PlanError(f"{what}: a computed date or time can fall outside the calendar, and polars fails on it "
                     "only for the rows that hold it", hint=_TEMPORAL_HINT)


def _dtype_of(e: Expr, empty: pl.LazyFrame, memo: dict[int, Any]) -> Any:
    """The polars type of `e` over columns of these types (no rows involved); None if polars refuses.

    `memo` is keyed by node identity: nodes holding lists (`concat_str([...])`) are not hashable.
    """
    if id(e) not in memo:
        try:
            memo[id(e)] = empty.select(expr(e).alias("x")).collect_schema()["x"]
        except _REFUSALS:
            memo[id(e)] = None
    return memo[id(e)]


def _temporal(t: Any) -> bool:
    return t is not None and (t.is_temporal() or t == pl.Null)


def check_temporal(e: Expr, dtypes: dict[str, Any]) -> None:
    """Refuse every way `e` could turn a number into a date, time or duration (see `_ARITH_METHODS`).

    Allowed temporal values: columns, temporal literals, parsed text, casts between temporal
    types, the difference of two dates/datetimes/times (a duration no longer than
    the data's span), and any other operation whose values all come from
    temporal inputs (min, truncate, when/then of dates, ...): none leaves the
    range of its inputs. Refused: casting a number or boolean to a temporal
    type, a number typed as one (`pl.lit(10**15, pl.Datetime)`), any other
    arithmetic with a temporal result (a date plus a duration, a duration times
    a number: repeatable until out of range), and numbers mixed into a temporal
    result (`clip` bounds, `fill_null`/`replace` values, `when/then` branches).
    """
    from .plan import walk

    nodes = walk(e)
    if not any(isinstance(n, (Call, BinOp, Func, When, UnOp)) or (isinstance(n, Lit) and n.dtype is not None)
               for n in nodes):
        return
    if any(isinstance(n, Col) and n.name not in dtypes for n in nodes):
        return  # polars' schema check refuses it with a clearer message
    empty = pl.LazyFrame(schema=dtypes)
    memo: dict[int, Any] = {}
    for n in nodes:
        if isinstance(n, Lit):
            if n.dtype is not None and n.dtype.name in ("Date", "Datetime", "Duration", "Time") \
                    and not isinstance(n.value, (*_TEMPORAL_SCALARS, type(None))):
                raise _temporal_refusal(f"a number typed as pl.{n.dtype.name}")
            continue
        if not isinstance(n, (Call, BinOp, Func, When, UnOp)):
            continue
        out = _dtype_of(n, empty, memo)
        if out is None or not out.is_temporal():
            continue
        if isinstance(n, Call) and n.fn in _PARSES:
            continue  # parsed text is a calendar date: the parser refuses anything else (null)
        if isinstance(n, Call) and n.fn == "cast":
            if not _temporal(_dtype_of(n.recv, empty, memo)):
                raise _temporal_refusal(f"casting a number to pl.{out.base_type()}")
            continue
        if isinstance(n, BinOp) or (isinstance(n, Call) and n.fn in _ARITH_METHODS):
            left, right = (n.left, n.right) if isinstance(n, BinOp) else (n.recv, dict(n.kwargs).get("other"))
            op = n.op if isinstance(n, BinOp) else n.fn
            kinds = [_dtype_of(x, empty, memo) if isinstance(x, Expr) else None for x in (left, right)]
            if op in ("-", "sub") and all(k is not None and k.is_temporal() and k.base_type() != pl.Duration
                                          for k in kinds):
                continue  # a difference of two dates: a duration within the data's span
            raise _temporal_refusal(f"arithmetic that yields a pl.{out.base_type()}")
        _check_temporal_inputs(n, out, empty, memo)


def _check_temporal_inputs(n: Expr, out: Any, empty: pl.LazyFrame, memo: dict[int, Any]) -> None:
    """Every value that flows into the temporal result `n` must itself be temporal."""
    values: list[Any]
    if isinstance(n, When):
        values = [v for _, v in n.branches] + ([n.otherwise] if n.otherwise is not None else [])
    elif isinstance(n, Func):
        values = list(n.children())
    elif isinstance(n, UnOp):
        values = [n.operand]
    else:
        assert isinstance(n, Call)
        kwargs = dict(n.kwargs)
        values = [n.recv]
        for name in _VALUE_ARGS.get(n.fn, ()):
            v = kwargs.get(name, _ABSENT)
            if isinstance(v, dict):  # replace({old: new, ...}): the new values
                values += list(v.values())
            elif name == "old" or v is _ABSENT:
                continue  # the values replaced, not the replacements
            elif isinstance(v, (list, tuple)):
                values += list(v)
            else:
                values.append(v)
    for v in values:
        ok = _temporal(_dtype_of(v, empty, memo)) if isinstance(v, Expr) else isinstance(v, (*_TEMPORAL_SCALARS, type(None)))
        if not ok:
            raise _temporal_refusal(f"a number mixed into a pl.{out.base_type()} result")


def arg(value: Any) -> Any:
    """Compile an argument: expressions, dtypes, and plain literals (lists kept as lists)."""
    if isinstance(value, Expr):
        return expr(value)
    if isinstance(value, DType):
        return dtype(value)
    if isinstance(value, list):
        return [arg(v) for v in value]
    if isinstance(value, tuple):
        return [arg(v) for v in value]
    if isinstance(value, dict):
        return {k: arg(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool, type(None), _dt.date, _dt.datetime)):
        return value
    raise AssertionError(f"argument of type {type(value).__name__} reached the compiler")
