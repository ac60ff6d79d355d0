"""The query worker: a child process of the kernel where cells run and can be killed.

`client.QueryWorker` is the kernel's side, `server` the worker's, `wire` the
JSON-and-bytes framing between them (no pickle in either direction).
"""

from typing import Any

__all__ = ["QueryWorker"]


def __getattr__(name: str) -> Any:
    # Imported on use: the worker process itself (`python -m bastion_kernel.worker`) never needs the client.
    if name == "QueryWorker":
        from .client import QueryWorker

        return QueryWorker
    raise AttributeError(name)
