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
OTHER_BYTES = b"\x00\x00\x00\x18ftypisom" + b"y" * 100


async def archived_long_ago(
    database_url: str, media: Path, days_ago: float, task_id: str = "t-1", content: bytes = BYTES
) -> str:
    """A task whose one output (`content`) was archived `days_ago`, its file in the store."""
    engine = create_engine(database_url)
    await upgrade(engine)
    clock = FakeClock()
    clock.advance(-days_ago * 86_400)
    store = LedgerStore(engine, clock, {"apidot": Reader(WireFormat.APIDOT, 3600.0, True)})
    try:
        task = await store.register(NewTask(provider="apidot", provider_task_id=task_id))
        url = f"https://cdn.example.com/{task_id}"
        observation = Observation(task_id, State.SUCCEEDED, 100, (url,))
        await store.ingest([Poll(task.ref, clock(), None, observation=observation)])
        (job,) = await store.claim_artifacts("a", 1, 60)
        digest = hashlib.sha256(content).hexdigest()
        local = LocalStore(media)
        spool = local.spool_dir / "fetch-1.part"
        spool.write_bytes(content)
        await local.put(spool, content_key(digest), "video/mp4")
        stored = ArchivedFile(content_key(digest), len(content), digest, "video/mp4")
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


def printed(report: str, name: str) -> list[int]:
    """The counts a prune's report gives `name`, a run after another."""
    return [int(line.split()[-1]) for line in report.splitlines() if line.strip().startswith(name)]


def prune_twice(
    database_url: str, media: Path, monkeypatch: pytest.MonkeyPatch, days: str
) -> tuple[int, int]:
    """`db prune --dry-run`, then `db prune`, with the archive's retention `days`."""
    monkeypatch.setenv("TASKLEDGER_DATABASE_URL", database_url)
    monkeypatch.setenv("TASKLEDGER_ARCHIVE_URL", str(media))
    monkeypatch.setenv("TASKLEDGER_ARCHIVE_RETENTION_DAYS", days)
    return main(["db", "prune", "--dry-run"]), main(["db", "prune"])


# (days ago archived, content) of each task's one output; files the prune deletes.
ARCHIVES = {
    "one-old": ([(100, BYTES)], 1),
    "two-old-files": ([(100, BYTES), (100, OTHER_BYTES)], 2),
    "one-file-two-old-outputs": ([(100, BYTES), (100, BYTES)], 1),
    "one-file-held-by-a-young-output": ([(100, BYTES), (10, BYTES)], 0),
}


@pytest.mark.parametrize(("outputs", "files"), ARCHIVES.values(), ids=ARCHIVES.keys())
def test_dry_run_counts_the_archive_files_the_prune_deletes(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    outputs: list[tuple[float, bytes]],
    files: int,
) -> None:
    media = tmp_path / "media"
    for n, (days_ago, content) in enumerate(outputs):
        asyncio.run(archived_long_ago(database_url, media, days_ago, f"t-{n}", content))
    monkeypatch.chdir(tmp_path)
    assert prune_twice(database_url, media, monkeypatch, "90") == (0, 0)
    report = capsys.readouterr().out
    old = sum(1 for days_ago, _ in outputs if days_ago > 90)
    assert printed(report, "artifacts pruned") == [old, old]
    assert printed(report, "archive files deleted") == [files, files]
    left = [path for path in (media / "sha256").rglob("*") if path.is_file()]
    assert len(left) == len({content for _, content in outputs}) - files


def test_prune_names_the_archives_retention_beside_the_ledgers(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    media = tmp_path / "media"
    asyncio.run(archived_long_ago(database_url, media, 1))
    monkeypatch.chdir(tmp_path)
    assert prune_twice(database_url, media, monkeypatch, "0.0001") == (0, 0)
    report = capsys.readouterr().out
    heads = [line for line in report.splitlines() if line.startswith("taskledger:")]
    assert len(heads) == 2
    for head in heads:
        assert "retention 30 days" in head
        assert "archive retention 0.0001 days" in head
    assert printed(report, "artifacts pruned") == [1, 1]


def test_prune_says_the_archive_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKLEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("TASKLEDGER_ARCHIVE_URL", "off")
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "prune"]) == 0
    assert "archive retention off" in capsys.readouterr().out
