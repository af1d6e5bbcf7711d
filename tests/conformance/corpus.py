"""The conformance corpus: documented provider bodies and what taskledger must make of them.

Each `<provider>/<name>.json` case is read into a `Case`; `README.md` describes the format.
The helpers here drive a case through the real client (poll, submit) and check the results.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from reconciler.clients import ProviderClient
from reconciler.limits import RateLimiter
from reconciler.retry import RetryPolicy
from schemas.settings import ProviderSettings, builtin_definitions
from schemas.wire import Kind, WireFormat
from tests.support.fake_time import FakeTime

HERE = Path(__file__).parent
KIND_OF_PROVIDER: dict[str, Kind] = {
    "openai": WireFormat.OPENAI,
    "apidot": WireFormat.APIDOT,
    "vidgo": WireFormat.APIDOT,
    "evolink": WireFormat.EVOLINK,
    "aivideoapi": WireFormat.AIVIDEOAPI,
    **builtin_definitions(),  # replicate, fal, kie
}
ROUTES = ("callback", "poll", "submit", "result")
# The model a case's task has (fal's status and result paths name it).
MODEL = "fal-ai/veo3/fast"
# When the client reads a poll or submit answer (its clock).
POLLED_AT = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
_OBSERVED = "observed+"


@dataclass(frozen=True, slots=True)
class Case:
    """One corpus file: a documented body, where it comes from, and what it must become."""

    provider: str  # the directory: openai, apidot, vidgo, evolink, aivideoapi, replicate, ...
    name: str
    source: str
    body: Any
    routes: tuple[str, ...]
    expect: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.provider}/{self.name}"

    @property
    def kind(self) -> Kind:
        return KIND_OF_PROVIDER[self.provider]

    @property
    def task_id(self) -> str | None:
        found: str | None = self.expect.get("task_id")
        return found

    @property
    def unrecognized(self) -> str | None:
        found: str | None = self.expect.get("unrecognized")
        return found

    def raw(self) -> bytes:
        return orjson.dumps(self.body)


def load_cases() -> list[Case]:
    return [_case(path) for path in sorted(HERE.glob("*/*.json"))]


def _case(path: Path) -> Case:
    data = orjson.loads(path.read_bytes())
    routes = tuple(data["as"])
    if not data.get("source") or not routes or not set(routes) <= set(ROUTES):
        raise ValueError(f"{path}: needs a source and routes among {ROUTES}")
    if path.parent.name not in KIND_OF_PROVIDER:
        raise ValueError(f"{path}: unknown provider directory {path.parent.name!r}")
    return Case(path.parent.name, path.stem, data["source"], data["body"], routes, data["expect"])


CASES = load_cases()


def cases_for(route: str) -> list[Case]:
    return [case for case in CASES if route in case.routes]


# -- expectations ---------------------------------------------------------------------


def expected_expiry(spec: str, observed: datetime) -> str:
    """`observed+N`: N seconds after the body was read; otherwise an ISO 8601 instant."""
    if spec.startswith(_OBSERVED):
        return (observed + timedelta(seconds=float(spec.removeprefix(_OBSERVED)))).isoformat()
    return spec


def check_result(
    case: Case, result: dict[str, Any] | None, observed: datetime, *, expiry_optional: bool = False
) -> None:
    """The listed result keys match exactly (`null`: no result at all), and `expires_at` is
    as expected; `expiry_optional`: an expected expiry may be missing (not a wrong one)."""
    wanted = case.expect.get("result")
    if wanted is None:
        assert result is None, f"{case.id}: expected no result, got {result}"
        return
    assert result is not None, f"{case.id}: expected a result {wanted}"
    assert {key: result.get(key) for key in wanted} == wanted
    expiry = case.expect.get("expires_at")
    if expiry is None:
        assert "expires_at" not in result
    elif "expires_at" in result or not expiry_optional:
        assert result["expires_at"] == expected_expiry(expiry, observed)


# -- the real client on a scripted answer ----------------------------------------------


@asynccontextmanager
async def client_answering(case: Case, status: int = 200) -> AsyncIterator[ProviderClient]:
    """`case.provider`'s client (its kind's default settings) whose every answer is the body."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=case.raw())

    async with client_with(case, answer) as client:
        yield client


@asynccontextmanager
async def client_fetching_result(case: Case) -> AsyncIterator[ProviderClient]:
    """A client whose status answer is "COMPLETED" (its `fetch_to_know`) and whose result
    answer is the case's body, with the case's `http_status`."""
    completed = {"status": "COMPLETED", "request_id": case.task_id}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status"):
            return httpx.Response(200, json=completed)
        return httpx.Response(case.expect["http_status"], content=case.raw())

    async with client_with(case, answer) as client:
        yield client


@asynccontextmanager
async def client_with(
    case: Case, answer: Callable[[httpx.Request], httpx.Response]
) -> AsyncIterator[ProviderClient]:
    settings = ProviderSettings(
        case.provider, case.kind, base_url="https://provider.example/v1", api_key="sk-test"
    )
    time = FakeTime()
    limiter = RateLimiter(1000, 10, clock=time.clock, sleep=time.sleep)
    policy = RetryPolicy(attempts=1, rng=random.Random(1))
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        yield ProviderClient(settings, http, limiter, policy, time.sleep, clock=lambda: POLLED_AT)
