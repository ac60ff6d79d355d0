"""The server side of the lock-down: Bastion is the only way into the data.

Why it exists: the grammar is worthless if the scientist can open a terminal,
start a Python kernel, or download the Parquet file. A stock Jupyter server
offers all three, so the owner runs it with this configuration, which:

* refuses to start any kernel but ``bastion`` (`BastionKernelManager`; the
  kernelspec allow-list alone only *hides* other kernels from listings);
* refuses every request it does not recognise (`BastionAuthorizer`, deny by
  default): raw files (``/files/``), non-notebook contents, nbconvert,
  terminals, the language-server proxy, server shutdown;
* drops kernel protocol messages the Bastion kernel does not need (debugger,
  subshells, usage) before they reach the kernel;
* turns off terminals, the language-server proxy, the pip-backed extension
  manager and JupyterLab's network calls, and disables and locks the
  JupyterLab plugins that offer terminals, consoles, downloads, export and
  the debugger (`PAGE_CONFIG`, enforced again at render time).

This module is imported by the Jupyter server's configuration only, never by
the kernel (it needs jupyter_server, which the kernel does not).

Deployment: ``bastion lab`` writes `write_config_dir` into a folder and starts
JupyterLab with it; ``labextension_config/`` in the repository holds the same
files for owners who run ``jupyter lab`` or JupyterHub themselves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import zmq
from jupyter_core.utils import ensure_async
from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.services.api.handlers import IdentityHandler
from jupyter_server.services.contents.handlers import (
    CheckpointsHandler,
    ContentsHandler,
    ModifyCheckpointsHandler,
    TrustNotebooksHandler,
)
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado import web

KERNEL_NAME = "bastion"

# What the Bastion kernel answers, and what a notebook needs to talk to it:
# execution, completion, inspection, comms (review widgets), interrupt and
# shutdown. Everything else (debug_request, create/delete/list_subshell_request,
# usage_request, and message types invented later) is dropped by the server.
ALLOWED_MESSAGE_TYPES: tuple[str, ...] = (
    "execute_request",
    "complete_request",
    "inspect_request",
    "is_complete_request",
    "kernel_info_request",
    "history_request",
    "comm_info_request",
    "comm_open",
    "comm_msg",
    "comm_close",
    "interrupt_request",
    "shutdown_request",
    "input_reply",
)

# JupyterLab plugins that would offer a way around the kernel, or make one
# look available: terminals, consoles (a console on the same kernel is
# harmless, but "console" must mean nothing here), downloads and "open in new
# browser tab" (both use /files/), export (nbconvert), the debugger, the
# extension and plugin managers, and the language-server client (the server
# side is off). Whole extensions where possible.
DISABLED_EXTENSIONS: tuple[str, ...] = (
    "@jupyterlab/terminal-extension",
    "@jupyterlab/console-extension",
    "@jupyterlab/notebook-extension:code-console",
    "@jupyterlab/inspector-extension:consoles",
    "@jupyterlab/tooltip-extension:consoles",
    "@jupyterlab/debugger-extension",
    "@jupyterlab/docmanager-extension:download",
    "@jupyterlab/docmanager-extension:open-browser-tab",
    "@jupyterlab/filebrowser-extension:download",
    "@jupyterlab/filebrowser-extension:open-browser-tab",
    "@jupyterlab/notebook-extension:export",
    "@jupyterlab/extensionmanager-extension",
    "@jupyterlab/pluginmanager-extension",
    "@jupyterlab/lsp-extension",
    "@jupyterlab/notebook-extension:language-server",
    "@jupyterlab/services-extension:terminal-manager",
    # Text, Python and Markdown files can be neither created nor opened here:
    # no launcher cards or menu entries that can only end in a 403.
    "@jupyterlab/fileeditor-extension",
    "@jupyterlab/tooltip-extension:files",  # needs the file editor
    "@jupyterlab/filebrowser-extension:create-new-language-file",
    "@jupyterlab/filebrowser-extension:open-url",
    "@jupyterlab/apputils-extension:announcements",  # no calls home for news or updates
)

# page_config.json: `disabledExtensions` as JupyterLab reads it, and
# `lockedExtensions` so the plugin manager's server API cannot toggle them
# (``LabApp.lock_all_plugins`` locks everything else as well).
PAGE_CONFIG: dict[str, Any] = {
    "disabledExtensions": {name: True for name in DISABLED_EXTENSIONS},
    "lockedExtensions": {name: True for name in DISABLED_EXTENSIONS},
}

# Owner's files that should not even appear in a folder listing (the
# authorizer already refuses to serve them; this keeps the file browser tidy
# and keeps audit file names, which carry user names, out of sight).
HIDDEN_GLOBS: tuple[str, ...] = (
    "__pycache__", "*.pyc", "*.pyo", ".DS_Store", "*~",  # jupyter_server's defaults
    "*.parquet", "*.csv", "*.toml", "*.db", "*.db-wal", "*.db-shm", "*.jsonl",
)

# Read-only APIs the JupyterLab front end needs; `contents` is decided per
# request, and every resource not named here is refused.
_SIMPLE_RULES: dict[str, frozenset[str]] = {
    "api": frozenset({"read"}),  # /api/status, /api/me
    "kernelspecs": frozenset({"read"}),
    "kernels": frozenset({"read", "write", "execute"}),  # starts go through BastionKernelManager
    "sessions": frozenset({"read", "write"}),  # so do the kernels a session starts
    "config": frozenset({"read"}),  # front-end config sections; writing them is refused
    "events": frozenset({"read", "execute"}),  # subscribe to the server's event stream; emitting is refused
    "csp": frozenset({"write"}),  # browsers POST content-security-policy reports
}

_REPORTED_CONTENTS = frozenset({"read", "write"})  # notebooks and folders, as far as /api/me is concerned

NOTEBOOK_SUFFIX = ".ipynb"
REFUSAL_HINT = "Work in a notebook on the Bastion kernel; data leaves the server only through its releases."


# --------------------------------------------------------------------------- kernels


class BastionKernelManager(AsyncMappingKernelManager):
    """Starts only the ``bastion`` kernel; any other name is a 403.

    `KernelSpecManager.allowed_kernelspecs` hides other kernels from the
    listing, but ``POST /api/kernels {"name": "python3"}`` would still start
    one; this is the check that stops it. Sessions, restarts and the REST API
    all start kernels through here.
    """

    async def start_kernel(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
        kernel_id = kwargs.get("kernel_id")
        existing = kernel_id is not None and kernel_id in self  # returns the running kernel
        name = kwargs.get("kernel_name") or self.default_kernel_name
        if not existing and name != KERNEL_NAME:
            self.log.warning("Bastion refused to start kernel %r: only %r is allowed", name, KERNEL_NAME)
            raise web.HTTPError(
                403, f"Bastion lock-down: only the {KERNEL_NAME!r} kernel may be started on this server, not {name!r}"
            )
        result: str = await super().start_kernel(*args, **kwargs)
        return result


# --------------------------------------------------------------------------- requests


def _path_arg(handler: Any) -> str:
    """The API path a contents request is about ("" is the root folder)."""
    raw = (getattr(handler, "path_kwargs", None) or {}).get("path", "") or ""
    return str(raw).strip("/")


def _is_notebook(path: object) -> bool:
    return isinstance(path, str) and path.endswith(NOTEBOOK_SUFFIX)


def _json_body(handler: Any) -> dict[str, Any]:
    body = getattr(handler.request, "body", b"") or b""
    if not body:
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


async def _is_dir(handler: Any, path: str) -> bool:
    if path == "":
        return True
    try:
        return bool(await ensure_async(handler.contents_manager.dir_exists(path)))
    except Exception:  # noqa: BLE001 - a path the manager cannot even look at is not a folder
        return False


async def _contents_allowed(handler: Any) -> tuple[bool, str]:
    """Notebooks and folder listings only; returns (allowed, why). Decided by
    handler class and HTTP method, which say more than the read/write action."""
    kind = type(handler)  # exact classes: a look-alike from an extension is refused
    path = _path_arg(handler)
    method = handler.request.method.upper()
    if kind is ContentsHandler:
        if method == "GET":
            if _is_notebook(path) or await _is_dir(handler, path):
                return True, "notebook or folder"
            return False, "only notebooks and folders can be read"
        body = _json_body(handler)
        if method == "PUT":  # save or upload
            if body.get("type") == "notebook" and _is_notebook(path) and "chunk" not in body:
                return True, "save a notebook"
            if body.get("type") == "directory" and not body.get("content"):
                return True, "create a folder"
            return False, "only notebooks can be saved"
        if method == "POST":  # new untitled, or copy
            copy_from = body.get("copy_from")
            if copy_from is not None:
                return (True, "copy a notebook") if _is_notebook(copy_from) else (False, "only notebooks can be copied")
            kind_new, ext = body.get("type"), body.get("ext", "")
            if kind_new == "notebook" and ext in ("", NOTEBOOK_SUFFIX):
                return True, "new notebook"
            if kind_new == "directory" and not ext:
                return True, "new folder"
            return False, "only notebooks and folders can be created"
        if method == "PATCH":  # rename
            if _is_notebook(path) and _is_notebook(body.get("path")):
                return True, "rename a notebook"
            return False, "only notebooks can be renamed, to notebook names"
        if method == "DELETE":
            if _is_notebook(path):
                return True, "delete a notebook"
            return False, "only notebooks can be deleted"
        return False, f"{method} is not allowed on contents"
    if kind in (CheckpointsHandler, ModifyCheckpointsHandler, TrustNotebooksHandler):
        if _is_notebook(path):
            return True, "notebook checkpoints and trust"
        return False, "checkpoints are for notebooks only"
    # FilesHandler (/files/), ViewHandler (/view/), anything added later.
    return False, "raw file access is disabled on this server"


class BastionAuthorizer(Authorizer):
    """Deny by default; allow what a notebook on the Bastion kernel needs.

    The server asks this for every request to its own APIs (contents, files,
    kernels, sessions, nbconvert, terminals, and extensions' APIs that use
    ``@authorized``). A refusal is a 403 whose message says what was refused
    and what is allowed instead; it is also logged.
    """

    async def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:  # type: ignore[override]
        if type(handler) is IdentityHandler:
            # /api/me?permissions=...: a report, not a request for the resource.
            return action in _SIMPLE_RULES.get(resource, _REPORTED_CONTENTS if resource == "contents" else frozenset())
        if resource == "contents":
            allowed, why = await _contents_allowed(handler)
        elif action in _SIMPLE_RULES.get(resource, frozenset()):
            allowed, why = True, "allowed"
        else:
            allowed, why = False, f"{action} access to {resource} is disabled on this server"
        if allowed:
            return True
        self.log.warning("Bastion refused %s %s (%s on %s): %s",
                         handler.request.method, handler.request.path, action, resource, why)
        raise web.HTTPError(403, f"Bastion lock-down: {why}. {REFUSAL_HINT}")


# --------------------------------------------------------------------------- page config


def enforce_page_config(handler: Any, page_config: dict[str, Any]) -> dict[str, Any]:
    """``page_config_hook``: re-apply `PAGE_CONFIG` after every other source.

    JupyterLab merges page_config.json from several folders, including the
    user's own, and hands the front end lists of names; this runs last, so no
    file can re-enable a disabled plugin.
    """
    del handler
    for key in ("disabledExtensions", "lockedExtensions"):
        current = page_config.get(key) or []
        names = [k for k, on in current.items() if on] if isinstance(current, dict) else list(current)
        names += [name for name, on in PAGE_CONFIG[key].items() if on and name not in names]
        page_config[key] = names
    page_config["terminalsAvailable"] = False
    return page_config


# --------------------------------------------------------------------------- configuration


def configure(c: Any) -> None:
    """Apply the lock-down to a traitlets config object (`c` in a config file)."""
    c.ServerApp.terminals_enabled = False
    c.ServerApp.kernel_manager_class = f"{__name__}.BastionKernelManager"
    c.ServerApp.authorizer_class = f"{__name__}.BastionAuthorizer"
    c.ServerApp.jpserver_extensions = {"jupyter_lsp": False, "jupyter_server_terminals": False}
    c.ServerApp.tornado_settings = {"page_config_hook": enforce_page_config}
    c.KernelSpecManager.allowed_kernelspecs = {KERNEL_NAME}
    c.KernelSpecManager.ensure_native_kernel = False
    c.MappingKernelManager.default_kernel_name = KERNEL_NAME
    c.MappingKernelManager.allowed_message_types = list(ALLOWED_MESSAGE_TYPES)
    if zmq.has("curve"):
        # CurveZMQ between server and kernel when the kernelspec declares
        # ``metadata.supported_encryption = ["curve"]``: without it any local
        # user can subscribe to a kernel's iopub port and read its outputs
        # (message signing authenticates requests, it does not hide replies).
        c.MappingKernelManager.transport_encryption = "auto"
    c.ContentsManager.allow_hidden = False
    c.ContentsManager.hide_globs = list(HIDDEN_GLOBS)
    c.LabApp.extension_manager = "readonly"
    c.LabApp.lock_all_plugins = True
    c.LabApp.news_url = None
    c.LabApp.check_for_updates_class = "jupyterlab.handlers.announcements.NeverCheckForUpdate"


SERVER_CONFIG_NAME = "jupyter_server_config.py"
PAGE_CONFIG_PATH = Path("labconfig") / "page_config.json"

_SERVER_CONFIG_TEXT = '''\
"""Bastion lock-down for Jupyter Server / JupyterLab (written by `bastion lab`).

See bastion_kernel/lockdown.py for what it does and why.
"""
from bastion_kernel.lockdown import configure

configure(c)  # noqa: F821 - `c` is provided by the traitlets config loader
'''


def page_config_text() -> str:
    """The page_config.json document, as shipped in labextension_config/."""
    return json.dumps(PAGE_CONFIG, indent=2) + "\n"


def write_config_dir(dest: Path) -> Path:
    """Write a Jupyter config folder holding the lock-down; returns `dest`.

    ``bastion lab`` passes ``dest/jupyter_server_config.py`` as ``--config``
    (so the server reads no other jupyter_server_config file, not even the
    user's). ``dest/labconfig/page_config.json`` is read when ``dest`` is on
    ``JUPYTER_CONFIG_PATH``; `enforce_page_config` applies it regardless.
    """
    dest = Path(dest)
    (dest / PAGE_CONFIG_PATH).parent.mkdir(parents=True, exist_ok=True)
    _write_if_changed(dest / SERVER_CONFIG_NAME, _SERVER_CONFIG_TEXT)
    _write_if_changed(dest / PAGE_CONFIG_PATH, page_config_text())
    return dest


def _write_if_changed(path: Path, text: str) -> None:
    """Atomic replace, skipped when identical (two `bastion lab` may share a folder)."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
