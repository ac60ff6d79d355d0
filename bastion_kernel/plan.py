"""Bastion's own representation of a query: what the policy reads.

Why not polars' plan: serialised polars plans change between versions and can
carry things Bastion never allowed. The interpreter builds these small frozen
trees from the checked syntax tree; `policy/` reads them; `compile.py` turns
them into polars. Each `Frame` also carries its *lineage*: which datasets'
individuals its rows still stand for, which bookkeeping columns hold their
unit ids and predicate flags, and which visible columns are masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .config import RESERVED_PREFIX

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl


# ---------------------------------------------------------------- expressions


class Expr:
    """Base of every expression node. Nodes are immutable and hashable."""

    def children(self) -> tuple["Expr", ...]:
        return ()


@dataclass(frozen=True)
class Col(Expr):
    """One resolved column of the input frame."""

    name: str


@dataclass(frozen=True)
class Wild(Expr):
    """A multi-column selection (`pl.all()`, regex, dtype, `pl.nth`, several names).

    Expanded by the interpreter against the *visible* schema only, so bookkeeping
    columns can never be selected through it.
    """

    kind: str  # "all" | "regex" | "dtype" | "nth" | "names"
    spec: tuple[Any, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lit(Expr):
    value: Any
    dtype: Any = None


@dataclass(frozen=True)
class Len(Expr):
    """`pl.len()`: rows in the group."""


@dataclass(frozen=True)
class Call(Expr):
    """A method from the allow-list applied to `recv` (e.g. ``sum``, ``str.contains``)."""

    fn: str
    recv: Expr
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()

    def children(self) -> tuple[Expr, ...]:
        return (self.recv, *_exprs_in(self.args), *_exprs_in(v for _, v in self.kwargs))


@dataclass(frozen=True)
class Func(Expr):
    """A `pl.` function from the allow-list taking expressions (``concat_str``, ``coalesce``…)."""

    fn: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()

    def children(self) -> tuple[Expr, ...]:
        return (*_exprs_in(self.args), *_exprs_in(v for _, v in self.kwargs))


@dataclass(frozen=True)
class BinOp(Expr):
    op: str
    left: Expr
    right: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)


@dataclass(frozen=True)
class UnOp(Expr):
    op: str  # "neg" | "pos" | "invert"
    operand: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)


@dataclass(frozen=True)
class When(Expr):
    branches: tuple[tuple[Expr, Expr], ...]
    otherwise: Expr | None = None

    def children(self) -> tuple[Expr, ...]:
        out: list[Expr] = []
        for cond, value in self.branches:
            out += [cond, value]
        if self.otherwise is not None:
            out.append(self.otherwise)
        return tuple(out)


@dataclass(frozen=True)
class DType:
    """A polars data type named from the allow-list (never `Object`)."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()


def _exprs_in(values: Any) -> list[Expr]:
    out: list[Expr] = []
    for v in values:
        if isinstance(v, Expr):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out += _exprs_in(v)
    return out


def walk(expr: Expr) -> list[Expr]:
    """Every node of an expression, root first."""
    out = [expr]
    for child in expr.children():
        out += walk(child)
    return out


def columns_of(expr: Expr) -> set[str]:
    return {n.name for n in walk(expr) if isinstance(n, Col)}


# ---------------------------------------------------------------- frames


@dataclass(frozen=True)
class ColumnInfo:
    """What the policy knows about one visible column.

    `masked`: derived from a masked source column (shown only as ``*``).
    `unit_of`: this column still holds the privacy unit id of the source whose
    bookkeeping column is named here (lets ``group_by("patient_id")`` make a
    per-individual table). `preds`: bookkeeping columns holding the predicate
    flags this value was computed from, so an aggregate of it can be checked
    for singling out even when the condition was written in an earlier cell.
    `nonlinear`: built by non-linear arithmetic (`abs`, `clip`, `round`, a
    product of two columns, ...; see `policy.rules.nonlinear_ops`), so
    aggregating it later cannot auto-release.
    `by_unit`: bookkeeping unit columns whose individuals each have one value of
    this column on all their rows (every column of a one-row-per-individual
    dataset; the privacy unit itself). Grouping by such columns puts each
    individual in one group only, which the differencing check uses to skip
    comparing groups of one result with each other (they cannot overlap).
    """

    dtype: Any
    masked: bool = False
    unit_of: str | None = None
    preds: frozenset[str] = frozenset()
    nonlinear: bool = False
    by_unit: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Unit:
    """One source scan whose individuals the rows still stand for."""

    column: str  # bookkeeping column with the unit id
    dataset: str
    k: int
    on_violation: str
    # At most this many rows per individual in the frame (None: unknown). Known once per
    # dataset file (`sources.unit_profile`), multiplied through joins, never raised by filters;
    # it lets the threshold count rows instead of distinct ids (see `frames._at_least`).
    rows_max: int | None = None
    nonnull: bool = False  # no row of the frame lacks this unit's id
    # The dataset's dominance rule (`policy.rules.dominated`): no individual may hold more than this
    # share of a released sum/mean/std/var's squared deviations; 1 switches it off.
    max_share: float = 0.5


@dataclass(frozen=True)
class Violation:
    """A reason the result cannot be released automatically (goes to review or is rejected)."""

    rule: str
    dataset: str | None
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class Step:
    """One verb applied to one or more input frames (for audit and display)."""

    verb: str
    inputs: tuple["Frame", ...]
    detail: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Frame:
    """A lazy query: its plan (`step`), visible schema, lineage and compiled polars form.

    Invariant: `lf`'s schema is exactly the visible columns (in order) followed
    by the bookkeeping columns `hidden`; `ensure_invariant` checks it after
    every step so no user-chosen name can shadow a bookkeeping column.
    """

    step: Step
    columns: dict[str, ColumnInfo]
    units: tuple[Unit, ...]
    datasets: frozenset[str]
    lf: "pl.LazyFrame" = field(repr=False, compare=False)
    preds: tuple[str, ...] = ()
    violations: tuple[Violation, ...] = ()
    aggregated: bool = False
    pending: bool = False  # `__bastion_ok` still present: small groups not yet dropped

    @property
    def row_level(self) -> bool:
        """Rows still stand for individuals of at least one source."""
        return bool(self.units)

    @property
    def hidden(self) -> list[str]:
        out = [u.column for u in self.units] + list(self.preds)
        if self.pending:
            out += [OK_COLUMN, SUPPRESSED_COLUMN]
        return out

    def masked_columns(self) -> list[str]:
        return [n for n, c in self.columns.items() if c.masked]

    def evolve(self, **changes: Any) -> "Frame":
        return replace(self, **changes)

    def describe_lineage(self) -> str:
        src = ", ".join(sorted(self.datasets))
        kind = "rows of individuals" if self.row_level else "aggregated groups"
        return f"{kind} from {src}"


OK_COLUMN = f"{RESERVED_PREFIX}_ok"
SUPPRESSED_COLUMN = f"{RESERVED_PREFIX}_sup"


def is_reserved(name: str) -> bool:
    return name.startswith(RESERVED_PREFIX)
