"""The operator dashboard at /ui: who may see it, and what a real Chromium draws from the API."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from itsdangerous import TimestampSigner
from playwright.async_api import Page, async_playwright

from receiver.ui import SESSION_COOKIE, SESSION_MAX_AGE_SECONDS
from schemas.database import create_engine
from schemas.ledger import Poll, Reader
from schemas.media.storage import LocalStore, content_key
from schemas.settings import ArchiveSettings
from schemas.states import State
from schemas.store import ArchivedFile, ArtifactState, Attempt, LedgerStore
from schemas.wire import Observation, WireFormat
from schemas.wire.openai import content_paths
from simulator import Faults, Lifecycle, SimConfig
from simulator.files import Video, png
from tests.conftest import FakeClock
from tests.support.databases import in_ci
from tests.support.service import ADMIN_TOKEN, Service, running_service, settings_for
from tests.support.system import System, running_system

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BROWSER_TIMEOUT_MS = 20_000
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        yield service


async def log_in(service: Service, token: str = ADMIN_TOKEN) -> Any:
    return await service.http.post("/ui/login", content=f"token={token}", headers=FORM)


@pytest.mark.parametrize("path", ["/ui", "/ui/static/ui.js", "/ui/static/ui.css"])
async def test_ui_without_token_is_401(service: Service, path: str) -> None:
    response = await service.http.get(path)
    assert response.status_code == 401


async def test_ui_without_token_answers_a_login_form(service: Service) -> None:
    response = await service.http.get("/ui")
    assert response.headers["content-type"].startswith("text/html")
    assert 'action="/ui/login"' in response.text
    assert 'name="token"' in response.text


async def test_ui_with_bearer_token_serves_the_page(service: Service) -> None:
    response = await service.http.get("/ui", headers=service.admin)
    assert response.status_code == 200
    assert "/ui/static/ui.js" in response.text
    assert "script-src 'self'" in response.headers["content-security-policy"]


async def test_login_sets_a_strict_http_only_cookie_and_redirects_to_ui(service: Service) -> None:
    response = await log_in(service)
    assert response.status_code == 303
    assert response.headers["location"] == "/ui"
    cookie = response.headers["set-cookie"].lower()
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert f"max-age={SESSION_MAX_AGE_SECONDS}" in cookie


async def test_after_login_ui_and_its_files_are_200(service: Service) -> None:
    await log_in(service)
    page = await service.http.get("/ui")
    script = await service.http.get("/ui/static/ui.js")
    assert (page.status_code, script.status_code) == (200, 200)
    assert script.headers["content-type"].startswith("text/javascript")


async def test_login_with_a_wrong_token_is_401_without_a_cookie(service: Service) -> None:
    response = await log_in(service, token="not-the-token")
    assert response.status_code == 401
    assert "set-cookie" not in response.headers
    assert (await service.http.get("/ui")).status_code == 401


async def test_session_cookie_reads_the_api(service: Service) -> None:
    await log_in(service)
    response = await service.http.get("/v1/tasks")
    assert response.status_code == 200


async def test_session_cookie_never_writes_through_the_api(service: Service) -> None:
    await log_in(service)
    response = await service.http.post("/v1/tasks", json={"provider": "apidot"})
    assert response.status_code == 401


async def test_session_ends_after_twelve_hours(service: Service, clock: FakeClock) -> None:
    await log_in(service)
    clock.advance(SESSION_MAX_AGE_SECONDS + 1)
    assert (await service.http.get("/ui")).status_code == 401
    assert (await service.http.get("/v1/tasks")).status_code == 401


async def test_cookie_signed_with_another_key_is_401(service: Service) -> None:
    forged = TimestampSigner("guessed-token", salt="taskledger.ui.session").sign("x").decode()
    service.http.cookies.set(SESSION_COOKIE, forged)
    assert (await service.http.get("/ui")).status_code == 401


async def test_logout_ends_the_session(service: Service) -> None:
    await log_in(service)
    response = await service.http.post("/ui/logout")
    assert response.status_code == 303
    assert (await service.http.get("/ui")).status_code == 401


async def test_only_the_dashboards_own_files_are_served(service: Service) -> None:
    response = await service.http.get("/ui/static/ui.py", headers=service.admin)
    assert response.status_code == 404


async def test_the_page_plays_media_from_its_own_origin_only(service: Service) -> None:
    policy = (await service.http.get("/ui", headers=service.admin)).headers
    assert "media-src 'self';" in policy["content-security-policy"]


# -- the page in a real browser -----------------------------------------------------


def chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if in_ci():
        pytest.fail(f"{CHROMIUM} is required in CI: apt-get install chromium (dev.py test does)")
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")


async def system_with_history(system: System) -> list[str]:
    """30 finished tasks whose callbacks were often dropped, and 2 that never will finish."""
    refs: list[str] = []
    for provider in ("openai", "apidot", "evolink"):
        refs += await system.submit(provider, 10)
    await system.settle(len(refs), within_seconds=60)
    stuck = [await system.service.register("apidot", owner="ops") for _ in range(2)]
    return [task["ref"] for task in stuck]


async def api(system: System, path: str, **params: str) -> dict[str, Any]:
    response = await system.service.http.get(path, params=params, headers=system.service.admin)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def chart_numbers(page: Page) -> dict[str, Any]:
    return dict(
        await page.evaluate(
            """() => ({
              outcomes: [...document.querySelectorAll('svg.outcomes')]
                .reduce((n, s) => n + Number(s.dataset.total), 0),
              segments: [...document.querySelectorAll('svg.outcomes rect.seg')]
                .reduce((n, r) => n + Number(r.dataset.count), 0),
              histogram: Number(document.querySelector('svg.histogram').dataset.total),
              rates: Object.fromEntries([...document.querySelectorAll('svg.missed rect.bar')]
                .map((r) => [r.dataset.provider, Number(r.dataset.rate)])),
              stuck: Number(document.getElementById('stuck').dataset.rows),
            })"""
        )
    )


async def sign_in(page: Page, base_url: str) -> None:
    response = await page.goto(f"{base_url}/ui")
    assert response is not None
    assert response.status == 401
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("body[data-state=ready]")


async def open_first_recovered(page: Page) -> str:
    button = page.locator("#recovered button.ref").first
    ref = str(await button.get_attribute("data-ref"))
    await button.click()
    await page.wait_for_selector("#panel[data-state=ready]")
    return ref


async def test_dashboard_draws_the_ledger_and_opens_a_task_timeline(tmp_path: Path) -> None:
    executable = chromium()
    config = SimConfig(
        seed=5,
        time_scale=0.05,
        lifecycle=Lifecycle(min_duration_s=0.3, max_duration_s=1.2, progress_callbacks=True),
        faults=Faults(drop_rate=0.5, duplicate_rate=0.2),
    )
    async with running_system(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", config) as system:
        await system_with_history(system)
        async with asyncio.timeout(90), async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(executable), args=CHROMIUM_ARGS, timeout=BROWSER_TIMEOUT_MS
            )
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1600})
                page.set_default_timeout(BROWSER_TIMEOUT_MS)
                await check_dashboard(page, system)
            finally:
                await browser.close()


async def check_dashboard(page: Page, system: System) -> None:
    await sign_in(page, system.service.base_url)
    errors: list[str] = []  # from here on: the sign-in page itself is a 401, by design
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await page.reload()
    await page.wait_for_selector("body[data-state=ready]")
    now = datetime.now(UTC)
    window = {"since": (now - timedelta(days=1)).isoformat(), "until": now.isoformat()}
    audit = await api(system, "/v1/audit", **window)
    stuck = await api(system, "/v1/tasks", stuck="true")
    drawn = await chart_numbers(page)
    finished = sum(b[o] for b in audit["buckets"] for o in ("succeeded", "failed", "cancelled"))
    finished += sum(b["lost"] for b in audit["buckets"])
    assert drawn["outcomes"] == drawn["segments"] == finished == 30
    assert drawn["histogram"] == sum(b["count"] for b in audit["time_to_terminal_histogram"])
    assert drawn["rates"] == {p["provider"]: p["missed_callback_rate"] for p in audit["providers"]}
    assert drawn["stuck"] == len(stuck["tasks"]) == 2
    await screenshot(page, "dashboard.png")
    ref = await open_first_recovered(page)
    await check_timeline(page, system, ref)
    await screenshot(page, "dashboard-task.png")
    assert errors == []


async def check_timeline(page: Page, system: System, ref: str) -> None:
    task = await api(system, f"/v1/tasks/{ref}")
    transitions = task["timeline"]["transitions"]
    rows = page.locator("#panel-transitions tbody tr")
    assert await rows.count() == len(transitions) > 0
    last = rows.nth(len(transitions) - 1)
    assert task["state"] in await last.inner_text()
    assert transitions[-1]["source"] in await last.inner_text()
    assert task["callback_url"] not in await page.content()


# -- the archived outputs of a task, in a real browser ----------------------------------

THUMBNAIL = png("thumbnail", 320, 180)
VIDEO = b"".join(Video("video", 256 * 1024).chunks())


async def archived_openai_task(
    service: Service, database_url: str, archive: LocalStore, clock: FakeClock
) -> str:
    """An OpenAI task whose video and thumbnail are in the archive."""
    task = await service.register("openai", provider_task_id="video_archived")
    engine = create_engine(database_url)
    store = LedgerStore(engine, clock, {"openai": Reader(WireFormat.OPENAI, 3600.0, True)})
    try:
        extra = {"content": content_paths("video_archived")}
        observation = Observation("video_archived", State.SUCCEEDED, 100, extra=extra)
        await store.ingest([Poll(task["ref"], clock(), None, observation, 200, "{}")])
        jobs = sorted(await store.claim_artifacts("ui-test", 10, 60), key=lambda j: j.artifact.name)
        for job, (data, kind) in zip(
            jobs, ((THUMBNAIL, "image/png"), (VIDEO, "video/mp4")), strict=True
        ):
            stored = await put(archive, data, kind)
            attempt = Attempt(ArtifactState.ARCHIVED, "api.openai.com", stored)
            assert await store.record_attempt(job.artifact.id, "ui-test", attempt)
    finally:
        await store.close()
        await engine.dispose()
    return str(task["ref"])


async def put(archive: LocalStore, data: bytes, content_type: str) -> ArchivedFile:
    sha = hashlib.sha256(data).hexdigest()
    spool = archive.spool_dir / f"{sha}.part"
    spool.write_bytes(data)
    await archive.put(spool, content_key(sha), content_type)
    return ArchivedFile(content_key(sha), len(data), sha, content_type)


async def test_task_panel_plays_an_archived_video_with_its_thumbnail_as_poster(
    tmp_path: Path, clock: FakeClock
) -> None:
    executable = chromium()
    archive = ArchiveSettings(url=str(tmp_path / "archive"), spool_dir=str(tmp_path / "spool"))
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    async with running_service(settings_for(database_url, archive=archive), clock) as service:
        ref = await archived_openai_task(
            service, database_url, LocalStore(Path(archive.url)), clock
        )
        async with asyncio.timeout(60), async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(executable), args=CHROMIUM_ARGS, timeout=BROWSER_TIMEOUT_MS
            )
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1200})
                page.set_default_timeout(BROWSER_TIMEOUT_MS)
                await check_outputs(page, service.base_url, ref)
            finally:
                await browser.close()


async def check_outputs(page: Page, base_url: str, ref: str) -> None:
    await sign_in(page, base_url)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.fill("#ref-input", ref)
    await page.click("#open-task button[type=submit]")
    await page.wait_for_selector("#panel[data-state=ready]")
    video = page.locator("#panel-artifacts figure[data-name=video][data-state=archived] video")
    await video.wait_for()
    thumbnail = page.locator("#panel-artifacts figure[data-name=thumbnail] img")
    assert await video.get_attribute("preload") == "metadata"
    assert await video.get_attribute("controls") is not None
    assert await video.get_attribute("poster") == await thumbnail.get_attribute("src")
    await page.wait_for_function(
        "() => document.querySelector('#panel-artifacts figure[data-name=thumbnail] img')"
        ".naturalWidth === 320"
    )
    fetched = await fetch_without_cookie(page, str(await video.get_attribute("src")))
    assert fetched == {"status": 206, "bytes": 16, "type": "video/mp4"}
    facts = await page.locator("#panel-artifacts figure[data-name=video]").inner_text()
    assert hashlib.sha256(VIDEO).hexdigest()[:12] in facts
    assert "256 KiB" in facts
    await screenshot(page, "dashboard-outputs.png")
    assert errors == []


async def fetch_without_cookie(page: Page, source: str) -> dict[str, Any]:
    """What the media URL answers with no session cookie: its token alone opens it."""
    return dict(
        await page.evaluate(
            """async (source) => {
              const headers = { range: 'bytes=0-15' };
              const answer = await fetch(source, { credentials: 'omit', headers });
              const body = await answer.arrayBuffer();
              return { status: answer.status, bytes: body.byteLength,
                       type: answer.headers.get('content-type') };
            }""",
            source,
        )
    )


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot: {path}")
