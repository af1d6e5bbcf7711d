"""Group commit: deliveries of many concurrent requests share one transaction (one fsync).

Each request awaits its own result; the queue is bounded so that a slow or absent
database turns into fast 503s instead of unbounded memory. With `concurrency` above one,
that many batches are in flight at once, each in its own transaction: on PostgreSQL a
batch spends most of its time waiting on round trips and the commit, and one batch at a
time would bound throughput by that latency, not by the CPU. (SQLite takes one writer at
a time, so there one is enough.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import structlog

from receiver.errors import Overloaded
from schemas.errors import StorageUnavailable
from schemas.ledger import Delivery, Stored

Ingest = Callable[[Sequence[Delivery]], Awaitable[list[Stored]]]
BatchObserver = Callable[[int], None]

log = structlog.get_logger("taskledger.writer")
_Item = tuple[Delivery, "asyncio.Future[Stored]"]
LINGER_TURNS = 8


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
    ) -> None:
        self._ingest = ingest
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._concurrency = max(1, concurrency)
        self._on_batch = on_batch or (lambda _size: None)
        self._on_commit = on_commit or (lambda _size: None)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
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

    async def submit(self, delivery: Delivery) -> Stored:
        """Queue one delivery and wait until its batch is committed."""
        if not self._tasks or self._tasks[0].done():
            raise Overloaded("the writer is not running")
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((delivery, future))
        except asyncio.QueueFull:
            raise Overloaded("the writer queue is full") from None
        return await future

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

    async def _commit(self, batch: list[_Item]) -> None:
        self._on_batch(len(batch))
        try:
            results = await self._ingest([delivery for delivery, _ in batch])
        except Exception as exc:
            expected = isinstance(exc, StorageUnavailable)
            if not expected and len(batch) > 1:
                # Not the database: some delivery broke the batch. Each gets its own try,
                # so one poison delivery cannot turn its neighbours away.
                log.warning("batch_split", size=len(batch), error=type(exc).__name__)
                for item in batch:
                    await self._commit([item])
                return
            _fail(batch, Overloaded("storage unavailable"))
            log.warning(
                "batch_failed",
                size=len(batch),
                error=type(exc).__name__,
                detail=str(exc) if expected else None,
                exc_info=not expected,
            )
            return
        self._on_commit(len(batch))
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _fail(batch: list[_Item], error: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
