"""The operator dashboard at /ui: who may see it, and what a real Chromium draws from the API."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from itsdangerous import TimestampSigner
from playwright.async_api import Browser, Page, async_playwright

from ops.console.render import NEVER
from ops.console.timeline import timeline as show_timeline
from receiver.dashboard import body_json
from receiver.ui import SESSION_COOKIE, SESSION_MAX_AGE_SECONDS, STATIC_DIR
from schemas.database import create_engine
from schemas.endpoint_urls import kind_of
from schemas.fold import LAST_ERROR_MARK
from schemas.ledger import Poll, Reader
from schemas.media.storage import LocalStore, content_key
from schemas.settings import ArchiveSettings
from schemas.states import State
from schemas.store import ArchivedFile, ArtifactState, Attempt, AttemptResult, LedgerStore, queries
from schemas.wire import Observation, WireFormat
from schemas.wire.openai import content_paths
from simulator import Faults, Lifecycle, SimConfig
from simulator.files import Video, png
from tests.conftest import FakeClock
from tests.support.databases import unavailable
from tests.support.senders import apidot_body
from tests.support.service import ADMIN_TOKEN, Service, running_service, settings_for
from tests.support.system import System, running_system
from tests.support.waiting import eventually

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
VIEWPORT_WIDTH = 1280  # the narrowest desktop the dashboard is built for
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


# Headers a browser sends with a form another site's page posts here (login CSRF).
CROSS_SITE = [
    {"sec-fetch-site": "cross-site", "origin": "https://attacker.example"},
    {"sec-fetch-site": "same-site"},
    {"origin": "https://attacker.example"},
    {"origin": "null"},  # a sandboxed frame, or a page that sends no referrer
]
CROSS_SITE_IDS = ["cross-site", "same-site", "other-origin", "null-origin"]


@pytest.mark.parametrize("sent", CROSS_SITE, ids=CROSS_SITE_IDS)
async def test_a_sign_in_posted_from_another_site_is_refused(
    service: Service, sent: dict[str, str]
) -> None:
    response = await service.http.post(
        "/ui/login", content=f"token={ADMIN_TOKEN}", headers={**FORM, **sent}
    )
    assert response.status_code == 403
    assert "set-cookie" not in response.headers
    assert 'role="alert">Refused: that form was sent from another site' in response.text


@pytest.mark.parametrize("sent", CROSS_SITE, ids=CROSS_SITE_IDS)
async def test_a_sign_out_posted_from_another_site_keeps_the_session(
    service: Service, sent: dict[str, str]
) -> None:
    await log_in(service)
    response = await service.http.post("/ui/logout", headers=sent)
    assert response.status_code == 403
    assert "set-cookie" not in response.headers
    assert (await service.http.get("/ui")).status_code == 200


def own_page(service: Service, case: str) -> dict[str, str]:
    """Headers a browser sends with the form of this service's own sign-in page."""
    return {
        "same-origin": {"sec-fetch-site": "same-origin", "origin": service.base_url},
        "typed-in": {"sec-fetch-site": "none"},
        # Behind a proxy the request names the upstream host: the public base URL is ours.
        "public-base-url": {"host": "upstream.internal:8000", "origin": service.base_url},
    }[case]


@pytest.mark.parametrize("case", ["same-origin", "typed-in", "public-base-url"])
async def test_a_sign_in_from_this_services_own_page_is_accepted(
    service: Service, case: str
) -> None:
    response = await service.http.post(
        "/ui/login", content=f"token={ADMIN_TOKEN}", headers={**FORM, **own_page(service, case)}
    )
    assert response.status_code == 303, response.text
    assert SESSION_COOKIE in response.cookies


async def test_a_sign_in_from_another_port_of_this_host_is_refused(service: Service) -> None:
    port = urlsplit(service.base_url).port
    origin = f"http://127.0.0.1:{(port or 80) + 1}"
    response = await service.http.post(
        "/ui/login", content=f"token={ADMIN_TOKEN}", headers={**FORM, "origin": origin}
    )
    assert response.status_code == 403


async def test_only_the_dashboards_own_files_are_served(service: Service) -> None:
    response = await service.http.get("/ui/static/ui.py", headers=service.admin)
    assert response.status_code == 404


async def test_the_page_plays_media_from_its_own_origin_only(service: Service) -> None:
    policy = (await service.http.get("/ui", headers=service.admin)).headers
    assert "media-src 'self';" in policy["content-security-policy"]


async def test_a_delivery_payload_is_only_for_an_admin(service: Service) -> None:
    ref = (await service.register("apidot"))["ref"]
    for path in (f"/v1/tasks/{ref}/deliveries/1", f"/v1/tasks/{ref}/polls/1"):
        assert (await service.http.get(path)).status_code == 401
        assert (await service.http.get(path, headers=service.admin)).status_code == 404


@pytest.mark.parametrize("row", ["0", "9" * 19, "9" * 5000, "x1", "\u0661"])  # an Arabic-Indic 1
async def test_a_row_id_no_row_can_have_is_404(service: Service, row: str) -> None:
    """Not a 503: thousands of digits are no number Python converts, nor a BIGINT."""
    ref = (await service.register("apidot"))["ref"]
    for kind in ("deliveries", "polls"):
        answer = await service.http.get(f"/v1/tasks/{ref}/{kind}/{row}", headers=service.admin)
        assert answer.status_code == 404, answer.text


async def test_a_poll_payload_is_the_providers_answer_as_kept(
    service: Service, database_url: str, clock: FakeClock
) -> None:
    ref = (await service.register("apidot", provider_task_id="t-raw"))["ref"]
    answer = '{"code":200,"data":{"task_id":"t-raw","status":"running"}}'
    await ingest_poll(database_url, clock, ref, Observation("t-raw", State.RUNNING, 40), answer)
    polls = (await service.task(ref))["timeline"]["polls"]
    response = await service.http.get(
        f"/v1/tasks/{ref}/polls/{polls[0]['id']}", headers=service.admin
    )
    assert response.json()["body"] == answer
    assert response.json()["encoding"] == "utf-8"


@pytest.mark.parametrize(
    ("body", "encoding", "shown"),
    [
        (b'{"ok":true}', "utf-8", '{"ok":true}'),
        (b"\xff\xfe\x00raw", "base64", base64.b64encode(b"\xff\xfe\x00raw").decode()),
    ],
    ids=["utf-8", "binary"],
)
def test_a_body_that_is_not_utf8_is_shown_as_base64(body: bytes, encoding: str, shown: str) -> None:
    assert body_json(body) == {"encoding": encoding, "body": shown}


@pytest.mark.parametrize(
    ("hours", "bucket_seconds"),
    [(1, 300), (6, 900), (24, 3600), (168, 6 * 3600)],
    ids=["hour", "6h", "day", "week"],
)
async def test_outcome_buckets_fit_the_window(
    service: Service, clock: FakeClock, hours: int, bucket_seconds: int
) -> None:
    window = {"since": (clock() - timedelta(hours=hours)).isoformat(), "until": clock().isoformat()}
    response = await service.http.get(
        "/v1/dashboard/outcomes", params=window, headers=service.admin
    )
    assert response.json()["bucket_seconds"] == bucket_seconds


async def test_a_provider_without_a_base_url_is_not_configured(service: Service) -> None:
    response = await service.http.get("/v1/dashboard/providers", headers=service.admin)
    apidot = next(p for p in response.json()["providers"] if p["provider"] == "apidot")
    assert (apidot["status"], apidot["pollable"]) == ("not configured", False)
    assert "TASKLEDGER_PROVIDER_APIDOT_BASE_URL" in apidot["reason"]


async def test_the_sign_in_page_script_is_served_before_sign_in(service: Service) -> None:
    page = await service.http.get("/ui")
    script = await service.http.get("/ui/static/login.js")
    assert '<script src="/ui/static/login.js"' in page.text
    assert script.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]


async def ingest_poll(
    database_url: str, clock: FakeClock, ref: str, observation: Observation, answer: str
) -> None:
    engine = create_engine(database_url)
    store = LedgerStore(engine, clock, {"apidot": Reader(WireFormat.APIDOT, 3600.0, True)})
    try:
        await store.ingest([Poll(ref, clock(), None, observation, 200, answer)])
    finally:
        await store.close()
        await engine.dispose()


# -- the page in a real browser -----------------------------------------------------


def chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    unavailable(
        f"{CHROMIUM} is missing: apt-get install chromium",
        f"{CHROMIUM} is required in CI: apt-get install chromium (dev.py test does)",
    )


@asynccontextmanager
async def browser_session(seconds: float) -> AsyncIterator[Browser]:
    executable = chromium()
    async with asyncio.timeout(seconds), async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(executable), args=CHROMIUM_ARGS, timeout=BROWSER_TIMEOUT_MS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def new_page(browser: Browser, height: int = 1600) -> Page:
    """A page of its own (no cookie yet), `VIEWPORT_WIDTH` wide, that may use the clipboard."""
    context = await browser.new_context(
        viewport={"width": VIEWPORT_WIDTH, "height": height},
        permissions=["clipboard-read", "clipboard-write"],
    )
    page = await context.new_page()
    page.set_default_timeout(BROWSER_TIMEOUT_MS)
    return page


def watch_errors(page: Page) -> list[str]:
    """Script errors and console errors from here on (the sign-in page is a 401 by design)."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    return errors


async def system_with_history(system: System) -> list[str]:
    """30 finished tasks whose callbacks were often dropped, and 2 that never will finish
    (no provider task id to poll). Once both were polled the reconciler stops: the page and
    the API are compared on a ledger that no longer moves."""
    refs: list[str] = []
    for provider in ("openai", "apidot", "evolink"):
        refs += await system.submit(provider, 10)
    await system.settle(len(refs), within_seconds=60)
    stuck = [(await system.service.register("apidot", owner="ops"))["ref"] for _ in range(2)]

    async def polled() -> bool:
        tasks = [await system.service.task(ref) for ref in stuck]
        return all(task["timeline"]["polls"] for task in tasks)

    await eventually(polled, within=30)
    await system.stop_reconcilers()
    return stuck


async def api(system: System, path: str, **params: str) -> dict[str, Any]:
    response = await system.service.http.get(path, params=params, headers=system.service.admin)
    assert response.status_code == 200, response.text
    return dict(response.json())


def last_day() -> dict[str, str]:
    now = datetime.now(UTC)
    return {"since": (now - timedelta(days=1)).isoformat(), "until": now.isoformat()}


async def sign_in(page: Page, url: str) -> None:
    response = await page.goto(url)
    assert response is not None
    assert response.status == 401
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("body[data-state=ready]")


async def test_dashboard_draws_the_ledger_and_opens_a_task_timeline(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = SimConfig(
        seed=5,
        time_scale=0.05,
        lifecycle=Lifecycle(min_duration_s=0.3, max_duration_s=1.2, progress_callbacks=True),
        faults=Faults(drop_rate=0.5, duplicate_rate=0.2),
    )
    async with running_system(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", config) as system:
        await system_with_history(system)
        async with browser_session(120) as browser:
            page = await new_page(browser)
            await sign_in(page, f"{system.service.base_url}/ui")
            errors = watch_errors(page)
            await check_dashboard(page, system)
            task = await check_task_panel(page, system)
            await check_deep_links(page, system, task["ref"])
            await check_deep_link_survives_sign_in(await new_page(browser), system, task["ref"])
            assert errors == []
    urls = task["result"]["urls"]
    logged = "".join(capfd.readouterr())
    assert urls
    assert not [url for url in urls if url in logged]


async def check_dashboard(page: Page, system: System) -> None:
    await check_charts(page, system)
    assert await layout_problems(page) == []
    assert await hidden_columns(page, "providers", "health", "stuck", "tasks") == {}
    await check_health(page, system)
    await check_stuck(page, system)
    await check_filters(page, system)
    await screenshot(page, "dashboard.png")
    await check_last_hour(page)


# -- the charts ----------------------------------------------------------------------


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
              points: [...document.querySelectorAll('svg.missed-rate circle.rate-point')]
                .map((c) => [c.dataset.provider, c.dataset.slot, Number(c.dataset.rate)]),
              ticks: [...document.querySelectorAll('svg.outcomes .tick, svg.histogram .tick')]
                .map((t) => t.textContent),
              rateTicks: [...document.querySelectorAll('svg.missed-rate text.tick')]
                .map((t) => t.textContent),
              stuck: Number(document.getElementById('stuck').dataset.rows),
              bucket: Number(document.getElementById('outcomes').dataset.bucketSeconds),
              slots: Number(document.getElementById('outcomes').dataset.slots),
            })"""
        )
    )


async def check_charts(page: Page, system: System) -> None:
    audit = await api(system, "/v1/audit", **last_day())
    series = await api(system, "/v1/dashboard/outcomes", **last_day())
    stuck = await api(system, "/v1/tasks", stuck="true")
    drawn = await chart_numbers(page)
    final = sum(
        b[o] for b in series["buckets"] for o in ("succeeded", "failed", "cancelled", "lost")
    )
    hourly = sum(
        b[o] for b in audit["buckets"] for o in ("succeeded", "failed", "cancelled", "lost")
    )
    assert drawn["outcomes"] == drawn["segments"] == final == hourly == 30
    assert drawn["histogram"] == sum(b["count"] for b in audit["time_to_terminal_histogram"])
    assert drawn["rates"] == {p["provider"]: p["missed_callback_rate"] for p in audit["providers"]}
    assert drawn["stuck"] == len(stuck["tasks"]) == 2
    assert drawn["bucket"] == 3600
    assert 24 <= drawn["slots"] <= 25  # a window not on the hour touches 25 hours
    assert all(tick.isdigit() for tick in drawn["ticks"]), drawn["ticks"]
    assert drawn["rateTicks"] == ["0%", "25%", "50%", "75%", "100%"]
    expected = {
        (b["provider"], moment(b["start"])): b["recovered"] / b["terminal"]
        for b in series["buckets"]
        if b["terminal"]
    }
    assert {(p, moment(slot)): rate for p, slot, rate in drawn["points"]} == expected
    assert sum(b["recovered"] for b in series["buckets"]) > 0


async def check_last_hour(page: Page) -> None:
    """The last hour is cut in 5-minute buckets, not drawn as one hour-wide bar."""
    await page.select_option("#range", "1")
    await page.wait_for_selector("#outcomes[data-bucket-seconds='300']")
    await page.wait_for_selector("body[data-state=ready]")
    drawn = await chart_numbers(page)
    assert drawn["outcomes"] == 30
    assert 12 <= drawn["slots"] <= 13
    assert await page.locator("#outcomes-title").inner_text() == "Outcomes per 5 minutes"
    await page.locator("#outcomes-card").screenshot(path=str(artifact("dashboard-last-hour.png")))
    await page.select_option("#range", "24")
    await page.wait_for_selector("#outcomes[data-bucket-seconds='3600']")


def moment(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


# -- the layout at 1280 px -------------------------------------------------------------


async def layout_problems(page: Page) -> list[str]:
    """Whatever a reader at this width cannot reach: the page scrolling sideways, or a table
    wider than its card that does not scroll inside it."""
    return list(
        await page.evaluate(
            """() => {
              const problems = [];
              const root = document.scrollingElement;
              if (root.scrollWidth > window.innerWidth) problems.push(`page ${root.scrollWidth}px`);
              for (const table of document.querySelectorAll('main table, #panel table')) {
                if (!table.offsetParent) continue;
                const box = table.closest('.scroll');
                const card = table.closest('section, aside');
                if (!box) { problems.push(`${table.id}: no scroll box`); continue; }
                if (box.getBoundingClientRect().right > card.getBoundingClientRect().right + 1) {
                  problems.push(`${table.id}: leaves its card`);
                }
                const scrolls = ['auto', 'scroll'].includes(getComputedStyle(box).overflowX);
                if (table.scrollWidth > box.clientWidth && !scrolls) {
                  problems.push(`${table.id}: cut off`);
                }
              }
              return problems;
            }"""
        )
    )


async def hidden_columns(page: Page, *tables: str) -> dict[str, list[str]]:
    """Per table, the headers of the columns that need scrolling to be seen."""
    hidden = await page.evaluate(
        """(ids) => Object.fromEntries(ids.map((id) => {
              const table = document.getElementById(id);
              const right = table.closest('.scroll').getBoundingClientRect().right;
              return [id, [...table.querySelectorAll('th')]
                .filter((th) => th.getBoundingClientRect().right > right + 1)
                .map((th) => th.textContent)];
            }))""",
        list(tables),
    )
    return {table: columns for table, columns in hidden.items() if columns}


# -- provider health and the task list's filters ------------------------------------------


async def health_rows(page: Page) -> dict[str, dict[str, str]]:
    return dict(
        await page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('#health tbody tr')]
              .map((tr) => [tr.dataset.provider, {
                pollable: tr.dataset.pollable,
                polling: tr.cells[1].innerText,
                error: tr.cells[3].innerText,
              }]))"""
        )
    )


async def check_health(page: Page, system: System) -> None:
    health = await api(system, "/v1/dashboard/providers")
    rows = await health_rows(page)
    assert set(rows) == set(system.settings.providers)
    for provider in health["providers"]:
        row = rows[provider["provider"]]
        assert row["pollable"] == "true"
        error = provider["last_poll_error"]
        assert (error["error"] in row["error"]) if error else row["error"] == "none"
    # The two tasks registered without a provider task id cannot be polled: it says why.
    assert health_of(health, "apidot")["last_poll_error"]["task_ref"] in rows["apidot"]["error"]


async def check_stuck(page: Page, system: System) -> None:
    """The stuck list shows why each task is stuck and its last poll error, as `tasks
    --stuck` does."""
    stuck = await api(system, "/v1/tasks", stuck="true")
    shown = await page.evaluate(
        """() => [...document.querySelectorAll('#stuck tbody tr')]
          .map((tr) => [...tr.cells].slice(-2).map((td) => td.innerText))"""
    )
    expected = []
    for task in stuck["tasks"]:
        reason, _, error = (task["attention"] or "").partition(LAST_ERROR_MARK)
        expected.append([reason or "—", error or "—"])
    assert shown == expected


def health_of(health: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in health["providers"] if p["provider"] == name)


async def filtered(page: Page, owner: str = "", state: str = "", provider: str = "") -> list[str]:
    await page.fill("#filter-owner", owner)
    await page.select_option("#filter-state", state)
    await page.select_option("#filter-provider", provider)
    await page.click("#task-filters button[type=submit]")
    wanted = json.dumps(
        {"owner": owner, "state": state, "provider": provider}, separators=(",", ":")
    )
    await page.wait_for_function(
        "(wanted) => document.getElementById('tasks').dataset.filters === wanted", arg=wanted
    )
    return list(
        await page.evaluate(
            "() => [...document.querySelectorAll('#tasks tbody tr[data-ref]')]"
            ".map((tr) => tr.dataset.ref)"
        )
    )


def test_the_state_filter_offers_every_state() -> None:
    script = (STATIC_DIR / "ui.js").read_text()
    assert f"const STATES = {json.dumps([s.value for s in State])};" in script


def test_the_stuck_list_splits_attention_as_the_store_writes_it() -> None:
    script = (STATIC_DIR / "ui.js").read_text()
    assert f"const LAST_ERROR_MARK = {json.dumps(LAST_ERROR_MARK)};" in script


async def check_filters(page: Page, system: System) -> None:
    for filters in ({"provider": "openai"}, {"owner": "ops"}, {"state": "failed"}):
        shown = await filtered(page, **filters)
        listed = await api(system, "/v1/tasks", limit="20", **filters)
        assert shown == [t["ref"] for t in listed["tasks"]], filters
        assert shown
    assert len(await filtered(page, owner="ops", provider="openai")) == 0
    await filtered(page, owner="ops")
    await page.locator("#tasks-card").screenshot(path=str(artifact("dashboard-filters.png")))
    await filtered(page)


# -- the task panel: one timeline, payloads, copy, result links ---------------------------


async def a_task_with_everything(system: System) -> dict[str, Any]:
    """A succeeded task with result URLs, at least one callback and one poll."""
    listed = await api(system, "/v1/tasks", state="succeeded", limit="100")
    for summary in listed["tasks"]:
        task = await api(system, f"/v1/tasks/{summary['ref']}")
        timeline = task["timeline"]
        if timeline["deliveries"] and timeline["polls"] and task["result"].get("urls"):
            return task
    raise AssertionError("no succeeded task has callbacks, polls and result URLs")


async def check_task_panel(page: Page, system: System) -> dict[str, Any]:
    task = await a_task_with_everything(system)
    await page.fill("#ref-input", task["ref"])
    await page.click("#open-task button[type=submit]")
    await page.wait_for_selector(f"#panel[data-state=ready][data-ref='{task['ref']}']")
    await check_merged_timeline(page, task)
    await check_delivery_key(page, task["timeline"]["deliveries"][0])
    await check_payloads(page, system, task)
    await check_result_links(page, task)
    assert await layout_problems(page) == []
    assert await hidden_columns(page, "panel-timeline") == {}
    assert task["callback_url"] not in await page.content()
    await screenshot(page, "dashboard-task.png", full_page=False)
    return task


async def timeline_rows(page: Page) -> list[dict[str, str]]:
    return list(
        await page.evaluate(
            """() => [...document.querySelectorAll('#panel-timeline tbody tr[data-kind]')]
              .map((tr) => ({ kind: tr.dataset.kind, id: tr.dataset.id ?? '',
                              at: tr.cells[0].innerText, what: tr.cells[1].innerText }))"""
        )
    )


async def check_merged_timeline(page: Page, task: dict[str, Any]) -> None:
    """The panel's one timeline is `taskledger show`'s: the same entries in the same order."""
    rows = await timeline_rows(page)
    printed = show_timeline(task)
    assert [row["what"] for row in rows] == [entry.what for entry in printed]
    moments = ["—" if e.at == NEVER else f"{e.at:%Y-%m-%d %H:%M:%S.%f}"[:-3] for e in printed]
    assert [row["at"] for row in rows] == moments
    kinds = {row["kind"] for row in rows}
    assert {"registered", "delivery", "poll", "transition"} <= kinds


async def check_delivery_key(page: Page, delivery: dict[str, Any]) -> None:
    row = page.locator(f"#panel-timeline tr[data-kind=delivery][data-id='{delivery['id']}']")
    key = row.locator(".delivery-key")
    shown = await key.inner_text()
    assert len(shown) < len(delivery["delivery_key"])
    assert await key.get_attribute("title") == delivery["delivery_key"]
    await row.locator("button.copy").click()
    await page.wait_for_selector("button.copy[data-copied=true]")
    assert await page.evaluate("() => navigator.clipboard.readText()") == delivery["delivery_key"]


async def check_payloads(page: Page, system: System, task: dict[str, Any]) -> None:
    """An admin sees any delivery's or poll's raw payload, as the payload routes give it."""
    for kind, row_id in (
        ("delivery", task["timeline"]["deliveries"][0]["id"]),
        ("poll", task["timeline"]["polls"][-1]["id"]),
    ):
        row = page.locator(f"#panel-timeline tr[data-kind={kind}][data-id='{row_id}']")
        await row.locator("button.payload").click()
        shown = await row.locator("xpath=following-sibling::tr[1]").locator("pre").inner_text()
        route = "deliveries" if kind == "delivery" else "polls"
        payload = await api(system, f"/v1/tasks/{task['ref']}/{route}/{row_id}")
        body = shown.split("body\n", 1)[1]
        assert json.loads(body) == json.loads(payload["body"])


async def check_result_links(page: Page, task: dict[str, Any]) -> None:
    links = page.locator("#panel-summary a.result-url")
    assert await links.count() == len(task["result"]["urls"])
    for index, url in enumerate(task["result"]["urls"]):
        link = links.nth(index)
        assert await link.get_attribute("href") == url
        assert await link.get_attribute("rel") == "noreferrer noopener"
        assert "?" not in await link.inner_text()


# -- deep links ----------------------------------------------------------------------------


async def shown_ref(page: Page, ref: str) -> None:
    await page.wait_for_selector(f"#panel[data-state=ready][data-ref='{ref}']")


async def check_deep_links(page: Page, system: System, ref: str) -> None:
    """`#task=<ref>` opens the task on load and whenever the address changes to it."""
    other = (await api(system, "/v1/tasks", stuck="true"))["tasks"][0]["ref"]
    assert page.url.endswith(f"#task={ref}")
    await page.reload()
    await shown_ref(page, ref)
    await page.evaluate("(ref) => { window.location.hash = `task=${ref}`; }", other)
    await shown_ref(page, other)
    await page.go_back()
    await shown_ref(page, ref)
    await page.click("#panel-close")
    assert await page.locator("#panel").is_hidden()
    assert "#task=" not in page.url
    await page.go_back()
    await shown_ref(page, ref)


async def check_deep_link_survives_sign_in(page: Page, system: System, ref: str) -> None:
    await sign_in(page, f"{system.service.base_url}/ui#task={ref}")
    await shown_ref(page, ref)
    assert page.url.endswith(f"/ui#task={ref}")


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
    archive = ArchiveSettings(url=str(tmp_path / "archive"), spool_dir=str(tmp_path / "spool"))
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    async with running_service(settings_for(database_url, archive=archive), clock) as service:
        ref = await archived_openai_task(
            service, database_url, LocalStore(Path(archive.url)), clock
        )
        async with browser_session(60) as browser:
            await check_outputs(await new_page(browser, height=1200), service.base_url, ref)


async def check_outputs(page: Page, base_url: str, ref: str) -> None:
    await sign_in(page, f"{base_url}/ui")
    errors = watch_errors(page)
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
    outputs = page.locator("#panel-timeline tr[data-kind=output]")
    assert sorted(await outputs.evaluate_all("(rows) => rows.map((r) => r.dataset.name)")) == [
        "thumbnail",
        "video",
    ]
    await screenshot(page, "dashboard-outputs.png")
    assert errors == []
    await check_opened_in_a_tab(page, base_url + str(await thumbnail.get_attribute("src")))


async def check_opened_in_a_tab(page: Page, image_url: str) -> None:
    """An output opened straight in a tab (its listing's `url`) shows there: the file's
    own policy lets the browser's image viewer load it, and nothing else."""
    tab = await page.context.new_page()
    errors = watch_errors(tab)
    await tab.goto(image_url)
    await tab.wait_for_function("() => document.images[0]?.naturalWidth === 320")
    assert [error for error in errors if "Content Security Policy" in error] == []


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


async def screenshot(page: Page, name: str, *, full_page: bool = True) -> None:
    """The page as drawn; the task panel is fixed to the window, so it is shot alone."""
    await page.screenshot(path=str(artifact(name)), full_page=full_page)


# -- notification endpoints, in a real browser -------------------------------------------

PRODUCT_HOOK = "https://hooks.product.example/taskledger"
BROKER = "nats://relay:s3cret-pass@nats.internal:4222/taskledger.events"


async def endpoints_with_history(service: Service, database_url: str, clock: FakeClock) -> str:
    """A webhook that failed once then took every event, and a broker endpoint the relay
    disabled when it answered 410; the task whose two events went to both."""
    engine = create_engine(database_url)
    store = LedgerStore(engine, clock)
    try:
        for endpoint_id, url, about in (
            ("ep_product", PRODUCT_HOOK, "product backend"),
            ("ep_analytics", BROKER, "analytics"),
        ):
            values = {"id": endpoint_id, "kind": kind_of(url), "url": url, "secrets": []}
            await store.create_endpoint(values | {"description": about})
        task = await service.register("apidot", provider_task_id="t-events")
        for state in (State.RUNNING, State.SUCCEEDED):
            observation = Observation("t-events", state, 100 if state is State.SUCCEEDED else 30)
            await store.ingest([Poll(task["ref"], clock(), None, observation, 200, "{}")])
            clock.advance(20)
        await store.fan_out(10)
        await try_each(store, clock, {"ep_product": (503, None), "ep_analytics": (500, None)})
        await try_each(store, clock, {"ep_product": (200, None), "ep_analytics": (410, True)})
    finally:
        await store.close()
        await engine.dispose()
    return str(task["ref"])


async def try_each(
    store: LedgerStore, clock: FakeClock, answers: dict[str, tuple[int, bool | None]]
) -> None:
    """One try of every due dispatch, answered as its endpoint says; a failure is due again.
    After a 410, the relay tries that endpoint no more (its other dispatch stays pending)."""
    clock.advance(5)
    said_gone: set[str] = set()
    for job in await store.claim_dispatches("ui-test", 10, 30):
        if job.endpoint.id in said_gone:
            continue
        status, gone = answers[job.endpoint.id]
        if gone:
            said_gone.add(job.endpoint.id)
        error = None if status < 300 else f"HTTP {status}"
        result = AttemptResult(
            status < 300, status, 84.0, "ok" if status < 300 else "busy", error, clock(), bool(gone)
        )
        await store.record_dispatch(job, "ui-test", result, timedelta(days=5))


async def endpoint_rows(page: Page) -> dict[str, dict[str, Any]]:
    return dict(
        await page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('#endpoints tbody tr')]
              .map((tr) => [tr.dataset.endpoint, {
                enabled: tr.dataset.enabled,
                cells: [...tr.cells].map((td) => td.innerText.trim()),
                badge: tr.querySelector('.badge').className,
              }]))"""
        )
    )


async def test_endpoints_card_shows_a_disabled_endpoint_in_red_with_its_reason(
    tmp_path: Path, clock: FakeClock
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    async with running_service(settings_for(database_url), clock) as service:
        ref = await endpoints_with_history(service, database_url, clock)
        listed = (await service.http.get("/v1/endpoints", headers=service.admin)).json()
        task = await service.task(ref)
        async with browser_session(90) as browser:
            page = await new_page(browser, height=1200)
            await check_endpoints(page, service.base_url, listed["endpoints"])
            await check_unpolled_providers(page)
            await check_task_events(page, task)
            await check_payloads_hidden_without_admin(await new_page(browser), service, ref)


async def check_endpoints(page: Page, base_url: str, listed: list[dict[str, Any]]) -> None:
    await sign_in(page, f"{base_url}/ui")
    errors = watch_errors(page)
    rows = await endpoint_rows(page)
    assert set(rows) == {"ep_product", "ep_analytics"}
    disabled = rows["ep_analytics"]
    assert disabled["enabled"] == "false"
    assert "bad" in disabled["badge"]
    assert "the endpoint answered 410 Gone" in disabled["cells"][1]
    assert rows["ep_product"]["cells"][1] == "enabled"
    for endpoint in listed:
        counts = endpoint["health"]["dispatches"]
        drawn = rows[endpoint["id"]]["cells"][3:6]
        assert drawn == [str(counts[s]) for s in ("pending", "delivered", "failed")]
    assert "HTTP 410" in rows["ep_analytics"]["cells"][6]
    assert "failing since" in rows["ep_analytics"]["cells"][2]
    assert "failing since" not in rows["ep_product"]["cells"][2]
    assert await page.locator("#endpoints-alert").inner_text() == "1 disabled"
    assert "s3cret-pass" not in await page.content()
    assert await layout_problems(page) == []
    await page.locator("#endpoints-card").screenshot(path=str(artifact("dashboard-endpoints.png")))
    assert errors == []


async def check_unpolled_providers(page: Page) -> None:
    """The test settings give no provider a base URL: none is polled, and the card says so."""
    rows = await health_rows(page)
    assert set(rows) == {"openai", "apidot", "vidgo", "evolink"}
    assert {row["pollable"] for row in rows.values()} == {"false"}
    assert "TASKLEDGER_PROVIDER_VIDGO_BASE_URL" in rows["vidgo"]["polling"]
    assert await page.locator("#health-alert").inner_text() == "4 not configured"
    await page.locator("#health-card").screenshot(path=str(artifact("dashboard-health.png")))


async def check_task_events(page: Page, task: dict[str, Any]) -> None:
    """The events sent, with each endpoint's state and every try, in the merged timeline."""
    await page.fill("#ref-input", task["ref"])
    await page.click("#open-task button[type=submit]")
    await shown_ref(page, task["ref"])
    states = await page.evaluate(
        """() => [...document.querySelectorAll('#panel-timeline tr[data-kind=event]')]
          .flatMap((tr) => [...tr.querySelectorAll('.dispatch-state')]
            .map((part) => [tr.dataset.event, part.dataset.endpoint, part.dataset.state]))"""
    )
    assert sorted(map(tuple, states)) == [
        ("task.running", "ep_analytics", "failed"),
        ("task.running", "ep_product", "delivered"),
        ("task.succeeded", "ep_analytics", "pending"),
        ("task.succeeded", "ep_product", "delivered"),
    ]
    rows = await timeline_rows(page)
    assert [row["what"] for row in rows] == [entry.what for entry in show_timeline(task)]
    assert await hidden_columns(page, "panel-timeline") == {}
    messages = task["timeline"]["messages"]
    tries = sum(len(d["attempt_log"]) for m in messages for d in m["dispatches"])
    assert [row["kind"] for row in rows].count("attempt") == tries > 0
    await page.locator("#panel-timeline tr[data-kind=event]").first.scroll_into_view_if_needed()
    await page.screenshot(path=str(artifact("dashboard-task-events.png")))


async def check_payloads_hidden_without_admin(page: Page, service: Service, ref: str) -> None:
    """A session the payload routes refuse (a read key) is shown no payload button."""
    await page.route("**/v1/tasks/*/polls/*", lambda route: route.fulfill(status=403, body="{}"))
    await sign_in(page, f"{service.base_url}/ui#task={ref}")
    await shown_ref(page, ref)
    buttons = page.locator("#panel-timeline button.payload")
    assert await buttons.count() == 2
    assert await buttons.evaluate_all("(all) => all.every((b) => b.hidden)")


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    print(f"\nscreenshot: {ARTIFACTS / name}")
    return ARTIFACTS / name


async def test_task_panel_says_how_many_older_entries_the_timeline_left_out(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The newest entries of each kind are drawn; a line counts the older ones."""
    monkeypatch.setattr(queries, "TIMELINE_MAX", 2)
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    async with running_service(settings_for(database_url), clock) as service:
        task = await service.register("apidot", provider_task_id="t-many")
        path = urlsplit(str(task["callback_url"])).path
        for progress in range(1, 6):
            body = apidot_body("t-many", "running", progress)
            answer = await service.http.post(
                path, content=body, headers={"content-type": "application/json"}
            )
            assert answer.status_code == 200
        quiet = await service.register("apidot", provider_task_id="t-few")
        async with browser_session(60) as browser:
            page = await new_page(browser)
            await sign_in(page, f"{service.base_url}/ui")
            errors = watch_errors(page)
            note = page.locator("#panel-omitted")
            for ref, shown in ((task["ref"], "deliveries 3"), (quiet["ref"], None)):
                await page.fill("#ref-input", str(ref))
                await page.click("#open-task button[type=submit]")
                await page.wait_for_selector(f"#panel[data-state=ready][data-ref='{ref}']")
                if shown is None:
                    assert await note.is_hidden()
                else:
                    assert shown in await note.inner_text()
                    assert await page.locator("#panel-timeline tr[data-kind=delivery]").count() == 2
                await page.click("#panel-close")
            assert errors == []


# -- forms from other sites, and who is signed in ----------------------------------------------

ATTACKER = "http://attacker.example"


async def read_key(service: Service, owner: str) -> str:
    body = {"name": f"reader of {owner}", "scope": "read", "owner": owner}
    made = await service.http.post("/v1/keys", json=body, headers=service.admin)
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


async def post_from_another_site(page: Page, action: str, token: str | None = None) -> int:
    """What the service answers a form that a page of another site posts to it at once."""
    field = f'<input name="token" value="{token}">' if token else ""
    form = f'<form method="post" action="{action}">{field}</form>'
    html = f"{form}<script>document.forms[0].submit()</script>"
    await page.route(
        f"{ATTACKER}/", lambda route: route.fulfill(body=html, content_type="text/html")
    )
    async with page.expect_response(action) as answered:
        await page.goto(f"{ATTACKER}/")
    return (await answered.value).status


async def session_subject(page: Page) -> str | None:
    """Who the browser's session cookie names (`admin`, or a key's id)."""
    for cookie in await page.context.cookies():
        if cookie["name"] == SESSION_COOKIE:
            return cookie["value"].split(".")[0]
    return None


async def test_another_sites_page_can_neither_swap_nor_end_the_session(
    service: Service,
) -> None:
    """Login CSRF: the victim's admin session survives a page that posts the attacker's own
    key to `/ui/login`, and one that posts to `/ui/logout`."""
    attackers_key = await read_key(service, "team-b")
    async with browser_session(60) as browser:
        page = await new_page(browser)
        await sign_in(page, f"{service.base_url}/ui")
        for action, token in (("/ui/login", attackers_key), ("/ui/logout", None)):
            assert await post_from_another_site(page, f"{service.base_url}{action}", token) == 403
            assert await session_subject(page) == "admin"
        await page.goto(f"{service.base_url}/ui")
        await page.wait_for_selector("body[data-state=ready]")
        assert await page.locator("#viewer").inner_text() == "signed in: admin token"


async def test_the_header_names_a_keys_scope_and_owner(service: Service) -> None:
    key = await read_key(service, "team-b")
    async with browser_session(60) as browser:
        page = await new_page(browser)
        await page.goto(f"{service.base_url}/ui")
        await page.fill("#token", key)
        await page.click("button[type=submit]")
        await page.wait_for_selector("body[data-state=ready]")  # no card it may not read
        key_id = key.split("_")[1]
        shown = await page.locator("#viewer").inner_text()
        assert shown == f"signed in: read key tlk_{key_id}_… · owner team-b"
        assert await page.locator("#endpoints-card").is_hidden()


# -- bidi controls: isolated in tables, escaped in raw payloads ---------------------------------

RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: "\u202egnp.exe" reads "exe.png"


async def test_a_right_to_left_override_is_escaped_in_the_payload_and_isolated_in_cells(
    service: Service, database_url: str, clock: FakeClock
) -> None:
    owner = f"{RLO}gnp.exe"
    ref = (await service.register("apidot", owner=owner, provider_task_id="t-rlo"))["ref"]
    answer = json.dumps({"task_id": "t-rlo", "file": f"{RLO}gnp.exe"}, ensure_ascii=False)
    await ingest_poll(database_url, clock, ref, Observation("t-rlo", State.RUNNING, 40), answer)
    async with browser_session(60) as browser:
        page = await new_page(browser)
        await sign_in(page, f"{service.base_url}/ui#task={ref}")
        await shown_ref(page, ref)
        row = page.locator("#panel-timeline tr[data-kind=poll]")
        await row.locator("button.payload").click()
        shown = await row.locator("xpath=following-sibling::tr[1]").locator("pre").inner_text()
        assert '"file": "\\u202Egnp.exe"' in shown
        assert RLO not in shown
        assert await bidi_of(page) == {"cell": "isolate", "dd": "isolate", "payload": "plaintext"}


async def bidi_of(page: Page) -> dict[str, str]:
    """The computed `unicode-bidi` of the task list's owner cell, a summary value and the
    payload viewer."""
    return dict(
        await page.evaluate(
            """(owner) => {
              const bidi = (node) => getComputedStyle(node).unicodeBidi;
              const cell = [...document.querySelectorAll('#tasks td')]
                .find((td) => td.textContent === owner);
              return { cell: bidi(cell), dd: bidi(document.querySelector('#panel-summary dd')),
                       payload: bidi(document.querySelector('pre.payload')) };
            }""",
            f"{RLO}gnp.exe",
        )
    )
