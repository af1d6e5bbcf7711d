"""Deterministic media bytes: an ISO BMFF video and PNG images, made chunk by chunk from a seed.

The same seed and size always give the same bytes (so the same SHA-256), and a video of any
size is generated as it is read: it never sits whole in memory.
"""

from __future__ import annotations

import hashlib
import random
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

CHUNK_BYTES = 64 * 1024
# `ftyp` first: major brand isom, minor version 0x200, compatible brands isom and mp42.
FTYP = struct.pack(">I4s4sI4s4s", 24, b"ftyp", b"isom", 0x200, b"isom", b"mp42")
MDAT_HEADER_BYTES = 8
MIN_VIDEO_BYTES = len(FTYP) + MDAT_HEADER_BYTES
MAX_VIDEO_BYTES = len(FTYP) + 2**32 - 1  # the `mdat` box's size is 32 bits
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Blob(Protocol):
    """A file's bytes, read as chunks."""

    @property
    def content_type(self) -> str: ...

    @property
    def size(self) -> int: ...

    def chunks(self) -> Iterator[bytes]: ...


@dataclass(frozen=True)
class Video:
    """An MP4: an `ftyp` box, then one `mdat` box of seeded bytes filling `size`.

    It need not play; each `CHUNK_BYTES` block of the `mdat` payload comes from a generator
    seeded by `seed` and the block's index, so any chunk can be made on its own.
    """

    seed: str
    size: int
    content_type: str = "video/mp4"

    def chunks(self) -> Iterator[bytes]:
        payload = self.size - MIN_VIDEO_BYTES
        yield FTYP + struct.pack(">I4s", payload + MDAT_HEADER_BYTES, b"mdat")
        for start in range(0, payload, CHUNK_BYTES):
            block = random.Random(f"{self.seed}/{start // CHUNK_BYTES}").randbytes(CHUNK_BYTES)
            yield block[: payload - start]


@dataclass(frozen=True)
class Image:
    """A PNG of `width` x `height` seeded RGB pixels (small: made whole, in one chunk)."""

    seed: str
    width: int
    height: int
    content_type: str = "image/png"

    @cached_property
    def data(self) -> bytes:
        return png(self.seed, self.width, self.height)

    @property
    def size(self) -> int:
        return len(self.data)

    def chunks(self) -> Iterator[bytes]:
        yield self.data


def png(seed: str, width: int, height: int) -> bytes:
    """A valid 8-bit RGB PNG whose pixels are drawn from `seed`."""
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(3 * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            png_chunk(b"IHDR", header),
            png_chunk(b"IDAT", zlib.compress(rows, 9)),
            png_chunk(b"IEND", b""),
        )
    )


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def sha256_of(blob: Blob) -> str:
    """The hex SHA-256 of all of `blob`'s bytes, read chunk by chunk."""
    digest = hashlib.sha256()
    for chunk in blob.chunks():
        digest.update(chunk)
    return digest.hexdigest()


def pieces(chunks: Iterable[bytes], max_bytes: int) -> Iterator[bytes]:
    """The same bytes as `chunks`, cut so no piece is longer than `max_bytes`."""
    for chunk in chunks:
        for start in range(0, len(chunk), max_bytes):
            yield chunk[start : start + max_bytes]


def head(chunks: Iterable[bytes], limit: int) -> Iterator[bytes]:
    """The first `limit` bytes of `chunks`, then nothing."""
    left = limit
    for chunk in chunks:
        if left <= 0:
            return
        yield chunk[:left]
        left -= len(chunk)
