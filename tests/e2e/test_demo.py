"""`taskledger demo` runs the three processes, survives its faults and reports the truth."""

from __future__ import annotations

import asyncio
import sys


async def test_demo_settles_every_task_and_matches_the_simulators_truth() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ops.cli",
        "demo",
        "--tasks",
        "30",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=200)
    text = output.decode()
    assert process.returncode == 0, text
    assert "match the provider truth" in text
    assert "30 of 30" in text
