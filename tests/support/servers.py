"""Run an ASGI app under a real uvicorn server on a free loopback port, inside the test's loop."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from ops.demo import wait_ready as ready
from ops.procfile import web_command


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Linux's ephemeral ports (its default when they cannot be read), and how many ports below
# them `free_fixed_port` draws from.
_EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_EPHEMERAL_LOW = 32768
_FIXED_PORTS = 10000


def free_fixed_port() -> int:
    """A free loopback port below the ephemeral range, which the kernel never hands out on
    its own (to a bind to port 0, or to an outgoing connection): a server stopped and
    started again on it finds it free still, however many ports others take meanwhile."""
    try:
        low = int(_EPHEMERAL_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = _DEFAULT_EPHEMERAL_LOW
    first = max(1024, low - _FIXED_PORTS)
    if first >= low:  # every unprivileged port is ephemeral here
        return free_port()
    for _ in range(100):
        port = first + secrets.randbelow(low - first)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}-{low - 1}")


@asynccontextmanager
async def serve(app: Any, port: int | None = None) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 until the block exits; yields its base URL."""
    port = port or free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            if task.done():
                task.result()
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("server did not start within 5 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


@asynccontextmanager
async def receiver_process(
    env: dict[str, str], port: int, workers: int = 1
) -> AsyncIterator[asyncio.subprocess.Process]:
    """The receiver as production runs it (uvicorn, its own process), ready when yielded."""
    options = ("--workers", str(workers), "--log-level", "warning")
    process = await asyncio.create_subprocess_exec(
        *web_command("127.0.0.1", port, *options),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_ready(f"http://127.0.0.1:{port}")
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), timeout=30)


async def wait_ready(base_url: str, within_seconds: float = 30) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http:
        await ready(http, within_seconds)
