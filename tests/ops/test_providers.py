"""`taskledger providers check FILE`: what a definition says, and its examples run."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.cli import main
from schemas.settings import BUILTIN_PROVIDERS_DIR

DEFINITIONS = Path(__file__).parents[1] / "schemas" / "definitions"


def test_check_prints_what_it_understood_and_runs_the_examples(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["providers", "check", str(DEFINITIONS / "moviemint.toml")]) == 0
    out = capsys.readouterr().out
    assert "kind moviemint (moviemint.toml)" in out
    assert "callback URL: body notify_url" in out
    assert "delivered -> succeeded" in out
    assert "example 1: task r-1, succeeded" in out


def test_an_example_that_reads_otherwise_fails_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        (DEFINITIONS / "moviemint.toml")
        .read_text()
        .replace('state = "succeeded"', 'state = "failed"')
    )
    (tmp_path / "mint.toml").write_text(text)
    assert main(["providers", "check", str(tmp_path / "mint.toml")]) == 1
    assert "expected failed" in capsys.readouterr().out


def test_a_broken_definition_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.toml").write_text('name = "x"\n[auth]\nscheme = "magic"\n')
    assert main(["providers", "check", str(tmp_path / "bad.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("taskledger: bad.toml: ")
    assert "\n" not in err


@pytest.mark.parametrize("name", ["replicate", "fal", "kie"])
def test_every_builtin_definition_passes_its_own_check(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["providers", "check", str(BUILTIN_PROVIDERS_DIR / f"{name}.toml")]) == 0
    out = capsys.readouterr().out
    assert f"kind {name} ({name}.toml)" in out
    assert out.count("example ") >= 6


def test_check_says_which_words_need_the_result_fetched(
    capsys: pytest.CaptureFixture[str],
) -> None:
    builtin = Path(__file__).parents[2] / "schemas" / "providers" / "fal.toml"
    assert main(["providers", "check", str(builtin)]) == 0
    out = capsys.readouterr().out
    assert "finished, outcome fetched: completed: GET /{app}/requests/{task_id}" in out
    assert "failed when HTTP 400, 422" in out
