"""Provider definition files: read and checked, every mistake named with its file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.definition import load_definition
from schemas.errors import ConfigError
from schemas.states import State

HERE = Path(__file__).parent / "definitions"


def test_a_gateway_definition_is_read_whole() -> None:
    mint = load_definition(HERE / "moviemint.toml")
    assert mint.name == "moviemint"
    assert mint.auth.headers("k") == {"x-mint-key": "k"}
    assert (mint.submit.callback, mint.submit.callback_name) == ("body", "notify_url")
    assert mint.state_of("Delivered") is State.SUCCEEDED
    assert mint.envelope is not None
    assert mint.envelope.ok == (0,)
    assert mint.callback_shape == "envelope"
    assert mint.result_ttl_seconds == 7200
    assert mint.fields["result_urls"].read(mint.examples[0]["body"]) == [
        "https://cdn.moviemint.example/r-1.mp4"
    ]


def test_a_poll_only_definition_keeps_its_version_header() -> None:
    still = load_definition(HERE / "stillpoll.toml")
    assert still.poll.headers == {"x-api-version": "2026-01-01"}
    assert still.submit.callback == "none"
    assert still.state_of("DONE") is State.SUCCEEDED
    assert still.auth.headers("k") == {"authorization": "Bearer k"}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("name = 'x'\n[poll]\npath = '/t/{task_id}'\n[fields]\ntask_id = 'id'\n", "status"),
        ("name = 'x'\n[poll]\npath = '/t'\n[fields]\ntask_id='id'\nstatus='s'\n", "poll.path"),
        ("name = 'x'\nsurprise = 1\n", "surprise"),
        (
            "name='x'\n[poll]\npath='/t/{task_id}'\n[fields]\ntask_id='id'\nstatus='s'\n"
            "[states]\ndone = 'finished'\n",
            "done",
        ),
        ("name='x'\n[auth]\nscheme='magic'\n", "scheme"),
        ("name='x'\n[fields]\ntask_id='a..b'\n", "a..b"),
        ("not toml at all [", "TOML"),
    ],
    ids=[
        "no-status",
        "no-task-id-in-path",
        "unknown-key",
        "bad-state",
        "bad-auth",
        "bad-path",
        "toml",
    ],
)
def test_a_mistake_is_one_error_naming_the_file_and_what(
    tmp_path: Path, text: str, named: str
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_definition(path)
    assert str(caught.value).startswith("broken.toml: ")
    assert named in str(caught.value)
