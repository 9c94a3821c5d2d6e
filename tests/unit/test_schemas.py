"""The API's job filter model: one description of the filter for the list (query
parameters) and the bulk actions (body), mapped field for field onto `jobs.JobFilter`."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from ai_service.api.schemas import BulkRequest, FilterFields, ListQuery
from ai_service.jobs import JobFilter, JobStatus


def test_the_filter_model_has_the_fields_of_the_domain_filter() -> None:
    domain = {f.name for f in dataclasses.fields(JobFilter)}
    assert set(FilterFields.model_fields) == domain - {"statuses"} | {"status"}


def test_the_list_and_the_bulk_actions_share_the_filter_model() -> None:
    assert issubclass(ListQuery, FilterFields)
    assert issubclass(BulkRequest, FilterFields)
    assert set(ListQuery.model_fields) - set(FilterFields.model_fields) == {
        "limit",
        "cursor",
        "include",
    }
    assert set(BulkRequest.model_fields) - set(FilterFields.model_fields) == {"all"}


def test_to_filter_carries_every_field() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    body = BulkRequest(
        status=[JobStatus.FAILED, JobStatus.RUNNING],
        owner_service="telephony",
        owner_ref="beeline/1",
        task_type="llm_chat",
        model_profile="qwen",
        worker_id="w1",
        error_category="timeout",
        created_after=when,
        created_before=when,
        all=True,
    )
    assert body.to_filter() == JobFilter(
        statuses=(JobStatus.FAILED, JobStatus.RUNNING),
        owner_service="telephony",
        owner_ref="beeline/1",
        task_type="llm_chat",
        model_profile="qwen",
        worker_id="w1",
        error_category="timeout",
        created_after=when,
        created_before=when,
    )
    assert ListQuery(limit=10).to_filter() == JobFilter()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("owner_service", "a\x00b"),
        ("owner_ref", " "),
        ("worker_id", "x" * 201),
        ("error_category", "Not A Category"),
        ("created_after", "2026-01-01T00:00:00"),  # no timezone
        ("status", ["finished"]),
    ],
)
def test_the_same_rules_hold_for_list_and_bulk(field: str, value: object) -> None:
    for model in (ListQuery, BulkRequest):
        with pytest.raises(ValidationError) as info:
            model.model_validate({field: value})
        assert info.value.errors()[0]["loc"][0] == field
