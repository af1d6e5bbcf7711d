"""`python -m bench.instructions [--kind token|signed] [--database sqlite|postgresql]
[--requests N] [--concurrency C] [--clock ROUNDS]`: the instructions a callback costs in
process, against the durable floor's, counted by valgrind's callgrind.

Timings on this host drift by two within a day for the same code; instructions do not.
Each handler runs in its own process under callgrind: its ASGI app is driven straight (no
HTTP, no sockets: the server's share is the same for every handler), C requests at a time
on uvloop, first a warm-up, then N requests between two calls of `getppid`, at which
callgrind cuts its profile. The count between them, divided by N, is printed with the
ratio of the two, and each process's batches (taskledger's mean batch size says whether
both ran alike). Token callbacks of the ingest benchmark's gateway, or (`--kind signed`) its
signed `video.completed` webhooks, signed before the run; the warm-up's and the measured
requests all distinct; on SQLite with synchronous=FULL, or (`--database postgresql`) on a
database of its own on the local PostgreSQL, against its floor there (`pg_floor_app`): the
receiver's instructions only, not the server's. It takes about five minutes; valgrind is
installed with apt-get, as root, when missing.

`--clock ROUNDS` counts no instructions: the same processes run without callgrind, floor and
taskledger by turns, ROUNDS times each, and it prints each one's requests a second and CPU a
request, and taskledger's share of the floor's rate. On PostgreSQL that rate includes the
server's work and the round trips, which callgrind does not see: the batch's latency, on
which a receiver at c=16 waits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from standardwebhooks import Webhook

from bench import baselines, ledger

# The ingest benchmark's gateway callback (bench/load.lua), each one distinct.
PROMPT = (
    "A slow dolly shot through a lighthouse at dusk, waves breaking on black rocks below, warm"
    " lamp light sweeping over fog, 35mm film grain, gentle camera shake, seagulls crossing the"
    " frame, the keeper closing a wooden door behind him, cinematic colour grade, natural sound"
    " of wind and surf"
)
GATEWAY_BODY = (
    '{"code":200,"msg":"success","data":{"task_id":"%s","status":"running","progress":%d,'
    '"created_time":"2026-11-22T10:00:00Z","model":"sora-2-official","type":"video",'
    '"input":{"prompt":"' + PROMPT + '","duration":8,"aspect_ratio":"16:9",'
    '"resolution":"720p"},"request_id":"instructions-%d"}}'
)
TASKS = 500
WARM_UP = 500
MARKS = "getppid"  # the libc call callgrind cuts its profile at (`os.getppid`)
HANDLERS = ("floor", "taskledger")
KINDS = ("token", "signed")
DATABASES = ("sqlite", "postgresql")
# One request of a run: its path, body and headers beyond the content's type and length.
Header = tuple[bytes, bytes]
Request = tuple[str, bytes, Sequence[Header]]
Requests = Callable[[int], Request]


@dataclass(frozen=True, slots=True)
class Counted:
    handler: str
    instructions: int
    requests: int
    batches: str

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests


# -- inside callgrind: one handler driven ------------------------------------------------


async def _post(app: Any, path: str, body: bytes, extra: Sequence[Header] = ()) -> int:
    """One POST straight into the ASGI app; its status."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += extra
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # no disconnect while the answer is awaited
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    status: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


def token_callback(targets: Sequence[tuple[str, str]]) -> Requests:
    """The `n`th token callback: the gateway body of the ingest benchmark, each distinct."""

    def request(n: int) -> Request:
        path, task_id = targets[n % len(targets)]
        return path, (GATEWAY_BODY % (task_id, n // len(targets) % 99 + 1, n)).encode(), ()

    return request


def signed_webhooks(secret: str, count: int, first: int) -> Requests:
    """`count` distinct `video.completed` events of the ingest benchmark's signed runs, for
    `TASKS` videos, signed before they are sent (the signing is not the handler's cost)."""
    hook, now = Webhook(secret), datetime.now(UTC)
    made = []
    for n in range(first, first + count):
        msg_id = f"msg-instructions-{n}"
        event = {
            "id": f"evt-instructions-{n}",
            "object": "event",
            "created_at": int(now.timestamp()),
            "type": "video.completed",
            "data": {"id": f"video_{n % TASKS}"},
        }
        body = orjson.dumps(event)
        signature = hook.sign(msg_id=msg_id, timestamp=now, data=body.decode())
        headers = [
            (b"webhook-id", msg_id.encode()),
            (b"webhook-timestamp", b"%d" % int(now.timestamp())),
            (b"webhook-signature", signature.encode()),
        ]
        made.append(("/webhooks/openai", body, headers))
    return lambda n: made[n - first]


async def _drive(app: Any, request: Requests, count: int, at_once: int, first: int = 0) -> int:
    """Requests `first` to `first + count`, `at_once` clients; how many were not 2xx."""
    sent = first
    failed = 0

    async def client() -> None:
        nonlocal sent, failed
        while sent < first + count:
            n = sent
            sent += 1
            path, body, headers = request(n)
            failed += not 200 <= await _post(app, path, body, headers) < 300

    await asyncio.gather(*[client() for _ in range(at_once)])
    return failed


async def _register(app: Any, admin: str, kind: str) -> list[tuple[str, str]]:
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": f"Bearer {admin}"}
    provider = ledger.GATEWAY if kind == "token" else "openai"
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as http:
        targets = []
        for i in range(TASKS):
            task_id = f"instructions-{i}" if kind == "token" else f"video_{i}"
            body = {"provider": provider, "owner": "bench", "provider_task_id": task_id}
            answer = await http.post("/v1/tasks", json=body)
            answer.raise_for_status()
            targets.append((httpx.URL(answer.json()["callback_url"]).path, task_id))
    return targets


def postgres_cpu() -> float:
    """The CPU seconds every `postgres` process on this host has used (each backend's user
    and system time, from /proc): a local server's share of a run, as a difference."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # ended, or not ours to read
        name, _, rest = text.partition(") ")
        if name.endswith("(postgres"):
            fields = rest.split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _inner(handler: str, kind: str, requests: int, at_once: int, url: str) -> None:
    import uvloop

    batches = [0, 0]
    secrets = ledger.Secrets()
    if handler == "floor":
        os.environ[baselines.FLOOR_DATABASE_URL] = url
        app: Any = baselines.floor_app()
    else:
        os.environ.update(secrets.receiver_env(url) | {"TASKLEDGER_LOG_LEVEL": "warning"})
        ledger.migrate(url)
        from receiver import writer
        from receiver.app import create_app

        commit = writer.GroupCommitWriter._commit

        async def counted(self: writer.GroupCommitWriter, items: list[Any]) -> None:
            batches[0] += 1
            batches[1] += len(items)
            await commit(self, items)

        writer.GroupCommitWriter._commit = counted  # type: ignore[method-assign]
        app = create_app()

    async def requests_of() -> Requests:
        if kind == "signed":  # the floor takes any path and keeps the body alone
            if handler != "floor":
                await _register(app, secrets.admin, kind)
            return signed_webhooks(secrets.webhook, WARM_UP + requests, 0)
        if handler == "floor":
            return token_callback(
                [(f"/callbacks/{ledger.GATEWAY}/t{i}", f"t{i}") for i in range(TASKS)]
            )
        return token_callback(await _register(app, secrets.admin, kind))

    clock = [0.0, 0.0, 0.0]

    async def measure() -> int:
        async with app.router.lifespan_context(app):
            request = await requests_of()
            await _drive(app, request, WARM_UP, at_once)
            batches[:] = [0, 0]
            os.getppid()  # callgrind: the measured part starts
            clock[:] = [time.perf_counter(), time.process_time(), postgres_cpu()]
            failed = await _drive(app, request, requests, at_once, first=WARM_UP)
            clock[:] = [
                time.perf_counter() - clock[0],
                time.process_time() - clock[1],
                postgres_cpu() - clock[2],
            ]
            os.getppid()  # callgrind: and ends
            return failed

    failed = uvloop.run(measure())
    shape = f"{batches[0]} batches of {batches[1] / batches[0]:.1f}" if batches[0] else "-"
    print(f"BATCHES {shape}, {failed} failed", flush=True)
    print(f"CLOCK {clock[0]} {clock[1]} {clock[2]}", flush=True)


# -- outside: each handler under callgrind -------------------------------------------------


def ensure_valgrind() -> str:
    found = shutil.which("valgrind")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        sys.exit("bench.instructions: valgrind is missing; as root on Debian it is installed")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "valgrind"]):
        subprocess.run(args, env=env, check=True)
    return shutil.which("valgrind") or sys.exit("bench.instructions: valgrind did not install")


def _database(directory: Path, database: str, handler: str) -> AbstractContextManager[str]:
    """A fresh ledger of its own for one run of a handler, removed after it."""
    if database == "sqlite":
        return ledger.sqlite_url(directory, handler)
    return ledger.postgres_url(f"instructions_{handler}")


def _inner_args(handler: str, kind: str, requests: int, at_once: int, url: str) -> list[str]:
    args = ["--inner", handler, "--kind", kind, "--requests", str(requests)]
    return [*args, "--concurrency", str(at_once), "--url", url]


def count(
    handler: str, kind: str, requests: int, at_once: int, directory: Path, database: str
) -> Counted:
    valgrind = ensure_valgrind()
    out = directory / f"callgrind-{handler}"
    with _database(directory, database, handler) as url:
        args = _inner_args(handler, kind, requests, at_once, url)
        said, instructions = callgrind(valgrind, out, "bench.instructions", args)
    return Counted(handler, instructions, requests, _said(said, "BATCHES", handler))


def _said(lines: Sequence[str], key: str, handler: str) -> str:
    found = [line.removeprefix(f"{key} ") for line in lines if line.startswith(key)]
    if not found:
        sys.exit(f"bench.instructions: {handler} did not say its {key.lower()}")
    return found[0]


@dataclass(frozen=True)
class Clocked:
    """One handler's run on the clock: requests a second, and its process's CPU a request."""

    handler: str
    rate: float
    cpu_us: float
    server_us: float


def clocked(
    handler: str, kind: str, requests: int, at_once: int, directory: Path, database: str
) -> Clocked:
    """One run of a handler's inner process, not under callgrind: its wall clock and CPU
    between the marks (the database's own CPU is not the process's)."""
    with _database(directory, database, handler) as url:
        command = [sys.executable, "-m", "bench.instructions"]
        command += _inner_args(handler, kind, requests, at_once, url)
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"bench.instructions: {handler} failed (exit {done.returncode}):\n{done.stderr}")
    seconds, cpu, server = map(float, _said(done.stdout.splitlines(), "CLOCK", handler).split())
    return Clocked(handler, requests / seconds, cpu / requests * 1e6, server / requests * 1e6)


def _place(database: str) -> str:
    return "SQLite" if database == "sqlite" else "PostgreSQL"


def _clocked(run: Clocked, database: str) -> str:
    server = "" if database == "sqlite" else f" + {run.server_us:>3.0f}"
    return f"{run.rate:>7,.0f}/s {run.cpu_us:>4.0f}{server} µs"


def clock_report(what: str, database: str, rounds: list[tuple[Clocked, Clocked]]) -> None:
    """Each round's pair, then the median of the rounds' ratios."""
    print(f"{what}, {_place(database)}, in process, on the clock")
    server = "" if database == "sqlite" else " + PostgreSQL's"
    print(f"  requests a second, and CPU a request: the process's{server}")
    for floor, ours in rounds:
        pair = f"floor {_clocked(floor, database)}   taskledger {_clocked(ours, database)}"
        print(f"  {pair}   {ours.rate / floor.rate:.0%}")
    ratio = statistics.median(ours.rate / floor.rate for floor, ours in rounds)
    print(f"  median      taskledger {ratio:.0%} of the floor's requests a second")


def callgrind(
    valgrind: str,
    out: Path,
    module: str,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
) -> tuple[list[str], int]:
    """`python -m module args` under callgrind: the lines it printed, and its instructions
    between its two calls of `getppid`. A run that fails ends this one, with its errors."""
    command = [valgrind, "--tool=callgrind", f"--dump-before={MARKS}"]
    command += [f"--callgrind-out-file={out}", sys.executable, "-m", module, *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    part = Path(f"{out}.2")  # part 1 ends at the first mark, part 2 at the second
    if done.returncode != 0 or not part.exists():
        sys.exit(f"{module}: {' '.join(args[:2])} failed (exit {done.returncode}):\n{done.stderr}")
    totals = [line for line in part.read_text().splitlines() if line.startswith("totals:")]
    return done.stdout.splitlines(), int(totals[0].split()[1])


def report(
    what: str, database: str, unit: str, baseline: Counted, ours: Counted, against: str
) -> None:
    """What was counted, and where; both counts, each a `unit`; and their ratio."""
    print(f"{what}, {_place(database)}, in process")
    for counted in (baseline, ours):
        print(
            f"  {counted.handler:<11} {counted.per_request:>10,.0f} instructions a {unit}"
            f"  ({counted.batches})"
        )
    print(f"  ratio       {ours.per_request / baseline.per_request:.2f}x {against}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--kind", choices=KINDS, default="token", help="token callbacks or signed webhooks"
    )
    parser.add_argument("--database", choices=DATABASES, default="sqlite")
    parser.add_argument(
        "--clock",
        type=int,
        metavar="ROUNDS",
        help="not instructions: requests a second and CPU, ROUNDS runs of each, alternating",
    )
    parser.add_argument("--inner", choices=HANDLERS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        _inner(args.inner, args.kind, args.requests, args.concurrency, args.url)
        return 0
    what = "token callbacks" if args.kind == "token" else "signed webhooks"
    what = f"{args.requests} {what}, {args.concurrency} at a time"
    run = (args.kind, args.requests, args.concurrency)
    with tempfile.TemporaryDirectory(prefix="taskledger-instructions-") as scratch:
        if args.clock:
            # Alternating, so the host's drift falls on both alike.
            rounds = [
                (
                    clocked("floor", *run, Path(scratch), args.database),
                    clocked("taskledger", *run, Path(scratch), args.database),
                )
                for _ in range(args.clock)
            ]
            clock_report(what, args.database, rounds)
            return 0
        floor, ours = (count(handler, *run, Path(scratch), args.database) for handler in HANDLERS)
    report(what, args.database, "request", floor, ours, "the floor's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
