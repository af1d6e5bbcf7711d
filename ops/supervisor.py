"""`taskledger run`: every process of the Procfile, stopped together (like honcho), holding
the SQLite file against a second `taskledger run`; the exit code says how it ended."""

from __future__ import annotations

import ctypes
import fcntl
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from ops.procfile import expand, procfile_commands
from schemas.clock import utc_now
from schemas.errors import EXIT_FAILED, ConfigError, DatabaseUnreachable, InUse
from schemas.settings import MULTIPROCESS_DIR_VARIABLE, PREFIX

STOP_TIMEOUT_SECONDS = 20
# How a process we asked to stop may end: by itself, or by the signal (uvicorn re-raises it).
STOPPED_CLEANLY = frozenset({0, -signal.SIGTERM, -signal.SIGINT})
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
ANY_ADDRESS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - names, not a bind


def supervise(environ: Mapping[str, str], *, host: str, port: int) -> int:
    """Run each Procfile process; when one stops, stop the others (like honcho). 0 after a
    stop we were asked for; else the code of the process that stopped first (see
    `first_failure`)."""
    env = child_environment(environ, host, port)
    with workers_metrics(env) as web_env:
        return _supervise(env, web_env, host, port)


def _supervise(env: dict[str, str], web_env: dict[str, str], host: str, port: int) -> int:
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    # Each in a process group of its own: Ctrl-C reaches us alone, and each process gets one
    # SIGTERM from us (a second signal makes uvicorn skip its graceful shutdown).
    # The workers' metrics directory is the web process's alone (its /metrics sums what is
    # in it); the reconciler and the relay serve their own.
    own = {k: v for k, v in env.items() if k != MULTIPROCESS_DIR_VARIABLE}
    procs = {
        name: subprocess.Popen(  # noqa: S603 - the Procfile's own commands
            shlex.split(expand(command, env)),
            env=web_env if name == "web" else own,
            process_group=0,
            preexec_fn=_ending_with(os.getpid()),  # runs in the child; this process has no threads
        )
        for name, command in procfile_commands().items()
    }
    print(f"taskledger: running {', '.join(procs)} on http://{host}:{port}", flush=True)
    while not stopping and all(p.poll() is None for p in procs.values()):
        time.sleep(0.2)
    first = None if stopping else next(n for n, p in procs.items() if p.poll() is not None)
    codes = stop_all(procs)
    if first is None:
        return 0 if all(code in STOPPED_CLEANLY for code in codes.values()) else EXIT_FAILED
    print(f"taskledger: {first} exited with code {codes[first]}; stopped the others", flush=True)
    return first_failure(codes[first])


_PR_SET_PDEATHSIG = 1  # prctl(2)


def _ending_with(parent: int) -> Callable[[], None] | None:
    """What a child runs before it starts, on Linux: the kernel sends it SIGTERM when
    `parent` ends, however it ends. Killed with SIGKILL, `taskledger run` could not stop its
    processes; they served on without the SQLite file's lock, and a second run started
    beside them."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def end_with_parent() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it ended before this line: no signal will come
            os.kill(os.getpid(), signal.SIGTERM)

    return end_with_parent


def first_failure(code: int) -> int:
    """The exit code of `taskledger run` when a process stopped unasked: its own code (2 a bad
    setting, 3 the database, 4 a port in use), or 1 for a crash, a signal or a plain exit."""
    return code if 0 < code < 128 else EXIT_FAILED


def stop_all(procs: Mapping[str, subprocess.Popen[bytes]]) -> dict[str, int]:
    """SIGTERM each process still running, wait for all (SIGKILL past the timeout); each
    one's exit code (negative: the signal that ended it)."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = {}
    for name, proc in procs.items():
        try:
            codes[name] = proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[name] = proc.wait()
    return codes


@contextmanager
def workers_metrics(env: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """The web process's environment. With several uvicorn workers (`WEB_CONCURRENCY`), it
    names a directory where each worker writes its metrics, so that `/metrics` on any shows
    the totals of all: a new one for this run, unless `PROMETHEUS_MULTIPROC_DIR` names one
    (emptied of an earlier run's files). The other processes serve metrics of their own."""
    given = env.get(MULTIPROCESS_DIR_VARIABLE, "").strip()
    if given:
        for stale in Path(given).glob("*.db"):
            stale.unlink()
    if given or workers_of(env) < 2:
        yield dict(env)
        return
    with tempfile.TemporaryDirectory(prefix="taskledger-metrics-") as directory:
        yield {**env, MULTIPROCESS_DIR_VARIABLE: directory}


def workers_of(env: Mapping[str, str]) -> int:
    """How many workers uvicorn starts: `WEB_CONCURRENCY`, as uvicorn reads it (1 unset)."""
    raw = env.get("WEB_CONCURRENCY", "").strip()
    if not raw:
        return 1
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ConfigError(f"WEB_CONCURRENCY must be a whole number of workers (got {raw!r})")
    return int(raw)


def child_environment(environ: Mapping[str, str], host: str, port: int) -> dict[str, str]:
    """What each process gets: `environ` with `PORT`, `HOST`, this Python's scripts first on
    `PATH`, and `TASKLEDGER_PUBLIC_BASE_URL` derived from host and port when not given."""
    env = {**environ, "PORT": str(port), "HOST": host}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    if not env.get(PREFIX + "PUBLIC_BASE_URL", "").strip():
        env[PREFIX + "PUBLIC_BASE_URL"] = local_url(host, port)
    return env


def local_url(host: str, port: int) -> str:
    """Where this machine reaches a server listening on `host`:`port`."""
    name = "127.0.0.1" if host in ANY_ADDRESS else host
    return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"


def public_url_mismatch(environ: Mapping[str, str], port: int) -> str | None:
    """A warning when `TASKLEDGER_PUBLIC_BASE_URL` is a loopback address on another port
    than the one the receiver listens on (a `.env` written for another port)."""
    url = environ.get(PREFIX + "PUBLIC_BASE_URL", "").strip()
    parts = urlsplit(url)
    if not url or parts.hostname not in LOOPBACK_NAMES:
        return None
    given = parts.port or (443 if parts.scheme == "https" else 80)
    if given == port:
        return None
    return (
        f"taskledger: warning: {PREFIX}PUBLIC_BASE_URL is {url}, but the receiver listens on"
        f" port {port}: callback URLs will miss it (unset it to derive it from --port)"
    )


def check_port_free(host: str, port: int) -> None:
    """`InUse` naming the port when the receiver could not listen on it."""
    try:
        socket.create_server((host, port)).close()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise InUse(
            f"PORT: cannot listen on {host}:{port} ({reason}): choose another with --port or PORT"
        ) from None


@contextmanager
def database_lock(database: Path, holder: str) -> Iterator[Path]:
    """Hold `<database>.lock`, an flock beside the SQLite file, for the block; one another
    process holds is `InUse`, naming the file and its holder. The kernel drops the lock
    when its holder ends, however it ends: nothing stale to clean up."""
    path = database.with_name(database.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:  # a directory that is a file, or one this user may not write
        raise DatabaseUnreachable(
            f"{PREFIX}DATABASE_URL: cannot use {database} ({exc.strerror or exc})"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 512, 0).decode(errors="replace").strip()
            raise InUse(
                f"{database} is in use by {other or 'another process'}: stop it first,"
                f" or set another {PREFIX}DATABASE_URL"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        yield path
    finally:
        os.close(fd)


def holder(host: str, port: int) -> str:
    """Who holds the lock, as the refused process is told."""
    since = utc_now().isoformat(timespec="seconds")
    return f"taskledger run (pid {os.getpid()}, http://{host}:{port}, since {since})"
