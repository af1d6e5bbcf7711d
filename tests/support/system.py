"""The whole system on loopback: simulator, receiver and reconciler(s) on one database.

Besides starting it, this holds the ledger to the simulator's record: every authentic
callback message the receiver acknowledged is one delivery row (`tally_deliveries`), every
task was submitted once and ends in the simulator's truth (`compare_tasks`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from ops.procfile import python_command
from ops.simulated import SIMULATED_PROVIDERS, simulated_environment
from reconciler.__main__ import archiving, open_archive
from reconciler.clients import ProviderClients
from reconciler.process import Reconciler
from reconciler.retry import RetryPolicy
from schemas.clock import utc_now
from schemas.database import create_engine
from schemas.settings import Settings
from schemas.store import LedgerStore
from schemas.tables import DELIVERY, OBSERVATION, TASK, TRANSITION
from simulator import Faults, SimConfig, SimTask, Simulator, create_app
from tests.support.senders import WEBHOOK_SECRET
from tests.support.servers import free_port, serve
from tests.support.service import ADMIN_TOKEN, CALLBACK_SECRETS, Service, running_service
from tests.support.waiting import until

SYSTEM_PROVIDER = {
    "EXPECTED_SECONDS": "1",
    "MAX_AGE_SECONDS": "120",
    "RATE_LIMIT": "500",
    "CONCURRENCY": "32",
}
# Every provider built in: the kinds written in code, and the built-in definitions.
BUILTIN_PROVIDERS = (*SIMULATED_PROVIDERS, "replicate", "fal", "kie")
# The model each provider's tasks name (fal's and Replicate's paths and bodies carry it).
MODELS = {
    "replicate": "minimax/video-01:5aa835260ff7f40f4069c41185f72036",
    "fal": "fal-ai/veo3/fast",
    "kie": "kling/v2-1-pro",
}
SIM_FAL_USER_ID = "sim-fal-user"
KIE_WEBHOOK_KEY = "kie-hmac-key-e2e"
FAST_POLICY = RetryPolicy(
    attempts=2, base_delay_seconds=0.05, max_delay_seconds=0.5, min_poll_delay_seconds=0.3
)


def system_environment(database_url: str, sim_url: str, **variations: Any) -> dict[str, str]:
    """The environment of a system on the simulator with the tests' secrets; `variations`
    are `simulated_environment`'s optional arguments."""
    env = simulated_environment(
        database_url=database_url,
        sim_url=sim_url,
        api_key="sk-test",
        admin_token=ADMIN_TOKEN,
        callback_secrets=CALLBACK_SECRETS,
        webhook_secret=WEBHOOK_SECRET,
        **variations,
    )
    return env | platform_secrets(sim_url)


def platform_secrets(sim_url: str) -> dict[str, str]:
    """What the receiver needs to verify the platforms' signed callbacks: Replicate's
    Standard Webhooks secret, fal's key set (the simulator's) and user id, kie's HMAC key."""
    prefix = "TASKLEDGER_PROVIDER_"
    return {
        f"{prefix}REPLICATE_WEBHOOK_SECRETS": WEBHOOK_SECRET,
        f"{prefix}FAL_WEBHOOK_USER_ID": SIM_FAL_USER_ID,
        f"{prefix}FAL_JWKS_URL": f"{sim_url}{SimConfig().fal_jwks_path}",
        f"{prefix}KIE_WEBHOOK_SECRETS": KIE_WEBHOOK_KEY,
    }


def system_settings(
    database_url: str,
    sim_url: str,
    archive: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    **provider: Any,
) -> Settings:
    """The settings of a system on the simulator, every built-in provider configured;
    `provider` overrides fields of each provider's `ProviderSettings`. The archive is off
    unless `archive` gives its settings (named without `TASKLEDGER_`); `environ` adds the
    store's own variables (AWS_*)."""
    service = {"LOG_JSON": "true", "LEASE_SECONDS": "5", "POLL_INTERVAL_SECONDS": "0.1"}
    environ = system_environment(
        database_url,
        sim_url,
        providers=BUILTIN_PROVIDERS,
        provider=SYSTEM_PROVIDER,
        settings=service | dict(archive or {"ARCHIVE_URL": "off"}),
        base=environ,
    )
    settings = Settings.from_environ(environ)
    providers = {name: replace(p, **provider) for name, p in settings.providers.items()}
    return replace(settings, providers=providers)


def with_tricks(faults: Faults, *, wrong_task_id_rate: float = 0.0) -> Faults:
    """`faults` plus the real providers' tricks (see `simulator.tricks`) at chaos-run rates."""
    return replace(
        faults,
        unknown_status_rate=0.05,
        non_video_event_rate=0.05,
        cancel_spelling_rate=0.5,
        envelope_rate=0.3,
        wrong_task_id_rate=wrong_task_id_rate,
        gateway_retry_rate=0.2,
        payload_error_rate=0.2,
        snake_task_id_rate=0.3,
    )


@dataclass
class System:
    service: Service
    simulator: Simulator
    sim_url: str
    settings: Settings
    engine: Any
    environ: dict[str, str] = field(default_factory=dict)
    reconcilers: list[tuple[Reconciler, asyncio.Task[None]]] = field(default_factory=list)
    unavailable: int = 0
    _takes: itertools.count[int] = field(default_factory=itertools.count)

    async def submit(self, provider: str, n: int) -> list[str]:
        """Register `n` tasks for taskledger to submit, each with a prompt of its own (by
        which the simulator counts the submits it receives)."""

        async def one(_: int) -> str:
            body = {
                "provider": provider,
                "owner": "e2e",
                "model": MODELS.get(provider, "sora-2"),
                "submit": True,
                "request": {
                    "prompt": f"a lighthouse at dusk, take {next(self._takes)}",
                    "duration": 4,
                },
            }
            for _attempt in range(10):  # a client honours 503 + Retry-After, as senders do
                response = await self.service.http.post(
                    "/v1/tasks", headers=self.service.admin, json=body
                )
                if response.status_code != 503:
                    break
                self.unavailable += 1
                await asyncio.sleep(min(1.0, float(response.headers["retry-after"])))
            assert response.status_code == 202, response.text
            return str(response.json()["ref"])

        refs: list[str] = []
        for start in range(0, n, 50):
            refs += await asyncio.gather(*[one(i) for i in range(start, min(n, start + 50))])
        return refs

    async def tasks(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(sa.select(TASK))).mappings()]

    async def transitions(self) -> dict[str, list[dict[str, Any]]]:
        by_task: dict[str, list[dict[str, Any]]] = {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(TRANSITION).order_by(TRANSITION.c.seq))
            for row in rows.mappings():
                by_task.setdefault(row["task_ref"], []).append(dict(row))
        return by_task

    async def settle(self, count: int, within_seconds: float) -> list[dict[str, Any]]:
        """Wait until `count` tasks are final and confirmed (or lost); return every task.

        Past `within_seconds` it fails naming the tasks still open and their latest polls,
        so a straggler can be told apart from a slow run."""
        deadline = asyncio.get_running_loop().time() + within_seconds
        while True:
            tasks = await self.tasks()
            open_tasks = [t for t in tasks if t["next_poll_at"] is not None]
            if len(tasks) - len(open_tasks) >= count:
                return tasks
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(await self._describe(open_tasks, count, within_seconds))
            await asyncio.sleep(0.25)

    async def _describe(self, open_tasks: list[dict[str, Any]], count: int, within: float) -> str:
        lines = [f"{len(open_tasks)} of {count} tasks still open after {within} s:"]
        async with self.engine.connect() as conn:
            for task in open_tasks[:5]:
                fields = ("ref", "provider", "provider_task_id", "state", "submission")
                lines.append("  " + ", ".join(f"{name}={task[name]!r}" for name in fields))
                polls = await conn.execute(
                    sa.select(OBSERVATION.c.outcome, OBSERVATION.c.http_status, OBSERVATION.c.error)
                    .where(OBSERVATION.c.task_ref == task["ref"])
                    .order_by(OBSERVATION.c.id.desc())
                    .limit(3)
                )
                lines += [f"    latest poll: {dict(row)}" for row in polls.mappings()]
        return "\n".join(lines)

    async def truth(self) -> dict[str, str]:
        return {t["task_id"]: t["normalized"] for t in await self.truth_of_tasks()}

    async def truth_of_tasks(self) -> list[dict[str, Any]]:
        """The simulator's ground truth of every task it was sent."""
        return list((await self._sim_get("/_sim/truth"))["tasks"])

    async def stats(self) -> dict[str, Any]:
        return await self._sim_get("/_sim/stats")

    async def sent(self) -> list[dict[str, Any]]:
        """Every distinct callback message the simulator sent, with its attempts' answers."""
        return list((await self._sim_get("/_sim/sent"))["messages"])

    async def deliveries(self) -> list[dict[str, Any]]:
        columns = (
            DELIVERY.c.provider,
            DELIVERY.c.provider_task_id,
            DELIVERY.c.delivery_key,
            DELIVERY.c.task_ref,
            DELIVERY.c.outcome,
            DELIVERY.c.duplicate_count,
        )
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(sa.select(*columns))).mappings()]

    async def _sim_get(self, path: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.sim_url, timeout=30) as http:
            return dict((await http.get(path)).json())

    async def drain_callbacks(self, within_seconds: float = 30) -> None:
        """Wait until every task's final callback was handed to the sender and every send
        (retries included) has ended: nothing the simulator sends is still on its way."""
        await until(self._callbacks_done, within_seconds)

    def _callbacks_done(self) -> bool:
        sim = self.simulator
        tasks = [task for fmt in BUILTIN_PROVIDERS for task in sim.tasks(fmt)]
        return sim.sender.pending == 0 and all(t.terminal_sent or not _calls_back(t) for t in tasks)

    async def start_reconciler(
        self, stack: AsyncExitStack, settings: Settings | None = None
    ) -> Reconciler:
        settings = settings or self.settings
        clients = await stack.enter_async_context(ProviderClients.open(settings.providers.values()))
        store = LedgerStore(self.engine, utc_now, settings.readers)
        reconciler = Reconciler(settings, store, clients, clock=utc_now, policy=FAST_POLICY)
        metrics = reconciler.metrics
        media = open_archive(settings, self.environ)
        archiving_ = archiving(settings, media, store, reconciler, metrics)
        await stack.enter_async_context(archiving_)
        task = asyncio.create_task(reconciler.run())
        self.reconcilers.append((reconciler, task))
        return reconciler

    async def stop_reconcilers(self) -> None:
        for reconciler, task in self.reconcilers:
            reconciler.stopping.set()
            if not task.done():
                await asyncio.wait_for(task, timeout=30)
        self.reconcilers.clear()


def _calls_back(task: SimTask) -> bool:
    """Whether the simulator sends `task`'s callbacks anywhere (OpenAI: the webhook URL)."""
    return task.fmt == "openai" or task.callback_url is not None


@asynccontextmanager
async def running_system(
    database_url: str,
    sim: SimConfig,
    reconcilers: int = 1,
    archive: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    **provider: Any,
) -> AsyncIterator[System]:
    receiver_port, sim_port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    sim = replace(
        sim,
        webhook_url=f"http://127.0.0.1:{receiver_port}/webhooks/openai",
        webhook_secret=WEBHOOK_SECRET,
        api_key="sk-test",
        replicate_webhook_secret=WEBHOOK_SECRET,
        fal_user_id=SIM_FAL_USER_ID,
        kie_webhook_key=KIE_WEBHOOK_KEY,
    )
    settings = system_settings(database_url, sim_url, archive, environ, **provider)
    sim_app = create_app(sim)
    engine = create_engine(database_url)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(serve(sim_app, port=sim_port))
        service = await stack.enter_async_context(
            running_service(settings, utc_now, port=receiver_port)
        )
        settings = replace(settings, public_base_url=service.base_url)
        system = System(
            service, sim_app.state.simulator, sim_url, settings, engine, dict(environ or {})
        )
        for _ in range(reconcilers):
            await system.start_reconciler(stack)
        try:
            yield system
        finally:
            await system.stop_reconcilers()
            await engine.dispose()


# -- the relay, as its own process -------------------------------------------------------


def relay_environment(system: System, **notify: str) -> dict[str, str]:
    """The environment of a `python -m reconciler.relay` beside `system`: this process's
    (without any TASKLEDGER_*), the system's settings (its database), JSON logs, and
    `TASKLEDGER_NOTIFY_<NAME>` for each of `notify` (`ALLOW_HTTP="true"`)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TASKLEDGER_")}
    settings = {"LOG_JSON": "true"} | {f"NOTIFY_{name}": value for name, value in notify.items()}
    return system_environment(
        system.settings.database_url, system.sim_url, settings=settings, base=base
    )


async def start_relay(
    environ: Mapping[str, str], log_path: Path, within_seconds: float = 30
) -> asyncio.subprocess.Process:
    """The Procfile's `relay` process, its output appended to `log_path`; returned once it
    logged `relay_started`."""
    with log_path.open("ab") as log:
        offset = log.tell()
        process = await asyncio.create_subprocess_exec(
            *python_command("relay"), env=dict(environ), stdout=log, stderr=log
        )

    def started() -> bool:
        with log_path.open("rb") as log:
            log.seek(offset)
            return b'"relay_started"' in log.read() or process.returncode is not None

    await until(started, within_seconds)
    if process.returncode is not None:
        raise RuntimeError(f"the relay exited at start-up ({process.returncode})")
    return process


async def stop_relay(process: asyncio.subprocess.Process, within_seconds: float = 30) -> int:
    """SIGTERM (unless it has ended already); its exit code."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(process.wait(), timeout=within_seconds)


# -- holding the ledger to the simulator's record ---------------------------------------

ACCEPTED = range(200, 300)
NAMED_ANOTHER_TASK = 403
# What the receiver may answer an authentic callback: kept (200, or 202 until its task or
# id is known), refused for naming another task, or too busy to keep it now.
AUTHENTIC_ANSWERS = frozenset({"200", "202", "403", "503"})


@dataclass
class DeliveryTally:
    """Authentic callback messages the simulator sent, against the ledger's delivery rows.

    A message is what the receiver keys a delivery by: its `webhook-id`, or the SHA-256 of
    its body for token callbacks; copies and retries are attempts of it. Each message that
    got a 2xx answer must be exactly one row (its copies counted in `duplicate_count`); one
    refused 403 because its body named another task's id must be no row at all.
    """

    accepted: int = 0
    stored: int = 0
    refused_wrong_id: int = 0
    unanswered: int = 0
    forged: int = 0
    answers_2xx: int = 0
    arrivals_counted: int = 0
    # Kept `unmatched` though a task holds the id they name (never folded into it).
    stranded: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    kept_as: Counter[str] = field(default_factory=Counter)
    problems: dict[str, list[str]] = field(default_factory=dict)

    def problem(self, kind: str, message: dict[str, Any], detail: str = "") -> None:
        shown = (
            f"{message['format']} {message['key'][:24]} {message['tricks']} {message['answers']}"
        )
        self.problems.setdefault(kind, []).append(f"{shown} {detail}".strip())

    def line(self) -> str:
        return (
            f"authenticated sent {self.accepted}, stored {self.stored}; "
            f"refused 403 naming another task {self.refused_wrong_id}, stored 0; "
            f"unanswered {self.unanswered}; forged {self.forged}, stored 0; "
            f"resends answered 2xx {self.answers_2xx - self.accepted}, "
            f"counted as duplicates {self.arrivals_counted - self.stored}; "
            f"kept as {dict(sorted(self.kept_as.items()))} "
            f"(unmatched though a task has the id: {self.stranded}); "
            f"authentic answers {dict(sorted(self.answers.items()))}"
        )


def tally_deliveries(
    sent: Iterable[dict[str, Any]], rows: Iterable[dict[str, Any]], tasks: Iterable[dict[str, Any]]
) -> DeliveryTally:
    """Hold the delivery rows to the messages sent; `problems` lists every discrepancy."""
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    known = {(task["provider"], task["provider_task_id"]) for task in tasks}
    tally = DeliveryTally()
    for row in rows:
        by_key.setdefault((row["provider"], row["delivery_key"]), []).append(row)
        pair = (row["provider"], row["provider_task_id"])
        tally.stranded += row["outcome"] == "unmatched" and pair in known
    messages = list(sent)
    authentic_keys = {(m["format"], m["key"]) for m in messages if m["authentic"]}
    for message in messages:
        key = (message["format"], message["key"])
        if message["authentic"]:
            _tally_authentic(tally, message, by_key.get(key, []))
        else:
            tally.forged += 1
            if key not in authentic_keys and by_key.get(key):
                tally.problem("forged but stored", message)
    for key, found in by_key.items():
        if key not in authentic_keys:
            for row in found:
                tally.problems.setdefault("row no authentic message explains", []).append(str(row))
    return tally


def _tally_authentic(
    tally: DeliveryTally, message: dict[str, Any], rows: list[dict[str, Any]]
) -> None:
    answers = message["answers"]
    tally.answers.update("error" if code is None else str(code) for code in answers)
    accepted = sum(code in ACCEPTED for code in answers if code is not None)
    if accepted:
        tally.accepted += 1
        tally.answers_2xx += accepted
        if len(rows) != 1:
            tally.problem("acknowledged but not one row", message, f"{len(rows)} rows")
            return
        (row,) = rows
        tally.stored += 1
        tally.arrivals_counted += 1 + row["duplicate_count"]
        tally.kept_as[row["outcome"]] += 1
        if row["outcome"] == "held":
            tally.problem("still held though every submit was answered", message, str(row))
        if 1 + row["duplicate_count"] < accepted:
            tally.problem("acknowledged more often than counted", message, str(row))
    elif NAMED_ANOTHER_TASK in answers:
        tally.refused_wrong_id += 1
        if "wrong_task_id" not in message["tricks"]:
            tally.problem("refused 403 though it names its own task", message)
        if rows:
            tally.problem("refused 403 but stored", message, str(rows))
    else:
        tally.unanswered += 1


@dataclass
class TaskComparison:
    """Ledger tasks against the simulator's truth: submits per task and the end reached."""

    tasks: int = 0
    submits: Counter[int] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)
    by_provider: Counter[str] = field(default_factory=Counter)
    matching: Counter[str] = field(default_factory=Counter)
    # Unlike the truth because an authentic signed callback of another task named them.
    misled: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        return (
            f"tasks {self.tasks}, submissions per task {dict(sorted(self.submits.items()))}, "
            f"ended unlike the simulator's truth {len(self.mismatches)}"
        )


def compare_tasks(
    tasks: Iterable[dict[str, Any]],
    truth: Iterable[dict[str, Any]],
    stats: dict[str, Any],
    misled: frozenset[tuple[str, str]] = frozenset(),
) -> TaskComparison:
    """Each ledger task, found in the simulator by its prompt: submitted once, holding the
    simulator's task id, in its final state, with its result URLs (OpenAI: content paths
    exactly when it succeeded), and confirmed."""
    by_prompt = {(t["format"], t["prompt"]): t for t in truth}
    submits = stats["submits_by_prompt"]
    comparison = TaskComparison()
    for task in tasks:
        comparison.tasks += 1
        prompt = (task["request"] or {}).get("prompt", "")
        comparison.submits[submits.get(f"{task['provider']}/{prompt}", 0)] += 1
        real = by_prompt.get((task["provider"], prompt))
        problem = "never reached the simulator" if real is None else _unlike(task, real)
        comparison.by_provider[task["provider"]] += 1
        if problem and (task["provider"], task["provider_task_id"]) in misled:
            comparison.misled[task["provider"]] += 1
        elif problem:
            comparison.mismatches.append(f"{task['ref']} {task['provider']}: {problem}")
        else:
            comparison.matching[task["provider"]] += 1
    unknown = sum(submits.values()) - sum(n * count for n, count in comparison.submits.items())
    if unknown:
        comparison.mismatches.append(f"{unknown} submits the ledger has no task for")
    return comparison


# Formats whose every callback goes to one signed URL (`/webhooks/{source}`): no URL binds a
# body to its task, so a signed body naming another task cannot be told from a true one.
SHARED_SIGNED_URL_FORMATS = ("openai", "replicate")


def misled_tasks(sent: Iterable[dict[str, Any]]) -> frozenset[tuple[str, str]]:
    """(format, task id) of each task that an authentic signed callback of another task
    named (the simulator's `wrong_task_id` trick, on a shared signed URL)."""
    return frozenset(
        (message["format"], message["names"])
        for message in sent
        if message["authentic"]
        and "wrong_task_id" in message["tricks"]
        and message["format"] in SHARED_SIGNED_URL_FORMATS
    )


def provider_lines(tasks: Iterable[dict[str, Any]], comparison: TaskComparison) -> list[str]:
    """Per provider: its tasks, how many a poll recovered, how many match its truth."""
    recovered: Counter[str] = Counter()
    for task in tasks:
        recovered[task["provider"]] += task["recovered"]
    return [
        f"{name}: tasks {count}, recovered by poll {recovered[name]}, "
        f"matching the provider's truth {comparison.matching[name]}"
        + (f", misled by a signed body naming them {n}" if (n := comparison.misled[name]) else "")
        for name, count in sorted(comparison.by_provider.items())
    ]


def _unlike(task: dict[str, Any], real: dict[str, Any]) -> str:
    """How a ledger task differs from the simulator's truth ("" when it does not)."""
    result = task["result"] or {}
    if task["provider_task_id"] != real["task_id"]:
        return f"holds id {task['provider_task_id']!r}, the simulator's is {real['task_id']!r}"
    if task["state"] != real["normalized"] or not task["confirmed"]:
        return f"{task['state']} (confirmed {task['confirmed']}), truth {real['normalized']}"
    if task["provider"] == "openai":
        if "content" in result and real["normalized"] != "succeeded":
            return f"{task['state']} with content {result['content']}"
        if "content" not in result and real["normalized"] == "succeeded":
            return "succeeded without content paths"
    elif result.get("urls", []) != real["result_urls"]:
        return f"result URLs {result.get('urls')}, truth {real['result_urls']}"
    return ""
