"""The archiver against a source that drips its body, a byte at a time so no read times out:
the attempt ends at the fetch's overall limit and is tried again later, and meanwhile the
other outputs are archived as if it were not there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from ipaddress import ip_network
from pathlib import Path

import pytest

from reconciler.archiver import Archiver
from reconciler.fetch import FetchLimits, SafeFetcher
from reconciler.metrics import ReconcilerMetrics
from reconciler.retry import RetryPolicy
from schemas.addresses import AddressPolicy
from schemas.ledger import Poll
from schemas.media.storage import LocalStore
from schemas.settings import ArchiveSettings, ProviderSettings
from schemas.states import State
from schemas.store import LedgerStore, NewTask
from schemas.wire import Observation, WireFormat
from tests.conftest import FakeClock
from tests.reconciler.conftest import Dripper
from tests.reconciler.test_archiver import Media
from tests.support.servers import serve
from tests.support.waiting import eventually

POLICY = AddressPolicy(allow_http=True, allowed_networks=(ip_network("127.0.0.0/8"),))
# Far inside the tests' own bounds: the dripping attempt must end by its own limit.
SHORT_TOTAL_SECONDS = 0.3
# Longer than any test waits: the dripping attempt is still in flight when it ends.
LONG_TOTAL_SECONDS = 60.0
WITHIN_SECONDS = 10.0
OTHER_OUTPUTS = 5


@pytest.fixture
async def media_url() -> AsyncIterator[str]:
    async with serve(Media().app()) as url:
        yield url


def archiver(
    ledger: LedgerStore, tmp_path: Path, clock: FakeClock, total_timeout_seconds: float
) -> Archiver:
    """Two at a time, on the ledger and a local store; a fetch reads with a 5 s timeout."""
    settings = ArchiveSettings(url=str(tmp_path / "media"), concurrency=2, allow_http=True)
    limits = FetchLimits(
        max_bytes=1 << 20, read_timeout_seconds=5, total_timeout_seconds=total_timeout_seconds
    )
    return Archiver(
        settings,
        {"apidot": ProviderSettings("apidot", WireFormat.APIDOT, archive=True)},
        ledger,
        LocalStore(tmp_path / "media"),
        SafeFetcher(POLICY, limits),
        owner="archiver-test",
        clock=clock,
        metrics=ReconcilerMetrics(),
        stopping=asyncio.Event(),
        policy=RetryPolicy(base_delay_seconds=2.0, max_delay_seconds=10.0, jitter=0.0),
    )


async def succeeded(
    ledger: LedgerStore, clock: FakeClock, task_id: str, urls: list[str], expires_in: float
) -> str:
    """A succeeded `apidot` task whose outputs are `urls`, expiring in `expires_in` s."""
    task = await ledger.register(NewTask(provider="apidot", provider_task_id=task_id))
    result: dict[str, object] = {
        "expires_at": (clock() + timedelta(seconds=expires_in)).isoformat()
    }
    observation = Observation(task_id, State.SUCCEEDED, 100, tuple(urls), extra=result)
    await ledger.ingest([Poll(task.ref, clock(), None, observation=observation, http_status=200)])
    return task.ref


async def test_a_dripping_source_times_out_and_is_tried_again_later(
    archive_ledger: LedgerStore, tmp_path: Path, clock: FakeClock, dripper: Dripper
) -> None:
    worker = archiver(archive_ledger, tmp_path, clock, SHORT_TOTAL_SECONDS)
    ref = await succeeded(archive_ledger, clock, "t-drip", [f"{dripper.url}/v.mp4"], 600)
    try:
        async with asyncio.timeout(WITHIN_SECONDS):
            assert await worker.run_batch() == 1
    finally:
        await worker.fetcher.aclose()
    (artifact,) = await archive_ledger.artifacts(ref)
    assert (artifact.state, artifact.attempts) == ("pending", 1)
    assert artifact.next_attempt_at == clock() + timedelta(seconds=2)
    assert artifact.last_error is not None
    assert artifact.last_error.startswith("timeout: ")
    assert worker.metrics.archive_failures.labels("apidot", "timeout")._value.get() == 1


async def test_a_dripping_source_holds_up_no_other_output(
    archive_ledger: LedgerStore,
    tmp_path: Path,
    clock: FakeClock,
    dripper: Dripper,
    media_url: str,
) -> None:
    """More outputs than one batch of the old loop held: none waits for the dripping one."""
    worker = archiver(archive_ledger, tmp_path, clock, LONG_TOTAL_SECONDS)
    drip = await succeeded(archive_ledger, clock, "t-drip", [f"{dripper.url}/v.mp4"], 600)
    goods = [f"{media_url}/v.mp4?n={n}" for n in range(OTHER_OUTPUTS)]
    others = await succeeded(archive_ledger, clock, "t-others", goods, 900)

    async def others_archived() -> bool:
        return all(a.state == "archived" for a in await archive_ledger.artifacts(others))

    running = asyncio.create_task(worker.run())
    try:
        await eventually(others_archived, within=WITHIN_SECONDS, every=0.05)
        (dripping,) = await archive_ledger.artifacts(drip)
    finally:
        worker.stopping.set()
        await dripper.stop()
        async with asyncio.timeout(WITHIN_SECONDS):
            await running
        await worker.fetcher.aclose()
    assert (dripping.state, dripping.attempts, dripping.lease_owner) == (
        "pending",
        0,
        "archiver-test",
    )
    assert dripper.requests == 1
