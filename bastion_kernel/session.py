"""One user's session: variables, datasets they may see, releases, audit.

Why separate from the kernel: the kernel class speaks the Jupyter protocol;
everything a cell *means* happens here, so it can be driven the same way by
the kernel, the tests and the benchmarks. A cell either completes or changes
nothing: assignments are staged and committed only when every statement ran.
"""

from __future__ import annotations

import ast
import itertools
import os
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl

from . import frames as F
from . import release as R
from .audit import AuditLog
from .config import Deployment, current_user
from .errors import BastionError, PlanError
from .grammar import parse_cell
from .grammar.allowlists import Param
from .interpreter import Interpreter
from .plan import Call, Col, Frame, Len
from .review import ReviewRequest, ReviewStore


@dataclass
class CellResult:
    """What a cell produced: a value to display (or None) and the audit outcome."""

    value: Any = None
    outcome: str = "ok"
    reason: str = ""
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    output_digest: str | None = None
    error: BastionError | None = None
    pending: list[R.ReviewPending] = field(default_factory=list)  # review requests this cell created
    assigned: bool = False  # the cell assigned variables (a restarted worker replays it)
    effects: list[Effect] = field(default_factory=list)  # what a replay must reproduce without re-running


@dataclass(frozen=True)
class Message:
    """Plain text the session wants shown (lists, explanations)."""

    text: str


@dataclass(frozen=True)
class Effect:
    """One release, review request, fetch or cancellation a cell caused, as data.

    Why: when the query worker is restarted (timeout, interrupt, memory), the
    cells that defined variables are replayed; each of these calls then
    returns what it returned the first time instead of running a query,
    creating a request or writing the audit log again.
    """

    kind: str  # "released" | "pending" | "request"
    meta: dict[str, Any]
    df: pl.DataFrame | None = None
    ipc: bytes | None = field(default=None, compare=False, repr=False)  # `df` as Arrow IPC (`Released.ipc`)

    @staticmethod
    def of(value: Any) -> Effect:
        if isinstance(value, R.Released):
            meta = {"withheld_groups": value.withheld_groups, "suppressed_cells": value.suppressed_cells,
                    "notes": list(value.notes), "masked": list(value.masked), "source": value.source,
                    "request_id": value.request_id}
            return Effect("released", meta, value.df, value.ipc)
        if isinstance(value, R.ReviewPending):
            return Effect("pending", {"request_id": value.request_id, "reason": value.reason,
                                      "dataset": value.dataset, "cell": value.cell})
        if isinstance(value, ReviewRequest):
            return Effect("request", value.to_dict())
        raise TypeError(type(value).__name__)

    def value(self) -> Any:
        m = self.meta
        if self.kind == "released":
            assert self.df is not None
            return R.Released(self.df, m["withheld_groups"], m["suppressed_cells"], tuple(m["notes"]),
                              tuple(m["masked"]), m["source"], m["request_id"])
        if self.kind == "pending":
            return R.ReviewPending(m["request_id"], m["reason"], m["dataset"], m["cell"])
        if self.kind == "request":
            return ReviewRequest.from_dict(m)
        raise ValueError(self.kind)


class Session:
    def __init__(self, deployment: Deployment, *, user: str | None = None, kernel_id: str | None = None,
                 notebook_path: str | None = None, resume_session: str | None = None) -> None:
        self.deployment = deployment
        self.user = user or current_user()
        self.limits = deployment.limits
        self.visible_datasets = deployment.datasets_for(self.user)
        self.namespace: dict[str, Any] = {}
        self.ctx = F.Ctx(itertools.count(), state_dir=deployment.state_dir, memory_mb=self.limits.query_memory_mb)
        self.store = ReviewStore(deployment.state_dir)
        if resume_session is not None:  # a restarted query worker continues its kernel's audit session
            self.audit = AuditLog.resume(deployment.state_dir, resume_session)
        else:
            self.audit = AuditLog.open_session(
                deployment.state_dir, user=self.user, kernel_id=kernel_id or uuid.uuid4().hex,
                notebook_path=notebook_path or os.environ.get("JPY_SESSION_NAME"), config_digest=deployment.digest,
            )
        self._last: CellResult | None = None
        self._replay: list[Effect] | None = None  # set while replaying a cell after a worker restart

    # ------------------------------------------------------------ cells
    def execute(self, source: str) -> CellResult:
        """Run one cell; never raises for user mistakes (the error is in the result)."""
        from .policy.history import foreground

        with foreground():  # background recording of earlier releases waits until the kernel is idle
            return self._execute(source)

    def _execute(self, source: str) -> CellResult:
        self._last = CellResult()
        try:
            tree = parse_cell(source, self.limits)
            it = Interpreter(self, source)
            value = it.run(tree)
            result = self._last
            result.value = value
            result.assigned = any(isinstance(stmt, ast.Assign) for stmt in tree.body)
        except BastionError as exc:
            result = self._last
            result.value = None
            result.error = exc
            result.outcome = "refused" if exc.kind in ("grammar", "plan", "policy", "limit") else "error"
            result.reason = exc.message
        except RecursionError:
            from .errors import LimitError

            result = self._last
            result.error = LimitError("the cell nests too deeply (limit max_depth)")
            result.outcome, result.reason = "refused", result.error.message
        except pl.exceptions.PanicException:  # a BaseException: polars' Rust panics, outside `release.run`
            result = self._last
            result.value = None
            result.error = R.panic_error()
            result.outcome, result.reason = "error", result.error.message
        if result.error is not None and result.pending:
            result.error = _naming_requests(result.error, result.pending)
        if self._replay is None:
            self.audit.record(
                "cell", source=source, outcome=result.outcome, reason=result.reason, rows=result.rows,
                columns=result.columns, output_digest=result.output_digest,
            )
        return result

    def replay(self, source: str, effects: list[Effect]) -> bool:
        """Re-run a cell that succeeded before, with its recorded effects; True if it rebuilt its variables."""
        self._replay = list(effects)
        try:
            result = self.execute(source)
            return result.error is None and not self._replay
        finally:
            self._replay = None

    def _effect(self, run: Any) -> Any:
        """Run a side-effecting call and record it, or, when replaying, answer what it answered then."""
        if self._replay is not None:
            if not self._replay:
                raise PlanError("this cell does something new on replay; run it again")
            value = self._replay.pop(0).value()
            if isinstance(value, R.Released):
                self._note_release(value)
            return value
        value = run()
        assert self._last is not None
        self._last.effects.append(Effect.of(value))
        return value

    # ------------------------------------------------------------ releases
    def release(self, frame: Frame, source: str) -> Any:
        """Released, ReviewPending, or a PolicyError: the policy's answer for `frame`."""
        return self._effect(lambda: self._release_now(frame, source))

    def _release_now(self, frame: Frame, source: str) -> Any:
        decision = R.decide(frame)
        assert self._last is not None
        released = None
        if decision.auto:
            released = R.release_aggregate(frame, self.limits)
            held = self._differencing(released, source)
            if held is None:
                released = replace(released, cover=None)  # now in the history; do not keep the sets in memory
                self._note_release(released)
                return released
            decision = held  # too close to an earlier release: review or reject like any violation
        if decision.on_violation == "reject":
            self._last.outcome = "refused"
            raise R.refusal(decision)
        snap = released if released is not None else R.snapshot(frame, self.limits)  # held: the same table
        dataset = ",".join(sorted(frame.datasets))
        reason = decision.text()
        rid = self.store.create(user=self.user, dataset=dataset, session_id=self.audit.session_id, cell=source,
                                reason=reason, snapshot=snap.df)
        self.audit.record("review_request", request_id=rid, dataset=dataset, reason=reason)
        try:
            self._record_request(snap, source, rid)
        except BastionError:
            self.cancel_request(rid)  # never leave a request the history does not know
            raise
        self._last.outcome, self._last.reason = "review", reason
        pending = R.ReviewPending(rid, reason, dataset, source)
        self._last.pending.append(pending)
        return pending

    def _differencing(self, released: R.Released, source: str) -> R.Decision | None:
        """Check an automatic release against this user's release history (`policy.history`).

        None: nothing too close, and the release is now part of the history.
        Otherwise the decision that holds it back, naming the earlier release.
        """
        from .policy.history import open_store

        if released.cover is None:
            return None
        finding = open_store(self.deployment.state_dir).check_and_record(
            user=self.user, session_id=self.audit.session_id, cell=source, cover=released.cover,
            datasets=self.deployment.datasets, rows=released.df.height, memory_mb=self.limits.query_memory_mb,
        )
        if finding is None:
            return None
        return R.Decision(auto=False, reasons=(finding.violation(),), on_violation=finding.on_violation)

    def _record_request(self, snap: R.Released, source: str, request_id: str) -> None:
        """Put a review request's result into this user's release history (`HistoryStore.record`), so
        that once approved, no later automatic result can differ from it by a few individuals."""
        from .policy.history import open_store

        if snap.cover is not None:
            open_store(self.deployment.state_dir).record(
                user=self.user, session_id=self.audit.session_id, cell=source, cover=snap.cover,
                datasets=self.deployment.datasets, rows=snap.df.height, request=request_id,
                memory_mb=self.limits.query_memory_mb,
            )

    def _note_release(self, released: R.Released) -> None:
        assert self._last is not None
        self._last.outcome = "released"
        self._last.rows = released.df.height
        self._last.columns = released.df.columns
        self._last.output_digest = released.digest()
        self._last.reason = "; ".join(released.notes)

    def frame_property(self, frame: Frame, name: str, source: str) -> Any:
        if name == "columns":
            return list(frame.columns)
        if name == "width":
            return len(frame.columns)
        if name in ("schema", "dtypes"):
            schema = pl.Schema({n: i.dtype for n, i in frame.columns.items()})
            return schema if name == "schema" else list(schema.values())
        if name == "height":
            out = self.release(F.select(frame, [Call("alias", Len(), ("height",))], self.ctx), source)
            if isinstance(out, R.Released):
                return out.df.item() if out.df.height == 1 else Message(
                    "height withheld: the frame holds fewer individuals than the minimum group size")
            return out
        raise AssertionError(name)

    def describe(self, frame: Frame, source: str, it: Interpreter) -> Any:
        """count, null_count, mean, std per unmasked column: the auto-releasable part of describe()."""
        stats = ("count", "null_count", "mean", "std")
        cols = [n for n, i in frame.columns.items() if not i.masked and (i.dtype.is_numeric() or i.dtype == pl.Boolean)]
        if not cols:
            raise PlanError("describe(): no unmasked numeric columns", position=it.position)
        exprs = [Call("alias", Call(s, Col(c)), (f"{s}\x1f{c}",)) for c in cols for s in stats]
        out = self.release(F.select(frame, exprs, self.ctx), source)
        if not isinstance(out, R.Released):
            return out
        if out.df.height == 0:
            return out
        row = out.df.row(0, named=True)
        table = pl.DataFrame(
            {"statistic": list(stats), **{c: [_as_float(row[f"{s}\x1f{c}"]) for s in stats] for c in cols}}
        )
        notes = out.notes + ("min, quantiles and max are order statistics: ask for them explicitly (owner review)",)
        return R.Released(table, out.withheld_groups, out.suppressed_cells, notes)

    # ------------------------------------------------------------ functions
    def call_function(self, name: str, args: list[Any], kwargs: dict[str, Any], it: Interpreter) -> Any:
        if name == "fetch":
            p = it.bind((Param("request_id", "str", True),), args, kwargs, "fetch()")
            released = self._effect(lambda: self.fetch_approved(p["request_id"]))
            self._note_release(released)
            return released
        if name == "cancel":
            p = it.bind((Param("request_id", "str", True),), args, kwargs, "cancel()")
            req = self._effect(lambda: self.cancel_request(p["request_id"]))
            return Message(f"{req.id} cancelled; the owner will not see it as pending any more")
        if name == "requests":
            it.bind((), args, kwargs, "requests()")
            reqs = self.store.list(status=None, user=self.user)
            return pl.DataFrame(
                {
                    "id": [r.id for r in reqs], "status": [r.status for r in reqs],
                    "dataset": [r.dataset for r in reqs], "created": [r.created for r in reqs],
                    "reason": [r.decision_reason or r.reason for r in reqs],
                },
                schema={"id": pl.String, "status": pl.String, "dataset": pl.String, "created": pl.String,
                        "reason": pl.String},
            )
        if name == "datasets":
            it.bind((), args, kwargs, "datasets()")
            ds = self.visible_datasets
            return pl.DataFrame(
                {
                    "dataset": list(ds), "privacy_unit": [d.privacy_unit or "(each row)" for d in ds.values()],
                    "masked": [", ".join(d.masked) for d in ds.values()],
                    "min_group_size": [d.min_group_size for d in ds.values()],
                    "max_share": [d.max_share for d in ds.values()],
                    "on_violation": [d.on_violation for d in ds.values()],
                },
                schema={"dataset": pl.String, "privacy_unit": pl.String, "masked": pl.String,
                        "min_group_size": pl.Int64, "max_share": pl.Float64, "on_violation": pl.String},
            )
        if name == "policy":
            p = it.bind((Param("dataset", "str", True),), args, kwargs, "policy()")
            return Message(self.explain_policy(p["dataset"], it))
        if name == "len":
            if len(args) != 1 or kwargs:
                raise PlanError("len() takes one argument", position=it.position)
            value = args[0]
            if isinstance(value, R.Released):
                return value.df.height
            if isinstance(value, (list, tuple, str, dict)):
                return len(value)
            raise PlanError("len() works on lists and released results; for frames use .height",
                            position=it.position)
        raise AssertionError(name)

    # ------------------------------------------------------------ review requests
    def fetch_approved(self, request_id: str, *, via: str = "cell") -> R.Released:
        """The owner-approved snapshot of one of this user's requests, audited as a fetch.

        Used by `fetch("ID")` and by the pending widget when it sees the approval.
        """
        df = self.store.fetch(request_id, user=self.user)
        masked = tuple(c for c in df.columns
                       if df.height and df.schema[c] == pl.String and df.get_column(c).eq("*").all())
        released = R.Released(df, source="review", request_id=request_id, masked=masked,
                              notes=(f"released by the owner after review of {request_id}",))
        # The digest's IPC bytes are the ones the worker then sends (`Released.ipc`), written once.
        self.audit.record("fetch", request_id=request_id, via=via, rows=df.height, columns=df.columns,
                          output_digest=released.digest())
        return released

    def cancel_request(self, request_id: str) -> ReviewRequest:
        """Withdraw one of this user's pending requests; audited like an owner's decision."""
        req = self.store.cancel(request_id, by=self.user)
        self.audit.record("review_decision", request_id=req.id, decision="cancelled", by=self.user,
                          reason=None, decided_at=req.decided_at)
        return req

    def explain_policy(self, name: str, it: Interpreter) -> str:
        ds = self.visible_datasets.get(name)
        if ds is None:
            raise PlanError(f"no dataset `{name}`", hint="datasets() lists yours", position=it.position)
        unit = f"`{ds.privacy_unit}`" if ds.privacy_unit else "each row"
        masked = ", ".join(f"`{m}`" for m in ds.masked) or "none"
        action = "sent to the owner for review" if ds.on_violation == "review" else "refused"
        lines = [
            f"Dataset {name}: one individual is {unit}.",
            f"- Aggregates (count, sum, mean, n_unique, std, var) are released at once when every group holds at "
            f"least {ds.min_group_size} distinct individuals; smaller groups are withheld.",
            f"- Conditions inside an aggregate must leave at least {ds.min_group_size} individuals on each side, "
            "or that value is suppressed.",
        ]
        if ds.max_share < 1:
            lines.append(f"- A sum, mean, std or var is suppressed where one individual holds more than "
                         f"{ds.max_share:.0%} of its values or of their spread around the mean (dominance).")
        lines += [
            f"- Masked columns: {masked}. They show only as '*' and cannot be filtered, grouped, joined, sorted or "
            "aggregated on.",
            f"- Row-level results, min/max/median/quantiles/first/last and list aggregates are {action}.",
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------ released values
    def is_released(self, value: Any) -> bool:
        return isinstance(value, R.Released)

    def released_attribute(self, value: Any, name: str) -> Any:
        if isinstance(value, R.Released):
            df = value.df
            props = {"columns": lambda: list(df.columns), "shape": lambda: df.shape, "height": lambda: df.height,
                     "width": lambda: df.width}
            if name in props:
                return props[name]()
            if name == "plot":
                from .charts import PlotAccessor

                return PlotAccessor(value)
        return None

    def call_released(self, value: R.Released, name: str, args: list[Any], kwargs: dict[str, Any],
                      it: Interpreter) -> Any:
        df = value.df
        if name == "item":
            it.bind((), args, kwargs, ".item()")
            if df.shape != (1, 1):
                raise PlanError(f".item() needs a 1x1 result, this one is {df.shape}", position=it.position)
            return df.item()
        if name in ("head", "tail"):
            p = it.bind((Param("n", "int"),), args, kwargs, f".{name}()")
            n = p.get("n", 5)
            # dataclasses.replace keeps what the release knew (masked columns, notes, source)
            return replace(value, df=df.head(n) if name == "head" else df.tail(n))
        if name == "sort":
            p = it.bind((Param("by", "strs", True), Param("descending", "bool")), args, kwargs, ".sort()")
            for c in p["by"]:
                if c not in df.columns:
                    raise PlanError(f"no column `{c}` in this result", position=it.position)
            return replace(value, df=df.sort(p["by"], descending=p.get("descending", False)))
        if name == "to_dicts":
            it.bind((), args, kwargs, ".to_dicts()")
            return df.to_dicts()
        raise AssertionError(name)

    def close(self) -> None:
        """End the session: write the sets still waiting to be recorded, then close the audit log."""
        from .policy.history import open_store

        try:
            open_store(self.deployment.state_dir).flush()
        finally:
            self.audit.close()

    # ------------------------------------------------------------ charts (specs in charts.py)
    def plot_released(self, value: R.Released, kind: str, params: dict[str, Any], it: Interpreter) -> Any:
        """`released.plot.bar/line/point(...)`: a view of rows already released; nothing runs."""
        from . import charts

        try:
            return charts.chart(value, kind, **params)
        except BastionError as exc:
            raise exc.with_position(it.position) from None

    def plot_histogram(self, frame: Frame, params: dict[str, Any], it: Interpreter) -> Any:
        """`frame.plot.hist(column, bins=, range=)`: rows per bin, released like any aggregate.

        The bins are fixed before the counting query runs: by `range`, or else by
        the column's mean ± 3 std, themselves an auto-released aggregate (never
        min/max, which would be one individual's value). The counts are a
        `group_by` over the bin edge through `release`, so bins with fewer than
        the minimum number of individuals are withheld (drawn as gaps), and a
        deployment that reviews or rejects the query does so here too.
        """
        from . import charts

        try:
            column = params["column"]
            dataset = ",".join(sorted(frame.datasets)) or None
            charts.check_hist_column(frame.columns, column, dataset)
            n = charts.check_bins(params.get("bins"))
            span = charts.check_range(params.get("range"))
            integer = frame.columns[column].dtype.is_integer()
            extra: tuple[str, ...]
            if span is not None:
                bins = charts.make_bins(span[0], span[1], n, integer=integer)
                extra = (charts.range_note(bins, column, "range as given"),)
            else:
                mean, std = self._hist_stats(frame, column, it)
                bins = charts.nice_bins(mean, std, n, integer=integer)
                extra = (charts.range_note(bins, column, f"from the released mean {mean:.6g} ± 3 × std {std:.6g}"),)
            kept = F.filter_(frame, [charts.range_predicate(column, bins)], self.ctx)
            query = F.aggregate(kept, [charts.bin_key(column, bins)], [charts.count_agg()], self.ctx)
            out = self.release(query, it.source)
            if not isinstance(out, R.Released):
                return out  # a review request (or nothing shown): the normal policy path
            chart = charts.histogram(out, column, bins, title=params.get("title"), notes=out.notes + extra,
                                     full_axis=span is not None)
        except BastionError as exc:
            raise exc.with_position(it.position) from None
        # The audit records the table actually drawn, with every note (including the range's source).
        self._note_release(R.Released(chart.table, out.withheld_groups, out.suppressed_cells, chart.notes))
        return chart

    def _hist_stats(self, frame: Frame, column: str, it: Interpreter) -> tuple[float, float]:
        """mean and std of `column`, released automatically or not at all (no review request for a chart)."""
        exprs = [Call("alias", Call(s, Col(column)), (s,)) for s in ("mean", "std")]
        stats = F.select(frame, exprs, self.ctx)
        decision = R.decide(stats)
        if not decision.auto:
            raise PlanError(f"the bins cannot be chosen from this frame's data ({decision.text()})",
                            hint="give them yourself: .plot.hist(column, bins=20, range=[lo, hi])")
        out = self.release(stats, it.source)
        hint = "give them yourself: .plot.hist(column, bins=20, range=[lo, hi])"
        if not isinstance(out, R.Released):  # the differencing check held the mean/std back
            raise PlanError(f"the mean and std of `{column}` that would choose the bins were held back: {out.reason}",
                            hint=hint)
        row = out.df.row(0, named=True) if out.df.height else None
        if row is None:
            raise PlanError("too few individuals to choose the bins from the data", hint=hint)
        if row["mean"] is None or row["std"] is None:
            raise PlanError(f"the mean or std of `{column}` is missing (too few values, or withheld)", hint=hint)
        return float(row["mean"]), float(row["std"])


def _naming_requests(error: BastionError, pending: list[R.ReviewPending]) -> BastionError:
    """`error`, also naming the review requests the cell filed before it failed.

    Why: a cell's variables are kept only when every statement ran, but a review
    request, once filed, exists (the owner sees it); without this the error
    would be all the analyst sees of it.
    """
    ids = ", ".join(p.request_id for p in pending)
    fetch = pending[0].request_id
    error.message += (f" (before this error, the cell filed review request {ids}: it stays pending for the owner; "
                      f'requests() lists it, fetch("{fetch}") shows it once approved)')
    return error


def _as_float(v: Any) -> float | None:
    return None if v is None else float(v)
