"""Derived data: the trigram index of names and the hourly count summary.

schema.sql's event_derived trigger keeps both in step with event, in the
transaction that appends each event. Neither is chained: verify never reads
them, and :func:`rebuild` makes them again from the chained rows when they
are missing, damaged or (in a log from before them) incomplete.
"""

import sqlite3
from importlib import resources

# Events indexed per transaction: a running writer waits for one of them at
# most (a fraction of a second), well within its busy timeout.
REBUILD_ROWS = 20_000


def _schema_statements():
    """schema.sql one statement at a time, to run inside a transaction
    (executescript would commit first)."""
    statement = ""
    for line in (
        resources.files(__package__).joinpath("schema.sql").read_text().splitlines(keepends=True)
    ):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""


def rebuild(conn):
    """Drop event_name and event_hour, make them afresh (with the trigger,
    if it is gone) and fill them from event; returns how many events.

    The first transaction swaps in the empty tables, so every event the
    writer appends from then on is indexed by the trigger; the events
    before it are then indexed REBUILD_ROWS at a time, each batch in a
    BEGIN IMMEDIATE of its own like the writer's, so a running ingest
    server is held up by one batch at most. Meanwhile counts and name
    searches miss the events not yet indexed. The append-only triggers are
    on the chained tables only, so they neither block this nor are dropped.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DROP TABLE IF EXISTS event_name")
        conn.execute("DROP TABLE IF EXISTS event_hour")
        for statement in _schema_statements():
            conn.execute(statement)
        last = conn.execute("SELECT coalesce(max(id), 0) FROM event").fetchone()[0]
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    for first in range(1, last + 1, REBUILD_ROWS):
        bounds = (first, min(first + REBUILD_ROWS - 1, last))
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO event_name (rowid, name_folded)"
                " SELECT id, name_folded FROM event WHERE id BETWEEN ? AND ?",
                bounds,
            )
            conn.execute(
                "INSERT INTO event_hour (hour, type, events)"
                " SELECT event_time / 3600000, type, count(*) FROM event WHERE id BETWEEN ? AND ?"
                " GROUP BY 1, 2 ON CONFLICT DO UPDATE SET events = events + excluded.events",
                bounds,
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return last


def catch_up(conn):
    """Fill the derived tables of a log that has events but an empty
    summary: one made before they existed, opened by this version."""
    pending = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM event) AND NOT EXISTS (SELECT 1 FROM event_hour)"
    ).fetchone()[0]
    if pending:
        rebuild(conn)
