"""The Jupyter protocol glue: hands each request to the query worker and replies.

Why so thin: everything a cell means lives in `session.py`, which runs in a
child process (`worker/`) so that a query past its time limit, stopped from
JupyterLab, or over its memory cap can be killed without killing the kernel
or losing the session's variables. This class only translates between
Jupyter messages and worker requests, shows review requests as live widgets
(comms live here, in the process JupyterLab talks to), refuses the protocol
features a restricted kernel must not offer (subshells run cells on other
threads; the debugger executes arbitrary code), and never lets an unexpected
exception kill the kernel or quote data.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

from ipykernel.kernelapp import IPKernelApp
from ipykernel.kernelbase import Kernel
from traitlets import Float

from . import __version__, config
from .errors import BastionError
from .worker import QueryWorker

if TYPE_CHECKING:
    from .review.widgets import Watcher


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
    # ipykernel sleeps 0.5 ms before every execute_reply so that stdout written by the cell reaches
    # the client first; a Bastion cell runs in the query worker and its output comes back in the
    # reply's bundle, while this process's stdout never goes to the notebook (`launch`). 8% of a
    # trivial cell's round trip.
    _execute_sleep = Float(0.0)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        deployment = config.load(check_data=False)  # the worker reads the schemas (this process never imports polars)
        worker = _EARLY.pop("worker", None)  # started by `launch.main` while ipykernel was starting
        self.worker = worker if worker is not None else QueryWorker(self.ident, deployment.limits)
        self._install_comms()
        self._state_dir = deployment.state_dir
        self._reviews: Watcher | None = None

    @property
    def reviews(self) -> Watcher:
        """The live review widgets, made with the first review request: their imports (the review
        store, the release types) are not worth delaying every kernel's start-up for."""
        if self._reviews is None:
            from .review import ReviewRequest, ReviewStore
            from .review.widgets import Watcher

            worker = self.worker
            self._reviews = Watcher(ReviewStore(self._state_dir), worker.fetch_html,
                                    lambda rid: ReviewRequest.from_dict(worker.cancel(rid)))
        return self._reviews

    def _show_request(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The live widget's bundle for a review request the worker reported."""
        from .release import ReviewPending

        return self.reviews.show(ReviewPending(**fields))

    def _install_comms(self) -> None:
        """Route comm messages, so widgets (and their button clicks) reach the kernel.

        A wrapper kernel gets no comm manager from ipykernel, so we install
        one and point the `comm` package at it (ipywidgets creates its comms
        through `comm.create_comm`). Deny by default: the only target a
        client may open is the widget *control* channel, which re-sends the
        state of widgets the kernel itself created (a reopened notebook
        restores them). ``jupyter.widget`` is not registered, so a client
        cannot make the kernel instantiate widget classes of its choosing.
        """
        import comm
        from ipykernel.comm import CommManager
        from ipykernel.comm.comm import BaseComm

        manager = CommManager(kernel=self)
        self.comm_manager = manager
        comm.get_comm_manager = lambda: manager
        comm.create_comm = lambda *args, **kwargs: BaseComm(*args, **kwargs)
        for msg_type in ("comm_open", "comm_msg", "comm_close"):
            self.shell_handlers[msg_type] = getattr(manager, msg_type)
        manager.register_target("jupyter.widget.control", _open_widget_control)

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
        import uuid

        from .errors import ExecutionError
        from .progress import Progress

        # A cell running longer than a second shows its elapsed time (progress.py), updated in
        # place. The reports come from a timer thread, so this request's parent header is
        # captured here and passed explicitly; the session itself knows nothing of Jupyter.
        parent = self.get_parent("shell")
        display_id = f"bastion-progress-{uuid.uuid4().hex}"

        def report(event: str, elapsed: float) -> None:
            from .display import progress_bundle  # only for a cell past a second: display imports polars

            msg_type = "display_data" if event == "show" else "update_display_data"
            content = {"data": progress_bundle(elapsed), "metadata": {}, "transient": {"display_id": display_id}}
            self.session.send(self.iopub_socket, msg_type, content, parent)

        progress = Progress(report)

        def clear_progress(replaced: bool) -> None:
            """The result replaces the progress line (clear on next output), or it just goes."""
            if progress.shown and not silent:
                self.send_response(self.iopub_socket, "clear_output", {"wait": replaced})

        try:
            if silent:
                result = self.worker.execute(code)
            else:
                with progress:
                    result = self.worker.execute(code)
        except BastionError as exc:  # time limit, stop button, memory cap: the worker was restarted
            clear_progress(True)
            return self._error(exc.title, exc.render(), silent)
        except KeyboardInterrupt:  # an interrupt outside the worker wait (which reports its own)
            clear_progress(True)
            err = ExecutionError("the cell was interrupted; nothing was released", hint="your variables are kept")
            return self._error(err.title, err.render(), silent)
        except Exception:  # noqa: BLE001 - a bug in Bastion must not kill the kernel or quote data
            self.log.error("internal error:\n%s", traceback.format_exc())
            clear_progress(True)
            return self._error("InternalError", "Bastion hit an internal error; nothing was released. "
                               "Your variables are kept. The owner's logs have the details.", silent)
        if result["error"] is not None:
            clear_progress(True)
            if not silent:  # requests filed before the failing statement exist: show them (the error names them)
                for p in result.get("pending", []):
                    self.send_response(self.iopub_socket, "display_data",
                                       {"data": self._show_request(p), "metadata": {}})
            return self._error(result["error"]["title"], result["error"]["text"], silent)
        # A review request becomes a live widget; everything else is the worker's static bundle.
        value = result["value_pending"]
        data = self._show_request(value) if value is not None else result["data"]
        clear_progress(data is not None)
        if data is not None and not silent:
            self.send_response(self.iopub_socket, "execute_result",
                               {"execution_count": self.execution_count, "data": data, "metadata": {}})
        if not silent:  # requests the cell made but does not display (`r = ...collect()`) get a widget too
            for p in result["pending"]:
                self.send_response(self.iopub_socket, "display_data",
                                   {"data": self._show_request(p), "metadata": {}})
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
    # Static text analysis only (see assist.py, run by the worker): no cell runs and no data is read.
    async def do_complete(self, code: str, cursor_pos: int | None) -> dict[str, Any]:  # type: ignore[override]
        pos = len(code) if cursor_pos is None else cursor_pos
        try:
            matches, start, end = self.worker.complete(code, pos)
        except Exception:  # noqa: BLE001 - a suggestion is never worth an error
            self.log.warning("completion failed:\n%s", traceback.format_exc())
            matches, start, end = [], pos, pos
        return {"status": "ok", "matches": matches, "cursor_start": start, "cursor_end": end, "metadata": {}}

    async def do_inspect(  # type: ignore[override]
        self, code: str, cursor_pos: int | None, detail_level: int = 0, omit_sections: Any = (),
    ) -> dict[str, Any]:
        pos = len(code) if cursor_pos is None else cursor_pos
        try:
            text = self.worker.inspect(code, pos)
        except Exception:  # noqa: BLE001
            self.log.warning("inspection failed:\n%s", traceback.format_exc())
            text = None
        if text is None:
            return {"status": "ok", "found": False, "data": {}, "metadata": {}}
        return {"status": "ok", "found": True, "data": {"text/plain": text}, "metadata": {}}

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:  # type: ignore[override]
        if self._reviews is not None:
            self._reviews.stop()
        self.worker.close()  # the worker writes session_end, then is gone
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


def _open_widget_control(comm: Any, msg: dict[str, Any]) -> None:
    """ipywidgets' control channel, imported only when a frontend asks for it."""
    from ipywidgets import Widget

    Widget.handle_control_comm_opened(comm, msg)


_EARLY: dict[str, QueryWorker] = {}  # the query worker `launch.main` started, until the kernel takes it


def launch(worker: QueryWorker) -> None:
    """Run the kernel (ipykernel's application) with the query worker `launch.main` already started."""
    _EARLY["worker"] = worker
    # outstream_class=None keeps stdout/stderr (and ipykernel's own loggers) out of the notebook.
    IPKernelApp.launch_instance(kernel_class=BastionKernel, outstream_class=None)
