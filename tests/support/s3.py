"""A real S3-compatible server for tests: moto's, in its own process on a loopback port."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3  # type: ignore[import-untyped]
import httpx

from tests.support.servers import free_port

START_WITHIN_SECONDS = 30.0
STOP_WITHIN_SECONDS = 10.0
POLL_INTERVAL_SECONDS = 0.05
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """A running server with one fresh, empty bucket; `environ` holds the AWS_* settings."""

    endpoint: str
    bucket: str
    environ: dict[str, str]

    def url(self, prefix: str = "") -> str:
        """An archive URL in this server's bucket: `s3://bucket/prefix`."""
        return f"s3://{self.bucket}/{prefix}"


def moto_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    program = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    return [*program, "-H", "127.0.0.1", "-p", str(port)]


@asynccontextmanager
async def s3_server() -> AsyncIterator[S3Server]:
    """Start moto in the test's loop; the process is killed when the block exits."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *moto_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        server = _server(port)
        await _wait_answering(server.endpoint, process)
        await asyncio.to_thread(_create_bucket, server)
        yield server
    finally:
        await _stop(process)


@contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """The same without an event loop, for a module-scoped pytest fixture."""
    port = free_port()
    process = subprocess.Popen(
        moto_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        server = _server(port)
        _wait_answering_sync(server.endpoint, process)
        _create_bucket(server)
        yield server
    finally:
        _stop_sync(process)


def _server(port: int) -> S3Server:
    endpoint = f"http://127.0.0.1:{port}"
    environ = {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
    }
    return S3Server(endpoint, f"taskledger-test-{secrets.token_hex(6)}", environ)


async def _wait_answering(endpoint: str, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + START_WITHIN_SECONDS
    async with httpx.AsyncClient(timeout=1) as http:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"moto_server exited with {process.returncode}")
            try:
                await http.get(endpoint)
                return
            except httpx.TransportError:
                await asyncio.sleep(POLL_INTERVAL_SECONDS)
    raise TimeoutError(f"moto_server did not answer within {START_WITHIN_SECONDS:g} s")


def _wait_answering_sync(endpoint: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_WITHIN_SECONDS
    with httpx.Client(timeout=1) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {process.returncode}")
            try:
                http.get(endpoint)
                return
            except httpx.TransportError:
                time.sleep(POLL_INTERVAL_SECONDS)
    raise TimeoutError(f"moto_server did not answer within {START_WITHIN_SECONDS:g} s")


def _create_bucket(server: S3Server) -> None:
    """A signed CreateBucket, as a real S3 would want it."""
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    try:
        client.create_bucket(Bucket=server.bucket)
    finally:
        client.close()


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), timeout=STOP_WITHIN_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()


def _stop_sync(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=STOP_WITHIN_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
