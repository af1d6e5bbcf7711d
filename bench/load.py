"""The load generator: wrk (Debian's package) driven by `bench/load.lua`, results as numbers.

wrk is installed with apt-get when missing. Each run is bounded by wrk's own duration and
by a watchdog here; a run with a response limit is interrupted as soon as it is reached.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import pinned

LUA_SCRIPT = Path(__file__).with_name("load.lua")
WATCHDOG_EXTRA_SECONDS = 30.0
REQUEST_TIMEOUT = "10s"


def ensure_wrk() -> str:
    """The path of wrk, installing Debian's package first if needed."""
    found = shutil.which("wrk")
    if found:
        return found
    install = ["apt-get", "install", "-y", "wrk"]
    if subprocess.run(install, check=False, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True)
        subprocess.run(install, check=True, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed and apt-get could not install it")
    return found


@dataclass(frozen=True, slots=True)
class Load:
    """One wrk run: what to send, how hard and for how long."""

    url: str
    mode: str
    data: Path
    connections: int
    duration_seconds: int
    namespace: str = "0"
    limit: int = 0
    core: str | None = None


@dataclass(frozen=True, slots=True)
class LoadResult:
    duration_seconds: float
    requests: int
    sent: int
    ok: int
    client_errors: int
    server_errors: int
    other: int
    wrapped: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: dict[str, int]
    limit_reached: bool

    @property
    def rps(self) -> float:
        return self.requests / self.duration_seconds if self.duration_seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rps": round(self.rps, 1),
            "duration_s": round(self.duration_seconds, 3),
            "requests": self.requests,
            "sent": self.sent,
            "ok_2xx": self.ok,
            "status_4xx": self.client_errors,
            "status_5xx": self.server_errors,
            "status_other": self.other,
            "wrapped": self.wrapped,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "socket_errors": self.socket_errors,
            "limit_reached": self.limit_reached,
        }


def wrk_command(load: Load) -> list[str]:
    command = [
        ensure_wrk(),
        "-t1",
        f"-c{load.connections}",
        f"-d{load.duration_seconds}s",
        "--latency",
        "--timeout",
        REQUEST_TIMEOUT,
        "-s",
        str(LUA_SCRIPT),
        load.url,
        "--",
        load.mode,
        str(load.data),
        load.namespace,
        str(load.limit),
    ]
    return pinned(command, load.core)


def run_load(load: Load) -> LoadResult:
    """Run wrk to its end (or its limit); raise with wrk's output if it gave no result."""
    popen = subprocess.Popen(
        wrk_command(load), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    watchdog = threading.Timer(load.duration_seconds + WATCHDOG_EXTRA_SECONDS, popen.kill)
    watchdog.start()
    lines: list[str] = []
    limit_reached = False
    try:
        assert popen.stdout is not None
        for line in popen.stdout:
            lines.append(line)
            if line.startswith("BENCH_LIMIT_REACHED") and not limit_reached:
                limit_reached = True
                popen.send_signal(signal.SIGINT)  # wrk sleeps out -d otherwise
        popen.wait(timeout=WATCHDOG_EXTRA_SECONDS)
    finally:
        watchdog.cancel()
        if popen.poll() is None:
            popen.kill()
            popen.wait()
    return parse_result(lines, limit_reached)


def parse_result(lines: list[str], limit_reached: bool) -> LoadResult:
    marked = [line for line in lines if line.startswith("BENCH_JSON ")]
    if not marked:
        raise RuntimeError("wrk printed no result:\n" + "".join(lines[-40:]))
    raw = json.loads(marked[-1].removeprefix("BENCH_JSON "))
    return LoadResult(
        duration_seconds=raw["duration_us"] / 1e6,
        requests=raw["requests"],
        sent=raw["sent"],
        ok=raw["ok"],
        client_errors=raw["client_errors"],
        server_errors=raw["server_errors"],
        other=raw["other"],
        wrapped=raw["wrapped"],
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        socket_errors=raw["socket_errors"],
        limit_reached=limit_reached,
    )
