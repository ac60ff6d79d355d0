"""Review requests: results the policy held back until the data owner decides.

Why a package: the store (SQLite, shared by the kernel and the owner's CLI)
is separate from the decision flow (`decide`, audited the same way from the
CLI and the panel) and from the widgets built on top (`widgets` in the
scientist's kernel, `panel` in the owner's own JupyterLab). The widget
modules import ipywidgets lazily, so the kernel and the CLI start without it.
"""

from typing import Any

from .decide import decide
from .store import ReviewRequest, ReviewStore

__all__ = ["ReviewPanel", "ReviewRequest", "ReviewStore", "decide"]


def __getattr__(name: str) -> Any:
    if name == "ReviewPanel":  # ipywidgets only when the owner asks for the panel
        from .panel import ReviewPanel

        return ReviewPanel
    raise AttributeError(name)
