"""The archive stores: a local directory and an S3 bucket (moto's server) behave alike."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from schemas.errors import ConfigError
from schemas.media.storage import (
    ArchiveStore,
    LocalStore,
    NotStored,
    S3Store,
    StorageError,
    content_key,
    open_store,
)
from tests.support.s3 import S3Server, running_s3_server

BODY = bytes(range(256)) * 40 + b"tail"
LARGE_MIB = 64
MAX_GROWTH_MIB = 48
"""Streaming measures 20-30 MiB (buffers, runtime threads); holding the file would be 64+."""
MEASURE_SCRIPT = """
import asyncio, hashlib, json, os, sys
from pathlib import Path
from schemas.media.storage import open_store

def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status")
                if line.startswith(field + ":"))

async def main(action, url, spool, key, source):
    store = open_store(url, os.environ, spool_dir=Path(spool))
    digest = hashlib.sha256()
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    before = kib("VmRSS")
    if action == "put":
        await store.put(Path(source), key, "video/mp4")
    else:
        async for chunk in store.read(key):
            digest.update(chunk)
    print(json.dumps({"growth_kib": kib("VmHWM") - before, "sha256": digest.hexdigest()}))

asyncio.run(main(*sys.argv[1:]))
# Skip finalization: a tokio thread of obstore may still be inside call_soon_threadsafe when
# the interpreter finalizes, and Python < 3.14 then aborts the process (pyo3-async-runtimes#40).
sys.stdout.flush()
os._exit(0)
"""


@dataclass(frozen=True)
class Place:
    """How to open one store: what TASKLEDGER_ARCHIVE_URL and the environment would say."""

    url: str
    environ: dict[str, str]
    spool_dir: Path


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with running_s3_server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if request.param == "local":
        return Place(str(tmp_path / "archive"), {}, tmp_path / "unused")
    server: S3Server = request.getfixturevalue("s3_server")
    prefix = f"archive-{secrets.token_hex(4)}"
    return Place(server.url(prefix), server.environ, tmp_path / "spool")


@pytest.fixture
async def store(place: Place) -> AsyncIterator[ArchiveStore]:
    store = open_store(place.url, place.environ, spool_dir=place.spool_dir)
    yield store
    await store.close()


def spool(store: ArchiveStore, data: bytes) -> Path:
    path = store.spool_dir / secrets.token_hex(8)
    path.write_bytes(data)
    return path


async def stored(store: ArchiveStore, data: bytes = BODY) -> str:
    key = content_key(hashlib.sha256(data).hexdigest())
    await store.put(spool(store, data), key, "video/mp4")
    return key


async def read_all(store: ArchiveStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, start, end)])


def test_content_key_spreads_by_leading_digits() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert content_key(digest) == f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"


@pytest.mark.parametrize(
    "digest", ["ab" * 31, "AB" * 32, "zz" * 32, "ab" * 32 + "\n"], ids=["short", "upper", "z", "nl"]
)
def test_content_key_rejects_anything_but_lowercase_hex(digest: str) -> None:
    with pytest.raises(StorageError) as caught:
        content_key(digest)
    assert caught.value.reason == "bad_key"


async def test_put_then_read_returns_the_bytes(store: ArchiveStore) -> None:
    key = await stored(store)
    assert await read_all(store, key) == BODY


async def test_put_consumes_the_spool_file(store: ArchiveStore) -> None:
    source = spool(store, BODY)
    await store.put(source, content_key(hashlib.sha256(BODY).hexdigest()), "video/mp4")
    assert not source.exists()


async def test_size_is_the_stored_length(store: ArchiveStore) -> None:
    key = await stored(store)
    assert await store.size(key) == len(BODY)


@pytest.mark.parametrize(
    ("start", "end"),
    [(100, None), (100, 2000), (len(BODY) - 1, None), (0, 1), (5000, 10**9), (len(BODY), None)],
    ids=["start-only", "start-end", "last-byte", "first-byte", "end-past-size", "empty-at-end"],
)
async def test_read_returns_the_range(store: ArchiveStore, start: int, end: int | None) -> None:
    key = await stored(store)
    assert await read_all(store, key, start, end) == BODY[start:end]


@pytest.mark.parametrize(
    ("start", "end"), [(len(BODY) + 1, None), (10, 5), (-1, None)], ids=["past", "back", "neg"]
)
async def test_read_outside_the_object_is_a_bad_range(
    store: ArchiveStore, start: int, end: int | None
) -> None:
    key = await stored(store)
    with pytest.raises(StorageError) as caught:
        await read_all(store, key, start, end)
    assert caught.value.reason == "bad_range"


async def test_second_put_of_the_same_content_keeps_the_object(store: ArchiveStore) -> None:
    key = await stored(store)
    again = spool(store, BODY)
    await store.put(again, key, "video/mp4")
    assert not again.exists()
    assert await read_all(store, key) == BODY


async def test_put_replaces_a_truncated_object(store: ArchiveStore) -> None:
    key = content_key(hashlib.sha256(BODY).hexdigest())
    await store.put(spool(store, BODY[:10]), key, "video/mp4")
    await store.put(spool(store, BODY), key, "video/mp4")
    assert await read_all(store, key) == BODY


async def test_delete_removes_the_object(store: ArchiveStore) -> None:
    key = await stored(store)
    await store.delete(key)
    with pytest.raises(NotStored):
        await store.size(key)


async def test_delete_of_a_missing_key_is_fine(store: ArchiveStore) -> None:
    await store.delete(content_key("0" * 64))


async def test_size_of_a_missing_key_is_not_stored(store: ArchiveStore) -> None:
    with pytest.raises(NotStored) as caught:
        await store.size(content_key("0" * 64))
    assert caught.value.reason == "not_stored"


async def test_read_of_a_missing_key_is_not_stored(store: ArchiveStore) -> None:
    with pytest.raises(NotStored):
        await read_all(store, content_key("0" * 64))


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a//b", "a/./b", ""])
async def test_keys_may_not_leave_the_store(store: ArchiveStore, key: str) -> None:
    with pytest.raises(StorageError) as caught:
        await store.size(key)
    assert caught.value.reason == "bad_key"


async def test_local_keys_may_not_point_into_the_spool(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as caught:
        await LocalStore(tmp_path).size(".incoming/x")
    assert caught.value.reason == "bad_key"


def test_local_spool_is_private_and_on_the_same_filesystem(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "archive")
    assert store.spool_dir == tmp_path / "archive" / ".incoming"
    assert store.spool_dir.stat().st_mode & 0o777 == 0o700


async def test_local_presign_is_none(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert await store.presign(await stored(store), 60) is None


async def test_s3_presigned_url_serves_the_bytes(s3_server: S3Server, tmp_path: Path) -> None:
    store = S3Store(s3_server.url("signed"), s3_server.environ, spool_dir=tmp_path)
    url = await store.presign(await stored(store), 60)
    assert url is not None
    async with httpx.AsyncClient() as http:
        answer = await http.get(url)
    assert (answer.status_code, answer.content) == (200, BODY)
    assert answer.headers["content-type"] == "video/mp4"


async def test_s3_presign_refuses_header_overrides(s3_server: S3Server, tmp_path: Path) -> None:
    store = S3Store(s3_server.url(), s3_server.environ, spool_dir=tmp_path)
    with pytest.raises(StorageError) as caught:
        await store.presign(content_key("0" * 64), 60, filename="clip.mp4")
    assert caught.value.reason == "unsupported"


def test_s3_describe_names_the_place_and_no_credentials(tmp_path: Path) -> None:
    environ = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "hush",
        "AWS_DEFAULT_REGION": "eu-west-3",
    }
    store = open_store("s3://media/archive", environ, spool_dir=tmp_path)
    assert store.describe() == "s3://media/archive at http://127.0.0.1:9 (eu-west-3)"


def test_s3_secret_without_key_id_is_a_config_error(tmp_path: Path) -> None:
    environ = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_SECRET_ACCESS_KEY": "hush"}
    with pytest.raises(ConfigError, match="TASKLEDGER_ARCHIVE_URL") as caught:
        open_store("s3://media/archive", environ, spool_dir=tmp_path)
    assert "hush" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "kind"),
    [("s3://media/a/b", "s3"), ("file://{tmp}/a", "local"), ("{tmp}/a", "local")],
    ids=["s3", "file-url", "path"],
)
def test_open_store_picks_the_store_by_url(tmp_path: Path, url: str, kind: str) -> None:
    store = open_store(url.format(tmp=tmp_path), {}, spool_dir=tmp_path / "spool")
    assert store.kind == kind


@pytest.mark.parametrize(
    "url",
    ["ftp://host/x", "", "s3://", "s3:///prefix", "s3://Bad_Bucket/x", "s3://k:s@media/x"],
    ids=["scheme", "empty", "no-bucket", "empty-bucket", "bad-bucket", "credentials"],
)
def test_open_store_errors_name_the_variable(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="TASKLEDGER_ARCHIVE_URL"):
        open_store(url, {}, spool_dir=tmp_path)


def test_open_store_rejects_a_file_url_of_another_host(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TASKLEDGER_ARCHIVE_URL"):
        open_store("file://elsewhere/archive", {}, spool_dir=tmp_path)


@pytest.fixture
def large_file(store: ArchiveStore) -> tuple[Path, str]:
    """A 64 MiB spool file, written a mebibyte at a time; its SHA-256."""
    block, digest = os.urandom(1024 * 1024), hashlib.sha256()
    path = store.spool_dir / "large"
    with path.open("wb") as file:
        for _ in range(LARGE_MIB):
            file.write(block)
            digest.update(block)
    return path, digest.hexdigest()


async def measure(action: str, place: Place, key: str, source: Path) -> dict[str, int | str]:
    """Run one put or read in a fresh interpreter; its peak RSS growth and what it read.

    Linux only: the peak comes from /proc (getrusage's maxrss would include the parent's).
    """
    arguments = (action, place.url, str(place.spool_dir), key, str(source))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        MEASURE_SCRIPT,
        *arguments,
        # Two malloc arenas: the peak then counts buffers, not glibc's per-thread arenas
        # (whose number follows the machine's cores).
        env={**os.environ, **place.environ, "MALLOC_ARENA_MAX": "2"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    result: dict[str, int | str] = json.loads(out)
    return result


async def test_put_of_a_large_file_keeps_memory_flat(
    store: ArchiveStore, place: Place, large_file: tuple[Path, str]
) -> None:
    source, digest = large_file
    result = await measure("put", place, content_key(digest), source)
    assert int(result["growth_kib"]) < MAX_GROWTH_MIB * 1024
    assert await store.size(content_key(digest)) == LARGE_MIB * 1024 * 1024


async def test_read_of_a_large_file_keeps_memory_flat(
    store: ArchiveStore, place: Place, large_file: tuple[Path, str]
) -> None:
    source, digest = large_file
    await store.put(source, content_key(digest), "video/mp4")
    result = await measure("read", place, content_key(digest), source)
    assert int(result["growth_kib"]) < MAX_GROWTH_MIB * 1024
    assert result["sha256"] == digest
