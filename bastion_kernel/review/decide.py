"""An owner's decision on a review request, recorded where the request was made.

Why one function for the CLI and the review panel: a decision is only
trustworthy if it is always audited the same way, whoever takes it. The
requesting session's log is attached *before* deciding, so a missing log
stops the decision; if the append fails afterwards the decision stands and
the error says so (the store is the source of truth for the status).
"""

from __future__ import annotations

from ..audit import AuditLog
from ..errors import AuditError, ReviewError
from .store import ReviewRequest, ReviewStore

DECISIONS = ("approved", "rejected")


def decide(store: ReviewStore, request_id: str, decision: str, *, by: str,
           reason: str | None = None) -> ReviewRequest:
    """Approve or reject `request_id` as `by`, and append a ``review_decision`` record.

    Raises `ReviewError` for an unknown or already-decided id (never a silent no-op).
    """
    if decision not in DECISIONS:
        raise ReviewError(f"unknown decision {decision!r}", hint="approved or rejected")
    req = store.get(request_id)
    log = AuditLog.attach(store.state_dir, req.session_id)
    if decision == "approved":
        done = store.approve(request_id, by=by)
    else:
        done = store.reject(request_id, by=by, reason=reason or "")
    try:
        log.record("review_decision", request_id=done.id, decision=decision, by=by, reason=done.decision_reason,
                   decided_at=done.decided_at)
    except AuditError as exc:
        raise AuditError(f"{done.id} was {decision}, but the audit record could not be written: {exc.message}") from None
    return done
