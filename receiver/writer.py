"""Group commit: deliveries of many concurrent requests share one transaction (one fsync).

Each request awaits its own result; the queue is bounded so that a slow or absent
database turns into fast 503s instead of unbounded memory. With `concurrency` above one,
that many batches are in flight at once, each in its own transaction: on PostgreSQL a
batch spends most of its time waiting on round trips and the commit, and one batch at a
time would bound throughput by that latency, not by the CPU. (SQLite takes one writer at
a time, so there one is enough.)

Each request is answered within its deadline, counted from its arrival, whatever is queued
ahead of it: past it the request gets `Overloaded` (503) while its delivery may still be
in a batch, and a delivery whose deadline has passed before its batch begins is dropped
(its sender was told to retry; nothing was promised). A batch waits for the database,
this process's other writers and SQLite's write lock included, at most until the earliest
deadline among its deliveries (`schemas.write_deadline`). A 2xx is only ever an answer
to a committed delivery; a 503 may answer one that commits after all (the sender's retry
is then a counted duplicate).

The writer also remembers whether the database refused its latest batch for a reason
other than being busy (a full disk, a read-only database): `/readyz` reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

import structlog

from receiver import deadlines
from receiver.errors import Conflict, Overloaded
from schemas.errors import ConstraintViolation, StorageUnavailable, ValueRefused
from schemas.ledger import Delivery, Stored, Unread
from schemas.logs import Throttle
from schemas.settings import ANSWER_DEADLINE_SECONDS
from schemas.write_deadline import WriteBusy, write_deadline

Ingest = Callable[[Sequence[Delivery]], Awaitable[list[Stored]]]
BatchObserver = Callable[[int], None]

log = structlog.get_logger("taskledger.writer")
# A delivery, the future its request awaits, and the loop time its answer is due by.
_Item = tuple[Delivery, "asyncio.Future[Stored]", float]
# Event-loop turns a batch waits for more deliveries (each turn one `sleep(0)`).
LINGER_TURNS = 8
# How long a refused batch keeps `/readyz` at 503 when no later batch says otherwise: a
# receiver taken out of rotation gets no callbacks to find out that the database is back.
REFUSAL_SHOWN_SECONDS = 30.0


class NotStored(Overloaded):
    """The database refused the delivery's batch (unreachable, read-only): it is not
    stored, and may be kept elsewhere (`receiver.spool`) instead. A write merely slower than
    the deadline is a plain `Overloaded` (503): the database may still commit it, and
    spooling it would answer 2xx before its task was checked."""


class GroupCommitWriter:
    def __init__(
        self,
        ingest: Ingest,
        *,
        queue_size: int = 4096,
        batch_size: int = 256,
        concurrency: int = 1,
        on_batch: BatchObserver | None = None,
        on_commit: BatchObserver | None = None,
        answer_within: float = ANSWER_DEADLINE_SECONDS,
    ) -> None:
        self._ingest = ingest
        self._answer_within = answer_within
        self._refused = deadlines.Remembered(REFUSAL_SHOWN_SECONDS)
        # While the database refuses, every batch fails alike: a line every 10 s says so.
        self._failures_logged = Throttle()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._concurrency = max(1, concurrency)
        self._on_batch = on_batch or (lambda _size: None)
        self._on_commit = on_commit or (lambda _size: None)
        self._tasks: list[asyncio.Task[None]] = []
        self._deadlines: deadlines.Deadlines  # set by `start`, before any `submit`

    async def start(self) -> None:
        self._deadlines = deadlines.of_running_loop()  # the loop's, looked up once
        self._tasks = [
            asyncio.create_task(self._run(), name=f"taskledger-writer-{i}")
            for i in range(self._concurrency)
        ]

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        if not self._tasks:
            return
        await self._queue.join()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def submit(
        self, delivery: Delivery, *, arrived: float | None = None, within: float | None = None
    ) -> Stored:
        """Queue one delivery and wait until its batch is committed; `Overloaded` if that has
        not happened `within` seconds (default: the writer's `answer_within`) after the
        request `arrived` (its `time.perf_counter()`; default: now)."""
        if not self._tasks or self._tasks[0].done():
            raise Overloaded("the writer is not running")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._answer_within if within is None else within)
        if arrived is not None:
            deadline -= time.perf_counter() - arrived
            if deadline <= loop.time():
                raise Overloaded("the answer deadline passed before the delivery was read")
        future: asyncio.Future[Stored] = loop.create_future()
        try:
            self._queue.put_nowait((delivery, future, deadline))
        except asyncio.QueueFull:
            raise Overloaded("the writer queue is full") from None
        try:
            return await self._deadlines.by(deadline, future)
        except TimeoutError:
            # Slow is not down: only a database known to refuse hands deliveries to the spool,
            # whose replay checks what this write would have (the task a token names).
            raise Overloaded("the delivery was not stored within the answer deadline") from None

    @property
    def queued(self) -> int:
        """Deliveries waiting for a batch to take them."""
        return self._queue.qsize()

    @property
    def refusal(self) -> str | None:
        """Why the database refused the latest batch, other than by being busy; None once a
        batch commits, or `REFUSAL_SHOWN_SECONDS` after the refusal."""
        return self._refused.reason

    async def _run(self) -> None:
        while True:
            batch = await self._gather()
            try:
                await self._commit(batch)
            except Exception:
                # The loop must outlive anything a batch does; its requests get a 503.
                _fail(batch, Overloaded("writer error"))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _gather(self) -> list[_Item]:
        """The next batch: what is queued, plus what keeps arriving while the loop turns.

        Each commit costs an fsync, so a batch waits a few loop iterations for the
        requests already on the wire, and stops as soon as an iteration brings none.
        """
        batch = [await self._queue.get()]
        for _ in range(LINGER_TURNS):
            arrived = self._take(batch)
            if not arrived or len(batch) >= self._batch_size:
                break
            await asyncio.sleep(0)
        return batch

    def _take(self, batch: list[_Item]) -> int:
        taken = 0
        while len(batch) < self._batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
            taken += 1
        return taken

    async def _commit(self, items: list[_Item]) -> None:
        batch = _unexpired(items, asyncio.get_running_loop().time())
        if not batch:
            return
        self._on_batch(len(batch))
        try:
            with write_deadline(min(deadline for _, _, deadline in batch)):
                results = await self._ingest([delivery for delivery, _, _ in batch])
        except Exception as exc:
            self._note_failure(exc)
            expected = isinstance(exc, StorageUnavailable)
            if not expected and len(batch) > 1:
                # Not the database: some delivery broke the batch. Each gets its own try,
                # so one poison delivery cannot turn its neighbours away.
                log.warning("batch_split", size=len(batch), error=type(exc).__name__)
                for item in batch:
                    await self._commit([item])
                return
            raw = _kept_raw(batch[0], exc) if isinstance(exc, ValueRefused) else None
            if raw is not None:
                # What was read from it could not be stored: the delivery itself is kept,
                # unread, as a body no reader understood would be.
                log.warning("delivery_kept_raw", provider=raw[0].provider, detail=str(exc))
                await self._commit([raw])
                return
            if isinstance(exc, ConstraintViolation):
                # This one delivery breaks a unique key: it alone is refused, precisely.
                _fail(batch, Conflict("the delivery conflicts with what the ledger holds"))
                log.warning("delivery_conflicted", provider=batch[0][0].provider)
                return
            _fail(batch, (NotStored if expected else Overloaded)("storage unavailable"))
            left_out = self._failures_logged.due(str(exc) if expected else type(exc).__name__)
            if left_out is not None:
                log.warning(
                    "batch_failed",
                    size=len(batch),
                    error=type(exc).__name__,
                    detail=str(exc) if expected else None,
                    left_out=left_out,
                    exc_info=not expected,
                )
            return
        self._refused.clear()
        self._on_commit(len(batch))
        for (_, future, _), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _note_failure(self, exc: Exception) -> None:
        """Remember a refusal by the database; a busy one, or a bug, says nothing of it."""
        if isinstance(exc, StorageUnavailable) and not isinstance(exc, WriteBusy):
            self._refused.note(str(exc))


def _kept_raw(item: _Item, exc: ValueRefused) -> _Item | None:
    """`item` with its delivery's reading left out, for the database to keep the body as it
    came; None when there was no reading to leave out."""
    delivery, future, deadline = item
    if delivery.observation is None:
        return None
    problem = f"what was read from it could not be stored ({exc}); kept as it came"
    unread = Unread("not_storable", problem)
    kept = replace(delivery, observation=None, unread=unread, task_id=delivery.provider_task_id)
    return kept, future, deadline


def _unexpired(batch: list[_Item], now: float) -> list[_Item]:
    """The items still awaited in time; the others' requests have had, or now get, a 503."""
    live = []
    for item in batch:
        _, future, deadline = item
        if future.done():
            continue  # its request was answered at its deadline
        if deadline <= now:
            future.set_exception(Overloaded("the answer deadline passed before the write"))
            continue
        live.append(item)
    return live


def _fail(batch: list[_Item], error: Exception) -> None:
    for _, future, _ in batch:
        if not future.done():
            future.set_exception(error)
