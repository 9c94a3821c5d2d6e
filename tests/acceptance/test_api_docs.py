"""Acceptance tests of the API documentation pages, `/docs` and `/redoc`.

Both render with no network: every script, style sheet, icon and the OpenAPI
document they reference is served by the app itself (from the
`fastapi-offline` wheel), nothing points at another host, and they stay open
when `AI_SERVICE_TOKEN` guards `/api/v1/*`.
"""

from __future__ import annotations

import re
import uuid
from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import ApiFactory

TOKEN = f"tok-{uuid.uuid4().hex}"
DOC_PAGES = ("/docs", "/redoc")
# What each page must reference (a page missing its script is as blank as one
# whose script cannot load).
EXPECTED_KINDS = {
    "/docs": {"script", "stylesheet", "icon", "openapi"},
    "/redoc": {"script", "icon", "openapi"},
}
# kind -> (a word the content type must contain, the least plausible size in bytes)
PLAUSIBLE = {
    "script": ("javascript", 100_000),
    "stylesheet": ("text/css", 10_000),
    "icon": ("image/", 500),
    "openapi": ("application/json", 1_000),
}
# Anything that names a host: `scheme://`, or a protocol-relative `//host`.
EXTERNAL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://|(?<![:/])//[^\s'\"<>]")


class References(HTMLParser):
    """Collects what a page makes the browser fetch, as (kind, url)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "script" and "src" in values:
            self.found.append(("script", values["src"]))
        elif tag == "link":
            rel = values.get("rel", "").split()
            self.found.append(("icon" if "icon" in rel else "stylesheet", values["href"]))
        elif tag == "redoc":
            self.found.append(("openapi", values["spec-url"]))
        elif "src" in values or "href" in values:
            self.found.append((tag, values.get("src") or values["href"]))


def references(html: str) -> list[tuple[str, str]]:
    """Every URL in `html` the browser loads, the Swagger UI's `url:` option included."""
    parser = References()
    parser.feed(html)
    parser.close()
    # Swagger UI takes the document's URL in its inline script, not in an attribute.
    parser.found += [("openapi", url) for url in re.findall(r"\burl:\s*'([^']*)'", html)]
    return parser.found


async def assert_served_offline(client: httpx.AsyncClient, page: str) -> None:
    """`page` answers HTML whose every reference the app serves, none on another host."""
    response = await client.get(page)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert EXTERNAL.search(html) is None, EXTERNAL.search(html)
    found = references(html)
    assert {kind for kind, _ in found} == EXPECTED_KINDS[page], found
    for kind, url in found:
        parts = urlsplit(url)
        # Relative to the app: no scheme, no host, an absolute path.
        assert (parts.scheme, parts.netloc) == ("", ""), url
        assert url.startswith("/"), url
        asset = await client.get(url)
        assert asset.status_code == 200, (url, asset.status_code)
        content_type, least = PLAUSIBLE[kind]
        assert content_type in asset.headers["content-type"], (url, asset.headers)
        assert len(asset.content) >= least, (url, len(asset.content))
        if kind == "openapi":
            assert "/api/v1/jobs" in asset.json()["paths"]


async def test_docs_page_references_only_assets_the_app_serves(api: httpx.AsyncClient) -> None:
    await assert_served_offline(api, "/docs")
    html = (await api.get("/docs")).text
    # The one request Swagger UI would make to a host of its own choosing.
    assert '"validatorUrl": null' in html


async def test_redoc_page_references_only_assets_the_app_serves(api: httpx.AsyncClient) -> None:
    await assert_served_offline(api, "/redoc")
    # ReDoc's optional web fonts come from Google: not linked.
    assert "fonts.googleapis" not in (await api.get("/redoc")).text


async def test_docs_stay_open_when_a_token_guards_the_api(api_factory: ApiFactory) -> None:
    async with api_factory(AI_SERVICE_TOKEN=TOKEN) as client:
        # The guard is on: the API itself needs the token.
        assert (await client.get("/api/v1/stats")).status_code == 401
        for page in DOC_PAGES:
            await assert_served_offline(client, page)
            # A wrong token on the page and its assets does not lock them either.
            wrong = {"Authorization": "Bearer wrong"}
            assert (await client.get(page, headers=wrong)).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 200


async def test_head_answers_like_get_without_a_body(api: httpx.AsyncClient) -> None:
    for path in ("/openapi.json", *DOC_PAGES, "/docs/assets/swagger-ui-bundle.js"):
        got = await api.get(path)
        head = await api.head(path)
        assert (head.status_code, got.status_code) == (200, 200), path
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
    assert "paths" in (await api.get("/openapi.json")).json()


async def test_only_get_and_head_reach_the_pages(api: httpx.AsyncClient) -> None:
    for page in DOC_PAGES:
        response = await api.post(page)
        assert response.status_code == 405, page
        assert response.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/docs/assets/nope.js",
        b"/docs/assets/",
        b"/docs/assets/%2e%2e/core.py",
        b"/docs/assets/..%2fcore.py",
        b"/docs/assets/..%2f__init__.py",
    ],
)
async def test_an_unknown_asset_is_a_404_and_nothing_outside_the_assets_is_served(
    api: httpx.AsyncClient, raw_path: bytes
) -> None:
    request = api.build_request("GET", "/")
    # Sent as written: httpx would otherwise resolve the dot segments itself.
    request.url = request.url.copy_with(raw_path=raw_path)
    response = await api.send(request)
    assert response.status_code == 404, response.text
    assert response.json()["error"] == "not_found"
