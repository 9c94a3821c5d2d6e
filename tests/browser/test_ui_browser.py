"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright).

Each test logs in through the form, does what an operator does, and saves a
screenshot, `<name>.png`, to `.data/screenshots/` (not tracked, so a test run leaves
the checkout unchanged); with `UPDATE_SCREENSHOTS=1` to `docs/screenshots/`, the
files the README shows. Every page of
every test runs offline: a request for anything outside the app's origin is
aborted and fails the test, as do a failed request, a console error and an
uncaught script error.
"""

from __future__ import annotations

import base64
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Request, Route, async_playwright
from playwright.async_api import expect as pw_expect

from ai_service.store import Store
from tests.acceptance.test_infra_status import SIDECAR_TOKEN, running_sidecar
from tests.conftest import ApiFactory
from tests.helpers import job_body
from tests.stubs import sine_wav
from tests.stubs.openai_server import OpenAIStub, RecordedRequest
from tests.stubs.vllm_metrics_server import VllmStub
from tests.stubs.whisperx_server import WhisperXStub
from tests.workers import running_worker, wait_until_finished

CHROMIUM = Path("/usr/bin/chromium")
_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = (
    _ROOT / "docs" / "screenshots"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1"
    else _ROOT / ".data" / "screenshots"
)
API = "/api/v1"
ADMIN = f"admin-{uuid.uuid4().hex}"
READER = f"reader-{uuid.uuid4().hex}"
TOKENS = {"AI_SERVICE_TOKEN": ADMIN, "AI_SERVICE_TOKENS": f"{READER}:reader"}
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 400, "height": 900}
QWEN_MODEL = "Qwen/Qwen2-Audio-7B-Instruct"
VOXTRAL_MODEL = "mistralai/Voxtral-Small-24B-2507"


@dataclass
class Guard:
    """What a page did that it must not: leave the origin, fail a request, log an error."""

    origin: str
    outside: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    async def route(self, route: Route) -> None:
        url = route.request.url
        if url.startswith(self.origin + "/") or url == self.origin:
            await route.continue_()
        else:
            self.outside.append(url)
            await route.abort()

    def request_failed(self, request: Request) -> None:
        if request.failure == "net::ERR_ABORTED":
            # Cancelled by the browser because the page moved on (a form posted before
            # the icon came); requests this guard aborts are counted in `outside`.
            return
        self.failed.append(f"{request.method} {request.url}: {request.failure}")

    def console_message(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console.append(message.text)

    def page_error(self, error: Any) -> None:
        self.console.append(str(error))

    def check(self) -> None:
        assert self.outside == [], "requests left the app's origin"
        assert self.failed == [], "requests failed"
        assert self.console == [], "console errors"


@dataclass
class Dashboard:
    """A browser page on a running API, the API's base URL and an admin HTTP client."""

    page: Page
    base: str
    api: httpx.AsyncClient
    guard: Guard

    async def login(self, token: str) -> None:
        await self.page.goto(f"{self.base}/ui/login")
        await self.page.get_by_label("Token (admin or reader)").fill(token)
        await self.page.get_by_role("button", name="Log in").click()
        await pw_expect(self.page.get_by_role("heading", name="Overview", level=1)).to_be_visible()

    async def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    async def create(self, **overrides: Any) -> str:
        response = await self.api.post(f"{API}/jobs", json=job_body(**overrides))
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def fail(self, task_type: str, message: str, category: str = "permanent") -> str:
        claimed = await self.api.post(
            f"{API}/jobs/claim",
            json={"worker_id": "gpu-worker-1", "task_types": [task_type], "limit": 1},
        )
        [job] = claimed.json()["jobs"]
        response = await self.api.post(
            f"{API}/jobs/{job['id']}/fail",
            json={"category": category, "message": message, "lease_token": job["lease_token"]},
        )
        assert response.json()["status"] == "failed", response.text
        return str(job["id"])

    async def status(self, job_id: str) -> str:
        return str((await self.api.get(f"{API}/jobs/{job_id}")).json()["status"])


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert os.access(CHROMIUM, os.X_OK), "install Debian's chromium: make install"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def dashboard(browser: Browser, api_factory: ApiFactory) -> AsyncIterator[Dashboard]:
    async with api_factory(**TOKENS) as client:
        base = str(client.base_url).rstrip("/")
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        context = await browser.new_context(viewport=WIDE)
        guard = Guard(base)
        await context.route("**/*", guard.route)
        page = await context.new_page()
        page.on("requestfailed", guard.request_failed)
        page.on("console", guard.console_message)
        page.on("pageerror", guard.page_error)
        try:
            yield Dashboard(page, base, client, guard)
            guard.check()
        finally:
            await context.close()


async def test_login_refuses_a_wrong_token_and_accepts_the_admin_token(
    dashboard: Dashboard,
) -> None:
    page = dashboard.page
    await page.goto(f"{dashboard.base}/ui/jobs")
    assert page.url.endswith("/ui/login")  # no session: to the login
    await page.get_by_label("Token (admin or reader)").fill("not-a-token")
    await page.get_by_role("button", name="Log in").click()
    await pw_expect(page.get_by_role("alert")).to_have_text(
        "Login failed: the token was not accepted."
    )
    # The refusal is a 401 page: Chromium logs its status, the one error expected here.
    assert dashboard.guard.console == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]
    dashboard.guard.console.clear()
    await dashboard.shot("login")
    await dashboard.login(ADMIN)
    await pw_expect(page.get_by_text("Signed in as admin")).to_be_visible()
    # Keyboard: the first Tab reaches the skip link, Enter moves focus to the content.
    await page.keyboard.press("Tab")
    await pw_expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    await page.keyboard.press("Enter")
    await pw_expect(page.locator("main")).to_be_focused()
    cookies = await page.context.cookies()
    [cookie] = [c for c in cookies if c["name"] == "ai_service_ui"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert ADMIN not in cookie["value"]
    await page.get_by_role("button", name="Log out").click()
    await pw_expect(page.get_by_role("heading", name="Log in")).to_be_visible()


async def test_overview_numbers_follow_the_queue_on_auto_refresh(dashboard: Dashboard) -> None:
    page = dashboard.page
    await dashboard.create(task_type="llm_chat")
    await dashboard.login(ADMIN)
    pending = page.locator('dd[data-status="pending"]')
    await pw_expect(pending).to_have_text("1")
    for n in range(4):
        await dashboard.create(
            task_type="transcription", model_profile="whisperx", owner_ref=f"r{n}"
        )
    await dashboard.fail("transcription", "CUDA out of memory", "resource_exhausted")
    # No reload: the page fetches its live part every 5 s.
    await pw_expect(pending).to_have_text("4", timeout=15_000)
    await pw_expect(page.locator('dd[data-status="failed"]')).to_have_text("1")
    await pw_expect(page.get_by_text("CUDA out of memory")).to_be_visible()
    await pw_expect(page.get_by_role("row", name=re.compile("^transcription"))).to_be_visible()
    # Paused, it stays still; the button says so.
    toggle = page.get_by_role("button", name="Pause auto-refresh")
    await toggle.click()
    await pw_expect(page.get_by_role("button", name="Resume auto-refresh")).to_have_attribute(
        "aria-pressed", "true"
    )
    await dashboard.create(task_type="llm_chat", owner_ref="late")
    await page.wait_for_timeout(6_000)
    await pw_expect(pending).to_have_text("4")
    await page.get_by_role("button", name="Resume auto-refresh").click()
    await pw_expect(pending).to_have_text("5", timeout=15_000)
    await dashboard.shot("overview")


async def test_filter_the_job_list_and_open_a_job(dashboard: Dashboard) -> None:
    page = dashboard.page
    await dashboard.create(task_type="llm_chat", input={"user": "Summarise the call"})
    await dashboard.create(task_type="transcription", model_profile="whisperx")
    failed_id = await dashboard.fail("transcription", "WhisperX answered HTTP 500")
    await dashboard.login(ADMIN)
    await page.get_by_role("link", name="Jobs").click()
    await pw_expect(page.locator("table.jobs tbody tr")).to_have_count(2)
    await page.get_by_label("failed").check()
    await page.get_by_label("Task type").fill("transcription")
    await page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.jobs tbody tr")
    await pw_expect(rows).to_have_count(1)
    await pw_expect(rows.first).to_contain_text("failed")
    assert "status=failed" in page.url
    await dashboard.shot("jobs")
    # A narrow window: the page itself never scrolls sideways, the table does.
    await page.set_viewport_size(NARROW)
    assert await page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
    await page.set_viewport_size(WIDE)
    await page.get_by_role("link", name=failed_id).click()
    await pw_expect(page.get_by_role("heading", name=f"Job {failed_id}")).to_be_visible()
    await pw_expect(page.locator("#job-status")).to_have_text("failed")
    timeline = page.locator("ol.timeline")
    await pw_expect(timeline).to_contain_text("attempt 1 failed")
    await pw_expect(timeline).to_contain_text("WhisperX answered HTTP 500")
    await pw_expect(page.get_by_text("gpu-worker-1").first).to_be_visible()
    # The JSON view folds with the keyboard: focus the summary, press Enter.
    summary = page.locator(".json-view summary").first
    await summary.focus()
    await page.keyboard.press("Enter")
    await pw_expect(page.locator(".json-view details").first).not_to_have_attribute("open", "")
    await page.keyboard.press("Enter")
    await pw_expect(page.locator(".json-view details").first).to_have_attribute("open", "")
    await dashboard.shot("job")


async def test_retry_a_failed_job_and_see_it_pending(dashboard: Dashboard) -> None:
    page = dashboard.page
    await dashboard.create(task_type="llm_chat")
    job_id = await dashboard.fail("llm_chat", "model answered garbage")
    await dashboard.login(ADMIN)
    await page.goto(f"{dashboard.base}/ui/jobs/{job_id}")
    await pw_expect(page.locator("#job-status")).to_have_text("failed")
    await page.get_by_role("button", name="Retry").click()
    await pw_expect(page.get_by_role("status")).to_have_text("Retried: the job is pending again.")
    await pw_expect(page.locator("#job-status")).to_have_text("pending")
    assert await dashboard.status(job_id) == "pending"
    await dashboard.shot("retry")


async def test_bulk_cancel_counts_the_jobs_before_confirming(dashboard: Dashboard) -> None:
    page = dashboard.page
    ids = [await dashboard.create(owner_service="crm", owner_ref=f"c{n}") for n in range(3)]
    await dashboard.create(owner_service="telephony")
    await dashboard.login(ADMIN)
    await page.goto(f"{dashboard.base}/ui/jobs?owner_service=crm")
    await page.get_by_role("link", name="Bulk cancel…").click()
    await pw_expect(page.locator("#bulk-count")).to_contain_text("3 job(s) will be cancelled")
    await dashboard.shot("bulk")
    await page.get_by_role("button", name="Confirm: cancel 3 job(s)").click()
    await pw_expect(page.get_by_role("status")).to_have_text("Cancelled 3 job(s).")
    assert [await dashboard.status(i) for i in ids] == ["cancelled"] * 3


async def test_a_reader_sees_no_buttons_and_a_forged_post_is_refused(
    dashboard: Dashboard,
) -> None:
    page = dashboard.page
    await dashboard.create(task_type="llm_chat")
    job_id = await dashboard.fail("llm_chat", "boom")
    await dashboard.login(READER)
    await pw_expect(page.get_by_text("Signed in as reader (read only)")).to_be_visible()
    await page.goto(f"{dashboard.base}/ui/jobs/{job_id}")
    await pw_expect(page.locator("#job-status")).to_have_text("failed")
    await pw_expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    await pw_expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    await page.goto(f"{dashboard.base}/ui/jobs?status=failed")
    await pw_expect(page.get_by_role("link", name="Bulk retry…")).to_have_count(0)
    await dashboard.shot("reader")
    # A forged POST with the reader's own session, CSRF token and origin: 403.
    csrf = await page.locator('input[name="csrf"]').first.input_value()
    forged = await page.request.post(
        f"{dashboard.base}/ui/jobs/{job_id}/retry",
        form={"csrf": csrf},
        headers={"Origin": dashboard.base},
    )
    assert forged.status == 403
    assert "a reader may look but not act" in await forged.text()
    assert await dashboard.status(job_id) == "failed"


async def test_an_action_without_the_csrf_token_is_refused(dashboard: Dashboard) -> None:
    page = dashboard.page
    await dashboard.create(task_type="llm_chat")
    job_id = await dashboard.fail("llm_chat", "boom")
    await dashboard.login(ADMIN)
    # The admin's own browser, with the session cookie, but no token in the form.
    response = await page.request.post(
        f"{dashboard.base}/ui/jobs/{job_id}/retry",
        form={"nothing": "here"},
        headers={"Origin": dashboard.base},
    )
    assert response.status == 403
    assert "CSRF token is missing or stale" in await response.text()
    assert await dashboard.status(job_id) == "failed"


async def test_providers_and_ai_server_telemetry_with_sparklines_on_a_narrow_window(
    browser: Browser, api_factory: ApiFactory
) -> None:
    with VllmStub() as vllm:
        async with (
            running_sidecar(
                SIDECAR_TOKEN=SIDECAR_TOKEN, VLLM_METRICS_URLS=f"{vllm.base_url}/metrics"
            ) as sidecar_url,
            api_factory(
                **TOKENS, INFRA_STATUS_URL=sidecar_url, INFRA_STATUS_TOKEN=SIDECAR_TOKEN
            ) as client,
        ):
            base = str(client.base_url).rstrip("/")
            context = await browser.new_context(viewport=NARROW)
            guard = Guard(base)
            await context.route("**/*", guard.route)
            page = await context.new_page()
            page.on("requestfailed", guard.request_failed)
            page.on("console", guard.console_message)
            page.on("pageerror", guard.page_error)
            board = Dashboard(page, base, client, guard)
            try:
                await board.login(READER)
                await page.get_by_role("link", name="Providers").click()
                table = page.locator("#providers-table")
                await pw_expect(table).to_contain_text("llm")
                await pw_expect(table).to_contain_text("not configured")
                infra = page.locator("#infra")
                await pw_expect(infra).to_contain_text("NVIDIA H100 80GB HBM3")
                await pw_expect(infra).to_contain_text("running: 3")
                await pw_expect(infra).to_contain_text("Unavailable")  # no Docker here
                # Samples pile up in the browser: a second poll extends each sparkline.
                line = page.locator("svg.spark polyline").first
                await pw_expect(line).to_have_attribute(
                    "points", re.compile(r"^\S+ \S+"), timeout=15_000
                )
                width = await page.evaluate("document.documentElement.scrollWidth")
                assert width <= NARROW["width"], "the page scrolls sideways on a narrow window"
                await board.shot("providers-narrow")
                guard.check()
            finally:
                await context.close()


def reply(text: str) -> Any:
    def answer(request: RecordedRequest) -> str:
        return text

    return answer


async def test_the_ab_report_of_three_providers_and_a_side_by_side_diff(
    dashboard: Dashboard, store: Store, database_url: str
) -> None:
    page = dashboard.page
    audio = base64.b64encode(sine_wav(5.0)).decode()
    await dashboard.login(READER)
    # A real worker compares WhisperX (the reference), Qwen2-Audio (the same words
    # but for case and punctuation) and Voxtral (one word replaced, one added).
    with (
        WhisperXStub("wx", segment_seconds=10.0) as whisperx,
        OpenAIStub(models=[QWEN_MODEL], reply=reply("SEGMENT 0, from wx!")) as qwen,
        OpenAIStub(models=[VOXTRAL_MODEL], reply=reply("segment zero from the wx")) as voxtral,
    ):
        async with running_worker(
            database_url,
            WORKER_ID="gpu-box-1",
            TRANSCRIPTION_PROVIDERS="whisperx,qwen2-audio,voxtral-small",
            TRANSCRIPTION_MODE="compare",
            WHISPERX_URL=whisperx.base_url,
            QWEN_AUDIO_BASE_URL=qwen.base_url,
            VOXTRAL_BASE_URL=voxtral.base_url,
        ):
            ids = [
                await dashboard.create(
                    task_type="transcription",
                    model_profile="whisperx",
                    owner_ref=f"beeline/call-{n}",
                    input={"audio_base64": audio, "audio_format": "wav", "language": "ru"},
                )
                for n in (1, 2)
            ]
            await wait_until_finished(store, ids, timeout=60)
            # The live worker list, while it runs.
            await page.get_by_role("link", name="Workers").click()
            row = page.get_by_role("row", name=re.compile("gpu-box-1"))
            await pw_expect(row).to_contain_text("running")
            await pw_expect(row).to_contain_text("transcription")
            await dashboard.shot("workers")
    await page.get_by_role("link", name="Transcription report").click()
    providers = page.locator("#report-providers tbody tr")
    await pw_expect(providers).to_have_count(3)
    await pw_expect(page.get_by_role("row", name=re.compile("^whisperx"))).to_contain_text(
        "100.0 %"
    )
    voxtral_row = page.get_by_role("row", name=re.compile("^voxtral-small"))
    await pw_expect(voxtral_row).to_contain_text("50.0 % (2)")
    await pw_expect(page.get_by_role("row", name=re.compile("^qwen2-audio"))).to_contain_text(
        "0.0 % (2)"
    )
    await pw_expect(page.locator("#report-disagreements tbody tr")).to_have_count(2)
    await dashboard.shot("report")
    await page.get_by_role("link", name="Compare texts of beeline/call-1").click()
    await pw_expect(page.get_by_role("heading", name="voxtral-small")).to_be_visible()
    diff = page.locator(".transcript").nth(2).locator("p.diff")
    # Readable without colour: the markers are text.
    await pw_expect(diff).to_contain_text("[~ [\u22120] [+zero] ~]")
    await pw_expect(diff).to_contain_text("[+the]")
    await pw_expect(diff.locator("ins")).to_have_count(2)
    await pw_expect(diff.locator("del")).to_have_count(1)
    await pw_expect(diff.locator("mark")).to_have_count(1)
    await dashboard.shot("report-diff")
