"""Read-only queries behind the dashboard.

Events are listed newest EventTime first, ties newest id first, and paged
with keyset cursors (never OFFSET): each filter column has an index that
continues with event_time, so a page is a short index range and a count is
an index count; a name search scans the EventTime index, which carries the
casefolded name. Values from the request reach SQL only as ``?`` parameters;
the statement text is joined from the fixed fragments below.
"""

import dataclasses

# Columns a list page shows.
LIST_COLUMNS = (
    "e.id, e.event_time, e.group_id, e.name, e.type, e.owner, e.operator,"
    " e.member_count, e.received_at"
)


@dataclasses.dataclass(frozen=True)
class Selection:
    """FROM and WHERE for some filters, and the columns rows sort by."""

    source: str
    where: str
    params: list
    time: str
    id: str

    def past(self, time, ident, older=True):
        """The rows after the one at (``time``, ``ident``) in list order, or
        (``older=False``) before it: a keyset cursor, one index range."""
        if older:
            where = f" AND {self.time} <= ? AND ({self.time} < ? OR {self.id} < ?)"
        else:
            where = f" AND {self.time} >= ? AND ({self.time} > ? OR {self.id} > ?)"
        return dataclasses.replace(self, where=self.where + where, params=[*self.params, time, time, ident])


@dataclasses.dataclass(frozen=True)
class Filters:
    """What a reviewer asked for; None means "any". ``since`` and ``until``
    are inclusive bounds on EventTime, in ms."""

    group_id: str | None = None
    owner: str | None = None
    operator: str | None = None
    member: str | None = None
    type: str | None = None
    q: str | None = None
    since: int | None = None
    until: int | None = None

    def select(self, need_event=True):
        """The rows these filters match, as ``event AS e``.

        A member filter reads event_member first: its (account, event_time)
        index yields that member's events newest first, where starting from
        event would visit every event. ``event`` is joined in only when a
        column of it is needed (``need_event``) or filtered on.
        """
        clauses, params = [], []
        # With a name search, the time index (which carries name_folded and
        # type) answers both at once; the unary + keeps SQLite from taking
        # the type index instead and reading a third of the table.
        type_column = "+e.type" if self.q else "e.type"
        for column, value in (
            ("e.group_id", self.group_id), ("e.owner", self.owner),
            ("e.operator", self.operator), (type_column, self.type),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.q:
            clauses.append("instr(e.name_folded, ?) > 0")
            params.append(self.q.casefold())
        if self.member is None:
            source, time, ident = "event AS e", "e.event_time", "e.id"
        else:
            source, time, ident = "event_member AS m", "m.event_time", "m.event_id"
            if need_event or clauses:
                source += " JOIN event AS e ON e.id = m.event_id"
            # A member listed twice in one MemberList finds the event once.
            clauses.insert(0, "m.account = ? AND m.duplicate = 0")
            params.insert(0, self.member)
        if self.since is not None:
            clauses.append(f"{time} >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append(f"{time} <= ?")
            params.append(self.until)
        return Selection(source, " AND ".join(clauses) or "1", params, time, ident)


@dataclasses.dataclass(frozen=True)
class Page:
    rows: list
    newer: int | None  # cursor for after=, when newer rows exist
    older: int | None  # cursor for before=, when older rows exist


class UnknownCursor(LookupError):
    pass


def page(conn, filters, limit, before=None, after=None):
    """One page of ``limit`` rows, after the event ``before`` (older rows)
    or before the event ``after`` (newer rows) in list order."""
    selection = filters.select()
    time, ident = selection.time, selection.id
    cursor = before if before is not None else after
    order = "ASC" if after is not None else "DESC"
    if cursor is not None:
        position = conn.execute("SELECT event_time, id FROM event WHERE id = ?", (cursor,)).fetchone()
        if position is None:
            raise UnknownCursor(cursor)
        selection = selection.past(*position, older=before is not None)
    rows = conn.execute(
        f"SELECT {LIST_COLUMNS} FROM {selection.source} WHERE {selection.where}"
        f" ORDER BY {time} {order}, {ident} {order} LIMIT ?",
        selection.params + [limit + 1],
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    if order == "ASC":
        rows.reverse()
    if not rows:
        return Page(rows, None, None)
    if after is not None:
        return Page(rows, rows[0]["id"] if more else None, rows[-1]["id"])
    return Page(rows, rows[0]["id"] if before is not None else None, rows[-1]["id"] if more else None)


def count(conn, filters):
    selection = filters.select(need_event=False)
    return conn.execute(
        f"SELECT count(*) FROM {selection.source} WHERE {selection.where}", selection.params
    ).fetchone()[0]


def newest(conn, filters):
    """The newest matching EventTime: the first entry of the index range
    that is an integer (a tampered row may hold anything, and text sorts
    above every number)."""
    selection = filters.select(need_event=False)
    row = conn.execute(
        f"SELECT {selection.time} FROM {selection.source} WHERE {selection.where}"
        f" AND typeof({selection.time}) = 'integer' ORDER BY {selection.time} DESC LIMIT 1",
        selection.params,
    ).fetchone()
    return None if row is None else row[0]


def per_day(conn, filters, days):
    """How many events match in each ``(start_ms, stop_ms)`` of ``days``:
    one index range count per day. ``days`` carry the time bounds, so
    ``filters`` should have no since/until of their own."""
    selection = filters.select(need_event=False)
    time = selection.time
    values = ", ".join(["(?, ?)"] * len(days))
    rows = conn.execute(
        f"WITH day(start, stop) AS (VALUES {values})"
        f" SELECT (SELECT count(*) FROM {selection.source} WHERE {selection.where}"
        f"  AND {time} >= day.start AND {time} < day.stop) FROM day",
        [bound for day in days for bound in day] + selection.params,
    ).fetchall()
    return [row[0] for row in rows]


def event(conn, event_id):
    return conn.execute("SELECT * FROM event WHERE id = ?", (event_id,)).fetchone()


def members(conn, event_id):
    return [row[0] for row in conn.execute(
        "SELECT account FROM event_member WHERE event_id = ? ORDER BY position", (event_id,)
    )]


def previous_hash(conn, event_id):
    row = conn.execute(
        "SELECT hash FROM event WHERE id < ? ORDER BY id DESC LIMIT 1", (event_id,)
    ).fetchone()
    return None if row is None else row[0]


def same_group(conn, group_id, event_id):
    """Other events of the same GroupId (custom IDs are reused after a group
    is destroyed)."""
    return conn.execute(
        "SELECT id, event_time, name FROM event WHERE group_id = ? AND id != ?"
        " ORDER BY event_time DESC, id DESC",
        (group_id, event_id),
    ).fetchall()


def head(conn):
    """(id, hash) of the newest row, or (0, None). Ids run from 1 without
    gaps (verify checks that), so the id is also the number of events."""
    row = conn.execute("SELECT id, hash FROM event ORDER BY id DESC LIMIT 1").fetchone()
    return (0, None) if row is None else (row[0], row[1])


@dataclasses.dataclass(frozen=True)
class QuarantineFilters:
    """What a reviewer asked of the quarantine; None means "any".
    ``since`` and ``until`` are inclusive bounds on received_at, in ms."""

    error_code: int | None = None
    command: str | None = None
    repeat_of: int | None = None  # an event id: its conflicting repeats
    since: int | None = None
    until: int | None = None

    def where(self):
        """WHERE and its parameters. The quarantine is small and has no
        index but its id, so each filter is a scan of it."""
        clauses, params = [], []
        for clause, value in (
            ("error_code = ?", self.error_code), ("command = ?", self.command),
            ("received_at >= ?", self.since), ("received_at <= ?", self.until),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        if self.repeat_of is not None:
            # The reason callback.py writes; the digits end at the space.
            clauses.append("error_code = 0 AND substr(reason, 1, length(?)) = ?")
            params += [f"repeat of event {self.repeat_of} ("] * 2
        return " AND ".join(clauses) or "1", params


def quarantined(conn, filters, limit, before=None):
    """Quarantined deliveries, newest first, keyset by id; and the cursor
    for older rows, if there are any."""
    where, params = filters.where()
    rows = conn.execute(
        f"SELECT * FROM quarantine WHERE {where} AND id < ? ORDER BY id DESC LIMIT ?",
        params + [before if before is not None else 2**63 - 1, limit + 1],
    ).fetchall()
    return rows[:limit], rows[limit - 1]["id"] if len(rows) > limit else None


def quarantine_count(conn, filters):
    where, params = filters.where()
    return conn.execute(f"SELECT count(*) FROM quarantine WHERE {where}", params).fetchone()[0]


def quarantined_row(conn, row_id):
    return conn.execute("SELECT * FROM quarantine WHERE id = ?", (row_id,)).fetchone()
