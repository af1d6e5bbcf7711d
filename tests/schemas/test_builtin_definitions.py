"""The built-in definitions (schemas/providers/): what Replicate, fal and kie are sent, where
they are asked, and the format's parts they needed (`[submit] model/extra`, `body = "bare"`,
`{model}`/`{app}` paths, `[result]`, rules on a field)."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.definition import Definition, load_definition
from schemas.errors import ConfigError, WireFormatError
from schemas.settings import BUILTIN_PROVIDERS_DIR, builtin_definitions
from schemas.states import State
from schemas.wire import (
    build_submit_body,
    normalize_callback,
    normalize_result,
    result_path,
    status_path,
    submit_path,
)

FAL_MODEL = "fal-ai/veo3/fast"
REQUEST_ID = "764cabcf-b745-4b3e-ae38-1200304cf45b"


def kind(name: str) -> Definition:
    return builtin_definitions()[name]


def test_replicate_is_sent_its_version_input_webhook_and_events_filter() -> None:
    body = build_submit_body(
        kind("replicate"), "owner/name:abc", {"prompt": "a cat"}, "https://us/webhooks/replicate"
    )
    assert body == {
        "version": "owner/name:abc",
        "input": {"prompt": "a cat"},
        "webhook": "https://us/webhooks/replicate",
        "webhook_events_filter": ["start", "completed"],
    }


def test_fal_is_sent_the_bare_input_to_its_model_with_the_webhook_in_the_query() -> None:
    fal = kind("fal")
    assert build_submit_body(fal, FAL_MODEL, {"prompt": "a cat"}, "https://us/cb") == {
        "prompt": "a cat"
    }
    assert submit_path(fal, "https://us/cb/t", FAL_MODEL) == (
        "/fal-ai/veo3/fast?fal_webhook=https%3A%2F%2Fus%2Fcb%2Ft"
    )


def test_fal_status_and_result_paths_name_the_app_without_its_subpath() -> None:
    fal = kind("fal")
    assert status_path(fal, REQUEST_ID, FAL_MODEL) == f"/fal-ai/veo3/requests/{REQUEST_ID}/status"
    assert result_path(fal, REQUEST_ID, FAL_MODEL) == f"/fal-ai/veo3/requests/{REQUEST_ID}"


def test_a_path_that_names_the_model_refuses_a_task_without_one() -> None:
    with pytest.raises(WireFormatError, match="needs the task's model"):
        status_path(kind("fal"), REQUEST_ID, "")


def test_kie_status_path_carries_the_task_id_in_its_query() -> None:
    assert status_path(kind("kie"), "task_1") == "/api/v1/jobs/recordInfo?taskId=task_1"


def test_a_fal_result_answered_with_an_unlisted_refusal_is_not_a_failure() -> None:
    with pytest.raises(WireFormatError, match="HTTP 404"):
        normalize_result(kind("fal"), REQUEST_ID, 404, {"detail": "Not found"})


def test_a_fal_webhook_whose_payload_could_not_be_sent_asks_for_the_result() -> None:
    body = {"request_id": REQUEST_ID, "status": "OK", "payload": None, "payload_error": "big"}
    seen = normalize_callback(kind("fal"), body)
    assert (seen.state, seen.needs_fetch) == (State.RUNNING, True)


def test_a_result_path_may_name_only_known_placeholders(tmp_path: Path) -> None:
    text = (BUILTIN_PROVIDERS_DIR / "fal.toml").read_text(encoding="utf-8")
    broken = tmp_path / "fal2.toml"
    broken.write_text(text.replace('"/{app}/requests/{task_id}"', '"/{owner}/{task_id}"'))
    with pytest.raises(ConfigError, match=r"result.path` names \{owner\}"):
        load_definition(broken)
