"""The named SQL queries of `queries.sql`, loaded into a dict."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split a file of `-- name: x` sections into {name: sql}.

    Comment lines inside a section are dropped; the text must not contain
    two sections with the same name.
    """
    queries: dict[str, str] = {}
    matches = list(_HEADER.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = "\n".join(
            line for line in text[match.end() : end].splitlines() if not line.startswith("--")
        ).strip()
        name = match.group(1)
        if name in queries:
            raise ValueError(f"duplicate query name {name!r}")
        queries[name] = body.rstrip(";")
    return queries


@cache
def queries() -> dict[str, str]:
    """Every runtime query by name."""
    return parse_queries((Path(__file__).parent / "queries.sql").read_text())
