"""The Jupyter protocol glue: hands each request to the `Session` and replies.

Why so thin: everything a cell means lives in `session.py`; this class only
translates between Jupyter messages and session calls, refuses the protocol
features a restricted kernel must not offer (subshells run cells on other
threads; the debugger executes arbitrary code), and never lets an unexpected
exception kill the kernel or quote data.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

from ipykernel.kernelapp import IPKernelApp
from ipykernel.kernelbase import Kernel

from . import __version__, assist, config
from .display import bundle
from .errors import BastionError, ConfigError
from .session import Session


class BastionKernel(Kernel):
    implementation = "bastion"
    implementation_version = __version__
    banner = "Bastion: polars queries on data you cannot see; results pass the owner's privacy policy."
    language_info = {
        "name": "python",
        "mimetype": "text/x-python",
        "file_extension": ".py",
        "pygments_lexer": "ipython3",
        "codemirror_mode": {"name": "python", "version": 3},
    }
    help_links = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        deployment = config.load()
        self.bastion = Session(deployment, kernel_id=self.ident)

    @property
    def kernel_info(self) -> dict[str, Any]:
        info = dict(super().kernel_info)
        info["supported_features"] = []  # no subshells, no debugger
        return info

    # ------------------------------------------------------------ execution
    async def do_execute(  # type: ignore[override]
        self, code: str, silent: bool, store_history: bool = True, user_expressions: dict | None = None,
        allow_stdin: bool = False, *, cell_meta: Any = None, cell_id: Any = None,
    ) -> dict[str, Any]:
        if not code.strip():
            return self._ok()
        try:
            result = self.bastion.execute(code)
        except Exception:  # noqa: BLE001 - a bug in Bastion must not kill the kernel or quote data
            self.log.error("internal error:\n%s", traceback.format_exc())
            return self._error("InternalError", "Bastion hit an internal error; nothing was released. "
                               "Your variables are kept. The owner's logs have the details.", silent)
        if result.error is not None:
            return self._error(result.error.title, result.error.render(code), silent)
        data = bundle(result.value)
        if data is not None and not silent:
            self.send_response(self.iopub_socket, "execute_result",
                               {"execution_count": self.execution_count, "data": data, "metadata": {}})
        return self._ok()

    def _ok(self) -> dict[str, Any]:
        return {"status": "ok", "execution_count": self.execution_count, "payload": [], "user_expressions": {}}

    def _error(self, ename: str, text: str, silent: bool) -> dict[str, Any]:
        content = {"ename": ename, "evalue": text, "traceback": [text]}
        if not silent:
            self.send_response(self.iopub_socket, "error", content)
        return {"status": "error", "execution_count": self.execution_count, **content}

    async def do_is_complete(self, code: str) -> dict[str, Any]:  # type: ignore[override]
        import codeop

        try:
            compiled = codeop.compile_command(code, symbol="exec")
        except (SyntaxError, ValueError, OverflowError):
            return {"status": "invalid"}
        if compiled is None:
            return {"status": "incomplete", "indent": ""}
        return {"status": "complete"}

    # ------------------------------------------------------------ completion and inspection
    # Static text analysis only (see assist.py): the cell is never run and no data is read.
    async def do_complete(self, code: str, cursor_pos: int | None) -> dict[str, Any]:  # type: ignore[override]
        pos = len(code) if cursor_pos is None else cursor_pos
        try:
            matches, start, end = assist.complete(code, pos, self.bastion)
        except Exception:  # noqa: BLE001 - a suggestion is never worth an error
            self.log.warning("completion failed:\n%s", traceback.format_exc())
            matches, start, end = [], pos, pos
        return {"status": "ok", "matches": matches, "cursor_start": start, "cursor_end": end, "metadata": {}}

    async def do_inspect(  # type: ignore[override]
        self, code: str, cursor_pos: int | None, detail_level: int = 0, omit_sections: Any = (),
    ) -> dict[str, Any]:
        pos = len(code) if cursor_pos is None else cursor_pos
        try:
            text = assist.inspect(code, pos, self.bastion)
        except Exception:  # noqa: BLE001
            self.log.warning("inspection failed:\n%s", traceback.format_exc())
            text = None
        if text is None:
            return {"status": "ok", "found": False, "data": {}, "metadata": {}}
        return {"status": "ok", "found": True, "data": {"text/plain": text}, "metadata": {}}

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:  # type: ignore[override]
        try:
            self.bastion.close()
        except BastionError:
            pass
        return {"status": "ok", "restart": restart}

    # ------------------------------------------------------------ refused protocol features
    async def create_subshell_request(self, socket: Any, ident: Any, parent: Any) -> None:  # type: ignore[override]
        self._refuse(socket, ident, parent, "create_subshell_reply", "subshells are not available in Bastion")

    async def delete_subshell_request(self, socket: Any, ident: Any, parent: Any) -> None:  # type: ignore[override]
        self._refuse(socket, ident, parent, "delete_subshell_reply", "subshells are not available in Bastion")

    async def list_subshell_request(self, socket: Any, ident: Any, parent: Any) -> None:  # type: ignore[override]
        self._refuse(socket, ident, parent, "list_subshell_reply", "subshells are not available in Bastion")

    async def debug_request(self, socket: Any, ident: Any, parent: Any) -> None:  # type: ignore[override]
        self._refuse(socket, ident, parent, "debug_reply", "the debugger is not available in Bastion")

    def _refuse(self, socket: Any, ident: Any, parent: Any, reply_type: str, why: str) -> None:
        content = {"status": "error", "ename": "NotAvailable", "evalue": why, "traceback": []}
        self.session.send(socket, reply_type, content, parent, ident)


def main() -> None:
    """Start the kernel; a broken deployment file stops it before it accepts any cell."""
    try:
        config.load()
    except ConfigError as exc:
        print(f"Bastion cannot start: {exc.render()}", file=sys.stderr)
        raise SystemExit(2) from None
    # outstream_class=None keeps stdout/stderr (and ipykernel's own loggers) out of the notebook.
    IPKernelApp.launch_instance(kernel_class=BastionKernel, outstream_class=None)
