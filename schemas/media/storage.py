"""Where archived media is stored: a directory on local disk or an S3-compatible bucket.

Objects live under content-addressed keys (`content_key`). The archiver spools a download into
the store's `spool_dir`, then `put` moves or uploads it; obstore and OS errors become
`StorageError` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit

import obstore
from obstore import exceptions as obstore_errors
from obstore.store import S3Store as ObstoreS3Store

from schemas.errors import ConfigError, LedgerError

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

ARCHIVE_URL_VARIABLE = "TASKLEDGER_ARCHIVE_URL"
SPOOL_DIR_VARIABLE = "TASKLEDGER_ARCHIVE_SPOOL_DIR"
CHUNK_BYTES = 1024 * 1024
"""Size of the pieces `read` yields."""
PART_BYTES = 5 * 1024 * 1024
"""Multipart part size: the S3 minimum; 10,000 parts make objects of up to 48 GiB."""
PART_CONCURRENCY = 2
"""Parts in flight at once: an upload holds about PART_BYTES * (PART_CONCURRENCY + 2)."""
WINDOW_BYTES = 16 * 1024 * 1024
"""One ranged GET per window, so that a slow reader never holds a request past its timeout."""
REQUEST_TIMEOUT = timedelta(minutes=5)
CONNECT_TIMEOUT = timedelta(seconds=10)
RETRY_TIMEOUT = timedelta(seconds=30)
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
SPOOL_MODE = 0o700
DEFAULT_REGION = "us-east-1"

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SPOOL_NAME = ".incoming"


class StorageError(LedgerError):
    """The archive store failed or refused an operation.

    `reason` is a short, stable code (`not_stored`, `bad_key`, `bad_range`, `bad_request`,
    `io_error`, `permission_denied`, `unauthenticated`, `unsupported`, `backend_error`).
    """

    def __init__(self, message: str, *, reason: str, key: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.key = key


class NotStored(StorageError):
    """Nothing is stored under this key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"nothing is stored under {key}", reason="not_stored", key=key)


def content_key(sha256_hex: str) -> str:
    """The key of content with this SHA-256: `sha256/ab/cd/abcd…` (64 lowercase hex digits)."""
    if not _SHA256_HEX.fullmatch(sha256_hex):
        raise StorageError("not a lowercase hex SHA-256 digest", reason="bad_key")
    return f"sha256/{sha256_hex[:2]}/{sha256_hex[2:4]}/{sha256_hex}"


class ArchiveStore(Protocol):
    """Where archived files go. `read` raises on first iteration (NotStored, bad_range)."""

    kind: str
    spool_dir: Path

    def describe(self) -> str: ...

    async def put(self, source: Path, key: str, content_type: str) -> None: ...

    async def size(self, key: str) -> int: ...

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]: ...

    async def delete(self, key: str) -> None: ...

    async def presign(
        self,
        key: str,
        expires_seconds: int,
        *,
        content_type: str | None = None,
        filename: str | None = None,
    ) -> str | None: ...

    async def close(self) -> None: ...


class LocalStore:
    """Files under `root`, spooled in `root/.incoming` so that `put` is an atomic rename.

    The local store keeps no Content-Type; whoever serves a file knows it from the ledger.
    """

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spool_dir = root / _SPOOL_NAME
        _make_spool_dir(self.spool_dir)

    def describe(self) -> str:
        return f"local directory {self.root}"

    async def put(self, source: Path, key: str, content_type: str) -> None:
        """Move the finished spool file `source` into place (fsynced); it is consumed."""
        target = self._path(key)
        with _spool_errors(key):
            await asyncio.to_thread(_move_into_place, source, target, self.root)

    async def size(self, key: str) -> int:
        path = self._path(key)
        with _os_errors(key):
            return (await asyncio.to_thread(path.stat)).st_size

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self._path(key)
        with _os_errors(key):
            file = await asyncio.to_thread(path.open, "rb")
        try:
            position, stop = start, _stop(key, start, end, os.fstat(file.fileno()).st_size)
            while position < stop:
                with _os_errors(key):
                    chunk = await asyncio.to_thread(
                        os.pread, file.fileno(), min(CHUNK_BYTES, stop - position), position
                    )
                if not chunk:
                    raise StorageError(f"{key} shrank while read", reason="io_error", key=key)
                position += len(chunk)
                yield chunk
        finally:
            file.close()

    async def delete(self, key: str) -> None:
        path = self._path(key)
        with _os_errors(key):
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def presign(
        self,
        key: str,
        expires_seconds: int,
        *,
        content_type: str | None = None,
        filename: str | None = None,
    ) -> str | None:
        """Local files have no URL of their own: the receiver serves them."""
        return None

    async def close(self) -> None:
        return None

    def _path(self, key: str) -> Path:
        parts = _key_parts(key)
        if parts[0] == _SPOOL_NAME:
            raise StorageError("a key may not point into the spool", reason="bad_key", key=key)
        return self.root.joinpath(*parts)


class S3Store:
    """Objects in an S3-compatible bucket, from `s3://bucket/optional/prefix`.

    Settings come from `environ` (the AWS_* variables); obstore may still fill in settings
    absent there from the process environment, as every AWS client does.
    """

    kind = "s3"

    def __init__(self, url: str, environ: Mapping[str, str], *, spool_dir: Path) -> None:
        bucket, prefix = _bucket_and_prefix(url)
        config = _s3_config(environ)
        self._where = _s3_where(bucket, prefix, config)
        self._store = _obstore_s3(bucket, prefix, config)
        self.spool_dir = spool_dir
        make_s3_spool_dir(spool_dir)

    def describe(self) -> str:
        return self._where

    async def put(self, source: Path, key: str, content_type: str) -> None:
        """Upload the finished spool file `source` (streamed, multipart when large), then
        remove it; an object of the same size already there is kept. On failure the
        source stays where it is.
        """
        _key_parts(key)
        with _spool_errors(key):
            local_size = (await asyncio.to_thread(source.stat)).st_size
        if await self._stored_size(key) != local_size:
            with _obstore_errors(key):
                await self._store.put_async(
                    key,
                    source,
                    attributes={"Content-Type": content_type},
                    chunk_size=PART_BYTES,
                    max_concurrency=PART_CONCURRENCY,
                )
        with _spool_errors(key):
            await asyncio.to_thread(source.unlink)

    async def size(self, key: str) -> int:
        _key_parts(key)
        with _obstore_errors(key):
            return (await self._store.head_async(key))["size"]

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        position, stop = start, _stop(key, start, end, await self.size(key))
        while position < stop:
            window_end = min(position + WINDOW_BYTES, stop)
            async for chunk in self._window(key, position, window_end):
                position += len(chunk)
                yield chunk

    async def delete(self, key: str) -> None:
        _key_parts(key)
        with _obstore_errors(key):
            await self._store.delete_async(key)

    async def presign(
        self,
        key: str,
        expires_seconds: int,
        *,
        content_type: str | None = None,
        filename: str | None = None,
    ) -> str | None:
        """A GET URL valid for `expires_seconds`; it serves the Content-Type given to `put`.

        obstore signs the object path only, so response overrides (`content_type`,
        `filename`) cannot be carried: asking for them raises `unsupported`.
        """
        _key_parts(key)
        if content_type is not None or filename is not None:
            raise StorageError("S3 presign cannot override headers", reason="unsupported")
        if not 0 < expires_seconds <= MAX_PRESIGN_SECONDS:
            raise StorageError("expiry must be 1 s to 7 days", reason="bad_request", key=key)
        expires_in = timedelta(seconds=expires_seconds)
        with _obstore_errors(key):
            return await obstore.sign_async(self._store, "GET", key, expires_in)

    async def close(self) -> None:
        return None

    async def _stored_size(self, key: str) -> int | None:
        try:
            return await self.size(key)
        except NotStored:
            return None

    async def _window(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        with _obstore_errors(key):
            result = await self._store.get_async(key, options={"range": (start, end)})
            async for chunk in result.stream(min_chunk_size=CHUNK_BYTES):
                yield chunk


def open_store(url: str, environ: Mapping[str, str], *, spool_dir: Path) -> ArchiveStore:
    """The store `url` names: `s3://bucket/prefix`, `file:///dir` or a directory path.

    `spool_dir` is where an S3 store spools downloads; a local store spools inside its root.
    """
    scheme = urlsplit(url).scheme
    if scheme == "s3":
        return S3Store(url, environ, spool_dir=spool_dir)
    if scheme in ("file", "") and url:
        try:
            return LocalStore(_local_root(url))
        except OSError as exc:
            raise ConfigError(f"{ARCHIVE_URL_VARIABLE}: cannot use the directory: {exc}") from exc
    raise ConfigError(
        f"{ARCHIVE_URL_VARIABLE} must be s3://bucket[/prefix], file:///dir or a directory path"
    )


def _local_root(url: str) -> Path:
    if not url.startswith("file:"):
        return Path(url)
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or not parts.path:
        raise ConfigError(f"{ARCHIVE_URL_VARIABLE} must be a file URL on this host: file:///dir")
    return Path(unquote(parts.path))


def _bucket_and_prefix(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ConfigError(f"{ARCHIVE_URL_VARIABLE} must not carry credentials; use AWS_* variables")
    if not _BUCKET_NAME.fullmatch(parts.netloc) or parts.query or parts.fragment:
        raise ConfigError(f"{ARCHIVE_URL_VARIABLE} must name a bucket: s3://bucket[/prefix]")
    return parts.netloc, parts.path.strip("/")


def _s3_config(environ: Mapping[str, str]) -> S3Config:
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    config: S3Config = {"region": region, "virtual_hosted_style_request": True}
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        if urlsplit(endpoint).scheme not in ("http", "https") or not urlsplit(endpoint).hostname:
            raise ConfigError("AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL must be an http(s) URL")
        config["endpoint"] = endpoint.rstrip("/")
        config["virtual_hosted_style_request"] = False
    if key_id := environ.get("AWS_ACCESS_KEY_ID"):
        config["access_key_id"] = key_id
    if secret := environ.get("AWS_SECRET_ACCESS_KEY"):
        config["secret_access_key"] = secret
    if token := environ.get("AWS_SESSION_TOKEN"):
        config["session_token"] = token
    return config


def _obstore_s3(bucket: str, prefix: str, config: S3Config) -> ObstoreS3Store:
    client: ClientConfig = {"timeout": REQUEST_TIMEOUT, "connect_timeout": CONNECT_TIMEOUT}
    if config.get("endpoint", "").startswith("http://"):
        client["allow_http"] = True
    retry: RetryConfig = {"max_retries": 3, "retry_timeout": RETRY_TIMEOUT}
    try:
        return ObstoreS3Store(
            bucket, prefix=prefix or None, config=config, client_options=client, retry_config=retry
        )
    except (obstore_errors.BaseError, ValueError) as exc:
        reason = str(exc).partition("\n")[0]
        raise ConfigError(f"{ARCHIVE_URL_VARIABLE}: S3 store misconfigured: {reason}") from exc


def _s3_where(bucket: str, prefix: str, config: S3Config) -> str:
    endpoint = urlsplit(config.get("endpoint", ""))
    at = f"{endpoint.scheme}://{endpoint.hostname}" if endpoint.hostname else "AWS"
    if endpoint.port:
        at += f":{endpoint.port}"
    return f"s3://{bucket}/{prefix} at {at} ({config.get('region', DEFAULT_REGION)})"


def _key_parts(key: str) -> list[str]:
    parts = key.split("/")
    if "\0" in key or any(part in ("", ".", "..") for part in parts):
        raise StorageError("a key is a relative path without ., .. or //", reason="bad_key")
    return parts


def _stop(key: str, start: int, end: int | None, size: int) -> int:
    """Where a read of [start, end) stops: `end` clamped to the size."""
    stop = size if end is None else min(end, size)
    if start < 0 or start > stop:
        raise StorageError(f"range {start}-{end} outside {size} bytes", reason="bad_range", key=key)
    return stop


def make_s3_spool_dir(path: Path) -> None:
    """An S3 store's spool (`TASKLEDGER_ARCHIVE_SPOOL_DIR`), made if missing; one that cannot
    be (under a file, not this user's) is a `ConfigError` in one line."""
    try:
        _make_spool_dir(path)
    except OSError as exc:
        raise ConfigError(
            f"{SPOOL_DIR_VARIABLE}: cannot use {path} ({exc.strerror or exc})"
        ) from None


def _make_spool_dir(path: Path) -> None:
    path.mkdir(mode=SPOOL_MODE, parents=True, exist_ok=True)
    path.chmod(SPOOL_MODE)


def _move_into_place(source: Path, target: Path, root: Path) -> None:
    """Rename `source` to `target` durably; keep a target of the same size (same content)."""
    if target.exists() and target.stat().st_size == source.stat().st_size:
        source.unlink()
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    _fsync(source, os.O_RDONLY)
    os.replace(source, target)
    for directory in (target.parent, *target.parent.parents):
        _fsync(directory, os.O_RDONLY | os.O_DIRECTORY)
        if directory == root:
            break


def _fsync(path: Path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def _spool_errors(key: str) -> Iterator[None]:
    """Errors about the spool file being stored: never NotStored, the source is at fault."""
    try:
        yield
    except OSError as exc:
        raise StorageError(f"spool file for {key}: {exc.strerror}", reason="io_error") from exc


@contextmanager
def _os_errors(key: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError as exc:
        raise NotStored(key) from exc
    except OSError as exc:
        raise StorageError(f"{key}: {exc.strerror}", reason="io_error", key=key) from exc


_OBSTORE_REASONS: dict[type[Exception], str] = {
    obstore_errors.PermissionDeniedError: "permission_denied",
    obstore_errors.UnauthenticatedError: "unauthenticated",
    obstore_errors.NotSupportedError: "unsupported",
}


@contextmanager
def _obstore_errors(key: str) -> Iterator[None]:
    try:
        yield
    except (FileNotFoundError, obstore_errors.NotFoundError) as exc:
        raise NotStored(key) from exc
    except (obstore_errors.BaseError, OSError, ValueError) as exc:
        reason = _OBSTORE_REASONS.get(type(exc), "backend_error")
        first_line = str(exc).partition("\n")[0][:300]
        raise StorageError(f"{key}: {first_line}", reason=reason, key=key) from exc
