"""Media bytes made from a seed: valid file structures, reproducible, made chunk by chunk."""

from __future__ import annotations

import struct
import zlib

import pytest

from simulator.files import CHUNK_BYTES, MIN_VIDEO_BYTES, Image, Video, head, pieces, sha256_of


def boxes(data: bytes) -> list[tuple[bytes, int]]:
    """The top-level ISO BMFF boxes of `data`: (type, size), checking they tile it exactly."""
    found, offset = [], 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        found.append((kind, size))
        offset += size
    assert offset == len(data)
    return found


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG, checking its signature and every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body)
        found.append((kind, body))
        offset += 12 + length
    return found


@pytest.mark.parametrize("size", [MIN_VIDEO_BYTES, 4096, 3 * CHUNK_BYTES + 5], ids=str)
def test_video_is_an_ftyp_box_then_an_mdat_box_filling_its_size(size: int) -> None:
    data = b"".join(Video("openai/v/video", size).chunks())
    assert data[4:12] == b"ftypisom"
    assert b"mp42" in data[16:24]
    assert [kind for kind, _ in boxes(data)] == [b"ftyp", b"mdat"]
    assert len(data) == size


def test_video_bytes_are_reproducible_and_differ_between_seeds() -> None:
    first, again = Video("apidot/t1/video", 9000), Video("apidot/t1/video", 9000)
    other = Video("apidot/t2/video", 9000)
    assert sha256_of(first) == sha256_of(again) != sha256_of(other)


def test_video_chunks_are_never_larger_than_a_chunk() -> None:
    sizes = [len(chunk) for chunk in Video("kie/t/video", 5 * CHUNK_BYTES).chunks()]
    assert max(sizes) == CHUNK_BYTES
    assert sum(sizes) == 5 * CHUNK_BYTES


def test_image_is_a_valid_png_of_its_dimensions() -> None:
    chunks = png_chunks(Image("openai/v/thumbnail", 64, 36).data)
    kinds = [kind for kind, _ in chunks]
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert (kinds[0], kinds[-1]) == (b"IHDR", b"IEND")
    assert (width, height, depth, colour) == (64, 36, 8, 2)
    assert len(pixels) == 36 * (1 + 3 * 64)


def test_pieces_and_head_cut_without_changing_the_bytes() -> None:
    chunks = [b"abcdefg", b"hij"]
    assert list(pieces(chunks, 3)) == [b"abc", b"def", b"g", b"hij"]
    assert b"".join(head(chunks, 8)) == b"abcdefgh"
