"""Review requests: results the policy held back until the data owner decides.

Why a package: the store (SQLite, shared by the kernel and the owner's CLI)
is separate from whatever widget or message flow the kernel builds on top.
"""

from .store import ReviewRequest, ReviewStore

__all__ = ["ReviewRequest", "ReviewStore"]
