"""The operator dashboard at `/ui`: server-rendered pages over the store.

Pages sit outside `/api/v1`, so the edge middleware lets them through; each
one checks the session cookie itself (`ui.session`): without a valid session a
page redirects to `/ui/login` and a data or action endpoint answers 401, before
anything is read. Every action is a POST form carrying the session's CSRF token,
from a page of this origin (Origin, else Referer); a reader session may look at
everything and act on nothing (403). Every answer forbids framing and loads
nothing from anywhere but the app (`Content-Security-Policy`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit
from uuid import UUID

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from ai_service import errors
from ai_service.api import routes_infra, routes_reports, routes_workers, schemas
from ai_service.api.auth import Authenticator
from ai_service.api.routes_ops import build_stats
from ai_service.error_envelope import status_for
from ai_service.jobs import ErrorCategory, JobStatus
from ai_service.redact import redact_url
from ai_service.store import Store
from ai_service.ui import charts
from ai_service.ui.session import COOKIE, COOKIE_PATH, LOGIN_ROLES, Session, SessionKeys

log = logging.getLogger("ai_service.ui")

PREFIX = "/ui"
_HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# Failed logins per client address within LOGIN_WINDOW seconds before 429.
LOGIN_FAILURES = 10
LOGIN_WINDOW = 60.0
PAGE_SIZE = 50
LATEST_FAILURES = 10
# The job filter's single-valued fields (`status` may repeat: read apart).
FILTER_NAMES = tuple(name for name in schemas.FilterFields.model_fields if name != "status")
NOTICES = {
    "retried": "Retried: the job is pending again.",
    "cancelled": "Cancelled.",
}

router = APIRouter(prefix=PREFIX, include_in_schema=False)


class LoginRequired(Exception):
    """No valid session: a page redirects to the login, data answers 401."""


class Refused(Exception):
    """An action refused before it ran (403: reader or CSRF; 400: bad form)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class LoginLimiter:
    """Failed logins per client address in a sliding window (per process)."""

    def __init__(self, limit: int = LOGIN_FAILURES, window: float = LOGIN_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def blocked(self, client: str, now: float | None = None) -> bool:
        """Whether `client` used up its failures of the window."""
        stamps = self._recent(client, time.monotonic() if now is None else now)
        return len(stamps) >= self.limit

    def failed(self, client: str, now: float | None = None) -> None:
        """Record one failed login of `client`."""
        self._recent(client, time.monotonic() if now is None else now).append(
            time.monotonic() if now is None else now
        )

    def _recent(self, client: str, now: float) -> deque[float]:
        stamps = self._failures.setdefault(client, deque())
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        if not stamps and len(self._failures) > 10_000:
            self._failures.clear()  # bounded memory under a spray of addresses
            stamps = self._failures.setdefault(client, deque())
        return stamps


class UiState:
    """What the dashboard keeps per app: keys, templates, the login limiter."""

    def __init__(self, app: FastAPI) -> None:
        settings = app.state.settings
        self.keys = SessionKeys(settings)
        self.authenticator = Authenticator(settings)
        self.limiter = LoginLimiter()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["when"] = _when
        self.templates.filters["age"] = _age
        self.templates.filters["iso_when"] = _iso_when
        self.templates.globals["pct"] = _pct
        self.templates.globals["ms"] = _ms


def install(app: FastAPI) -> None:
    """Serve the dashboard's pages and its static files under `/ui`."""
    app.state.ui = UiState(app)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=_HERE / "static"), name="ui-static")
    app.include_router(router)

    async def login_required(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith(f"{PREFIX}/data/") or request.method == "POST":
            return _secure(JSONResponse({"error": "log in first"}, status_code=401))
        return _secure(RedirectResponse(f"{PREFIX}/login", status_code=303))

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        session = _ui(request).keys.open(request.cookies.get(COOKIE))
        return _page(
            request, session, "message.html", exc.status, title="Refused", text=exc.message
        )

    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(Refused, refused)


# -- plumbing ---------------------------------------------------------------------


def _ui(request: Request) -> UiState:
    state: UiState = request.app.state.ui
    return state


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _session(request: Request) -> Session:
    session = _ui(request).keys.open(request.cookies.get(COOKIE))
    if session is None:
        raise LoginRequired()
    return session


def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _page(
    request: Request,
    session: Session | None,
    template: str,
    status: int = 200,
    **context: Any,
) -> Response:
    ui = _ui(request)
    html = ui.templates.get_template(template).render(
        session=session,
        csrf=ui.keys.csrf_token(session) if session is not None else "",
        auth_on=ui.keys.auth_on,
        path=request.url.path,
        **context,
    )
    return _secure(HTMLResponse(html, status_code=status))


def _same_origin(request: Request) -> bool:
    """Whether a POST comes from a page of this host: Origin, else Referer, must name it."""
    host = request.headers.get("host")
    source = request.headers.get("origin") or request.headers.get("referer")
    if not host or not source or source == "null":
        return False
    return urlsplit(source).netloc == host


async def _form(request: Request) -> dict[str, list[str]]:
    body = (await request.body()).decode("utf-8", errors="replace")
    return parse_qs(body, keep_blank_values=False, max_num_fields=100)


async def _action(request: Request) -> tuple[Session, dict[str, list[str]]]:
    """The session and form of an action: logged in, admin, same origin, CSRF token."""
    session = _session(request)
    form = await _form(request)
    if not _same_origin(request):
        raise Refused(403, "Refused: the form did not come from this dashboard (Origin).")
    token = form.get("csrf", [None])[0]
    if not _ui(request).keys.check_csrf(session, token):
        raise Refused(403, "Refused: the form's CSRF token is missing or stale. Reload the page.")
    if not session.may_act:
        raise Refused(403, "Refused: a reader may look but not act.")
    return session, form


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso_when(value: object) -> str:
    """An ISO timestamp of a JSON column (an error's `at`) shown like the others."""
    if not isinstance(value, str):
        return "-"
    try:
        return _when(datetime.fromisoformat(value))
    except ValueError:
        return value


def _pct(share: float | None) -> str:
    """A share (0..1) as a percentage, "-" for none."""
    return "-" if share is None else f"{100 * share:.1f} %"


def _ms(millis: float | None) -> str:
    """A duration in milliseconds in words: `850 ms`, `2.35 s`, "-" for none."""
    if millis is None:
        return "-"
    return f"{millis:.0f} ms" if millis < 1000 else f"{millis / 1000:.2f} s"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 120:
        return f"{whole} s"
    if whole < 7200:
        return f"{whole // 60} min"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


# -- login ------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request) -> Response:
    if not _ui(request).keys.auth_on:
        return _secure(RedirectResponse(PREFIX, status_code=303))
    return _page(request, None, "login.html", failed=False)


@router.post("/login")
async def login(request: Request) -> Response:
    ui = _ui(request)
    client = _client(request)
    if not ui.keys.auth_on:
        return _secure(RedirectResponse(PREFIX, status_code=303))
    if not _same_origin(request):
        return _page(request, None, "login.html", 403, failed=True)
    if ui.limiter.blocked(client):
        log.warning("ui login refused: too many failed logins from %s", client)
        return _page(request, None, "login.html", 429, failed=True, blocked=True)
    token = (await _form(request)).get("token", [""])[0].strip()
    principal = ui.authenticator.identify(b"Bearer " + token.encode()) if token else None
    if principal is None or principal.role not in LOGIN_ROLES:
        ui.limiter.failed(client)
        # Never which part was wrong (unknown token or a role without a dashboard).
        log.warning("ui login failed from %s", client)
        return _page(request, None, "login.html", 401, failed=True)
    log.info("ui login: %s from %s", principal.describe(), client)
    response = RedirectResponse(PREFIX, status_code=303)
    response.set_cookie(
        COOKIE,
        ui.keys.issue(principal),
        max_age=int(ui.keys.ttl),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return _secure(response)


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = _session(request)
    if not _same_origin(request) or not _ui(request).keys.check_csrf(
        session, (await _form(request)).get("csrf", [None])[0]
    ):
        raise Refused(403, "Refused: the form's CSRF token is missing or stale. Reload the page.")
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return _secure(response)


# -- overview ---------------------------------------------------------------------


async def _overview(request: Request) -> dict[str, Any]:
    store = _store(request)
    stats = build_stats(await store.stats(), store.policy.profile_limits)
    day = await store.throughput_day()
    failures = await store.latest_failures(LATEST_FAILURES)
    # Scheduled-for-later and failed-in-the-last-hour, summed per task type and per profile.
    breakdown: dict[str, dict[str, dict[str, int]]] = {"task_type": {}, "model_profile": {}}
    for row in await store.stats_breakdown():
        for key, by_name in breakdown.items():
            sums = by_name.setdefault(row[key], {"scheduled": 0, "failed_1h": 0})
            sums["scheduled"] += row["scheduled"]
            sums["failed_1h"] += row["failed_1h"]
    minutes = [
        charts.Point(p.minute.strftime("%H:%M"), p.completed, p.failed) for p in stats.throughput_1h
    ]
    hours = [
        charts.Point(row["hour"].strftime("%H:00"), int(row["completed"]), int(row["failed"]))
        for row in day
    ]
    return {
        "stats": stats,
        "hour_chart": charts.bars(minutes, "Jobs finished per minute, last hour"),
        "day_chart": charts.bars(hours, "Jobs finished per hour, last 24 hours"),
        "hour_rate": charts.failure_rate(minutes),
        "day_rate": charts.failure_rate(hours),
        "minutes": minutes,
        "hours": hours,
        "failures": failures,
        "breakdown": breakdown,
        "statuses": [s.value for s in JobStatus],
    }


@router.get("")
async def overview(request: Request) -> Response:
    session = _session(request)
    return _page(request, session, "overview.html", **await _overview(request))


@router.get("/data/overview")
async def overview_fragment(request: Request) -> Response:
    """The live part of the overview, for the page's auto-refresh."""
    session = _session(request)
    return _page(request, session, "overview_live.html", **await _overview(request))


# -- jobs -------------------------------------------------------------------------


def _filter_values(params: Mapping[str, list[str]]) -> dict[str, Any]:
    """The non-empty filter fields of a query string or form (status may repeat)."""
    values: dict[str, Any] = {
        name: params[name][0].strip()
        for name in FILTER_NAMES
        if params.get(name) and params[name][0].strip()
    }
    statuses = [s for s in params.get("status", []) if s]
    if statuses:
        values["status"] = statuses
    return values


def _parse_filter(values: dict[str, Any]) -> tuple[schemas.FilterFields | None, str | None]:
    """The filter (the API's model, so the same rules) or the first problem in words."""
    try:
        return schemas.FilterFields.model_validate(values), None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "filter"
        return None, f"{field}: {first['msg']}"


def _encode(values: dict[str, Any]) -> str:
    """A filter as a query string (`status` repeated)."""
    pairs = [(k, v) for k, vs in values.items() for v in (vs if isinstance(vs, list) else [vs])]
    return urlencode(pairs)


def _query(request: Request) -> dict[str, list[str]]:
    return parse_qs(request.url.query, keep_blank_values=False, max_num_fields=100)


@router.get("/jobs")
async def jobs_page(request: Request) -> Response:
    session = _session(request)
    params = _query(request)
    values = _filter_values(params)
    parsed, problem = _parse_filter(values)
    cursor = (params.get("cursor") or [""])[0] or None
    jobs: list[Any] = []
    next_cursor = None
    if parsed is not None:
        try:
            page = await _store(request).list_jobs(
                parsed.to_filter(), limit=PAGE_SIZE, cursor=cursor, include=()
            )
            jobs, next_cursor = page.jobs, page.next_cursor
        except errors.InvalidRequest as exc:
            problem = exc.message
    query = _encode(values)
    return _page(
        request,
        session,
        "jobs.html",
        400 if problem else 200,
        jobs=jobs,
        values=values,
        problem=problem,
        next_url=f"{PREFIX}/jobs?{query}&cursor={next_cursor}" if next_cursor else None,
        query=query,
        statuses=[s.value for s in JobStatus],
        categories=[c.value for c in ErrorCategory],
        filtered=bool(values),
    )


@router.get("/jobs/bulk")
async def bulk_confirm(request: Request) -> Response:
    """How many jobs a bulk retry or cancel would change, and the form that does it."""
    session = _session(request)
    params = _query(request)
    action = (params.get("action") or [""])[0]
    if action not in ("retry", "cancel"):
        raise Refused(400, "action: must be retry or cancel")
    values = _filter_values(params)
    parsed, problem = _parse_filter(values)
    if parsed is None:
        raise Refused(400, problem or "invalid filter")
    if parsed.to_filter().is_empty:
        raise Refused(400, "Name a filter first: a bulk action never applies to every job here.")
    count, capped = await _store(request).count_by_filter(action, parsed.to_filter())
    return _page(
        request,
        session,
        "bulk.html",
        action=action,
        values=values,
        count=count,
        capped=capped,
        statuses=[s.value for s in JobStatus],
    )


@router.post("/jobs/bulk")
async def bulk_run(request: Request) -> Response:
    session, form = await _action(request)
    action = (form.get("action") or [""])[0]
    if action not in ("retry", "cancel"):
        raise Refused(400, "action: must be retry or cancel")
    values = _filter_values(form)
    parsed, problem = _parse_filter(values)
    if parsed is None:
        raise Refused(400, problem or "invalid filter")
    job_filter = parsed.to_filter()
    if job_filter.is_empty:
        raise Refused(400, "Name a filter first: a bulk action never applies to every job here.")
    store = _store(request)
    if action == "retry":
        outcome = await store.retry_by_filter(job_filter)
    else:
        outcome = await store.cancel_by_filter(job_filter)
    log.info(
        "ui bulk %s: %d job(s) changed by %s", action, outcome.count, session.principal.describe()
    )
    verb = "Retried" if action == "retry" else "Cancelled"
    return _page(
        request,
        session,
        "message.html",
        title=f"Bulk {action}",
        text=f"{verb} {outcome.count} job(s).",
        link=f"{PREFIX}/jobs?{_encode(values)}",
    )


def _job_id(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise Refused(404, "No such job: the id is not a UUID.") from None


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: str) -> Response:
    session = _session(request)
    store = _store(request)
    try:
        job = await store.get_job(_job_id(job_id))
    except errors.JobNotFound:
        raise Refused(404, "No such job.") from None
    deliveries = await store.list_deliveries(job.id)
    notice = NOTICES.get((_query(request).get("notice") or [""])[0])
    return _page(
        request,
        session,
        "job.html",
        job=job,
        deliveries=[replace(d, url=redact_url(d.url)) for d in deliveries],
        notice=notice,
        problem=None,
    )


async def _job_action(request: Request, job_id: str, action: str) -> Response:
    session, _ = await _action(request)
    store = _store(request)
    job_uuid = _job_id(job_id)
    try:
        if action == "retry":
            await store.retry(job_uuid)
        else:
            await store.cancel(job_uuid)
    except errors.JobNotFound:
        raise Refused(404, "No such job.") from None
    except errors.AIServiceError as exc:
        job = await store.get_job(job_uuid)
        return _page(
            request,
            session,
            "job.html",
            status_for(exc),
            job=job,
            deliveries=await store.list_deliveries(job.id),
            notice=None,
            problem=f"{action.capitalize()} refused: {exc.message}",
        )
    log.info("ui %s of job %s by %s", action, job_uuid, session.principal.describe())
    notice = "retried" if action == "retry" else "cancelled"
    return _secure(RedirectResponse(f"{PREFIX}/jobs/{job_uuid}?notice={notice}", status_code=303))


@router.post("/jobs/{job_id}/retry")
async def job_retry(request: Request, job_id: str) -> Response:
    return await _job_action(request, job_id, "retry")


@router.post("/jobs/{job_id}/cancel")
async def job_cancel(request: Request, job_id: str) -> Response:
    return await _job_action(request, job_id, "cancel")


# -- providers and the AI server ----------------------------------------------------


@router.get("/providers")
async def providers_page(request: Request) -> Response:
    session = _session(request)
    return _page(request, session, "providers.html")


@router.get("/data/status")
async def status_data(request: Request) -> Response:
    """Provider status and AI-server telemetry (the two `/api/v1` answers), for the page's JS."""
    _session(request)
    settings = request.app.state.settings
    http = request.app.state.http
    cache = await routes_infra.get_provider_cache(request, settings)
    providers = await routes_infra.providers_status(settings, http, cache)
    body: dict[str, Any] = {"providers": providers.model_dump(mode="json")}
    try:
        infra = await routes_infra.infra_status(settings, http)
        body["infra"] = infra.model_dump(mode="json", exclude_unset=True)
    except errors.AIServiceError as exc:
        body["infra"] = {"configured": True, "error": exc.message}
    return _secure(JSONResponse(body))


# -- workers ----------------------------------------------------------------------


async def _workers(request: Request) -> dict[str, Any]:
    workers = await routes_workers.list_workers(_store(request), routes_workers.DEFAULT_WITHIN)
    return {"workers": workers}


@router.get("/workers")
async def workers_page(request: Request) -> Response:
    session = _session(request)
    return _page(request, session, "workers.html", **await _workers(request))


@router.get("/data/workers")
async def workers_fragment(request: Request) -> Response:
    """The worker table, for the page's auto-refresh."""
    session = _session(request)
    return _page(request, session, "workers_live.html", **await _workers(request))


# -- the transcription A/B report ----------------------------------------------------

REPORT_FIELDS = ("since", "until", "owner_service")


@router.get("/reports/transcription")
async def report_page(request: Request) -> Response:
    session = _session(request)
    params = _query(request)
    values = {
        name: params[name][0].strip()
        for name in REPORT_FIELDS
        if params.get(name) and params[name][0].strip()
    }
    problem: str | None = None
    report: schemas.TranscriptionReportOut | None = None
    try:
        query = schemas.TranscriptionReportQuery.model_validate(values)
        since, until = routes_reports.report_window(query.since, query.until, datetime.now(UTC))
        report = await routes_reports.transcription_report(
            _store(request), since=since, until=until, owner_service=query.owner_service
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        problem = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    except errors.InvalidRequest as exc:
        problem = exc.message
    return _page(
        request,
        session,
        "report.html",
        400 if problem else 200,
        report=report,
        values=values,
        problem=problem,
    )


@router.get("/reports/transcription/jobs/{job_id}")
async def comparison_page(request: Request, job_id: str) -> Response:
    session = _session(request)
    try:
        job = await _store(request).get_job(_job_id(job_id))
        view = await routes_reports.transcription_comparison(job)
    except errors.JobNotFound:
        raise Refused(404, "No such job.") from None
    except errors.AIServiceError as exc:
        raise Refused(status_for(exc), exc.message) from None
    return _page(request, session, "comparison.html", view=view)
