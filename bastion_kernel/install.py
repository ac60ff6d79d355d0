"""Registering Bastion with Jupyter: writes the kernelspec (kernel.json).

Why a function of its own: both ``bastion install`` and ``bastion lab`` need
it, and the deployment file must be baked into the spec as an absolute path
(``BASTION_CONFIG``) so a notebook opened from any folder finds the owner's
policy rather than whatever happens to be in the working directory.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager

from .config import ENV_VAR
from .errors import ConfigError

_RESOURCES = Path(__file__).parent / "resources"
_LOGO_NAMES = ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg")


def kernel_json(config: str | None = None) -> dict[str, Any]:
    """The kernelspec document; `config` (already absolute) goes into the env."""
    spec: dict[str, Any] = {
        "argv": [sys.executable, "-m", "bastion_kernel", "-f", "{connection_file}"],
        "display_name": "Bastion",
        "language": "python",
        "interrupt_mode": "signal",
        # CurveZMQ between the server and the kernel when the server asks for it (the lock-down
        # sets transport_encryption = "auto"): without it any local user who can reach the
        # kernel's ports could subscribe to its output. Servers that do not ask are unaffected.
        "metadata": {"debugger": False, "supported_encryption": ["curve"]},
    }
    if config is not None:
        spec["env"] = {ENV_VAR: config}
    return spec


def install_kernelspec(
    *,
    user: bool = False,
    sys_prefix: bool = False,
    prefix: str | None = None,
    config: str | None = None,
    name: str = "bastion",
) -> str:
    """Install the kernelspec and return the folder Jupyter installed it to.

    At most one of `user`, `sys_prefix`, `prefix` may be given; none means the
    system-wide location. `config`, when given, must name an existing file.
    """
    if sum((bool(user), bool(sys_prefix), prefix is not None)) > 1:
        raise ValueError("give at most one of user, sys_prefix, prefix")
    config_abs: str | None = None
    if config is not None:
        path = Path(config).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"deployment file {path} does not exist")
        config_abs = str(path)
    if sys_prefix:
        prefix = sys.prefix
    with tempfile.TemporaryDirectory(prefix="bastion-kernelspec-") as tmp:
        (Path(tmp) / "kernel.json").write_text(json.dumps(kernel_json(config_abs), indent=2) + "\n", encoding="utf-8")
        for logo in _LOGO_NAMES:
            src = _RESOURCES / logo
            if src.is_file():
                shutil.copy(src, Path(tmp) / logo)
        dest: str = KernelSpecManager().install_kernel_spec(tmp, name, user=user, prefix=prefix)
    return dest
