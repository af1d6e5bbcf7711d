"""Submits and a reconciler that dies: a claimed submission is marked `sending` only once its
provider's limiter has admitted its request, so a reconciler killed mid-pass leaves `sending`
(then `unknown`, never sent again) only the requests that may have left; the rest stay
`pending` and whoever takes the leases over sends each of them once."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
import orjson

from reconciler.clients import ProviderClients
from reconciler.process import Reconciler
from schemas.errors import StorageUnavailable
from schemas.settings import ProviderSettings, Settings
from schemas.store import LedgerStore, NewTask
from schemas.wire import WireFormat
from tests.conftest import FakeClock

TASKS = 6
WITHIN_SECONDS = 20.0  # a bound on waits for conditions, never a sleep

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def _settings(rate_per_second: float, concurrency: int) -> Settings:
    provider = ProviderSettings(
        "evolink",
        WireFormat.EVOLINK,
        base_url="https://provider.example",
        expected_seconds=1,
        max_age_seconds=3600,
        rate_limit_per_second=rate_per_second,
        concurrency=concurrency,
    )
    return Settings(callback_secrets=("s",), admin_token="t", providers={"evolink": provider})


async def _register(store: LedgerStore, n: int) -> dict[str, str]:
    """`n` tasks to submit, by the prompt each one sends."""
    refs = {}
    for i in range(n):
        prompt = f"prompt-{i}"
        task = NewTask("evolink", model="sora-2", request={"prompt": prompt}, submit=True)
        refs[prompt] = (await store.register(task)).ref
    return refs


def _prompt(request: httpx.Request) -> str:
    return str(orjson.loads(request.content)["prompt"])


class Provider:
    """EvoLink on a mock transport: it keeps the prompt of every submit; it answers each
    submit with a task id (or holds the answer while `hold` is set) and each poll as running."""

    def __init__(self, *, hold: bool = False) -> None:
        self.submitted: list[str] = []
        self.hold = hold
        self.arrived = asyncio.Condition()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            task_id = request.url.path.rsplit("/", 1)[-1]
            return httpx.Response(200, json={"id": task_id, "status": "processing"})
        async with self.arrived:
            self.submitted.append(_prompt(request))
            self.arrived.notify_all()
        if self.hold:
            await asyncio.Event().wait()  # the answer never comes
        return httpx.Response(200, json={"id": f"evo-{_prompt(request)}", "status": "pending"})

    async def wait_for_submits(self, count: int) -> None:
        async with asyncio.timeout(WITHIN_SECONDS), self.arrived:
            await self.arrived.wait_for(lambda: len(self.submitted) >= count)


async def _submission_of(store: LedgerStore, refs: dict[str, str]) -> dict[str, str | None]:
    tasks = {prompt: await store.get(ref) for prompt, ref in refs.items()}
    return {prompt: task.submission if task else None for prompt, task in tasks.items()}


async def test_a_reconciler_killed_mid_pass_leaves_its_unsent_submits_for_the_next(
    store: LedgerStore, clock: FakeClock
) -> None:
    """The limiter lets 2 requests out (their answers never come), holds the other 4; the
    reconciler is killed then, its leases left to expire. The 4 stay `pending` and the next
    reconciler sends each once; the 2 that left become `unknown` and are never sent again."""
    settings = _settings(rate_per_second=2, concurrency=4)
    refs = await _register(store, TASKS)
    doomed = Provider(hold=True)
    transport = httpx.MockTransport(doomed)
    async with ProviderClients.open(settings.providers.values(), transport=transport) as clients:
        crashing = asyncio.create_task(Reconciler(settings, store, clients, clock=clock).run_pass())
        await doomed.wait_for_submits(2)
        crashing.cancel()  # a kill: nothing written after this, no lease given back
        with contextlib.suppress(asyncio.CancelledError):
            await crashing
    left = set(doomed.submitted)
    after_kill = await _submission_of(store, refs)
    clock.advance(settings.lease_seconds + 1)
    survivor = Provider()
    transport = httpx.MockTransport(survivor)
    unhurried = _settings(rate_per_second=1000, concurrency=4)  # no real-time limiter waits
    async with ProviderClients.open(unhurried.providers.values(), transport=transport) as clients:
        reconciler = Reconciler(unhurried, store, clients, clock=clock)
        await reconciler.run_pass()
        clock.advance(60)
        await reconciler.run_pass()  # the sent ones are polled; nothing is sent again
    never_left = set(refs) - left
    assert len(left) == 2
    assert after_kill == {p: "sending" if p in left else "pending" for p in refs}
    assert Counter(survivor.submitted) == Counter(never_left)
    assert await _submission_of(store, refs) == {
        p: "unknown" if p in left else "sent" for p in refs
    }


async def test_a_submit_whose_lease_passed_on_while_it_waited_for_the_limiter_is_not_sent(
    store: LedgerStore, clock: FakeClock
) -> None:
    """One request a second: the second submit waits for the limiter; meanwhile its lease
    expires and another reconciler claims it. It is not sent, and nothing is written for it."""
    settings = _settings(rate_per_second=1, concurrency=1)
    refs = await _register(store, 2)
    provider = Provider()
    limiter_now = [0.0]
    taken_over: list[str] = []

    async def lease_passes_on(seconds: float) -> None:
        limiter_now[0] += seconds
        clock.advance(settings.lease_seconds + 1)
        claims = await store.claim_due("other", "evolink", 10, settings.lease_seconds)
        taken_over.extend(claim.ref for claim in claims)

    async with ProviderClients.open(
        settings.providers.values(),
        transport=httpx.MockTransport(provider),
        clock=lambda: limiter_now[0],
        sleep=lease_passes_on,
    ) as clients:
        report = await Reconciler(settings, store, clients, clock=clock).run_pass()
    [sent] = provider.submitted
    [ref] = [ref for prompt, ref in refs.items() if prompt != sent]
    task = await store.get(ref)
    assert task is not None
    assert ref in taken_over
    assert (task.submission, task.lease_owner) == ("pending", "other")
    assert (report.submitted, report.skipped) == (1, 1)


class NoMarks(LedgerStore):
    """The real store, but the `sending` mark cannot be written, as in an outage."""

    async def mark_sending(self, owner: str, ref: str) -> bool:
        raise StorageUnavailable("the database went away")


async def test_a_submit_whose_sending_mark_was_not_written_is_not_sent(
    store: LedgerStore, clock: FakeClock
) -> None:
    settings = _settings(rate_per_second=100, concurrency=4)
    refs = await _register(store, 2)
    marking = NoMarks(store.engine, clock)
    provider = Provider()
    transport = httpx.MockTransport(provider)
    try:
        async with ProviderClients.open(
            settings.providers.values(), transport=transport
        ) as clients:
            report = await Reconciler(settings, marking, clients, clock=clock).run_pass()
    finally:
        await marking.close()
    assert provider.submitted == []
    assert report.skipped == 2
    assert await _submission_of(store, refs) == dict.fromkeys(refs, "pending")
