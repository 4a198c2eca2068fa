"""cells.py: csv_cell is the one CSV cell, and the SQL that builds the events
export's cells writes the same, for every kind of value a column can hold."""

import csv
import io
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from tim_audit.review import cells


# Every kind of value a column can hold, a tampered one's included, leaning
# on what a CSV cell treats apart: formula starts, quotes, commas, newlines.
TRICKY = st.text(
    alphabet=st.sampled_from(
        ["=", "+", "-", "@", "\t", "\r", "\n", '"', ",", "'", "a", "\0", "é", "群"]
    )
)
STORED = st.one_of(
    st.tuples(st.just("null"), st.none()),
    st.tuples(st.just("integer"), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.tuples(st.just("text"), st.text() | TRICKY),
    st.tuples(st.just("blob"), st.binary()),
    st.tuples(
        st.just("text not UTF-8"), st.binary() | TRICKY.map(str.encode).map(lambda b: b"\xff" + b)
    ),
)


def read_back(kind, value):
    """``value`` stored as ``kind`` in a column without affinity, its
    sql_csv_cell as SQLite builds it into a row (as text), and the value as a
    page reads it."""
    conn = sqlite3.connect(":memory:")
    conn.text_factory = lambda data: data.decode("utf-8", "replace")  # as db.get_db reads text
    conn.execute("CREATE TABLE stored (v)")
    cast = "CAST(? AS TEXT)" if kind == "text not UTF-8" else "?"
    conn.execute(f"INSERT INTO stored VALUES ({cast})", (value,))
    built, read = conn.execute(f"SELECT '' || {cells.sql_csv_cell('v')}, v FROM stored").fetchone()
    conn.close()
    return built, read


@settings(max_examples=500, deadline=None)
@given(STORED)
def test_the_sql_csv_cell_writes_csv_cell_of_every_kind_of_value(stored):
    kind, value = stored
    built, read = read_back(kind, value)
    assert built == cells.csv_cell(read)


@given(st.floats(allow_nan=False))
def test_the_sql_csv_cell_writes_a_real_as_sqlite_does_so_numeric_columns_are_left_to_csv_cell(
    value,
):
    built, read = read_back("real", value)
    assert (
        built
        == sqlite3.connect(":memory:").execute("SELECT CAST(? AS TEXT)", (value,)).fetchone()[0]
    )
    assert cells.csv_cell(read) == repr(value)


# Values as a page reads them: text that is not UTF-8 with U+FFFD for its bytes.
AS_READ = STORED.map(
    lambda stored: (
        stored[1].decode("utf-8", "replace") if stored[0] == "text not UTF-8" else stored[1]
    )
)


@given(st.lists(AS_READ | st.floats(), min_size=2))
def test_csv_cell_is_what_csv_writer_writes_of_a_guarded_value(values):
    """Two cells at least: csv.writer quotes a lone empty one."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow([cells.guarded(value) for value in values])
    assert buffer.getvalue() == ",".join(map(cells.csv_cell, values)) + "\r\n"
