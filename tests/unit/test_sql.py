"""The named-query loader and the link between `store.py` and `queries.sql`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ai_service import sql, store
from ai_service.sql import parse_queries, queries

QUERIES_FILE = Path(sql.__file__).parent / "queries.sql"

SAMPLE = """\
-- File header, ignored.

-- name: first_query
-- What the first query does.
SELECT 1
  FROM t;

-- name: second_query
-- What the second one does.
UPDATE t SET x = 1 -- trailing comments stay: only whole comment lines are dropped
 WHERE id = %(id)s;
"""


def test_parse_queries_splits_sections_by_name() -> None:
    parsed = parse_queries(SAMPLE)
    assert list(parsed) == ["first_query", "second_query"]
    assert parsed["first_query"] == "SELECT 1\n  FROM t"
    assert parsed["second_query"].startswith("UPDATE t SET x = 1 -- trailing")
    assert parsed["second_query"].endswith("WHERE id = %(id)s")


def test_parse_queries_drops_comment_lines_and_the_final_semicolon() -> None:
    for body in parse_queries(SAMPLE).values():
        assert not any(line.startswith("--") for line in body.splitlines())
        assert not body.endswith(";")


def test_parse_queries_rejects_a_duplicate_name() -> None:
    text = "-- name: same\nSELECT 1;\n-- name: other\nSELECT 2;\n-- name: same\nSELECT 3;\n"
    with pytest.raises(ValueError, match="duplicate query name 'same'"):
        parse_queries(text)


def test_parse_queries_of_text_without_headers_is_empty() -> None:
    assert parse_queries("SELECT 1;\n-- just a comment\n") == {}


def _names_used_by_store() -> set[str]:
    """Query names passed as literals to the store's query runners or `self._q[...]`."""
    tree = ast.parse(Path(store.__file__).read_text())
    runners = {"_fetch", "_one_job", "_by_filter"}
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in runners
            and node.args
        ):
            # The name may be chosen by an expression ("a" if x else "b"): take every literal.
            names.update(
                sub.value
                for sub in ast.walk(node.args[0])
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str)
            )
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "_q"
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            names.add(node.slice.value)
    return names


def test_every_query_name_used_by_the_store_exists() -> None:
    used = _names_used_by_store()
    assert len(used) > 15  # the AST walk found the calls
    assert used - set(queries()) == set()


def test_every_query_in_the_file_is_used_by_the_store() -> None:
    # store.py is the only module that runs queries; an unused one is dead SQL.
    assert set(queries()) - _names_used_by_store() == set()


def test_every_query_has_a_one_line_description() -> None:
    lines = QUERIES_FILE.read_text().splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("-- name: ")]
    assert len(headers) == len(queries())
    for index in headers:
        assert lines[index + 1].startswith("-- "), lines[index]
        assert lines[index + 1].strip() != "--"


def test_queries_use_only_named_placeholders() -> None:
    # psycopg named style: a bare %s or a stray % would break parameter binding.
    for name, text in queries().items():
        stripped = re.sub(r"%\(\w+\)s", "", text)
        assert "%" not in stripped, name
