"""`taskledger db prune` and the archive: files past TASKLEDGER_ARCHIVE_RETENTION_DAYS go,
their artifacts stay, marked `pruned`, with their size and SHA-256."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from ops.cli import main
from schemas.database import create_engine
from schemas.ledger import Poll, Reader
from schemas.media.storage import LocalStore, content_key
from schemas.migrate import upgrade
from schemas.states import State
from schemas.store import ArchivedFile, ArtifactState, Attempt, LedgerStore, NewTask
from schemas.wire import Observation, WireFormat
from tests.conftest import FakeClock

BYTES = b"\x00\x00\x00\x18ftypisom" + b"x" * 100


async def archived_long_ago(database_url: str, media: Path, days_ago: float) -> str:
    """A task whose one output was archived `days_ago`, its file in the store."""
    engine = create_engine(database_url)
    await upgrade(engine)
    clock = FakeClock()
    clock.advance(-days_ago * 86_400)
    store = LedgerStore(engine, clock, {"apidot": Reader(WireFormat.APIDOT, 3600.0, True)})
    try:
        task = await store.register(NewTask(provider="apidot", provider_task_id="t-1"))
        observation = Observation("t-1", State.SUCCEEDED, 100, ("https://cdn.example.com/v",))
        await store.ingest([Poll(task.ref, clock(), None, observation=observation)])
        (job,) = await store.claim_artifacts("a", 1, 60)
        digest = hashlib.sha256(BYTES).hexdigest()
        local = LocalStore(media)
        spool = local.spool_dir / "fetch-1.part"
        spool.write_bytes(BYTES)
        await local.put(spool, content_key(digest), "video/mp4")
        stored = ArchivedFile(content_key(digest), len(BYTES), digest, "video/mp4")
        done = Attempt(ArtifactState.ARCHIVED, "h", stored)
        await store.record_attempt(job.artifact.id, "a", done)
        return task.ref
    finally:
        await store.close()
        await engine.dispose()


async def states(database_url: str, ref: str) -> list[str]:
    engine = create_engine(database_url)
    store = LedgerStore(engine, FakeClock())
    try:
        return [a.state for a in await store.artifacts(ref)]
    finally:
        await store.close()
        await engine.dispose()


@pytest.mark.parametrize(("days_ago", "kept"), [(100, False), (10, True)], ids=["old", "young"])
def test_prune_deletes_archived_files_past_the_archives_retention(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    days_ago: float,
    kept: bool,
) -> None:
    media = tmp_path / "media"
    ref = asyncio.run(archived_long_ago(database_url, media, days_ago))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKLEDGER_DATABASE_URL", database_url)
    monkeypatch.setenv("TASKLEDGER_ARCHIVE_URL", str(media))
    monkeypatch.setenv("TASKLEDGER_ARCHIVE_RETENTION_DAYS", "90")
    file = media / content_key(hashlib.sha256(BYTES).hexdigest())
    assert file.exists()
    assert main(["db", "prune", "--dry-run"]) == 0
    assert file.exists()
    assert main(["db", "prune"]) == 0
    report = capsys.readouterr().out
    assert file.exists() is kept
    assert asyncio.run(states(database_url, ref)) == (["archived"] if kept else ["pruned"])
    assert (
        f"archive files deleted {0 if kept else 1:>10}".split()
        == [line for line in report.splitlines() if "archive files deleted" in line][-1].split()
    )


@pytest.mark.parametrize("days", ["nan", "inf", "1e6", "0", "-1"])
def test_a_retention_that_is_no_number_of_days_is_refused_before_anything_is_read(
    days: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["db", "prune", "--retention-days", days])
    assert exited.value.code == 2
    assert f"must be over 0 and at most 36500: {days!r}" in capsys.readouterr().err
