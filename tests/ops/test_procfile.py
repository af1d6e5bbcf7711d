"""The Procfile is the one source of the receiver's command line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ops.procfile import SOURCE_PROCFILE, expand, procfile_commands, web_command


def test_expand_fills_variables_and_their_defaults_without_a_shell() -> None:
    line = "serve --host ${HOST:-0.0.0.0} --port ${PORT:-8000} --name $NAME; rm -rf /"
    assert expand(line, {"PORT": "9000", "NAME": "web"}) == (
        "serve --host 0.0.0.0 --port 9000 --name web; rm -rf /"
    )


def test_web_command_is_the_procfiles_web_line_for_this_python() -> None:
    web = procfile_commands(SOURCE_PROCFILE)["web"]
    line = expand(web, {"HOST": "127.0.0.1", "PORT": "8123"})
    assert web_command("127.0.0.1", 8123, "--log-level", "warning") == [
        sys.executable,
        "-m",
        *line.split(),
        "--log-level",
        "warning",
    ]


def test_web_command_serves_another_app_with_the_same_flags() -> None:
    receiver = web_command("127.0.0.1", 8123)
    other = web_command("127.0.0.1", 8123, app="bench.baselines:noop_app")
    assert other[3] == "bench.baselines:noop_app"
    assert other[:3] + other[4:] == receiver[:3] + receiver[4:]


def test_outside_a_checkout_the_shipped_procfile_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no Procfile here: `taskledger run` from anywhere
    assert procfile_commands() == procfile_commands(SOURCE_PROCFILE)
    (tmp_path / "Procfile").write_text("web: uvicorn mine:app\n")
    assert procfile_commands() == {"web": "uvicorn mine:app"}  # a deployment's own wins
