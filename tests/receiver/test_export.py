"""Exporting 100,000 tasks streams in bounded memory: pages in, lines out, nothing held."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from schemas.database import create_engine
from schemas.store import NewTask, new_task_row
from schemas.tables import TASK
from tests.conftest import FakeClock
from tests.support.service import migrate, running_service, settings_for

TASKS = 100_000
PEAK_LIMIT_BYTES = 16 * 1024 * 1024


async def test_export_of_100k_tasks_runs_in_bounded_memory(
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
    assert peak < PEAK_LIMIT_BYTES < size


async def fill(url: str, clock: FakeClock) -> None:
    engine = create_engine(url, synchronous="OFF")
    request = {"input": {"prompt": "x" * 120, "duration": 8, "resolution": "720p"}}
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
                rows.append(new_task_row(new, clock()))
            await conn.execute(TASK.insert(), rows)
    await engine.dispose()
