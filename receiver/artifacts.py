"""A task's archived outputs over HTTP: their list, and each file streamed from the archive
store with Range and ETag (or redirected to a presigned URL); plus the short-lived media
tokens that let a `<video>` element, which cannot send a bearer token, fetch one file.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from itsdangerous import BadData, TimestampSigner, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from receiver import contract
from receiver.admin import artifact_json, task_ref, visible_task
from receiver.auth import authenticate, authorize
from receiver.errors import NotFound, Overloaded, ReceiverError, Unauthenticated
from receiver.openapi import ERROR
from schemas.media.sniff import extension
from schemas.media.storage import ArchiveStore, StorageError, open_store
from schemas.settings import Settings
from schemas.store import Artifact, ArtifactState, LedgerStore
from schemas.store.keys import KeyScope

log = structlog.get_logger("taskledger.receiver")

MEDIA_TOKEN_MAX_AGE_SECONDS = 3600
MEDIA_SALT = "taskledger.artifact.media"
MEDIA_QUERY_NAME = "token"
# Content-addressed (its ETag is its SHA-256): a file at one address never changes.
FILE_CACHE_CONTROL = "private, max-age=31536000, immutable"
# A file opened straight in the browser runs nothing (no script, no plugin, no fetch),
# while the browser's own viewer of a video or an image still loads the file itself.
FILE_CSP = "default-src 'none'; media-src 'self'; img-src 'self'; style-src 'unsafe-inline'"
INLINE_FAMILIES = ("video/", "image/", "audio/")
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_RANGE_DIGITS_MAX = 18  # past this many digits a position is past any file


class ArchiveUnavailable(Overloaded):
    """The archive store failed to answer (or holds nothing where the ledger says it does)."""

    reason = "archive_unavailable"


class RangeNotSatisfiable(ReceiverError):
    """The one range asked for starts past the end of the file."""

    status_code, reason = 416, "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"the file has {size} bytes")
        self.size = size


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes [start, stop) of a file."""

    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True, slots=True)
class StoredFile:
    """What the ledger says an archived artifact is, and where the store keeps it."""

    task_ref: str
    name: str
    key: str
    size: int
    sha256: str
    content_type: str
    archived_at: datetime

    @classmethod
    def of(cls, artifact: Artifact) -> StoredFile:
        a = artifact
        if not (a.storage_key and a.size is not None and a.sha256 and a.archived_at):
            raise ArchiveUnavailable("the ledger's record of this file is incomplete")
        media_type = a.content_type or "application/octet-stream"
        return cls(a.task_ref, a.name, a.storage_key, a.size, a.sha256, media_type, a.archived_at)

    def log(self, event: str, **fields: Any) -> None:
        log.warning(event, task_ref=self.task_ref, output=self.name, **fields)

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'

    @property
    def last_modified(self) -> str:
        return format_datetime(self.archived_at.replace(microsecond=0), usegmt=True)


# -- the store -------------------------------------------------------------------


def open_archive(settings: Settings, environ: Mapping[str, str]) -> ArchiveStore | None:
    """The archive's store, None when the archive is off; a bad URL is a `ConfigError`."""
    archive = settings.archive
    if not archive.enabled:
        return None
    return open_store(archive.url, environ, spool_dir=Path(archive.spool_dir))


# -- media tokens ----------------------------------------------------------------


class _ClockedSigner(TimestampSigner):
    """A `TimestampSigner` that reads the app's clock instead of `time.time()`."""

    def __init__(self, secret_key: Any, *, clock: Callable[[], datetime], **kwargs: Any) -> None:
        super().__init__(secret_key, **kwargs)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock().timestamp())


class MediaTokens:
    """Signed, timed tokens that open one artifact (a task ref and an output name) for
    reading, keyed by the admin token: a new admin token ends every media token too."""

    def __init__(self, secret: str, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._serializer: URLSafeTimedSerializer = URLSafeTimedSerializer(
            secret, salt=MEDIA_SALT, signer=_ClockedSigner, signer_kwargs={"clock": clock}
        )

    def make(self, ref: str, name: str) -> str:
        return str(self._serializer.dumps([ref, name]))

    def expires_at(self) -> datetime:
        return self._clock() + timedelta(seconds=MEDIA_TOKEN_MAX_AGE_SECONDS)

    def opens(self, token: str, ref: str, name: str) -> bool:
        """True when `token` is unexpired and was made for exactly this artifact."""
        try:
            scope = self._serializer.loads(token, max_age=MEDIA_TOKEN_MAX_AGE_SECONDS)
        except BadData:
            return False
        return bool(scope == [ref, name])


def media_tokens(request: Request) -> MediaTokens | None:
    settings: Settings = request.app.state.settings
    if not settings.admin_token:
        return None
    return MediaTokens(settings.admin_token, request.app.state.inbox.clock)


# -- the list --------------------------------------------------------------------


async def list_artifacts(request: Request) -> Response:
    """`GET /v1/tasks/{ref}/artifacts`: a JSON list of the task's outputs; an archived one
    has a `url` carrying a media token (valid `MEDIA_TOKEN_MAX_AGE_SECONDS`)."""
    principal = await authorize(request, KeyScope.READ)
    ref = task_ref(request)
    if principal.owner is not None:
        await visible_task(request, principal, ref)
    store: LedgerStore = request.app.state.store
    found = await store.artifacts(ref)
    if not found and await store.get(ref) is None:
        raise NotFound("no task has this ref", task_ref=ref)
    tokens = media_tokens(request)
    return JSONResponse([_listed(request, artifact, tokens) for artifact in found])


def _listed(
    request: Request, artifact: Artifact, tokens: MediaTokens | None
) -> contract.ListedArtifact:
    shown = contract.ListedArtifact(**artifact_json(artifact), url=None, url_expires_at=None)
    if artifact.state != ArtifactState.ARCHIVED:
        return shown
    settings: Settings = request.app.state.settings
    path = f"/v1/tasks/{quote(artifact.task_ref, safe='')}/artifacts/{quote(artifact.name)}"
    url = settings.public_base_url + path
    if tokens is not None:
        url += f"?{MEDIA_QUERY_NAME}={tokens.make(artifact.task_ref, artifact.name)}"
        shown["url_expires_at"] = tokens.expires_at().isoformat()
    shown["url"] = url
    return shown


# -- one file --------------------------------------------------------------------


async def serve_artifact(request: Request) -> Response:
    """`GET`/`HEAD /v1/tasks/{ref}/artifacts/{name}`: the archived file.

    200 the whole file, 206 one range, 416 a range past its end, 304 for a matching
    `If-None-Match`, 307 to a presigned URL (S3 with `TASKLEDGER_ARCHIVE_PRESIGN`), 404 for
    an unknown task or name, 409 for an output that is not archived (the answer names its
    state and last error: it exists, but there is nothing to serve), 503 when the store
    fails. Authorized by the admin token, the dashboard's session, or the `token` query
    parameter of the artifact list's `url` (that artifact only).
    """
    ref, name = task_ref(request), request.path_params["name"]
    await _authorize(request, ref, name)
    artifact = await _artifact(request, ref, name)
    if artifact.state != ArtifactState.ARCHIVED:
        return _not_archived(artifact)
    media = _media(request)
    stored = StoredFile.of(artifact)
    headers = _file_headers(ref, name, stored)
    if _none_match(request.headers.get("if-none-match"), stored.etag):
        return Response(status_code=304, headers=headers)
    if request.method == "GET" and (url := await _presigned(request, media, stored)):
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    if request.method == "HEAD":
        await _check_stored(media, stored)
        return _head(stored, headers)
    return await _get(request, media, stored, headers)


async def _authorize(request: Request, ref: str, name: str) -> None:
    """A principal that sees the task (another owner's task is a 404), or this artifact's
    media token."""
    principal = await authenticate(request)
    if principal is not None:
        if principal.owner is not None:
            await visible_task(request, principal, ref)
        return
    offered = request.query_params.get(MEDIA_QUERY_NAME)
    tokens = media_tokens(request)
    if offered and tokens is not None and tokens.opens(offered, ref, name):
        return
    raise Unauthenticated("a valid bearer token or this artifact's media token is required")


async def _artifact(request: Request, ref: str, name: str) -> Artifact:
    store: LedgerStore = request.app.state.store
    found = await store.artifacts(ref)
    for artifact in found:
        if artifact.name == name:
            return artifact
    if not found and await store.get(ref) is None:
        raise NotFound("no task has this ref", task_ref=ref)
    raise NotFound(f"the task has no output named {name!r}", task_ref=ref)


def _not_archived(artifact: Artifact) -> Response:
    why = f": {artifact.last_error}" if artifact.last_error else ""
    body = {
        "error": "not_archived",
        "message": f"output {artifact.name} is {artifact.state}, not archived{why}",
        "state": artifact.state,
        "last_error": artifact.last_error,
    }
    return JSONResponse(body, status_code=409)


def _media(request: Request) -> ArchiveStore:
    media: ArchiveStore | None = request.app.state.media
    if media is None:
        raise ArchiveUnavailable("the archive is off in this process (TASKLEDGER_ARCHIVE_URL)")
    return media


def _file_headers(ref: str, name: str, stored: StoredFile) -> dict[str, str]:
    inline = stored.content_type.startswith(INLINE_FAMILIES) and "svg" not in stored.content_type
    filename = _FILENAME_UNSAFE.sub("_", f"{ref}-{name}") + extension(stored.content_type)
    return {
        "Accept-Ranges": "bytes",
        "ETag": stored.etag,
        "Last-Modified": stored.last_modified,
        "Cache-Control": FILE_CACHE_CONTROL,
        "Content-Type": stored.content_type,
        "Content-Disposition": f'{"inline" if inline else "attachment"}; filename="{filename}"',
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": FILE_CSP,
    }


async def _presigned(request: Request, media: ArchiveStore, stored: StoredFile) -> str | None:
    settings: Settings = request.app.state.settings
    if media.kind != "s3" or not settings.archive.presign:
        return None
    with _store_errors(stored):
        return await media.presign(stored.key, settings.archive.presign_seconds)


async def _check_stored(media: ArchiveStore, stored: StoredFile) -> None:
    """The store holds the file the ledger recorded (by its size: a HEAD reads no bytes)."""
    with _store_errors(stored):
        size = await media.size(stored.key)
    if size != stored.size:
        stored.log("artifact_store_differs", size=size, recorded_size=stored.size)
        raise ArchiveUnavailable("the archive store holds another file than the ledger recorded")


def _head(stored: StoredFile, headers: dict[str, str]) -> Response:
    return Response(headers={**headers, "Content-Length": str(stored.size)})


async def _get(
    request: Request, media: ArchiveStore, stored: StoredFile, headers: dict[str, str]
) -> Response:
    whole = Span(0, stored.size)
    span: Span | None = None
    if _range_applies(request.headers.get("if-range"), stored):
        try:
            span = requested_span(request.headers.get("range"), stored.size)
        except RangeNotSatisfiable as exc:
            return _unsatisfiable(exc)
    if span is None:
        return await _stream(media, stored, whole, 200, headers)
    content_range = f"bytes {span.start}-{span.stop - 1}/{stored.size}"
    return await _stream(media, stored, span, 206, {**headers, "Content-Range": content_range})


def _unsatisfiable(exc: RangeNotSatisfiable) -> Response:
    body = {"error": exc.reason, "message": exc.message}
    return JSONResponse(body, status_code=416, headers={"Content-Range": f"bytes */{exc.size}"})


async def _stream(
    media: ArchiveStore, stored: StoredFile, span: Span, status: int, headers: dict[str, str]
) -> Response:
    """Stream `span` of the file; the first chunk is read before answering, so that a store
    that cannot serve it gets a 503 rather than a truncated 200."""
    chunks = media.read(stored.key, span.start, span.stop)
    with _store_errors(stored):
        first = await anext(chunks, b"")
    headers = {**headers, "Content-Length": str(span.length)}
    return StreamingResponse(_rest(first, chunks, stored), status_code=status, headers=headers)


async def _rest(
    first: bytes, chunks: AsyncIterator[bytes], stored: StoredFile
) -> AsyncIterator[bytes]:
    """The file's chunks from the first on; a failure midway is logged and re-raised, which
    makes the server drop the connection (the client sees a short body, never a whole one)."""
    try:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk
    except StorageError as exc:
        stored.log("artifact_read_failed", reason=exc.reason)
        raise
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


@contextmanager
def _store_errors(stored: StoredFile) -> Iterator[None]:
    """The store's errors as a 503 (`ArchiveUnavailable`), logged once."""
    try:
        yield
    except StorageError as exc:
        stored.log("artifact_store_failed", reason=exc.reason)
        message = f"the archive store cannot serve this file ({exc.reason})"
        raise ArchiveUnavailable(message) from exc


# -- conditional and range requests (RFC 9110) -----------------------------------


def requested_span(header: str | None, size: int) -> Span | None:
    """The one byte range `header` asks for, clamped to the file; None for the whole file:
    no header, one not understood, or several ranges (RFC 9110 lets a server answer those
    whole). Raises `RangeNotSatisfiable` when the range starts past the end."""
    unit, _, spec = (header or "").partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not _digits(first, last) or (not first and not last):
        return None
    if not first:
        suffix = _position(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return Span(max(0, size - suffix), size)
    start = _position(first)
    if last and _position(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(size)
    return Span(start, min(_position(last) + 1, size) if last else size)


def _digits(*parts: str) -> bool:
    return all(part == "" or (part.isascii() and part.isdigit()) for part in parts)


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= _RANGE_DIGITS_MAX else 10**_RANGE_DIGITS_MAX


def _none_match(header: str | None, etag: str) -> bool:
    """`If-None-Match` matches (weak comparison): the client's copy is this one."""
    if header is None:
        return False
    offered = [tag.strip() for tag in header.split(",")]
    return "*" in offered or etag in [tag.removeprefix("W/") for tag in offered]


def _range_applies(header: str | None, stored: StoredFile) -> bool:
    """`If-Range`: the range is served only if the client's validator is still current
    (an entity tag compared strongly, or the exact `Last-Modified` date)."""
    if header is None:
        return True
    value = header.strip()
    if value.startswith(('"', "W/")):
        return value == stored.etag
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return False
    return when.tzinfo is not None and when == stored.archived_at.replace(microsecond=0)


# -- the OpenAPI description -----------------------------------------------------


def _described(*codes: tuple[int, str]) -> dict[str, Any]:
    error = {"application/json": {"schema": ERROR}}
    return {str(code): {"description": what, "content": error} for code, what in codes}


def _parameters(*names: tuple[str, str, bool]) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": where, "required": required, "schema": {"type": "string"}}
        for name, where, required in names
    ]


_REFUSED = ((401, "not authenticated"), (404, "unknown task or output"), (503, "store failed"))
_LISTED = contract.ref(contract.ListedArtifact)
OPENAPI_PATHS: dict[str, Any] = {
    "/v1/tasks/{ref}/artifacts": {
        "get": {
            "summary": "A task's outputs and their archive state; archived ones have a media URL",
            "security": [{"bearer": []}],
            "parameters": _parameters(("ref", "path", True)),
            "responses": {
                "200": {
                    "description": "the outputs",
                    "content": {
                        "application/json": {
                            "schema": {"type": "array", "items": _LISTED},
                        }
                    },
                },
                **_described(*_REFUSED),
            },
        }
    },
    "/v1/tasks/{ref}/artifacts/{name}": {
        "get": {
            "summary": "An archived output (Range, If-None-Match, If-Range; or a media token)",
            "security": [{"bearer": []}, {}],
            "parameters": _parameters(
                ("ref", "path", True), ("name", "path", True), ("token", "query", False)
            ),
            "responses": {
                "200": {"description": "the whole file", "content": {"video/*": {}, "image/*": {}}},
                "206": {"description": "one byte range (Content-Range)"},
                "304": {"description": "If-None-Match matches: the client's copy is current"},
                "307": {"description": "to a presigned URL (an S3 archive with presign on)"},
                **_described(
                    *_REFUSED,
                    (409, "not archived (pending, failed, missed, pruned): its state and error"),
                    (416, "range past the end (Content-Range: bytes */size)"),
                ),
            },
        }
    },
}
