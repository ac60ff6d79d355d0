"""One user's session: variables, datasets they may see, releases, audit.

Why separate from the kernel: the kernel class speaks the Jupyter protocol;
everything a cell *means* happens here, so it can be driven the same way by
the kernel, the tests and the benchmarks. A cell either completes or changes
nothing: assignments are staged and committed only when every statement ran.
"""

from __future__ import annotations

import itertools
import os
import uuid
from dataclasses import dataclass, field
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
from .review import ReviewStore


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


@dataclass(frozen=True)
class Message:
    """Plain text the session wants shown (lists, explanations)."""

    text: str


class Session:
    def __init__(self, deployment: Deployment, *, user: str | None = None, kernel_id: str | None = None,
                 notebook_path: str | None = None) -> None:
        self.deployment = deployment
        self.user = user or current_user()
        self.limits = deployment.limits
        self.visible_datasets = deployment.datasets_for(self.user)
        self.namespace: dict[str, Any] = {}
        self.ctx = F.Ctx(itertools.count())
        self.store = ReviewStore(deployment.state_dir)
        self.audit = AuditLog.open_session(
            deployment.state_dir, user=self.user, kernel_id=kernel_id or uuid.uuid4().hex,
            notebook_path=notebook_path or os.environ.get("JPY_SESSION_NAME"), config_digest=deployment.digest,
        )
        self._last: CellResult | None = None

    # ------------------------------------------------------------ cells
    def execute(self, source: str) -> CellResult:
        """Run one cell; never raises for user mistakes (the error is in the result)."""
        self._last = CellResult()
        try:
            tree = parse_cell(source, self.limits)
            it = Interpreter(self, source)
            value = it.run(tree)
            result = self._last
            result.value = value
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
        self.audit.record(
            "cell", source=source, outcome=result.outcome, reason=result.reason, rows=result.rows,
            columns=result.columns, output_digest=result.output_digest,
        )
        return result

    # ------------------------------------------------------------ releases
    def release(self, frame: Frame, source: str) -> Any:
        decision = R.decide(frame)
        assert self._last is not None
        if decision.auto:
            released = R.release_aggregate(frame, self.limits)
            self._note_release(released)
            return released
        if decision.on_violation == "reject":
            self._last.outcome = "refused"
            raise R.refusal(decision)
        snap = R.snapshot(frame, self.limits)
        dataset = ",".join(sorted(frame.datasets))
        reason = decision.text()
        rid = self.store.create(user=self.user, dataset=dataset, session_id=self.audit.session_id, cell=source,
                                reason=reason, snapshot=snap)
        self.audit.record("review_request", request_id=rid, dataset=dataset, reason=reason)
        self._last.outcome, self._last.reason = "review", reason
        return R.ReviewPending(rid, reason, dataset)

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
            df = self.store.fetch(p["request_id"], user=self.user)
            self.audit.record("fetch", request_id=p["request_id"])
            released = R.Released(df, source="review", request_id=p["request_id"],
                                  notes=(f"released by the owner after review of {p['request_id']}",))
            self._note_release(released)
            return released
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
                    "on_violation": [d.on_violation for d in ds.values()],
                },
                schema={"dataset": pl.String, "privacy_unit": pl.String, "masked": pl.String,
                        "min_group_size": pl.Int64, "on_violation": pl.String},
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

    def explain_policy(self, name: str, it: Interpreter) -> str:
        ds = self.visible_datasets.get(name)
        if ds is None:
            raise PlanError(f"no dataset `{name}`", hint="datasets() lists yours", position=it.position)
        unit = f"`{ds.privacy_unit}`" if ds.privacy_unit else "each row"
        masked = ", ".join(f"`{m}`" for m in ds.masked) or "none"
        action = "sent to the owner for review" if ds.on_violation == "review" else "refused"
        return (
            f"Dataset {name}: one individual is {unit}.\n"
            f"- Aggregates (count, sum, mean, n_unique, std, var) are released at once when every group holds at "
            f"least {ds.min_group_size} distinct individuals; smaller groups are withheld.\n"
            f"- Conditions inside an aggregate must leave at least {ds.min_group_size} individuals on each side, "
            "or that value is suppressed.\n"
            f"- Masked columns: {masked}. They show only as '*' and cannot be filtered, grouped, joined, sorted or "
            "aggregated on.\n"
            f"- Row-level results, min/max/median/quantiles/first/last and list aggregates are {action}."
        )

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
            return R.Released(df.head(n) if name == "head" else df.tail(n), notes=value.notes, source=value.source)
        if name == "sort":
            p = it.bind((Param("by", "strs", True), Param("descending", "bool")), args, kwargs, ".sort()")
            for c in p["by"]:
                if c not in df.columns:
                    raise PlanError(f"no column `{c}` in this result", position=it.position)
            return R.Released(df.sort(p["by"], descending=p.get("descending", False)), notes=value.notes,
                              source=value.source)
        if name == "to_dicts":
            it.bind((), args, kwargs, ".to_dicts()")
            return df.to_dicts()
        raise AssertionError(name)

    def close(self) -> None:
        self.audit.close()


def _as_float(v: Any) -> float | None:
    return None if v is None else float(v)
