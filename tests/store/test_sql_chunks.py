"""Multi-row statements: ``row_chunks`` splits rows into runs a statement can take, and ``values_sql`` numbers
their parameters row after row."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from fairmeter.store.sql import ROWS_PER_STATEMENT, row_chunks, values_sql


@given(st.lists(st.integers(), max_size=4 * ROWS_PER_STATEMENT + 3))
def test_chunks_keep_every_row_in_order_in_runs_a_statement_takes(rows: list[int]) -> None:
    chunks = list(row_chunks(rows))
    assert [r for chunk in chunks for r in chunk] == rows
    assert all(0 < len(chunk) <= ROWS_PER_STATEMENT for chunk in chunks)
    assert len(chunks) == -(-len(rows) // ROWS_PER_STATEMENT)  # as few statements as the limit allows


@given(st.integers(1, 10), st.integers(1, ROWS_PER_STATEMENT))
def test_values_are_numbered_row_after_row(width: int, rows: int) -> None:
    sql = values_sql("INSERT INTO t", width, rows, "ON CONFLICT DO NOTHING")
    groups = re.findall(r"\(([^()]*)\)", sql)
    assert len(groups) == rows
    numbers = [int(p.strip().lstrip("$")) for g in groups for p in g.split(",")]
    assert numbers == list(range(1, width * rows + 1))
    assert sql.startswith("INSERT INTO t VALUES (") and sql.endswith(") ON CONFLICT DO NOTHING")
