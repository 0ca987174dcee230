"""``modeldeck up|down|status|logs``: the local stack from one command."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from installer import stack
from installer.processes import Layout, running, tail
from server.core.settings import SettingsError, load_settings


def _cmd_up(args: argparse.Namespace) -> int:
    settings = load_settings()
    layout = Layout(settings.home.resolve())
    print(f"Starting ModelDeck in {layout.home} (logs in {layout.logs}):", flush=True)
    try:
        secret = stack.up(settings, progress=lambda line: print(line, flush=True))
    except stack.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        stack.down(settings)
        return 1
    url = stack.api_url(settings)
    print(f"ModelDeck is up.\n  Console:   {console_url()}\n  API:       {url}/api/v1\n  API docs:  {url}/api/docs\n"
          f"  admin key: {secret}\n  (also in {layout.admin_key}, mode 600)\n"
          f'Try: curl -H "Authorization: Bearer $(cat {layout.admin_key})" {url}/api/v1/me')
    if not args.foreground:
        return 0
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stopping:
        dead = [n for n in ("api", "worker-cpu") if running(layout, n) is None]
        if dead:
            print(f"error: {', '.join(dead)} exited; stopping the stack", file=sys.stderr)
            stack.down(settings)
            return 1
        time.sleep(1)
    stack.down(settings)
    return 0


def console_url() -> str:
    """Return the console's URL as `up` starts it."""
    from console.settings import ConsoleSettings

    c = ConsoleSettings()
    return f"http://{c.host}:{c.port}"


def _cmd_down(_: argparse.Namespace) -> int:
    stopped = stack.down(load_settings(), progress=lambda line: print(line, flush=True))
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _cmd_status(_: argparse.Namespace) -> int:
    states = stack.status(load_settings())
    for name, state in states.items():
        print(f"{name:12} {state}")
    return 0 if states.get("readiness") == "ready" else 3


def _cmd_logs(args: argparse.Namespace) -> int:
    layout = Layout(load_settings().home.resolve())
    names = [args.component] if args.component else list(stack.COMPONENTS)
    for name in names:
        print(f"==> {layout.log(name)} <==")
        print(tail(layout.log(name), args.lines))
    return 0


def _cmd_admin_key(args: argparse.Namespace) -> int:
    from server.core import audit_repo, keys_repo
    from server.core.clock import now_iso
    from server.core.db import connect, ensure_indexes

    db = connect(load_settings())
    ensure_indexes(db)
    doc, secret = keys_repo.create_key(db, args.name, "admin", None, None, "modeldeck admin-key")
    audit_repo.append(db, {"time": now_iso(), "actor": "cli:modeldeck admin-key", "method": "cli", "role": "admin",
                           "action": "apikey.create", "target": doc["_id"], "outcome": "success", "status": 201,
                           "details": {"name": args.name, "role": "admin"}}, audit_repo.audit_keys(load_settings()))
    print(secret)
    return 0


def _cmd_rotate_secret_key(args: argparse.Namespace) -> int:
    from installer import secrets
    from server.core.errors import ModelDeckError

    settings = load_settings()
    new_key = args.new_key_file.read_text().strip() if args.new_key_file else None
    try:
        key, count, local = secrets.rotate(settings, Layout(settings.home.resolve()), new_key)
    except ModelDeckError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(f"re-encrypted {count} data-source secret(s) with the new key; the old key is no longer needed")
    if local:
        print(f"the new key is in {secrets.key_file(Layout(settings.home.resolve()))} (mode 600); restart the stack "
              "(modeldeck down && modeldeck up) so the API and workers use it")
    elif not args.new_key_file:
        print("set MODELDECK_SECRET_KEY to this new key on every API and worker host and restart them:")
        print(key)
    else:
        print("set MODELDECK_SECRET_KEY to the key in that file on every API and worker host and restart them")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the modeldeck command."""
    parser = argparse.ArgumentParser(prog="modeldeck", description="Run the ModelDeck stack on this machine.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the stack in the background and wait until it is ready")
    p_up.add_argument("--foreground", action="store_true", help="stay attached; stop the stack on Ctrl-C or SIGTERM")
    p_up.set_defaults(func=_cmd_up)
    sub.add_parser("down", help="stop what `up` started").set_defaults(func=_cmd_down)
    sub.add_parser("status", help="show each component and the API's readiness").set_defaults(func=_cmd_status)
    p_key = sub.add_parser("admin-key", help="create an admin API key directly in the repository and print it")
    p_key.add_argument("--name", default="admin")
    p_key.set_defaults(func=_cmd_admin_key)
    p_rotate = sub.add_parser("rotate-secret-key", help="re-encrypt every data-source secret under a new key")
    p_rotate.add_argument("--new-key-file", type=Path, help="read the new Fernet key from this file (default: generate one)")
    p_rotate.set_defaults(func=_cmd_rotate_secret_key)
    p_logs = sub.add_parser("logs", help="show the last lines of the logs")
    p_logs.add_argument("component", nargs="?", choices=stack.COMPONENTS)
    p_logs.add_argument("-n", "--lines", type=int, default=40)
    p_logs.set_defaults(func=_cmd_logs)
    p_compose = sub.add_parser("compose", help="the docker-compose stack: init (write .env), config, up, down, ps, logs, smoke (build, run, check)",
                               add_help=False)
    p_compose.set_defaults(func=None)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compose"]:
        from installer import compose

        return compose.main(argv[1:])
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
