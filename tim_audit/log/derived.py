"""Derived data: the trigram index of names and the hourly count summary.

schema.sql's event_derived trigger keeps both in step with event, in the
transaction that appends each event, and other triggers refuse any change
to them from a connection without :data:`WRITER` (see :func:`allow_writes`).
Neither is chained: :func:`check` compares them with the chained rows, so
verify notices them damaged, and :func:`rebuild` makes them again from the
chained rows when they are missing, damaged or (in a log from before them)
incomplete. A query never trusts them unless :func:`current` says they
cover every event.
"""

import secrets
import sqlite3
from importlib import resources

from . import chain

# Characters of a folded name the trigram index holds, as schema.sql's
# trigger writes it (substr(name_folded, 1, 1024)): every name a callback
# may carry, and the start of a longer one in an older log, which would
# otherwise hold the writer for as long as its trigrams take to index.
NAME_INDEXED = 1024
# Events indexed per transaction, so that the WAL stays bounded.
REBUILD_ROWS = 20_000
# The function only tim-audit's read-write connections have: the triggers
# on the derived tables call it, so a change from any other connection
# fails with "no such function".
WRITER = "tim_audit_writer"


class Mismatch(chain.ChainBroken):
    """Derived data that does not agree with the chained rows:
    ``derived <table>: why``, and what repairs it."""

    def __init__(self, table, reason):
        Exception.__init__(
            self,
            f"derived {table}: {reason}; tim-audit rebuild-index makes it again"
            " from the chained rows",
        )
        self.table, self.row_id, self.reason = f"derived {table}", None, reason


def allow_writes(conn):
    """Let ``conn`` write the derived tables, as the writer and the rebuild
    do. trusted_schema is SQLite's default, set here in case a build turns
    it off: it would refuse the function in the triggers."""
    conn.execute("PRAGMA trusted_schema = ON")
    conn.create_function(WRITER, 0, lambda: 1, deterministic=True)


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
    """Drop event_name and event_hour, make them afresh (with their
    triggers) and fill them from event; returns how many events.

    Only the process that holds the log's lock (serve.py) runs this: the
    ingest server when it opens a log from before these tables, or
    rebuild-index while no server runs. The first transaction swaps in the
    empty tables; the events are then indexed REBUILD_ROWS at a time, each
    batch in a transaction of its own, so that the WAL stays small. Until
    the last batch, :func:`current` says the tables are behind, and queries
    do not use them.
    """
    try:
        conn.execute("DROP TABLE IF EXISTS event_name")
    except sqlite3.DatabaseError:  # FTS5 cannot open an index whose own records are damaged
        _forget_name_index(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
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
                " SELECT id, substr(name_folded, 1, ?) FROM event WHERE id BETWEEN ? AND ?",
                (NAME_INDEXED, *bounds),
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


def _forget_name_index(conn):
    """Take an index that FTS5 cannot open out of the schema by hand, as
    SQLite allows for a virtual table that cannot be loaded, then drop its
    shadow tables, which are ordinary ones. The index is derived data: the
    rebuild makes it again whole."""
    version = conn.execute("PRAGMA schema_version").fetchone()[0]
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("DELETE FROM sqlite_schema WHERE type = 'table' AND name = 'event_name'")
        conn.execute(f"PRAGMA schema_version = {int(version) + 1}")  # every connection reloads it
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.execute("PRAGMA writable_schema = OFF")
    conn.execute("COMMIT")
    for shadow in ("data", "idx", "config", "docsize", "content"):
        conn.execute(f"DROP TABLE IF EXISTS event_name_{shadow}")


def catch_up(conn):
    """Fill the derived tables of a log that has events but an empty
    summary: one made before they existed, opened by this version."""
    pending = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM event) AND NOT EXISTS (SELECT 1 FROM event_hour)"
    ).fetchone()[0]
    if pending:
        rebuild(conn)


def _varints(data, count):
    """The first ``count`` SQLite varints in ``data``."""
    values, at = [], 0
    for _ in range(count):
        value = 0
        for length in range(9):
            byte = data[at]
            at += 1
            if length == 8:
                value = (value << 8) | byte
                break
            value = (value << 7) | (byte & 0x7F)
            if byte < 0x80:
                break
        values.append(value)
    return values


def _indexed(conn):
    """(names, trigrams) in the name index, from FTS5's own record of them
    (the "averages" row of event_name_data, two varints); (0, 0) when it
    has none yet. ValueError when that record is not one."""
    row = conn.execute("SELECT block FROM event_name_data WHERE id = 1").fetchone()
    if row is None or row[0] in (None, b""):
        return (0, 0)
    if type(row[0]) is not bytes:
        raise ValueError("its record of what it holds is not a BLOB")
    try:
        return tuple(_varints(row[0], 2))
    except IndexError:
        raise ValueError("its record of what it holds is cut short") from None


def current(conn):
    """Whether the derived tables cover every event, read in two lookups:
    the name index counts what it holds, and each of its batches and
    appends writes event_hour in the same transaction. False while a
    rebuild is under way, after one that stopped, if rows were taken out
    of the index, or if its record of them cannot be read."""
    try:
        names = _indexed(conn)[0]
    except (sqlite3.Error, ValueError):  # no index (being rebuilt, dropped), or damaged
        return False
    events = conn.execute("SELECT coalesce(max(id), 0) FROM event").fetchone()[0]
    return names == events


def check(conn):
    """Compare the derived tables with the chained rows, in the caller's
    snapshot; raise :class:`Mismatch` at the first difference. A log from
    before them, which has neither, is not checked (the ingest server makes
    them when it opens it). Memory stays bounded: the sums are SQL
    aggregates or running totals."""
    tables = {
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE name IN ('event_name', 'event_hour')"
        )
    }
    if not tables:
        return
    for table in ("event_name", "event_hour"):
        if table not in tables:
            raise Mismatch(table, "the table is missing")
    events = conn.execute("SELECT count(*) FROM event").fetchone()[0]
    for table, part in (("event_name", _check_names), ("event_hour", _check_hours)):
        try:
            part(conn, events)
        except sqlite3.Error as exc:  # a damaged page: as wrong as a wrong count
            raise Mismatch(table, f"it cannot be read: {exc}") from None


# The name index is compared through a sum over every trigram it holds of
# a hash of (rowid, position, its three characters): a polynomial with
# coefficients drawn afresh at each check, modulo a prime, then squared, so
# that no change to the index keeps the sum but by a chance of a few in
# PRIME. Whoever writes the file cannot know the coefficients the next check
# draws. The prime is under 2^24, so that no step overflows SQLite's 64-bit
# integers and neither does the sum, for up to 2^39 trigrams (500 million
# events of the longest names indexed).
PRIME = 16_777_213
_INDEX_HASH = (
    "SELECT count(*), coalesce(sum(v * v % :p), 0) FROM (SELECT"
    " (((doc % :p) * :a + offset) % :p * :b + unicode(term) * :c1"
    " + coalesce(unicode(substr(term, 2, 1)), 0) * :c2"
    " + coalesce(unicode(substr(term, 3, 1)), 0) * :c3) % :p AS v"
    " FROM temp.event_name_instance)"
)


def _check_names(conn, events):
    try:
        names, trigrams = _indexed(conn)
    except ValueError as exc:
        raise Mismatch("event_name", str(exc)) from None
    if names != events:
        raise Mismatch("event_name", f"the name index holds {names} names of {events} events")
    key = {name: 1 + secrets.randbelow(PRIME - 1) for name in ("a", "b", "c1", "c2", "c3")}
    # A temp table is the connection's own, so a read-only one may create it.
    conn.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.event_name_instance"
        " USING fts5vocab(main, event_name, instance)"
    )
    held = tuple(conn.execute(_INDEX_HASH, {"p": PRIME, **key}).fetchone())
    a, b, c1, c2, c3 = (key[name] for name in ("a", "b", "c1", "c2", "c3"))
    count = total = 0
    for event_id, text in conn.execute(
        "SELECT id, substr(name_folded, 1, ?) FROM event", (NAME_INDEXED,)
    ):
        if not isinstance(text, str) or len(text) < 3:
            continue
        codes = list(map(ord, text))
        base = (event_id % PRIME) * a
        for offset in range(len(codes) - 2):
            v = (
                (base + offset) % PRIME * b
                + codes[offset] * c1
                + codes[offset + 1] * c2
                + codes[offset + 2] * c3
            ) % PRIME
            total += v * v % PRIME
        count += len(codes) - 2
    if trigrams != count or held != (count, total):
        raise Mismatch(
            "event_name",
            "the name index's trigrams are not those of the chained events' names",
        )


def _check_hours(conn, events):
    """Each event_hour row against an index count of its hour and type,
    then the total against the events, which finds an hour without a row.
    The table is not STRICT (see schema.sql), so its numbers' types are
    checked first."""
    odd = conn.execute(
        "SELECT hour, type, events FROM event_hour"
        " WHERE typeof(hour) != 'integer' OR typeof(events) != 'integer' LIMIT 1"
    ).fetchone()
    if odd is not None:
        raise Mismatch(
            "event_hour",
            f"a row holds hour {chain.shown(odd[0])} and events {chain.shown(odd[2])},"
            " where both are whole numbers",
        )
    wrong = conn.execute(
        "SELECT hour, type, events, chained FROM ("
        " SELECT hour, type, events, (SELECT count(*) FROM event AS e"
        "  WHERE e.type = h.type AND e.event_time BETWEEN"
        "   CASE WHEN hour > 0 THEN hour * 3600000 ELSE hour * 3600000 - 3599999 END"
        "   AND CASE WHEN hour < 0 THEN hour * 3600000 ELSE hour * 3600000 + 3599999 END"
        " ) AS chained FROM event_hour AS h)"
        " WHERE events IS NOT chained LIMIT 1"
    ).fetchone()
    if wrong is not None:
        hour, type, counted, chained = wrong
        raise Mismatch(
            "event_hour",
            f"hour {hour} type {type!r} counts {counted} events, the chained rows {chained}",
        )
    summed = conn.execute("SELECT coalesce(sum(events), 0) FROM event_hour").fetchone()[0]
    if summed == events:
        return
    missing = conn.execute(
        "SELECT event_time / 3600000, type, count(*) FROM event AS e WHERE NOT EXISTS"
        " (SELECT 1 FROM event_hour WHERE hour = e.event_time / 3600000 AND type = e.type)"
        " GROUP BY 1, 2 LIMIT 1"
    ).fetchone()
    if missing is None:
        raise Mismatch("event_hour", f"its rows count {summed} events, the chained rows {events}")
    hour, type, chained = missing
    raise Mismatch("event_hour", f"hour {hour} type {type!r} has no row for its {chained} events")
