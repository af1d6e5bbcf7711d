"""Metrics with several receiver workers: `/metrics` on any worker shows the totals of all
(Prometheus's multiprocess mode), and `taskledger run` gives the workers a directory."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from ops.supervisor import workers_metrics
from schemas.settings import MULTIPROCESS_DIR_VARIABLE
from tests.ops.test_first_hour import TASKLEDGER, project, service_environ, started
from tests.support.databases import temporary_database
from tests.support.senders import apidot_body
from tests.support.servers import free_port, receiver_process
from tests.support.service import migrate
from tests.support.waiting import until

WORKERS = 2
ROUND = 24  # callbacks sent at once, each on a connection of its own
MAX_ROUNDS = 40
# A connection per request: the kernel hands each to whichever worker accepts it.
FRESH = httpx.Limits(max_keepalive_connections=0)
DELIVERIES = "taskledger_deliveries"


def total(text: str, family: str) -> float:
    """The sum of a family's samples in an exposition."""
    return sum(
        sample.value
        for metric in text_string_to_metric_families(text)
        if metric.name == family
        for sample in metric.samples
    )


def each_workers_deliveries(directory: Path) -> dict[str, float]:
    """Each worker's own count of stored callbacks, read from its own file alone."""
    counts = {}
    for file in directory.glob("counter_*.db"):
        with tempfile.TemporaryDirectory() as alone:
            shutil.copy(file, alone)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, alone)
            counts[file.stem] = sum(
                sample.value
                for metric in registry.collect()
                if metric.name == DELIVERIES
                for sample in metric.samples
            )
    return counts


async def send_round(http: httpx.AsyncClient, path: str, start: int) -> list[int | None]:
    """Each callback's status; None for one whose connection was lost (uvicorn replaces a
    worker that misses its health check, as one can on a starved machine)."""
    bodies = [apidot_body("t-1", "running", (start + i) % 100) for i in range(ROUND)]
    answers = await asyncio.gather(
        *(http.post(path, content=body) for body in bodies), return_exceptions=True
    )
    for answer in answers:
        if isinstance(answer, BaseException) and not isinstance(answer, httpx.TransportError):
            raise answer
    return [a.status_code if isinstance(a, httpx.Response) else None for a in answers]


async def register(http: httpx.AsyncClient, admin: dict[str, str]) -> str:
    body = {"provider": "apidot", "owner": "o", "model": "m", "provider_task_id": "t-1"}
    answer = await http.post("/v1/tasks", json=body, headers=admin)
    assert answer.status_code == 201, answer.text
    return str(httpx.URL(answer.json()["callback_url"]).path)


def leave_reconciler_metrics(directory: Path) -> None:
    """What a reconciler given the same directory would leave there: a poll counted."""
    code = (
        "from reconciler.metrics import ReconcilerMetrics;"
        "ReconcilerMetrics().polls.labels('apidot', 'ok').inc()"
    )
    env = {MULTIPROCESS_DIR_VARIABLE: str(directory), "PATH": ""}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)


async def test_metrics_of_either_worker_show_the_totals_of_both(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    async with temporary_database("postgresql", tmp_path) as url:
        await migrate(url)
        env = service_environ(tmp_path / "unused.db", DATABASE_URL=url)
        env[MULTIPROCESS_DIR_VARIABLE] = str(directory)
        admin = {"authorization": f"Bearer {env['TASKLEDGER_ADMIN_TOKEN']}"}
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        async with (
            receiver_process(env, port, workers=WORKERS),
            httpx.AsyncClient(base_url=base_url, limits=FRESH, timeout=30) as http,
        ):
            path = await register(http, admin)
            answers: list[int | None] = []
            for turn in range(MAX_ROUNDS):
                answers += await send_round(http, path, turn * ROUND)
                per_worker = each_workers_deliveries(directory)
                if len(per_worker) >= WORKERS and all(per_worker.values()):
                    break
            leave_reconciler_metrics(directory)
            shown = [(await http.get("/metrics")).text for _ in range(2 * ROUND)]
    stored = sum(per_worker.values())
    assert set(answers) - {None} == {200}
    assert stored >= answers.count(200)
    assert len(per_worker) >= WORKERS, per_worker  # each worker stored some
    assert all(0 < count < stored for count in per_worker.values()), per_worker
    assert {total(text, DELIVERIES) for text in shown} == {stored}
    assert {total(text, "taskledger_receiver_workers") for text in shown} == {WORKERS}
    assert not any("taskledger_polls_total" in text for text in shown)


async def test_run_with_two_workers_shows_both_at_metrics(tmp_path: Path) -> None:
    """`taskledger run --workers 2` (on PostgreSQL: SQLite runs one): the second worker may
    start after the first is ready; once it serves, either worker's `/metrics` counts two."""
    cwd, port = project(tmp_path), free_port()
    args = [TASKLEDGER, "run", "--port", str(port), "--workers", str(WORKERS)]
    async with temporary_database("postgresql", tmp_path) as url:
        env = service_environ(tmp_path / "unused.db", DATABASE_URL=url)
        with started(args, env, cwd, port) as service:
            deadline = time.monotonic() + 30
            counted: set[float] = set()
            async with httpx.AsyncClient(base_url=service.base_url, limits=FRESH) as http:
                while time.monotonic() < deadline and counted != {WORKERS}:
                    shown = [(await http.get("/metrics")).text for _ in range(ROUND)]
                    counted = {total(text, "taskledger_receiver_workers") for text in shown}
    assert counted == {WORKERS}


def live_workers(directory: Path) -> set[int]:
    """The pids whose worker gauge is in the directory."""
    return {int(f.stem.rpartition("_")[2]) for f in directory.glob("gauge_livesum_*.db")}


async def test_a_worker_killed_leaves_the_count_of_workers(tmp_path: Path) -> None:
    """kill -9 skips a worker's shutdown: /metrics forgets it anyway, and counts the
    worker uvicorn starts in its place."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    database = tmp_path / "l.db"
    await migrate(f"sqlite+aiosqlite:///{database}")
    env = service_environ(database)
    env[MULTIPROCESS_DIR_VARIABLE] = str(directory)
    port = free_port()
    async with (
        receiver_process(env, port, workers=WORKERS),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        await until(lambda: len(live_workers(directory)) == WORKERS, within=30)
        killed = min(live_workers(directory))
        os.kill(killed, signal.SIGKILL)
        # uvicorn starts another worker in its place; then a scrape answers.
        await until(lambda: len(live_workers(directory) - {killed}) == WORKERS, within=30)
        text = (await http.get("/metrics")).text
    assert total(text, "taskledger_receiver_workers") == WORKERS
    assert killed not in live_workers(directory)


def environment_of(env: dict[str, str]) -> tuple[dict[str, str], bool]:
    """The web process's environment in `taskledger run`, and whether the directory it
    names (if any) was gone once the run ended."""
    with workers_metrics(env) as web_env:
        named = web_env.get(MULTIPROCESS_DIR_VARIABLE)
        seen = dict(web_env)
    return seen, named is not None and not Path(named).exists()


def test_run_gives_several_workers_a_metrics_directory_of_their_own_for_the_run() -> None:
    seen, removed = environment_of({"WEB_CONCURRENCY": "2"})
    assert seen[MULTIPROCESS_DIR_VARIABLE]
    assert removed


def test_run_gives_one_worker_no_metrics_directory() -> None:
    seen, _ = environment_of({})
    assert MULTIPROCESS_DIR_VARIABLE not in seen


def test_run_empties_the_metrics_directory_it_is_given(tmp_path: Path) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"left by an earlier run")
    seen, removed = environment_of(
        {"WEB_CONCURRENCY": "2", MULTIPROCESS_DIR_VARIABLE: str(tmp_path)}
    )
    assert seen[MULTIPROCESS_DIR_VARIABLE] == str(tmp_path)
    assert not removed
    assert list(tmp_path.iterdir()) == []
