"""Each succeeded task's media: its files, their signed URLs that expire, the fault their
downloads suffer, and the ground truth of all three.

A task's files expire `media_ttl_s` after it ended (`expires_at`, whole unix seconds). A file's
URL is `{base}/{fmt}/{task_id}.{ext}?expires=<unix>&sig=<hex HMAC-SHA256>`, the base being the
simulator's own `{server}/media` as the task's submitter reached it (unless configured).
OpenAI's files have no URL: its content endpoint serves them to the API key.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from simulator.config import Faults, SimConfig
from simulator.files import Blob, Image, Video, sha256_of
from simulator.lifecycle import SimTask

MEDIA_PATH = "/media"
FALLBACK_SERVER = "http://simulator.invalid"  # for a task submitted in process, not over HTTP
VIDEO, THUMBNAIL, SPRITESHEET = "video", "thumbnail", "spritesheet"
IMAGE_PIXELS = {THUMBNAIL: (64, 36), SPRITESHEET: (96, 54)}
# Formats whose media an API endpoint serves (with more than a video) instead of URLs.
CONTENT_FORMATS = ("openai",)
# Where a redirect fault points: the simulator's port on another loopback address, and the
# cloud metadata service. A downloader must follow neither.
REDIRECT_TARGETS = (
    "http://127.0.0.2:{port}/_sim/truth",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
)


@dataclass(frozen=True)
class MediaLinks:
    """What result bodies say of a task's media: its signed URL, its expiry, the video's size."""

    key: bytes
    ttl_s: int = 3600
    base_url: str | None = None
    video_bytes: int = 4096

    def expires_at(self, task: SimTask) -> int:
        return int(task.schedule.terminal_at) + self.ttl_s

    def url(self, task: SimTask, extension: str = "mp4", expires: int | None = None) -> str:
        """The signed URL of a task's file, valid until `expires` (default: its expiry)."""
        base = self.base_url or f"{task.server or FALLBACK_SERVER}{MEDIA_PATH}"
        name = f"{task.fmt}/{task.task_id}.{extension}"
        until = self.expires_at(task) if expires is None else expires
        query = urlencode({"expires": until, "sig": self.sign(name, until)})
        return f"{base.rstrip('/')}/{name}?{query}"

    def sign(self, name: str, expires: int) -> str:
        return hmac.new(self.key, f"{name}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def verify(self, name: str, expires: str, sig: str) -> int | None:
        """The expiry that `sig` signs for `name` (`{fmt}/{file name}`), or None if it does not."""
        try:
            until = int(expires)
        except ValueError:
            return None
        expected = self.sign(name, until).encode()
        return until if hmac.compare_digest(expected, sig.encode()) else None

    def read(self, url: str) -> tuple[str, str, int] | None:
        """`(fmt, file name, expires)` of a signed media URL (of any base), else None."""
        parts = urlsplit(url)
        segments = parts.path.split("/")
        if len(segments) < 3:
            return None
        fmt, name = segments[-2:]
        query = parse_qs(parts.query)
        expires, sig = query.get("expires", [""])[0], query.get("sig", [""])[0]
        until = self.verify(f"{fmt}/{name}", expires, sig)
        return None if until is None else (fmt, name, until)


@dataclass(frozen=True)
class MediaFile:
    """One of a task's files: `video`, `thumbnail` or `spritesheet`."""

    name: str
    extension: str
    blob: Blob


@dataclass(frozen=True)
class MediaFault:
    """What every download of a task's files suffers: `redirect` (to `location`),
    `truncated`, `error_500` (`failures` times per file) or `slow` (over `slow_s`)."""

    kind: str
    location: str = ""
    failures: int = 0
    slow_s: float = 0.0

    def as_dict(self, size: int) -> dict[str, Any]:
        """The fault as ground truth tells it, for a file of `size` bytes."""
        details: dict[str, dict[str, Any]] = {
            "redirect": {"location": self.location},
            "truncated": {"sent_bytes": truncated_bytes(size)},
            "error_500": {"failures": self.failures},
            "slow": {"seconds": self.slow_s},
        }
        return {"kind": self.kind, **details[self.kind]}


def truncated_bytes(size: int) -> int:
    """How much of a truncated file is sent: half."""
    return size // 2


def draw_fault(seed: int, task: SimTask, faults: Faults) -> MediaFault | None:
    """The fault of `task`'s media, drawn from a stream of its own (seeded by `seed` and the
    task's key): the same seed and task always draw the same fault under the same rates."""
    rng = random.Random(f"{seed}/media/{task.key}")
    if rng.random() < faults.media_redirect_rate:
        port = urlsplit(task.server).port or 80
        return MediaFault("redirect", location=rng.choice(REDIRECT_TARGETS).format(port=port))
    if rng.random() < faults.media_truncated_rate:
        return MediaFault("truncated")
    if rng.random() < faults.media_500_rate:
        return MediaFault("error_500", failures=faults.media_500_count)
    if rng.random() < faults.media_slow_rate:
        return MediaFault("slow", slow_s=faults.media_slow_s)
    return None


class Media:
    """The media of one simulator's tasks: their links, faults drawn, 500s answered, digests."""

    def __init__(self, config: SimConfig, key: bytes, faults: Callable[[], Faults]) -> None:
        self.links = MediaLinks(key, config.media_ttl_s, config.media_base_url, config.media_bytes)
        self._seed = config.seed
        self._faults = faults
        self._drawn: dict[str, MediaFault | None] = {}
        self._failed: Counter[str] = Counter()
        self._known: dict[Blob, tuple[int, str]] = {}  # each file's size and SHA-256

    def draw(self, task: SimTask) -> None:
        """Decide the fault of a new task's media under the faults in force now."""
        self._drawn[task.key] = draw_fault(self._seed, task, self._faults())

    def fault(self, task: SimTask) -> MediaFault | None:
        return self._drawn.get(task.key)

    def files(self, task: SimTask) -> list[MediaFile]:
        """A video; OpenAI's videos also have a thumbnail and a spritesheet."""
        files = [MediaFile(VIDEO, "mp4", Video(f"{task.key}/{VIDEO}", self.links.video_bytes))]
        if task.fmt in CONTENT_FORMATS:
            files += [
                MediaFile(name, "png", Image(f"{task.key}/{name}", *IMAGE_PIXELS[name]))
                for name in (THUMBNAIL, SPRITESHEET)
            ]
        return files

    def file(self, task: SimTask, name: str) -> MediaFile | None:
        return next((file for file in self.files(task) if file.name == name), None)

    def served(self, task: SimTask, extension: str, now: float) -> MediaFile | None:
        """The file a media URL names, once its task has succeeded (OpenAI's have no URL)."""
        if task.fmt in CONTENT_FORMATS or not succeeded(task, now):
            return None
        return next((file for file in self.files(task) if file.extension == extension), None)

    def fail_again(self, task: SimTask, file: MediaFile) -> bool:
        """Whether this download of `file` gets an injected 500 (each counts towards its
        fault's `failures`)."""
        fault, key = self.fault(task), f"{task.key}/{file.name}"
        if fault is None or fault.kind != "error_500" or self._failed[key] >= fault.failures:
            return False
        self._failed[key] += 1
        return True

    def url(self, task: SimTask, file: MediaFile) -> str:
        if task.fmt in CONTENT_FORMATS:
            return f"{task.endpoint}/v1/videos/{task.task_id}/content?variant={file.name}"
        return self.links.url(task, file.extension)

    def size_and_digest(self, blob: Blob) -> tuple[int, str]:
        if blob not in self._known:
            self._known[blob] = (blob.size, sha256_of(blob))
        return self._known[blob]

    async def digest_ahead(self, tasks: Sequence[SimTask]) -> None:
        """Hash the files of the succeeding `tasks` not hashed yet, in a worker thread (they
        may be large), so that `truth` need not."""
        succeeding = [task for task in tasks if task.schedule.outcome == "succeeded"]
        blobs = [file.blob for task in succeeding for file in self.files(task)]
        missing = list(dict.fromkeys(blob for blob in blobs if blob not in self._known))
        known = await asyncio.to_thread(lambda: [(blob.size, sha256_of(blob)) for blob in missing])
        self._known.update(zip(missing, known, strict=True))

    def truth(self, task: SimTask) -> list[dict[str, Any]]:
        """Each file a task that succeeds has: where, what, its SHA-256, expiry and fault."""
        if task.schedule.outcome != "succeeded":
            return []
        fault = self.fault(task)
        return [self._file_truth(task, file, fault) for file in self.files(task)]

    def _file_truth(
        self, task: SimTask, file: MediaFile, fault: MediaFault | None
    ) -> dict[str, Any]:
        size, sha256 = self.size_and_digest(file.blob)
        return {
            "name": file.name,
            "url": self.url(task, file),
            "content_type": file.blob.content_type,
            "size": size,
            "sha256": sha256,
            "expires_at": self.links.expires_at(task),
            "fault": fault.as_dict(size) if fault else None,
        }


def succeeded(task: SimTask, now: float) -> bool:
    return task.phase(now) == "terminal" and task.schedule.outcome == "succeeded"
