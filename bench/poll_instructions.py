"""`python -m bench.poll_instructions [--polls N] [--database sqlite|postgresql]`: the
instructions a reconciler's poll costs, against a bare HTTP client's GET of the same status,
counted by valgrind's callgrind.

The catch-up case's CPU a poll moves with the host by up to 2x; instructions do not. Each
side runs in its own process under callgrind, against one simulator (not counted) whose
tasks finish at once and send no callback:
- `reconciler`: the reconciler's own passes (`Reconciler.run_pass`: claim, poll through
  its provider client, read, fold, write), in process, on a ledger of due tasks;
- `bare`: aiohttp's `ClientSession.get` of each task's status URL and `orjson.loads` of its
  body, the same number at a time, and nothing else.

Each polls a warm-up first, then N between two calls of `getppid`, where callgrind cuts its
profile. The count between them, divided by N, is printed with the ratio of the two. It
takes a few minutes; valgrind is installed with apt-get, as root, when missing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import orjson

from bench import catchup, ledger
from bench.context import Context
from bench.instructions import Counted, callgrind, ensure_valgrind, report
from bench.procs import bench_environ

WARM_UP = 500
SIDES = ("bare", "reconciler")
DATABASES = ("sqlite", "postgresql")


# -- inside callgrind: one side polls ------------------------------------------------------


async def _bare(ids: list[str], warm_up: int, at_once: int) -> int:
    import aiohttp

    from reconciler.clients import join_url
    from schemas.settings import Settings
    from schemas.wire import request_headers, status_path

    provider = Settings.from_environ(os.environ).providers[ledger.GATEWAY]
    kind = provider.kind
    urls = [join_url(provider.base_url, status_path(kind, task_id)) for task_id in ids]
    headers = {"accept": "application/json", **request_headers(kind, provider.api_key, poll=True)}
    failed = 0

    async def poll(session: aiohttp.ClientSession, part: list[str]) -> None:
        nonlocal failed
        for url in part:
            async with session.get(url, headers=headers, allow_redirects=False) as response:
                orjson.loads(await response.read())
                failed += response.status != 200

    async def polls(session: aiohttp.ClientSession, chosen: list[str]) -> None:
        await asyncio.gather(*(poll(session, chosen[i::at_once]) for i in range(at_once)))

    async with aiohttp.ClientSession() as session:
        await polls(session, urls[:warm_up])
        os.getppid()  # callgrind: the measured part starts
        await polls(session, urls[warm_up:])
        os.getppid()  # callgrind: and ends
    return failed


async def _reconciler(warm_up: int, polls: int) -> int:
    from reconciler.clients import ProviderClients
    from reconciler.process import Reconciler
    from schemas.clock import utc_now
    from schemas.database import create_engine
    from schemas.settings import Settings
    from schemas.store import LedgerStore

    settings = Settings.from_environ(os.environ)
    engine = create_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
    store = LedgerStore(engine, utc_now, settings.readers)
    errors = 0

    async def passes(reconciler: Reconciler, until: int, done: int) -> int:
        nonlocal errors
        while done < until:
            report = await reconciler.run_pass()
            if not report.claimed:
                raise SystemExit(f"no task left to poll after {done}")
            done += report.polled
            errors += report.errors
        return done

    try:
        async with ProviderClients.open(settings.providers.values()) as clients:
            reconciler = Reconciler(settings, store, clients, clock=utc_now)
            done = await passes(reconciler, warm_up, 0)
            os.getppid()  # callgrind: the measured part starts
            measured = await passes(reconciler, warm_up + polls, done) - done
            os.getppid()  # callgrind: and ends
    finally:
        await store.close()
        await engine.dispose()
    print(f"POLLED {measured}", flush=True)
    return errors


def _inner(side: str, polls: int, ids_file: str | None) -> None:
    import uvloop

    if side == "bare":
        ids = Path(ids_file or "").read_text().split()
        failed = uvloop.run(_bare(ids, WARM_UP, catchup.CONCURRENCY))
        print(f"POLLED {len(ids) - WARM_UP}", flush=True)
    else:
        failed = uvloop.run(_reconciler(WARM_UP, polls))
    print(f"FAILED {failed}", flush=True)


# -- outside: a simulator, a ledger, each side under callgrind ------------------------------


def _database(ctx: Context, database: str) -> AbstractContextManager[str]:
    if database == "sqlite":
        return ledger.sqlite_url(ctx.scratch("ledger"), "polls")
    return ledger.postgres_url("poll_instructions")


def count(polls: int, database: str) -> tuple[Counted, Counted]:
    valgrind = ensure_valgrind()
    plan = catchup.Plan(WARM_UP + polls, None)
    with tempfile.TemporaryDirectory(prefix="taskledger-polls-") as scratch:
        ctx = Context(Path(scratch), quick=True)
        with _database(ctx, database) as url, catchup.simulator(ctx, plan) as sim:
            ledger.migrate(url)
            ids = catchup.submit_silent_tasks(ctx, sim, plan.tasks)
            growth = ledger.Growth(due_now=True, history=False, provider_task_ids=ids)
            ledger.grow(url, plan.tasks, growth)
            listed = Path(scratch) / "ids.txt"
            listed.write_text("\n".join(ids))
            env = catchup.reconciler_env(ctx, url, sim, plan)
            # One claim a pass no bigger than the warm-up, so the measured part starts
            # between passes.
            env["TASKLEDGER_RECONCILER_BATCH_SIZE"] = str(WARM_UP)
            return (
                _counted(valgrind, Path(scratch), "bare", polls, env, str(listed)),
                _counted(valgrind, Path(scratch), "reconciler", polls, env, None),
            )


def _counted(
    valgrind: str,
    scratch: Path,
    side: str,
    polls: int,
    env: dict[str, str],
    ids: str | None,
) -> Counted:
    args = ["--inner", side, "--polls", str(polls), *(["--ids", ids] if ids else [])]
    module = "bench.poll_instructions"
    said, instructions = callgrind(
        valgrind, scratch / f"callgrind-{side}", module, args, bench_environ(env)
    )
    told = dict(line.split(" ", 1) for line in said if line.startswith(("POLLED", "FAILED")))
    if "POLLED" not in told:
        sys.exit(f"{module}: {side} did not say how many it polled")
    return Counted(side, instructions, int(told["POLLED"]), f"{told['FAILED']} failed")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.poll_instructions", description=__doc__)
    parser.add_argument("--polls", type=int, default=3000)
    parser.add_argument("--database", choices=DATABASES, default="sqlite")
    parser.add_argument("--inner", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        _inner(args.inner, args.polls, args.ids)
        return 0
    bare, ours = count(args.polls, args.database)
    what = f"{ours.requests} polls, {catchup.CONCURRENCY} at a time"
    report(what, args.database, "poll", bare, ours, "the bare client's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
