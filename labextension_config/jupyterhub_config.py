"""Example JupyterHub configuration for a Bastion deployment (commented; adapt it).

What it does: every scientist gets a single-user JupyterLab with the Bastion
lock-down (only the Bastion kernel, no terminals, no downloads, notebooks and
folders only). The owner does not review through this hub.

Suggested layout on the host (owned by a service account, say ``bastion``):

    /srv/bastion/bastion.toml                 the deployment file (readable by the kernels)
    /srv/bastion/data/                        the datasets (readable by the kernels)
    /srv/bastion/state/                       state_dir: audit logs and review requests
                                              (bastion.db; written by every kernel)
    /srv/bastion/labextension_config/         this folder: jupyter_server_config.py,
                                              labconfig/page_config.json

What the lock-down cannot do for you: the kernel runs as the scientist's OS
user (or in the scientist's container) and must read the data and write
state_dir. So that user must have no other way onto the machine: no SSH, no
shell, no cron; with LocalProcessSpawner give them ``/usr/sbin/nologin``; with
DockerSpawner/KubeSpawner mount data read-only and state read-write into a
container they reach only through this server. Put TLS in front of the hub
(``ssl_cert``/``ssl_key`` below, or a reverse proxy).

How the owner's own, unlocked server for reviewing is kept apart: it is not on
this hub at all. The owner reviews with the ``bastion`` CLI as the service
account on the host (``bastion review list``, ``bastion review approve ID``,
``bastion audit html SESSION``), or runs an ordinary JupyterLab as that account
on another port, reachable only from the owner's network. Nothing a scientist
can start reaches either.
"""

# ruff: noqa: F821  - `c` is provided by JupyterHub's config loader

BASTION = "/srv/bastion"
LOCKDOWN = f"{BASTION}/labextension_config"

# --- TLS (or terminate TLS in a reverse proxy in front of the hub) -------------
# c.JupyterHub.ssl_cert = "/etc/letsencrypt/live/bastion.example.org/fullchain.pem"
# c.JupyterHub.ssl_key = "/etc/letsencrypt/live/bastion.example.org/privkey.pem"
# Here: plain HTTP on loopback, for a TLS reverse proxy on the same host.
c.JupyterHub.bind_url = "http://127.0.0.1:8000"

# --- who may log in -------------------------------------------------------------
# Scientists only; the owner does not need a hub account (see above).
c.Authenticator.allowed_users = {"alice", "bob"}

# --- the single-user servers -----------------------------------------------------
c.Spawner.default_url = "/lab"

# The lock-down. --config makes this the only jupyter_server_config file the
# server reads, and disable_user_config ignores anything in the user's ~/.jupyter,
# so a scientist cannot loosen it even if some file under their home changed.
c.Spawner.args = [f"--config={LOCKDOWN}/jupyter_server_config.py"]
c.Spawner.disable_user_config = True

c.Spawner.environment = {
    # The deployment file. The kernelspec installed with
    # `bastion install --sys-prefix --config /srv/bastion/bastion.toml` embeds it
    # too; the variable covers kernelspecs installed without --config.
    "BASTION_CONFIG": f"{BASTION}/bastion.toml",
    # So JupyterLab reads labconfig/page_config.json (disabled, locked plugins).
    "JUPYTER_CONFIG_PATH": LOCKDOWN,
}
# JUPYTERHUB_USER is set by the hub; the kernel takes the scientist's name from it,
# and the deployment file's `users = [...]` decides which datasets each one sees.

# Keep data and state_dir outside what the server shows: notebooks live in a
# folder of their own under the scientist's home.
c.Spawner.notebook_dir = "~/notebooks"

# A container per scientist instead of an OS account (recommended when you can):
# c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
# c.DockerSpawner.image = "your-registry/bastion-singleuser:latest"   # pip install bastion-kernel[lab]
# c.DockerSpawner.volumes = {
#     f"{BASTION}/data": {"bind": f"{BASTION}/data", "mode": "ro"},
#     f"{BASTION}/state": {"bind": f"{BASTION}/state", "mode": "rw"},
#     f"{BASTION}/bastion.toml": {"bind": f"{BASTION}/bastion.toml", "mode": "ro"},
#     LOCKDOWN: {"bind": LOCKDOWN, "mode": "ro"},
# }
# c.DockerSpawner.notebook_dir = "/home/jovyan/notebooks"
# c.DockerSpawner.network_name = "bastion"   # and no route to the internet from it

# Idle scientists' servers (and their kernels) are stopped after an hour.
# c.JupyterHub.services = [{"name": "idle-culler", "command": ["python3", "-m", "jupyterhub_idle_culler", "--timeout=3600"]}]
