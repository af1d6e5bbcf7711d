"""Sniffing: the media type a file's first bytes prove, from minimal but valid headers."""

from __future__ import annotations

import struct
import zlib

import pytest

from schemas.media.sniff import SNIFF_BYTES, extension, sniff


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    """An ISO base media `ftyp` box followed by the start of an `mdat` box."""
    body = major + b"\x00\x00\x02\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\x00\x00\x00\x08mdat"


def png() -> bytes:
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(header))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
GIF87 = b"GIF87a\x01\x00\x01\x00\x80\x00\x00"
GIF89 = b"GIF89a\x01\x00\x01\x00\x80\x00\x00"
WEBP = b"RIFF" + struct.pack("<I", 26) + b"WEBPVP8 " + struct.pack("<I", 14) + b"\x00" * 14
# EBML header: version 1, read version 1, max id 4, max size 8, DocType.
EBML = bytes.fromhex("1a45dfa3 9f 4286 81 01 42f7 81 01 42f2 81 04 42f3 81 08 4282")


def webm(doctype: bytes) -> bytes:
    return EBML + bytes([0x80 | len(doctype)]) + doctype + b"\x42\x87\x81\x04"


KNOWN = {
    "mp4-isom": (ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41"), "video/mp4"),
    "mp4-mp41": (ftyp(b"mp41", b"mp41", b"isom"), "video/mp4"),
    "mp4-mp42": (ftyp(b"mp42", b"mp42", b"isom"), "video/mp4"),
    "mp4-avc1": (ftyp(b"avc1", b"isom"), "video/mp4"),
    "m4v": (ftyp(b"M4V ", b"M4V ", b"M4A ", b"mp42", b"isom"), "video/mp4"),
    "quicktime": (ftyp(b"qt  ", b"qt  "), "video/quicktime"),
    "avif": (ftyp(b"avif", b"avif", b"mif1", b"miaf"), "image/avif"),
    "avif-as-mif1": (ftyp(b"mif1", b"mif1", b"avif", b"miaf"), "image/avif"),
    "heic": (ftyp(b"heic", b"mif1", b"heic"), "image/heic"),
    "heic-as-mif1": (ftyp(b"mif1", b"mif1", b"heic"), "image/heic"),
    "webm": (webm(b"webm"), "video/webm"),
    "matroska": (webm(b"matroska"), "video/webm"),
    "png": (png(), "image/png"),
    "jpeg": (JPEG, "image/jpeg"),
    "gif87a": (GIF87, "image/gif"),
    "gif89a": (GIF89, "image/gif"),
    "webp": (WEBP, "image/webp"),
}
HTML_ERROR = b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body>AccessDenied"
UNKNOWN = {
    "empty": b"",
    "html-error-page": HTML_ERROR,
    "xml-error": b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>',
    "json": b'{"error": "expired"}',
    "text": b"video not found",
    "zeros": bytes(SNIFF_BYTES),
    "ftyp-at-offset-0": b"ftypisom" + bytes(24),
    "ftyp-size-too-small": struct.pack(">I", 8) + b"ftypisom" + bytes(20),
    "ftyp-size-huge": struct.pack(">I", 0xFFFF_FFF0) + b"ftypisom" + bytes(20),
    "ftyp-size-unaligned": struct.pack(">I", 21) + b"ftypisom" + bytes(20),
    "ftyp-cut-short": ftyp(b"isom")[:12],
    "riff-wave": b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + bytes(20),
    "png-cut-short": png()[:4],
    "gif-other-version": b"GIF90a\x01\x00",
}


@pytest.mark.parametrize(("head", "media_type"), KNOWN.values(), ids=KNOWN.keys())
def test_sniff_names_the_format_the_bytes_prove(head: bytes, media_type: str) -> None:
    assert sniff(head[:SNIFF_BYTES]) == media_type


@pytest.mark.parametrize("head", UNKNOWN.values(), ids=UNKNOWN.keys())
def test_sniff_names_nothing_for_bytes_of_no_known_format(head: bytes) -> None:
    assert sniff(head) is None


def test_sniff_needs_no_more_than_sniff_bytes() -> None:
    head = ftyp(b"mif1", b"mif1", b"miaf", b"MA1B", b"heix") + bytes(100)
    assert sniff(head[:SNIFF_BYTES]) == "image/heic"


@pytest.mark.parametrize(
    ("media_type", "suffix"),
    [
        ("video/mp4", ".mp4"),
        ("video/quicktime", ".mov"),
        ("video/webm", ".webm"),
        ("image/png", ".png"),
        ("image/jpeg", ".jpg"),
        ("image/gif", ".gif"),
        ("image/webp", ".webp"),
        ("image/avif", ".avif"),
        ("image/heic", ".heic"),
        ("Video/MP4; codecs=avc1", ".mp4"),
        ("application/octet-stream", ".bin"),
    ],
    ids=lambda value: str(value),
)
def test_extension_for_media_type(media_type: str, suffix: str) -> None:
    assert extension(media_type) == suffix


def test_every_sniffed_type_has_its_own_extension() -> None:
    assert all(extension(media_type) != ".bin" for _, media_type in KNOWN.values())
