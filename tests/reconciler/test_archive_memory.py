"""The archiver's memory stays flat while it archives a file far larger than its buffers.

The archiving runs in a fresh interpreter (`python -m tests.reconciler.test_archive_memory`),
so that the peak RSS measured is the archiver's own; the media host and the ledger's setup
stay in the test's process. Linux only: the peak is VmHWM from /proc.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from reconciler.archiver import Archiver
from reconciler.fetch import FetchLimits, SafeFetcher
from reconciler.metrics import ReconcilerMetrics
from schemas.clock import utc_now
from schemas.database import create_engine
from schemas.ledger import Poll
from schemas.media.storage import LocalStore, content_key
from schemas.migrate import upgrade
from schemas.settings import ArchiveSettings, ProviderSettings
from schemas.states import State
from schemas.store import LedgerStore, NewTask
from schemas.wire import Observation, WireFormat
from simulator.files import Video
from tests.support.servers import serve

FILE_BYTES = 200 * 1024 * 1024
MAX_GROWTH_MIB = 64
"""Archiving the file measures about 9 MiB (1 MiB chunks, the HTTP and SQLite machinery);
the same download read whole measures about 420 MiB (the body, and the chunks it was
joined from)."""
SUBPROCESS_TIMEOUT_SECONDS = 60
REPO = Path(__file__).resolve().parents[2]
PROVIDERS = {"apidot": ProviderSettings("apidot", WireFormat.APIDOT, archive=True)}
READERS = {name: provider.reader for name, provider in PROVIDERS.items()}


class Served:
    """A media host streaming one deterministic `FILE_BYTES` MP4, hashing what it sends."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0

    def app(self) -> Starlette:
        async def video(_: Request) -> Response:
            headers = {"content-length": str(FILE_BYTES)}
            return StreamingResponse(self._body(), headers=headers, media_type="video/mp4")

        return Starlette(routes=[Route("/v.mp4", video)])

    async def _body(self) -> AsyncIterator[bytes]:
        for chunk in Video("archive-memory", FILE_BYTES).chunks():
            self.digest.update(chunk)
            self.size += len(chunk)
            yield chunk


@pytest.fixture
async def served() -> AsyncIterator[tuple[Served, str]]:
    host = Served()
    async with serve(host.app()) as url:
        yield host, f"{url}/v.mp4"


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[tuple[LedgerStore, str]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    engine = create_engine(url)
    await upgrade(engine)
    store = LedgerStore(engine, utc_now, READERS)
    yield store, url
    await store.close()
    await engine.dispose()


async def succeeded(store: LedgerStore, media_url: str) -> str:
    """A succeeded task whose one output, at `media_url`, waits for the archiver."""
    task = await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
    now = utc_now()
    result: dict[str, object] = {"expires_at": (now + timedelta(minutes=10)).isoformat()}
    observation = Observation("t-1", State.SUCCEEDED, 100, (media_url,), extra=result)
    await store.ingest([Poll(task.ref, now, None, observation=observation, http_status=200)])
    return task.ref


async def measure(*arguments: str) -> dict[str, Any]:
    """Run this module's `main` in a fresh interpreter: what it reports."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        *arguments,
        cwd=REPO,
        # Two malloc arenas: the peak then counts buffers, not glibc's per-thread arenas
        # (whose number follows the machine's cores).
        env={**os.environ, "MALLOC_ARENA_MAX": "2"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), SUBPROCESS_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().splitlines()[-1])
    return result


def sha256_of(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


async def test_archiving_a_200_mib_output_keeps_memory_flat(
    served: tuple[Served, str], ledger: tuple[LedgerStore, str], tmp_path: Path
) -> None:
    host, media_url = served
    store, database_url = ledger
    ref = await succeeded(store, media_url)
    result = await measure("archive", database_url, str(tmp_path / "media"))
    assert result["archived"] == 1
    assert result["growth_kib"] < MAX_GROWTH_MIB * 1024
    (artifact,) = await store.artifacts(ref)
    digest = host.digest.hexdigest()
    assert (host.size, artifact.state, artifact.sha256) == (FILE_BYTES, "archived", digest)
    stored = tmp_path.joinpath("media", *content_key(digest).split("/"))
    assert await asyncio.to_thread(sha256_of, stored) == digest


async def test_the_measurement_sees_a_body_held_in_memory(served: tuple[Served, str]) -> None:
    """The bound can fail: the same measurement of a download read whole exceeds it."""
    _, media_url = served
    result = await measure("hold", media_url)
    assert result["size"] == FILE_BYTES
    assert result["growth_kib"] > MAX_GROWTH_MIB * 1024


# -- in the fresh interpreter ------------------------------------------------------------


def kib(field: str) -> int:
    """A `kB` field of this process's /proc status (VmRSS, VmHWM)."""
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def reset_peak() -> int:
    """Start the peak (VmHWM) again from here; the RSS now."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")
    return kib("VmRSS")


async def archive(database_url: str, root: str) -> dict[str, Any]:
    """One batch of a real archiver on the ledger, into a local store at `root`."""
    loopback = (ip_network("127.0.0.0/8"),)
    settings = ArchiveSettings(url=root, allow_http=True, allowed_networks=loopback)
    engine = create_engine(database_url)
    store = LedgerStore(engine, utc_now, READERS)
    limits = FetchLimits(max_bytes=settings.max_bytes, read_timeout_seconds=10)
    async with SafeFetcher(settings.policy, limits) as fetcher:
        worker = Archiver(
            settings,
            PROVIDERS,
            store,
            LocalStore(Path(root)),
            fetcher,
            owner="archive-memory",
            clock=utc_now,
            metrics=ReconcilerMetrics(),
            stopping=asyncio.Event(),
        )
        before = reset_peak()
        archived = await worker.run_batch()
        growth = kib("VmHWM") - before
    await store.close()
    await engine.dispose()
    return {"archived": archived, "growth_kib": growth}


async def hold(media_url: str) -> dict[str, Any]:
    """The download read whole into memory, as `httpx` does without `stream`."""
    async with httpx.AsyncClient(timeout=10) as client:
        before = reset_peak()
        body = (await client.get(media_url)).content
        return {"size": len(body), "growth_kib": kib("VmHWM") - before}


def main(arguments: Iterator[str]) -> None:
    action = next(arguments)
    work = archive(*arguments) if action == "archive" else hold(*arguments)
    print(json.dumps(asyncio.run(work)))


if __name__ == "__main__":
    main(iter(sys.argv[1:]))
