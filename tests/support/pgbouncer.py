"""PgBouncer in transaction pooling mode in front of the test PostgreSQL: how most managed
PostgreSQL is reached, started by the tests that show taskledger works there.

It runs Debian's `pgbouncer` (installed with apt-get when missing and this is root, the way
dev.py installs Chromium), with a server pool smaller than the clients' pools, so that
client connections really do take turns on server connections between transactions.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import NoReturn

import asyncpg
from sqlalchemy.engine import make_url

from tests.support.databases import PG_HOST, PG_PORT, PG_USER, unavailable
from tests.support.servers import free_port

PGBOUNCER = Path("/usr/sbin/pgbouncer")
# Fewer server connections than one engine's pool (10, and 10 more at need): clients
# must take turns on them.
SERVER_POOL_SIZE = 8
START_SECONDS = 15.0
STOP_SECONDS = 10.0
# PgBouncer refuses to run as root; it switches to this user (PostgreSQL's own).
UNPRIVILEGED_USER = "postgres"
_INSTALL_LOCK = Path(tempfile.gettempdir()) / "taskledger-tests-pgbouncer.lock"


def ensure_pgbouncer() -> Path:
    """Debian's pgbouncer, installed when missing; without it the test skips (fails in CI)."""
    if not PGBOUNCER.exists():
        with _install_lock():
            if not PGBOUNCER.exists():
                _install()
    if not PGBOUNCER.exists():
        _missing(f"{PGBOUNCER} is missing, and it could not be installed")
    return PGBOUNCER


@contextmanager
def _install_lock() -> Iterator[None]:
    """One apt-get at a time across the suite's parallel workers."""
    with _INSTALL_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _install() -> None:
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        _missing(f"{PGBOUNCER} is missing; as root on Debian, the test installs it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "pgbouncer"]):
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            _missing(f"`{' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")


def _missing(reason: str) -> NoReturn:
    unavailable(reason, f"PgBouncer is required in CI: {reason}")


@asynccontextmanager
async def transaction_pooler(direct_url: str) -> AsyncIterator[str]:
    """Run PgBouncer in front of the database of `direct_url` for the block; yield that
    database's URL through it, with `pooling=transaction` (what a user sets)."""
    program = ensure_pgbouncer()
    port = free_port()
    # A directory of its own, not the test's: the user pgbouncer switches to must read it.
    home = Path(tempfile.mkdtemp(prefix="taskledger-pgbouncer-"))
    try:
        config, log_path = _write_config(home, port), home / "pgbouncer.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for by polling
                [str(program), *_user_option(), str(config)], stdout=log, stderr=log
            )
        try:
            await _wait_accepting(port, process, log_path)
            url = make_url(direct_url).set(host="127.0.0.1", port=port)
            yield url.update_query_dict({"pooling": "transaction"}).render_as_string(False)
        finally:
            _stop(process)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _write_config(home: Path, port: int) -> Path:
    """pgbouncer.ini and its user list (PostgreSQL trusts the tests' user)."""
    home.chmod(0o755)
    users = home / "userlist.txt"
    users.write_text(f'"{PG_USER}" ""\n')
    config = home / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={PG_HOST} port={PG_PORT}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "pool_mode = transaction\n"
        "auth_type = trust\n"
        f"auth_file = {users}\n"
        f"default_pool_size = {SERVER_POOL_SIZE}\n"
        "max_client_conn = 500\n"
    )
    for path in (users, config):
        path.chmod(0o644)
    return config


def _user_option() -> list[str]:
    """`-u postgres` when run as root: pgbouncer will not run as root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        _missing(f"pgbouncer will not run as root, and there is no {UNPRIVILEGED_USER} user")
    return ["-u", UNPRIVILEGED_USER]


async def _wait_accepting(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Return once a query through the pooler answers; fail with its log if it exits or
    does not answer within `START_SECONDS`."""
    deadline = asyncio.get_running_loop().time() + START_SECONDS
    while True:
        if process.poll() is not None:
            raise _failed(f"pgbouncer exited ({process.returncode})", log)
        try:
            connection = await asyncpg.connect(
                host="127.0.0.1",
                port=port,
                user=PG_USER,
                database="postgres",
                statement_cache_size=0,
                timeout=2,
            )
        except (OSError, asyncpg.PostgresError, TimeoutError):
            if asyncio.get_running_loop().time() > deadline:
                raise _failed("pgbouncer did not answer", log) from None
            await asyncio.sleep(0.05)
            continue
        try:
            await connection.execute("SELECT 1")
            return
        finally:
            await connection.close()


def _failed(what: str, log: Path) -> RuntimeError:
    return RuntimeError(f"{what}; its log:\n{log.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (pgbouncer's immediate shutdown), SIGKILL past `STOP_SECONDS`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
