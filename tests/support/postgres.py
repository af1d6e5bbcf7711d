"""A PostgreSQL server of the test's own, to stop and start again: a new cluster made with
the installed server binaries (`initdb`, `pg_ctl`) in a temporary directory, listening on
127.0.0.1 on a free fixed port, its unix socket in that directory, trust auth; deleted at
the end.

Nothing here touches the PostgreSQL other tests (or other people) use. As root it runs as
the `postgres` OS user: PostgreSQL will not run as root.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from tests.support.databases import temporary_database, unavailable
from tests.support.servers import free_fixed_port

SUPERUSER = "postgres"
# As root, the cluster belongs to and runs as this OS user.
UNPRIVILEGED_USER = "postgres"
START_SECONDS = 60
STOP_SECONDS = 60
# Another process may take the free port between the pick and the server's bind.
START_ATTEMPTS = 3
_PROGRAMS = ("initdb", "pg_ctl", "postgres")
# Debian and Ubuntu install each major version's server binaries here, off PATH.
_DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"


@dataclass(frozen=True)
class _Account:
    uid: int
    gid: int


class ThrowawayPostgres:
    """One cluster in `home` (`data/`, its log, its socket), served on `port`."""

    def __init__(self, bindir: Path, home: Path, account: _Account | None) -> None:
        self.bindir = bindir
        self.home = home
        self.data = home / "data"
        self.log = home / "postgres.log"
        self.host = "127.0.0.1"
        self.port = 0
        self._account = account
        self._running = False

    def create(self) -> None:
        """initdb: a new cluster, its superuser `postgres`, trusted."""
        self._run(
            "initdb",
            *("--pgdata", str(self.data), "--username", SUPERUSER, "--auth", "trust"),
            *("--encoding", "UTF8", "--no-locale"),
        )

    def start(self) -> None:
        """Start the server; return once it accepts connections. The first start picks the
        port (one no other process is handed while the server is down), and picks another if
        that one was taken meanwhile."""
        if self.port:
            self._start()
            return
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = free_fixed_port()
            try:
                self._start()
                return
            except RuntimeError:
                if attempt == START_ATTEMPTS or "could not bind" not in self._log_text():
                    raise

    def stop(self, mode: str = "fast") -> None:
        """Stop the server. `fast` (the default) cuts every session, as a failover does."""
        self._run("pg_ctl", "stop", "--pgdata", str(self.data), "--mode", mode, "--wait")
        self._running = False

    async def outage(self, seconds: float) -> None:
        """Stop the server for `seconds`, then start it again (also when cancelled)."""
        await asyncio.to_thread(self.stop)
        try:
            await asyncio.sleep(seconds)
        finally:
            await asyncio.to_thread(self.start)

    def remove(self) -> None:
        """Stop the server if it runs (or a pid file says so), and delete the cluster."""
        try:
            if self._running or (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.home)

    def _start(self) -> None:
        self._write_settings()
        self._run(
            "pg_ctl",
            *("start", "--pgdata", str(self.data), "--log", str(self.log)),
            *("--wait", "--timeout", str(START_SECONDS)),
        )
        self._running = True

    def _write_settings(self) -> None:
        """postgresql.auto.conf (read last, so it wins): where to listen, and durability
        spelled out at PostgreSQL's defaults, as the tests measure it."""
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.home),
            "fsync": "on",
            "synchronous_commit": "on",
        }
        quoted = {name: value.replace("'", "''") for name, value in settings.items()}
        lines = [f"{name} = '{value}'\n" for name, value in quoted.items()]
        path = self.data / "postgresql.auto.conf"
        path.write_text("".join(lines))
        self._own(path)

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [str(self.bindir / program), *args],
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=max(START_SECONDS, STOP_SECONDS) + 30,
            check=False,
            user=None if self._account is None else self._account.uid,
            group=None if self._account is None else self._account.gid,
            extra_groups=None if self._account is None else [],
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}\n"
                f"server log:\n{self._log_text()}"
            )

    def _own(self, path: Path) -> None:
        if self._account is not None:
            os.chown(path, self._account.uid, self._account.gid)

    def _log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return "(none)"


@contextmanager
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A started server of the block's own, shut down and deleted when the block exits.
    Without the server binaries the test skips (fails in CI)."""
    bindir = server_bindir()
    account = _unprivileged_account()
    home = Path(tempfile.mkdtemp(prefix="taskledger-postgres-"))
    if account is not None:
        os.chown(home, account.uid, account.gid)
    server = ThrowawayPostgres(bindir, home, account)
    try:
        server.create()
        server.start()
        yield server
    finally:
        server.remove()


def server_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres: on PATH, `pg_config --bindir`,
    or Debian's newest /usr/lib/postgresql/<major>/bin."""
    candidates: list[Path] = []
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    if pg_config := shutil.which("pg_config"):
        done = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode == 0:
            candidates.append(Path(done.stdout.strip()))
    candidates += [Path(d) for d in sorted(glob.glob(_DEBIAN_BINDIRS), key=_major, reverse=True)]
    for bindir in candidates:
        if all(os.access(bindir / program, os.X_OK) for program in _PROGRAMS):
            return bindir
    _missing(
        "PostgreSQL's server binaries (initdb, pg_ctl, postgres) are not installed"
        " (not on PATH, nor in pg_config --bindir)"
    )


def _major(bindir: str) -> int:
    found = re.search(r"/(\d+)/bin$", bindir)
    return int(found.group(1)) if found else 0


def _unprivileged_account() -> _Account | None:
    """As root, the account the server runs as (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        _missing(f"PostgreSQL will not run as root, and there is no {UNPRIVILEGED_USER} user")
    return _Account(entry.pw_uid, entry.pw_gid)


def _missing(reason: str) -> NoReturn:
    unavailable(reason, f"a PostgreSQL server of the test's own is required in CI: {reason}")


@pytest.fixture(name="postgres")
def own_postgres() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL server of the test's own, to stop: never the one others share."""
    with throwaway_postgres() as server:
        yield server


@pytest.fixture(name="database_url")
async def own_database_url(postgres: ThrowawayPostgres, tmp_path: Path) -> AsyncIterator[str]:
    """A database on the test's own server: a module that imports this fixture and
    `own_postgres` runs its tests there instead of on the shared one."""
    async with temporary_database(
        "postgresql", tmp_path, host=postgres.host, port=postgres.port
    ) as url:
        yield url
