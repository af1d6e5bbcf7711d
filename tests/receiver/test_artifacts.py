"""A task's archived outputs through real HTTP, on both backends: the list, each file with
Range and conditional requests, media tokens, presigned redirects and store failures."""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from receiver.app import create_app
from receiver.artifacts import (
    FILE_CSP,
    MEDIA_TOKEN_MAX_AGE_SECONDS,
    RangeNotSatisfiable,
    Span,
    requested_span,
)
from schemas.errors import ConfigError
from schemas.ledger import Poll, Reader
from schemas.media.storage import CHUNK_BYTES, ArchiveStore, LocalStore, content_key, open_store
from schemas.settings import ArchiveSettings
from schemas.states import State
from schemas.store import ArchivedFile, ArtifactState, Attempt, LedgerStore
from schemas.wire import Observation, WireFormat
from tests.conftest import FakeClock
from tests.support.s3 import S3Server, running_s3_server
from tests.support.service import Service, running_service, settings_for

VIDEO = random.Random(7).randbytes(CHUNK_BYTES + 300_000)  # more than one chunk of the store
IMAGE = b"\x89PNG\r\n\x1a\n" + random.Random(8).randbytes(2000)
SIZE = len(VIDEO)
HOST = "cdn.example.com"
OWNER = "archiver-under-test"


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture
def archive(tmp_path: Path) -> ArchiveSettings:
    return ArchiveSettings(url=str(tmp_path / "archive"), spool_dir=str(tmp_path / "spool"))


@pytest.fixture
async def service(
    database_url: str, clock: FakeClock, archive: ArchiveSettings
) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url, archive=archive), clock) as service:
        yield service


@pytest.fixture
def media(archive: ArchiveSettings) -> ArchiveStore:
    return LocalStore(Path(archive.url))


@pytest.fixture
async def ledger(engine: AsyncEngine, clock: FakeClock) -> AsyncIterator[LedgerStore]:
    """The store the reconciler's archiver writes through: apidot's outputs are archived."""
    store = LedgerStore(engine, clock, {"apidot": Reader(WireFormat.APIDOT, 3600.0, True)})
    yield store
    await store.close()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with running_s3_server() as server:
        yield server


# -- building archived tasks ---------------------------------------------------------


async def succeeded_task(
    service: Service, ledger: LedgerStore, clock: FakeClock, outputs: int
) -> str:
    """A task whose success a poll confirmed, with `outputs` result URLs to archive."""
    task_id = f"t-{secrets.token_hex(4)}"
    ref = str((await service.register("apidot", provider_task_id=task_id))["ref"])
    urls = tuple(f"https://{HOST}/{task_id}/{n}?sig=secret" for n in range(outputs))
    observation = Observation(task_id, State.SUCCEEDED, 100, urls)
    await ledger.ingest([Poll(ref, clock(), None, observation, 200, "{}")])
    return ref


async def put(media: ArchiveStore, data: bytes, content_type: str) -> ArchivedFile:
    """`data` stored as the archiver stores it: spooled, then put under its content key."""
    sha = hashlib.sha256(data).hexdigest()
    spool = media.spool_dir / f"fetch-{secrets.token_hex(4)}.part"
    spool.write_bytes(data)
    await media.put(spool, content_key(sha), content_type)
    return ArchivedFile(content_key(sha), len(data), sha, content_type)


async def settle(ledger: LedgerStore, ref: str, *attempts: Attempt) -> None:
    """Record one attempt per output of `ref`, in the order of their names."""
    jobs = [
        job for job in await ledger.claim_artifacts(OWNER, 100, 60) if job.artifact.task_ref == ref
    ]
    jobs.sort(key=lambda job: job.artifact.name)
    assert len(jobs) == len(attempts)
    for job, attempt in zip(jobs, attempts, strict=True):
        assert await ledger.record_attempt(job.artifact.id, OWNER, attempt)


def archived(stored: ArchivedFile) -> Attempt:
    return Attempt(ArtifactState.ARCHIVED, HOST, stored)


async def archived_video(
    service: Service, ledger: LedgerStore, clock: FakeClock, media: ArchiveStore
) -> str:
    ref = await succeeded_task(service, ledger, clock, 1)
    await settle(ledger, ref, archived(await put(media, VIDEO, "video/mp4")))
    return ref


@pytest.fixture
async def video(
    service: Service, ledger: LedgerStore, clock: FakeClock, media: ArchiveStore
) -> str:
    """The ref of a task whose one output, `output-1`, is an archived video."""
    return await archived_video(service, ledger, clock, media)


async def get(service: Service, path: str, *, auth: bool = True, **headers: str) -> httpx.Response:
    sent = {
        **(service.admin if auth else {}),
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }
    return await service.http.get(path, headers=sent)


def file_path(ref: str, name: str = "output-1") -> str:
    return f"/v1/tasks/{ref}/artifacts/{name}"


async def listed(service: Service, ref: str) -> list[dict[str, Any]]:
    answer = await get(service, f"/v1/tasks/{ref}/artifacts")
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def media_path(entry: dict[str, Any]) -> str:
    """The list's `url` as a path and query on the service under test."""
    url = urlsplit(str(entry["url"]))
    return f"{url.path}?{url.query}"


# -- the list ------------------------------------------------------------------------


async def test_list_shows_every_output_and_a_media_url_for_the_archived_ones(
    service: Service, ledger: LedgerStore, clock: FakeClock, media: ArchiveStore
) -> None:
    ref = await succeeded_task(service, ledger, clock, 2)
    failed = Attempt(ArtifactState.FAILED, HOST, error="not a video or image")
    await settle(ledger, ref, archived(await put(media, VIDEO, "video/mp4")), failed)
    first, second = await listed(service, ref)
    assert (first["name"], first["state"], first["size"]) == ("output-1", "archived", SIZE)
    assert first["sha256"] == hashlib.sha256(VIDEO).hexdigest()
    assert (first["content_type"], first["source_host"], first["attempts"]) == (
        "video/mp4",
        HOST,
        1,
    )
    assert first["url"].startswith(f"{service.base_url}/v1/tasks/{ref}/artifacts/output-1?token=")
    assert (second["state"], second["last_error"], second["url"]) == (
        "failed",
        "not a video or image",
        None,
    )
    assert "sig=secret" not in str([first, second])


async def test_list_of_a_task_without_outputs_is_empty(service: Service) -> None:
    ref = (await service.register("apidot"))["ref"]
    assert await listed(service, ref) == []


async def test_list_of_an_unknown_task_is_404(service: Service) -> None:
    assert (await get(service, "/v1/tasks/tl_nope/artifacts")).status_code == 404


# -- one file --------------------------------------------------------------------------


async def test_get_streams_the_whole_file(service: Service, video: str) -> None:
    answer = await get(service, file_path(video))
    assert answer.status_code == 200
    assert hashlib.sha256(answer.content).hexdigest() == hashlib.sha256(VIDEO).hexdigest()
    assert answer.headers["content-length"] == str(SIZE)
    assert answer.headers["content-type"] == "video/mp4"
    assert answer.headers["accept-ranges"] == "bytes"
    assert answer.headers["etag"] == f'"{hashlib.sha256(VIDEO).hexdigest()}"'
    assert answer.headers["content-disposition"] == f'inline; filename="{video}-output-1.mp4"'
    assert answer.headers["cache-control"].startswith("private, max-age=")


async def test_a_file_opened_in_the_browser_runs_nothing_and_keeps_its_caching(
    service: Service, video: str
) -> None:
    answer = await get(service, file_path(video), range="bytes=0-15")
    assert answer.status_code == 206
    assert answer.headers["content-security-policy"] == FILE_CSP
    assert "script" not in FILE_CSP  # default-src 'none': none runs
    assert answer.headers.get_list("cache-control") == ["private, max-age=31536000, immutable"]
    assert answer.headers.get_list("x-content-type-options") == ["nosniff"]


# (case, Range header, the slice of the file it asks for).
SINGLE_RANGES = [
    ("first-last", "bytes=0-99", 0, 100),
    ("across-chunks", "bytes=1048570-1048589", 1048570, 1048590),  # across the store's chunks
    ("open-end", f"bytes={SIZE - 10}-", SIZE - 10, SIZE),
    ("suffix", "bytes=-500", SIZE - 500, SIZE),
    ("clamped-end", "bytes=100-99999999999", 100, SIZE),
    ("suffix-too-long", f"bytes=-{SIZE + 5}", 0, SIZE),
]


async def test_a_single_range_is_206_with_content_range(
    service: Service, video: str, subtests: pytest.Subtests
) -> None:
    for case, header, start, stop in SINGLE_RANGES:
        with subtests.test(case=case):
            answer = await get(service, file_path(video), range=header)
            assert answer.status_code == 206
            assert answer.content == VIDEO[start:stop]
            assert answer.headers["content-range"] == f"bytes {start}-{stop - 1}/{SIZE}"
            assert answer.headers["content-length"] == str(stop - start)


async def test_a_range_past_the_end_is_416(
    service: Service, video: str, subtests: pytest.Subtests
) -> None:
    for header in (f"bytes={SIZE}-", "bytes=-0", f"bytes={SIZE + 9}-{SIZE + 20}"):
        with subtests.test(range=header):
            answer = await get(service, file_path(video), range=header)
            assert answer.status_code == 416
            assert answer.headers["content-range"] == f"bytes */{SIZE}"
            assert answer.json()["error"] == "range_not_satisfiable"


async def test_several_or_unreadable_ranges_get_the_whole_file(
    service: Service, video: str, subtests: pytest.Subtests
) -> None:
    unusable = {
        "several": "bytes=0-9,20-29",
        "backwards": "bytes=5-3",
        "other-unit": "items=0-9",
        "not-numbers": "bytes=x-y",
        "empty": "bytes=-",
    }
    for case, header in unusable.items():
        with subtests.test(case=case):
            answer = await get(service, file_path(video), range=header)
            assert answer.status_code == 200
            assert answer.content == VIDEO
            assert "content-range" not in answer.headers


async def test_head_answers_the_headers_without_the_body(service: Service, video: str) -> None:
    answer = await service.http.head(file_path(video), headers=service.admin)
    assert answer.status_code == 200
    assert answer.headers["content-length"] == str(SIZE)
    assert answer.headers["etag"] == f'"{hashlib.sha256(VIDEO).hexdigest()}"'
    assert answer.content == b""


async def test_a_matching_if_none_match_is_304(
    service: Service, video: str, subtests: pytest.Subtests
) -> None:
    etag = f'"{hashlib.sha256(VIDEO).hexdigest()}"'
    offered = {"strong": etag, "weak": f"W/{etag}", "star": "*", "listed": f'"other", {etag}'}
    for form, header in offered.items():
        with subtests.test(form=form):
            answer = await get(service, file_path(video), if_none_match=header)
            assert answer.status_code == 304
            assert answer.content == b""
            assert answer.headers["etag"] == etag


async def test_another_if_none_match_gets_the_file(service: Service, video: str) -> None:
    answer = await get(service, file_path(video), if_none_match='"not-this-one"')
    assert (answer.status_code, answer.content) == (200, VIDEO)


async def test_if_range_with_the_current_etag_serves_the_range(
    service: Service, video: str
) -> None:
    etag = f'"{hashlib.sha256(VIDEO).hexdigest()}"'
    answer = await get(service, file_path(video), range="bytes=0-9", if_range=etag)
    assert (answer.status_code, answer.content) == (206, VIDEO[:10])


async def test_if_range_with_the_last_modified_date_serves_the_range(
    service: Service, video: str, clock: FakeClock
) -> None:
    when = format_datetime(clock().replace(microsecond=0), usegmt=True)
    answer = await get(service, file_path(video), range="bytes=0-9", if_range=when)
    assert (answer.status_code, answer.content) == (206, VIDEO[:10])


async def test_if_range_with_a_stale_validator_gets_the_whole_file(
    service: Service, video: str, subtests: pytest.Subtests
) -> None:
    for validator in ('"stale-etag"', "Tue, 01 Jan 2019 00:00:00 GMT", "junk"):
        with subtests.test(validator=validator):
            answer = await get(service, file_path(video), range="bytes=0-9", if_range=validator)
            assert (answer.status_code, answer.content) == (200, VIDEO)


async def test_an_output_not_archived_is_409_with_its_state_and_error(
    service: Service,
    ledger: LedgerStore,
    clock: FakeClock,
    media: ArchiveStore,
    subtests: pytest.Subtests,
) -> None:
    """A task of its own in each state; `pruned` last, the only one ever archived."""
    for state in ("pending", "failed", "missed", "pruned"):
        with subtests.test(state=state):
            ref = await succeeded_task(service, ledger, clock, 1)
            if state == "pruned":
                await settle(ledger, ref, archived(await put(media, VIDEO, "video/mp4")))
                clock.advance(60)
                assert (await ledger.prune_artifacts(clock()))[0] == 1
                error = None
            else:
                error = f"{state}: HTTP 503 from {HOST}"
                retry = clock() + timedelta(minutes=5) if state == "pending" else None
                attempt = Attempt(ArtifactState(state), HOST, error=error, retry_at=retry)
                await settle(ledger, ref, attempt)
            answer = await get(service, file_path(ref))
            assert answer.status_code == 409
            body = answer.json()
            assert (body["error"], body["state"], body["last_error"]) == (
                "not_archived",
                state,
                error,
            )
            assert state in body["message"]


async def test_an_unknown_task_or_output_is_404(
    service: Service, video: str, subtests: pytest.Subtests
) -> None:
    for path in ("/v1/tasks/tl_nope/artifacts/output-1", f"/v1/tasks/{video}/artifacts/output-9"):
        with subtests.test(path=path):
            answer = await get(service, path)
            assert answer.status_code == 404
            assert answer.json()["error"] == "not_found"


@pytest.mark.parametrize(
    ("header", "size", "span"),
    [
        ("bytes=0-0", 10, Span(0, 1)),
        ("BYTES=2-4", 10, Span(2, 5)),  # the unit is case-insensitive
        ("bytes=9-", 10, Span(9, 10)),
        ("bytes=-10", 10, Span(0, 10)),
        (f"bytes=0-{'9' * 5000}", 10, Span(0, 10)),  # past Python's int parsing limit
        ("bytes=0-9, 20-29", 10, None),
        (None, 10, None),
    ],
)
def test_requested_span_reads_one_range(header: str | None, size: int, span: Span | None) -> None:
    assert requested_span(header, size) == span


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=0-", 0), ("bytes=-1", 0), (f"bytes={'9' * 30}-", 10)]
)
def test_requested_span_refuses_ranges_past_the_end(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        requested_span(header, size)


# -- credentials -----------------------------------------------------------------------


async def test_without_credentials_it_is_401(
    service: Service, video: str, subtests: pytest.Subtests
) -> None:
    for suffix in ("", "/output-1", "/output-1?token=forged"):
        with subtests.test(suffix=suffix):
            answer = await get(service, f"/v1/tasks/{video}/artifacts{suffix}", auth=False)
            assert answer.status_code == 401


async def test_the_media_token_opens_its_file_without_a_header(
    service: Service, video: str
) -> None:
    (entry,) = await listed(service, video)
    answer = await get(service, media_path(entry), auth=False, range="bytes=0-3")
    assert (answer.status_code, answer.content) == (206, VIDEO[:4])


async def test_a_media_token_opens_no_other_file(
    service: Service, ledger: LedgerStore, clock: FakeClock, media: ArchiveStore
) -> None:
    ref = await succeeded_task(service, ledger, clock, 2)
    image = await put(media, IMAGE, "image/png")
    await settle(ledger, ref, archived(await put(media, VIDEO, "video/mp4")), archived(image))
    other = await archived_video(service, ledger, clock, media)
    first, second = await listed(service, ref)
    token = urlsplit(first["url"]).query
    assert (await get(service, media_path(second), auth=False)).content == IMAGE
    assert (
        await get(service, f"{file_path(ref, 'output-2')}?{token}", auth=False)
    ).status_code == 401
    assert (await get(service, f"{file_path(other)}?{token}", auth=False)).status_code == 401


async def test_a_media_token_opens_no_other_route(service: Service, video: str) -> None:
    (entry,) = await listed(service, video)
    token = urlsplit(entry["url"]).query
    for path in (f"/v1/tasks/{video}", f"/v1/tasks/{video}/artifacts", "/v1/tasks"):
        answer = await get(service, f"{path}?{token}", auth=False)
        # Refused: unauthenticated, or first for a query parameter the route does not take.
        assert answer.status_code in (401, 422), answer.text
        assert answer.json()["error"] in ("unauthenticated", "invalid"), answer.text


async def test_a_media_token_expires(service: Service, video: str, clock: FakeClock) -> None:
    (entry,) = await listed(service, video)
    clock.advance(MEDIA_TOKEN_MAX_AGE_SECONDS - 1)
    assert (await get(service, media_path(entry), auth=False)).status_code == 200
    clock.advance(2)
    assert (await get(service, media_path(entry), auth=False)).status_code == 401


async def test_a_new_admin_token_ends_every_media_token(
    database_url: str, clock: FakeClock, archive: ArchiveSettings, video: str, service: Service
) -> None:
    (entry,) = await listed(service, video)
    settings = settings_for(database_url, archive=archive, admin_token="rotated-admin-token")
    async with running_service(settings, clock) as rotated:
        assert (await get(rotated, media_path(entry), auth=False)).status_code == 401


# -- the store -------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["removed", "unreadable"])
async def test_a_store_that_cannot_read_the_file_is_503(
    service: Service, video: str, archive: ArchiveSettings, damage: str
) -> None:
    path = Path(archive.url) / content_key(hashlib.sha256(VIDEO).hexdigest())
    path.unlink()
    if damage == "unreadable":
        path.mkdir()  # opening a directory as a file fails with an OS error
    for method in ("GET", "HEAD"):
        answer = await service.http.request(method, file_path(video), headers=service.admin)
        assert answer.status_code == 503
        assert "retry-after" in answer.headers
    body = (await get(service, file_path(video))).json()
    assert body["error"] == "archive_unavailable"


async def test_with_the_archive_off_an_archived_file_is_503(
    database_url: str, clock: FakeClock, video: str, service: Service
) -> None:
    settings = settings_for(database_url, archive=ArchiveSettings(url="off"))
    async with running_service(settings, clock) as off:
        answer = await get(off, file_path(video))
        assert (answer.status_code, answer.json()["error"]) == (503, "archive_unavailable")
        assert len(await listed(off, video)) == 1


@pytest.mark.parametrize("url", ["s3://Not_A_Bucket", "ftp://example.com/media"])
def test_a_bad_archive_url_stops_the_app_like_any_bad_setting(tmp_path: Path, url: str) -> None:
    archive = ArchiveSettings(url=url, spool_dir=str(tmp_path / "spool"))
    with pytest.raises(ConfigError, match="TASKLEDGER_ARCHIVE_URL"):
        create_app(settings_for(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", archive=archive))


def s3_archive(
    s3: S3Server, tmp_path: Path, *, presign: bool
) -> tuple[ArchiveSettings, ArchiveStore]:
    """Archive settings naming a fresh prefix of the moto bucket, and a store on it."""
    archive = ArchiveSettings(
        url=s3.url(secrets.token_hex(4)), spool_dir=str(tmp_path / "spool"), presign=presign
    )
    return archive, open_store(archive.url, s3.environ, spool_dir=Path(archive.spool_dir))


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, s3: S3Server) -> S3Server:
    """The receiver reads the AWS_* settings of the moto server from its environment."""
    for name, value in s3.environ.items():
        monkeypatch.setenv(name, value)
    return s3


@pytest.mark.parametrize("presign", [True, False], ids=["presigned", "streamed"])
async def test_an_s3_archive_redirects_to_a_presigned_url_or_streams(
    database_url: str,
    clock: FakeClock,
    aws: S3Server,
    tmp_path: Path,
    ledger: LedgerStore,
    presign: bool,
) -> None:
    archive, bucket = s3_archive(aws, tmp_path, presign=presign)
    settings = settings_for(database_url, archive=archive)
    async with running_service(settings, clock) as service:
        ref = await succeeded_task(service, ledger, clock, 1)
        await settle(ledger, ref, archived(await put(bucket, VIDEO, "video/mp4")))
        answer = await get(service, file_path(ref), range="bytes=10-19")
        head = await service.http.head(file_path(ref), headers=service.admin)
        if presign:
            assert answer.status_code == 307
            location = answer.headers["location"]
            assert location.startswith(aws.endpoint)
            async with httpx.AsyncClient() as http:
                answer = await http.get(location, headers={"range": "bytes=10-19"})
        assert (answer.status_code, answer.content) == (206, VIDEO[10:20])
        assert (head.status_code, head.headers["content-length"]) == (200, str(SIZE))


async def test_an_s3_object_gone_missing_is_503(
    database_url: str, clock: FakeClock, aws: S3Server, tmp_path: Path, ledger: LedgerStore
) -> None:
    archive, bucket = s3_archive(aws, tmp_path, presign=False)
    async with running_service(settings_for(database_url, archive=archive), clock) as service:
        ref = await succeeded_task(service, ledger, clock, 1)
        stored = await put(bucket, VIDEO, "video/mp4")
        await settle(ledger, ref, archived(stored))
        await bucket.delete(stored.storage_key)
        assert (await get(service, file_path(ref))).status_code == 503
