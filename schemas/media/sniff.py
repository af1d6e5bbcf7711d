"""What a file's first bytes prove it is: the video and image formats providers return.

An HTML error page served as `video/mp4` proves nothing and is answered `None`.
"""

from __future__ import annotations

import struct

# How many leading bytes `sniff` looks at (enough for a `ftyp` box with a few brands).
SNIFF_BYTES = 64

# ISO base media files (MP4, QuickTime, AVIF, HEIC) open with a `ftyp` box: its size as a
# big-endian 32-bit number, `ftyp`, the major brand, a minor version, compatible brands.
_FTYP = b"ftyp"
_FTYP_MIN_BYTES = 16
_FTYP_MAX_BYTES = 4096
_QUICKTIME = b"qt  "
_HEIF_GENERIC = frozenset({b"mif1", b"msf1"})  # say "HEIF", the compatible brands say which
_IMAGE_BRANDS = {
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"heim": "image/heic",
    b"heis": "image/heic",
    b"hevc": "image/heic",
    b"hevx": "image/heic",
}
_AUDIO_BRANDS = frozenset({b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "})
# Formats recognised by a fixed signature at offset 0.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"\x1a\x45\xdf\xa3", "video/webm"),  # EBML: WebM or Matroska
)
_EXTENSIONS = {
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/avif": ".avif",
    "image/heic": ".heic",
    "image/heif": ".heif",
    "audio/mp4": ".m4a",
}
UNKNOWN_EXTENSION = ".bin"


def sniff(head: bytes) -> str | None:
    """The media type the first bytes of a file prove (`video/mp4`, `image/png`, ...), or
    `None` when they match no known format."""
    for signature, media_type in _SIGNATURES:
        if head.startswith(signature):
            return media_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return _iso_media(head)


def extension(media_type: str) -> str:
    """The file name extension for `media_type` (parameters ignored); `.bin` if unknown."""
    bare = media_type.split(";", 1)[0].strip().lower()
    return _EXTENSIONS.get(bare, UNKNOWN_EXTENSION)


def _iso_media(head: bytes) -> str | None:
    """The type an ISO base media `ftyp` box at the start of `head` names, if there is one."""
    if len(head) < _FTYP_MIN_BYTES or head[4:8] != _FTYP:
        return None
    (size,) = struct.unpack(">I", head[:4])
    if not _FTYP_MIN_BYTES <= size <= _FTYP_MAX_BYTES or size % 4:
        return None
    major = head[8:12]
    if major in _HEIF_GENERIC:
        return _heif(head[16:size])
    if major in _IMAGE_BRANDS:
        return _IMAGE_BRANDS[major]
    if major in _AUDIO_BRANDS:
        return "audio/mp4"
    return "video/quicktime" if major == _QUICKTIME else "video/mp4"


def _heif(compatible: bytes) -> str:
    """A generic HEIF file's type from its compatible brands (those within the head)."""
    brands = [compatible[at : at + 4] for at in range(0, len(compatible) - 3, 4)]
    for brand in brands:
        if brand in _IMAGE_BRANDS:
            return _IMAGE_BRANDS[brand]
    return "image/heif"
