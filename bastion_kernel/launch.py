"""Start the kernel process: check the deployment file, start the query worker, then ipykernel.

Why the worker starts before ipykernel is even imported: importing ipykernel
takes about 0.45 s on a two-core machine and the worker's own start-up
(importing polars, reading the datasets' schemas) about as long. Started in
this order they overlap, and the first cell no longer waits for both in turn
(issue 8: start-up no slower than the IPython kernel's).
"""

from __future__ import annotations

import re
import sys
import uuid

from . import config
from .errors import ConfigError
from .worker import QueryWorker

_CONNECTION_FILE = re.compile(r"kernel-([0-9A-Za-z-]{1,64})\.json$")


def kernel_id(argv: list[str]) -> str:
    """The Jupyter server's id for this kernel (its connection file is ``kernel-<id>.json``), for the audit.

    A random id when the file is named otherwise: it only labels the audit session.
    """
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "-f" and i + 1 < len(argv) else arg[3:] if arg.startswith("-f=") else ""
        m = _CONNECTION_FILE.search(path)
        if m:
            return m.group(1)
    return uuid.uuid4().hex


def main() -> None:
    """A broken deployment file stops the kernel before it accepts any cell (exit status 2)."""
    try:
        deployment = config.load(check_data=False)  # the file's structure now; the data's columns in the worker
    except ConfigError as exc:
        print(f"Bastion cannot start: {exc.render()}", file=sys.stderr)
        raise SystemExit(2) from None
    worker = QueryWorker(kernel_id(sys.argv[1:]), deployment.limits)
    from .kernel import launch  # ipykernel: imported while the worker starts

    launch(worker)
