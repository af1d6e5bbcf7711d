"""Submit bodies parsed per format."""

from __future__ import annotations

import pytest

from simulator import SubmissionError
from simulator.submissions import parse_apidot, parse_evolink, parse_openai


def test_openai_submission_defaults_seconds_and_size() -> None:
    submission = parse_openai({"model": "sora-2", "prompt": "a cat"})
    assert submission.request == {"seconds": "4", "size": "720x1280"}
    assert submission.callback_url is None


def test_openai_submission_rejects_seconds_outside_4_8_12() -> None:
    with pytest.raises(SubmissionError):
        parse_openai({"model": "sora-2", "prompt": "a cat", "seconds": "5"})


def test_apidot_submission_reads_input_and_callback_url() -> None:
    body = {
        "model": "m",
        "callback_url": "https://x.test/cb/t",
        "input": {"prompt": "p", "duration": 20},
    }
    submission = parse_apidot(body)
    assert (submission.request["duration"], submission.callback_url) == (20, "https://x.test/cb/t")


def test_apidot_submission_requires_input_prompt() -> None:
    with pytest.raises(SubmissionError):
        parse_apidot({"model": "m", "input": {"duration": 4}})


def test_evolink_submission_rejects_a_duration_of_16() -> None:
    with pytest.raises(SubmissionError):
        parse_evolink({"model": "m", "prompt": "p", "duration": 16})


@pytest.mark.parametrize(
    "url", ["ftp://x.test/cb", "not a url", 42], ids=["ftp", "no-scheme", "not-string"]
)
def test_callback_url_must_be_http(url: object) -> None:
    with pytest.raises(SubmissionError):
        parse_evolink({"model": "m", "prompt": "p", "callback_url": url})


def test_submission_must_be_a_json_object() -> None:
    with pytest.raises(SubmissionError):
        parse_openai(["model"])
