"""Every error Bastion shows a person, under one root.

Why one module: the kernel turns any `BastionError` into a single readable
message (what went wrong, where, what is allowed instead), and anything that is
*not* a `BastionError` into a generic failure that quotes nothing. Keeping the
hierarchy in one place makes that split impossible to get wrong by accident.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Position:
    """Where in the cell a problem sits (1-based line, 0-based column, as `ast`)."""

    line: int
    col: int
    end_col: int | None = None


class BastionError(Exception):
    """Root of every error meant for a person.

    `kind` is a short stable label tests and the audit log rely on; `hint`
    says what to do instead; `position` points into the cell when known.
    """

    kind = "error"
    title = "BastionError"  # the label shown in the notebook; subclasses name themselves
    # What to do instead when the raise site gave no hint: every error a person sees says
    # what is allowed, not only what went wrong.
    default_hint: str | None = None

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        position: Position | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.position = position

    def with_position(self, position: Position | None) -> "BastionError":
        """Attach a position if the error does not have one yet."""
        if self.position is None and position is not None:
            self.position = position
        return self

    def effective_hint(self) -> str | None:
        """The raise site's hint, else the kind's general advice."""
        return self.hint or self.default_hint

    def details(self) -> list[str]:
        """Extra lines between the excerpt and the hint (policy errors name their rule)."""
        return []

    def as_dict(self) -> dict[str, object]:
        """A structured form for tests and the audit log."""
        out: dict[str, object] = {"kind": self.kind, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        if self.position is not None:
            out["line"] = self.position.line
            out["col"] = self.position.col
        return out

    def render(self, source: str | None = None) -> str:
        """The text shown in the notebook, always in this shape::

            Title (line L, column C): what went wrong
                the offending line of the cell
                      ^^^^^ under the offending token
            Rule: ... (policy errors: the rule and the dataset it protects)
            Hint: what is allowed instead
        """
        head = f"{self.title}: {self.message}"
        lines = [head]
        if self.position is not None:
            lines[0] = f"{self.title} (line {self.position.line}, column {self.position.col + 1}): {self.message}"
            if source is not None:
                src_lines = source.splitlines()
                if 1 <= self.position.line <= len(src_lines):
                    text = src_lines[self.position.line - 1]
                    width = 1
                    if self.position.end_col is not None and self.position.end_col > self.position.col:
                        width = self.position.end_col - self.position.col
                    lines.append("    " + text)
                    lines.append("    " + " " * self.position.col + "^" * max(1, min(width, max(1, len(text) - self.position.col))))
        lines += self.details()
        hint = self.effective_hint()
        if hint:
            lines.append(f"Hint: {hint}")
        return "\n".join(lines)


class ConfigError(BastionError):
    """The owner's deployment file is malformed; the kernel refuses to start."""

    kind = "config"

    title = "ConfigError"


class GrammarError(BastionError):
    """The cell uses syntax, a name or a method outside the allow-lists."""

    kind = "grammar"

    title = "GrammarError"
    default_hint = "a cell holds assignments and allow-listed polars expressions; Tab completion lists them"


class PlanError(BastionError):
    """The cell is grammatical but does not make a valid query (unknown column, bad argument)."""

    kind = "plan"

    title = "QueryError"
    default_hint = "check the names and types with .columns and .schema; Shift+Tab on a method explains it"


class PolicyError(BastionError):
    """The owner's policy refuses this result outright.

    `rule` names the rule (masked-column, row-level, order-statistic, ...) and
    `dataset` the dataset it protects, so the message can say both.
    """

    kind = "policy"
    title = "PolicyError"

    def __init__(
        self,
        message: str,
        *,
        rule: str,
        dataset: str | None = None,
        hint: str | None = None,
        position: Position | None = None,
    ) -> None:
        super().__init__(message, hint=hint, position=position)
        self.rule = rule
        self.dataset = dataset

    def effective_hint(self) -> str | None:
        ds = self.dataset.split(",")[0] if self.dataset else None
        general = f'policy("{ds}") explains the rules' if ds else "policy(\"<dataset>\") explains the rules"
        return self.hint or general

    def details(self) -> list[str]:
        on = f" on dataset {self.dataset}" if self.dataset else ""
        return [f"Rule: {self.rule}{on} (the owner's policy); nothing was released"]

    def as_dict(self) -> dict[str, object]:
        out = super().as_dict()
        out["rule"] = self.rule
        if self.dataset:
            out["dataset"] = self.dataset
        return out


class ExecutionError(BastionError):
    """A query failed while running. The message never quotes data values."""

    kind = "execution"

    title = "ExecutionError"
    default_hint = "nothing was released and your variables are kept; simplify or aggregate the query and retry"


class LimitError(BastionError):
    """A named resource limit was exceeded (cell size, nesting, rows, time, memory)."""

    kind = "limit"

    title = "LimitError"
    default_hint = "split the work over several cells, or aggregate before collecting"


class ReviewError(BastionError):
    """A review request cannot be created, decided or fetched as asked."""

    kind = "review"

    title = "ReviewError"
    default_hint = "requests() lists your review requests and their status"


class AuditError(BastionError):
    """The audit log cannot be written or does not verify."""

    kind = "audit"

    title = "AuditError"


class RemoteError(BastionError):
    """An error raised in the query worker, carried back to the kernel by title and message.

    Why its own class: the worker sends errors as JSON (never pickled
    exceptions), so the kernel rebuilds one that renders the same way.
    """

    kind = "execution"
    title = "ExecutionError"

    def __init__(self, message: str, *, title: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        if title:
            self.title = title
