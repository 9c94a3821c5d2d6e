"""`ai-service jobs list|get|wait|retry|cancel|stats`: the job API from a shell.

Built on the Python client (`ai_service_client`), configured like it:
`AI_SERVICE_URL` (or `--url`) and `AI_SERVICE_TOKEN` (never an option, so it
stays out of shell history and process lists). Human-readable tables by
default, `--json` for scripts (one JSON object; `list` writes one per line).

Exit codes: 0 done; 1 the API refused or could not be reached (its message on
stderr), or `wait` ended with the job failed/cancelled or still running; 2 a
usage error (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TextIO

from ai_service_client import AIServiceError, Client, JobFilters, models

DEFAULT_ROWS = 50
MAX_PAGE = 500  # the list endpoint's largest page
STATUSES = ("pending", "running", "completed", "failed", "cancelled")
LIST_COLUMNS = (
    ("ID", "id"),
    ("STATUS", "status"),
    ("TASK TYPE", "task_type"),
    ("PROFILE", "model_profile"),
    ("OWNER", "owner_service"),
    ("REF", "owner_ref"),
    ("ATTEMPT", "attempt"),
    ("CREATED (UTC)", "created_at"),
)
# The client's list filters given as one text option each (`--status` repeats; the
# page size and payloads are options of their own).
_FILTERS = tuple(
    name for name in JobFilters.__annotations__ if name not in ("status", "include", "limit")
)


def add_parser(sub: Any) -> None:
    """Add `jobs` and its commands to the `ai-service` subparsers."""
    jobs = sub.add_parser(
        "jobs",
        help="list, read, wait for, retry and cancel jobs over the API",
        description="Talks to the API at AI_SERVICE_URL with AI_SERVICE_TOKEN.",
    )
    jobs.add_argument("--url", help="API base URL (default: AI_SERVICE_URL)")
    actions = jobs.add_subparsers(dest="action", required=True)

    listing = actions.add_parser("list", help="jobs, newest first")
    listing.add_argument("--status", action="append", choices=STATUSES, help="repeatable")
    for name in _FILTERS:
        listing.add_argument("--" + name.replace("_", "-"), dest=name)
    listing.add_argument(
        "--limit", type=_positive, default=DEFAULT_ROWS, help=f"rows (default {DEFAULT_ROWS})"
    )
    listing.add_argument("--all", action="store_true", help="every matching job (no --limit)")
    _json_flag(listing)

    for name, text in (
        ("get", "one job: state, input, result, errors"),
        ("retry", "put a failed or running job back to pending"),
        ("cancel", "cancel a pending or running job"),
    ):
        command = actions.add_parser(name, help=text)
        command.add_argument("job_id")
        _json_flag(command)

    wait = actions.add_parser("wait", help="wait until the job is completed, failed or cancelled")
    wait.add_argument("job_id")
    wait.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    _json_flag(wait)

    stats = actions.add_parser("stats", help="queue counters")
    _json_flag(stats)


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run one `jobs` command; the exit code."""
    out = out or sys.stdout
    try:
        with Client(args.url) as client:
            return COMMANDS[args.action](client, args, out)
    except AIServiceError as exc:
        print(f"ai-service jobs {args.action}: {exc}", file=sys.stderr)
        return 1


def _list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    filters: JobFilters = {}
    for name in _FILTERS:
        value = getattr(args, name)
        if value is not None:
            filters[name] = value  # type: ignore[literal-required]
    if args.status:
        filters["status"] = args.status
    wanted = None if args.all else args.limit
    filters["limit"] = MAX_PAGE if wanted is None else min(wanted, MAX_PAGE)
    jobs = _take(client.iter_jobs(**filters), wanted)
    if args.json:
        for job in jobs:
            print(json.dumps(models.to_json(job)), file=out)
        return 0
    rows = [[_cell(getattr(job, field)) for _, field in LIST_COLUMNS] for job in jobs]
    _table([title for title, _ in LIST_COLUMNS], rows, out)
    return 0


def _take(jobs: Iterable[models.JobSummary], count: int | None) -> list[models.JobSummary]:
    taken: list[models.JobSummary] = []
    for job in jobs:
        if count is not None and len(taken) >= count:
            break
        taken.append(job)
    return taken


def _get(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    _show_job(client.get(args.job_id), args.json, out)
    return 0


def _wait(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    job = client.wait(args.job_id, args.timeout)
    _show_job(job, args.json, out)
    if job.status != "completed":
        print(f"ai-service jobs wait: job {job.id} {job.status}", file=sys.stderr)
        return 1
    return 0


def _retry(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    _show_job(client.retry(args.job_id), args.json, out)
    return 0


def _cancel(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    _show_job(client.cancel(args.job_id), args.json, out)
    return 0


def _stats(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    stats = client.stats()
    if args.json:
        print(json.dumps(models.to_json(stats), indent=2), file=out)
        return 0
    print(f"total: {stats.total}", file=out)
    if stats.oldest_runnable_age_seconds is not None:
        print(f"oldest runnable: {stats.oldest_runnable_age_seconds:.1f} s", file=out)
    rows = [["(all)", *(str(stats.by_status.get(s, 0)) for s in STATUSES)]]
    for task_type, counts in sorted(stats.by_task_type.items()):
        rows.append([task_type, *(str(counts.get(s, 0)) for s in STATUSES)])
    print(file=out)
    _table(["TASK TYPE", *(s.upper() for s in STATUSES)], rows, out)
    if stats.failed_by_category:
        print(file=out)
        failed = sorted(stats.failed_by_category.items(), key=lambda kv: -kv[1])
        _table(["FAILED BY CATEGORY", "JOBS"], [[c, str(n)] for c, n in failed], out)
    return 0


COMMANDS: dict[str, Callable[[Client, argparse.Namespace, TextIO], int]] = {
    "list": _list,
    "get": _get,
    "wait": _wait,
    "retry": _retry,
    "cancel": _cancel,
    "stats": _stats,
}


def _show_job(job: models.Job, as_json: bool, out: TextIO) -> None:
    if as_json:
        print(json.dumps(models.to_json(job), indent=2), file=out)
        return
    plain = [
        "id",
        "status",
        "owner_service",
        "owner_ref",
        "task_type",
        "model_profile",
        "priority",
        "attempt",
        "max_attempts",
        "worker_id",
        "idempotency_key",
        "created_at",
        "run_after",
        "started_at",
        "finished_at",
        "error_category",
        "error_message",
    ]
    width = max(len(name) for name in plain)
    for name in plain:
        value = getattr(job, name)
        if value is not None:
            print(f"{name:<{width}}  {_cell(value)}", file=out)
    for name in ("input", "result", "error_details"):
        value = getattr(job, name)
        if value is not None:
            print(f"{name}:", file=out)
            print(_indent(json.dumps(value, indent=2, ensure_ascii=False)), file=out)
    if job.errors:
        print(f"errors ({job.error_count} in all, newest last):", file=out)
        for entry in job.errors:
            attempt, category = entry.get("attempt"), entry.get("category")
            print(f"  attempt {attempt}: {category}: {entry.get('message')}", file=out)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(), file=out)
