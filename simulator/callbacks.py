"""The callback sender: per-delivery fault plans, each format's signing, retries with backoff.

Every send runs in a tracked background task on one shared `httpx.AsyncClient`; it only
ever posts to the URL it was given (a task's callback_url or the configured webhook URL).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from simulator.config import Faults, SimConfig
from simulator.signatures import Signer
from simulator.stats import Stats

logger = logging.getLogger("simulator")
LONG_RETRY_FORMATS = ("fal",)  # besides Standard Webhooks senders


@dataclass(frozen=True)
class Delivery:
    """One callback message: a body for a URL; `webhook_id` is set for Standard Webhooks.

    `names` is the task id the body names (the task's own unless a trick changed it) and
    `tricks` the provider tricks that shaped it (see `simulator.tricks`); a message that is
    not `retried` gets one attempt only (Replicate's non-terminal webhooks).
    """

    fmt: str
    task_id: str
    url: str
    body: bytes
    webhook_id: str | None = None
    names: str = ""
    tricks: tuple[str, ...] = ()
    retried: bool = True

    @property
    def key(self) -> str:
        """How a receiver tells messages apart: the `webhook-id`, else the body's SHA-256."""
        return self.webhook_id or hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class Plan:
    """What the faults decided for one delivery before it is sent."""

    delivery: Delivery
    copies: int
    delay_s: float
    forged: bool


class CallbackSender:
    """Sends deliveries in the background, applying drop/duplicate/delay/forge faults.

    `signers` holds each signing format's signer; a forged message of a format without one
    goes to a tampered URL instead (unsigned callbacks are bound to their task by the URL).
    """

    def __init__(
        self,
        config: SimConfig,
        stats: Stats,
        rng: random.Random,
        clock: Callable[[], float],
        faults: Callable[[], Faults],
        signers: Mapping[str, Signer] | None = None,
    ) -> None:
        self._config = config
        self._stats = stats
        self._rng = rng
        self._clock = clock
        self._faults = faults
        self._signers = dict(signers or {})
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._chains: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self._config.callback_timeout_s)

    async def aclose(self) -> None:
        """Cancel the sends still running, wait for them, close the client."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def drain(self) -> None:
        """Wait until every send started so far (and those they start) has ended."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def send(self, *deliveries: Delivery, after: str | None = None) -> None:
        """Send `deliveries` one after the other (each with its own faults) in the background.

        Sends sharing an `after` key (a task) go out in the order they were asked for.
        """
        plans = [plan for plan in map(self._plan, deliveries) if plan.copies]
        if not plans:
            return
        previous = self._chains.get(after) if after else None
        task = asyncio.create_task(self._send_in_order(plans, previous))
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._forget, after))
        if after:
            self._chains[after] = task

    def _forget(self, after: str | None, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if after and self._chains.get(after) is task:
            del self._chains[after]
        if not task.cancelled() and task.exception() is not None:
            logger.error("callback_send_crashed", exc_info=task.exception())

    def _plan(self, delivery: Delivery) -> Plan:
        faults, rng, counts = self._faults(), self._rng, self._stats.callbacks
        counts["scheduled"] += 1
        if rng.random() < faults.drop_rate:
            counts["dropped"] += 1
            return Plan(delivery, 0, 0.0, False)
        copies = rng.randint(2, 3) if rng.random() < faults.duplicate_rate else 1
        delayed = rng.random() < faults.delay_rate
        delay_s = rng.uniform(0.0, faults.max_callback_delay_s) if delayed else 0.0
        forged = rng.random() < faults.bad_signature_rate
        counts["duplicated"] += copies > 1
        counts["duplicate_copies"] += copies - 1
        counts["delayed"] += delayed
        counts["forged"] += forged
        return Plan(delivery, copies, delay_s, forged)

    async def _send_in_order(self, plans: list[Plan], previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        for plan in plans:
            if plan.delay_s:
                await asyncio.sleep(plan.delay_s)
            await asyncio.gather(*(self._send_with_retries(plan) for _ in range(plan.copies)))

    def _retry_delays(self, delivery: Delivery) -> tuple[float, ...]:
        """Webhook backoffs for signed platforms (hours long), callback ones for gateways."""
        config = self._config
        if not delivery.retried:
            return ()
        long = delivery.webhook_id or delivery.fmt in LONG_RETRY_FORMATS
        delays = config.webhook_retry_delays_s if long else config.callback_retry_delays_s
        return tuple(delay * config.time_scale for delay in delays)

    async def _send_with_retries(self, plan: Plan) -> None:
        """First attempt, then one retry after each backoff delay until a 2xx answer."""
        counts = self._stats.callbacks
        for attempt, delay in enumerate((0.0, *self._retry_delays(plan.delivery))):
            if attempt:
                counts["retried"] += 1
                await asyncio.sleep(delay)
            if await self._post(plan):
                counts["delivered"] += 1
                return
        counts["failed"] += 1

    async def _post(self, plan: Plan) -> bool:
        """One HTTP attempt; True on a 2xx answer (redirects are not followed: a failure)."""
        if self._client is None:
            raise RuntimeError("CallbackSender.start() was not awaited")
        delivery = plan.delivery
        signed = delivery.fmt in self._signers
        url = tamper_url(delivery.url) if plan.forged and not signed else delivery.url
        self._stats.callbacks["sent"] += 1
        message = self._stats.sent.message(
            delivery.fmt,
            delivery.key,
            task_id=delivery.task_id,
            names=delivery.names or delivery.task_id,
            authentic=not plan.forged,
            tricks=delivery.tricks,
        )
        try:
            response = await self._client.post(
                url, content=delivery.body, headers=self._headers(plan)
            )
        except httpx.HTTPError:
            self._stats.callbacks["transport_errors"] += 1
            self._stats.sent.answered(message, None)
            return False
        self._stats.sent.answered(message, response.status_code)
        return 200 <= response.status_code < 300

    def _headers(self, plan: Plan) -> dict[str, str]:
        headers = {"content-type": "application/json", "user-agent": "taskledger-simulator"}
        signer = self._signers.get(plan.delivery.fmt)
        if signer is not None:
            timestamp = int(self._clock())
            headers.update(signer.headers(plan.delivery, timestamp, forged=plan.forged))
        return headers


def tamper_url(url: str) -> str:
    """Flip characters of the last path segment (the callback token) of `url`."""
    parts = urlsplit(url)
    head, slash, segment = parts.path.rstrip("/").rpartition("/")
    trailing = parts.path[len(parts.path.rstrip("/")) :]
    path = f"{head}{slash}{flip_characters(segment)}{trailing}"
    return urlunsplit(parts._replace(path=path))


def flip_characters(segment: str) -> str:
    """Change the first and middle characters, so any token (payload or MAC) stops verifying."""
    if not segment:
        return "forged"
    chars = list(segment)
    for index in {0, len(chars) // 2}:
        chars[index] = "Z" if chars[index] != "Z" else "Q"
    return "".join(chars)
