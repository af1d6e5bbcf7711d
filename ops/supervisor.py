"""`taskledger run`: every process of the Procfile, stopped together (like honcho)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from ops.procfile import expand, procfile_commands

STOP_TIMEOUT_SECONDS = 20


def supervise(environ: Mapping[str, str], *, host: str, port: int) -> int:
    """Run each Procfile process; when one stops, stop the others (like honcho)."""
    env = {**environ, "PORT": str(port), "HOST": host}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    procs = {
        name: subprocess.Popen(shlex.split(expand(command, env)), env=env)  # noqa: S603
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
    return stop_all(procs)


def stop_all(procs: Mapping[str, subprocess.Popen[bytes]]) -> int:
    """SIGTERM each process still running, wait for all (SIGKILL past the timeout); the
    largest exit code."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs.values():
        try:
            codes.append(proc.wait(timeout=STOP_TIMEOUT_SECONDS))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return max((abs(code) for code in codes), default=0)
