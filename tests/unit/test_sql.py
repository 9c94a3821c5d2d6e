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


FRAGMENTS = """\
-- fragment: by_owner
-- Rows of one owner.
owner = %(owner)s AND kind = 'x'

-- name: listing
-- Uses the fragment twice.
SELECT * FROM t WHERE /*by_owner*/ AND id IN (SELECT id FROM u WHERE /*by_owner*/);
"""


def test_a_fragment_is_spliced_wherever_a_query_names_it() -> None:
    parsed = parse_queries(FRAGMENTS)
    assert list(parsed) == ["listing"]  # a fragment is no query
    spliced = "(owner = %(owner)s AND kind = 'x')"
    assert parsed["listing"] == (
        f"SELECT * FROM t WHERE {spliced} AND id IN (SELECT id FROM u WHERE {spliced})"
    )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("-- name: q\nSELECT /*nothing*/;\n", "placeholder /\\*nothing\\*/ names no fragment"),
        ("-- fragment: f\n1\n-- name: q\nSELECT 2;\n", "fragment 'f' is used by no query"),
        (
            "-- fragment: f\n/*g*/\n-- fragment: g\n1\n-- name: q\nSELECT /*f*/;\n",
            "fragment 'f' holds a placeholder",
        ),
        ("-- fragment: q\n1\n-- name: q\nSELECT /*q*/;\n", "duplicate query name 'q'"),
    ],
)
def test_fragment_mistakes_are_refused(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_queries(text)


def test_every_fragment_has_a_one_line_description() -> None:
    lines = QUERIES_FILE.read_text().splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("-- fragment: ")]
    # job_statuses, job_filter, retry_backoff, outage_backoff, outage_start
    assert len(headers) == 5
    for index in headers:
        assert lines[index + 1].startswith("-- "), lines[index]


def test_the_job_filter_is_written_once_and_used_by_the_list_and_both_bulk_actions() -> None:
    text = QUERIES_FILE.read_text()
    for condition in ("owner_service = %(owner_service)s", "created_at < %(created_before)s"):
        assert text.count(condition) == 1, condition
    assert text.count("OR s = 'failed'") == 1  # a category matches failed jobs only
    for name in ("job_list", "job_retry_by_filter", "job_cancel_by_filter"):
        assert "owner_service = %(owner_service)s" in queries()[name], name
        assert "OR s = 'failed'" in queries()[name], name


def test_the_backoff_rule_is_written_once_and_used_by_fail_and_rescue() -> None:
    text = QUERIES_FILE.read_text()
    assert text.count("power(2,") == 1
    for name in ("job_fail", "job_rescue_expired"):
        assert "power(2, greatest(attempt - 1, 0))" in queries()[name], name
