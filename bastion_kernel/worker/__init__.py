"""The query worker: a child process of the kernel where cells run and can be killed.

`client.QueryWorker` is the kernel's side, `server` the worker's, `wire` the
JSON-and-bytes framing between them (no pickle in either direction).
"""

from .client import QueryWorker

__all__ = ["QueryWorker"]
