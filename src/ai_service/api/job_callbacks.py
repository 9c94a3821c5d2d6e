"""Jobs' webhook fields at create time: `callback_url` checked or defaulted, and the
request's `traceparent` kept.

An explicit `callback_url` is checked against the outbound URL rules, its host
resolved now (`webhooks.destinations.create_problem`): a refused one is a 422
naming the field (`callback_url`, `jobs[3].callback_url`). A job without one gets
its owner_service's URL of `WEBHOOK_URLS`, resolved here and stored with the job (a
later change of `WEBHOOK_URLS` concerns later jobs only; that URL was checked at
start and, like every callback, is checked again at each delivery). Without
`WEBHOOK_SECRET` no job may name a callback (webhooks are always signed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ai_service import errors
from ai_service.config import Settings
from ai_service.jobs import NewJob
from ai_service.traceparent import parse_traceparent
from ai_service.webhooks import destinations

NO_SECRET = "webhooks need WEBHOOK_SECRET, which this service does not have"


async def apply_callbacks(
    settings: Settings, jobs: Sequence[NewJob], fields: Sequence[str], traceparent: str | None
) -> list[NewJob]:
    """`jobs` with their callback URL checked or defaulted, and the valid `traceparent`.

    `fields[i]` names job i's callback_url in messages. Raises `InvalidRequest` (422).
    """
    trace = parse_traceparent(traceparent)
    checked: dict[str, str | None] = {}  # URL -> problem: a batch resolves each URL once
    out: list[NewJob] = []
    for job, field in zip(jobs, fields, strict=True):
        url = job.callback_url
        if url is None:
            url = settings.default_callback_url(job.owner_service)
        elif settings.webhook_secret is None:
            raise errors.InvalidRequest(field, NO_SECRET)
        else:
            if url not in checked:
                checked[url] = await destinations.create_problem(url, settings.webhook_url_allow)
            problem = checked[url]
            if problem is not None:
                raise errors.InvalidRequest(field, problem)
        if url != job.callback_url or trace is not None:
            job = replace(job, callback_url=url, traceparent=trace)
        out.append(job)
    return out
