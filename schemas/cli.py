"""The `taskledger` command: database upgrades, the Procfile's processes, the read commands."""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
from dotenv import dotenv_values

from schemas import console
from schemas.database import create_engine
from schemas.demo import run_demo
from schemas.errors import ConfigError
from schemas.migrate import upgrade
from schemas.settings import DEFAULT_DATABASE_URL, PREFIX

ENV_FILE = Path(".env")
PROCFILE = Path("Procfile")


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    """Run one command; `transport` answers the read commands' HTTP (tests pass a mock)."""
    args = _parser().parse_args(argv)
    try:
        if args.command in console.COMMANDS:
            return console.run(args, load_environ(), transport)
        return _dispatch(args)
    except ConfigError as exc:
        print(f"taskledger: {exc}", file=sys.stderr)
        return 2
    except console.CommandError as exc:
        print(f"taskledger: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskledger", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    db = commands.add_parser("db", help="database maintenance").add_subparsers(
        dest="db_command", required=True
    )
    db.add_parser("upgrade", help="apply the schema migrations")
    run = commands.add_parser("run", help="start every process of the Procfile")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--host", default="127.0.0.1")
    commands.add_parser("init-env", help="write a .env with fresh local secrets if none exists")
    demo = commands.add_parser("demo", help="simulator + receiver + reconciler, faults on")
    demo.add_argument("--tasks", type=int, default=300)
    console.add_commands(commands)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "db":
        asyncio.run(_upgrade(load_environ()))
        print("taskledger: database is at the current migration")
        return 0
    if args.command == "demo":
        return run_demo(args.tasks)
    if args.command == "init-env":
        write_env_file(ENV_FILE)
        return 0
    write_env_file(ENV_FILE)
    environ = load_environ()
    asyncio.run(_upgrade(environ))
    return supervise(environ, host=args.host, port=args.port)


def load_environ() -> dict[str, str]:
    """The process environment over the values of `.env` (the environment wins)."""
    values = {k: v for k, v in dotenv_values(ENV_FILE).items() if v is not None}
    return {**values, **os.environ}


async def _upgrade(environ: Mapping[str, str]) -> None:
    engine = create_engine(environ.get(PREFIX + "DATABASE_URL") or DEFAULT_DATABASE_URL)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


def write_env_file(path: Path) -> None:
    """Generate local secrets once; an existing file is never touched."""
    if path.exists():
        return
    lines = [
        "# Local secrets for taskledger, generated once. Never commit this file.",
        f"{PREFIX}DATABASE_URL={DEFAULT_DATABASE_URL}",
        f"{PREFIX}PUBLIC_BASE_URL=http://127.0.0.1:8000",
        f"{PREFIX}ADMIN_TOKEN={secrets.token_urlsafe(32)}",
        f"{PREFIX}CALLBACK_SECRETS={secrets.token_urlsafe(32)}",
        f"{PREFIX}PROVIDER_OPENAI_WEBHOOK_SECRETS=whsec_{_b64_secret()}",
    ]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    print(f"taskledger: wrote {path} with fresh local secrets")


def _b64_secret() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def procfile_commands(path: Path = PROCFILE) -> dict[str, str]:
    commands = {}
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.startswith("#"):
            commands[name.strip()] = command.strip()
    return commands


def supervise(environ: Mapping[str, str], *, host: str, port: int) -> int:
    """Run each Procfile process; when one stops, stop the others (like honcho)."""
    env = {**environ, "PORT": str(port), "HOST": host}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    procs = {
        name: subprocess.Popen(shlex.split(_expand(command, env)), env=env)  # noqa: S603
        for name, command in procfile_commands().items()
    }
    print(f"taskledger: running {', '.join(procs)} on http://{host}:{port}")
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(p.poll() is None for p in procs.values()):
        time.sleep(0.2)
    return _stop_all(procs)


_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def _expand(command: str, env: Mapping[str, str]) -> str:
    """Shell-style `$NAME`, `${NAME}` and `${NAME:-default}`, without a shell."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        return env.get(name) or match.group(2) or ""

    return _VARIABLE.sub(value, command)


def _stop_all(procs: Mapping[str, subprocess.Popen[bytes]]) -> int:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs.values():
        try:
            codes.append(proc.wait(timeout=20))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return max((abs(code) for code in codes), default=0)


if __name__ == "__main__":
    raise SystemExit(main())
