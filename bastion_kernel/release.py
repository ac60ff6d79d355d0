"""Decide and carry out a release: run the query, withhold, mask, or ask for review.

Why one function: this is the only place a query runs on the owner's data,
so it is also the only place that can hand data to the display. What it
returns is either `Released` (already thresholded and masked), or
`ReviewPending` (the exact snapshot stored for the owner); a reject is raised.
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import Limits
from .errors import ExecutionError, LimitError, PolicyError
from .plan import OK_COLUMN, SUPPRESSED_COLUMN, Frame, Violation

if TYPE_CHECKING:  # polars is imported where a query runs: the kernel process needs only `ReviewPending`
    import polars as pl

    from .policy.history import Cover


WITHHELD_NOTE = "groups with fewer than the minimum number of individuals are withheld, if there are any"


@dataclass(frozen=True)
class Released:
    """Data the policy let through; safe to display and to compute on."""

    df: pl.DataFrame
    withheld_groups: int = 0
    suppressed_cells: int = 0
    notes: tuple[str, ...] = ()
    masked: tuple[str, ...] = ()
    source: str = "auto"  # "auto" | "review"
    request_id: str | None = None
    # Which individuals the released rows covered (for the differencing check); never displayed.
    cover: Cover | None = field(default=None, compare=False, repr=False)

    @functools.cached_property
    def ipc(self) -> bytes:
        """The table as Arrow IPC bytes: what the audit digest hashes and the worker sends to the
        kernel (`worker.server.effects_out`), written once for both."""
        return ipc(self.df)

    def digest(self) -> str:
        return hashlib.sha256(self.ipc).hexdigest()


@dataclass(frozen=True)
class ReviewPending:
    """A review request waiting for the owner."""

    request_id: str
    reason: str
    dataset: str
    cell: str = ""


@dataclass(frozen=True)
class Decision:
    """What the policy decided for a frame, before anything runs."""

    auto: bool
    reasons: tuple[Violation, ...] = field(default_factory=tuple)
    on_violation: str = "review"

    def text(self) -> str:
        return "; ".join(v.message for v in self.reasons)


def ipc(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_ipc(buf)
    return buf.getvalue()


def decide(frame: Frame) -> Decision:
    """Rule 1-4: auto-release only aggregated frames without violations."""
    reasons = list(frame.violations)
    if frame.row_level:
        ds = ", ".join(sorted({u.dataset for u in frame.units}))
        reasons.insert(0, Violation(
            "row-level", ds,
            f"the result holds individual rows of {ds}",
            "aggregate it: .group_by(...).agg(pl.len(), pl.col(...).mean())",
        ))
    strict = "reject" if any(_on_violation(frame, d) == "reject" for d in frame.datasets) else "review"
    return Decision(auto=not reasons, reasons=tuple(reasons), on_violation=strict)


def _on_violation(frame: Frame, dataset: str) -> str:

    stack: list[Frame] = [frame]
    while stack:
        f = stack.pop()
        for u in f.units:
            if u.dataset == dataset:
                return u.on_violation
        stack += list(f.step.inputs)
    return "review"


def run(lf: pl.LazyFrame) -> pl.DataFrame:
    """Collect, turning any polars failure into an error that quotes no data."""
    return run_all([lf])[0]


def run_all(lfs: list[pl.LazyFrame]) -> list[pl.DataFrame]:
    """`run` for several queries at once (polars shares the work they have in common)."""
    import polars as pl

    try:
        return pl.collect_all(lfs) if len(lfs) > 1 else [lfs[0].collect()]
    except KeyboardInterrupt:
        raise ExecutionError("the query was interrupted", hint="your variables are kept") from None
    except MemoryError:
        raise ExecutionError("the query ran out of memory", hint="aggregate earlier or select fewer columns") from None
    except Exception as exc:  # noqa: BLE001 - polars messages may quote values; never show them
        raise ExecutionError(
            f"the query failed while running ({type(exc).__name__}); details are withheld because they can quote data",
            hint="check types with .schema; casts to a type that cannot hold a value give null",
        ) from None
    except pl.exceptions.PanicException:  # a BaseException (pyo3): without this the cell never gets a reply
        raise panic_error() from None


def panic_error() -> ExecutionError:
    """The one answer to a Rust panic inside polars, wherever it surfaces.

    A backstop only: the constructs known to panic on some values are refused
    before anything runs (`compile.check_temporal`); this keeps the kernel
    answering, in words that say nothing about the data, if polars finds another.
    """
    return ExecutionError(
        "the query failed inside polars (an internal error); details are withheld because they can quote data",
        hint="your variables are kept; try the computation another way, e.g. on numbers instead of dates",
    )


def visible(frame: Frame) -> pl.LazyFrame:
    """Only visible columns, masked ones replaced by '*' inside the query (never read)."""
    import polars as pl

    stars = [pl.lit("*", dtype=pl.String).alias(n) for n, info in frame.columns.items() if info.masked]
    # with_columns, not select: a select of literals only would collapse to one row.
    lf = frame.lf.with_columns(stars) if stars else frame.lf
    return lf.select(list(frame.columns))


def release_aggregate(frame: Frame, limits: Limits) -> Released:
    """Run an aggregated frame; also collect which individuals its rows covered (see `Released.cover`).

    A pending frame's own cover column holds exactly its released rows' sets;
    every other aggregation the result was computed from counts with all its
    groups (one extra query each, collected together with the result).
    """
    import polars as pl

    from .frames import cover_roots, cover_spec, is_cover
    from .policy.history import Cover, CoverPart

    roots = cover_roots(frame)
    own = next((p for p in frame.preds if is_cover(p)), None) if frame.pending else None
    others = [(root, name) for root, name in roots if name != own]
    extra = [root.lf.filter(pl.col(OK_COLUMN)).select(name) for root, name in others]
    withheld = suppressed = 0
    parts: list[CoverPart] = []
    if frame.pending:
        fast = _fast_checks(frame)
        if fast is not None:  # the threshold in two streaming passes (frames.FastChecks); same answer
            first, *extra_dfs = run_all([fast.first, *extra])
            df = fast.settle(first, run)
        else:
            df, *extra_dfs = run_all([frame.lf, *extra])
        ok = df.get_column(OK_COLUMN)
        withheld = int((~ok).sum())
        suppressed = int(df.filter(ok).get_column(SUPPRESSED_COLUMN).sum() or 0)
        df = df.filter(ok)
        for root, name in roots:
            if name == own:
                parts.append(CoverPart(root.step.inputs[0].units, df.get_column(name), spec=cover_spec(root)))
        df = df.select([pl.lit("*").alias(n) if i.masked else pl.col(n) for n, i in frame.columns.items()])
    else:
        df, *extra_dfs = run_all([visible(frame).head(limits.max_release_rows + 1), *extra])
    for i, ((root, name), rows) in enumerate(zip(others, extra_dfs)):
        parts.append(CoverPart(root.step.inputs[0].units, rows.get_column(name), label=f"input aggregation {i + 1}",
                               spec=cover_spec(root)))
    if df.height > limits.max_release_rows:
        raise LimitError(
            f"the result has more than {limits.max_release_rows} rows (limit max_release_rows)",
            hint="group more coarsely, or .head(n) the aggregated result",
        )
    notes = []
    if frame.pending:
        # Always the same words, never a count: "1 group withheld" after filter(income > X) would say
        # whether anyone earns more than X. The count stays in `withheld_groups` for the audit log.
        notes.append(WITHHELD_NOTE)
    if suppressed:
        # One text for both causes: which rule fired is itself a fact about the group's individuals.
        notes.append(f"{suppressed} value(s) were suppressed (shown as null): a condition inside the aggregate "
                     "left too few individuals on one side, or one individual dominated the value")
    return Released(df, withheld, suppressed, tuple(notes), tuple(frame.masked_columns()), cover=Cover(tuple(parts)))


def _fast_checks(frame: Frame) -> object | None:
    """The aggregation's two-pass threshold, when `frame` is that aggregation itself (not a later step)."""
    from .frames import FastChecks

    detail = frame.step.detail
    return detail[2] if len(detail) == 3 and isinstance(detail[2], FastChecks) else None


def snapshot(frame: Frame, limits: Limits) -> Released:
    """The exact table a reviewer would release (visible columns, masked as '*', capped), and which
    individuals its aggregated rows cover (`Released.cover`, for the differencing history).

    The same run as an automatic release (`release_aggregate`): a frame that
    aggregates has its groups below the threshold withheld and its covers
    counted in the same pass; row-level rows cover no aggregation.
    """
    try:
        return release_aggregate(frame, limits)
    except LimitError:
        raise LimitError(
            f"the result has more than {limits.max_release_rows} rows, too many to review (limit max_release_rows)",
            hint="narrow it with .filter(...) or .head(n), or aggregate it",
        ) from None


def refusal(decision: Decision) -> PolicyError:
    first = decision.reasons[0]
    others = "" if len(decision.reasons) == 1 else f" (and {len(decision.reasons) - 1} more reason(s))"
    return PolicyError(
        f"rule {first.rule} on {first.dataset}: {first.message}{others}; this deployment rejects such results",
        rule=first.rule,
        dataset=first.dataset,
        hint=first.hint,
    )
