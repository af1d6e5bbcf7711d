"""The README's quickstart and "Using it" work when pasted into a fresh shell: its own code
blocks, read from README.md, run by bash in a copy of the project with nothing but the
system's PATH (the virtualenv's scripts are linked in, as after a first `dev.py run`, so
nothing is installed). The one change: a free port instead of 8000, through `PORT`, which
the README says `taskledger run` follows."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.ops.test_first_hour import BIN, ROOT, START_SECONDS, Started, wait_ready
from tests.support.servers import free_fixed_port

README = ROOT / "README.md"
RUN_LINE = "python3 dev.py run"
SHELL_SECONDS = 60


def section(title: str) -> str:
    """The text of the README's `## title` section, up to the next `## ` heading."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)


def json_values(text: str) -> list[dict[str, object]]:
    """The JSON objects curl printed, one after another (curl adds no newline)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while (at := len(text) - len(text[at:].lstrip())) < len(text):
        value, at = decoder.raw_decode(text, at)
        values.append(value)
    return values


def fresh_shell(home: Path, **extra: str) -> dict[str, str]:
    """A login shell's environment: the system's PATH (no virtualenv), a home, no settings."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p != venv_bin
    )
    return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", **extra}


def clone(tmp_path: Path) -> Path:
    """The project's files (tracked, and new ones not ignored), and its virtualenv as a
    first run leaves it."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    copy = tmp_path / "taskledger"
    for name in filter(None, tracked.split("\0")):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    (copy / ".venv").mkdir()
    (copy / ".venv" / "bin").symlink_to(BIN)
    stamp = hashlib.sha256((copy / "pyproject.toml").read_bytes()).hexdigest()
    (copy / ".venv" / ".taskledger-install").write_text(stamp)
    return copy


def test_quickstart_and_using_it_work_pasted_into_a_fresh_shell(tmp_path: Path) -> None:
    quickstart = shell_blocks(section("Quickstart"))[0]
    assert any(line.startswith(RUN_LINE) for line in quickstart.splitlines()), quickstart
    using_it = shell_blocks(section("Using it"))[0]
    assert "localhost:8000" in using_it

    project = clone(tmp_path)
    port = free_fixed_port()
    env = fresh_shell(tmp_path, PORT=str(port))
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        service = subprocess.Popen(
            ["bash", "-c", RUN_LINE],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's job: Ctrl-C reaches the whole group
        )
    running = Started(service, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(running)
        pasted = using_it.replace("localhost:8000", f"localhost:{port}")
        shell = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", pasted],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=SHELL_SECONDS,
        )
        assert shell.returncode == 0, shell.stdout + shell.stderr
        registered, attached, shown = json_values(shell.stdout)
        assert registered["state"] == "submitted"
        assert registered["callback_url"].startswith(f"http://127.0.0.1:{port}/callbacks/apidot/")
        assert attached["provider_task_id"] == "task-unified-1234"
        assert shown["ref"] == registered["ref"]
        assert shown["provider_task_id"] == "task-unified-1234"
        assert "timeline" in shown
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGINT)
        try:
            code = service.wait(timeout=START_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
            raise
    assert code == 130, running.output()  # Ctrl-C, as the README says
    assert "Traceback" not in running.output()
    with pytest.raises(httpx.TransportError):
        httpx.get(running.base_url + "/healthz", timeout=1)
