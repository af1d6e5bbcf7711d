"""Subprocesses of a benchmark: servers on loopback pinned to a core, and their memory.

Every process started here is stopped by the context manager that started it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from ops.procfile import web_command

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
SAMPLE_EVERY_SECONDS = 0.1
# The HTTP protocol is the Procfile's (`receiver.server`), for taskledger and baselines alike.
UVICORN_OPTIONS = ("--loop", "uvloop", "--log-level", "warning")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Cores:
    """Where the server side and the load generator run (None: not pinned)."""

    server: str | None
    client: str | None

    @classmethod
    def detect(cls) -> Cores:
        usable = sorted(os.sched_getaffinity(0))
        if len(usable) < 2:
            return cls(None, None)
        return cls(str(usable[0]), str(usable[1]))


def pinned(command: Sequence[str], core: str | None) -> list[str]:
    return ["taskset", "-c", core, *command] if core is not None else list(command)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, all its threads, from /proc/PID/stat; 0 once
    the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # After the command's closing parenthesis, utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kb(pid: int, field: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM); 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss_mb(self) -> float:
        return proc_status_kb(self.pid, "VmRSS") / 1024

    def peak_mb(self) -> float:
        return proc_status_kb(self.pid, "VmHWM") / 1024

    def log_since(self, offset: int) -> str:
        """What the log holds past byte `offset`."""
        with contextlib.suppress(OSError), open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
        return ""

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


@dataclass
class Server(Process):
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def bench_environ(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without any TASKLEDGER_* of the caller's, plus `extra`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TASKLEDGER_")}
    return {**base, "PYTHONPATH": str(REPO), **extra}


@contextlib.contextmanager
def process(
    name: str, command: Sequence[str], env: Mapping[str, str], core: str | None, log_dir: Path
) -> Iterator[Process]:
    """Run `command` (pinned to `core`) with output to a log file; stop it on exit."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            pinned(command, core),
            cwd=REPO,
            env=bench_environ(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc = Process(name, popen, log_path)
    try:
        yield proc
    finally:
        stop(popen)


def stop(popen: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it does not end in time."""
    if popen.poll() is not None:
        return
    popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout=STOP_TIMEOUT_SECONDS)


def uvicorn_command(app: str, port: int) -> list[str]:
    """The Procfile's receiver command line on loopback, with uvloop and httptools, serving
    `app` (the receiver, or a baseline under the same flags)."""
    return web_command("127.0.0.1", port, *UVICORN_OPTIONS, app=app)


@contextlib.contextmanager
def uvicorn_server(
    name: str, app: str, env: Mapping[str, str], core: str | None, log_dir: Path
) -> Iterator[Server]:
    """An ASGI app factory under uvicorn (uvloop, httptools) on a free loopback port."""
    port = free_port()
    with process(name, uvicorn_command(app, port), env, core, log_dir) as proc:
        server = Server(proc.name, proc.popen, proc.log_path, port=port)
        wait_ready(server, "/healthz")
        yield server


def wait_ready(server: Server, path: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.popen.poll() is not None:
            raise RuntimeError(f"{server.name} exited during start-up:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + path, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer {path} within {READY_TIMEOUT_SECONDS} s")


class RssSampler:
    """Samples a process's VmRSS in a thread while in use; `max_mb` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.max_mb = 0.0

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.max_mb = max(self.max_mb, proc_status_kb(self._pid, "VmRSS") / 1024)
            self._stop.wait(SAMPLE_EVERY_SECONDS)
