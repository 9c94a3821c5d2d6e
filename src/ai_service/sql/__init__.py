"""The named SQL queries of `queries.sql`, loaded into a dict.

A file holds `-- name: x` sections (queries) and `-- fragment: y` sections: SQL
written once and spliced into queries wherever they say `/*y*/` (the filter
predicate of the job list and the bulk actions, the retry backoff rule).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_HEADER = re.compile(r"^-- (name|fragment): (\w+)\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"/\*(\w+)\*/")


def parse_queries(text: str) -> dict[str, str]:
    """Split a file of `-- name: x` sections into {name: sql}, fragments spliced in.

    Comment lines inside a section are dropped. A `-- fragment: y` section is no
    query: its text replaces every `/*y*/` in the queries (fragments do not nest).
    A duplicate name, a placeholder naming no fragment, a fragment holding a
    placeholder and a fragment that no query uses are errors (ValueError).
    """
    sections: dict[str, dict[str, str]] = {"name": {}, "fragment": {}}
    matches = list(_HEADER.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = "\n".join(
            line for line in text[match.end() : end].splitlines() if not line.startswith("--")
        ).strip()
        kind, name = match.group(1), match.group(2)
        if name in sections["name"] or name in sections["fragment"]:
            raise ValueError(f"duplicate query name {name!r}")
        sections[kind][name] = body.rstrip(";")
    fragments = sections["fragment"]
    for name, body in fragments.items():
        if _PLACEHOLDER.search(body):
            raise ValueError(f"fragment {name!r} holds a placeholder: fragments do not nest")
    used: set[str] = set()

    def splice(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in fragments:
            raise ValueError(f"placeholder /*{name}*/ names no fragment")
        used.add(name)
        # Parenthesised: a fragment is one expression wherever it lands.
        return f"({fragments[name]})"

    queries = {name: _PLACEHOLDER.sub(splice, body) for name, body in sections["name"].items()}
    unused = sorted(set(fragments) - used)
    if unused:
        raise ValueError(f"fragment {unused[0]!r} is used by no query")
    return queries


@cache
def queries() -> dict[str, str]:
    """Every runtime query by name."""
    return parse_queries((Path(__file__).parent / "queries.sql").read_text())
