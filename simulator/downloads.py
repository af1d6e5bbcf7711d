"""Media downloads: `GET /media/{fmt}/{file}` for signed URLs, answering 403 to a bad signature
or once expired (as S3 and CloudFront do), and the answer any download gets, OpenAI's content
endpoint's too: the file streamed in chunks, or the fault its task's media suffers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from xml.sax.saxutils import escape

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from simulator.files import CHUNK_BYTES, Blob, head, pieces
from simulator.lifecycle import SimTask
from simulator.media import MEDIA_PATH, MediaFile, truncated_bytes
from simulator.simulation import Simulator

# Builds an error answer from a status code, an error code and a message.
ErrorAnswer = Callable[[int, str, str], Response]
SLOW_PIECES = 10  # a slow body comes in at least this many pieces, a pause after each


class MediaRoutes:
    """The signed media URLs, as an object store behind a CDN serves them."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def routes(self) -> list[BaseRoute]:
        return [Route(f"{MEDIA_PATH}/{{fmt}}/{{name}}", self.download, methods=["GET"])]

    async def download(self, request: Request) -> Response:
        """`?expires=&sig=` must sign `{fmt}/{name}` and not have passed; then the file."""
        counts = self.sim.counters.downloads
        fmt, name = request.path_params["fmt"], request.path_params["name"]
        query = request.query_params
        expires = self.sim.media.links.verify(
            f"{fmt}/{name}", query.get("expires", ""), query.get("sig", "")
        )
        if expires is None:
            counts["bad_signature"] += 1
            return s3_error(403, "SignatureDoesNotMatch", "The request signature is not valid.")
        now = self.sim.clock()
        if now >= expires:
            counts["expired"] += 1
            return s3_error(403, "AccessDenied", "Request has expired")
        task_id, _, extension = name.rpartition(".")
        task = self.sim.get(fmt, task_id)
        file = self.sim.media.served(task, extension, now) if task else None
        if task is None or file is None:
            counts["not_found"] += 1
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return answer(self.sim, task, file, s3_error)


def answer(sim: Simulator, task: SimTask, file: MediaFile, error: ErrorAnswer) -> Response:
    """A download of `file`, already allowed: its bytes streamed in chunks, unless its task's
    media fault answers otherwise."""
    faulted = fault_answer(sim, task, file, error)
    if faulted is not None:
        return faulted
    sim.counters.downloads["served"] += 1
    return streamed(file.blob, stream(file.blob.chunks()))


def fault_answer(
    sim: Simulator, task: SimTask, file: MediaFile, error: ErrorAnswer
) -> Response | None:
    """The answer the task's media fault gives this download, if it gives one."""
    fault, counts, blob = sim.media.fault(task), sim.counters.downloads, file.blob
    if fault is None:
        return None
    if fault.kind == "redirect":
        counts["redirected"] += 1
        return RedirectResponse(fault.location, 302)
    if fault.kind == "truncated":
        counts["truncated"] += 1
        return TruncatedResponse(head(blob.chunks(), truncated_bytes(blob.size)), blob)
    if fault.kind == "slow":
        counts["slow"] += 1
        return streamed(blob, trickle(blob, fault.slow_s))
    if sim.media.fail_again(task, file):
        counts["injected_500"] += 1
        return error(500, "InternalError", "We encountered an internal error. Please try again.")
    return None


def streamed(blob: Blob, chunks: AsyncIterator[bytes]) -> StreamingResponse:
    headers = {"content-length": str(blob.size)}
    return StreamingResponse(chunks, headers=headers, media_type=blob.content_type)


async def stream(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def trickle(blob: Blob, seconds: float) -> AsyncIterator[bytes]:
    """`blob` in pieces, each followed by a pause in proportion to its length: the whole body
    takes `seconds` to arrive."""
    piece_bytes = min(CHUNK_BYTES, max(1, -(-blob.size // SLOW_PIECES)))
    for piece in pieces(blob.chunks(), piece_bytes):
        yield piece
        await asyncio.sleep(seconds * len(piece) / blob.size)


class TruncatedResponse(Response):
    """Says `Content-Length` is all of `blob`, sends `chunks` (less), then never ends the body:
    the ASGI server closes the connection and the client sees a short body."""

    def __init__(self, chunks: Iterable[bytes], blob: Blob) -> None:
        self.chunks = chunks
        super().__init__(None, 200, {"content-length": str(blob.size)}, blob.content_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})


def s3_error(status_code: int, code: str, message: str) -> Response:
    """An error answer as S3 gives it: an XML `<Error>`."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
    )
    return Response(body, status_code, media_type="application/xml")
