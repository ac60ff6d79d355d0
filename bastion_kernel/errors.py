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
        """The text shown in the notebook: position, excerpt with a caret, hint."""
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
        if self.hint:
            lines.append(f"Hint: {self.hint}")
        return "\n".join(lines)


class ConfigError(BastionError):
    """The owner's deployment file is malformed; the kernel refuses to start."""

    kind = "config"

    title = "ConfigError"


class GrammarError(BastionError):
    """The cell uses syntax, a name or a method outside the allow-lists."""

    kind = "grammar"

    title = "GrammarError"


class PlanError(BastionError):
    """The cell is grammatical but does not make a valid query (unknown column, bad argument)."""

    kind = "plan"

    title = "QueryError"


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


class LimitError(BastionError):
    """A named resource limit was exceeded (cell size, nesting, rows, time, memory)."""

    kind = "limit"

    title = "LimitError"


class ReviewError(BastionError):
    """A review request cannot be created, decided or fetched as asked."""

    kind = "review"

    title = "ReviewError"


class AuditError(BastionError):
    """The audit log cannot be written or does not verify."""

    kind = "audit"

    title = "AuditError"
