"""Bastion expressions -> polars expressions.

Why a separate stage: the policy reads `plan.Expr` trees; only this module
touches polars' expression API. Method names reach `getattr` only after the
interpreter matched them against the allow-list tables, and the name used is
the table's (`MethodSpec.target`), so no string a user typed is ever looked up
on a polars object unchecked.
"""

from __future__ import annotations

import datetime as _dt
import operator
from typing import Any, Callable

import polars as pl

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


def dtype(d: DType) -> Any:
    base = _DTYPES[d.name]
    return base(**dict(d.params)) if d.params else base


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
            return pl.lit(value, dtype=dtype(e.dtype))
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
        return _FUNCS[e.fn](*[arg(a) for a in e.args], **{k: arg(v) for k, v in e.kwargs})
    if isinstance(e, Call):
        spec = spec_for(e.fn)
        target: Any = expr(e.recv)
        if "." in e.fn:
            target = getattr(target, e.fn.split(".", 1)[0])  # namespace name from NAMESPACES keys
        method = getattr(target, spec.target)
        positional = _POSITIONAL.get(e.fn, ())
        kwargs = {k: arg(v) for k, v in e.kwargs if k not in positional}
        kwargs.update(dict(spec.fixed))
        args = [arg(a) for a in e.args] + [arg(v) for k, v in e.kwargs if k in positional]
        return method(*args, **kwargs)
    if isinstance(e, Wild):  # pragma: no cover - the interpreter expands these first
        raise AssertionError("wildcard reached the compiler unexpanded")
    raise AssertionError(f"unknown expression node {type(e).__name__}")


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
