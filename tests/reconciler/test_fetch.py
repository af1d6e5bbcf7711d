"""The safe fetcher against real servers on loopback (and `httpx.MockTransport` for answers a
real server cannot give): redirects, addresses, credentials, limits, and failures."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import socket
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

import httpcore
import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from reconciler.fetch import (
    CheckedBackend,
    Fetched,
    FetchError,
    FetchLimits,
    SafeFetcher,
    install_backend,
    new_fetch_client,
    safe_transport,
)
from schemas.addresses import AddressPolicy
from schemas.media.sniff import SNIFF_BYTES
from tests.reconciler.conftest import Dripper, Names
from tests.support.servers import free_port, serve

MB = 1 << 20
CHUNK = bytes(64 * 1024)
POLICY = AddressPolicy(allow_http=True, allowed_networks=(ip_network("127.0.0.1/32"),))
LIMITS = FetchLimits(
    max_bytes=MB,
    connect_timeout_seconds=5,
    read_timeout_seconds=5,
    max_redirects=5,
    chunk_bytes=64 * 1024,
)
BODY = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + random.Random(7).randbytes(300_000)
SECRET = "Bearer sk-archive-secret"


class Recorder(httpcore.AsyncNetworkBackend):
    """AnyIO's backend, noting every host it is asked to connect to."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.hosts: list[str] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.hosts.append(host)
        return await self.inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def create_app(release: asyncio.Event) -> Starlette:
    async def file(request: Request) -> Response:
        return Response(BODY, media_type="video/mp4")

    async def echo(request: Request) -> Response:
        seen = {key: request.headers.get(key) for key in ("authorization", "host", "cookie")}
        return JSONResponse(seen, headers={"set-cookie": "session=abc; Path=/"})

    async def redirect(request: Request) -> Response:
        left = int(request.path_params["left"])
        if left == 0:
            return await file(request)
        status = int(request.query_params.get("status", "302"))
        return RedirectResponse(f"/redirect/{left - 1}", status_code=status)

    async def to(request: Request) -> Response:
        return RedirectResponse(request.query_params["url"], status_code=302)

    async def sized(request: Request) -> Response:
        return Response(bytes(int(request.path_params["size"])), media_type="video/mp4")

    async def stream(request: Request) -> Response:
        return StreamingResponse(zeros(int(request.path_params["size"])), media_type="video/mp4")

    async def slow(request: Request) -> Response:
        return StreamingResponse(then_wait(release), media_type="video/mp4")

    async def status(request: Request) -> Response:
        code = int(request.path_params["code"])
        return StreamingResponse(then_wait(release), status_code=code, media_type="text/html")

    return Starlette(
        routes=[
            Route("/file", file),
            Route("/echo", echo),
            Route("/redirect/{left:int}", redirect),
            Route("/to", to),
            Route("/sized/{size:int}", sized),
            Route("/stream/{size:int}", stream),
            Route("/slow", slow),
            Route("/status/{code:int}", status),
        ]
    )


async def zeros(size: int) -> AsyncIterator[bytes]:
    left = size
    while left > 0:
        piece = CHUNK if left >= len(CHUNK) else CHUNK[:left]
        left -= len(piece)
        yield piece


async def then_wait(release: asyncio.Event) -> AsyncIterator[bytes]:
    """The start of a body, then the rest only once `release` is set (at the test's end)."""
    yield b"<html>" + bytes(1000)
    await release.wait()
    yield b"</html>"


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    release = asyncio.Event()
    async with serve(create_app(release)) as url:
        try:
            yield url
        finally:
            release.set()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def fetcher(recorder: Recorder) -> AsyncIterator[SafeFetcher]:
    async with new_fetch_client(POLICY, inner=recorder) as client:
        yield SafeFetcher(POLICY, LIMITS, client=client)


@pytest.fixture
async def liar() -> AsyncIterator[str]:
    """A raw server that promises 1000 bytes, sends 400, and closes the connection."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: 1000\r\n\r\n"
        writer.write(head + BODY[:400])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[BinaryIO]:
    with (tmp_path / "body.part").open("wb") as sink:
        yield sink


async def fetch(fetcher: SafeFetcher, url: str, **options: Any) -> tuple[Fetched, bytes]:
    sink = io.BytesIO()
    fetched = await fetcher.fetch_to(url, sink, **options)
    return fetched, sink.getvalue()


async def refused(fetcher: SafeFetcher, url: str, **options: Any) -> FetchError:
    with pytest.raises(FetchError) as caught:
        await fetcher.fetch_to(url, io.BytesIO(), **options)
    return caught.value


def redirect_to(base_url: str, target: str) -> str:
    return f"{base_url}/to?url={quote(target, safe='')}"


def named(base_url: str, name: str, path: str) -> str:
    """`base_url`'s server under another host name."""
    return f"http://{name}:{urlsplit(base_url).port}{path}"


def echoed(body: bytes) -> dict[str, str | None]:
    seen: dict[str, str | None] = orjson.loads(body)
    return seen


# -- the file ---------------------------------------------------------------------------


async def test_fetch_streams_the_body_with_its_size_and_sha256(
    fetcher: SafeFetcher, base_url: str
) -> None:
    fetched, body = await fetch(fetcher, f"{base_url}/file")
    assert body == BODY
    assert fetched == Fetched(
        size=len(BODY),
        sha256=hashlib.sha256(BODY).hexdigest(),
        content_type="video/mp4",
        content_length=len(BODY),
        host="127.0.0.1",
        redirects=0,
        head=BODY[:SNIFF_BYTES],
    )


async def test_fetcher_with_its_own_client_fetches_within_the_policy(
    base_url: str, spool: BinaryIO
) -> None:
    async with SafeFetcher(POLICY, LIMITS) as fetcher:
        fetched = await fetcher.fetch_to(f"{base_url}/file", spool)
    assert (fetched.size, fetched.sha256) == (len(BODY), hashlib.sha256(BODY).hexdigest())


# -- redirects --------------------------------------------------------------------------


async def test_fetch_follows_a_redirect_chain(fetcher: SafeFetcher, base_url: str) -> None:
    fetched, body = await fetch(fetcher, f"{base_url}/redirect/3")
    assert (fetched.redirects, body) == (3, BODY)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_fetch_follows_each_redirect_status(
    fetcher: SafeFetcher, base_url: str, status: int
) -> None:
    fetched, body = await fetch(fetcher, f"{base_url}/redirect/1?status={status}")
    assert (fetched.redirects, body) == (1, BODY)


async def test_fetch_follows_max_redirects_and_no_more(fetcher: SafeFetcher, base_url: str) -> None:
    fetched, _ = await fetch(fetcher, f"{base_url}/redirect/{LIMITS.max_redirects}")
    assert fetched.redirects == LIMITS.max_redirects
    error = await refused(fetcher, f"{base_url}/redirect/{LIMITS.max_redirects + 1}")
    assert (error.reason, error.retryable) == ("too_many_redirects", False)


BLOCKED_TARGETS = {
    "loopback-other": "http://127.0.0.2:{port}/file",
    "metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "rfc1918": "http://10.0.0.1/file",
    "mapped-metadata": "http://[::ffff:169.254.169.254]/latest/meta-data/",
}


@pytest.mark.parametrize("target", BLOCKED_TARGETS.values(), ids=BLOCKED_TARGETS.keys())
async def test_redirect_to_a_blocked_address_is_refused_unconnected(
    fetcher: SafeFetcher, recorder: Recorder, base_url: str, target: str
) -> None:
    location = target.format(port=urlsplit(base_url).port)
    error = await refused(fetcher, redirect_to(base_url, location))
    assert (error.reason, error.retryable) == ("blocked_address", False)
    assert recorder.hosts == ["127.0.0.1"]


async def test_redirect_to_a_name_of_a_blocked_address_is_refused_unconnected(
    fetcher: SafeFetcher, recorder: Recorder, names: Names, base_url: str
) -> None:
    names.answer("metadata.test", ["169.254.169.254"])
    error = await refused(fetcher, redirect_to(base_url, "http://metadata.test/latest/"))
    assert (error.reason, error.host) == ("blocked_address", "metadata.test")
    assert recorder.hosts == ["127.0.0.1"]


@pytest.mark.parametrize(
    "location", ["http:127.0.0.2:18080/b", "http://[::1", "http://127.0.0.1:99999/"]
)
async def test_a_redirect_to_a_malformed_url_fails_for_good(
    fetcher: SafeFetcher, recorder: Recorder, base_url: str, location: str
) -> None:
    error = await refused(fetcher, redirect_to(base_url, location))
    assert (error.reason, error.retryable) in {("protocol", False), ("no_host", False)}
    assert location not in str(error)
    assert recorder.hosts == ["127.0.0.1"]


async def test_redirect_to_another_scheme_is_refused(fetcher: SafeFetcher, base_url: str) -> None:
    error = await refused(fetcher, redirect_to(base_url, "file:///etc/passwd"))
    assert error.reason == "scheme"


async def test_error_messages_never_quote_path_or_query(
    fetcher: SafeFetcher, base_url: str
) -> None:
    secret_path = "/private-bucket/video.mp4?X-Amz-Signature=deadbeef"
    error = await refused(fetcher, redirect_to(base_url, "http://10.0.0.1" + secret_path))
    for leak in ("private-bucket", "deadbeef", "Signature"):
        assert leak not in str(error)


# -- credentials and host allowlists ----------------------------------------------------


async def test_credentials_go_to_a_credential_host(fetcher: SafeFetcher, base_url: str) -> None:
    _, body = await fetch(
        fetcher,
        f"{base_url}/echo",
        headers={"authorization": SECRET},
        credential_origins=frozenset({base_url}),
    )
    assert echoed(body)["authorization"] == SECRET


async def test_credentials_never_go_to_another_host(fetcher: SafeFetcher, base_url: str) -> None:
    _, body = await fetch(
        fetcher,
        f"{base_url}/echo",
        headers={"authorization": SECRET},
        credential_origins=frozenset({"https://api.provider.test"}),
    )
    assert echoed(body)["authorization"] is None


async def test_credentials_never_go_to_another_port_or_scheme_of_their_host(
    fetcher: SafeFetcher, base_url: str, subtests: pytest.Subtests
) -> None:
    port = urlsplit(base_url).port
    for case, trusted in {
        "another port": f"http://127.0.0.1:{port + 1}",
        "https, not http": f"https://127.0.0.1:{port}",
        "the default port": "http://127.0.0.1",
    }.items():
        with subtests.test(case=case):
            _, body = await fetch(
                fetcher,
                f"{base_url}/echo",
                headers={"authorization": SECRET},
                credential_origins=frozenset({trusted}),
            )
            assert echoed(body)["authorization"] is None


async def test_credentials_follow_a_redirect_on_the_same_host(
    fetcher: SafeFetcher, base_url: str
) -> None:
    _, body = await fetch(
        fetcher,
        redirect_to(base_url, "/echo"),
        headers={"authorization": SECRET},
        credential_origins=frozenset({base_url}),
    )
    assert echoed(body)["authorization"] == SECRET


async def test_credentials_are_dropped_at_a_redirect_to_another_host(
    fetcher: SafeFetcher, names: Names, base_url: str
) -> None:
    names.answer("cdn.test", ["127.0.0.1"])
    _, body = await fetch(
        fetcher,
        redirect_to(base_url, named(base_url, "cdn.test", "/echo")),
        headers={"authorization": SECRET},
        credential_origins=frozenset({base_url}),
    )
    seen = echoed(body)
    assert seen["host"] == f"cdn.test:{urlsplit(base_url).port}"
    assert seen["authorization"] is None


async def test_cookies_a_server_sets_are_never_sent(fetcher: SafeFetcher, base_url: str) -> None:
    await fetch(fetcher, f"{base_url}/echo")
    _, body = await fetch(fetcher, redirect_to(base_url, "/echo"))
    assert echoed(body)["cookie"] is None


async def test_allowlist_refuses_the_first_url(
    fetcher: SafeFetcher, recorder: Recorder, base_url: str
) -> None:
    error = await refused(fetcher, f"{base_url}/file", allowed_hosts=("*.cdn.test",))
    assert (error.reason, error.host) == ("host_not_allowed", "127.0.0.1")
    assert recorder.hosts == []


async def test_allowlist_refuses_a_redirect_hop(
    fetcher: SafeFetcher, recorder: Recorder, names: Names, base_url: str
) -> None:
    names.answer("elsewhere.test", ["127.0.0.1"])
    url = redirect_to(base_url, named(base_url, "elsewhere.test", "/file"))
    error = await refused(fetcher, url, allowed_hosts=("127.0.0.1", "*.cdn.test"))
    assert (error.reason, error.host) == ("host_not_allowed", "elsewhere.test")
    assert names.asked == []
    assert recorder.hosts == ["127.0.0.1"]


async def test_allowlist_admits_matching_hops(
    fetcher: SafeFetcher, names: Names, base_url: str
) -> None:
    names.answer("media.cdn.test", ["127.0.0.1"])
    url = redirect_to(base_url, named(base_url, "media.cdn.test", "/file"))
    fetched, _ = await fetch(fetcher, url, allowed_hosts=("127.0.0.1", "*.cdn.test"))
    assert (fetched.host, fetched.redirects) == ("media.cdn.test", 1)


# -- DNS: the address checked is the address connected to --------------------------------


async def test_a_name_resolving_to_a_blocked_address_is_refused_at_connect_time(
    fetcher: SafeFetcher, recorder: Recorder, names: Names, base_url: str
) -> None:
    names.answer("media.test", ["10.0.0.1"])
    url = named(base_url, "media.test", "/file")
    assert POLICY.check_url(url)  # a name passes the URL check: only resolving tells
    error = await refused(fetcher, url)
    assert (error.reason, error.host, error.retryable) == ("blocked_address", "media.test", False)
    assert recorder.hosts == []


async def test_the_connection_goes_to_the_address_that_was_checked(
    fetcher: SafeFetcher, recorder: Recorder, names: Names, base_url: str
) -> None:
    names.answer("media.test", ["127.0.0.1"], ["10.0.0.1"])  # rebinds after the first answer
    fetched, body = await fetch(fetcher, named(base_url, "media.test", "/echo"))
    assert names.asked == ["media.test"]
    assert recorder.hosts == ["127.0.0.1"]
    assert echoed(body)["host"] == f"media.test:{urlsplit(base_url).port}"
    assert fetched.host == "media.test"


async def test_a_dns_answer_mixing_public_and_blocked_addresses_is_refused(
    fetcher: SafeFetcher, recorder: Recorder, names: Names, base_url: str
) -> None:
    names.answer("mixed.test", ["127.0.0.1", "10.0.0.1"])
    error = await refused(fetcher, named(base_url, "mixed.test", "/file"))
    assert error.reason == "blocked_address"
    assert recorder.hosts == []


async def test_a_name_that_does_not_resolve_is_unresolvable(
    fetcher: SafeFetcher, names: Names, base_url: str
) -> None:
    names.answer("nowhere.test", socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    error = await refused(fetcher, named(base_url, "nowhere.test", "/file"))
    assert (error.reason, error.retryable) == ("unresolvable", True)


async def test_a_resolver_that_never_answers_times_out(names: Names, base_url: str) -> None:
    names.answer("silent.test", Names.HANG)
    limits = FetchLimits(max_bytes=MB, connect_timeout_seconds=0.2)
    async with SafeFetcher(POLICY, limits) as fetcher:
        error = await refused(fetcher, named(base_url, "silent.test", "/file"))
    assert (error.reason, error.retryable) == ("timeout", True)


# -- sizes ------------------------------------------------------------------------------


async def test_a_declared_length_over_the_limit_is_refused_before_reading(
    fetcher: SafeFetcher, base_url: str
) -> None:
    sink = io.BytesIO()
    with pytest.raises(FetchError) as caught:
        await fetcher.fetch_to(f"{base_url}/sized/{2 * MB}", sink)
    assert (caught.value.reason, caught.value.retryable) == ("too_large", False)
    assert sink.tell() == 0


async def test_a_body_growing_past_the_limit_is_refused(
    fetcher: SafeFetcher, base_url: str
) -> None:
    sink = io.BytesIO()
    with pytest.raises(FetchError) as caught:
        await fetcher.fetch_to(f"{base_url}/stream/{2 * MB}", sink)
    assert caught.value.reason == "too_large"
    assert sink.tell() <= LIMITS.max_bytes


async def test_a_body_cut_short_of_its_content_length_is_truncated(
    fetcher: SafeFetcher, liar: str
) -> None:
    error = await refused(fetcher, f"{liar}/file")
    assert (error.reason, error.retryable) == ("truncated", True)


async def test_a_large_body_streams_in_constant_memory(base_url: str, spool: BinaryIO) -> None:
    size = 50 * MB
    expected = hashlib.sha256()
    for _ in range(size // len(CHUNK)):
        expected.update(CHUNK)
    async with SafeFetcher(POLICY, FetchLimits(max_bytes=64 * MB)) as fetcher:
        tracemalloc.start()
        try:
            fetched = await fetcher.fetch_to(f"{base_url}/stream/{size}", spool)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (fetched.size, fetched.sha256) == (size, expected.hexdigest())
    assert peak < size // 4  # a 1 MiB chunk at a time: a few MiB, whatever the body's size


# -- failures ---------------------------------------------------------------------------

STATUSES = {
    "server-error": (500, True),
    "unavailable": (503, True),
    "bad-gateway": (502, True),
    "too-many-requests": (429, True),
    "request-timeout": (408, True),
    "too-early": (425, True),
    "not-found": (404, False),
    "forbidden": (403, False),
    "gone": (410, False),
}


@pytest.mark.parametrize(("status", "retryable"), STATUSES.values(), ids=STATUSES.keys())
async def test_an_error_status_fails_without_reading_its_body(
    fetcher: SafeFetcher, base_url: str, status: int, retryable: bool
) -> None:
    # The error body never ends: reading it would time out instead.
    error = await refused(fetcher, f"{base_url}/status/{status}")
    assert (error.reason, error.status_code, error.retryable) == (
        "http_status",
        status,
        retryable,
    )


async def test_a_body_that_stalls_times_out(base_url: str) -> None:
    limits = FetchLimits(max_bytes=MB, read_timeout_seconds=0.2)
    async with SafeFetcher(POLICY, limits) as fetcher:
        error = await refused(fetcher, f"{base_url}/slow")
    assert (error.reason, error.retryable) == ("timeout", True)


async def test_a_body_that_drips_times_out_when_the_whole_fetch_outlasts_its_limit(
    dripper: Dripper,
) -> None:
    # A byte every 50 ms: the 5 s read timeout never fires; the whole fetch's limit does.
    limits = FetchLimits(max_bytes=MB, read_timeout_seconds=5, total_timeout_seconds=0.3)
    async with SafeFetcher(POLICY, limits) as fetcher, asyncio.timeout(5):
        error = await refused(fetcher, f"{dripper.url}/v.mp4")
    assert (error.reason, error.retryable, error.host) == ("timeout", True, "127.0.0.1")
    assert "0.3 s in all" in str(error)


async def test_a_port_nobody_listens_on_fails_to_connect(fetcher: SafeFetcher) -> None:
    error = await refused(fetcher, f"http://127.0.0.1:{free_port()}/file")
    assert (error.reason, error.retryable, error.host) == ("connect", True, "127.0.0.1")


# -- answers a real server does not give (httpx.MockTransport) ----------------------------

Handler = Callable[[httpx.Request], httpx.Response]


async def mock_refusal(handler: Handler, url: str = "https://media.example/v.mp4") -> FetchError:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        return await refused(SafeFetcher(AddressPolicy(), LIMITS, client=client), url)


async def test_more_bytes_than_the_content_length_is_a_protocol_error() -> None:
    error = await mock_refusal(
        lambda _: httpx.Response(200, headers={"content-length": "10"}, content=bytes(20))
    )
    assert (error.reason, error.retryable) == ("protocol", False)


async def test_fewer_bytes_than_the_content_length_is_truncated() -> None:
    error = await mock_refusal(
        lambda _: httpx.Response(200, headers={"content-length": "30"}, content=bytes(20))
    )
    assert (error.reason, error.retryable) == ("truncated", True)


async def test_an_encoded_body_is_refused() -> None:
    headers = {"content-encoding": "gzip", "content-type": "video/mp4"}
    error = await mock_refusal(lambda _: httpx.Response(200, headers=headers, content=b"\x1f\x8b"))
    assert error.reason == "protocol"


async def test_a_redirect_without_location_is_an_error_status() -> None:
    error = await mock_refusal(lambda _: httpx.Response(302))
    assert (error.reason, error.status_code, error.retryable) == ("http_status", 302, False)


async def test_a_url_with_userinfo_is_refused_unsent() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    error = await mock_refusal(handler, "https://media.example@169.254.169.254/")
    assert (error.reason, sent) == ("userinfo", [])


# -- how the backend is wired into httpx --------------------------------------------------


def test_safe_transport_puts_its_backend_in_httpx_pool() -> None:
    # install_backend sets httpx's private `AsyncHTTPTransport._pool._network_backend`:
    # if httpx or httpcore rename either, this fails (and install_backend raises).
    pool = safe_transport(POLICY)._pool
    assert isinstance(pool, httpcore.AsyncConnectionPool)
    assert isinstance(pool._network_backend, CheckedBackend)


async def test_connections_go_through_the_installed_backend(
    fetcher: SafeFetcher, recorder: Recorder, base_url: str
) -> None:
    await fetch(fetcher, f"{base_url}/file")
    assert recorder.hosts == ["127.0.0.1"]


def test_install_backend_refuses_a_transport_it_does_not_know(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transport = httpx.AsyncHTTPTransport()
    monkeypatch.setattr(transport, "_pool", object())
    with pytest.raises(RuntimeError):
        install_backend(transport, CheckedBackend(POLICY))
