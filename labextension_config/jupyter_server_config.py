"""Bastion lock-down for a Jupyter Server / JupyterLab the owner runs.

The Bastion kernel is the only way into the data; this file makes it the only
way in at all. It

- refuses to start any kernel but ``bastion`` (403), and lists no other;
- removes terminals and the language-server proxy;
- refuses raw file downloads (``/files/``, ``/view/``), nbconvert, and every
  contents request that is not a notebook or a folder listing;
- drops kernel messages the Bastion kernel does not need (debugger, subshells);
- makes the extension manager read-only and locks every JupyterLab plugin;
- disables JupyterLab's terminal, console, download, export, debugger and
  extension-manager plugins (also listed in labconfig/page_config.json).

The details and reasons are in ``bastion_kernel/lockdown.py``; ``configure``
below sets every option there, so this file stays in step with the package.

Use it either way:

    # pass it explicitly: then no other jupyter_server_config file is read,
    # not even one in the user's ~/.jupyter
    JUPYTER_CONFIG_PATH=/srv/bastion/labextension_config \
    BASTION_CONFIG=/srv/bastion/bastion.toml \
        jupyter lab --config=/srv/bastion/labextension_config/jupyter_server_config.py

    # or copy this folder's contents into /etc/jupyter (system-wide)

``bastion lab`` writes the same configuration for itself (see
``bastion_kernel.lockdown.write_config_dir``); a test checks the two agree.
"""

from bastion_kernel.lockdown import configure

configure(c)  # noqa: F821 - `c` is provided by the traitlets config loader

# Owner additions go after configure(c), for example:
# c.ServerApp.ip = "127.0.0.1"          # loopback; put a TLS proxy in front for remote users
# c.ServerApp.root_dir = "/srv/bastion/notebooks"   # keep data and state_dir outside it
