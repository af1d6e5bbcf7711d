#!/usr/bin/env python3
"""Set up and run taskledger with nothing but Python 3.11+.

python3 dev.py run     # virtualenv, install, .env with local secrets, migrate, start
python3 dev.py test    # virtualenv, install, lint, format check, types, tests

`run` takes `taskledger run`'s options (`python3 dev.py run --port 8011`; see
`.venv/bin/taskledger run --help` for the settings and exit codes), `test` pytest's.
Ctrl-C stops everything started and exits 130.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".taskledger-install"
CHROMIUM = Path("/usr/bin/chromium")
EXIT_INTERRUPTED = 130
WORKERS = 3


def ensure_environment() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs before any check
        sys.exit("taskledger needs Python 3.11 or newer")
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text() != wanted:
        print("dev.py: installing taskledger and its dependencies", flush=True)
        run(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
        run(BIN / "python", "-m", "pip", "install", "--quiet", "-e", ".[dev]")
        STAMP.write_text(wanted)


def run(*args: object) -> None:
    code = call(*args)
    if code != 0:
        sys.exit(code)


def call(*args: object) -> int:
    """Run one of our tools and wait for it to end. The tool runs in a process group of
    its own, and SIGINT, SIGTERM and SIGHUP sent to dev.py (Ctrl-C in a terminal, a
    `kill`, a closed terminal) are passed on to it once: it stops in its own way, its
    children with it, before dev.py ends. 128 + the signal's number when stopped so."""
    child = subprocess.Popen([str(a) for a in args], cwd=ROOT, process_group=0)  # noqa: S603
    stopped_by: list[int] = []

    def forward(number: int, _frame: object) -> None:
        stopped_by.append(number)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(number)

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {number: signal.signal(number, forward) for number in forwarded}
    try:
        code = child.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 128 + stopped_by[0] if stopped_by else code


def ensure_chromium() -> None:
    """The dashboard's browser test drives Debian's Chromium (nothing is downloaded)."""
    if CHROMIUM.exists():
        return
    apt = shutil.which("apt-get")
    if apt is None or getattr(os, "geteuid", lambda: -1)() != 0:
        print(f"dev.py: {CHROMIUM} is missing; as root on Debian, dev.py installs it", flush=True)
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "chromium"]):
        print(f"dev.py: {' '.join(args)}", flush=True)
        code = subprocess.call(args, env=env)  # noqa: S603 - the system's own apt-get
        if code != 0:
            sys.exit(f"dev.py: `{' '.join(args)}` failed (exit {code}): cannot install Chromium")
    if not CHROMIUM.exists():
        sys.exit(f"dev.py: apt-get installed chromium, but {CHROMIUM} is still missing")


def test(extra: list[str]) -> None:
    run(BIN / "ruff", "check", ".")
    run(BIN / "ruff", "format", "--check", ".")
    run(BIN / "mypy")
    ensure_chromium()
    if extra:
        run(BIN / "pytest", *extra)
        return
    # Independent files on parallel workers (most tests wait on sockets and subprocesses).
    # A test that stops a server (PostgreSQL, RabbitMQ) starts one of its own to stop, so
    # nothing needs to run alone.
    run(BIN / "pytest", "-q", "-n", str(WORKERS), "--dist", "loadfile")


def main() -> None:
    command, extra = (sys.argv[1:2] or ["run"])[0], sys.argv[2:]
    if command in {"-h", "--help", "help"}:
        print(__doc__.strip())
        return
    if command not in {"run", "test"}:
        sys.exit(__doc__)
    try:
        ensure_environment()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    if command == "test":
        test(extra)
    else:
        run(BIN / "taskledger", "run", *extra)


if __name__ == "__main__":
    main()
