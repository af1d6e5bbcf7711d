"""Example callback bodies (`schemas.wire.examples`): each reads back through our own reader
as the task and state it was made for, has the documented shape, and is what the README
shows."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.definition import Definition, load_definition
from schemas.settings import builtin_definitions
from schemas.states import State
from schemas.wire import Kind, WireFormat, normalize_callback
from schemas.wire.examples import (
    DOCUMENTED,
    EXAMPLE_TASK_IDS,
    NoExample,
    callback_body,
    callback_states,
    markdown,
)
from tests.conformance.corpus import load_cases

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = Path(__file__).parent / "definitions"
KINDS: dict[str, Kind] = {fmt.value: fmt for fmt in WireFormat} | builtin_definitions()
MOVIEMINT = load_definition(DEFINITIONS / "moviemint.toml")
STILLPOLL = load_definition(DEFINITIONS / "stillpoll.toml")
AT = datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC)
SENT = [
    pytest.param(kind, state, id=f"{name}-{state.value}")
    for name, kind in [*KINDS.items(), ("moviemint", MOVIEMINT)]
    for state in callback_states(kind)
]
README_BODIES = re.compile(
    r"<!-- callback-bodies:[^\n]*-->\n\n(.*?)\n<!-- /callback-bodies -->", re.S
)


@pytest.mark.parametrize(("kind", "state"), SENT)
def test_every_example_reads_back_as_its_task_and_state(kind: Kind, state: State) -> None:
    body = callback_body(kind, "task-0042", state, AT)
    seen = normalize_callback(kind, json.loads(json.dumps(body)))
    assert (seen.provider_task_id, seen.state) == ("task-0042", state)


@pytest.mark.parametrize(
    ("name", "states"),
    [
        ("openai", {"succeeded", "failed"}),
        ("apidot", {"succeeded", "failed"}),
        ("evolink", {"succeeded", "failed", "cancelled"}),
        ("aivideoapi", {"succeeded", "failed"}),
        ("replicate", {"queued", "running", "succeeded", "failed", "cancelled"}),
        ("fal", {"succeeded", "failed"}),
        ("kie", {"succeeded", "failed"}),
    ],
)
def test_each_kind_calls_back_with_the_states_its_docs_name(name: str, states: set[str]) -> None:
    assert {state.value for state in callback_states(KINDS[name])} == states


@pytest.mark.parametrize(
    ("kind", "state"),
    [
        pytest.param(WireFormat.OPENAI, State.CANCELLED, id="openai-cancelled"),
        pytest.param(WireFormat.APIDOT, State.RUNNING, id="apidot-running"),
        pytest.param(STILLPOLL, State.SUCCEEDED, id="poll-only"),
    ],
)
def test_a_state_the_provider_never_calls_back_with_has_no_example(
    kind: Kind, state: State
) -> None:
    with pytest.raises(NoExample):
        callback_body(kind, "task-0042", state)


def test_openai_sends_a_thin_standard_webhooks_event() -> None:
    body = callback_body(WireFormat.OPENAI, "video_1", State.FAILED, AT)
    assert body["type"] == "video.failed"
    assert body["data"] == {"id": "video_1"}
    assert body["created_at"] == int(AT.timestamp())
    assert re.fullmatch(r"evt_[0-9a-f]{32}", body["id"])


def test_a_succeeded_example_carries_result_urls_the_reader_keeps() -> None:
    for name in ("apidot", "evolink", "aivideoapi", "replicate", "fal", "kie"):
        body = callback_body(KINDS[name], "task-0042", State.SUCCEEDED, AT)
        urls = normalize_callback(KINDS[name], body).result_urls
        assert urls, name
        assert all(url.startswith("https://") and "task-0042" in url for url in urls), name


# The corpus case documenting each callback (tests/conformance/<kind>/<case>.json).
DOCUMENTED_CASES = {
    ("openai", State.SUCCEEDED): "openai/event_video_completed",
    ("openai", State.FAILED): "openai/event_video_failed",
    ("apidot", State.SUCCEEDED): "apidot/callback_finished",
    ("apidot", State.FAILED): "apidot/callback_failed",
    ("evolink", State.SUCCEEDED): "evolink/completed",
    ("evolink", State.FAILED): "evolink/failed",
    ("evolink", State.CANCELLED): "evolink/failed_request_cancelled",
    ("aivideoapi", State.SUCCEEDED): "aivideoapi/status_completed",
    ("aivideoapi", State.FAILED): "aivideoapi/status_failed",
    ("replicate", State.QUEUED): "replicate/create_starting",
    ("replicate", State.RUNNING): "replicate/webhook_processing",
    ("replicate", State.SUCCEEDED): "replicate/webhook_succeeded_output_list",
    ("replicate", State.FAILED): "replicate/prediction_failed",
    ("replicate", State.CANCELLED): "replicate/prediction_canceled",
    ("fal", State.SUCCEEDED): "fal/webhook_ok",
    ("fal", State.FAILED): "fal/webhook_error",
    ("kie", State.SUCCEEDED): "kie/record_success",
    ("kie", State.FAILED): "kie/record_fail",
}
CASES = {case.id: case for case in load_cases()}
# What a model's input holds is the model's own, not the provider's shape.
MODEL_OWN = ("input.",)


def test_every_example_is_held_to_a_documented_body() -> None:
    sent = {(name, state) for name, kind in KINDS.items() for state in callback_states(kind)}
    assert sent == set(DOCUMENTED_CASES)


@pytest.mark.parametrize(
    ("name", "state", "case_id"),
    [pytest.param(n, s, c, id=c) for (n, s), c in DOCUMENTED_CASES.items()],
)
def test_each_example_has_its_documented_bodys_fields(
    name: str, state: State, case_id: str
) -> None:
    """The provider's documented body names no field our example lacks."""
    case = CASES[case_id]
    assert case.expect["state"] == state.value
    example = callback_body(KINDS[name], "task-0042", state, AT)
    documented = {f for f in _fields(case.body) if not f.startswith(MODEL_OWN)}
    assert documented <= _fields(example)


def test_a_definition_example_is_used_with_the_task_id_put_in() -> None:
    body = callback_body(MOVIEMINT, "r-77", State.SUCCEEDED, AT)
    assert body["result"]["render_id"] == "r-77"
    assert body["result"]["outputs"] == [{"href": "https://cdn.moviemint.example/r-1.mp4"}]


def test_a_definition_without_an_example_is_built_from_its_field_paths() -> None:
    body = callback_body(MOVIEMINT, "r-77", State.FAILED, AT)
    assert body == {
        "ok_code": 0,
        "result": {
            "render_id": "r-77",
            "phase": "broken",
            "failure": {"detail": "the generation failed"},
        },
    }


def test_a_definition_whose_paths_nest_json_in_a_string_is_built_so(tmp_path: Path) -> None:
    source = (DEFINITIONS / "moviemint.toml").read_text()
    nested = source.replace('["result.outputs[].href"]', '["result.files|json.urls[]"]')
    path = tmp_path / "nested.toml"
    path.write_text(nested.split("[[examples]]")[0])
    definition = load_definition(path)
    assert isinstance(definition, Definition)
    body = callback_body(definition, "r-77", State.SUCCEEDED, AT)
    assert json.loads(body["result"]["files"]) == {"urls": ["https://media.example/r-77.mp4"]}


def test_the_readme_shows_the_bodies_the_module_writes() -> None:
    readme = (ROOT / "README.md").read_text()
    found = README_BODIES.search(readme)
    assert found is not None, "README.md has no callback-bodies section"
    assert found.group(1) == markdown(KINDS), (
        "README.md's callback bodies differ from schemas/wire/examples.py: paste in the output"
        " of `python -c 'from tests.schemas.test_examples import KINDS;"
        " from schemas.wire.examples import markdown; print(markdown(KINDS))'`"
    )


def test_the_readme_shows_every_built_in_kind() -> None:
    assert {name for _, name, _ in DOCUMENTED} == set(KINDS) == set(EXAMPLE_TASK_IDS)


def _fields(value: object, at: str = "") -> set[str]:
    """Every key path in a body (list items merged), e.g. `data.files[].file_url`."""
    if isinstance(value, dict):
        found = set()
        for key, inner in value.items():
            found |= {f"{at}{key}"} | _fields(inner, f"{at}{key}.")
        return found
    if isinstance(value, list):
        return {path for item in value for path in _fields(item, f"{at.rstrip('.')}[].")}
    return set()
