"""`taskledger demo`: the simulator, receiver and reconciler on loopback, with faults on.

Every process runs as it would in production (subprocesses, HTTP between them);
the demo only submits tasks through the API and reads the ledger at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from ops.envfile import webhook_secret
from ops.procfile import web_command
from ops.simulated import SIMULATED_PROVIDERS, simulated_environment
from schemas.clock import utc_now
from schemas.database import create_engine
from schemas.migrate import upgrade
from schemas.store import LedgerStore

FAULTS = {
    "--drop-rate": "0.3",
    "--duplicate-rate": "0.1",
    "--reorder-rate": "0.1",
    "--bad-signature-rate": "0.05",
    "--delay-rate": "0.1",
    "--max-callback-delay-s": "1",
    "--poll-429-rate": "0.05",
    "--poll-500-rate": "0.05",
    # What real providers do that a reader must survive: kept, never refused.
    "--unknown-status-rate": "0.05",
    "--non-video-event-rate": "0.05",
    "--cancel-spelling-rate": "0.5",
    "--envelope-rate": "0.3",
    "--wrong-task-id-rate": "0.02",
}
SETTLE_TIMEOUT_SECONDS = 180
MAX_TASKS = 100_000


def task_count(raw: str) -> int:
    """`--tasks`: a whole number of tasks from 1 to `MAX_TASKS` (an argparse type)."""
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_TASKS:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of tasks from 1 to {MAX_TASKS:,}: {raw!r}"
        )
    return int(raw)


def run_demo(tasks: int = 300) -> int:
    try:
        task_count(str(tasks))
    except argparse.ArgumentTypeError as exc:
        print(f"taskledger demo: --tasks {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="taskledger-demo-") as workdir:
        return asyncio.run(_demo(Path(workdir), tasks))


async def _demo(workdir: Path, count: int) -> int:
    ports = {"sim": _free_port(), "web": _free_port()}
    env = _environment(workdir, ports)
    engine = create_engine(env["TASKLEDGER_DATABASE_URL"])
    await upgrade(engine)
    store = LedgerStore(engine, utc_now)
    print(f"taskledger demo: {count} tasks across {', '.join(SIMULATED_PROVIDERS)}, with faults:")
    print("  " + ", ".join(f"{k.strip('-')}={v}" for k, v in FAULTS.items()))
    with _processes(env, ports):
        web = f"http://127.0.0.1:{ports['web']}"
        async with httpx.AsyncClient(base_url=web, timeout=10) as http:
            try:
                await wait_ready(http)
            except TimeoutError as exc:
                raise SystemExit(f"taskledger demo: {exc}") from None
            await _submit(http, env["TASKLEDGER_ADMIN_TOKEN"], count)
            summary = await _follow(store, count)
            rejected = _rejections((await http.get("/metrics")).text)
        truth = await _truth(f"http://127.0.0.1:{ports['sim']}")
    matches = await _matches(store, truth)
    await engine.dispose()
    _report(summary, rejected, matches, count)
    return 0 if matches == count else 1


def _environment(workdir: Path, ports: Mapping[str, int]) -> dict[str, str]:
    return simulated_environment(
        database_url=f"sqlite+aiosqlite:///{workdir / 'demo.db'}",
        sim_url=f"http://127.0.0.1:{ports['sim']}",
        api_key="sk-demo",
        admin_token=secrets.token_urlsafe(16),
        callback_secrets=[secrets.token_urlsafe(16)],
        webhook_secret=webhook_secret(24),
        public_url=f"http://127.0.0.1:{ports['web']}",
        provider={"EXPECTED_SECONDS": "4", "RATE_LIMIT": "100", "CONCURRENCY": "16"},
        settings={"LOG_LEVEL": "warning", "POLL_INTERVAL_SECONDS": "0.2"},
        base={"PATH": str(Path(sys.executable).parent)},
    )


@contextmanager
def _processes(env: dict[str, str], ports: Mapping[str, int]) -> Iterator[None]:
    secret = env["TASKLEDGER_PROVIDER_OPENAI_WEBHOOK_SECRETS"]
    commands = [
        [
            sys.executable,
            "-m",
            "simulator",
            "--port",
            str(ports["sim"]),
            "--api-key",
            "sk-demo",
            "--webhook-url",
            f"{env['TASKLEDGER_PUBLIC_BASE_URL']}/webhooks/openai",
            "--webhook-secret",
            secret,
            "--min-duration-s",
            "1",
            "--max-duration-s",
            "8",
            "--progress-callbacks",
            "--time-scale",
            "0.3",
            "--seed",
            str(secrets.randbelow(1000)),
            *[part for flag, value in FAULTS.items() for part in (flag, value)],
        ],
        web_command("127.0.0.1", ports["web"], "--log-level", "warning"),
        [sys.executable, "-m", "reconciler"],
    ]
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL) for c in commands]  # noqa: S603
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


async def wait_ready(http: httpx.AsyncClient, within_seconds: float = 30) -> None:
    """Until the receiver's `/readyz` answers 200 (database reachable and migrated)."""
    deadline = time.monotonic() + within_seconds
    while time.monotonic() < deadline:
        try:
            if (await http.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the receiver was not ready within {within_seconds:g} s")


async def _submit(http: httpx.AsyncClient, token: str, count: int) -> None:
    names = list(SIMULATED_PROVIDERS)
    headers = {"authorization": f"Bearer {token}"}

    async def one(i: int) -> None:
        body = {
            "provider": names[i % len(names)],
            "owner": "demo",
            "model": "sora-2",
            "submit": True,
            "request": {"prompt": f"demo clip {i}", "duration": 4},
        }
        answer = await http.post("/v1/tasks", json=body, headers=headers)
        answer.raise_for_status()

    for start in range(0, count, 50):
        await asyncio.gather(*[one(i) for i in range(start, min(count, start + 50))])
    print(f"submitted {count} tasks through POST /v1/tasks (submit: true)")


async def _follow(store: LedgerStore, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
    while True:
        summary = await store.summary()
        settled = summary["tasks"] - summary["open"]
        states = ", ".join(f"{k} {v}" for k, v in sorted(summary["by_state"].items()))
        print(f"\r  settled {settled:>4}/{count}  [{states}]".ljust(100), end="", flush=True)
        if settled >= count or time.monotonic() > deadline:
            print()
            return summary
        await asyncio.sleep(1)


async def _truth(sim: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=sim) as http:
        tasks = (await http.get("/_sim/truth")).json()["tasks"]
    return {t["task_id"]: t["normalized"] for t in tasks}


async def _matches(store: LedgerStore, truth: Mapping[str, str]) -> int:
    rows = await store.final_states()
    return sum(1 for task_id, state in rows if truth.get(task_id or "") == state)


def _rejections(metrics: str) -> int:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("taskledger_rejections_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _report(summary: dict[str, Any], rejected: int, matches: int, count: int) -> None:
    print("\n" + format_report(summary, rejected, matches, count))


def format_report(summary: Mapping[str, Any], rejected: int, matches: int, count: int) -> str:
    """The demo's closing table: every label padded to the longest, every count aligned."""
    rows: list[tuple[str, str]] = [
        *((state, str(n)) for state, n in sorted(summary["by_state"].items())),
        ("recovered only by polling", str(summary["recovered_by_poll"])),
        ("duplicate deliveries absorbed", str(summary["duplicates"])),
        ("forged or bad callbacks refused", str(rejected)),
        ("conflicts resolved", str(summary["conflicts"])),
        ("match the provider truth", f"{matches} of {count}"),
    ]
    label_width = max(len(label) for label, _ in rows) + 2
    number_width = max(len(value.split(" ")[0]) for _, value in rows)
    lines = ["report"]
    for label, value in rows:
        number, _, rest = value.partition(" ")
        tail = f" {rest}" if rest else ""
        lines.append(f"  {label:<{label_width}}{number:>{number_width}}{tail}")
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
