"""The `/api/v1` routes of an app, compiled once and matched the way the router matches.

One match per request serves both who may call (`auth.RoutePolicy`) and what
runs (`lean.LeanEndpoint`): the edge middleware looks the request up here once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.convertors import Convertor
from starlette.routing import compile_path

API_PREFIX = "/api/v1/"


@dataclass(frozen=True, slots=True)
class Entry:
    """One (method, path template) of the app, with what it takes to match it."""

    method: str
    template: str
    regex: re.Pattern[str]
    convertors: dict[str, Convertor[Any]]
    route: APIRoute | None  # None for a route that is not a FastAPI `APIRoute`


@dataclass(frozen=True, slots=True)
class Matched:
    """A request's route: its entry and the path parameters (converted like the router's)."""

    entry: Entry
    params: dict[str, Any]


def api_routes(app: FastAPI) -> Iterator[tuple[str, str, APIRoute | None]]:
    """(method, path template, route) of every `/api/v1` route of `app`, in routing order.

    HEAD is left out: it follows the GET rule of the same path.
    """
    for context in iter_route_contexts(app.routes):
        path = context.path or ""
        if path.startswith(API_PREFIX):
            original = context.original_route
            route = original if isinstance(original, APIRoute) else None
            for method in sorted((context.methods or set()) - {"HEAD"}):
                yield method, path, route


class RouteTable:
    """The `/api/v1` routes by method, each method's in routing order (first match wins)."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self._by_method: dict[str, list[Entry]] = {}
        for entry in entries:
            self._by_method.setdefault(entry.method, []).append(entry)

    @classmethod
    def for_app(cls, app: FastAPI) -> RouteTable:
        """Compile every `/api/v1` route of `app`."""
        entries = []
        for method, template, route in api_routes(app):
            regex, _, convertors = compile_path(template)
            entries.append(Entry(method, template, regex, convertors, route))
        return cls(entries)

    def match(self, method: str, path: str) -> Matched | None:
        """The route that will handle `method path` (HEAD as GET), or None."""
        for entry in self._by_method.get("GET" if method == "HEAD" else method, ()):
            found = entry.regex.match(path)
            if found is not None:
                params = {
                    name: entry.convertors[name].convert(value)
                    for name, value in found.groupdict().items()
                }
                return Matched(entry, params)
        return None
