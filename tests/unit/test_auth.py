"""`ai_service.api.auth`: token identification, the route rules, the owner_service rules."""

from __future__ import annotations

import hmac
from typing import Any

import pytest

from ai_service import errors
from ai_service.api import auth
from ai_service.api.app import create_app
from ai_service.config import Role, token_id
from tests.helpers import make_settings

ADMIN = "adm-7c1e0b55"
TOKENS = "sub-11aa:submitter:telephony,wrk-22bb:worker,rdr-33cc:reader,adm-44dd:admin"


def bearer(token: str) -> bytes:
    return f"Bearer {token}".encode()


def authenticator(**env: str) -> auth.Authenticator:
    return auth.Authenticator(make_settings(**env))


def test_without_any_token_every_caller_is_the_open_admin() -> None:
    open_auth = authenticator()
    assert not open_auth.enabled
    assert open_auth.identify(None) is auth.OPEN
    assert open_auth.identify(bearer("anything")) is auth.OPEN
    assert auth.OPEN.role is Role.ADMIN
    assert auth.OPEN.describe() == "auth=off"


def test_each_token_maps_to_its_role_owner_and_token_id() -> None:
    known = authenticator(AI_SERVICE_TOKEN=ADMIN, AI_SERVICE_TOKENS=TOKENS)
    expected = {
        ADMIN: (Role.ADMIN, None),
        "sub-11aa": (Role.SUBMITTER, "telephony"),
        "wrk-22bb": (Role.WORKER, None),
        "rdr-33cc": (Role.READER, None),
        "adm-44dd": (Role.ADMIN, None),
    }
    for token, (role, owner) in expected.items():
        principal = known.identify(bearer(token))
        assert principal == auth.Principal(role, owner, token_id(token))
        assert token not in principal.describe()
    submitter = known.identify(bearer("sub-11aa"))
    assert submitter is not None
    assert submitter.describe() == f"role=submitter owner=telephony token_id={token_id('sub-11aa')}"


@pytest.mark.parametrize(
    "header",
    [
        None,
        b"",
        b"Bearer",
        b"Bearer ",
        b"sub-11aa",
        b"Basic sub-11aa",
        b"Bearer sub-11aax",
        b"Bearer sub-11a",
        b"Bearer SUB-11AA",
        b"Bearer submitter",
    ],
)
def test_missing_or_wrong_tokens_identify_nobody(header: bytes | None) -> None:
    assert authenticator(AI_SERVICE_TOKENS=TOKENS).identify(header) is None


def test_scheme_is_case_insensitive_and_blanks_around_the_token_are_ignored() -> None:
    known = authenticator(AI_SERVICE_TOKENS=TOKENS)
    for header in (b"bearer wrk-22bb", b"BEARER wrk-22bb", b"Bearer  wrk-22bb "):
        principal = known.identify(header)
        assert principal is not None
        assert principal.role is Role.WORKER


def test_every_configured_token_is_compared_whichever_matches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Constant time: no early exit, so the time taken does not reveal which
    # entry matched (or that none did).
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append(1)
        assert len(a) == len(b) == 32  # digests: a token's length is not revealed either
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    known = authenticator(AI_SERVICE_TOKEN=ADMIN, AI_SERVICE_TOKENS=TOKENS)
    for token in (ADMIN, "sub-11aa", "adm-44dd", "nobody"):
        calls.clear()
        known.identify(bearer(token))
        assert len(calls) == 5, token


def test_route_policy_refuses_an_app_with_a_route_missing_from_the_rules() -> None:
    app = create_app(make_settings("postgresql://unused/db"))
    rules = dict(auth.ROUTE_RULES)
    del rules[("POST", "/api/v1/jobs/claim")]
    with pytest.raises(RuntimeError, match=r"no rule for.*POST.*/api/v1/jobs/claim"):
        auth.RoutePolicy.for_app(app, rules)


def test_route_policy_refuses_a_rule_without_a_route() -> None:
    app = create_app(make_settings("postgresql://unused/db"))
    rules = {**auth.ROUTE_RULES, ("DELETE", "/api/v1/jobs"): auth.Rule(auth.ALL_ROLES)}
    with pytest.raises(RuntimeError, match=r"no route for.*DELETE"):
        auth.RoutePolicy.for_app(app, rules)


def test_an_app_whose_route_has_no_rule_is_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fail closed at build time: a route added without a rule cannot be served.
    create_app(make_settings("postgresql://unused/db"))  # every real route has a rule
    monkeypatch.delitem(auth.ROUTE_RULES, ("GET", "/api/v1/stats"))
    with pytest.raises(RuntimeError, match=r"no rule for.*/api/v1/stats"):
        create_app(make_settings("postgresql://unused/db"))


def test_route_policy_matches_like_the_router_and_head_like_get() -> None:
    policy = auth.RoutePolicy.for_app(create_app(make_settings("postgresql://unused/db")))
    job = "/api/v1/jobs/0192f0c4-0000-7000-8000-000000000000"
    assert policy.match("POST", "/api/v1/jobs/claim") == (
        "/api/v1/jobs/claim",
        auth.ROUTE_RULES[("POST", "/api/v1/jobs/claim")],
    )
    matched = policy.match("POST", f"{job}/cancel")
    assert matched is not None
    assert matched[0] == "/api/v1/jobs/{job_id}/cancel"
    matched = policy.match("HEAD", job)
    assert matched is not None
    assert matched[0] == "/api/v1/jobs/{job_id}"
    assert policy.match("DELETE", "/api/v1/jobs") is None
    assert policy.match("GET", "/api/v1/nowhere") is None
    assert policy.match("POST", f"{job}/cancel/extra") is None


def test_scoped_owner_confines_a_submitter_and_leaves_others_alone() -> None:
    submitter = auth.Principal(Role.SUBMITTER, "telephony", "abcd1234")
    worker = auth.Principal(Role.WORKER, None, "abcd1234")
    assert auth.scoped_owner(submitter, None, "owner_service") == "telephony"
    assert auth.scoped_owner(submitter, "telephony", "owner_service") == "telephony"
    assert auth.scoped_owner(worker, None, "owner_service") is None
    assert auth.scoped_owner(worker, "crm", "owner_service") == "crm"
    with pytest.raises(errors.Forbidden) as info:
        auth.scoped_owner(submitter, "crm", "jobs[3].owner_service")
    assert info.value.code == "forbidden"
    assert info.value.message.startswith("jobs[3].owner_service: ")
    assert info.value.details["field"] == "jobs[3].owner_service"


def test_all_true_is_for_admins_only() -> None:
    auth.require_all_allowed(auth.Principal(Role.ADMIN, None, "abcd1234"), True)
    auth.require_all_allowed(auth.OPEN, True)
    for role in (Role.SUBMITTER, Role.WORKER, Role.READER):
        principal = auth.Principal(role, "telephony" if role is Role.SUBMITTER else None, "x")
        auth.require_all_allowed(principal, False)
        with pytest.raises(errors.Forbidden, match="all: "):
            auth.require_all_allowed(principal, True)


def test_startup_warns_when_auth_is_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="ai_service.api.auth"):
        auth.announce(make_settings())
        auth.announce(make_settings(AI_SERVICE_TOKEN=ADMIN, AI_SERVICE_TOKENS=TOKENS))
    [off, on] = caplog.records
    assert off.levelname == "WARNING"
    assert "AUTH IS OFF" in off.getMessage()
    assert on.levelname == "INFO"
    assert on.getMessage() == (
        "auth on: admin token set, 4 scoped token(s) (admin=1, submitter=1, worker=1, reader=1)"
    )
