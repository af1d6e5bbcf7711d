"""A definition's fields are read on the hot path by readers made once per field: they read
exactly what `Field.read` and `FieldPath.read` read, whatever the body."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from schemas.fieldpath import Field, FieldPath
from schemas.wire.defined import _read

KEYS = st.sampled_from(["data", "task_id", "status", "files", "file_url", "output"])
JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3) | st.just([]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
SUFFIXES = st.sampled_from(["", "", "", "[]", "[0]"])
PATHS = st.lists(st.tuples(KEYS, SUFFIXES), min_size=1, max_size=3).map(
    lambda parts: ".".join(key + suffix for key, suffix in parts)
)


@given(body=JSON, text=PATHS)
def test_a_path_reads_as_field_path_read_does(body: Any, text: str) -> None:
    path = FieldPath.parse(text)
    assert _read(path, body) == path.read(body)


@given(body=JSON, texts=st.lists(PATHS, min_size=1, max_size=3), union=st.booleans())
def test_a_field_reads_as_field_read_does(body: Any, texts: list[str], union: bool) -> None:
    field = Field.of({"all": texts} if union else texts)
    assert _read(field, body) == field.read(body)


def test_a_field_the_definition_does_not_name_reads_as_absent() -> None:
    assert _read(Field(()), {"data": {"task_id": "t"}}) is None
