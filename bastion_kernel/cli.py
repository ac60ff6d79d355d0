"""``bastion``: the data owner's command line (install, review, audit, demo, lab).

Why a separate tool from the kernel: decisions about what leaves the kernel
are made by the owner, in the owner's own process, never from inside a
user's notebook. The CLI reads the same deployment file and state folder as
the kernel and writes its decisions into the requesting session's audit log.

Errors meant for a person (`BastionError`) print as one line on stderr with
exit code 2; ``audit verify`` exits 1 when the log does not verify.
Dispatch is table-driven: `COMMANDS` maps "group sub" to (help, add-arguments,
handler), and the parser is built from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import config as cfg
from .audit import list_sessions, read_session, verify
from .errors import AuditError, BastionError, ConfigError
from .install import install_kernelspec
from .review import ReviewRequest, ReviewStore, decide

Handler = Callable[[argparse.Namespace], int]
AddArgs = Callable[[argparse.ArgumentParser], None]

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and found a problem (audit verify)
EXIT_ERROR = 2  # the command could not do what was asked


# --------------------------------------------------------------------------- shared


def _deployment(args: argparse.Namespace) -> cfg.Deployment:
    return cfg.load(args.config)


def _store(args: argparse.Namespace) -> ReviewStore:
    return ReviewStore(_deployment(args).state_dir)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned text table (polars is for data; this is for metadata)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _short_time(ts: str | None) -> str:
    return "" if not ts else ts[:19].replace("T", " ") + "Z"


def _one_line(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _indent(text: str, pad: str = "    ") -> str:
    return "\n".join(pad + line for line in text.splitlines()) or pad


# --------------------------------------------------------------------------- install


def _args_install(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user only")
    where.add_argument("--sys-prefix", action="store_true", help="install into this Python environment")
    where.add_argument("--prefix", metavar="P", help="install under prefix P")


def cmd_install(args: argparse.Namespace) -> int:
    """Install the kernelspec, embedding the deployment file when one is named."""
    config: str | None = None
    if args.config is not None or os.environ.get(cfg.ENV_VAR):
        config = str(_deployment(args).path)  # validate before baking it in
    dest = install_kernelspec(user=args.user, sys_prefix=args.sys_prefix, prefix=args.prefix, config=config)
    print(f"installed kernelspec 'bastion' in {dest}")
    if config is None:
        print(f"no deployment file embedded: the kernel will read {cfg.ENV_VAR} when it starts")
    else:
        print(f"deployment file: {config}")
    return EXIT_OK


# --------------------------------------------------------------------------- review


def _args_review_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true", help="every request, not only pending ones")
    p.add_argument("--json", action="store_true", help="print a JSON array")


def cmd_review_list(args: argparse.Namespace) -> int:
    """Pending requests (or all), oldest first."""
    requests = _store(args).list(status=None if args.all else "pending")
    if args.json:
        print(json.dumps([r.to_dict() for r in requests], indent=2))
        return EXIT_OK
    if not requests:
        print("no review requests" if args.all else "no pending review requests")
        return EXIT_OK
    rows = [
        [r.id, r.user, r.dataset, r.status, _short_time(r.created), f"{r.rows}x{len(r.columns)}", _one_line(r.reason)]
        for r in requests
    ]
    print(_table(["ID", "USER", "DATASET", "STATUS", "CREATED", "SHAPE", "REASON"], rows))
    return EXIT_OK


def _args_id(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID", help="review request id (R + 8 hex digits)")


def _describe(r: ReviewRequest) -> str:
    lines = [
        f"Request   {r.id}  ({r.status})",
        f"User      {r.user}",
        f"Dataset   {r.dataset}",
        f"Session   {r.session_id}",
        f"Created   {r.created}",
        f"Shape     {r.rows} rows x {len(r.columns)} columns: {', '.join(r.columns)}",
        f"Digest    sha256:{r.snapshot_digest}",
        f"Reason    {r.reason}",
    ]
    if r.status != "pending":
        decided = f"Decided   {r.status} by {r.decided_by} at {r.decided_at}"
        if r.decision_reason:
            decided += f": {r.decision_reason}"
        lines.append(decided)
    return "\n".join(lines)


def cmd_review_show(args: argparse.Namespace) -> int:
    """Everything the owner needs to decide: the request, its cell, its data, its context."""
    import polars as pl  # the owner's process: showing the data in full is the point

    store = _store(args)
    req = store.get(args.id)
    snapshot = store.snapshot(args.id)
    print(_describe(req))
    print("\nCell:")
    print(_indent(req.cell))
    print("\nSnapshot:")
    with pl.Config(tbl_rows=100, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=200):
        print(snapshot)
    others = [o for o in store.list(status=None, user=req.user, dataset=req.dataset) if o.id != req.id]
    print(f"\nOther requests by {req.user} on {req.dataset}:")
    if not others:
        print("    (none)")
    for o in others:
        extra = f" by {o.decided_by}" if o.decided_by else ""
        print(f"    {o.id}  {o.status}{extra}  {_short_time(o.created)}  {_one_line(o.reason, 50)}")
    _print_release_history(_deployment(args), req)
    return EXIT_OK


def _print_release_history(deployment: cfg.Deployment, req: ReviewRequest, recent: int = 5) -> None:
    """What the requester was already shown automatically on each dataset (the differencing history).

    Why here: a request held back as too close to an earlier release names
    that release; the owner needs the history around it to judge the risk.
    """
    from .policy.history import HistoryStore, scope_of

    history = HistoryStore(deployment.state_dir)
    for name in req.dataset.split(","):
        ds = deployment.datasets.get(name)
        if ds is None:
            continue
        total, latest = history.releases(user=req.user, scope=scope_of(ds), limit=recent)
        print(f"\nReleases to {req.user} on {name} in the differencing history (automatic, or asked for review): "
              f"{total}" + (f" (latest {len(latest)}):" if latest else ""))
        for r in latest:
            via = f" (as {r.dataset})" if r.dataset != name else ""  # another name for the same file
            asked = f" review {r.request}" + (" (this request)" if r.request == req.id else "") if r.request else ""
            print(f"    {r.id}  {_short_time(r.created)}  {r.rows} row(s){via}{asked}  {_one_line(r.cell, 60)}")


def _args_decide(p: argparse.ArgumentParser) -> None:
    _args_id(p)
    p.add_argument("--by", metavar="NAME", help="who decides (default: the current user)")


def _args_reject(p: argparse.ArgumentParser) -> None:
    _args_decide(p)
    p.add_argument("--reason", required=True, metavar="TEXT", help="shown to the requester")


def _decide(args: argparse.Namespace, decision: str) -> int:
    """Decide and audit (see `review.decide`), then say what happened."""
    store = _store(args)
    by = args.by or cfg.current_user()
    done = decide(store, args.id, decision, by=by, reason=getattr(args, "reason", None))
    if decision == "approved":
        print(f"approved {done.id}: {done.user} may now fetch {done.rows} rows x {len(done.columns)} columns of {done.dataset}")
    else:
        print(f"rejected {done.id} ({done.user}, {done.dataset}): {done.decision_reason}")
    print(f"recorded in audit session {done.session_id}")
    return EXIT_OK


def cmd_review_approve(args: argparse.Namespace) -> int:
    return _decide(args, "approved")


def cmd_review_reject(args: argparse.Namespace) -> int:
    return _decide(args, "rejected")


# --------------------------------------------------------------------------- audit


def cmd_audit_list(args: argparse.Namespace) -> int:
    sessions = list_sessions(_deployment(args).state_dir)
    if not sessions:
        print("no audit sessions")
        return EXIT_OK
    rows = [
        [s["session"], str(s["user"] or "?"), _short_time(s["started"]), str(s["records"]), str(s["last_event"] or "")]
        for s in sessions
    ]
    print(_table(["SESSION", "USER", "STARTED", "RECORDS", "LAST EVENT"], rows))
    return EXIT_OK


def _args_session(p: argparse.ArgumentParser) -> None:
    p.add_argument("session", metavar="SESSION", help="audit session id")


def _args_session_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("session", metavar="SESSION", nargs="?", help="one session (default: all)")


_HEADER_KEYS = ("seq", "ts", "session", "event", "prev", "hash")


def _render_record(rec: dict[str, Any]) -> str:
    lines = [f"#{rec.get('seq')}  {rec.get('ts')}  {rec.get('event')}"]
    for key, value in rec.items():
        if key in _HEADER_KEYS:
            continue
        if isinstance(value, str) and "\n" in value.rstrip("\n"):
            lines.append(f"    {key}:")
            lines.append(_indent(value.rstrip("\n"), "        "))
        else:
            shown = value if isinstance(value, str) else json.dumps(value)
            lines.append(f"    {key}: {shown}")
    lines.append(f"    hash: {str(rec.get('hash'))[:16]}…  prev: {str(rec.get('prev'))[:16]}…")
    return "\n".join(lines)


def cmd_audit_show(args: argparse.Namespace) -> int:
    records = read_session(_deployment(args).state_dir, args.session)
    print(f"Session {args.session}: {len(records)} records\n")
    print("\n\n".join(_render_record(r) for r in records))
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    state_dir = _deployment(args).state_dir
    problems = verify(state_dir, args.session)
    if problems:
        first = problems[0]
        print(f"FAIL: session {first.session}, line {first.line}: {first.reason}")
        if len(problems) > 1:
            print(f"({len(problems)} problems in total)")
        return EXIT_FAILED
    if args.session is not None:
        n_sessions, n_records = 1, len(read_session(state_dir, args.session))
    else:
        sessions = list_sessions(state_dir)
        n_sessions, n_records = len(sessions), sum(int(s["records"]) for s in sessions)
    print(f"OK: {n_sessions} sessions, {n_records} records verified")
    return EXIT_OK


def _args_audit_html(p: argparse.ArgumentParser) -> None:
    p.add_argument("session", metavar="SESSION", nargs="?", help="audit session id (default: the latest)")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write the page (default: SESSION.html)")


def cmd_audit_html(args: argparse.Namespace) -> int:
    """Write one session as a readable HTML page; exit 1 (page still written) if it does not verify."""
    from .audit_html import render_session

    state_dir = _deployment(args).state_dir
    if args.session is None:
        sessions = list_sessions(state_dir)
        if not sessions:
            raise AuditError("there are no audit sessions yet", hint="see `bastion audit list`")
        args.session = sessions[-1]["session"]  # ids start with their UTC start time
    page, problems = render_session(state_dir, args.session)
    out = Path(args.output or f"{args.session}.html")
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise BastionError(f"cannot write {out}: {exc.strerror}") from None
    verdict = "chain verifies" if not problems else f"chain does NOT verify ({len(problems)} problems)"
    print(f"wrote {out}: session {args.session}, {verdict}")
    return EXIT_FAILED if problems else EXIT_OK


# --------------------------------------------------------------------------- demo & lab


def _generate_demo(folder: Path) -> Path:
    try:
        from .demo import generate  # lazy: the demo generator is optional
    except ImportError as exc:
        raise BastionError(f"the demo generator is not available ({exc})") from None
    config: Path = generate(folder)
    return config


def _args_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="folder to write the demo datasets and bastion.toml into")


def cmd_demo(args: argparse.Namespace) -> int:
    print(_generate_demo(Path(args.dir)))
    return EXIT_OK


def _args_lab(p: argparse.ArgumentParser) -> None:
    p.add_argument("--demo", metavar="DIR", help="generate the demo into DIR and use it")
    p.add_argument("--port", type=int, metavar="N", help="port for the Jupyter server")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--notebooks", metavar="DIR",
                   help="folder the scientist sees (default: the deployment file's folder)")


def lab_config_dir() -> Path:
    """Where `bastion lab` writes the lock-down configuration it starts JupyterLab with."""
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "bastion" / "lab-config"


def lab_argv(*, root_dir: Path, port: int | None, no_browser: bool, config_dir: Path | None = None) -> list[str]:
    """The JupyterLab command line `bastion lab` execs (separate so it can be tested).

    `config_dir` holds `lockdown.write_config_dir`'s files; its server config
    is passed with ``--config``, so no other jupyter_server_config file (not
    even the user's own) can loosen the lock-down.
    """
    argv = [sys.executable, "-m", "jupyterlab"]
    if config_dir is not None:
        argv.append(f"--config={Path(config_dir) / 'jupyter_server_config.py'}")
    if port is not None:
        argv.append(f"--ServerApp.port={port}")
    if no_browser:
        argv.append("--no-browser")
    argv.append("--MappingKernelManager.default_kernel_name=bastion")
    argv.append(f"--ServerApp.root_dir={root_dir}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and Binder-like hosts run as root
        argv.append("--allow-root")
    return argv


def cmd_lab(args: argparse.Namespace) -> int:
    """Install the kernelspec into this environment and replace ourselves with a
    locked-down JupyterLab (see `lockdown`): the Bastion kernel is the only way in."""
    if args.demo and args.config:
        raise ConfigError("give --demo DIR or --config PATH, not both")
    try:
        from .lockdown import write_config_dir  # needs jupyter_server: the `lab` extra
    except ImportError as exc:
        raise BastionError(
            f"JupyterLab is not installed ({exc})", hint="pip install 'bastion-kernel[lab]'"
        ) from None
    if args.demo:
        config = _generate_demo(Path(args.demo)).resolve()
        root = Path(args.demo).resolve()
    else:
        config = cfg.config_path(args.config)
        root = config.parent
    if args.notebooks:
        root = Path(args.notebooks).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(f"notebook folder {root} does not exist")
    cfg.load(config)  # refuse to launch on a broken deployment file
    install_kernelspec(sys_prefix=True, config=str(config))
    config_dir = write_config_dir(lab_config_dir())
    argv = lab_argv(root_dir=root, port=args.port, no_browser=args.no_browser, config_dir=config_dir)
    os.environ[cfg.ENV_VAR] = str(config)  # JUPYTER_TOKEN etc. pass through untouched
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)
    return EXIT_ERROR  # not reached: execvp replaces the process or raises


# --------------------------------------------------------------------------- dispatch


def _no_args(p: argparse.ArgumentParser) -> None:
    del p


COMMANDS: dict[str, tuple[str, AddArgs, Handler]] = {
    "install": ("install the Bastion kernelspec", _args_install, cmd_install),
    "review list": ("list review requests", _args_review_list, cmd_review_list),
    "review show": ("show a request, its cell and its data", _args_id, cmd_review_show),
    "review approve": ("release a request to its requester", _args_decide, cmd_review_approve),
    "review reject": ("refuse a request, with a reason", _args_reject, cmd_review_reject),
    "audit list": ("list audit sessions", _no_args, cmd_audit_list),
    "audit show": ("print one session's records", _args_session, cmd_audit_show),
    "audit verify": ("check the hash chains", _args_session_opt, cmd_audit_verify),
    "audit html": ("write one session as a readable HTML page", _args_audit_html, cmd_audit_html),
    "demo": ("write the demo datasets and deployment file", _args_demo, cmd_demo),
    "lab": ("install the kernel and start JupyterLab", _args_lab, cmd_lab),
}

GROUPS = {"review": "decide on held-back results", "audit": "inspect and verify the audit log"}


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree, built from `COMMANDS`."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's absent --config must not overwrite one given before the subcommand.
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"deployment file (default: ${cfg.ENV_VAR})")
    parser = argparse.ArgumentParser(prog="bastion", description="Bastion: the data owner's tool.")
    parser.add_argument("--config", metavar="PATH", default=None, help=f"deployment file (default: ${cfg.ENV_VAR})")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for key, (help_text, add_args, handler) in COMMANDS.items():
        words = key.split()
        if len(words) == 1:
            sub = top.add_parser(words[0], parents=[common], help=help_text)
        else:
            group, name = words
            if group not in groups:
                gp = top.add_parser(group, help=GROUPS[group])
                groups[group] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            sub = groups[group].add_parser(name, parents=[common], help=help_text)
        add_args(sub)
        sub.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bastion``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except BastionError as exc:
        line = f"bastion: {exc.title}: {exc.message}"
        if exc.hint:
            line += f" (hint: {exc.hint})"
        print(" ".join(line.split()), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
