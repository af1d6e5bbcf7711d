"""JSON from outside, read as the ledger can keep it."""

from __future__ import annotations

from typing import Any

import orjson

# JSON's only spelling of NUL in a string, and what it is read as: PostgreSQL keeps no NUL
# in text, and one such value refused the write of a whole batch of callbacks.
NUL_ESCAPE = b"\\u0000"
_NUL_ESCAPE_TEXT = NUL_ESCAPE.decode()
NUL_READ_AS = "\ufffd"


def storable_text(text: str) -> str:
    """`text` with each NUL read as U+FFFD, as the ledger can keep it."""
    return text.replace("\0", NUL_READ_AS)


def holds_nul_escape(content: bytes | str) -> bool:
    """Whether JSON text may hold a NUL: it spells out `\\u0000` somewhere."""
    if isinstance(content, str):
        return _NUL_ESCAPE_TEXT in content
    return NUL_ESCAPE in content


def storable_json(content: bytes | str) -> Any:
    """`orjson.loads`, with each NUL in a string (a key too) read as U+FFFD, as both
    databases can store it. Only a body that spells one out is walked for it."""
    value = orjson.loads(content)
    return without_nul(value) if holds_nul_escape(content) else value


def without_nul(value: Any) -> Any:
    """Parsed JSON with each NUL in its strings, keys included, replaced by U+FFFD (lists
    and objects changed in place): call it only when the text spelled one out."""
    if isinstance(value, str):
        return storable_text(value)
    containers = [value]
    while containers:  # by hand, not by recursion: JSON nests up to 1,024 levels
        node = containers.pop()
        if isinstance(node, dict):
            for key in [key for key in node if "\0" in key]:
                node[key.replace("\0", NUL_READ_AS)] = node.pop(key)
            pairs: Any = node.items()
        elif isinstance(node, list):
            pairs = enumerate(node)
        else:
            continue
        for place, item in list(pairs):
            if isinstance(item, str):
                if "\0" in item:
                    node[place] = item.replace("\0", NUL_READ_AS)
            elif isinstance(item, dict | list):
                containers.append(item)
    return value
