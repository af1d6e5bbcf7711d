"""`python -m bench.profile [--seconds N] [--connections C] [--mode M] [--database D]`.

Profiles the receiver under wrk load with py-spy (installed into this venv with pip when
missing) and prints the functions with the most samples: by own time, then thread by thread
(the event loop, the SQLite commit thread) including callees.
The collapsed stacks are kept in `bench/results/profile-<database>-<mode>.txt`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from bench import ingest, ledger
from bench.context import Context
from bench.load import Load, run_load
from bench.procs import Server, uvicorn_server
from bench.report import RESULTS_DIR

TOP = 25


def ensure_py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if found:
        return found
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return str(beside)


def record(server: Server, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    command = [
        ensure_py_spy(),
        "record",
        "--pid",
        str(server.pid),
        "--duration",
        str(seconds),
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
        "--threads",
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


REPO_ROOT = str(Path(__file__).resolve().parents[1])


def frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rpartition(" ")
    return stack.split(";"), int(count)


def short(frame: str) -> str:
    """`function (path/to/module.py:line)` without the virtualenv's prefix or the line."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3", f"{REPO_ROOT}/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"


def top_entries(collapsed: str) -> tuple[int, Counter[str], Counter[str]]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        if not line.strip():
            continue
        stack, count = frames(line)
        total += count
        own[short(stack[-1])] += count
        for name in {short(frame) for frame in stack}:
            inclusive[name] += count
    return total, own, inclusive


def print_top(title: str, counts: Counter[str], total: int) -> None:
    print(f"\n{title}")
    for name, count in counts.most_common(TOP):
        print(f"  {count / total:6.1%}  {name}")


# The frames that start the server (under every sample of its main thread): left out of the
# per-thread lists, which are for finding work.
STARTUP_CHAIN = (
    "_run_module_as_main ",
    "_run_code ",
    "<module> (uvicorn",
    "Command.",
    "Context.invoke ",
    "main (uvicorn",
    "run (uvicorn",
    "Server.run (uvicorn",
    "asyncio_run ",
    "Runner.run ",
)


def by_thread(collapsed: str) -> dict[str, str]:
    """The collapsed stacks grouped by thread name (py-spy's `--threads` puts
    `thread (id): name` first): uvicorn's event loop runs in `MainThread`, SQLite's commits in
    `taskledger-commit`."""
    groups: dict[str, list[str]] = {}
    for line in collapsed.splitlines():
        if line.strip():
            first = line.split(";", 1)[0]
            name = first.partition(": ")[2] if first.startswith("thread (") else "all threads"
            groups.setdefault(name, []).append(line)
    return {name: "\n".join(lines) for name, lines in groups.items()}


def print_thread(name: str, total: int, inclusive: Counter[str], all_samples: int) -> None:
    """One thread group's share of the samples and its top functions including callees,
    without the frames every one of its samples has (the server's start-up chain)."""
    if total < all_samples / 100:
        return  # a thread that barely ran
    informative = Counter(
        {
            frame: n
            for frame, n in inclusive.items()
            if n < total and not frame.startswith(STARTUP_CHAIN)
        }
    )
    print_top(
        f"{name}: {total / all_samples:.0%} of samples; including callees, as a share of its own",
        informative,
        total,
    )


def database_url(ctx: Context, database: str) -> AbstractContextManager[str]:
    if database == "postgresql":
        return ledger.postgres_url("profile")
    return ledger.sqlite_url(ctx.scratch("profile"), "profile")


def profile(ctx: Context, seconds: int, connections: int, mode: str, database: str) -> Path:
    with database_url(ctx, database) as url:
        ledger.migrate(url)
        env = ctx.secrets.receiver_env(url)
        logs = ctx.scratch("logs")
        with uvicorn_server("receiver", ingest.RECEIVER_APP, env, ctx.cores.server, logs) as server:
            provider = ledger.GATEWAY if mode == "gateway" else ledger.SIGNED
            targets = ledger.register(server.url, ctx.secrets.admin, provider, 2_000, "prof")
            data = _data(ctx, mode, targets, seconds)
            out = RESULTS_DIR / f"profile-{database}-{mode}.txt"
            RESULTS_DIR.mkdir(exist_ok=True)
            load = Load(
                server.url, mode, data, connections, seconds + 3, "prof", 0, ctx.cores.client
            )
            spy = _delayed_record(server, seconds, out)
            result = run_load(load)
            spy.join()
    print(f"load: {result.rps:,.0f} req/s, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms")
    return out


def _data(ctx: Context, mode: str, targets: list[ledger.Target], seconds: int) -> Path:
    path = ctx.scratch("data") / f"profile-{mode}.tsv"
    if mode == "gateway":
        return ingest.write_gateway_data(path, targets)
    count = ingest.SIGNED_PER_SECOND_CAP * (seconds + 3)
    return ingest.write_signed_data(path, targets, ctx.secrets.webhook, "prof", count)


def _delayed_record(server: Server, seconds: int, out: Path) -> threading.Thread:
    """Start py-spy one second into the load (past the first connections) and wait for it."""

    def run() -> None:
        threading.Event().wait(1.0)
        spy = record(server, seconds, out)
        _, errors = spy.communicate(timeout=seconds + 60)
        if spy.returncode != 0:
            print(errors.decode(errors="replace"), file=sys.stderr)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--mode", choices=("gateway", "signed"), default="gateway")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args(argv)
    ensure_py_spy()
    with tempfile.TemporaryDirectory(prefix="taskledger-profile-") as workdir:
        ctx = Context(Path(workdir))
        out = profile(ctx, args.seconds, args.connections, args.mode, args.database)
    collapsed = out.read_text()
    total, own, _ = top_entries(collapsed)
    print(f"{total} samples; stacks in {out}")
    print_top("own time (top of stack)", own, total)
    threads = [(name, *top_entries(stacks)) for name, stacks in by_thread(collapsed).items()]
    for name, samples, _, inclusive in sorted(threads, key=lambda thread: -thread[1]):
        print_thread(name, samples, inclusive, total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
