"""The reconciler loop: claim due tasks, ask their providers, fold the answers in.

Each provider has its own loop of passes: a pass claims its due tasks under a lease,
polls (or submits) them within the provider's limits and within the lease, and writes
the results through the store's one write path in small batches, in the background
while the polls go on. A stop request ends the waits, finishes in-flight calls, skips
the rest and gives the leases back.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from reconciler.clients import ProviderClient, ProviderClients, StatusAnswer
from reconciler.errors import ProviderError, RateLimited, Unsendable
from reconciler.limits import Deadline, DeadlineReached
from reconciler.metrics import ReconcilerMetrics, label_value
from reconciler.retry import RetryPolicy
from schemas.definition import Definition
from schemas.errors import ConstraintViolation, StorageUnavailable, ValueRefused
from schemas.fold import LAST_ERROR_MARK, NOT_POLLABLE, OVERDUE, POLL_FLAGS, UNRECOGNIZED_ATTENTION
from schemas.ledger import Evidence, Expiry, Poll, Stored, Submission, SubmissionStatus
from schemas.settings import PREFIX, ProviderSettings, Settings, warn_webhooks_refused
from schemas.states import REAL_TERMINAL, TERMINAL, Outcome, State
from schemas.store import Claim, LedgerStore
from schemas.tokens import CallbackTokens

log = structlog.get_logger("taskledger.reconciler")
FLUSH_EVERY_SECONDS = 0.25
FLUSH_AT_ITEMS = 200
# A pass waits (for its provider's limiter, before a retry) at most this share of its lease,
# counted from its claim: the rest is for the last answers (`sessions.ANSWER_TOTAL_SECONDS`)
# and their write. It is also the share `_claim_limit` sizes a pass's claims to.
WAIT_SHARE_OF_LEASE = 0.5
# Coroutines working through a pass's claims, per unit of the provider's concurrency: more
# than one, so that a call sleeping before its retry leaves its slot to another.
WORKERS_PER_SLOT = 2
# A final state no poll confirmed: past the task's maximum age it is asked at most this
# many times in all (on the usual backoff), then left flagged for an operator.
UNCONFIRMED_POLL_LIMIT = 12
UNCONFIRMED = "the provider never confirmed the final state a callback reported"
INTERRUPTED_SUBMIT = "the reconciler sending it stopped before the answer was recorded"
NO_BASE_URL = "no base URL configured to poll"
NOT_POLLED = "not polled within the lease"
# Submit answers held in memory while the database refuses their write, per provider: the
# provider's task id is in no other place (its job exists, and is billed). Past this many,
# the oldest are given up (each was logged with its id when its write first failed).
UNRECORDED_MAX = 10_000
# A task still open (or an end still unconfirmed) this many times its provider's expected
# duration after it was created is overdue: a failed poll then flags it with the error.
OVERDUE_AFTER_EXPECTED = 2.0
# The oldest-open-task gauge reads the ledger; once per scrape-sized interval is plenty.
BACKLOG_EVERY_SECONDS = 10.0


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass
class PassReport:
    claimed: int = 0
    polled: int = 0
    submitted: int = 0
    recovered: int = 0
    conflicts: int = 0
    lost: int = 0
    errors: int = 0
    skipped: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def add(self, other: PassReport) -> None:
        for name in (
            "claimed",
            "polled",
            "submitted",
            "recovered",
            "conflicts",
            "lost",
            "errors",
            "skipped",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        store: LedgerStore,
        clients: ProviderClients,
        *,
        clock: Callable[[], datetime],
        policy: RetryPolicy | None = None,
        metrics: ReconcilerMetrics | None = None,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clients = clients
        self.clock = clock
        self.policy = policy or RetryPolicy()
        self.metrics = metrics or ReconcilerMetrics()
        self.owner = owner or new_owner()
        self.stopping = asyncio.Event()
        self._tokens = CallbackTokens(settings.callback_secrets)
        self._backlog_seen_at = -math.inf
        self._unrecorded = _Unrecorded()

    async def run(self) -> None:
        """Pass after pass for each provider, in a loop of its own so that one provider's
        pause or slow answers never hold another's passes back, until `stopping` is set;
        then give back every lease.

        An unreachable database pauses the loops with backoff; it never ends them.
        """
        names = list(self.settings.providers)
        log.info(
            "reconciler_started",
            owner=self.owner,
            pollable=[name for name in names if self.clients.get(name) is not None],
            not_configured=[name for name in names if self.clients.get(name) is None],
        )
        for name in names:
            if self.clients.get(name) is None:
                log.warning("provider_not_pollable", provider=name, missing=_base_url_setting(name))
        warn_webhooks_refused(log, self.settings)
        loops = [
            asyncio.create_task(self._provider_loop(provider), name=f"passes-{provider.name}")
            for provider in self.settings.providers.values()
        ]
        try:
            await asyncio.gather(*loops)
        finally:
            # Should one loop fail, the others end with it.
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._record_late(None)
            await self._release()

    async def _release(self) -> None:
        try:
            released = await self.store.release(self.owner)
        except StorageUnavailable:
            log.warning("leases_left_to_expire", owner=self.owner)
            return
        log.info("reconciler_stopped", owner=self.owner, released=released)

    async def _provider_loop(self, provider: ProviderSettings) -> None:
        """One provider's passes until `stopping` is set: the next at once after a pass that
        claimed tasks, after the poll interval otherwise, later still after an outage."""
        outages = 0
        while not self.stopping.is_set():
            try:
                report = await self._pass(provider)
            except StorageUnavailable as exc:
                outages += 1
                rest = self.policy.backoff(outages) + self.settings.poll_interval_seconds
                log.warning(
                    "pass_failed",
                    owner=self.owner,
                    provider=provider.name,
                    error=str(exc),
                    retry_in_s=round(rest, 2),
                )
            else:
                outages = 0
                rest = 0.0 if report.claimed else self.settings.poll_interval_seconds
            await self._idle(rest)

    async def _idle(self, seconds: float) -> None:
        if seconds <= 0:
            return
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        except TimeoutError:
            return

    async def run_pass(self) -> PassReport:
        """One pass for every provider at once (`run` gives each provider its own loop)."""
        providers = self.settings.providers.values()
        total = PassReport()
        for report in await asyncio.gather(*[self._pass(p) for p in providers]):
            total.add(report)
        return total

    async def _pass(self, provider: ProviderSettings) -> PassReport:
        """One provider's pass, timed and logged; the backlog gauge read when it is due."""
        started = time.perf_counter()
        report = await self._provider_pass(provider)
        if time.monotonic() - self._backlog_seen_at >= BACKLOG_EVERY_SECONDS:
            await self._observe_backlog()
        elapsed = time.perf_counter() - started
        self.metrics.pass_seconds.observe(elapsed)
        if report.claimed:
            log.info(
                "pass_finished",
                owner=self.owner,
                provider=provider.name,
                claimed=report.claimed,
                polled=report.polled,
                submitted=report.submitted,
                recovered=report.recovered,
                conflicts=report.conflicts,
                lost=report.lost,
                errors=report.errors,
                skipped=report.skipped,
                ms=round(elapsed * 1000, 1),
            )
        return report

    async def _observe_backlog(self) -> None:
        self._backlog_seen_at = time.monotonic()
        oldest = await self.store.oldest_open_since()
        age = (self.clock() - oldest).total_seconds() if oldest else 0.0
        self.metrics.oldest_open_seconds.set(max(0.0, age))

    async def _record_late(self, provider: str | None) -> None:
        """Write the submit answers an earlier write failed to keep (all providers' when
        `provider` is None, at a stop, where a failure is logged instead of raised)."""
        held = self._unrecorded.take(provider)
        if not held:
            return
        batch = _Batch(self.store, PassReport(), self.metrics, provider or "", self._unrecorded)
        try:
            await batch.write(held)
        except StorageUnavailable as exc:
            if provider is not None:
                raise
            log.error("submits_unrecorded_at_stop", count=len(held), error=str(exc))
            return
        self._unrecorded.recorded(held)
        log.info("submits_recorded_late", provider=provider, count=len(held))

    async def _provider_pass(self, provider: ProviderSettings) -> PassReport:
        await self._record_late(provider.name)
        client = self.clients.get(provider.name)
        lease_seconds = self.settings.lease_seconds
        deadline = Deadline(time.monotonic() + lease_seconds * WAIT_SHARE_OF_LEASE)
        claims = await self.store.claim_due(
            self.owner, provider.name, self._claim_limit(provider), lease_seconds
        )
        report = PassReport(claimed=len(claims))
        if claims:
            batch = _Batch(self.store, report, self.metrics, provider.name, self._unrecorded)
            queue = iter(claims)

            async def work() -> None:
                for claim in queue:
                    await self._reconcile(claim, client, provider, batch, deadline)

            # A few workers rather than a task per claim: a pass claims thousands.
            workers = min(len(claims), provider.concurrency * WORKERS_PER_SLOT)
            stop = asyncio.create_task(self._stop_at_stopping(deadline))
            try:
                await asyncio.gather(*[work() for _ in range(workers)])
            finally:
                stop.cancel()
            await batch.flush()
        return report

    async def _stop_at_stopping(self, deadline: Deadline) -> None:
        """End the pass's waits as soon as a stop is asked for."""
        await self.stopping.wait()
        deadline.stop()

    def _claim_limit(self, provider: ProviderSettings) -> int:
        """No more than the provider's limits let us finish well within one lease."""
        waits = self.settings.lease_seconds * WAIT_SHARE_OF_LEASE
        within_lease = math.ceil(provider.rate_limit_per_second * waits)
        return max(1, min(self.settings.reconciler_batch_size, within_lease))

    async def _reconcile(
        self,
        claim: Claim,
        client: ProviderClient | None,
        provider: ProviderSettings,
        batch: _Batch,
        deadline: Deadline,
    ) -> None:
        if self.stopping.is_set():
            self._skip(claim, batch)
            return
        try:
            evidence = await self._evidence(claim, client, provider, deadline)
        except DeadlineReached as exc:
            if self.stopping.is_set():
                self._skip(claim, batch)
            else:
                self._give_back(claim, provider, batch, exc.ready_in_seconds)
            return
        except Exception as exc:  # not a provider's error: ours, or a library's surprise
            evidence = self._broken(claim, provider, exc)
        if evidence is None:
            batch.report.skipped += 1  # a submit withheld: nothing to record
            return
        batch.add(claim, evidence)

    def _broken(self, claim: Claim, provider: ProviderSettings, exc: Exception) -> Evidence:
        """A claim whose handling raised what no provider error is: logged with its cause,
        and recorded, so that its neighbours' answers are written and the loop goes on. A
        poll fails and is asked again rarely; a submit may have been sent: it is `unknown`
        (never sent twice), as after an answer that may have come from a created task."""
        # Where, not what: a message may quote a URL or a header with the API key.
        log.error(
            "reconcile_failed",
            task_ref=claim.ref,
            provider=provider.name,
            **fault(exc),
        )
        now = self.clock()
        error = f"{provider.name}: the reconciler failed on it ({type(exc).__name__})"
        if claim.submission == SubmissionStatus.PENDING.value:
            self.metrics.submits.labels(provider.name, SubmissionStatus.UNKNOWN.value).inc()
            after = now + timedelta(seconds=provider.expected_seconds)
            return Submission(claim.ref, now, SubmissionStatus.UNKNOWN, after, error=error)
        self.metrics.polls.labels(provider.name, "internal_error").inc()
        delay = self.policy.after_refusal(claim.poll_attempts + 1)
        return Poll(
            claim.ref,
            now,
            self._capped(claim, provider, now, delay),
            error=error,
            attention=_overdue(claim, provider, now, error),
        )

    def _skip(self, claim: Claim, batch: _Batch) -> None:
        """A claim left as it was by a stop; its lease is given back with the others."""
        batch.report.skipped += 1
        if claim.submission == SubmissionStatus.PENDING.value:
            # Claimed for sending but never sent: give it back as it was.
            now = self.clock()
            batch.add(claim, Submission(claim.ref, now, SubmissionStatus.PENDING, now))

    def _give_back(
        self, claim: Claim, provider: ProviderSettings, batch: _Batch, ready_in_seconds: float
    ) -> None:
        """A claim its provider's limits would let us ask about only past the pass's
        deadline: given back unasked, due again when the provider will take it."""
        now = self.clock()
        ready = now + timedelta(seconds=ready_in_seconds)
        if claim.submission == SubmissionStatus.PENDING.value:
            batch.give_back(claim, Submission(claim.ref, now, SubmissionStatus.PENDING, ready))
            return
        due = self._capped(claim, provider, now, ready_in_seconds)
        if ready_in_seconds >= 1:
            why = f"{NOT_POLLED}: {provider.name} takes no request for {_span(ready_in_seconds)}"
        else:
            why = f"{NOT_POLLED}: {provider.name}'s earlier requests took it all"
        batch.give_back(claim, Poll(claim.ref, now, due, error=why))

    async def _evidence(
        self,
        claim: Claim,
        client: ProviderClient | None,
        provider: ProviderSettings,
        deadline: Deadline,
    ) -> Evidence | None:
        now = self.clock()
        too_old = now >= claim.created_at + timedelta(seconds=provider.max_age_seconds)
        if too_old and claim.state not in REAL_TERMINAL:
            return Expiry(claim.ref, now, _lost_reason(provider, claim))
        if claim.submission == SubmissionStatus.SENDING.value:
            # Its request may have left, sent by a reconciler that stopped before recording
            # the answer (marked `sending` only once its limiter had admitted it).
            return Submission(
                claim.ref, now, SubmissionStatus.UNKNOWN, now, error=INTERRUPTED_SUBMIT
            )
        if too_old and claim.poll_attempts >= UNCONFIRMED_POLL_LIMIT:
            why = UNCONFIRMED + _last_error(claim.attention)
            return Poll(claim.ref, now, None, error=UNCONFIRMED, attention=why)
        if client is None:
            # Without a base URL only the callbacks and expiry can settle the task.
            at_expiry = self._capped(claim, provider, now, provider.max_age_seconds)
            flag = f"{NOT_POLLABLE}: {_base_url_setting(provider.name)} is not set"
            return Poll(
                claim.ref,
                now,
                at_expiry,
                error=NO_BASE_URL,
                attention=_flag(claim, flag + LAST_ERROR_MARK + NO_BASE_URL),
            )
        if claim.submission == SubmissionStatus.PENDING.value:
            if provider.sunset_passed(now.date()):
                error = f"{provider.name} shut down on {provider.sunset}: not submitted"
                return Submission(claim.ref, now, SubmissionStatus.REJECTED, None, error=error)
            return await self._submit(claim, client, provider, deadline)
        if claim.provider_task_id is None:
            return Poll(
                claim.ref,
                now,
                self._next_poll(claim, provider, now),
                error="no provider task id to poll yet",
            )
        return await self._poll(claim, claim.provider_task_id, client, provider, deadline)

    async def _poll(
        self,
        claim: Claim,
        task_id: str,
        client: ProviderClient,
        provider: ProviderSettings,
        deadline: Deadline,
    ) -> Poll:
        try:
            answer = await client.fetch_status(task_id, claim.model, deadline=deadline)
        except ProviderError as exc:
            self.metrics.polls.labels(provider.name, label_value(type(exc).__name__)).inc()
            now = self.clock()
            retry_at = self._capped(claim, provider, now, self._after_error(exc, claim))
            return Poll(
                claim.ref,
                now,
                retry_at,
                http_status=exc.status_code,
                body=exc.body,
                error=str(exc),
                attention=_overdue(claim, provider, now, str(exc)),
            )
        outcome = "ok" if answer.unrecognized is None else "unrecognized"
        self.metrics.polls.labels(provider.name, outcome).inc()
        now = self.clock()
        return Poll(
            claim.ref,
            now,
            self._next_poll(claim, provider, now),
            observation=answer.observation,
            http_status=answer.http_status,
            body=answer.body,
            unrecognized=_why_unread(answer),
        )

    def _after_error(self, exc: ProviderError, claim: Claim) -> float:
        if isinstance(exc, RateLimited) and exc.retry_after_seconds:
            return exc.retry_after_seconds
        attempt = claim.poll_attempts + 1
        if exc.retryable:
            # A 503's Retry-After, no longer waited for within the pass, still holds.
            return max(self.policy.after_failure(attempt), exc.retry_after_seconds or 0.0)
        return self.policy.after_refusal(attempt)

    def _next_poll(self, claim: Claim, provider: ProviderSettings, now: datetime) -> datetime:
        delay = self.policy.next_poll_delay(
            claim.poll_attempts, provider.expected_seconds, self.policy.max_poll_delay_seconds
        )
        return self._capped(claim, provider, now, delay)

    @staticmethod
    def _capped(claim: Claim, provider: ProviderSettings, now: datetime, delay: float) -> datetime:
        """`now + delay`, but never past the task's maximum age: expiry must not wait. A task
        that is final already (unconfirmed) has no expiry to wait for: it backs off."""
        if claim.state in REAL_TERMINAL:
            return now + timedelta(seconds=delay)
        deadline: datetime = claim.created_at + timedelta(seconds=provider.max_age_seconds)
        return min(now + timedelta(seconds=delay), max(deadline, now))

    async def _submit(
        self, claim: Claim, client: ProviderClient, provider: ProviderSettings, deadline: Deadline
    ) -> Submission | None:
        """Send a claimed submission, marked `sending` once its provider's limiter admits it
        (the rest of the pass's submissions stay `pending` meanwhile); None if it was
        withheld, unsent: its lease or its submission moved on, or the mark failed."""
        url = self._callback_url(claim, provider)
        sending = _Sending(self.store, self.owner, claim)
        try:
            observation = await client.submit(
                claim.model, claim.request or {}, url, deadline=deadline, before_send=sending.mark
            )
        except ProviderError as exc:
            return self._submit_failed(claim, provider, exc)
        except _Withheld:
            return None
        self.metrics.submits.labels(provider.name, "sent").inc()
        now = self.clock()
        first_poll = now + timedelta(seconds=provider.expected_seconds)
        return Submission(
            claim.ref, now, SubmissionStatus.SENT, first_poll, observation=observation
        )

    def _callback_url(self, claim: Claim, provider: ProviderSettings) -> str | None:
        """The task's own token URL; for a signing kind that takes a URL per request
        (Replicate's `webhook`), the signed route; None for one configured elsewhere, or
        whose webhooks could not be verified (no secrets: the task is polled instead)."""
        base = self.settings.public_base_url
        if not provider.kind.signs_callbacks:
            token = self._tokens.make(claim.ref, provider.name)
            return f"{base}/callbacks/{provider.name}/{token}"
        if not provider.takes_webhooks:
            return None
        if isinstance(provider.kind, Definition) and provider.kind.submit.callback != "none":
            return f"{base}/webhooks/{provider.name}"
        return None

    def _submit_failed(
        self, claim: Claim, provider: ProviderSettings, exc: ProviderError
    ) -> Submission:
        now = self.clock()
        if exc.retryable or isinstance(exc, Unsendable):
            # An unsendable one never left: it goes once its provider's setting is mended
            # (asked again rarely, as after a refusal), or it expires unsent.
            status, retry = SubmissionStatus.PENDING, self._after_error(exc, claim)
        elif exc.status_code is not None and 400 <= exc.status_code < 500:
            status, retry = SubmissionStatus.REJECTED, None
        else:
            status, retry = SubmissionStatus.UNKNOWN, provider.expected_seconds
        self.metrics.submits.labels(provider.name, label_value(status.value)).inc()
        if status is not SubmissionStatus.PENDING:
            # The cause is kept on the task too, as its attention (an unknown submission's)
            # or its error (a rejected one's).
            log.warning(
                "submit_failed", task_ref=claim.ref, submission=status.value, error=str(exc)
            )
        next_poll = now + timedelta(seconds=retry) if retry is not None else None
        return Submission(claim.ref, now, status, next_poll, error=str(exc))


class _Withheld(Exception):
    """A submit not sent after all: its `sending` mark was refused or not written."""


class _Sending:
    """A claimed submission's `sending` mark: written, in a short transaction of its own,
    once its provider's limiter has admitted the request and before the request goes out.
    A reconciler that dies so leaves `sending` (to become `unknown`, never sent again) only
    the requests that may have left; the rest of its claims stay `pending` for whoever
    takes the leases over."""

    def __init__(self, store: LedgerStore, owner: str, claim: Claim) -> None:
        self.store = store
        self.owner = owner
        self.claim = claim
        self.marked = False

    async def mark(self) -> None:
        """Mark the submission (once: a retry after an answer that proves nothing was made,
        a 429, a 503 or no connection, goes under the same mark), or raise `_Withheld` when
        it must not go: this reconciler's lease on it has passed, the submission is no
        longer `pending`, or the mark could not be written."""
        if self.marked:
            return
        claim = self.claim
        try:
            self.marked = await self.store.mark_sending(self.owner, claim.ref)
        except StorageUnavailable as exc:
            # Written or not, nothing has been sent: the lease's next holder settles it.
            log.warning(
                "submit_withheld", task_ref=claim.ref, provider=claim.provider, error=str(exc)
            )
            raise _Withheld from exc
        if not self.marked:
            log.info("submit_withheld", task_ref=claim.ref, provider=claim.provider)
            raise _Withheld


class _Batch:
    """Collects a pass's evidence and writes it in small transactions as it comes, each in a
    task of its own (as many at once as the store commits at once), so that polling goes
    on meanwhile."""

    def __init__(
        self,
        store: LedgerStore,
        report: PassReport,
        metrics: ReconcilerMetrics,
        provider: str,
        unrecorded: _Unrecorded,
    ) -> None:
        self.store = store
        self.unrecorded = unrecorded
        self.report = report
        self.metrics = metrics
        self.provider = provider
        self._pending: list[tuple[Claim, Evidence]] = []
        self._given_back: set[str] = set()  # counted as skipped, not as polled or submitted
        self._last_flush = time.monotonic()
        self._writers = asyncio.Semaphore(store.ingest_writers)
        self._writes: list[asyncio.Task[None]] = []  # kept to the end: each one's failure too

    def add(self, claim: Claim, evidence: Evidence) -> None:
        self._pending.append((claim, evidence))
        due = time.monotonic() - self._last_flush >= FLUSH_EVERY_SECONDS
        if due or len(self._pending) >= FLUSH_AT_ITEMS:
            self._start_write()

    def give_back(self, claim: Claim, evidence: Evidence) -> None:
        """`add` a claim's return unasked: it counts as skipped."""
        self.report.skipped += 1
        self._given_back.add(claim.ref)
        self.add(claim, evidence)

    async def flush(self) -> None:
        """Write what is left and wait for every write; the first failure is raised."""
        self._start_write()
        outcomes = await asyncio.gather(*self._writes, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def _start_write(self) -> None:
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        if pending:
            self._writes.append(asyncio.create_task(self._write_in_turn(pending)))

    async def _write_in_turn(self, pending: list[tuple[Claim, Evidence]]) -> None:
        async with self._writers:
            await self.write(pending)

    async def write(self, pending: Sequence[tuple[Claim, Evidence]]) -> None:
        """One transaction; should the batch break a unique key, or hold a value the
        database refuses, each item alone, so that one faulty answer never drops its
        neighbours (a lost submit answer would mean a task the provider bills but the
        ledger cannot follow)."""
        try:
            results = await self.store.ingest([evidence for _, evidence in pending])
        except (ValueRefused, ConstraintViolation):
            if len(pending) == 1:
                claim, _ = pending[0]
                log.error("evidence_refused", task_ref=claim.ref, provider=self.provider)
                self.report.errors += 1
                return
            for item in pending:
                await self.write([item])
            return
        except StorageUnavailable:
            # A poll is asked again; a submit answer cannot be: keep it, and say what it was.
            self.unrecorded.keep(_submit_answers(pending))
            raise
        for (claim, evidence), stored in zip(pending, results, strict=True):
            self._count(claim, evidence, stored)

    def _count(self, claim: Claim, evidence: Evidence, stored: Stored) -> None:
        report = self.report
        report.outcomes[stored.outcome.value] = report.outcomes.get(stored.outcome.value, 0) + 1
        if claim.ref in self._given_back:
            return
        if isinstance(evidence, Expiry):
            report.lost += stored.state is State.LOST
            self.metrics.lost.labels(self.provider).inc(stored.state is State.LOST)
            return
        if isinstance(evidence, Submission):
            report.submitted += evidence.status is SubmissionStatus.SENT
            return
        report.polled += 1
        report.errors += stored.outcome is Outcome.ERROR
        if stored.outcome is Outcome.CONFLICT:
            report.conflicts += 1
            self.metrics.conflicts.labels(self.provider).inc()
        if claim.state not in TERMINAL and stored.state in REAL_TERMINAL:
            report.recovered += 1
            self.metrics.recoveries.labels(self.provider).inc()


class _Unrecorded:
    """Submit answers whose write the database refused, by provider, oldest first: written
    before the provider's next pass claims anything, and at a stop."""

    def __init__(self) -> None:
        self._held: dict[str, list[tuple[Claim, Submission]]] = {}
        self._logged: set[str] = set()  # refs whose answer was logged when first refused

    def keep(self, items: list[tuple[Claim, Submission]]) -> None:
        for claim, submission in items:
            if claim.ref not in self._logged:
                self._logged.add(claim.ref)
                observation = submission.observation
                log.error(
                    "submit_unrecorded",
                    task_ref=claim.ref,
                    provider=claim.provider,
                    submission=submission.status.value,
                    provider_task_id=observation.provider_task_id if observation else None,
                    error=submission.error,
                )
            held = self._held.setdefault(claim.provider, [])
            held.append((claim, submission))
            if len(held) > UNRECORDED_MAX:
                given_up, _ = held.pop(0)
                self._logged.discard(given_up.ref)
                log.error("submit_answer_given_up", task_ref=given_up.ref, provider=claim.provider)

    def take(self, provider: str | None) -> list[tuple[Claim, Submission]]:
        """The answers held for `provider` (every provider's when None), no longer held:
        a write that fails again keeps them again."""
        return self._held.pop(provider, []) if provider is not None else self._take_all()

    def recorded(self, items: list[tuple[Claim, Submission]]) -> None:
        self._logged.difference_update(claim.ref for claim, _ in items)

    def _take_all(self) -> list[tuple[Claim, Submission]]:
        held = [item for items in self._held.values() for item in items]
        self._held.clear()
        return held


def _submit_answers(pending: Sequence[tuple[Claim, Evidence]]) -> list[tuple[Claim, Submission]]:
    """The submissions that were sent or settled (not those given back still to send)."""
    return [
        (claim, evidence)
        for claim, evidence in pending
        if isinstance(evidence, Submission) and evidence.status is not SubmissionStatus.PENDING
    ]


def fault(exc: BaseException) -> dict[str, str]:
    """A fault's fields for a log line: its type and where it was raised, never its
    message (which may quote a URL or a credential)."""
    return {"error": type(exc).__name__, "at": fault_site(exc)}


def fault_site(exc: BaseException) -> str:
    """Where `exc` was raised (`file:line in function`, the innermost frame): enough to find
    a fault, without its message (which may quote a URL or a credential)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


def _why_unread(answer: StatusAnswer) -> str | None:
    if answer.unrecognized is None:
        return None
    return f"{answer.unrecognized} ({answer.detail})" if answer.detail else answer.unrecognized


def _lost_reason(provider: ProviderSettings, claim: Claim) -> str:
    hours = provider.max_age_seconds / 3600
    if (claim.attention or "").startswith(UNRECOGNIZED_ATTENTION):
        return f"{UNRECOGNIZED_ATTENTION} within {hours:g} h ({claim.attention})"
    if (claim.attention or "").startswith(NOT_POLLABLE):
        return f"{NO_BASE_URL}, and no callback gave a final state within {hours:g} h"
    if claim.provider_task_id is None:
        return f"no provider task id was ever recorded within {hours:g} h"
    return f"the provider gave no final state within {hours:g} h"


def _overdue(claim: Claim, provider: ProviderSettings, now: datetime, error: str) -> str | None:
    """The flag of a task past its expected time whose poll failed: how long, and the error.
    None for a task on time, or whose end a signed callback confirmed (it wants its result)."""
    if claim.state in REAL_TERMINAL and claim.confirmed:
        return None
    waited = (now - claim.created_at).total_seconds()
    if waited < provider.expected_seconds * OVERDUE_AFTER_EXPECTED:
        return None
    final = claim.state in REAL_TERMINAL
    said = f"{claim.state} not confirmed" if final else f"still {claim.state}"
    why = f"{OVERDUE}: {said} after {_span(waited)} (expected {_span(provider.expected_seconds)})"
    return _flag(claim, why + LAST_ERROR_MARK + error)


def _flag(claim: Claim, why: str) -> str | None:
    """`why`, unless the task is flagged already for a reason other than polling it."""
    if claim.attention is None or claim.attention.startswith(POLL_FLAGS):
        return why
    return None


def _last_error(attention: str | None) -> str:
    """The last poll error a polling flag names, with its mark; else nothing."""
    if attention is None or not attention.startswith(POLL_FLAGS):
        return ""
    _, mark, error = attention.partition(LAST_ERROR_MARK)
    return mark + error


def _base_url_setting(name: str) -> str:
    return f"{PREFIX}PROVIDER_{name.upper()}_BASE_URL"


def _span(seconds: float) -> str:
    """`45s`, `12m`, `2h 05m`, `3d 04h`: a wait as people say it."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m"
    if whole < 86_400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86_400}d {whole % 86_400 // 3600:02d}h"
