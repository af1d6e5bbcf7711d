"""Case archive: the archiver end to end against a plain streamed copy of the same files.

One media server (`media_app`, uvicorn on the server core) serves N deterministic MP4 files.
Each side runs in a fresh process on the client core, timed from its first request to its
last byte, its peak RSS growth read from /proc (VmHWM, reset once set up):
- `copy`: httpx streams each file into a file, `CONCURRENCY` at a time, `CHUNK_BYTES` reads;
- `archive`: the files are pending artifacts of a SQLite ledger, and `Archiver.run_batch()`
  runs until none is left: leased, fetched by `SafeFetcher` (hashed), sniffed, fsynced and
  renamed into a `LocalStore`, recorded.
Runs alternate which side goes first; every file both sides wrote is checked by its SHA-256.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import httpx
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from bench import ledger
from bench.context import Context
from bench.procs import REPO, bench_environ, pinned, proc_status_kb, uvicorn_server
from bench.report import CaseResult, Check, Spread, number, ratio
from reconciler.archiver import Archiver
from reconciler.fetch import FetchLimits, SafeFetcher
from reconciler.metrics import ReconcilerMetrics
from schemas import logs
from schemas.clock import utc_now
from schemas.database import create_engine
from schemas.ledger import Poll
from schemas.media.storage import LocalStore, content_key
from schemas.settings import ArchiveSettings, ProviderSettings
from schemas.states import State
from schemas.store import LedgerStore, NewTask
from schemas.wire import Observation, WireFormat

MEDIA_APP = "bench.archive:media_app"
FILE_BYTES_VARIABLE = "BENCH_ARCHIVE_FILE_BYTES"
PROVIDER = "apidot"
CONCURRENCY = ArchiveSettings().concurrency
CHUNK_BYTES = FetchLimits(max_bytes=1).chunk_bytes
FILES, FILE_MIB = 16, 32
QUICK_FILES, QUICK_FILE_MIB = 8, 16
TARGET_RATIO = 0.80
MAX_GROWTH_MIB = 64
"""Flat: well under the CONCURRENCY files in flight at once (4 x 32 MiB)."""
RUN_TIMEOUT_SECONDS = 300
EXPIRES_IN_SECONDS = 3600
# `ftyp` (major brand isom, minor version 0x200, brands isom and mp42), as sniff knows it.
FTYP = struct.pack(">I4s4sI4s4s", 24, b"ftyp", b"isom", 0x200, b"isom", b"mp42")
BLOCK = random.Random("bench-archive").randbytes(CHUNK_BYTES)


# -- the media server --------------------------------------------------------------------


def file_chunks(index: int, size: int) -> Iterator[bytes]:
    """File `index` of `size` bytes: an `ftyp` box, then an `mdat` box whose payload opens
    with the index (every file has its own SHA-256), the same random block after it."""
    head = FTYP + struct.pack(">I4sQ", size - len(FTYP), b"mdat", index)
    first = (head + BLOCK)[:CHUNK_BYTES]
    yield first[:size]
    for start in range(len(first), size, CHUNK_BYTES):
        yield BLOCK if size - start >= CHUNK_BYTES else BLOCK[: size - start]


def file_sha256(index: int, size: int) -> str:
    digest = hashlib.sha256()
    for chunk in file_chunks(index, size):
        digest.update(chunk)
    return digest.hexdigest()


def media_app() -> Starlette:
    """`GET /media/{index}.mp4`: file `index`, `BENCH_ARCHIVE_FILE_BYTES` long."""
    size = int(os.environ[FILE_BYTES_VARIABLE])

    async def media(request: Request) -> Response:
        chunks = _aiter(file_chunks(int(request.path_params["index"]), size))
        headers = {"content-length": str(size)}
        return StreamingResponse(chunks, headers=headers, media_type="video/mp4")

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/media/{index:int}.mp4", media), Route("/healthz", healthz)])


async def _aiter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def media_url(base: str, index: int) -> str:
    return f"{base}/media/{index}.mp4"


# -- the two sides, each in its own process ----------------------------------------------


def reset_peak() -> int:
    """Start this process's peak RSS (VmHWM) again from now; its RSS now, in KiB."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")
    return proc_status_kb(os.getpid(), "VmRSS")


async def measured(work: Awaitable[int]) -> dict[str, Any]:
    """Run `work` (which returns the bytes it moved): its seconds and peak RSS growth."""
    before = reset_peak()
    began = time.perf_counter()
    cpu = time.process_time()
    moved = await work
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    growth_kib = proc_status_kb(os.getpid(), "VmHWM") - before
    return {"bytes": moved, "seconds": seconds, "cpu_seconds": cpu, "growth_mib": growth_kib / 1024}


async def copy_files(base: str, files: int, out: Path) -> dict[str, Any]:
    """The baseline: each file streamed by httpx into a file of its own."""
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:

        async def one(index: int) -> int:
            async with gate, client.stream("GET", media_url(base, index)) as response:
                response.raise_for_status()
                with (out / f"{index}.mp4").open("wb") as sink:
                    async for chunk in response.aiter_raw(CHUNK_BYTES):
                        sink.write(chunk)
                return response.num_bytes_downloaded

        async def all_files() -> int:
            return sum(await asyncio.gather(*[one(index) for index in range(files)]))

        return await measured(all_files())


def providers() -> dict[str, ProviderSettings]:
    return {PROVIDER: ProviderSettings(PROVIDER, WireFormat.APIDOT, archive=True)}


def archive_settings(root: Path) -> ArchiveSettings:
    loopback = (ip_network("127.0.0.0/8"),)
    return ArchiveSettings(url=str(root), allow_http=True, allowed_networks=loopback)


@asynccontextmanager
async def opened_ledger(database_url: str) -> AsyncIterator[LedgerStore]:
    engine = create_engine(database_url)
    readers = {name: provider.reader for name, provider in providers().items()}
    store = LedgerStore(engine, utc_now, readers)
    try:
        yield store
    finally:
        await store.close()
        await engine.dispose()


async def archive_files(database_url: str, root: Path) -> dict[str, Any]:
    """Taskledger: the archiver leases and archives batches until none is pending."""
    settings = archive_settings(root)
    limits = FetchLimits(max_bytes=settings.max_bytes)
    media = LocalStore(root)
    async with (
        opened_ledger(database_url) as store,
        SafeFetcher(settings.policy, limits) as fetcher,
    ):
        archiver = Archiver(
            settings,
            providers(),
            store,
            media,
            fetcher,
            owner="bench-archive",
            clock=utc_now,
            metrics=ReconcilerMetrics(),
            stopping=asyncio.Event(),
        )
        return await measured(_drain(archiver, media))


async def _drain(archiver: Archiver, media: LocalStore) -> int:
    """Batches until one finds nothing due; the bytes now in the store."""
    while await archiver.run_batch():
        pass
    return sum(path.stat().st_size for path in (media.root / "sha256").rglob("*") if path.is_file())


def worker(argv: Sequence[str]) -> int:
    """`python -m bench.archive copy BASE FILES OUT` or `... archive DATABASE_URL ROOT`:
    one side, its figures as JSON on stdout."""
    parser = argparse.ArgumentParser(prog="python -m bench.archive")
    parser.add_argument("side", choices=("copy", "archive"))
    parser.add_argument("arguments", nargs="+")
    args = parser.parse_args(argv)
    logs.configure("warning", json=True)
    if args.side == "copy":
        base, files, out = args.arguments
        Path(out).mkdir(parents=True, exist_ok=True)
        result = uvloop.run(copy_files(base, int(files), Path(out)))
    else:
        database_url, root = args.arguments
        result = uvloop.run(archive_files(database_url, Path(root)))
    print(json.dumps(result))
    return 0


# -- the case ----------------------------------------------------------------------------


async def _fill(database_url: str, base: str, files: int) -> list[str]:
    """`files` succeeded tasks, each with one output (file `i`) pending in the archive;
    their refs."""
    async with opened_ledger(database_url) as store:
        now = utc_now()
        result: dict[str, object] = {
            "expires_at": (now + timedelta(seconds=EXPIRES_IN_SECONDS)).isoformat()
        }
        polls = []
        for index in range(files):
            task_id = f"bench-{index}"
            task = await store.register(NewTask(provider=PROVIDER, provider_task_id=task_id))
            urls = (media_url(base, index),)
            seen = Observation(task_id, State.SUCCEEDED, 100, urls, extra=result)
            polls.append(Poll(task.ref, now, None, observation=seen, http_status=200))
        await store.ingest(polls)
        return [poll.task_ref for poll in polls]


async def _archived(database_url: str, refs: Sequence[str]) -> dict[str, str]:
    """Each archived output's storage key by its SHA-256; raises if any is not archived."""
    async with opened_ledger(database_url) as store:
        rows = [artifact for ref in refs for artifact in await store.artifacts(ref)]
    left = [row.state for row in rows if row.state != "archived"]
    if left or len(rows) != len(refs):
        raise RuntimeError(f"{len(rows)} outputs, not archived: {left}")
    return {row.sha256 or "": row.storage_key or "" for row in rows}


def run_side(ctx: Context, side: str, arguments: Sequence[str]) -> dict[str, Any]:
    """One side in a fresh process on the client core, after the disk has caught up."""
    os.sync()
    command = pinned([sys.executable, "-m", "bench.archive", side, *arguments], ctx.cores.client)
    done = subprocess.run(
        command,
        cwd=REPO,
        env=bench_environ({"MALLOC_ARENA_MAX": "2"}),  # the peak counts buffers, not arenas
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {side} side failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    result["mb_per_s"] = result["bytes"] / result["seconds"] / 1e6
    return result


def sha256_of(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def check_copies(out: Path, expected: Sequence[str]) -> None:
    got = [sha256_of(out / f"{index}.mp4") for index in range(len(expected))]
    if got != list(expected):
        raise RuntimeError("the baseline's copies differ from the files served")


def check_archive(
    database_url: str, root: Path, refs: Sequence[str], expected: Sequence[str]
) -> None:
    keys = asyncio.run(_archived(database_url, refs))
    if sorted(keys) != sorted(expected):
        raise RuntimeError("the ledger's SHA-256 of the archived outputs differ from the files'")
    for digest, key in keys.items():
        if key != content_key(digest) or sha256_of(root.joinpath(*key.split("/"))) != digest:
            raise RuntimeError(f"the stored file {key} is not the file served")


def one_run(
    ctx: Context, base: str, files: int, expected: Sequence[str], run: int
) -> dict[str, Any]:
    """Both sides on the same files, the side that goes first alternating run by run."""
    directory = ctx.scratch(f"archive/run{run}")
    with ledger.sqlite_url(directory, "ledger") as database_url:
        ledger.migrate(database_url)
        refs = asyncio.run(_fill(database_url, base, files))
        out, root = directory / "copy", directory / "store"
        sides = {"copy": [base, str(files), str(out)], "archive": [database_url, str(root)]}
        order = ("copy", "archive") if run % 2 == 0 else ("archive", "copy")
        results = {side: run_side(ctx, side, sides[side]) for side in order}
        check_copies(out, expected)
        check_archive(database_url, root, refs, expected)
    shutil.rmtree(directory)
    copy, archive = results["copy"], results["archive"]
    print(
        f"  run {run + 1}: copy {copy['mb_per_s']:,.0f} MB/s (+{copy['growth_mib']:.1f} MiB), "
        f"archive {archive['mb_per_s']:,.0f} MB/s (+{archive['growth_mib']:.1f} MiB), "
        f"ratio {ratio(archive['mb_per_s'], copy['mb_per_s']):.0%}",
        flush=True,
    )
    return results


def run_archive(ctx: Context) -> CaseResult:
    files, mib = (QUICK_FILES, QUICK_FILE_MIB) if ctx.quick else (FILES, FILE_MIB)
    size = mib * 1024 * 1024
    expected = [file_sha256(index, size) for index in range(files)]
    env = {FILE_BYTES_VARIABLE: str(size)}
    logs_dir = ctx.scratch("logs")
    with uvicorn_server("archive-media", MEDIA_APP, env, ctx.cores.server, logs_dir) as server:
        ctx.note_load("archive")
        runs = [one_run(ctx, server.url, files, expected, run) for run in range(ctx.runs)]
    return summarize(runs, files, mib)


HEADER = ["side", "MB/s", "vs copy", "CPU s", "peak RSS growth MiB", "seconds"]
LABELS = {"copy": "plain streamed copy (httpx to a file)", "archive": "taskledger archiver"}
FIGURES = ("mb_per_s", "cpu_seconds", "growth_mib", "seconds")


def paired_ratios(runs: Sequence[dict[str, Any]]) -> Spread:
    """The archiver's MB/s over the copy's, run by run (each pair measured back to back,
    so drift in the machine's load falls on both)."""
    return Spread.of([ratio(r["archive"]["mb_per_s"], r["copy"]["mb_per_s"]) for r in runs])


def summarize(runs: list[dict[str, Any]], files: int, mib: int) -> CaseResult:
    case = CaseResult(
        name="archive",
        title=f"Archive: {files} files x {mib} MiB from loopback, {CONCURRENCY} at a time",
        header=HEADER,
        raw={"files": files, "file_mib": mib, "concurrency": CONCURRENCY, "runs": runs},
    )
    shares = {"copy": Spread.of([1.0] * len(runs)), "archive": paired_ratios(runs)}
    for side, label in LABELS.items():
        figures = {key: Spread.of([run[side][key] for run in runs]) for key in FIGURES}
        case.rows.append(
            [
                label,
                figures["mb_per_s"].text(),
                f"{shares[side].median:.0%}",
                figures["cpu_seconds"].text(2),
                figures["growth_mib"].text(1),
                figures["seconds"].text(2),
            ]
        )
    case.checks += checks(shares["archive"], max(run["archive"]["growth_mib"] for run in runs))
    paired = ", ".join(f"{share:.0%}" for share in shares["archive"].runs)
    case.notes += [
        f"vs copy: the median of the runs' ratios ({paired}); each side in its own process, "
        "pinned to the client core, CPU s its user and system time",
        f"chunks of {CHUNK_BYTES // 1024} KiB; the archiver also hashes, sniffs, fsyncs and "
        "renames each file and records it in a SQLite ledger (synchronous=FULL)",
    ]
    return case


def checks(share: Spread, growth_mib: float) -> list[Check]:
    return [
        Check(
            f"archive: archiver throughput ≥ {TARGET_RATIO:.0%} of a plain streamed copy",
            f"{share.median:.0%}",
            share.median >= TARGET_RATIO,
        ),
        Check(
            f"archive: archiver peak RSS growth < {MAX_GROWTH_MIB} MiB (memory flat)",
            f"{number(growth_mib, 1)} MiB",
            growth_mib < MAX_GROWTH_MIB,
        ),
    ]


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
