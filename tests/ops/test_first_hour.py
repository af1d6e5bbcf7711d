"""The traps of a newcomer's first hour, through the real entry points: the token for the
README's curl lines, the port the callback URLs name, one precedence (the environment over
`.env`), one lock per SQLite file, one line and a documented exit code for every refusal,
`--help` everywhere, and Ctrl-C."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from dotenv import dotenv_values

from ops.envfile import webhook_secret
from ops.procfile import SOURCE_PROCFILE
from ops.supervisor import public_url_mismatch
from schemas.database import create_engine
from schemas.migrate import head_revision, upgrade
from tests.support.servers import free_fixed_port

ROOT = SOURCE_PROCFILE.parent
BIN = Path(sys.executable).parent
TASKLEDGER = str(BIN / "taskledger")
START_SECONDS = 60.0
# The secrets of .env.example, each a placeholder.
PLACEHOLDERS = (
    "TASKLEDGER_ADMIN_TOKEN",
    "TASKLEDGER_CALLBACK_SECRETS",
    "TASKLEDGER_PROVIDER_OPENAI_WEBHOOK_SECRETS",
)


def fresh() -> str:
    return secrets.token_urlsafe(32)


def base_environ(**settings: str) -> dict[str, str]:
    """This process's environment without any `TASKLEDGER_*`, plus `settings` (named
    without the prefix)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TASKLEDGER_")}
    base.pop("PORT", None)
    return base | {f"TASKLEDGER_{name}": value for name, value in settings.items()}


def service_environ(database: Path, **settings: str) -> dict[str, str]:
    """What a receiver and a reconciler need to start on `database`, archive off."""
    defaults = {
        "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "ADMIN_TOKEN": fresh(),
        "CALLBACK_SECRETS": fresh(),
        "ARCHIVE_URL": "off",
        "PROVIDERS": "apidot",
        "LOG_JSON": "true",
    }
    return base_environ(**(defaults | settings))


def project(tmp_path: Path) -> Path:
    """A directory to run `taskledger` in, as in a fresh clone: the Procfile, no `.env`."""
    shutil.copy(SOURCE_PROCFILE, tmp_path / "Procfile")
    return tmp_path


def run(args: Sequence[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=START_SECONDS
    )


def migrated(database: Path, revision: str = "head") -> Path:
    async def migrate() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{database}")
        try:
            await upgrade(engine, revision)
        finally:
            await engine.dispose()

    asyncio.run(migrate())
    return database


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text()


@contextmanager
def started(args: Sequence[str], env: Mapping[str, str], cwd: Path, port: int) -> Iterator[Started]:
    """`args` running until the receiver on `port` is ready; SIGTERM (then a bounded wait)
    when the block ends, unless the test ended it."""
    log = cwd / f"{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(args), env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
    running = Started(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(running)
        yield running
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=START_SECONDS)


def wait_ready(running: Started) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise AssertionError(f"it stopped:\n{running.output()}")
        try:
            if httpx.get(running.base_url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"not ready within {START_SECONDS:g} s:\n{running.output()}")


# -- 1. the README's curl lines need the token: `taskledger token` -------------------------


def test_token_prints_the_admin_token_of_dotenv_and_nothing_else(tmp_path: Path) -> None:
    assert run([TASKLEDGER, "init-env"], base_environ(), tmp_path).returncode == 0
    token = dotenv_values(tmp_path / ".env")["TASKLEDGER_ADMIN_TOKEN"]
    answer = run([TASKLEDGER, "token"], base_environ(), tmp_path)
    assert (answer.returncode, answer.stdout, answer.stderr) == (0, f"{token}\n", "")


def test_token_prints_the_exported_token_over_dotenv(tmp_path: Path) -> None:
    run([TASKLEDGER, "init-env"], base_environ(), tmp_path)
    exported = fresh()
    answer = run([TASKLEDGER, "token"], base_environ(ADMIN_TOKEN=exported), tmp_path)
    assert answer.stdout == f"{exported}\n"


def test_token_without_one_says_how_to_get_one_and_exits_2(tmp_path: Path) -> None:
    answer = run([TASKLEDGER, "token"], base_environ(), tmp_path)
    assert answer.returncode == 2
    assert answer.stdout == ""
    (line,) = answer.stderr.splitlines()
    assert "TASKLEDGER_ADMIN_TOKEN is not set" in line
    assert "taskledger init-env" in line


# -- 2. callback URLs on the port served; one `taskledger run` per SQLite file --------------


def test_init_env_writes_no_public_base_url(tmp_path: Path) -> None:
    run([TASKLEDGER, "init-env"], base_environ(), tmp_path)
    assert "TASKLEDGER_PUBLIC_BASE_URL" not in dotenv_values(tmp_path / ".env")


@dataclass
class Served:
    """A `taskledger run --port` left running for the tests that only look at it."""

    running: Started
    env: dict[str, str]
    cwd: Path
    port: int


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One `taskledger run --port` on a SQLite file in a fresh clone, with a .env as dev.py
    writes it; started once, as starting its three processes is the slow part."""
    cwd, port = project(tmp_path_factory.mktemp("served")), free_fixed_port()
    env = service_environ(cwd / "l.db")
    run([TASKLEDGER, "init-env"], base_environ(), cwd)
    with started([TASKLEDGER, "run", "--port", str(port)], env, cwd, port) as running:
        yield Served(running, env, cwd, port)


def issued_callback_url(service: Started, env: Mapping[str, str]) -> str:
    answer = httpx.post(
        service.base_url + "/v1/tasks",
        json={"provider": "apidot", "owner": "team-a", "model": "m"},
        headers={"authorization": f"Bearer {env['TASKLEDGER_ADMIN_TOKEN']}"},
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["callback_url"])


def test_run_issues_callback_urls_on_the_port_its_option_gives(served: Served) -> None:
    callback_url = issued_callback_url(served.running, served.env)
    assert callback_url.startswith(f"http://127.0.0.1:{served.port}/callbacks/apidot/")


def test_run_issues_callback_urls_on_the_port_the_port_variable_gives(tmp_path: Path) -> None:
    cwd, port = project(tmp_path), free_fixed_port()
    env = service_environ(tmp_path / "l.db") | {"PORT": str(port)}
    run([TASKLEDGER, "init-env"], base_environ(), cwd)  # a .env as dev.py writes it
    with started([TASKLEDGER, "run"], env, cwd, port) as service:
        callback_url = issued_callback_url(service, env)
    assert callback_url.startswith(f"http://127.0.0.1:{port}/callbacks/apidot/")


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://localhost:8011", False),
        ("https://hooks.example.com", False),
        ("", False),
    ],
    ids=["loopback-other-port", "loopback-same-port", "public", "unset"],
)
def test_a_public_url_on_another_loopback_port_is_warned_about(url: str, warned: bool) -> None:
    warning = public_url_mismatch({"TASKLEDGER_PUBLIC_BASE_URL": url}, 8011)
    assert (warning is not None) is warned


def test_a_second_run_on_the_same_sqlite_file_is_refused_naming_file_and_holder(
    served: Served,
) -> None:
    second = run([TASKLEDGER, "run", "--port", str(free_fixed_port())], served.env, served.cwd)
    assert second.returncode == 4
    (line,) = second.stderr.splitlines()
    assert str(served.cwd / "l.db") in line
    holder = f"taskledger run (pid {served.running.process.pid}, http://127.0.0.1:{served.port}"
    assert holder in line


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal")
def test_run_killed_with_sigkill_takes_its_processes_along(tmp_path: Path) -> None:
    """Nothing goes on serving without the SQLite file's lock: the port is freed, and the
    next run takes the file."""
    cwd, port = project(tmp_path), free_fixed_port()
    env = service_environ(tmp_path / "l.db")
    with started([TASKLEDGER, "run", "--port", str(port)], env, cwd, port) as service:
        children = _children(service.process.pid)
        assert len(children) >= 3, children  # web, reconciler, relay
        service.process.kill()
        service.process.wait(timeout=START_SECONDS)
        deadline = time.monotonic() + START_SECONDS
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in children if _alive(pid)]
        for pid in left:  # not to leave them serving after a failure
            os.kill(pid, signal.SIGKILL)
        assert not left
    again = free_fixed_port()
    with started([TASKLEDGER, "run", "--port", str(again)], env, cwd, again) as second:
        second.process.send_signal(signal.SIGINT)
        assert second.process.wait(timeout=START_SECONDS) == 0, second.output()


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in found]


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its (new) parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_run_stops_cleanly_on_sigint_and_exits_0(tmp_path: Path) -> None:
    cwd, port = project(tmp_path), free_fixed_port()
    env = service_environ(tmp_path / "l.db")
    with started([TASKLEDGER, "run", "--port", str(port)], env, cwd, port) as service:
        service.process.send_signal(signal.SIGINT)
        assert service.process.wait(timeout=START_SECONDS) == 0, service.output()
    assert "Traceback" not in service.output()


def test_run_exits_with_the_code_of_the_process_that_failed(tmp_path: Path) -> None:
    cwd, port = project(tmp_path), free_fixed_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        env = service_environ(tmp_path / "l.db", RECONCILER_METRICS_PORT=busy)
        answer = run([TASKLEDGER, "run", "--port", str(port)], env, cwd)
    assert answer.returncode == 4, answer.stdout + answer.stderr
    assert "taskledger: reconciler exited with code 4; stopped the others" in answer.stdout
    assert "Traceback" not in answer.stdout + answer.stderr


@pytest.mark.parametrize(
    ("whole_group", "number"),
    [(True, signal.SIGINT), (False, signal.SIGTERM), (False, signal.SIGINT)],
    ids=["ctrl-c", "kill", "kill-int"],
)
def test_a_signal_to_dev_py_run_stops_everything_before_it_exits(
    tmp_path: Path, whole_group: bool, number: signal.Signals
) -> None:
    """dev.py copied beside a copy of the project's files and its virtualenv's scripts, as it
    finds them after a first run (so nothing is installed, and the clone is left alone).
    Ctrl-C in a terminal signals the whole group; a supervisor's `kill` (or `kill -INT`)
    signals dev.py alone: either way the service stops with it, and it exits 128 + N."""
    for name in ("dev.py", "pyproject.toml", "Procfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "bin").symlink_to(BIN)
    stamp = hashlib.sha256((tmp_path / "pyproject.toml").read_bytes()).hexdigest()
    (tmp_path / ".venv" / ".taskledger-install").write_text(stamp)
    port = free_fixed_port()
    env = service_environ(tmp_path / "var" / "l.db")
    args = [sys.executable, "dev.py", "run", "--port", str(port)]
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        # Its own session, like a terminal's job.
        process = subprocess.Popen(
            args,
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Started(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(running)
        if whole_group:
            os.killpg(process.pid, number)
        else:
            process.send_signal(number)
        assert process.wait(timeout=START_SECONDS) == 128 + number, running.output()
    finally:
        if process.poll() is None:
            process.terminate()  # passed on to the service, which stops
            try:
                process.wait(timeout=START_SECONDS)
            finally:
                os.killpg(process.pid, signal.SIGKILL)
    assert "Traceback" not in running.output()
    assert "KeyboardInterrupt" not in running.output()
    with pytest.raises(httpx.TransportError):  # the receiver stopped with it
        httpx.get(running.base_url + "/healthz", timeout=1)


# -- 3. the environment over .env; what db upgrade did; the start-up lines ------------------


def test_the_exported_database_url_wins_over_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"TASKLEDGER_DATABASE_URL=sqlite:///{tmp_path / 'dotenv.db'}\n")
    env = base_environ(DATABASE_URL=f"sqlite:///{tmp_path / 'exported.db'}")
    answer = run([TASKLEDGER, "db", "upgrade"], env, tmp_path)
    assert answer.returncode == 0, answer.stderr
    assert "exported.db" in answer.stdout
    assert (tmp_path / "exported.db").exists()
    assert not (tmp_path / "dotenv.db").exists()


def test_db_upgrade_says_from_which_migration_to_which(tmp_path: Path) -> None:
    database = migrated(tmp_path / "l.db", "0004")
    env = base_environ(DATABASE_URL=f"sqlite:///{database}")
    first = run([TASKLEDGER, "db", "upgrade"], env, tmp_path)
    again = run([TASKLEDGER, "db", "upgrade"], env, tmp_path)
    head = head_revision()
    assert (
        first.stdout == f"taskledger: upgraded sqlite:///{database} from migration 0004 to {head}\n"
    )
    assert again.stdout == f"taskledger: sqlite:///{database} is already at migration {head}\n"


def test_each_process_names_its_database_without_credentials(served: Served) -> None:
    events = ("receiver_started", "reconciler_configured", "relay_started")
    deadline = time.monotonic() + START_SECONDS
    # Each process's lines, whichever starts last (they start side by side).
    awaited = [f'"event":"{e}"' for e in (*events, "reconciler_started")]
    while not all(line in served.running.output() for line in awaited):
        assert time.monotonic() < deadline, served.running.output()
        time.sleep(0.1)
    output = served.running.output()
    named = f'"database":"sqlite+aiosqlite:///{served.cwd / "l.db"}"'
    for event in events:
        (line,) = [line for line in output.splitlines() if f'"event":"{event}"' in line]
        assert named in line, line
    assert '"not_configured":["apidot"]' in output  # no BASE_URL: not polled


# -- 4. bad settings: one line naming the variable, a documented exit code -----------------

WEB = [sys.executable, "-m", "uvicorn", "receiver.app:create_app", "--factory", "--port", "0"]
RECONCILER = [sys.executable, "-m", "reconciler"]
RELAY = [sys.executable, "-m", "reconciler.relay"]
UPGRADE = [TASKLEDGER, "db", "upgrade"]
ENTRY_POINTS = {"web": WEB, "reconciler": RECONCILER, "relay": RELAY}


def refusal(args: Sequence[str], env: Mapping[str, str], cwd: Path) -> tuple[int, str]:
    """The exit code and the one line on stderr."""
    answer = run(args, env, cwd)
    lines = answer.stderr.splitlines()
    assert len(lines) == 1, answer.stderr
    assert "Traceback" not in answer.stdout
    return answer.returncode, lines[0]


@pytest.mark.parametrize("name", ["web", "reconciler", "relay", "db upgrade"])
def test_an_unreachable_database_is_one_line_and_exit_3(tmp_path: Path, name: str) -> None:
    """(A receiver with a spool starts anyway: `tests/e2e/test_spool_outage.py`.)"""
    url = f"postgresql://taskledger:hunter2@127.0.0.1:{free_fixed_port()}/ledger"
    env = service_environ(tmp_path / "unused.db", DATABASE_URL=url, SPOOL_ENABLED="false")
    code, line = refusal(ENTRY_POINTS.get(name, UPGRADE), env, tmp_path)
    assert code == 3
    assert "TASKLEDGER_DATABASE_URL: cannot reach postgresql://127.0.0.1:" in line
    assert "hunter2" not in line
    assert "taskledger@" not in line


@pytest.mark.parametrize("name", ["web", "reconciler", "relay"])
def test_a_database_not_migrated_is_one_line_and_exit_3(tmp_path: Path, name: str) -> None:
    env = service_environ(tmp_path / "empty.db")
    code, line = refusal(ENTRY_POINTS[name], env, tmp_path)
    assert code == 3
    assert line.endswith(
        f"is at migration none (there is no such file), not {head_revision()}: run"
        " `taskledger db upgrade`"
    )
    assert not (tmp_path / "empty.db").exists()  # asking did not make one


@pytest.mark.parametrize("name", ["db prune", "db refold"])
def test_maintenance_of_a_ledger_file_not_there_makes_none(tmp_path: Path, name: str) -> None:
    env = service_environ(tmp_path / "typo.db")
    code, line = refusal([TASKLEDGER, *name.split(), "--dry-run"], env, tmp_path)
    assert code == 3
    assert "typo.db is at migration none (there is no such file)" in line
    assert not (tmp_path / "typo.db").exists()


def from_the_future(database: Path) -> Path:
    """A ledger a newer taskledger migrated: at a migration this one does not have."""
    with sqlite3.connect(migrated(database)) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0999'")
    return database


@pytest.mark.parametrize(
    "name", ["web", "reconciler", "relay", "db upgrade", "run", "db prune", "db refold"]
)
def test_a_database_a_newer_taskledger_migrated_is_one_line_and_exit_3(
    tmp_path: Path, name: str
) -> None:
    env = service_environ(from_the_future(tmp_path / "l.db"))
    args = ENTRY_POINTS.get(name) or [TASKLEDGER, *name.split()]
    if name == "run":  # a port below the ephemeral range: no outgoing connection takes it
        args = [*args, "--port", str(free_fixed_port())]
    code, line = refusal(args, env, project(tmp_path))
    assert code == 3
    assert line.endswith(
        f"l.db is at migration 0999, newer than this taskledger knows (its newest:"
        f" {head_revision()}): run the taskledger that migrated it, or a newer one"
    )


def test_refold_of_a_provider_not_configured_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = service_environ(migrated(tmp_path / "l.db"))
    code, line = refusal([TASKLEDGER, "db", "refold", "--provider", "nope"], env, tmp_path)
    said = "taskledger: --provider nope is none of TASKLEDGER_PROVIDERS: apidot"
    assert (code, line) == (2, said)


@pytest.mark.parametrize("name", ["db prune", "db refold"])
def test_maintenance_on_a_database_not_migrated_is_one_line_and_exit_3(
    tmp_path: Path, name: str
) -> None:
    env = service_environ(migrated(tmp_path / "l.db", "0005"))
    code, line = refusal([TASKLEDGER, *name.split()], env, tmp_path)
    assert code == 3
    assert line.endswith(
        f"is at migration 0005, not {head_revision()}: run `taskledger db upgrade`"
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgres://",
        "postgresql://127.0.0.1",
        "postgresql://u:p@127.0.0.1:5432/",
        "postgresql://u:p@[::1/x",
        "postgresql://u:p@127.0.0.1:port/x",
    ],
)
def test_a_database_url_without_a_usable_database_is_one_line_and_exit_2(
    tmp_path: Path, url: str
) -> None:
    """Nothing is migrated: the driver would have picked a database of its own choosing."""
    env = service_environ(tmp_path / "unused.db", DATABASE_URL=url)
    code, line = refusal(UPGRADE, env, tmp_path)
    assert code == 2
    assert line.startswith("taskledger: TASKLEDGER_DATABASE_URL ")


def test_a_database_under_a_file_is_one_line_and_exit_3_for_run(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    env = service_environ(tmp_path / "afile" / "l.db")
    command = [TASKLEDGER, "run", "--port", str(free_fixed_port())]
    code, line = refusal(command, env, project(tmp_path))
    assert code == 3
    assert line.startswith(f"taskledger: TASKLEDGER_DATABASE_URL: cannot use {tmp_path}/afile")


def test_a_backup_under_a_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    target = tmp_path / "afile" / "out"
    env = service_environ(migrated(tmp_path / "l.db"))
    code, line = refusal([TASKLEDGER, "db", "backup", str(target)], env, project(tmp_path))
    assert code == 1
    assert line.startswith(f"taskledger: cannot use {target}")
    assert line.endswith(": Not a directory")


def test_an_export_under_a_file_is_one_line_and_exit_1(served: Served, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    target = tmp_path / "afile" / "out.csv"
    env = served.env | {"TASKLEDGER_URL": served.running.base_url}
    args = [TASKLEDGER, "export", "--format", "csv", "-o", str(target)]
    code, line = refusal(args, env, served.cwd)
    assert code == 1
    assert line.startswith(f"taskledger: cannot use {target}")  # or its `.partial`, first
    assert line.endswith(": Not a directory")


# An unprivileged user (root may write any file): the processes as a deployment runs them.
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.skipif(os.geteuid() != 0, reason="taking another user's identity needs root")
@pytest.mark.parametrize("name", ["web", "reconciler", "relay"])
def test_a_database_file_it_may_not_write_is_one_line_and_exit_3(name: str) -> None:
    """SQLite would open it read-only: the process would start and refuse every write."""
    directory = Path(tempfile.mkdtemp(prefix="taskledger-ro-"))
    try:
        directory.chmod(0o777)  # its journal files may be made: only the file is read-only
        database = migrated(directory / "ledger.db")
        database.chmod(0o444)
        env = service_environ(database)
        code, line = refusal([*NOBODY, *ENTRY_POINTS[name]], env, directory)
    finally:
        shutil.rmtree(directory)
    assert code == 3
    assert line.endswith("ledger.db is read-only for this process (it may not write the file)")


def test_a_word_for_a_number_in_the_web_process_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = service_environ(migrated(tmp_path / "l.db"), WRITER_BATCH_SIZE="abc")
    assert refusal(WEB, env, tmp_path) == (
        2,
        "web: TASKLEDGER_WRITER_BATCH_SIZE must be a number (got 'abc')",
    )


@pytest.mark.parametrize(
    ("name", "variable"),
    [("reconciler", "RECONCILER_METRICS_PORT"), ("relay", "NOTIFY_METRICS_PORT")],
)
def test_a_busy_metrics_port_is_one_line_and_exit_4(
    tmp_path: Path, name: str, variable: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = service_environ(migrated(tmp_path / "l.db"), **{variable: str(port)})
        code, line = refusal(ENTRY_POINTS[name], env, tmp_path)
    assert code == 4
    assert line.startswith(f"{name}: TASKLEDGER_{variable}: cannot listen on port {port}")


@pytest.mark.parametrize("variable", PLACEHOLDERS, ids=str.lower)
def test_a_copy_of_env_example_is_refused_naming_each_placeholder(
    tmp_path: Path, variable: str
) -> None:
    """`cp .env.example .env`, every placeholder but one replaced: `taskledger run` names it."""
    example = {k: v for k, v in dotenv_values(ROOT / ".env.example").items() if v is not None}
    real = {"TASKLEDGER_PROVIDER_OPENAI_WEBHOOK_SECRETS": webhook_secret()}
    for name in PLACEHOLDERS:
        if name != variable:
            example[name] = real.get(name, fresh())
    example["TASKLEDGER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'l.db'}"
    (project(tmp_path) / ".env").write_text("".join(f"{k}={v}\n" for k, v in example.items()))
    code, line = refusal(
        [TASKLEDGER, "run", "--port", str(free_fixed_port())], base_environ(), tmp_path
    )
    assert code == 2
    assert line.startswith(f"taskledger: {variable} holds a placeholder")
    assert not (tmp_path / "l.db").exists()  # refused before anything started


@pytest.mark.parametrize("token", ["short-token", "a" * 40], ids=["short", "one-character"])
def test_a_weak_admin_token_is_refused(tmp_path: Path, token: str) -> None:
    env = service_environ(migrated(tmp_path / "l.db"), ADMIN_TOKEN=token)
    code, line = refusal(WEB, env, tmp_path)
    assert code == 2
    assert line.startswith("web: TASKLEDGER_ADMIN_TOKEN is too weak")


def test_an_unknown_setting_is_warned_about_with_the_nearest_name(tmp_path: Path) -> None:
    env = service_environ(tmp_path / "empty.db", WRITER_BATCHSIZE="64")
    answer = run(RECONCILER, env, tmp_path)
    (warning,) = [line for line in answer.stdout.splitlines() if "setting_ignored" in line]
    assert (
        "TASKLEDGER_WRITER_BATCHSIZE is not a setting; did you mean TASKLEDGER_WRITER_BATCH_SIZE?"
        in warning
    )


# -- 7. --help, without any setting --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (RECONCILER, "TASKLEDGER_PROVIDER_<NAME>_{"),
        (RELAY, "TASKLEDGER_NOTIFY_METRICS_PORT"),
        ([TASKLEDGER], "usage: taskledger"),
        ([TASKLEDGER, "run"], "exit codes"),
        ([TASKLEDGER, "token"], "export TASKLEDGER_ADMIN_TOKEN=$(taskledger token)"),
        ([TASKLEDGER, "db", "upgrade"], "usage: taskledger db upgrade"),
        ([sys.executable, str(ROOT / "dev.py")], "python3 dev.py run"),
    ],
    ids=["reconciler", "relay", "taskledger", "run", "token", "db-upgrade", "dev.py"],
)
def test_every_entry_point_answers_help_without_any_setting(
    tmp_path: Path, args: list[str], says: str
) -> None:
    answer = run([*args, "--help"], base_environ(), tmp_path)
    assert answer.returncode == 0, answer.stderr
    assert says in answer.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing started
