"""The archiver: copies each succeeded task's outputs to the archive before their URLs expire.

It runs beside the poll loop in the reconciler process. It leases pending artifacts
(earliest expiry first, `SKIP LOCKED` on PostgreSQL, so any number of reconcilers share
the work), streams each source through the address-checked fetcher into a spool file while
hashing it, checks the bytes are the media they claim, and moves the file into the store
under its SHA-256. Outputs it will not fetch (their source expired, or past their task's
limit) are settled by its claims in bulk, hundreds a transaction. A source URL is never
logged: it may carry a signed token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from reconciler.clients import join_url
from reconciler.fetch import Fetched, FetchError, SafeFetcher
from reconciler.metrics import ReconcilerMetrics
from reconciler.process import fault
from reconciler.retry import RetryPolicy
from schemas.errors import StorageUnavailable
from schemas.media import plan
from schemas.media.sniff import sniff
from schemas.media.storage import ArchiveStore, StorageError, content_key
from schemas.settings import ArchiveSettings, ProviderSettings
from schemas.store import ArchivedFile, ArchiveJob, ArtifactState, Attempt, LedgerStore
from schemas.store.artifacts import EXPIRED, Claimed, OutputLimit, Settled
from schemas.wire import request_headers

log = structlog.get_logger("taskledger.archiver")
IDLE_SECONDS = 1.0
# The queue's gauge is read again at most this often (not at every claim).
QUEUE_SECONDS = 1.0
# After a claim that settled outputs in bulk, the next claim waits this long: SQLite queues
# no writer of another process (the receiver), which needs the write lock left free a while.
SETTLE_PAUSE_SECONDS = 0.1
# A retry is never planned closer to the source's expiry than this: it would be refused.
EXPIRY_MARGIN_SECONDS = 1.0
# Spool files older than this at start-up were left by an archiver that died mid-copy.
STALE_SPOOL_SECONDS = 3600.0
# A source that refuses or is gone may be a signed URL that expired early, or a CDN not
# caught up yet: tried again until its expiry, then `missed` with this as the reason.
GONE_STATUSES = frozenset({401, 403, 404, 410})
RETRY = RetryPolicy(base_delay_seconds=1.0, max_delay_seconds=120.0)
# The failures' reason for outputs past their task's limit.
TOO_MANY_OUTPUTS = "too_many_outputs"


class Archiver:
    """Leases pending artifacts and archives them, `settings.concurrency` at a time."""

    def __init__(
        self,
        settings: ArchiveSettings,
        providers: dict[str, ProviderSettings],
        store: LedgerStore,
        media: ArchiveStore,
        fetcher: SafeFetcher,
        *,
        owner: str,
        clock: Callable[[], datetime],
        metrics: ReconcilerMetrics,
        stopping: asyncio.Event,
        policy: RetryPolicy = RETRY,
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.store = store
        self.media = media
        self.fetcher = fetcher
        self.owner = owner
        self.clock = clock
        self.metrics = metrics
        self.stopping = stopping
        self.policy = policy
        self._limit = OutputLimit(settings.max_outputs_per_task, _past_limit(settings))
        self._observed_at: float | None = None
        self._claiming = asyncio.Lock()

    async def run(self) -> None:
        """`settings.concurrency` workers until `stopping` is set; then give back every
        lease. Each worker claims one artifact when it is free, so a slow source (one
        fetch lasts at most the fetcher's `total_timeout_seconds`) holds only its own."""
        _clear_stale_spool(self.media.spool_dir)
        log.info("archiver_started", owner=self.owner, archive=self.media.describe())
        try:
            async with asyncio.TaskGroup() as workers:
                for _ in range(self.settings.concurrency):
                    workers.create_task(self._work())
        finally:
            with contextlib.suppress(StorageUnavailable):
                await self.store.release_artifacts(self.owner)

    async def _work(self) -> None:
        """One artifact after another; an unreachable database pauses the worker, it never
        ends it."""
        outages = 0
        while not self.stopping.is_set():
            try:
                done = await self.run_batch(limit=1)
            except StorageUnavailable as exc:
                outages += 1
                pause = self.policy.backoff(outages) + IDLE_SECONDS
                log.warning("archive_batch_failed", error=str(exc), retry_in_s=round(pause, 2))
                await self._idle(pause)
                continue
            outages = 0
            await self._idle(0.0 if done else IDLE_SECONDS)

    async def _idle(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    async def run_batch(self, limit: int | None = None) -> int:
        """Archive one leased batch of at most `limit` artifacts (twice the concurrency
        unless given), `settings.concurrency` at a time, each recorded as soon as it is
        done; how many the batch held, with those its claim settled without a fetch
        (expired, or past their task's limit: in bulk, see `artifacts.claim`)."""
        await self._observe_queue()
        wanted = self.settings.concurrency * 2 if limit is None else limit
        claimed = await self._claim(wanted)
        jobs = claimed.jobs
        gate = asyncio.Semaphore(self.settings.concurrency)

        async def one(job: ArchiveJob) -> None:
            async with gate:
                if not self.stopping.is_set():
                    await self._settle(job, await self.archive(job))

        await asyncio.gather(*[one(job) for job in jobs])
        return len(jobs) + sum(settled.count for settled in claimed.settled)

    async def _claim(self, wanted: int) -> Claimed:
        """Lease up to `wanted` artifacts, one claim at a time; what the claim settled in bulk
        is counted, and then the next claim waits `SETTLE_PAUSE_SECONDS`."""
        async with self._claiming:
            lease = self.settings.lease_seconds
            claimed = await self.store.claim_archive(self.owner, wanted, lease, self._limit)
            for settled in claimed.settled:
                self._count_settled(settled)
            if claimed.settled:
                await self._idle(SETTLE_PAUSE_SECONDS)
        return claimed

    async def _observe_queue(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._observed_at is not None and now - self._observed_at < QUEUE_SECONDS:
            return
        self._observed_at = now
        pending, _ = await self.store.archive_backlog()
        self.metrics.archive_queue.set(pending)

    def _count_settled(self, settled: Settled) -> None:
        """Outputs settled without a fetch: in the metrics, and one log line a task."""
        provider, count = settled.provider, settled.count
        if settled.state is ArtifactState.MISSED:
            self.metrics.archive_missed.labels(provider).inc(count)
            self.metrics.archive_attempts.labels(provider, settled.state.value).inc(count)
        else:
            self.metrics.archive_failures.labels(provider, TOO_MANY_OUTPUTS).inc(count)
        log.info(
            "artifacts_settled",
            task_ref=settled.task_ref,
            provider=provider,
            state=settled.state.value,
            count=count,
        )

    async def _settle(self, job: ArchiveJob, attempt: Attempt) -> None:
        artifact = job.artifact
        await self.store.record_attempt(artifact.id, self.owner, attempt)
        provider = artifact.provider
        if attempt.state is ArtifactState.ARCHIVED and attempt.stored is not None:
            left = (artifact.expires_at - self.clock()).total_seconds()
            self.metrics.archive_bytes.labels(provider).inc(attempt.stored.size)
            self.metrics.archive_seconds_left.labels(provider).observe(max(0.0, left))
        elif attempt.state is ArtifactState.MISSED:
            self.metrics.archive_missed.labels(provider).inc()
        self.metrics.archive_attempts.labels(provider, _result_of(attempt)).inc()
        log.info(
            "artifact_attempted",
            task_ref=artifact.task_ref,
            provider=provider,
            artifact=artifact.name,
            state=attempt.state.value,
            host=attempt.source_host,
            error=attempt.error,
        )

    async def archive(self, job: ArchiveJob) -> Attempt:
        """One attempt at one artifact: what came of it (never raises for a bad source)."""
        artifact, now = job.artifact, self.clock()
        if now >= artifact.expires_at:
            return _missed(artifact.last_error)
        source = plan.locate(job.result, artifact.source)
        if source is None:
            return Attempt(ArtifactState.FAILED, error="the task's result no longer names it")
        provider = self.providers.get(artifact.provider)
        if provider is None:
            return self._retry(job, None, f"provider {artifact.provider!r} is not configured")
        try:
            return await self._copy(job, provider, source)
        except FetchError as exc:
            return self._fetch_failed(job, exc)
        except StorageError as exc:
            return self._retry(job, None, f"the archive refused the file: {exc}")
        except Exception as exc:  # ours, a library's surprise, the spool's disk: this one alone
            # Where, not what: a message may quote the source URL and its signed token.
            log.error(
                "artifact_attempt_broke",
                task_ref=artifact.task_ref,
                provider=artifact.provider,
                **fault(exc),
            )
            error = f"the archiver failed on it ({type(exc).__name__})"
            self.metrics.archive_failures.labels(artifact.provider, "internal_error").inc()
            return self._retry(job, None, error)

    async def _copy(
        self, job: ArchiveJob, provider: ProviderSettings, source: plan.Source
    ) -> Attempt:
        url, headers, credential_origins = _request(provider, source)
        spool = _spool_file(self.media.spool_dir)
        try:
            with spool.open("wb") as sink:
                fetched = await self.fetcher.fetch_to(
                    url,
                    sink,
                    headers=headers,
                    credential_origins=credential_origins,
                    allowed_hosts=provider.media_hosts,
                )
            media_type = sniff(fetched.head)
            wrong = _not_media(fetched, media_type)
            if wrong is not None or media_type is None:
                return Attempt(ArtifactState.FAILED, fetched.host, error=wrong)
            key = content_key(fetched.sha256)
            await self.media.put(spool, key, media_type)
        finally:
            spool.unlink(missing_ok=True)
        stored = ArchivedFile(key, fetched.size, fetched.sha256, media_type)
        return Attempt(ArtifactState.ARCHIVED, fetched.host, stored)

    def _fetch_failed(self, job: ArchiveJob, exc: FetchError) -> Attempt:
        self.metrics.archive_failures.labels(job.artifact.provider, exc.reason).inc()
        error = f"{exc.reason}: {exc}"
        if exc.retryable or exc.status_code in GONE_STATUSES:
            return self._retry(job, exc.host, error)
        return Attempt(ArtifactState.FAILED, exc.host, error=error)

    def _retry(self, job: ArchiveJob, host: str | None, error: str) -> Attempt:
        """Again after a backoff, if that is still before the source expires; else missed."""
        artifact, now = job.artifact, self.clock()
        delay = self.policy.backoff(artifact.attempts + 1)
        latest = artifact.expires_at - timedelta(seconds=EXPIRY_MARGIN_SECONDS)
        retry_at = min(now + timedelta(seconds=delay), latest)
        if retry_at <= now:
            return Attempt(ArtifactState.MISSED, host, error=_missed(error).error)
        return Attempt(ArtifactState.PENDING, host, error=error, retry_at=retry_at)


def _request(
    provider: ProviderSettings, source: plan.Source
) -> tuple[str, dict[str, str], frozenset[str]]:
    """The URL to fetch, the provider's credentials, and the only origin they may go to:
    the provider's own API (its scheme, host and port; OpenAI's content is fetched with
    the key, a gateway's CDN URL without it)."""
    api = frozenset({provider.base_url} if _names_host(provider.base_url) else ())
    headers = request_headers(provider.kind, provider.api_key) if provider.api_key else {}
    if source.kind == plan.CONTENT:
        return join_url(provider.base_url, source.location), headers, api
    return source.location, headers, api


def _names_host(url: str) -> bool:
    """Whether `url` parses and names a host (`http://[::1` does not parse)."""
    try:
        return bool(urlsplit(url).hostname)
    except ValueError:
        return False


def _missed(error: str | None) -> Attempt:
    return Attempt(ArtifactState.MISSED, error=f"{EXPIRED}: {error}" if error else EXPIRED)


def _past_limit(settings: ArchiveSettings) -> str:
    """Why an output past its task's limit is not archived, as the API and audit show it."""
    count = settings.max_outputs_per_task
    return (
        f"only the first {count} outputs of a task are archived"
        f" (TASKLEDGER_ARCHIVE_MAX_OUTPUTS_PER_TASK)"
    )


def _not_media(fetched: Fetched, media_type: str | None) -> str | None:
    """Why the bytes are not the media they claim to be, if they are not: no known video or
    image format at all, or another family than the `Content-Type` says (an HTML error
    page served as `video/mp4`, a video served as an image)."""
    said = fetched.content_type or "no content type"
    if media_type is None:
        return f"not a video or image: its first bytes match no known format ({said})"
    claimed = said.split("/")[0]
    if claimed in {"video", "image"} and claimed != media_type.split("/")[0]:
        return f"claims {said} but its bytes are {media_type}"
    return None


def _result_of(attempt: Attempt) -> str:
    return "retry" if attempt.state is ArtifactState.PENDING else attempt.state.value


def _spool_file(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix="fetch-", suffix=".part", dir=directory)
    os.close(handle)
    return Path(name)


def _clear_stale_spool(directory: Path) -> None:
    """Remove what an archiver that died mid-copy left behind."""
    if not directory.is_dir():
        return
    cutoff = time.time() - STALE_SPOOL_SECONDS
    for leftover in directory.glob("fetch-*.part"):
        with contextlib.suppress(OSError):
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
