"""The Procfile: its commands, their `${NAME:-default}` variables, and the command lines of
its processes.

The Procfile is the production truth of how each process starts; the demo, the tests and the
benchmarks start the receiver with its `web` command (`web_command`) and the Python processes
(`reconciler`, `relay`) with `python_command`, never a copy of them.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

PROCFILE = Path("Procfile")
# The repository's own Procfile, for starting the receiver from anywhere (demo, tests, bench).
SOURCE_PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def procfile_commands(path: Path | None = None) -> dict[str, str]:
    """Each process's command line by name, as written: in `path`, else the current
    directory's Procfile (a deployment's own), else the one taskledger ships with."""
    if path is None:
        path = PROCFILE if PROCFILE.is_file() else SOURCE_PROCFILE
    commands = {}
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.startswith("#"):
            commands[name.strip()] = command.strip()
    return commands


def expand(command: str, env: Mapping[str, str]) -> str:
    """Shell-style `$NAME`, `${NAME}` and `${NAME:-default}`, without a shell."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        return env.get(name) or match.group(2) or ""

    return _VARIABLE.sub(value, command)


def web_command(host: str, port: int, *options: str, app: str | None = None) -> list[str]:
    """The Procfile's `web` command on `host`:`port` run by this Python (`python -m uvicorn …`),
    `options` appended; `app` serves another factory the same way (the benchmarks' baselines)."""
    line = expand(procfile_commands(SOURCE_PROCFILE)["web"], {"HOST": host, "PORT": str(port)})
    program, factory, *flags = shlex.split(line)
    return [sys.executable, "-m", program, app or factory, *flags, *options]


def python_command(name: str) -> list[str]:
    """The Procfile's `name` command, a `python …` line, run by this Python."""
    program, *arguments = shlex.split(procfile_commands(SOURCE_PROCFILE)[name])
    if program != "python":
        raise ValueError(f"the Procfile's {name!r} process is not run by python")
    return [sys.executable, *arguments]
