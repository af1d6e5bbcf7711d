"""Downloads of URLs that came from outside (result URLs), streamed into a file while hashed.

Every hop of a redirect chain is checked against an `AddressPolicy` and the provider's host
allowlist, and the address checked is the address connected to: the connection's network
backend (`CheckedBackend`) resolves and checks names itself. Credentials go only to the
hosts named for them. With `reconciler/clients.py`, the only place that catches httpx
errors; no URL's path or query is ever logged or put in an error.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType
from typing import BinaryIO

import httpcore
import httpx

from schemas.addresses import AddressPolicy, BlockedURL, host_allowed
from schemas.media.sniff import SNIFF_BYTES

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Refusals that may pass if asked again later, besides every 5xx.
RETRYABLE_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "taskledger-archiver"
# The body as stored, byte for byte: the archive keeps the media, not a gzip of it.
IDENTITY = "identity"
# One fetch in all, from the first request to the last byte of the last hop: a source that
# drips its body (a byte now and then, so no read times out) gives up its worker by then.
# Under the archive's default lease (300 s), so the attempt is recorded while it is leased.
TOTAL_TIMEOUT_SECONDS = 240.0


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """How much one fetch may take; `chunk_bytes` is how much is held and written at once.

    `connect_timeout_seconds` and `read_timeout_seconds` bound each wait on the network;
    `total_timeout_seconds` bounds the whole fetch, redirects included, however steadily
    the bytes come (a timeout then, as any other: `reason` `timeout`, retryable).
    """

    max_bytes: int
    connect_timeout_seconds: float = 10
    read_timeout_seconds: float = 30
    total_timeout_seconds: float = TOTAL_TIMEOUT_SECONDS
    max_redirects: int = 5
    chunk_bytes: int = 1 << 20

    def timeout(self) -> httpx.Timeout:
        connect, read = self.connect_timeout_seconds, self.read_timeout_seconds
        return httpx.Timeout(connect=connect, read=read, write=read, pool=connect)


class FetchError(Exception):
    """A fetch that brought no file.

    `reason` is a short, stable code: `scheme`, `no_host`, `userinfo`, `blocked_address`,
    `unresolvable`, `host_not_allowed`, `too_many_redirects`, `http_status` (with
    `status_code`), `timeout`, `connect`, `too_large`, `truncated` or `protocol`.
    `retryable` says whether the same fetch may succeed later; `host` is the hop that
    failed. The message names the host at most, never the URL's path or query.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        host: str,
        retryable: bool = False,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.host = host
        self.retryable = retryable
        self.status_code = status_code


@dataclass(frozen=True, slots=True)
class Fetched:
    """A body written to the sink: its size and SHA-256 (hex), the `Content-Type` media type
    and `Content-Length` it came with, the final host, and its first bytes for `sniff`."""

    size: int
    sha256: str
    content_type: str | None
    content_length: int | None
    host: str
    redirects: int
    head: bytes


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only where `policy` allows: it resolves the
    name itself, checks every address, and opens the socket to a checked one. TLS (SNI and
    the certificate) and the `Host` header still use the name; httpcore passes it apart."""

    def __init__(
        self, policy: AddressPolicy, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self.policy = policy
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """A connection to a checked address of `host`, within `timeout` in all (resolving
        included); `BlockedURL` when an address is refused."""
        options = None if socket_options is None else list(socket_options)
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.policy.resolve(host, port)
                return await self._connect_first(addresses, port, local_address, options)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"connecting to {host} timed out") from exc

    async def _connect_first(
        self,
        addresses: list[str],
        port: int,
        local_address: str | None,
        socket_options: list[httpcore.SOCKET_OPTION] | None,
    ) -> httpcore.AsyncNetworkStream:
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
        raise failure or httpcore.ConnectError("no address to connect to")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("fetches never go through a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def safe_transport(
    policy: AddressPolicy, *, inner: httpcore.AsyncNetworkBackend | None = None
) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every connection goes through `CheckedBackend(policy)`
    (`inner` opens the checked sockets; AnyIO's backend by default)."""
    transport = httpx.AsyncHTTPTransport()
    install_backend(transport, CheckedBackend(policy, inner))
    return transport


def install_backend(
    transport: httpx.AsyncHTTPTransport, backend: httpcore.AsyncNetworkBackend
) -> None:
    """Give `transport`'s connection pool `backend`. httpx has no public way: its transport
    keeps an `httpcore.AsyncConnectionPool` in the private `_pool`, whose `_network_backend`
    every new connection is given. Refuse loudly rather than fetch unchecked if either is
    gone (tests/reconciler/test_fetch.py checks that connections really use it)."""
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore.AsyncConnectionPool) or not hasattr(pool, "_network_backend"):
        raise RuntimeError("httpx's transport no longer keeps an httpcore pool with a backend")
    pool._network_backend = backend


def new_fetch_client(
    policy: AddressPolicy, *, inner: httpcore.AsyncNetworkBackend | None = None
) -> httpx.AsyncClient:
    """An HTTP client for `SafeFetcher`: every connection checked, redirects left to the
    fetcher, no cookies kept, nothing from the environment (a proxy would bypass the checks)."""
    refuse_all = DefaultCookiePolicy(allowed_domains=[])
    return httpx.AsyncClient(
        transport=safe_transport(policy, inner=inner),
        follow_redirects=False,
        trust_env=False,
        cookies=CookieJar(policy=refuse_all),
    )


class SafeFetcher:
    """GETs of URLs from outside into files, within `policy` and `limits`.

    `client` defaults to `new_fetch_client(policy)`; a client given must be built on
    `safe_transport` (or, in tests, `httpx.MockTransport`) for names to be checked where
    they are connected to. `aclose` closes only a client the fetcher made.
    """

    def __init__(
        self, policy: AddressPolicy, limits: FetchLimits, *, client: httpx.AsyncClient | None = None
    ) -> None:
        self.policy = policy
        self.limits = limits
        self._owns_client = client is None
        self._client = client or new_fetch_client(policy)
        self._timeout = limits.timeout().as_dict()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> SafeFetcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def fetch_to(
        self,
        url: str,
        sink: BinaryIO,
        *,
        headers: Mapping[str, str] | None = None,
        credential_origins: frozenset[str] = frozenset(),
        allowed_hosts: tuple[str, ...] = (),
    ) -> Fetched:
        """Stream the body at `url` into `sink` (a binary file the caller opened), hashing
        and counting it as it goes; follow up to `limits.max_redirects` redirects, each hop
        checked like the first. `headers` (credentials) go only to a hop whose origin
        (scheme, host and port, as `origin` spells them) is in `credential_origins`; a
        non-empty `allowed_hosts` (`host_allowed` patterns) bounds every hop. All of it ends
        within `limits.total_timeout_seconds`. Raises `FetchError`, after which `sink` may
        hold part of a body."""
        target = self._checked(url, allowed_hosts)
        trusted = _origins(credential_origins)
        deadline = asyncio.get_running_loop().time() + self.limits.total_timeout_seconds
        redirects = 0
        while True:
            request = self._request(target, headers or {}, trusted)
            outcome = await self._hop(request, sink, redirects, deadline)
            if isinstance(outcome, Fetched):
                return outcome
            if redirects == self.limits.max_redirects:
                raise FetchError(
                    f"{_host(target)} redirected more than {redirects} times",
                    reason="too_many_redirects",
                    host=_host(target),
                )
            redirects += 1
            target = self._checked(outcome, allowed_hosts, base=target)

    def _checked(
        self, url: str, allowed_hosts: tuple[str, ...], base: httpx.URL | None = None
    ) -> httpx.URL:
        """`url` (a redirect's `Location`, relative to `base`) if it may be fetched. httpx's
        reading of its host must agree with the policy's: a URL two parsers read apart is
        a classic way around a check."""
        hint = "" if base is None else _host(base)
        try:
            target = httpx.URL(url) if base is None else base.join(url)
            parts = self.policy.check_url(url if base is None else str(target))
            _ = target.host  # a request reads it: IDNA must decode it (`xn--a` it cannot)
        except (httpx.InvalidURL, ValueError) as exc:  # ValueError: UnicodeError, IDNAError
            raise FetchError("the URL cannot be parsed", reason="no_host", host=hint) from exc
        except BlockedURL as exc:
            raise _blocked(exc, hint) from exc
        host = _host(target)
        if _wire_host(parts.hostname or "") != host:
            raise FetchError(f"the URL's host is ambiguous ({host})", reason="no_host", host=host)
        if allowed_hosts and not host_allowed(host, allowed_hosts):
            message = f"{host} is not among the provider's media hosts"
            raise FetchError(message, reason="host_not_allowed", host=host)
        return target

    def _request(
        self, target: httpx.URL, credentials: Mapping[str, str], trusted: frozenset[str]
    ) -> httpx.Request:
        """A GET of `target` with the credentials if its origin is trusted with them (built
        apart from the client: none of a client's default headers or cookies go along)."""
        headers = {"user-agent": USER_AGENT, "accept": "*/*", "accept-encoding": IDENTITY}
        if origin(target) in trusted:
            headers.update(credentials)
        try:
            return httpx.Request(
                "GET", target, headers=headers, extensions={"timeout": self._timeout}
            )
        except Exception as exc:  # a credential no header carries (not ASCII, say)
            raise _unmade(exc, _host(target)) from exc

    async def _hop(
        self, request: httpx.Request, sink: BinaryIO, redirects: int, deadline: float
    ) -> Fetched | str:
        """One request, over by `deadline` (the event loop's clock): the file written to
        `sink`, or the `Location` a redirect names."""
        host = _host(request.url)
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(
                    request, stream=True, auth=None, follow_redirects=False
                )
                try:
                    return await self._answer(response, sink, redirects)
                finally:
                    await response.aclose()
        except TimeoutError as exc:
            raise _overdue(host, self.limits.total_timeout_seconds) from exc
        except BlockedURL as exc:
            raise _blocked(exc, host) from exc
        except httpx.HTTPError as exc:
            raise _failed(exc, host) from exc
        except httpx.InvalidURL as exc:
            raise _bad_location(host) from exc
        except (ValueError, OverflowError, ExceptionGroup) as exc:
            # Python's own errors out of the libraries, for a request they cannot make.
            if isinstance(exc, ExceptionGroup) and not _all_mismade(exc):
                raise
            raise _unmade(exc, host) from exc

    async def _answer(
        self, response: httpx.Response, sink: BinaryIO, redirects: int
    ) -> Fetched | str:
        location: str | None = response.headers.get("location")
        if response.status_code in REDIRECT_STATUSES and location:
            return location
        if not response.is_success:
            raise _status_error(response)  # its body is never read
        return await self._save(response, sink, redirects)

    async def _save(self, response: httpx.Response, sink: BinaryIO, redirects: int) -> Fetched:
        host = _host(response.url)
        declared = self._declared_length(response, host)
        copy = _Copy(sink)
        try:
            async with aclosing(_raw_chunks(response, self.limits.chunk_bytes)) as chunks:
                async for chunk in chunks:
                    if copy.size + len(chunk) > self.limits.max_bytes:
                        raise _too_large(host, self.limits.max_bytes)
                    await asyncio.to_thread(copy.write, chunk)
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise _truncated(host) from exc
        _check_length(copy.size, declared, host)
        return Fetched(
            size=copy.size,
            sha256=copy.digest.hexdigest(),
            content_type=_media_type(response),
            content_length=declared,
            host=host,
            redirects=redirects,
            head=copy.head,
        )

    def _declared_length(self, response: httpx.Response, host: str) -> int | None:
        """The `Content-Length`, if there is one and it is within the limit; the body must
        come as it is stored (no `Content-Encoding`)."""
        encoding = response.headers.get("content-encoding", IDENTITY).strip().lower()
        if encoding not in ("", IDENTITY):
            message = f"{host} sent the body {encoding}-encoded though asked for it as it is"
            raise FetchError(message, reason="protocol", host=host)
        text = response.headers.get("content-length")
        if text is None:
            return None
        try:
            declared = int(text)
        except ValueError as exc:
            message = f"{host} sent a malformed Content-Length"
            raise FetchError(message, reason="protocol", host=host) from exc
        if declared > self.limits.max_bytes:
            raise _too_large(host, self.limits.max_bytes)
        return declared


class _Copy:
    """The body so far: written to the sink, hashed and counted, its first bytes kept."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.digest = hashlib.sha256()
        self.size = 0
        self.head = b""

    def write(self, chunk: bytes) -> None:
        """Run in a worker thread: a slow disk must not stall the event loop."""
        self.sink.write(chunk)
        self.digest.update(chunk)
        self.size += len(chunk)
        if len(self.head) < SNIFF_BYTES:
            self.head += chunk[: SNIFF_BYTES - len(self.head)]


async def _raw_chunks(response: httpx.Response, chunk_bytes: int) -> AsyncGenerator[bytes]:
    """The body as it came, `chunk_bytes` at a time; at once if it was read already (a
    response built with `content=`, as `httpx.MockTransport` handlers make them)."""
    if response.is_stream_consumed:
        yield response.content
        return
    # The pieces as the network hands them, joined once per chunk: httpx's own sized
    # re-chunking copies every byte about three times (measured: a third of the CPU).
    pieces: list[bytes] = []
    held = 0
    async for piece in response.aiter_raw():
        pieces.append(piece)
        held += len(piece)
        if held >= chunk_bytes:
            yield b"".join(pieces)
            pieces, held = [], 0
    if pieces:
        yield b"".join(pieces)


def _check_length(size: int, declared: int | None, host: str) -> None:
    if declared is None or size == declared:
        return
    if size < declared:
        raise _truncated(host)
    message = f"{host} sent more bytes than its Content-Length"
    raise FetchError(message, reason="protocol", host=host)


def _status_error(response: httpx.Response) -> FetchError:
    code, host = response.status_code, _host(response.url)
    return FetchError(
        f"{host} answered HTTP {code}",
        reason="http_status",
        host=host,
        retryable=code in RETRYABLE_STATUSES or code >= httpx.codes.INTERNAL_SERVER_ERROR,
        status_code=code,
    )


def _bad_location(host: str) -> FetchError:
    """A redirect to a URL that cannot be read: httpx reads a redirect's `Location` even
    when it is not to follow it (raising `InvalidURL`, or `RemoteProtocolError` with the
    message below). It will name the same URL again: not retried."""
    message = f"{host} redirected to a URL that cannot be read"
    return FetchError(message, reason="protocol", host=host)


_BAD_LOCATION = "Invalid URL in location header"


def _failed(exc: httpx.HTTPError, host: str) -> FetchError:
    """A transport failure, named by its type only (httpx messages may quote the URL)."""
    if isinstance(exc, httpx.RemoteProtocolError) and str(exc).startswith(_BAD_LOCATION):
        return _bad_location(host)
    what = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return FetchError(f"{host} timed out ({what})", reason="timeout", host=host, retryable=True)
    if isinstance(exc, httpx.ConnectError):
        return FetchError(f"cannot connect to {host}", reason="connect", host=host, retryable=True)
    # The peer broke the exchange off: that may pass. A request httpx cannot send will not.
    broken = isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError)
    message = f"the exchange with {host} failed ({what})"
    return FetchError(message, reason="protocol", host=host, retryable=broken)


def _unmade(exc: BaseException, host: str) -> FetchError:
    """A request the libraries cannot make (a header they cannot encode, say): named by the
    error's type only; made again, it would fail again."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]  # anyio's group: named by what it holds
    message = f"the request to {host} cannot be made ({type(exc).__name__})"
    return FetchError(message, reason="protocol", host=host)


def _all_mismade(group: BaseExceptionGroup[BaseException]) -> bool:
    return all(
        _all_mismade(inner)
        if isinstance(inner, BaseExceptionGroup)
        else isinstance(inner, ValueError | OverflowError)
        for inner in group.exceptions
    )


def _origins(urls: Iterable[str]) -> frozenset[str]:
    """The origins of `urls`; one that does not parse names no origin (nothing is sent
    with credentials to it)."""
    found = set()
    for url in urls:
        try:
            found.add(origin(httpx.URL(url)))
        except (httpx.InvalidURL, ValueError):
            continue
    return frozenset(found)


def _overdue(host: str, total_seconds: float) -> FetchError:
    message = f"fetching from {host} took more than {total_seconds:g} s in all"
    return FetchError(message, reason="timeout", host=host, retryable=True)


def _blocked(exc: BlockedURL, host: str) -> FetchError:
    """A URL or address the policy refuses; only a name that did not resolve may resolve
    later (DNS failures are often brief)."""
    retryable = exc.reason == "unresolvable"
    return FetchError(str(exc), reason=exc.reason, host=exc.host or host, retryable=retryable)


def _too_large(host: str, max_bytes: int) -> FetchError:
    return FetchError(f"{host} sent more than {max_bytes} bytes", reason="too_large", host=host)


def _truncated(host: str) -> FetchError:
    message = f"{host} broke off the body before its end"
    return FetchError(message, reason="truncated", host=host, retryable=True)


def _media_type(response: httpx.Response) -> str | None:
    value = response.headers.get("content-type", "")
    return value.split(";", 1)[0].strip().lower() or None


def _host(url: httpx.URL) -> str:
    """The host as it goes on the wire (IDNA for a name), lower case."""
    return url.raw_host.decode("ascii").lower()


def _wire_host(name: str) -> str:
    """`name` as `_host` spells it; left as it is when IDNA cannot encode it (and then it
    will not match)."""
    try:
        return name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return name.lower()


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: httpx.URL) -> str:
    """`scheme://host:port`, the port written out: what a credential is bound to. The key
    for `https://api.example` goes neither to `http://api.example` (in the clear) nor to
    another port of that host (another service)."""
    port = url.port or _DEFAULT_PORTS.get(url.scheme, 0)
    return f"{url.scheme}://{_bare_host(_host(url))}:{port}"


def _bare_host(host: str) -> str:
    return host.strip().lower().rstrip(".")
