"""The local spool: authenticated callbacks kept durably on this host while PostgreSQL cannot
take them, answered once kept, and replayed into it, in arrival order, once it can.

Its files (`schemas.spool_file`) are SQLite, one per receiver process, locked while it
runs. A file nobody holds was left by a process that is gone: the next receiver of that
database to look adopts it and drains it. A spooled delivery is replayed through the
ledger's one write path, `LedgerStore.ingest`, like any other: a replay of one that is
stored already is a duplicate, and ownership (403) is checked then, since it needs the
database.

A spooled delivery that fails its replay with anything but the database being unavailable
is tried `MAX_ATTEMPTS` times, then set aside in its file's quarantine so that those after
it drain on; an operator lists and replays them (`taskledger spool`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from receiver import deadlines
from receiver.errors import Overloaded
from receiver.metrics import ReceiverMetrics
from schemas.clock import Clock, utc_now
from schemas.database import names_sqlite
from schemas.errors import StorageUnavailable
from schemas.ledger import Delivery, Reader, Stored
from schemas.migrate import head_revision
from schemas.settings import Settings
from schemas.spool_file import (
    Entry,
    Ledger,
    Row,
    SpoolFile,
    Undecodable,
    encode,
    outcome_of,
    quarantined,
    spool_directory,
    spool_files,
)
from schemas.write_deadline import write_deadline

log = structlog.get_logger("taskledger.spool")
# The part of a callback's answer deadline kept for spooling it when the writer gives up.
SPOOL_SECONDS = 1.0
# While the database is down, the drain tries it this often.
RETRY_SECONDS = 1.0
# How long a drain batch or a probe waits for the database before it counts as down.
DRAIN_WRITE_SECONDS = 10.0
# How often a receiver looks for spool files that a process now gone left behind.
ADOPT_EVERY_SECONDS = 30.0
MAX_SLOTS = 1024
# A spooled delivery whose replay fails this many times with an error other than the
# database being unavailable (which waits, uncounted) goes to quarantine.
MAX_ATTEMPTS = 3
# A failed append is shown (`/readyz`) until an append succeeds, or this long after it.
FAILURE_SHOWN_SECONDS = 30.0


class SpoolFull(Overloaded):
    """The spool holds its cap: the sender is told to retry, as with no spool at all."""


_Pending = tuple[Row, "asyncio.Future[None]"]


class Spool:
    """This process's spool of one PostgreSQL ledger: appends group-committed into its own
    file (one fsync for the deliveries of many requests), and a drain that replays every
    file it holds, oldest first, once the database answers."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        readers: dict[str, Reader],
        metrics: ReceiverMetrics,
        drain_batch_size: int = 256,
        clock: Clock = utc_now,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._readers = readers
        self._metrics = metrics
        self._batch_size = drain_batch_size
        self._clock = clock
        self._held: dict[Path, SpoolFile] = {}
        self._own_file: SpoolFile | None = None
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._appends = asyncio.Event()
        self._entries = asyncio.Event()
        self._down = False
        self._tasks: list[asyncio.Task[None]] = []
        # Failed replays of the entry each file stopped at: (file, seq) -> attempts.
        self._attempts: dict[tuple[Path, int], int] = {}
        self.depth = 0
        self.size = 0
        # Entries in quarantine in this database's spool files, waiting for an operator.
        self.quarantined = 0
        # The loop time and cause of the latest failed append, None once one succeeds.
        self._append_failure = deadlines.Remembered(FAILURE_SHOWN_SECONDS)

    @property
    def engaged(self) -> bool:
        """Whether a delivery goes to the spool rather than the writer: the database is
        known to be down, or deliveries wait here already (a newer one must not pass them)."""
        return self._down or self.depth > 0 or bool(self._pending)

    @property
    def failure(self) -> str | None:
        """Why the latest append failed (the directory cannot be written: removed, a full
        disk, its permissions); None once an append succeeds, or `FAILURE_SHOWN_SECONDS`
        after the failure (the next callback spooled tries again)."""
        return self._append_failure.reason

    def note_down(self, reason: str) -> None:
        """The database failed a write: spool from now on, until the drain finds it back."""
        if not self._down:
            log.warning("spool_engaged", reason=reason, depth=self.depth)
        self._down = True

    async def keep(self, delivery: Delivery, deadline: float) -> None:
        """Return once `delivery` is in the spool, durably: `SpoolFull` if it would pass the
        cap, `Overloaded` if that has not happened by loop time `deadline`."""
        row = encode(delivery)
        if self.size + self._pending_bytes + row[-1] > self.max_bytes:
            raise SpoolFull("the database is unavailable and the local spool is full")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        self._pending_bytes += row[-1]
        self._appends.set()
        try:
            await deadlines.of_running_loop().by(deadline, future)
        except TimeoutError:
            raise Overloaded("the delivery was not spooled within the answer deadline") from None
        self._metrics.spooled.labels(delivery.provider).inc()

    async def start(self, ledger: Ledger, on_commit: Callable[[int], None]) -> None:
        """Adopt what earlier processes left, then run the appends and the drain."""
        await self.adopt()
        self._tasks = [
            asyncio.create_task(self._commit_appends(), name="taskledger-spool"),
            asyncio.create_task(self._drain(ledger, on_commit), name="taskledger-spool-drain"),
        ]

    async def stop(self) -> None:
        """Stop draining; append what is pending; let go of every file (what is left in
        them is drained by the next receiver of this database to start)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._append_pending()
        for file in self._held.values():
            await file.release()
        self._held.clear()
        self._own_file = None

    async def adopt(self) -> None:
        """Hold every spool file of this database that holds deliveries and no running
        process holds: one left by a process that is gone. Count what is in quarantine."""
        for path in spool_files(self.directory):
            if path in self._held:
                continue
            file = await _hold(path)
            if file is None:
                continue
            if file.depth == 0:
                await file.release()
                continue
            log.info("spool_adopted", file=path.name, depth=file.depth)
            self._held[path] = file
            self._counted(file.depth, file.size)
        await self._count_quarantine()

    async def _count_quarantine(self) -> None:
        """What waits in quarantine in every spool file of this database (an operator's
        replay, from another process, takes entries out)."""
        try:
            self.quarantined = len(await quarantined(self.directory))
        except Exception as exc:
            log.error("spool_quarantine_unreadable", error=type(exc).__name__)
            return
        self._metrics.spool_quarantine_depth.set(self.quarantined)

    # -- appends ---------------------------------------------------------------------------

    async def _commit_appends(self) -> None:
        """Group commit: each round takes every delivery that arrived during the last one."""
        while True:
            await self._appends.wait()
            self._appends.clear()
            await self._append_pending()

    async def _append_pending(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        rows = [row for row, _ in batch]
        try:
            await (await self._own()).append(rows)
        except Exception as exc:
            log.error("spool_append_failed", size=len(rows), error=type(exc).__name__)
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            self._append_failure.note(reason)
            _settle(batch, Overloaded("the local spool is unavailable"))
        else:
            self._append_failure.clear()
            self._counted(len(rows), sum(row[-1] for row in rows))
            _settle(batch, None)
            self._entries.set()
        finally:
            self._pending_bytes -= sum(row[-1] for row in rows)

    async def _own(self) -> SpoolFile:
        """The file this process appends to, chosen at its first append and kept until it
        stops: the first slot it holds already or can hold."""
        if self._own_file is not None:
            return self._own_file
        self.directory.mkdir(parents=True, exist_ok=True)
        for slot in range(MAX_SLOTS):
            path = self.directory / f"spool-{slot}.sqlite"
            file = self._held.get(path) or await _hold(path)
            if file is not None:
                self._held[path] = self._own_file = file
                return file
        raise OSError(f"every one of {MAX_SLOTS} spool files is held")

    def _counted(self, entries: int, size: int) -> None:
        self.depth += entries
        self.size += size
        self._metrics.spool_depth.set(self.depth)
        self._metrics.spool_bytes.set(self.size)

    # -- the drain -------------------------------------------------------------------------

    async def _drain(self, ledger: Ledger, on_commit: Callable[[int], None]) -> None:
        """The drain's loop, which must outlive anything a step does (a failed step leaves
        the entries where they are)."""
        loop = asyncio.get_running_loop()
        adopted_at = loop.time()
        while True:
            try:
                if await self._drain_step(ledger, on_commit):
                    continue
                if loop.time() - adopted_at >= ADOPT_EVERY_SECONDS:
                    await self.adopt()
                    adopted_at = loop.time()
            except Exception as exc:
                log.error("spool_drain_failed", error=type(exc).__name__, exc_info=exc)
                await asyncio.sleep(RETRY_SECONDS)

    async def _drain_step(self, ledger: Ledger, on_commit: Callable[[int], None]) -> bool:
        """Replay a batch, or find out whether the database is back, or wait for entries
        (False: idle, at most `ADOPT_EVERY_SECONDS`)."""
        self._entries.clear()
        file = self._next_to_drain()
        if self._down and not await _answers(ledger):
            await asyncio.sleep(RETRY_SECONDS)
        elif file is not None:
            await self._drain_once(file, ledger, on_commit)
        elif self._down:
            self._back()
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ADOPT_EVERY_SECONDS):
                    await self._entries.wait()
            return False
        return True

    def _next_to_drain(self) -> SpoolFile | None:
        """A held file with deliveries in it: those adopted from processes now gone before
        this process's own (theirs arrived first)."""
        waiting = [file for file in self._held.values() if file.depth]
        waiting.sort(key=lambda file: file is self._own_file)
        return waiting[0] if waiting else None

    def _back(self) -> None:
        if self._down:
            log.info("spool_disengaged", depth=self.depth)
        self._down = False

    async def _drain_once(
        self, file: SpoolFile, ledger: Ledger, on_commit: Callable[[int], None]
    ) -> None:
        """Replay the oldest entries of `file`, in order, and forget those the ledger
        committed; the entry the replay stopped at stays where it is (`_failed`)."""
        entries, undecodable = await file.oldest(self._batch_size, self._readers)
        if not entries and undecodable is not None:
            await self._quarantine(file, undecodable, undecodable.error, 0)
        elif not entries:  # nothing there after all: count it as it is
            self._counted(-file.depth, -file.size)
            file.depth = file.size = 0
            return
        else:
            await self._replay_batch(file, ledger, entries, on_commit)
        if file.depth == 0:
            await self._drained(file)

    async def _replay_batch(
        self,
        file: SpoolFile,
        ledger: Ledger,
        entries: list[Entry],
        on_commit: Callable[[int], None],
    ) -> None:
        replay = await _replay(ledger, entries)
        if replay.done:
            await self._forget(file, replay, on_commit)
        if replay.failed is not None and replay.error is not None:
            await self._failed(file, replay.failed, replay.error)

    async def _forget(
        self, file: SpoolFile, replay: _Replay, on_commit: Callable[[int], None]
    ) -> None:
        """The entries `replay` committed leave the file: they are in the ledger now. Those
        the ledger refused (another task's callback: the check a live request makes before
        its answer) go to quarantine instead: they were answered 202 when spooled, so the
        sender will not send them again, and they stay where an operator sees them."""
        kept = []
        for entry, stored in zip(replay.done, replay.results, strict=True):
            if stored.refused:
                refusal = f"refused when drained: {outcome_of(stored)}"
                await self._quarantine(file, entry, refusal, 1)
            else:
                kept.append(entry)
        if kept:
            await file.remove(kept)
            self._counted(-len(kept), -sum(entry.size for entry in kept))
        for entry in replay.done:
            self._attempts.pop((file.path, entry.seq), None)
        self._back()
        on_commit(len(replay.done))
        self._report(replay.done, replay.results)

    async def _failed(self, file: SpoolFile, entry: Entry, error: Exception) -> None:
        """The database being unavailable (down, or refusing writes: read-only, disk full)
        is waited out, however long; any other error is tried `MAX_ATTEMPTS` times, then
        the entry goes to quarantine and those after it drain on at once."""
        if isinstance(error, StorageUnavailable):
            log.warning("spool_drain_refused", detail=str(error), depth=self.depth)
            self.note_down(str(error))
        else:
            attempts = self._attempts.pop((file.path, entry.seq), 0) + 1
            if attempts >= MAX_ATTEMPTS:
                await self._quarantine(file, entry, f"{type(error).__name__}: {error}", attempts)
                return
            self._attempts[file.path, entry.seq] = attempts
            log.warning(
                "spooled_delivery_failed",
                provider=entry.delivery.provider,
                delivery_key=entry.delivery.delivery_key[:64],
                attempts=attempts,
                error=type(error).__name__,
            )
        await asyncio.sleep(RETRY_SECONDS)

    async def _quarantine(
        self, file: SpoolFile, entry: Entry | Undecodable, error: str, attempts: int
    ) -> None:
        """Set `entry` aside, kept with its error (whose text stays in the file: it may
        quote the delivery, which a log line must not: the line names its type only)."""
        provider, key, task_ref = await file.quarantine(entry, error, attempts, self._clock())
        self._counted(-1, -entry.size)
        self.quarantined += 1
        self._metrics.spool_quarantined.labels(provider).inc()
        self._metrics.spool_quarantine_depth.set(self.quarantined)
        log.error(
            "spooled_delivery_quarantined",
            provider=provider,
            task_ref=task_ref,
            delivery_key=key[:64],
            attempts=attempts,
            error=error.partition(":")[0],
            file=file.path.name,
            seq=entry.seq,
        )

    async def _drained(self, file: SpoolFile) -> None:
        """`file` is empty: let go of it unless it is this process's own."""
        log.info("spool_drained", file=file.path.name)
        if file is not self._own_file:
            del self._held[file.path]
            await file.release()

    def _report(self, entries: list[Entry], results: list[Stored]) -> None:
        metrics = self._metrics
        for entry, stored in zip(entries, results, strict=True):
            provider, outcome = entry.delivery.provider, outcome_of(stored)
            metrics.spool_drained.labels(outcome).inc()
            if stored.refused:  # quarantined by `_forget`, which logged it
                metrics.rejections.labels(provider, outcome).inc()
                continue
            metrics.deliveries.labels(provider, outcome).inc()


@dataclass(frozen=True, slots=True)
class _Replay:
    """How far a replay went: the entries committed, with what became of each, and the
    first entry it stopped at, with the error it stopped on."""

    done: list[Entry]
    results: list[Stored]
    failed: Entry | None = None
    error: Exception | None = None


async def _replay(ledger: Ledger, entries: list[Entry]) -> _Replay:
    """`ledger.ingest` of `entries`, as far as it goes in their order. On an error other
    than the database being unavailable (a bug; a delivery breaking a unique key on every
    try, which is not dropped: it was answered 202 already; a value the database refuses),
    the batch is halved until the first entry that fails alone is found; those before it
    are committed, it and those after it are not."""
    try:
        with write_deadline(asyncio.get_running_loop().time() + DRAIN_WRITE_SECONDS):
            results = list(await ledger.ingest([entry.delivery for entry in entries]))
    except StorageUnavailable as exc:
        return _Replay([], [], entries[0], exc)
    except Exception as exc:
        if len(entries) == 1:
            return _Replay([], [], entries[0], exc)
        return await _halved(ledger, entries)
    return _Replay(entries, results)


async def _halved(ledger: Ledger, entries: list[Entry]) -> _Replay:
    half = len(entries) // 2
    first = await _replay(ledger, entries[:half])
    if first.error is not None:
        return first
    rest = await _replay(ledger, entries[half:])
    return replace(rest, done=first.done + rest.done, results=first.results + rest.results)


async def _answers(ledger: Ledger) -> bool:
    """Whether the database answers a read now, at the newest migration (a receiver that
    started while it was down has not seen it yet: nothing is replayed into another schema)."""
    try:
        async with asyncio.timeout(DRAIN_WRITE_SECONDS):
            revision = await ledger.ping()
    except Exception:  # any failure to answer is "not back yet"
        return False
    if revision != head_revision():
        log.error("spool_drain_waits", detail="the database is not at the newest migration")
        return False
    return True


async def _hold(path: Path) -> SpoolFile | None:
    """`SpoolFile.hold`; None, said in a log line, for a file SQLite cannot open (damaged
    beyond what its recovery mends): it stays on disk for an operator, and the spool goes
    on with its other files."""
    try:
        return await SpoolFile.hold(path)
    except Exception as exc:
        log.error("spool_file_unreadable", file=path.name, error=type(exc).__name__)
        return None


def _settle(batch: list[_Pending], error: Exception | None) -> None:
    for _, future in batch:
        if future.done():
            continue  # its request was answered at its deadline
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def keeps_spool(settings: Settings) -> bool:
    """Whether a receiver of `settings` keeps a spool: on PostgreSQL, unless turned off
    (SQLite is local already)."""
    return settings.spool.enabled and not names_sqlite(settings.database_url)


def open_spool(settings: Settings, metrics: ReceiverMetrics) -> Spool | None:
    """The spool of `settings`' ledger, if it keeps one (`keeps_spool`)."""
    if not keeps_spool(settings):
        return None
    directory, spool = spool_directory(settings), settings.spool
    return Spool(directory, spool.max_bytes, settings.readers, metrics, spool.drain_batch_size)
