"""A real, locked-down JupyterLab for tests, and headless Chromium to look at it.

Why a helper: deployment and browser tests must run the server exactly as
``bastion lab`` does (same argv from `cli.lab_argv`, same configuration from
`lockdown.write_config_dir`), but without touching the shared environment:
the kernelspec goes into a temporary prefix put first on ``JUPYTER_PATH``, and
the user's Jupyter config, data and runtime folders are temporary too.

API (kept stable for other test modules)::

    with locked_lab(config_path, root_dir, extra_env={"JUPYTERHUB_USER": "alice"}) as lab:
        lab.url, lab.token, lab.port, lab.proc, lab.log_text()
        lab.api("GET", "api/kernelspecs")  -> (status, parsed JSON or text)

    with chromium() as browser:        # a playwright Browser on /usr/bin/chromium
        page = browser.new_page()

`browser_skip_reason()` says why browser tests cannot run (or None).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bastion_kernel.cli import lab_argv
from bastion_kernel.install import install_kernelspec

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT = 120.0  # two shared cores: JupyterLab's first start can be slow
STOP_TIMEOUT = 30.0


def free_port() -> int:
    """A port nobody listens on right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LabServer:
    """A running JupyterLab: base `url` (ends with ``/``), `token`, `port`, `proc`."""

    url: str
    token: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    home: Path = field(repr=False)

    def log_text(self) -> str:
        """Everything the server printed so far (for assertions and failure messages)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def api(
        self, method: str, path: str, body: Any = None, *, token: bool = True, timeout: float = 60.0
    ) -> tuple[int, Any]:
        """One HTTP request to the server: (status, JSON if it parses, else text).

        `path` is relative to the base url (``"api/kernels"``); errors are
        returned, not raised, because refusals are what the tests look at;
        redirects (to the login page, say) are returned, not followed.
        """
        data = None if body is None else json.dumps(body).encode("utf-8")
        quoted = urllib.parse.quote(path.lstrip("/"), safe="/?=&%")
        req = urllib.request.Request(self.url + quoted, data=data, method=method)
        if token:
            req.add_header("Authorization", f"token {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _NO_REDIRECTS.open(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        text = raw.decode("utf-8", errors="replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text


class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    """Report a redirect (e.g. to the login page) as it is, instead of following it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_NO_REDIRECTS = urllib.request.build_opener(_KeepRedirects)


def _wait_ready(url: str, token: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"JupyterLab exited with {proc.returncode} before it was ready:\n"
                + log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
            )
        req = urllib.request.Request(url + "api/status", headers={"Authorization": f"token {token}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(
        f"JupyterLab did not answer /api/status within {START_TIMEOUT:.0f}s:\n"
        + log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM lets the server shut its kernels down; kill only if it hangs."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def locked_lab(
    config_path: Path,
    root_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    kernelspec_metadata: dict[str, Any] | None = None,
) -> Iterator[LabServer]:
    """Start ``bastion lab``'s locked-down JupyterLab on 127.0.0.1 and stop it afterwards.

    `config_path` is the deployment file (baked into the temporary kernelspec
    and exported as ``BASTION_CONFIG``, as ``bastion lab`` does); `root_dir`
    is the folder the server serves. `extra_env` is applied last (e.g.
    ``JUPYTERHUB_USER``). `kernelspec_metadata` is merged into the installed
    kernel.json's metadata (e.g. to declare CurveZMQ support).
    """
    from bastion_kernel.lockdown import write_config_dir

    home = Path(tempfile.mkdtemp(prefix="bastion-lab-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        prefix = home / "prefix"
        spec_dir = Path(install_kernelspec(prefix=str(prefix), config=str(Path(config_path).resolve())))
        if kernelspec_metadata:
            spec = json.loads((spec_dir / "kernel.json").read_text(encoding="utf-8"))
            spec.setdefault("metadata", {}).update(kernelspec_metadata)
            (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
        config_dir = write_config_dir(home / "lab-config")
        port = free_port()
        token = secrets.token_hex(24)
        argv = lab_argv(root_dir=Path(root_dir).resolve(), port=port, no_browser=True, config_dir=config_dir)
        argv.append("--ServerApp.ip=127.0.0.1")
        env = dict(os.environ)
        env.update(
            {
                "BASTION_CONFIG": str(Path(config_path).resolve()),
                "JUPYTER_TOKEN": token,
                "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
                "JUPYTER_CONFIG_DIR": str(home / "user-config"),
                "JUPYTER_DATA_DIR": str(home / "user-data"),
                "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
                "JUPYTER_PLATFORM_DIRS": "0",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
            }
        )
        env.pop("JUPYTER_CONFIG_PATH", None)
        env.update(extra_env or {})
        log_path = home / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(home))
        url = f"http://127.0.0.1:{port}/"
        _wait_ready(url, token, proc, log_path)
        yield LabServer(url=url, token=token, port=port, proc=proc, log_path=log_path, home=home)
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(home, ignore_errors=True)


# --------------------------------------------------------------------------- browser


def browser_skip_reason() -> str | None:
    """None when headless Chromium can run; otherwise why not (for pytest.skip)."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is missing (Debian package `chromium`)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package `playwright` is not installed"
    return None


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless playwright Browser on Debian's Chromium (never `playwright install`)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def run_cell(page: Any, cell: Any) -> None:
    """Select `cell` and press Shift+Enter until its prompt shows it ran or is queued.

    JupyterLab shows the kernel as idle a moment before the session can execute;
    a Shift+Enter in that moment only moves the selection, so it is retried.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    prompt = cell.locator(".jp-InputPrompt")
    for _ in range(10):
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        try:
            page.wait_for_function("(el) => el.textContent.trim() !== '[ ]:'", arg=prompt.element_handle(),
                                   timeout=5_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"the cell never ran: {cell.inner_text()[:200]}")
