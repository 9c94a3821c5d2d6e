"""The dashboard's session cookie and CSRF tokens (`ai_service.ui.session`)."""

from __future__ import annotations

from ai_service.api.auth import Principal
from ai_service.config import Role
from ai_service.ui.session import SessionKeys
from tests.helpers import make_settings

NOW = 1_800_000_000.0


def keys(**env: str) -> SessionKeys:
    env.setdefault("AI_SERVICE_TOKEN", "admin-token")
    return SessionKeys(make_settings(**env))


def test_a_cookie_opens_as_the_session_it_was_issued_for_until_it_expires() -> None:
    k = keys(UI_SESSION_TTL="1h")
    cookie = k.issue(Principal(Role.READER, None, "abcd1234"), now=NOW)
    session = k.open(cookie, now=NOW + 3599)
    assert session is not None
    assert session.principal == Principal(Role.READER, None, "abcd1234")
    assert session.expires_at == NOW + 3600
    assert not session.may_act
    assert k.open(cookie, now=NOW + 3600) is None
    assert "admin-token" not in cookie


def test_a_forged_cookie_or_one_of_other_tokens_is_no_session() -> None:
    k = keys()
    cookie = k.issue(Principal(Role.READER), now=NOW)
    payload, signature = cookie.split(".")
    admin_payload = k.issue(Principal(Role.ADMIN), now=NOW).split(".")[0]
    assert k.open(f"{admin_payload}.{signature}", now=NOW) is None
    assert k.open(payload, now=NOW) is None
    assert k.open("", now=NOW) is None
    assert k.open("a.b.c", now=NOW) is None
    # Changing the tokens changes the key: every session ends.
    assert keys(AI_SERVICE_TOKEN="another-token").open(cookie, now=NOW) is None
    # Another process of the same deployment accepts it.
    assert keys().open(cookie, now=NOW) is not None


def test_roles_without_a_dashboard_never_open_even_when_signed() -> None:
    k = keys()
    cookie = k.issue(Principal(Role.SUBMITTER, "telephony"), now=NOW)
    assert k.open(cookie, now=NOW) is None


def test_the_csrf_token_is_bound_to_the_session() -> None:
    k = keys()
    first = k.open(k.issue(Principal(Role.ADMIN), now=NOW), now=NOW)
    second = k.open(k.issue(Principal(Role.ADMIN), now=NOW + 1), now=NOW)
    assert first is not None
    assert second is not None
    assert first.may_act
    assert k.check_csrf(first, k.csrf_token(first))
    assert not k.check_csrf(first, k.csrf_token(second))
    assert not k.check_csrf(first, None)
    assert not k.check_csrf(first, "")


def test_with_auth_off_everyone_has_the_open_admin_session() -> None:
    k = SessionKeys(make_settings())
    assert not k.auth_on
    session = k.open(None)
    assert session is not None
    assert session.may_act
