"""The relay: delivers the outbox's events to their endpoints, signed, at least once.

Each pass turns new messages into dispatches (`fan_out`), leases the due ones and starts
delivering each beside the loop, at most `concurrency_per_endpoint` at a time per endpoint,
then records how it went: delivered, tried again on the retry schedule, failed, or gone
(the endpoint answered 410 and is disabled). A slow endpoint holds up only its own
dispatches. `python -m reconciler.relay` runs it (see `reconciler/relay_main.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import orjson
import structlog
from standardwebhooks.webhooks import Webhook

from reconciler.brokers import AmqpSink, NatsSink
from reconciler.process import fault, new_owner
from reconciler.relay_metrics import RelayMetrics
from reconciler.retry import RetryPolicy
from reconciler.sinks import HttpSink, Sink
from schemas.database import describe
from schemas.errors import StorageUnavailable
from schemas.settings import NOTIFY_RETRY_SCHEDULE_SECONDS, NotifySettings
from schemas.store import AttemptResult, DispatchJob, Endpoint, LedgerStore

log = structlog.get_logger("taskledger.relay")
# How often the outbox is looked at (and, when nothing is due, how often a claim is
# tried): a fresh change waits half of this on average before it is leased.
IDLE_SECONDS = 0.025
# Endpoints (for disabled ones) and the backlog (for its gauges) are read this often.
OBSERVE_EVERY_SECONDS = 5.0
# A leased dispatch still waiting for its endpoint this close to its lease's end is left
# for the next lease instead of sent: another relay may hold it by then.
LEASE_MARGIN_SECONDS = 1.0
# An endpoint has at most this many rounds of its concurrency held (leased and waiting, or
# being sent; an attempt being recorded no longer counts): enough to keep it busy between
# claims (a claim is refilled at half, and a claim on a loaded PostgreSQL takes 15-30 ms),
# few enough to share the batch.
ROUNDS_AHEAD = 16
RECORD_ATTEMPTS = 3
# Attempts written in one transaction at most.
RECORD_BATCH = 200
OUTAGE = RetryPolicy(base_delay_seconds=0.5, max_delay_seconds=30.0)
# The longest wait a retry is planned for: a hundred years, the most the settings take
# (`schemas.settings.MAX_SECONDS`). A longer one is no date (`datetime` ends in 9999).
MAX_RETRY_DELAY_SECONDS = 36_500 * 86_400.0
# A retry planned past `datetime`'s end is planned at this (a day short of it, so that
# it is a date in any time zone).
_LATEST = datetime(9999, 12, 30, tzinfo=UTC)


class UnusableSecret(Exception):
    """An endpoint's signing secret is not a Standard Webhooks key (base64, `whsec_`)."""


# -- the retry schedule and signatures ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """When a failed dispatch is tried again: after its `n`th failed attempt, in
    `delays_seconds[n - 1]` (give or take `jitter` of it); after the last, never. The first
    attempt is not in it (it is made at once), so `n` delays make `n + 1` attempts."""

    delays_seconds: tuple[float, ...] = NOTIFY_RETRY_SCHEDULE_SECONDS
    jitter: float = 0.1
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def retry_at(self, failed_attempts: int, now: datetime) -> datetime | None:
        """When to try again after `failed_attempts` failed attempts (None: never). Any
        delay is a date: at most `MAX_RETRY_DELAY_SECONDS` ahead, never past `_LATEST`."""
        if not 1 <= failed_attempts <= len(self.delays_seconds):
            return None
        delay = self.delays_seconds[failed_attempts - 1]
        spread = delay * self.jitter
        return _later(now, delay + self.rng.uniform(-spread, spread))


def _later(now: datetime, seconds: float) -> datetime:
    """`now` plus `seconds`, taken within [0, MAX_RETRY_DELAY_SECONDS] (a NaN, as from an
    infinite delay's jitter, as the most), and no later than `_LATEST`."""
    wait = MAX_RETRY_DELAY_SECONDS if math.isnan(seconds) else seconds
    wait = min(max(0.0, wait), MAX_RETRY_DELAY_SECONDS)
    try:
        return now + timedelta(seconds=wait)
    except OverflowError:
        return max(now, _LATEST if now.tzinfo is not None else _LATEST.replace(tzinfo=None))


def signed_headers(job: DispatchJob, body: bytes, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: the message's stable `webhook-id`,
    now as `webhook-timestamp`, and one `v1,` signature per secret that signs now (the
    new and the old one while a rotation's grace lasts), space-separated."""
    headers = {"webhook-id": job.msg_id, "webhook-timestamp": str(math.floor(now.timestamp()))}
    secrets = job.endpoint.signing_secrets(now)
    if secrets:
        signatures = [_signer(secret).sign(job.msg_id, now, body) for secret in secrets]
        headers["webhook-signature"] = " ".join(signatures)
    return headers


@functools.lru_cache(maxsize=1024)
def _signer(secret: str) -> Webhook:
    try:
        return Webhook(secret)
    except Exception as exc:  # binascii.Error, ValueError, EmptyWebhookSecretError
        raise UnusableSecret("a signing secret of the endpoint is not a valid key") from exc


# -- sinks ---------------------------------------------------------------------------------


def sink_for(kind: str, settings: NotifySettings) -> Sink:
    """The sink that delivers to endpoints of `kind` (`http`, `nats`, `amqp`)."""
    if kind == "http":
        return HttpSink(settings)
    if kind == "nats":
        return NatsSink(policy=settings.policy, timeout_seconds=settings.timeout_seconds)
    if kind == "amqp":
        return AmqpSink(policy=settings.policy, timeout_seconds=settings.timeout_seconds)
    raise ValueError(f"no sink delivers to endpoints of kind {kind!r}")


# -- the relay -----------------------------------------------------------------------------


class _Recorder:
    """Group commit of attempts: those that finish while a batch is being written go in
    the next one, so one transaction records many (a transaction an attempt would cost a
    few milliseconds of fsync each on SQLite)."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._waiting: list[tuple[DispatchJob, AttemptResult, asyncio.Future[bool]]] = []
        self._writing: asyncio.Task[None] | None = None

    async def record(self, job: DispatchJob, result: AttemptResult) -> bool:
        """Whether the attempt was written (False: the database stayed away)."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((job, result, done))
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write_all(), name="relay-recorder")
        return await asyncio.shield(done)

    async def _write_all(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:RECORD_BATCH], self._waiting[RECORD_BATCH:]
            await self._settle(batch)

    async def _settle(
        self, batch: list[tuple[DispatchJob, AttemptResult, asyncio.Future[bool]]]
    ) -> None:
        try:
            written = await self._write([(job, result) for job, result, _ in batch])
        except Exception as exc:  # the store's bug, or an attempt it will not take
            if len(batch) > 1:
                # Each alone: one attempt the store refuses must not undo its neighbours.
                for item in batch:
                    await self._settle([item])
                return
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        for _, _, done in batch:
            if not done.done():
                done.set_result(written)

    async def _write(self, batch: list[tuple[DispatchJob, AttemptResult]]) -> bool:
        relay = self._relay
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            try:
                await relay.store.record_dispatches(relay.owner, batch, relay.disable_after)
                return True
            except StorageUnavailable as exc:
                if attempt == RECORD_ATTEMPTS:
                    log.warning("dispatches_not_recorded", count=len(batch), error=str(exc))
                    return False
                await asyncio.sleep(OUTAGE.backoff(attempt))
        return False


@dataclass(slots=True)
class _Held:
    """A leased dispatch on its way: its delivery, and until when it is ours to send."""

    job: DispatchJob
    send_by: float  # monotonic
    task: asyncio.Task[None] | None = None


class Relay:
    """Leases due dispatches and delivers them until `stopping` is set."""

    def __init__(
        self,
        settings: NotifySettings,
        store: LedgerStore,
        *,
        clock: Callable[[], datetime],
        metrics: RelayMetrics | None = None,
        schedule: RetrySchedule | None = None,
        sinks: Mapping[str, Sink] | None = None,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.metrics = metrics or RelayMetrics()
        self.schedule = schedule or RetrySchedule(settings.retry_schedule_seconds)
        self.owner = owner or new_owner()
        self.stopping = asyncio.Event()
        self.disable_after = timedelta(days=settings.disable_after_days)
        self._sinks: dict[str, Sink] = dict(sinks or {})
        self._held: dict[int, _Held] = {}
        self._held_by_endpoint: Counter[str] = Counter()
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._enabled: set[str] = set()
        self._disabled: set[str] | None = None  # None until endpoints are first read
        self._observed_at = -math.inf
        self._outbox_due = -math.inf  # monotonic: when the loop next looks at the outbox
        self._room = asyncio.Event()
        self._outages = 0
        self.held_per_endpoint = settings.concurrency_per_endpoint * ROUNDS_AHEAD
        self._recorder = _Recorder(self)

    async def run(self) -> None:
        """Pass after pass until `stopping` is set; then finish the attempts under way,
        give back every lease and close the sinks. An unreachable database pauses the loop
        with backoff; it never ends it."""
        await self._announce()
        try:
            while not self.stopping.is_set():
                await self._rest(await self._pass_or_pause())
        finally:
            await self.finish()

    async def _announce(self) -> None:
        with contextlib.suppress(StorageUnavailable):
            await self._observe()
        log.info(
            "relay_started",
            owner=self.owner,
            database=describe(self.store.engine.url),
            endpoints_enabled=len(self._enabled) if self._disabled is not None else None,
        )

    async def _pass_or_pause(self) -> float:
        """One pass; how long to rest before the next one."""
        try:
            busy = await self.run_pass(fan_out=time.monotonic() >= self._outbox_due)
        except StorageUnavailable as exc:
            self._outages += 1
            pause = OUTAGE.backoff(self._outages) + IDLE_SECONDS
            log.warning("relay_pass_failed", error=str(exc), retry_in_s=round(pause, 2))
            return pause
        self._outages = 0
        if busy:
            return 0.0
        return min(IDLE_SECONDS, max(0.0, self._outbox_due - time.monotonic()))

    async def _rest(self, seconds: float) -> None:
        """Wait `seconds`; an idle wait also ends when deliveries made room for a claim."""
        if seconds <= 0:
            return
        waits = [self.stopping.wait()]
        if seconds <= IDLE_SECONDS:
            waits.append(self._room.wait())
        tasks = [asyncio.ensure_future(wait) for wait in waits]
        try:
            await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()

    async def run_pass(self, *, fan_out: bool = True) -> bool:
        """Fan new messages out (unless `fan_out` is False), lease what is due and start
        delivering it; whether there was anything to do (then the next pass comes at once).
        The loop looks at the outbox every `IDLE_SECONDS` at most while it brings less than
        a batch: the passes deliveries set off in between only claim."""
        if time.monotonic() - self._observed_at >= OBSERVE_EVERY_SECONDS:
            await self._observe()
        fanned = await self._fan_out() if fan_out else 0
        self._room.clear()
        limit = self._claim_limit()
        if limit <= 0:
            return fanned > 0
        full = frozenset(
            endpoint
            for endpoint, held in self._held_by_endpoint.items()
            if held >= self.held_per_endpoint
        )
        jobs = await self.store.claim_dispatches(
            self.owner, limit, self.settings.lease_seconds, full
        )
        started = sum(self._hold(job) for job in jobs)
        return fanned > 0 or started > 0 or len(jobs) == limit

    async def _fan_out(self) -> int:
        batch = self.settings.batch_size
        fanned = await self.store.fan_out(batch)
        self._outbox_due = -math.inf if fanned >= batch else time.monotonic() + IDLE_SECONDS
        return fanned

    def _claim_limit(self) -> int:
        """As many as there is room for: within the batch, and within the room left at the
        endpoints. A claim cannot choose endpoints: what it brings for a full one is left to
        its lease, to be claimed again later. With nothing held, any endpoint has room (one
        made since the last look too)."""
        room = self.settings.batch_size - len(self._held)
        cap, held = self.held_per_endpoint, self._held_by_endpoint
        free = sum(max(0, cap - held[endpoint]) for endpoint in self._enabled | set(held))
        return min(room, free if self._held else max(free, cap))

    def _hold(self, job: DispatchJob) -> bool:
        """Start delivering `job`, unless it is under way already (its lease renewed), or
        its endpoint holds all it may (it is left to its lease, to be claimed again)."""
        held = self._held.get(job.id)
        send_by = time.monotonic() + _sending_window(self.settings)
        if held is not None:
            held.send_by = send_by
            return False
        endpoint = job.endpoint.id
        if self._held_by_endpoint[endpoint] >= self.held_per_endpoint:
            return False
        held = self._held[job.id] = _Held(job, send_by)
        self._held_by_endpoint[endpoint] += 1
        held.task = asyncio.create_task(self._deliver(held), name=f"dispatch-{job.id}")
        return True

    async def _deliver(self, held: _Held) -> None:
        job = held.job
        try:
            result = await self._send(held)
            if result is not None:
                await self._record(job, result)
        except Exception:  # the store's or ours: this dispatch waits for its lease to end
            log.exception("dispatch_failed", dispatch=job.id, endpoint=job.endpoint.id)
        finally:
            del self._held[job.id]

    async def _send(self, held: _Held) -> AttemptResult | None:
        """The attempt, or None when it is not to be made (`_may_send`). Once it is over,
        the endpoint has room again: an attempt being recorded no longer waits on it."""
        endpoint = held.job.endpoint.id
        try:
            async with self._gate(endpoint):
                if not self._may_send(held):
                    return None
                return await self._attempt(held.job)
        finally:
            self._held_by_endpoint[endpoint] -= 1
            if self._held_by_endpoint[endpoint] <= self.held_per_endpoint // 2:
                self._room.set()

    def _gate(self, endpoint_id: str) -> asyncio.Semaphore:
        gate = self._gates.get(endpoint_id)
        if gate is None:
            gate = self._gates[endpoint_id] = asyncio.Semaphore(
                self.settings.concurrency_per_endpoint
            )
        return gate

    def _may_send(self, held: _Held) -> bool:
        """Not once stopping, nor to an endpoint disabled meanwhile, nor past the lease."""
        disabled = self._disabled is not None and held.job.endpoint.id in self._disabled
        return not (self.stopping.is_set() or disabled or time.monotonic() > held.send_by)

    async def _attempt(self, job: DispatchJob) -> AttemptResult:
        """Sign and send `job` once; the result with its retry planned."""
        now = self.clock()
        try:
            body = orjson.dumps(job.payload)
            headers = signed_headers(job, body, now)
            result = await self._sink(job.endpoint.kind).deliver(job, body, headers)
        except UnusableSecret as exc:
            result = AttemptResult(False, error=str(exc))
        except Exception as exc:  # a sink's bug: this dispatch fails alone, and is retried
            # Named by its type and place only: a message may quote the endpoint's URL,
            # credentials and all (`amqp://user:password@...`).
            kind, error = job.endpoint.kind, type(exc).__name__
            log.error("sink_failed", kind=kind, endpoint=job.endpoint.id, **fault(exc))
            result = AttemptResult(False, error=f"the {kind} sink failed ({error})")
        if result.gone:  # before the gate lets the next one through
            self._disable(job.endpoint.id, "the endpoint answered 410 Gone")
        if result.delivered or result.gone:
            return replace(result, retry_at=None)
        return replace(result, retry_at=self.schedule.retry_at(job.attempts + 1, self.clock()))

    def _sink(self, kind: str) -> Sink:
        sink = self._sinks.get(kind)
        if sink is None:
            sink = self._sinks[kind] = sink_for(kind, self.settings)
        return sink

    async def _record(self, job: DispatchJob, result: AttemptResult) -> None:
        """Write the attempt with those finishing about now, in one transaction (a few
        tries while the database is away: an attempt not written is made again once its
        lease ends), then count and log it."""
        if await self._recorder.record(job, result):
            self._count(job, result)

    def _count(self, job: DispatchJob, result: AttemptResult) -> None:
        outcome = _outcome(result)
        self.metrics.attempts.labels(outcome).inc()
        now = self.clock()
        if result.delivered:
            self.metrics.delivery_seconds.observe(max(0.0, (now - job.created_at).total_seconds()))
        elif _failing_too_long(job.endpoint, now, self.disable_after):
            self._observed_at = -math.inf  # the store has disabled it: look at once
        log.info(
            "dispatch_attempted",
            endpoint=job.endpoint.id,
            webhook_id=job.msg_id,
            event_type=job.event_type,
            task_ref=job.payload.get("data", {}).get("ref"),
            outcome=outcome,
            attempt=job.attempts + 1,
            status=result.status_code,
            latency_ms=result.latency_ms,
            error=result.error,
        )

    def _disable(self, endpoint_id: str, reason: str | None) -> None:
        """Note an endpoint disabled (once): nothing more is sent to it."""
        if self._disabled is None:
            self._disabled = set()
        if endpoint_id not in self._disabled:
            self._disabled.add(endpoint_id)
            self._enabled.discard(endpoint_id)
            self.metrics.endpoints_disabled.set(len(self._disabled))
            log.warning("endpoint_disabled", endpoint=endpoint_id, reason=reason)

    async def _observe(self) -> None:
        """Read the endpoints (logging each one disabled since the last look) and the
        backlog, for the gauges."""
        self._observed_at = time.monotonic()
        endpoints = await self.store.endpoints()
        pending, oldest, _unsent = await self.store.outbox_backlog()
        if self._disabled is not None:
            for endpoint in endpoints:
                if not endpoint.enabled:
                    self._disable(endpoint.id, endpoint.disabled_reason)
        self._disabled = {e.id for e in endpoints if not e.enabled}
        self._enabled = {e.id for e in endpoints if e.enabled}
        self.metrics.endpoints_disabled.set(len(self._disabled))
        self.metrics.pending.set(pending)
        age = 0.0 if oldest is None else (self.clock() - oldest).total_seconds()
        self.metrics.oldest_pending_seconds.set(max(0.0, age))

    async def drain(self) -> None:
        """Wait until every delivery under way has ended and its attempt is recorded."""
        tasks = [held.task for held in self._held.values() if held.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def finish(self) -> None:
        """Let the attempts under way end (those still waiting are skipped), give back the
        leases, close the sinks."""
        self.stopping.set()
        await self.drain()
        try:
            released = await self.store.release_dispatches(self.owner)
        except StorageUnavailable:
            log.warning("leases_left_to_expire", owner=self.owner)
            released = None
        await asyncio.gather(*[sink.aclose() for sink in self._sinks.values()])
        log.info("relay_stopped", owner=self.owner, released=released)


def _sending_window(settings: NotifySettings) -> float:
    """How long after a lease a dispatch may still be sent: long enough to send it and
    record the attempt before the lease ends."""
    lease = settings.lease_seconds
    return max(lease - settings.timeout_seconds - LEASE_MARGIN_SECONDS, lease / 2)


def _failing_too_long(endpoint: Endpoint, now: datetime, disable_after: timedelta) -> bool:
    return endpoint.failing_since is not None and now - endpoint.failing_since >= disable_after


def _outcome(result: AttemptResult) -> str:
    if result.delivered:
        return "delivered"
    if result.gone:
        return "gone"
    return "failed" if result.retry_at is None else "retry"


if __name__ == "__main__":  # `python -m reconciler.relay`
    from reconciler.relay_main import main

    raise SystemExit(main())
