"""An export larger than its memory bound streams within it: pages in, lines out, nothing
held; each task's row lists its outputs' archive metadata, never their bytes or sources."""

from __future__ import annotations

import csv
import hashlib
import io
import tracemalloc
from pathlib import Path

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.database import create_engine
from schemas.ledger import Poll, Reader
from schemas.settings import ArchiveSettings
from schemas.states import State
from schemas.store import ArchivedFile, ArtifactState, Attempt, LedgerStore, NewTask, new_task_row
from schemas.tables import TASK
from schemas.wire import Observation, WireFormat
from tests.conftest import FakeClock
from tests.support.service import Service, migrate, running_service, settings_for

# Failed tasks with a long provider error each: an export line of about 1.2 KB, so these
# tasks export to more than the memory bound (the peak stays that of one page at any count).
TASKS = 20_000
ERROR_MESSAGE = "the provider refused the request: " + "content policy violation; " * 28
PEAK_LIMIT_BYTES = 16 * 1024 * 1024


async def test_an_export_larger_than_the_memory_limit_streams_within_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    await migrate(url)
    await fill(url, clock)
    async with running_service(settings_for(url), clock) as service:
        tracemalloc.start()
        lines = size = 0
        async with service.http.stream(
            "GET", "/v1/export", params={"format": "jsonl"}, headers=service.admin, timeout=120
        ) as answer:
            async for line in answer.aiter_lines():
                lines += 1
                size += len(line)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    print(f"\nexported {lines} tasks, {size / 1e6:.1f} MB, peak traced memory {peak / 1e6:.1f} MB")
    assert lines == TASKS
    assert peak < PEAK_LIMIT_BYTES < size  # held whole, the export would pass the limit


async def fill(url: str, clock: FakeClock) -> None:
    engine = create_engine(url, synchronous="OFF")
    request = {"input": {"prompt": "x" * 120, "duration": 8, "resolution": "720p"}}
    result = {"error": {"code": "content_policy", "message": ERROR_MESSAGE}}
    async with engine.begin() as conn:
        for start in range(0, TASKS, 5000):
            rows = []
            for i in range(start, start + 5000):
                clock.advance(0.001)
                new = NewTask(
                    provider="apidot",
                    provider_task_id=f"task-unified-{i}",
                    owner="bulk",
                    model="sora-2-official",
                    request=request,
                )
                failed = {"state": State.FAILED.value, "result": result, "terminal_at": clock()}
                rows.append(new_task_row(new, clock()) | failed | {"next_poll_at": None})
            await conn.execute(TASK.insert(), rows)
    await engine.dispose()


SHA = hashlib.sha256(b"video").hexdigest()


async def task_with_two_outputs(service: Service, engine: AsyncEngine, clock: FakeClock) -> str:
    """A succeeded task: its first output archived, its second refused."""
    ref = str((await service.register("apidot", provider_task_id="t-out"))["ref"])
    store = LedgerStore(engine, clock, {"apidot": Reader(WireFormat.APIDOT, 3600.0, True)})
    urls = ("https://cdn.example.com/a.mp4?sig=secret", "https://cdn.example.com/b.mp4?sig=x")
    observation = Observation("t-out", State.SUCCEEDED, 100, urls)
    await store.ingest([Poll(ref, clock(), None, observation, 200, "{}")])
    first, second = sorted(await store.claim_artifacts("a", 10, 60), key=lambda j: j.artifact.id)
    stored = ArchivedFile(f"sha256/{SHA[:2]}/{SHA[2:4]}/{SHA}", 5, SHA, "video/mp4")
    archived = Attempt(ArtifactState.ARCHIVED, "cdn.example.com", stored)
    failed = Attempt(ArtifactState.FAILED, "cdn.example.com", error="not a video or image")
    assert await store.record_attempt(first.artifact.id, "a", archived)
    assert await store.record_attempt(second.artifact.id, "a", failed)
    await store.close()
    return ref


async def test_export_lists_each_tasks_outputs_without_bytes_or_sources(
    database_url: str, engine: AsyncEngine, clock: FakeClock, tmp_path: Path
) -> None:
    archive = ArchiveSettings(url=str(tmp_path / "archive"), spool_dir=str(tmp_path / "spool"))
    async with running_service(settings_for(database_url, archive=archive), clock) as service:
        ref = await task_with_two_outputs(service, engine, clock)
        await service.register("apidot", provider_task_id="t-open")
        jsonl = await service.http.get("/v1/export", headers=service.admin)
        table = await service.http.get("/v1/export?format=csv", headers=service.admin)
    rows = {row["ref"]: row for row in map(orjson.loads, jsonl.text.splitlines())}
    archived, failed = rows[ref]["artifacts"]
    assert (archived["name"], archived["state"], archived["sha256"]) == (
        "output-1",
        "archived",
        SHA,
    )
    assert (archived["size"], archived["content_type"]) == (5, "video/mp4")
    assert (failed["state"], failed["last_error"]) == ("failed", "not a video or image")
    assert [row["artifacts"] for r, row in rows.items() if r != ref] == [[]]
    assert "storage_key" not in archived
    assert "source" not in archived
    cells = {row["ref"]: row["artifacts"] for row in csv.DictReader(io.StringIO(table.text))}
    assert cells[ref] == f"output-1:archived:{SHA} output-2:failed"
