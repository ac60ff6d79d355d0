"""The attack suite's arena: planted data, a deployment, a real kernel, and one `attack` check.

Why one check for every attack: an attack is stopped only if four things hold
at once, and forgetting one of them in one test is how a leak slips through:

1. the outcome is exactly the expected one (refused with the right error,
   withheld, suppressed, or a review request; never an automatic release of
   what the attack went for);
2. no canary value (nor any masked value) appears in anything the client
   received for the cell: shell reply, iopub messages, widget/comm state,
   including messages that arrive after the cell (the review widget's
   updates), except what the cell itself typed;
3. the kernel still answers a cell afterwards;
4. no file appeared or changed in the data folder, the kernel's working
   folder, the state folder (its own database and audit files aside) or the
   folder file attacks aim at.

Kernels are module-scoped (a start costs about two seconds): each module has
its own deployment folder, so review requests and release histories never mix
between modules. The kernel's working directory is a fresh folder, so a
relative path in an attack ("x.parquet") lands somewhere the check looks.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import KernelManager
from jupyter_client.blocking.client import BlockingKernelClient

from conftest import TIMEOUT, all_text, execute, run_kernel

from bastion_kernel.review import ReviewStore

from .dataset import Dataset, generate, leaked, write_deployment

REVIEW_RE = re.compile(r"Review requested: (R[0-9a-f]{8})\b")
POSITION_RE = re.compile(r"\(line \d+, column \d+\)")
ALIVE_CELL = "len([1, 2, 3])"
REFUSALS = ("GrammarError", "QueryError", "PolicyError", "LimitError")
# What a leaked Python traceback or polars error would look like in a message.
TRACEBACK_MARKERS = ("Traceback (most recent", 'File "/', "site-packages", "Error originated in expression",
                     "This error occurred", "panicked at")
# Placeholder for the folder file attacks aim at (keeps test ids free of tmp paths).
TARGET = "TARGET"


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="session")
def sec_data(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return generate(tmp_path_factory.mktemp("security_data"))


# --------------------------------------------------------------------------- outcomes


@dataclass
class Outcome:
    """Everything the client received for one cell."""

    code: str
    reply: dict[str, Any]
    msgs: list[dict[str, Any]]
    late: list[dict[str, Any]] = field(default_factory=list)  # iopub messages of other parents read meanwhile

    @property
    def status(self) -> str:
        return str(self.reply["status"])

    @property
    def ename(self) -> str | None:
        return self.reply.get("ename")

    @property
    def evalue(self) -> str:
        return str(self.reply.get("evalue", ""))

    @property
    def shown(self) -> str:
        """The text/plain of whatever the cell displayed (result and display_data)."""
        out = []
        for m in self.msgs:
            if m["msg_type"] in ("execute_result", "display_data", "update_display_data"):
                out.append(str(m["content"]["data"].get("text/plain", "")))
        return "\n".join(out)

    @property
    def text(self) -> str:
        late = json.dumps([{"type": m["msg_type"], "content": m["content"], "metadata": m.get("metadata", {})}
                           for m in self.late], ensure_ascii=False, default=str)
        return all_text(self.msgs, self.reply) + late

    @property
    def review_id(self) -> str | None:
        m = REVIEW_RE.search(self.shown)
        return m.group(1) if m else None

    def describe(self) -> str:
        kinds = [m["msg_type"] for m in self.msgs]
        return f"{self.code!r}: status={self.status} ename={self.ename} evalue={self.evalue[:400]!r} " \
               f"shown={self.shown[:400]!r} msgs={kinds}"


# --------------------------------------------------------------------------- the arena


@dataclass
class Arena:
    km: KernelManager
    kc: BlockingKernelClient
    data: Dataset
    config: Path
    state: Path
    cwd: Path
    target: Path
    mode: str  # the deployment's on_violation: "review" | "reject"
    cells: list[str] = field(default_factory=list)
    late: list[dict[str, Any]] = field(default_factory=list)

    # ---------------------------------------------------------------- running cells
    def code(self, text: str) -> str:
        return text.replace(TARGET, str(self.target))

    def run(self, code: str, *, timeout: float = TIMEOUT, settle: float = 0.0) -> Outcome:
        """Execute one cell; also read (for `settle` seconds) what arrives for other requests."""
        code = self.code(code)
        self.cells.append(code)
        reply, msgs = execute(self.kc, code, timeout=timeout)
        out = Outcome(code, reply, msgs)
        out.late = self.drain(settle)
        return out

    def drain(self, seconds: float) -> list[dict[str, Any]]:
        """Read iopub for `seconds` (whatever the parent): widget updates arrive on their own."""
        got: list[dict[str, Any]] = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                got.append(self.kc.get_iopub_msg(timeout=left))
            except queue.Empty:
                break
        self.late += got
        return got

    def assert_alive(self) -> None:
        assert self.km.is_alive(), "the kernel process died"
        reply, msgs = execute(self.kc, ALIVE_CELL)
        assert reply["status"] == "ok", f"the kernel no longer answers: {reply}"
        results = [m["content"]["data"]["text/plain"] for m in msgs if m["msg_type"] == "execute_result"]
        assert results == ["3"], f"the kernel answers strangely: {results}"

    # ---------------------------------------------------------------- files
    def files(self) -> dict[str, tuple[int, int]]:
        """Every file and folder under the watched folders: path -> (size, mtime) (-1 for folders)."""
        out: dict[str, tuple[int, int]] = {}
        for label, root in (("data", self.data.data), ("cwd", self.cwd), ("state", self.state),
                            ("target", self.target)):
            if not root.exists():
                out[f"{label}:(missing)"] = (-1, 0)
                continue
            for p in sorted(root.rglob("*")):
                rel = p.relative_to(root)
                if label == "state" and _expected_state_file(rel):
                    continue
                st = p.lstat()
                out[f"{label}:{rel}"] = (-1, 0) if p.is_dir() else (st.st_size, st.st_mtime_ns)
        return out

    # ---------------------------------------------------------------- the check
    def attack(self, code: str, expect: str, *, ename: str | None = None, rule: str | None = None,
               timeout: float = TIMEOUT) -> Outcome:
        """Run an attack and check the four properties (see the module docstring).

        `expect`: "refused" (with `ename`), "review", "violation" (review, or a
        PolicyError when the deployment rejects), "withheld", "suppressed",
        or "released" (a harmless aggregate: the attack gained nothing).
        """
        before = self.files()
        out = self.run(code, timeout=timeout)
        if out.review_id:  # the review widget may update itself right away
            out.late = self.drain(0.1)
        if expect == "violation":
            expect, ename = ("review", None) if self.mode == "review" else ("refused", "PolicyError")
        check_outcome(self, out, expect, ename=ename, rule=rule)
        assert_no_leak(self, out)
        assert_no_traceback(out.text)
        self.assert_alive()
        assert self.files() == before, f"files changed: {_diff(before, self.files())}"
        return out


def check_outcome(arena: Arena, out: Outcome, expect: str, *, ename: str | None = None,
                  rule: str | None = None) -> None:
    errors = [m["content"] for m in out.msgs if m["msg_type"] == "error"]
    results = [m for m in out.msgs if m["msg_type"] == "execute_result"]
    if expect == "refused":
        assert ename in REFUSALS, f"say which refusal to expect, not {ename!r}"
        assert out.status == "error", f"not refused: {out.describe()}"
        assert out.ename == ename, f"expected {ename}: {out.describe()}"
        assert len(errors) == 1 and errors[0]["ename"] == ename, out.describe()
        assert not results, out.describe()
        assert "Hint:" in out.evalue, f"a refusal says what is allowed instead: {out.describe()}"
        if ename == "GrammarError":
            assert POSITION_RE.search(out.evalue), f"a grammar refusal names its position: {out.describe()}"
        if rule is not None:
            assert f"Rule: {rule}" in out.evalue, f"expected rule {rule}: {out.describe()}"
        return
    assert out.status == "ok", f"expected {expect}: {out.describe()}"
    assert not errors, out.describe()
    if expect == "review":
        rid = out.review_id
        assert rid, f"expected a review request: {out.describe()}"
        req = ReviewStore(arena.state).get(rid)
        assert req.status == "pending", f"{rid} is {req.status}: never decided automatically"
        snap = ReviewStore(arena.state).snapshot(rid)
        for col in ("name", "ssn"):  # what the owner would release shows masked columns as '*' only
            if col in snap.columns and snap.height:
                assert set(snap.get_column(col).to_list()) == {"*"}, f"{col} unmasked in the snapshot of {rid}"
        return
    assert out.review_id is None, f"expected {expect}, got a review request: {out.describe()}"
    assert len(results) == 1, f"expected one result: {out.describe()}"
    if expect == "withheld":
        assert "are withheld, if there are any" in out.shown, f"expected the canary's group withheld: {out.describe()}"
    elif expect == "suppressed":
        assert "were suppressed" in out.shown, f"expected the value suppressed: {out.describe()}"
    elif expect != "released":
        raise AssertionError(f"unknown expectation {expect!r}")


def assert_no_leak(arena: Arena, out: Outcome) -> None:
    found = leaked(out.text, out.code, arena.data.masked_values)
    assert not found, f"canary or masked values reached the client: {found[:5]} in {out.describe()}"


def assert_no_traceback(text: str) -> None:
    for marker in TRACEBACK_MARKERS:
        assert marker not in text, f"{marker!r} reached the client: {text[:1500]}"


def assert_no_late_leak(arena: Arena, seconds: float = 1.5) -> None:
    """Everything that arrived after its cell (review widget updates) over the whole module."""
    arena.drain(seconds)
    text = json.dumps([m["content"] for m in arena.late], ensure_ascii=False, default=str)
    typed = "\n".join(arena.cells)
    found = leaked(text, typed, arena.data.masked_values)
    assert not found, f"a late message carried {found[:5]}"
    assert_no_traceback(text)


# What the kernel itself keeps in state_dir (names it chooses, never a user): the review store, the
# release history, the per-unit profiles of the differencing check, and the audit log.
KERNEL_STATE = ("bastion.db", "history.db", "unit_profiles.json")


def _expected_state_file(rel: Path) -> bool:
    """What the kernel itself keeps in state_dir: its databases and the audit log."""
    top = rel.parts[0]
    if top.startswith(KERNEL_STATE):
        return True
    return top == "audit" and (len(rel.parts) == 1 or rel.suffix == ".jsonl")


def _diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    added = sorted(set(b) - set(a))
    gone = sorted(set(a) - set(b))
    changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    return f"added {added}, removed {gone}, changed {changed}"


# --------------------------------------------------------------------------- kernels


@contextlib.contextmanager
def open_arena(data: Dataset, folder: Path, mode: str = "review", *, extra: str = "",
               argv_prefix: list[str] | None = None, kill: bool = False) -> Iterator[Arena]:
    config = write_deployment(data, folder / "deployment", on_violation=mode, extra=extra)
    cwd = folder / "cwd"
    target = folder / "target"
    cwd.mkdir()
    target.mkdir()
    with run_kernel(config, "mallory", cwd=cwd, argv_prefix=argv_prefix, kill=kill) as (km, kc):
        yield Arena(km, kc, data, config, config.parent / "state", cwd, target, mode)


@pytest.fixture(scope="module")
def arena(sec_data: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    """A kernel on the deployment that sends violations to review."""
    with open_arena(sec_data, tmp_path_factory.mktemp("arena"), "review") as a:
        yield a


@pytest.fixture(scope="module")
def reject_arena(sec_data: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    """A kernel on the same data whose deployment rejects what would otherwise go to review."""
    with open_arena(sec_data, tmp_path_factory.mktemp("arena_reject"), "reject") as a:
        yield a


def violations(table: list) -> list:
    """The rows of a (code, expect) case table that need a decision: refused when the deployment rejects."""
    return [p for p in table if p.values[1] == "violation"]
