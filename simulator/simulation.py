"""The `Simulator`: tasks of every format, their due callbacks, faults in force, and counters.

State answers are computed from each task's schedule and the injected clock; a ticker
turns schedule events (running, terminal) into callback deliveries when they fall due.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from simulator import formats, replicate, shapes
from simulator.bodies import OUTPUT_EVENT, callback_body, status_body
from simulator.callbacks import CallbackSender, Delivery
from simulator.config import FORMATS, GATEWAY_FORMATS, OUTCOMES, Faults, SimConfig, SimulatorError
from simulator.config import update_faults as merge_faults
from simulator.described import Description, load_description, parse_description
from simulator.lifecycle import SimTask, draw_schedule, finish_now, ground_truth, normalize_outcome
from simulator.media import Media
from simulator.polls import PollGate
from simulator.signatures import FalSigner, KieSigner, Signer, StandardWebhooksSigner
from simulator.stats import Stats
from simulator.submissions import Submission
from simulator.tricks import Message, Tricks

TICK_SECONDS = 0.01
# Event kinds, in the order they fire at equal times: Replicate's `start`, a gateway's
# "running" callback, Replicate's `logs`, then the terminal callback.
START, PROGRESS, LOGS, TERMINAL = 0, 1, 2, 3


class UnknownTaskError(SimulatorError):
    """No task with this id exists in this format."""


class TaskEndedError(SimulatorError):
    """The task has already reached its final state."""


class Simulator:
    """Fake providers' shared state; `start()` and `aclose()` bracket its background work."""

    def __init__(self, config: SimConfig, *, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.clock: Callable[[], float] = clock or time.time
        self.counters = Stats()
        self._faults = config.faults
        self._rng = random.Random(config.seed)
        self._fault_rng = random.Random(config.seed + 1)
        # Tricks draw from their own stream: turning them on changes no other fault's draws.
        self._trick_rng = random.Random(config.seed + 2)
        self._tasks: dict[str, SimTask] = {}
        self.described = described_gateways(config)
        self._order: dict[str, list[str]] = {fmt: [] for fmt in (*FORMATS, *self.described)}
        self._events: list[tuple[float, int, int, str]] = []
        self._sequence = 0
        self._held: dict[str, list[Delivery]] = {}
        self.polls = PollGate(self.counters, self._fault_rng, self.clock, self.faults)
        # Keys draw from their own stream too, so they never shift the faults' draws.
        key_rng = random.Random(config.seed + 3)
        self.replicate_secret = config.replicate_webhook_secret or new_secret(key_rng)
        self.fal_signer = FalSigner(config.fal_user_id, key_rng)
        self.media = Media(config, key_rng.randbytes(32), self.faults)
        self.sender = CallbackSender(
            config, self.counters, self._fault_rng, self.clock, self.faults, self._signers()
        )
        self.tricks = Tricks(
            self._trick_rng, self.faults, self.counters.callbacks, self._order.__getitem__
        )
        self._ticker: asyncio.Task[None] | None = None

    def _signers(self) -> dict[str, Signer]:
        config = self.config
        signers: dict[str, Signer] = {
            "replicate": StandardWebhooksSigner(self.replicate_secret),
            "fal": self.fal_signer,
        }
        if config.webhook_secret:
            signers["openai"] = StandardWebhooksSigner(config.webhook_secret)
        if config.kie_webhook_key:
            signers["kie"] = KieSigner(config.kie_webhook_key)
        return signers

    async def start(self) -> None:
        await self.sender.start()
        self._ticker = asyncio.create_task(self._tick_forever())

    async def aclose(self) -> None:
        """Stop the ticker, cancel the callbacks still being sent, close the HTTP client."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self.sender.aclose()

    async def drain(self) -> None:
        """Wait for every callback being sent right now (including its retries) to end."""
        await self.sender.drain()

    # -- faults ------------------------------------------------------------------------

    def faults(self) -> Faults:
        return self._faults

    def set_faults(self, faults: Faults) -> None:
        self._faults = faults

    def update_faults(self, changes: Mapping[str, Any]) -> Faults:
        """Replace the named fault fields, keep the others; returns the faults now in force."""
        self._faults = merge_faults(self._faults, changes)
        return self._faults

    # -- tasks -------------------------------------------------------------------------

    def submit(self, fmt: str, submission: Submission) -> SimTask:
        """Create a task with a fresh random schedule and queue its callbacks."""
        now = self.clock()
        task_id = formats.new_task_id(fmt, self._rng, now)
        while f"{fmt}/{task_id}" in self._tasks:
            task_id = formats.new_task_id(fmt, self._rng, now)
        schedule = draw_schedule(self._rng, self.config.lifecycle, fmt, now)
        task = SimTask(
            fmt,
            task_id,
            submission.model,
            submission.request,
            submission.callback_url,
            schedule,
            prompt=submission.prompt,
            endpoint=submission.endpoint,
            server=submission.server,
            words=self._words(fmt),
        )
        self.media.draw(task)
        self._tasks[task.key] = task
        self._order[fmt].append(task_id)
        self.counters.submits_by_format[fmt] += 1
        self.counters.submits_by_prompt[f"{fmt}/{submission.prompt}"] += 1
        self._schedule_events(task)
        return task

    def _words(self, fmt: str) -> dict[str, str] | None:
        described = self.described.get(fmt)
        return dict(described.words) if described else None

    def get(self, fmt: str, task_id: str) -> SimTask | None:
        return self._tasks.get(f"{fmt}/{task_id}")

    def tasks(self, fmt: str) -> list[SimTask]:
        """Tasks of one format, oldest first."""
        return [self._tasks[f"{fmt}/{task_id}"] for task_id in self._order[fmt]]

    def finish(self, fmt: str, task_id: str, outcome: str | None = None) -> SimTask:
        """End a task now (optionally with another outcome); its callbacks follow at once."""
        task = self.get(fmt, task_id)
        if task is None:
            raise UnknownTaskError(f"no {fmt} task {task_id}")
        if outcome is not None and outcome not in OUTCOMES:
            raise SimulatorError(f"outcome must be one of {list(OUTCOMES)}", field_name="outcome")
        now = self.clock()
        if task.phase(now) == "terminal":
            raise TaskEndedError(f"{fmt} task {task_id} has already ended")
        task.schedule = finish_now(task.schedule, now, outcome and normalize_outcome(fmt, outcome))
        self._push(task.schedule.terminal_at, TERMINAL, task.key)
        return task

    def truth(self) -> list[dict[str, Any]]:
        """Ground truth of every task, in submission order per format, with the result URLs
        a gateway task ends with (OpenAI serves a finished video's content by its id) and
        the media a succeeding task has (see `Media.truth`)."""
        now = self.clock()
        return [
            {
                **ground_truth(task, now),
                "result_urls": self._result_urls(task),
                "media": self.media.truth(task),
            }
            for task in self._tasks.values()
        ]

    async def hashed_truth(self) -> list[dict[str, Any]]:
        """`truth()`, the files' digests computed beforehand in a worker thread."""
        await self.media.digest_ahead(list(self._tasks.values()))
        return self.truth()

    def _result_urls(self, task: SimTask) -> list[str]:
        if task.fmt == "openai" or task.schedule.outcome != "succeeded":
            return []
        return [self.media.links.url(task)]

    def sent(self) -> list[dict[str, Any]]:
        """Every distinct callback message sent so far, with each attempt's answer."""
        return [message.as_dict() for message in self.counters.sent.messages()]

    def stats(self, *, poll_times: bool = False) -> dict[str, Any]:
        data = self.counters.as_dict(poll_times=poll_times)
        data["callbacks"]["pending"] = self.sender.pending
        return data

    def render(self, task: SimTask, now: float) -> dict[str, Any]:
        """The status body the task's format answers with at `now`."""
        described = self.described.get(task.fmt)
        if described is not None:
            return shapes.status(task, now, described, self.media.links)
        position = self.queue_position(task, now) if task.fmt == "fal" else 0
        return status_body(task, now, self.config, self.media.links, position)

    def queue_position(self, task: SimTask, now: float) -> int:
        """How many tasks of its format, submitted before it, are still queued at `now`; 0 for
        a task no longer queued (only fal says it). The count walks every older task: asked
        on every poll, it would make a catch-up of N tasks cost N^2."""
        if task.phase(now) != "queued":
            return 0
        ahead = self._order[task.fmt][: self._order[task.fmt].index(task.task_id)]
        return sum(self._tasks[f"{task.fmt}/{i}"].phase(now) == "queued" for i in ahead)

    # -- callbacks ---------------------------------------------------------------------

    def _schedule_events(self, task: SimTask) -> None:
        """Push the events that will send callbacks: Replicate's follow its events filter."""
        if self._destination(task) is None:
            return
        schedule, events = task.schedule, task.request.get("webhook_events_filter", ())
        if task.fmt == "replicate" and "start" in events:
            self._push(schedule.submitted_at, START, task.key)
        if task.fmt == "replicate" and "logs" in events:
            self._push(schedule.started_at, LOGS, task.key)
        if task.fmt in GATEWAY_FORMATS and self.config.lifecycle.progress_callbacks:
            self._push(schedule.started_at, PROGRESS, task.key)
        self._push(schedule.terminal_at, TERMINAL, task.key)

    def _destination(self, task: SimTask) -> str | None:
        return self.config.webhook_url if task.fmt == "openai" else task.callback_url

    def _push(self, due: float, kind: int, key: str) -> None:
        self._sequence += 1
        heapq.heappush(self._events, (due, kind, self._sequence, key))

    async def _tick_forever(self) -> None:
        while True:
            self.dispatch_due()
            await asyncio.sleep(TICK_SECONDS)

    def dispatch_due(self) -> int:
        """Send the callbacks of every event due by now; returns how many events fired."""
        now, fired = self.clock(), 0
        fire = {
            START: self._fire_start,
            PROGRESS: self._fire_progress,
            LOGS: self._fire_logs,
            TERMINAL: self._fire_terminal,
        }
        while self._events and self._events[0][0] <= now:
            _, kind, _, key = heapq.heappop(self._events)
            fired += fire[kind](self._tasks[key], now)
        return fired

    def _fire_start(self, task: SimTask, now: float) -> bool:
        """Replicate's `start` webhook, saying `starting` as at the instant of submission."""
        if task.terminal_sent:
            return False
        self._send_early(task, self._deliveries(task, task.schedule.submitted_at))
        return True

    def _fire_progress(self, task: SimTask, now: float) -> bool:
        at = running_instant(task, now)
        if task.progress_sent or task.terminal_sent or at is None:
            return False
        task.progress_sent = True
        self._send_early(task, self._deliveries(task, at))
        return True

    def _fire_logs(self, task: SimTask, now: float) -> bool:
        """Replicate's `logs` webhook while it runs, then again after each throttle interval."""
        at = running_instant(task, now)
        if task.terminal_sent or at is None:
            return False
        self._send_early(task, self._deliveries(task, at))
        again = max(now, at) + replicate.THROTTLE_SECONDS
        if again < task.schedule.terminal_at:
            self._push(again, LOGS, task.key)
        return True

    def _send_early(self, task: SimTask, deliveries: list[Delivery]) -> None:
        """Send a non-terminal callback now, or (reordered) hold it until after the terminal one."""
        if self._fault_rng.random() < self._faults.reorder_rate:
            self.counters.callbacks["reordered"] += 1
            self._held.setdefault(task.key, []).extend(deliveries)
        else:
            self.sender.send(*deliveries, after=task.key)

    def _fire_terminal(self, task: SimTask, now: float) -> bool:
        if task.terminal_sent or task.phase(now) != "terminal":
            return False
        task.terminal_sent = True
        held = self._held.pop(task.key, [])
        self.sender.send(*self._terminal_deliveries(task, now), *held, after=task.key)
        return True

    def _terminal_deliveries(self, task: SimTask, now: float) -> list[Delivery]:
        """The final callback; for Replicate, its `output` then `completed` events as filtered."""
        if task.fmt != "replicate":
            return self._deliveries(task, now)
        events = task.request["webhook_events_filter"]
        deliveries = []
        if "output" in events and task.schedule.outcome == "succeeded":
            deliveries += self._deliveries(task, now, OUTPUT_EVENT)
        if "completed" in events:
            deliveries += self._deliveries(task, now, "completed")
        return deliveries

    def _deliveries(self, task: SimTask, now: float, event: str = "") -> list[Delivery]:
        """The messages one event of `task` sends: its callback, shaped by the tricks in force.

        Replicate's are signed, each under a webhook id of its own; of them only the
        `completed` one is retried.
        """
        url = self._destination(task)
        if url is None:
            raise SimulatorError(f"{task.key} has no callback destination")
        if task.fmt in self.described:
            message = Message(self.render(task, now), task.task_id)
            return [self._message(task, url, message, None)]
        if task.fmt == "replicate":
            body = callback_body(task, now, self.config, self.media.links, event)
            messages = self.tricks.gateway(task, body, now)
            retried = event == "completed"
            return [self._message(task, url, m, self._webhook_id(), retried) for m in messages]
        if task.fmt != "openai":
            body = callback_body(task, now, self.config, self.media.links)
            messages = self.tricks.gateway(task, body, now)
            return [self._message(task, url, message, None) for message in messages]
        event_id, webhook_id = formats.new_event_ids(self._rng)
        messages = self.tricks.openai(formats.openai_event(task, event_id), now)
        return [self._message(task, url, m, m.webhook_id or webhook_id) for m in messages]

    def _webhook_id(self) -> str:
        return f"msg_{self._rng.getrandbits(96):024x}"

    def _message(
        self,
        task: SimTask,
        url: str,
        message: Message,
        webhook_id: str | None,
        retried: bool = True,
    ) -> Delivery:
        body = orjson.dumps(message.body)
        return Delivery(
            task.fmt,
            task.task_id,
            url,
            body,
            webhook_id,
            message.names,
            message.tricks,
            retried,
        )


def described_gateways(config: SimConfig) -> dict[str, Description]:
    """The checked descriptions in `config`, by name (loading those given as JSON files)."""
    found: dict[str, Description] = {}
    for item in config.described:
        description = parse_description(load_description(item) if isinstance(item, str) else item)
        if description.name in found:
            raise SimulatorError(f"two described gateways are called {description.name!r}")
        found[description.name] = description
    return found


def new_secret(rng: random.Random) -> str:
    """A Standard Webhooks secret: `whsec_` and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(rng.randbytes(24)).decode()


def running_instant(task: SimTask, now: float) -> float | None:
    """`now` if the task is running, else an instant early in its running phase (if any).

    A late tick may find a task already ended; its running callback still says running.
    """
    if task.phase(now) == "running":
        return now
    schedule = task.schedule
    at = schedule.started_at + (schedule.terminal_at - schedule.started_at) / 100
    return at if task.phase(at) == "running" else None
