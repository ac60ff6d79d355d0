"""`bastion` as the owner runs it: a real subprocess against a real deployment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the package is not necessarily pip-installed

from bastion_kernel.audit import AuditLog, read_session  # noqa: E402
from bastion_kernel.cli import COMMANDS, build_parser, lab_argv  # noqa: E402
from bastion_kernel.review import ReviewStore  # noqa: E402


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    pl.DataFrame({"region": ["n", "s", "e"], "n": [1, 2, 3]}).write_parquet(tmp_path / "x.parquet")
    config = tmp_path / "bastion.toml"
    config.write_text('[bastion]\nstate_dir = "state"\n\n[datasets.x]\npath = "x.parquet"\n', encoding="utf-8")
    return config


def bastion(*args: str, config: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "BASTION_CONFIG"}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    full_env.update(env or {})
    argv = [sys.executable, "-m", "bastion_kernel.cli", *args]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=120)


def _request(config: Path, user: str = "alice", reason: str = "group of 3 < 10") -> tuple[str, AuditLog]:
    state = config.parent / "state"
    log = AuditLog.open_session(state, user=user, kernel_id="k", notebook_path=None, config_digest="d")
    snap = pl.DataFrame({"region": ["n", "s"], "n": [1, 2]})
    rid = ReviewStore(state).create(
        user=user, dataset="x", session_id=log.session_id, cell="x.group_by('region').len()", reason=reason, snapshot=snap
    )
    log.record("review_request", request_id=rid, dataset="x", reason=reason)
    return rid, log


def test_review_list_json_shape(deployment: Path) -> None:
    r1, _ = _request(deployment)
    r2, _ = _request(deployment, user="bob", reason="masked column")
    out = bastion("review", "list", "--json", config=deployment)
    assert out.returncode == 0, out.stderr
    items = json.loads(out.stdout)
    assert [i["id"] for i in items] == [r1, r2]
    for key in ("id", "user", "dataset", "status", "reason", "created"):
        assert key in items[0]
    assert items[1]["user"] == "bob" and items[1]["reason"] == "masked column" and items[1]["status"] == "pending"
    assert "snapshot" not in items[0]  # metadata only; the data is shown by `review show`

    assert bastion("review", "approve", r1, "--by", "owner", config=deployment).returncode == 0
    pending = json.loads(bastion("review", "list", "--json", config=deployment).stdout)
    assert [i["id"] for i in pending] == [r2]
    everything = json.loads(bastion("review", "list", "--all", "--json", config=deployment).stdout)
    assert {i["id"]: i["status"] for i in everything} == {r1: "approved", r2: "pending"}
    table = bastion("review", "list", config=deployment)
    assert r2 in table.stdout and r1 not in table.stdout and "bob" in table.stdout


def test_config_from_environment(deployment: Path) -> None:
    out = bastion("review", "list", "--json", env={"BASTION_CONFIG": str(deployment)})
    assert out.returncode == 0 and json.loads(out.stdout) == []
    missing = bastion("review", "list")
    assert missing.returncode == 2 and "BASTION_CONFIG" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_review_show(deployment: Path) -> None:
    rid, _ = _request(deployment)
    older, _ = _request(deployment, reason="earlier try")
    _request(deployment, user="bob")
    out = bastion("review", "show", rid, config=deployment)
    assert out.returncode == 0, out.stderr
    assert "x.group_by('region').len()" in out.stdout
    assert "group of 3 < 10" in out.stdout
    assert "shape: (2, 2)" in out.stdout  # the polars table of the snapshot
    context = out.stdout.split("Other requests by alice on x:")[1]
    assert older in context and "bob" not in context


def test_approve_and_reject_write_audit_records(deployment: Path) -> None:
    state = deployment.parent / "state"
    r1, log1 = _request(deployment)
    r2, log2 = _request(deployment, user="bob")

    ok = bastion("review", "approve", r1, "--by", "carol", config=deployment)
    assert ok.returncode == 0, ok.stderr
    assert f"approved {r1}" in ok.stdout and "alice" in ok.stdout
    assert ReviewStore(state).fetch(r1, user="alice").height == 2

    no = bastion("review", "reject", r2, "--reason", "too fine-grained", config=deployment, env={"JUPYTERHUB_USER": "dave"})
    assert no.returncode == 0, no.stderr
    assert f"rejected {r2}" in no.stdout and "too fine-grained" in no.stdout
    assert ReviewStore(state).get(r2).decided_by == "dave"  # default --by is the current user

    last1 = read_session(state, log1.session_id)[-1]
    assert {k: last1[k] for k in ("event", "request_id", "decision", "by")} == {
        "event": "review_decision",
        "request_id": r1,
        "decision": "approved",
        "by": "carol",
    }
    last2 = read_session(state, log2.session_id)[-1]
    assert (last2["event"], last2["decision"], last2["reason"], last2["by"]) == (
        "review_decision",
        "rejected",
        "too fine-grained",
        "dave",
    )
    assert bastion("audit", "verify", config=deployment).returncode == 0


def test_decision_errors(deployment: Path) -> None:
    rid, _ = _request(deployment)
    assert bastion("review", "approve", rid, config=deployment).returncode == 0
    again = bastion("review", "reject", rid, "--reason", "no", config=deployment)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "Traceback" not in again.stderr
    assert "ReviewError" in again.stderr and "already approved" in again.stderr
    unknown = bastion("review", "approve", "R00000000", config=deployment)
    assert unknown.returncode == 2 and "no review request R00000000" in unknown.stderr
    no_reason = bastion("review", "reject", rid, config=deployment)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    empty_reason = bastion("review", "reject", _request(deployment)[0], "--reason", " ", config=deployment)
    assert empty_reason.returncode == 2 and "reason" in empty_reason.stderr
    bad_config = bastion("review", "list", config=deployment.parent / "nope.toml")
    assert bad_config.returncode == 2 and "ConfigError" in bad_config.stderr


def test_audit_list_show_verify_ok(deployment: Path) -> None:
    rid, log = _request(deployment)
    log.record("cell", source="a = 1\nb = 2\n", outcome="ok", reason=None, rows=0, columns=[], output_digest="")
    log.close()
    listing = bastion("audit", "list", config=deployment)
    assert listing.returncode == 0 and log.session_id in listing.stdout and "session_end" in listing.stdout
    show = bastion("audit", "show", log.session_id, config=deployment)
    assert show.returncode == 0
    assert show.stdout.count("\n#") + show.stdout.startswith("#") == 4
    assert "review_request" in show.stdout and rid in show.stdout and "b = 2" in show.stdout
    ok = bastion("audit", "verify", config=deployment)
    assert ok.returncode == 0 and ok.stdout.strip() == "OK: 1 sessions, 4 records verified"
    one = bastion("audit", "verify", log.session_id, config=deployment)
    assert one.returncode == 0 and "4 records" in one.stdout
    unknown = bastion("audit", "show", "20200101T000000Z-x-abcdef", config=deployment)
    assert unknown.returncode == 2 and "unknown audit session" in unknown.stderr


def test_audit_verify_tampered(deployment: Path) -> None:
    _, log = _request(deployment)
    _request(deployment, user="bob")
    path = deployment.parent / "state" / "audit" / f"{log.session_id}.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"group of 3 < 10"', b'"group of 9 < 10"'))
    bad = bastion("audit", "verify", config=deployment)
    assert bad.returncode == 1
    assert bad.stdout.startswith(f"FAIL: session {log.session_id}, line 2:")
    assert "altered" in bad.stdout


def test_decision_refused_when_session_log_is_missing(deployment: Path) -> None:
    rid, log = _request(deployment)
    (deployment.parent / "state" / "audit" / f"{log.session_id}.jsonl").unlink()
    out = bastion("review", "approve", rid, config=deployment)
    assert out.returncode == 2 and "AuditError" in out.stderr
    assert ReviewStore(deployment.parent / "state").get(rid).status == "pending"


def test_install_prefix_writes_kernel_json(deployment: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    out = bastion("install", "--prefix", str(prefix), config=deployment)
    assert out.returncode == 0, out.stderr
    spec_file = prefix / "share" / "jupyter" / "kernels" / "bastion" / "kernel.json"
    spec = json.loads(spec_file.read_text())
    assert spec["argv"] == [sys.executable, "-m", "bastion_kernel", "-f", "{connection_file}"]
    assert spec["display_name"] == "Bastion" and spec["language"] == "python"
    assert spec["interrupt_mode"] == "signal"
    assert spec["env"] == {"BASTION_CONFIG": str(deployment.resolve())}
    assert str(spec_file.parent) in out.stdout


def test_install_without_config_and_with_missing_config(tmp_path: Path) -> None:
    out = bastion("install", "--prefix", str(tmp_path / "p"))
    assert out.returncode == 0, out.stderr
    spec = json.loads((tmp_path / "p/share/jupyter/kernels/bastion/kernel.json").read_text())
    assert "env" not in spec
    missing = bastion("install", "--prefix", str(tmp_path / "q"), config=tmp_path / "absent.toml")
    assert missing.returncode == 2 and "ConfigError" in missing.stderr
    assert not (tmp_path / "q").exists()
    clash = bastion("install", "--user", "--prefix", str(tmp_path / "q"))
    assert clash.returncode == 2 and "not allowed with" in clash.stderr


def test_install_kernelspec_requires_existing_config(tmp_path: Path) -> None:
    from bastion_kernel.errors import ConfigError
    from bastion_kernel.install import install_kernelspec

    with pytest.raises(ConfigError):
        install_kernelspec(prefix=str(tmp_path), config=str(tmp_path / "absent.toml"))
    dest = install_kernelspec(prefix=str(tmp_path), name="bastion-test")
    assert Path(dest).name == "bastion-test" and (Path(dest) / "kernel.json").is_file()


def test_lab_argv_and_dispatch_table() -> None:
    argv = lab_argv(root_dir=Path("/srv/demo"), port=8899, no_browser=True)
    assert argv[:3] == [sys.executable, "-m", "jupyterlab"]
    assert "--ServerApp.port=8899" in argv and "--no-browser" in argv
    assert "--MappingKernelManager.default_kernel_name=bastion" in argv
    assert "--ServerApp.root_dir=/srv/demo" in argv
    bare = lab_argv(root_dir=Path("/x"), port=None, no_browser=False)
    assert not any(a.startswith("--ServerApp.port") for a in bare) and "--no-browser" not in bare
    parser = build_parser()
    for key, (_, _, handler) in COMMANDS.items():
        extra = {"review show": ["R1"], "review approve": ["R1"], "review reject": ["R1", "--reason", "r"],
                 "audit show": ["S"], "demo": ["d"]}.get(key, [])
        assert parser.parse_args([*key.split(), *extra]).handler is handler


def test_lab_refuses_demo_and_config_together(deployment: Path, tmp_path: Path) -> None:
    out = bastion("lab", "--demo", str(tmp_path / "d"), config=deployment)
    assert out.returncode == 2 and "not both" in out.stderr


def test_lab_installs_and_execs_jupyterlab(deployment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `bastion lab` in-process with exec and the sys-prefix install captured
    (so the test neither replaces pytest nor writes into the shared venv)."""
    import bastion_kernel.cli as cli

    calls: dict[str, object] = {}

    def fake_install(**kw: object) -> str:
        calls["install"] = kw
        return "/nowhere"

    def fake_exec(file: str, argv: list[str]) -> None:
        calls["exec"] = (file, argv, os.environ.get("BASTION_CONFIG"))
        raise SystemExit(0)

    monkeypatch.setattr(cli, "install_kernelspec", fake_install)
    monkeypatch.setattr(cli.os, "execvp", fake_exec)
    monkeypatch.setenv("JUPYTER_TOKEN", "t0ken")
    monkeypatch.setenv("BASTION_CONFIG", "unused")  # so monkeypatch restores it afterwards
    monkeypatch.delenv("BASTION_CONFIG")
    with pytest.raises(SystemExit):
        cli.main(["lab", "--port", "9999", "--no-browser", "--config", str(deployment)])
    assert calls["install"] == {"sys_prefix": True, "config": str(deployment.resolve())}
    file, argv, env_config = calls["exec"]  # type: ignore[misc]
    assert file == sys.executable and argv[1:3] == ["-m", "jupyterlab"]
    assert f"--ServerApp.root_dir={deployment.parent.resolve()}" in argv
    assert "--ServerApp.port=9999" in argv and "--no-browser" in argv
    assert env_config == str(deployment.resolve())
    assert os.environ["JUPYTER_TOKEN"] == "t0ken"
