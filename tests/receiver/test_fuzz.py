"""Hostile input on the callback and webhook routes, through real HTTP, on both backends.

Hypothesis drives a running receiver with random and mutated bodies (huge numbers, NaN
literals, 10,000-deep nesting, duplicate keys, non-UTF-8 bytes, sizes around the limit),
random headers, signatures, timestamps, ids and path segments. Every answer must be one of
the documented ones. The store is healthy and requests are sent one at a time, so the
documented 503 (storage unavailable, writer saturated) cannot legitimately happen here:
the app maps a crash to 503, so any 5xx counts as a crash. A refused request stores nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.database import create_engine
from tests.conftest import FakeClock
from tests.support.senders import WEBHOOK_SECRET
from tests.support.service import Service, running_service, settings_for

MAX_BODY_BYTES = 64 * 1024
# What the callback routes may answer: authenticated means kept, so no 400 or 415.
DOCUMENTED = frozenset({200, 202, 401, 403, 404, 413})
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
APIDOT_TASK_ID = "task-fuzz"
EVOLINK_TASK_ID = "evo-fuzz"
OPENAI_TASK_ID = "video_fuzz"


# -- the harness ----------------------------------------------------------------------


@dataclass
class Fuzzer:
    """Sends one case, checks its answer and that a refusal stored nothing, and counts."""

    service: Service
    engine: AsyncEngine
    paths: dict[str, str]
    answers: Counter[int] = field(default_factory=Counter)

    async def post(self, path: str, body: bytes, headers: dict[str, Any]) -> httpx.Response:
        before = await self.deliveries()
        response = await self.service.http.post(path, content=body, headers=headers)
        added = await self.deliveries() - before
        self.answers[response.status_code] += 1
        status = response.status_code
        assert status in DOCUMENTED, f"{status} for {path[:80]}: {response.text[:300]}"
        assert added == 0 if status >= 300 else added <= 1, f"{status} stored {added} rows"
        return response

    async def deliveries(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(sa.text("SELECT count(*) FROM delivery"))).scalar_one())

    def report(self, name: str) -> None:
        cases = sum(self.answers.values())
        errors = sum(n for status, n in self.answers.items() if status >= 500)
        answers = dict(sorted(self.answers.items()))
        print(f"\nfuzz: {cases} cases, 5xx: {errors} ({name}; answers {answers})")
        assert cases > 0


@pytest.fixture
async def fuzzer(
    database_url: str, clock: FakeClock, request: pytest.FixtureRequest
) -> AsyncIterator[Fuzzer]:
    settings_ = settings_for(database_url, max_body_bytes=MAX_BODY_BYTES)
    engine = create_engine(database_url)
    try:
        async with running_service(settings_, clock) as service:
            paths = {
                "apidot": await _callback_path(service, "apidot", APIDOT_TASK_ID),
                "evolink": await _callback_path(service, "evolink", EVOLINK_TASK_ID),
                "openai": await _callback_path(service, "openai", OPENAI_TASK_ID),
            }
            fuzzer = Fuzzer(service, engine, paths)
            yield fuzzer
            fuzzer.report(request.node.name)
    finally:
        await engine.dispose()


async def _callback_path(service: Service, provider: str, task_id: str) -> str:
    task = await service.register(provider, provider_task_id=task_id)
    return urlsplit(str(task["callback_url"])).path


def sign(body: bytes, msg_id: bytes, stamp: bytes, secret: str = WEBHOOK_SECRET) -> str:
    """A `v1,` signature over the raw bytes, as a sender signs them (the spec's
    `{id}.{timestamp}.{body}`: a UTF-8 id is signed as its UTF-8 bytes)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    text = msg_id + b"." + stamp + b"."
    return "v1," + base64.b64encode(hmac.new(key, text + body, hashlib.sha256).digest()).decode()


def signed_headers(body: bytes, msg_id: bytes, stamp: bytes) -> dict[str, Any]:
    """JSON with the Standard Webhooks headers of `msg_id` at `stamp`, signed over `body`."""
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": sign(body, msg_id, stamp),
    }


# -- raw JSON, hostile on purpose -----------------------------------------------------


class Raw(str):
    """A JSON text fragment rendered as is (deep nesting, NaN, bad escapes, ...)."""


@dataclass
class Pairs:
    """A JSON object as key/value pairs: keys may repeat."""

    items: list[tuple[str, Any]]


def render(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{json.dumps(k)}:{render(v)}" for k, v in value.items) + "}"
    if isinstance(value, dict):
        return render(Pairs(list(value.items())))
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    return json.dumps(value)  # huge ints as digits, NaN/Infinity as literals


RAW_FRAGMENTS = [
    Raw("[" * 10_000 + "]" * 10_000),
    Raw('{"a":' * 5_000 + "1" + "}" * 5_000),
    Raw("[" * 1_000 + "]" * 1_000),
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    Raw("1e99999"),
    Raw("-1e-99999"),
    Raw("9" * 5_000),
    Raw("-" + "9" * 400),
    Raw("01"),
    Raw("1."),
    Raw(".5"),
    Raw("0x10"),
    Raw("undefined"),
    Raw("'single'"),
    Raw('"\\u0000"'),
    Raw('"\\ud800"'),
    Raw('"\\udc00\\ud800"'),
    Raw('"\\x41"'),
    Raw("[1,]"),
    Raw("{,}"),
    Raw('"unterminated'),
]
HUGE_NUMBERS = [
    10**400,
    -(10**400),
    2**63,
    2**64,
    -(2**63) - 1,
    10**18 + 1,
    1e308,
    -1e308,
    5e-324,
    -0.0,
    float("nan"),
    float("inf"),
    float("-inf"),
]
HOSTILE_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202e\u200b\ufeff",
    "ü" * 300,
    "\U0001d54f" * 300,
    "x" * 201,
    "x" * 256,
    "x" * 257,
    "x" * 5_000,
    "../../etc/passwd",
    "finished\x00",
    "FINISHED",
    " finished ",
    "https://cdn.example/\x00.mp4",
    "javascript:alert(1)",
    "2026-13-45T99:99:99Z",
    "1" * 40,
]
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE_NUMBERS),
    st.floats(),
    st.text(max_size=40),
    st.sampled_from(HOSTILE_TEXT),
    st.sampled_from(RAW_FRAGMENTS),
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def containers(value: Any) -> list[dict[str, Any] | list[Any]]:
    """Every object and array inside `value`, itself included."""
    found: list[dict[str, Any] | list[Any]] = []
    if isinstance(value, dict):
        found.append(value)
        for child in value.values():
            found += containers(child)
    elif isinstance(value, list):
        found.append(value)
        for child in value:
            found += containers(child)
    return found


def mutate(draw: Callable[..., Any], body: dict[str, Any]) -> Any:
    """Delete, replace, add or duplicate one field somewhere in `body` (in place)."""
    target = draw(st.sampled_from(containers(body)))
    op = draw(st.sampled_from(["delete", "replace", "add", "duplicate", "wrap"]))
    if isinstance(target, list):
        if target and op == "delete":
            target.pop(draw(st.integers(0, len(target) - 1)))
        else:
            target.insert(draw(st.integers(0, len(target))), draw(values))
        return body
    keys = sorted(target)
    key = draw(st.sampled_from(keys)) if keys else "x"
    if op == "delete":
        target.pop(key, None)
    elif op in ("replace", "wrap") and keys:
        new = draw(values)
        target[key] = [target[key]] if op == "wrap" else new
    elif op == "duplicate" and target is body:
        return Pairs([(key, draw(values)), *body.items()])
    else:
        target[draw(st.sampled_from([*keys, "extra", ""]))] = draw(values)
    return body


def damage(draw: Callable[..., Any], text: str) -> bytes:
    """The rendered body as bytes, sometimes broken at the byte level."""
    how = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "bytes", "cut", "bom", "utf-16", "pad"]))
    raw = text.encode("utf-8", "surrogatepass")
    if how == "bytes":
        at = draw(st.integers(0, len(raw)))
        inserted: bytes = draw(
            st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\x80\x80"])
        )
        return raw[:at] + inserted + raw[at:]
    if how == "cut":
        return raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    if how == "utf-16":
        return text.encode("utf-16", "surrogatepass")
    if how == "pad":
        size: int = draw(
            st.sampled_from(
                [MAX_BODY_BYTES - 1, MAX_BODY_BYTES, MAX_BODY_BYTES + 1, 4 * MAX_BODY_BYTES]
            )
        )
        return raw + b" " * max(size - len(raw), 0)
    return raw


def apidot_base() -> dict[str, Any]:
    return {
        "code": 200,
        "data": {
            "task_id": APIDOT_TASK_ID,
            "status": "running",
            "progress": 40,
            "created_time": "2026-11-22T10:00:00Z",
            "files": [{"file_url": "https://cdn.example/a.mp4", "file_type": "video"}],
            "error_message": None,
        },
    }


def evolink_base() -> dict[str, Any]:
    return {
        "id": EVOLINK_TASK_ID,
        "object": "video.generation.task",
        "status": "processing",
        "progress": 10,
        "created": 1757169743,
        "results": ["https://cdn.example/b.mp4"],
        "error": {"code": "x", "message": "y"},
    }


def openai_base() -> dict[str, Any]:
    return {
        "id": "evt_fuzz",
        "object": "event",
        "created_at": 1758941485,
        "type": "video.completed",
        "data": {"id": OPENAI_TASK_ID},
    }


def openai_video_base() -> dict[str, Any]:
    return {
        "id": OPENAI_TASK_ID,
        "object": "video",
        "status": "in_progress",
        "progress": 33,
        "created_at": 1758941485,
        "completed_at": None,
        "expires_at": 1758945085,
        "error": None,
    }


@st.composite
def mutated_bodies(draw: Callable[..., Any], base: Callable[[], dict[str, Any]]) -> bytes:
    body: Any = base()
    for _ in range(draw(st.integers(1, 3))):
        body = mutate(draw, body) if isinstance(body, dict) else body
    return damage(draw, render(body))


CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/cloudevents+json",
    "application/json; charset=latin-1",
    "text/plain",
    "text/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "json",
    ";;;",
]
header_bytes = st.lists(
    st.integers(0x21, 0xFF).filter(lambda b: b != 0x7F) | st.just(0x20), max_size=300
).map(lambda codes: bytes(codes).strip())
content_types = st.none() | st.sampled_from(CONTENT_TYPES) | header_bytes


def with_content_type(content_type: str | bytes | None) -> dict[str, Any]:
    return {} if content_type is None else {"content-type": content_type}


# -- the gateway callback route -------------------------------------------------------


@FUZZ
@given(body=st.binary(max_size=4096), content_type=content_types)
async def test_callback_survives_random_bytes(
    fuzzer: Fuzzer, body: bytes, content_type: str | bytes | None
) -> None:
    await fuzzer.post(fuzzer.paths["apidot"], body, with_content_type(content_type))


@FUZZ
@given(
    provider_body=st.one_of(
        st.tuples(st.just("apidot"), mutated_bodies(apidot_base)),
        st.tuples(st.just("evolink"), mutated_bodies(evolink_base)),
    ),
    content_type=st.sampled_from(CONTENT_TYPES[:4]) | content_types,
)
async def test_callback_survives_mutated_provider_bodies(
    fuzzer: Fuzzer, provider_body: tuple[str, bytes], content_type: str | bytes | None
) -> None:
    provider, body = provider_body
    await fuzzer.post(fuzzer.paths[provider], body, with_content_type(content_type))


segments = st.one_of(
    st.text(max_size=200),
    st.sampled_from(["", ".", "..", "%2F", "a/b", "tok/", " ", "\x00", "x" * 5000]),
    st.binary(max_size=100).map(lambda raw: raw.decode("latin-1")),
)


@FUZZ
@given(
    provider=st.sampled_from(["apidot", "evolink", "vidgo", "openai", "nobody", "APIDOT", ""]),
    token=segments,
    tamper=st.sampled_from(["random", "flip", "cut", "swap-provider", "slash"]),
)
async def test_callback_refuses_random_tokens_and_stores_nothing(
    fuzzer: Fuzzer, provider: str, token: str, tamper: str
) -> None:
    real = fuzzer.paths["apidot"].rsplit("/", 1)[1]
    segment = {
        "random": token,
        "flip": real[:-3] + ("A" if real[-3] != "A" else "B") + real[-2:],
        "cut": real[: len(token) % len(real)],
        "swap-provider": real,
        "slash": real + "/",
    }[tamper]
    if tamper == "swap-provider" and provider == "apidot":
        provider = "evolink"
    path = f"/callbacks/{quote(provider, safe='')}/{quote(segment, safe='/')}"
    body = render(apidot_base()).encode()
    response = await fuzzer.post(path, body, {"content-type": "application/json"})
    assert response.status_code in (401, 404)


# -- the Standard Webhooks route ------------------------------------------------------

ids = st.one_of(
    st.just(b"msg_fuzz"),
    st.binary(min_size=1, max_size=40).map(lambda raw: b"msg_" + raw.hex().encode()),
    header_bytes.filter(bool),
    st.sampled_from([b"m" * 199, b"m" * 200, b"m" * 201, b"m" * 4000, "msg_ü".encode("latin-1")]),
)


@FUZZ
@given(
    body=st.one_of(mutated_bodies(openai_base), mutated_bodies(openai_video_base)),
    msg_id=ids,
    content_type=st.sampled_from(CONTENT_TYPES[:4]) | content_types,
)
async def test_webhook_survives_mutated_signed_bodies(
    fuzzer: Fuzzer, clock: FakeClock, body: bytes, msg_id: bytes, content_type: str | bytes | None
) -> None:
    stamp = str(int(clock().timestamp())).encode()
    headers = {
        **with_content_type(content_type),
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": sign(body, msg_id, stamp),
    }
    await fuzzer.post("/webhooks/openai", body, headers)


signature_headers = st.one_of(
    header_bytes,
    st.lists(
        st.tuples(st.sampled_from(["v1", "v2", "v1a", "", "V1"]), header_bytes), max_size=40
    ).map(
        lambda entries: " ".join(f"{v},{s.decode('latin-1')}" for v, s in entries).encode("latin-1")
    ),
    st.sampled_from([b"v1," + b"A" * 50_000, b"v1,=", b"v1,====", b",", b"v1,,", b"v1,x  v1,y"]),
).map(bytes.strip)
timestamps = st.one_of(
    header_bytes,
    st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
    st.sampled_from([b"", b"1e9", b"9" * 400, b"0", b"-0", b"+1", b"1.5", b"\xd9\xa1"]),
)


@FUZZ
@given(
    msg_id=st.none() | ids,
    stamp=st.none() | timestamps,
    signature=st.none() | signature_headers,
    source=st.sampled_from(["openai", "openai", "OpenAI", "nobody", "apidot", "openai/"]),
)
async def test_webhook_refuses_garbage_headers_and_stores_nothing(
    fuzzer: Fuzzer,
    msg_id: bytes | None,
    stamp: bytes | None,
    signature: bytes | None,
    source: str,
) -> None:
    sent = {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": signature}
    headers = {"content-type": "application/json"} | {
        k: v for k, v in sent.items() if v is not None
    }
    response = await fuzzer.post(f"/webhooks/{source}", render(openai_base()).encode(), headers)
    assert response.status_code in (401, 404)


@FUZZ
@given(
    skew=st.one_of(st.integers(-(10**6), 10**6), st.sampled_from([-301, -300, 300, 301])),
    msg_id=ids,
)
async def test_webhook_timestamps_outside_tolerance_store_nothing(
    fuzzer: Fuzzer, clock: FakeClock, skew: int, msg_id: bytes
) -> None:
    body = render(openai_base()).encode()
    stamp = str(int(clock().timestamp()) + skew).encode()
    headers = signed_headers(body, msg_id, stamp)
    response = await fuzzer.post("/webhooks/openai", body, headers)
    assert (response.status_code == 401) is (abs(skew) > 300)


# -- regressions the fuzz found -------------------------------------------------------


async def test_long_signed_webhook_id_is_stored_once_not_a_5xx(
    fuzzer: Fuzzer, clock: FakeClock, subtests: pytest.Subtests
) -> None:
    """PostgreSQL refused keys over 200 characters: every such delivery answered 503."""
    body = render(openai_base()).encode()
    for length in (200, 201, 4000):
        with subtests.test(length=length):
            msg_id, stamp = b"m" * length, str(int(clock().timestamp())).encode()
            headers = signed_headers(body, msg_id, stamp)
            first = await fuzzer.post("/webhooks/openai", body, headers)
            again = await fuzzer.post("/webhooks/openai", body, headers)
            assert (first.status_code, again.status_code) == (200, 200)
            assert again.json()["outcome"] == "duplicate"


async def test_task_id_longer_than_the_ledger_keeps_is_kept_unrecognized(
    fuzzer: Fuzzer, clock: FakeClock, subtests: pytest.Subtests
) -> None:
    """The wire format allowed 256 characters, the columns 200: PostgreSQL answered 503."""
    for length in (201, 256):
        with subtests.test(length=length):
            body = render({**openai_base(), "data": {"id": "v" * length}}).encode()
            msg_id, stamp = f"msg_long_task_id_{length}".encode(), str(clock.unix()).encode()
            headers = signed_headers(body, msg_id, stamp)
            response = await fuzzer.post("/webhooks/openai", body, headers)
            assert (response.status_code, response.json()) == (200, {"outcome": "unrecognized"})


async def test_callback_naming_another_task_is_403_and_stores_nothing(fuzzer: Fuzzer) -> None:
    body = apidot_base()
    body["data"]["task_id"] = "task-someone-else"
    response = await fuzzer.post(fuzzer.paths["apidot"], render(body).encode(), {})
    assert response.status_code == 403


async def test_trailing_slash_is_404_never_a_redirect(
    fuzzer: Fuzzer, subtests: pytest.Subtests
) -> None:
    for path in ("/webhooks/openai/", "/callbacks/apidot/token/"):
        with subtests.test(path=path):
            response = await fuzzer.post(path, render(openai_base()).encode(), {})
            assert response.status_code == 404


async def test_task_id_with_nul_is_kept_unrecognized(fuzzer: Fuzzer) -> None:
    """PostgreSQL text holds no NUL: the insert failed and the sender got 503 forever."""
    body = apidot_base()
    body["data"]["task_id"] = "task\x00fuzz"
    response = await fuzzer.post(fuzzer.paths["apidot"], render(body).encode(), {})
    assert (response.status_code, response.json()) == (200, {"outcome": "unrecognized"})


# (case, method, path, the answer): admin input holding a NUL.
NUL_INPUTS = [
    ("list-owner", "GET", "/v1/tasks?owner=%00", 422),
    ("list-state", "GET", "/v1/tasks?state=a%00", 422),  # not a state: refused naming the states
    ("export-provider", "GET", "/v1/export?provider=%00", 422),
    ("show-ref", "GET", "/v1/tasks/tl_%00", 404),
    ("patch-ref", "PATCH", "/v1/tasks/tl_%00", 404),
    ("create-owner", "POST", "/v1/tasks", 422),
]


async def test_admin_input_with_nul_is_refused_not_a_5xx(
    fuzzer: Fuzzer, subtests: pytest.Subtests
) -> None:
    """On PostgreSQL these were 503s, and a broken stream (a dropped connection) for export."""
    body = {"provider": "apidot", "owner": "a\x00", "provider_task_id": "x"}
    for case, method, path, status in NUL_INPUTS:
        with subtests.test(case=case):
            response = await fuzzer.service.http.request(
                method, path, json=body, headers=fuzzer.service.admin
            )
            fuzzer.answers[response.status_code] += 1
            assert response.status_code == status, response.text
