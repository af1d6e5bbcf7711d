"""Field paths: where a value sits in a provider's JSON, as a definition file writes it."""

from __future__ import annotations

import pytest

from schemas.fieldpath import Field, FieldPath, PathError

BODY = {
    "code": 200,
    "data": {
        "taskId": "task_1",
        "files": [{"file_url": "https://a"}, {"file_url": "https://b"}, {"other": 1}],
        "resultJson": '{"resultUrls": ["https://r"]}',
        "resultObject": {"resultUrls": ["https://o"]},
        "broken": "{not json",
        "state": "success",
        "progress": None,
    },
}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("code", 200),
        ("data.taskId", "task_1"),
        ("data.files[].file_url", ["https://a", "https://b"]),
        ("data.files[1].file_url", "https://b"),
        ("data.files[7].other", None),
        ("data.resultJson|json.resultUrls[]", ["https://r"]),
        ("data.broken|json.x", None),
        ("data.resultObject|json.resultUrls[]", ["https://o"]),
        ("data.progress|json", None),
        ("$", BODY),
        ("data.missing.deeper", None),
        ("data.taskId.deeper", None),
        ("data.progress", None),
    ],
)
def test_a_path_reads_its_value_or_none(path: str, value: object) -> None:
    assert FieldPath.parse(path).read(BODY) == value


def test_the_first_path_that_holds_a_value_wins() -> None:
    field = Field.of(["id", "data.task_id", "data.taskId"])
    assert field.read(BODY) == "task_1"
    assert field.read({"id": "x", "data": {"taskId": "y"}}) == "x"


def test_an_empty_list_counts_as_absent() -> None:
    assert Field.of(["data.none[]", "data.files[].file_url"]).read(
        {"data": {"none": [], "files": [{"file_url": "u"}]}}
    ) == ["u"]


@pytest.mark.parametrize("path", ["", "a..b", "a[x]", "a|yaml", "[", "a]"])
def test_a_path_that_cannot_be_read_is_refused_naming_it(path: str) -> None:
    with pytest.raises(PathError):
        FieldPath.parse(path)


def test_a_body_that_is_not_an_object_reads_as_absent() -> None:
    assert FieldPath.parse("data.taskId").read(["data"]) is None
