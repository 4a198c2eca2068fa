"""Read-only queries behind the dashboard's lists and event pages.

Events are listed newest EventTime first, ties newest id first, and paged
with keyset cursors (never OFFSET): each filter column has an index that
continues with event_time, so a page is a short index range. How many
match is counted in counting.py; a name search is routed through the
trigram index, or not, by search.py. Values from the request reach SQL
only as ``?`` parameters; the statement text is joined from the fixed
fragments below.
"""

import dataclasses
import json

from . import counting, search

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
    bound: str  # time as a cursor's bound is written, so that it cannot drive either

    def past(self, time, ident, older=True):
        """The rows after the one at (``time``, ``ident``) in list order, or
        (``older=False``) before it: a keyset cursor, one index range."""
        if older:
            where = f" AND {self.bound} <= ? AND ({self.bound} < ? OR {self.id} < ?)"
        else:
            where = f" AND {self.bound} >= ? AND ({self.bound} > ? OR {self.id} > ?)"
        return dataclasses.replace(
            self, where=self.where + where, params=[*self.params, time, time, ident]
        )


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
    # Set by search.route(): the ids of the events whose name has q, as many as
    # COUNT_CAP + 1 (None: not looked up in the trigram index, or the lookup
    # ran out of time, having found name_at_least).
    name_found: tuple | None = None
    name_at_least: int | None = None
    # False once a verification found the derived tables unlike the chained
    # rows: then neither answers, however current they look.
    derived: bool = True

    @property
    def by_id(self):
        """Whether q's matches are read by id (else: the time walk). A few
        always are. With a filter on a column the EventTime index does not
        carry, all of them are when they were all found (COUNT_CAP at most):
        the walk would read the table for every name match until that
        filter fills a page, which has no bound."""
        if self.name_found is None:
            return False
        if len(self.name_found) <= search.SPARSE_NAMES:
            return True
        return len(self.name_found) <= counting.COUNT_CAP and self.off_time_index

    @property
    def off_time_index(self):
        """Whether a filter asks for a column the EventTime index lacks."""
        return any(
            getattr(self, name) is not None for name in ("group_id", "owner", "operator", "member")
        )

    def select(self, need_event=True, by_id=None):
        """The rows these filters match, as ``event AS e``.

        A member filter reads event_member first: its (account, duplicate,
        event_time) index yields that member's events newest first, where
        starting from event would visit every event. ``event`` is joined in only when a
        column of it is needed (``need_event``) or filtered on. ``by_id``
        overrides :attr:`by_id`.
        """
        by_id = self.by_id if by_id is None else by_id
        clauses, params = [], []
        # A unary + keeps a term off its index (SQLite documents it for
        # this). Without statistics (the service never runs ANALYZE) the
        # planner takes whichever index yields the list order outright, and
        # no new index helps: one cannot know which ids the name index
        # found, and a log on disk keeps its indexes as first created.
        # Matches found by id are few, read by rowid and sorted, so nothing
        # else may drive. type is the least selective column, yet
        # event_by_type (type, event_time) is the one index whose ties come
        # in id order (the others carry type before the rowid): with any
        # other filter, that filter's index goes first (for a name search,
        # the time index, which checks name_folded and type before reading
        # a row), not the type index, which would read a third of the log
        # and every row of it. tests/test_search.py asserts these plans.
        unindexed = "+" if by_id else ""
        type_first = not (unindexed or self.group_id or self.owner or self.operator or self.q)
        for column, value in (
            ("e.group_id", self.group_id),
            ("e.owner", self.owner),
            ("e.operator", self.operator),
            ("e.type" if type_first else "+e.type", self.type),
        ):
            if value is not None:
                clauses.append(f"{unindexed}{column} = ?")
                params.append(value)
        if self.q and by_id:
            # The ids may be candidates only (see search._cover): each is checked.
            clauses.append(
                "e.id IN (SELECT value FROM json_each(?)) AND instr(e.name_folded, ?) > 0"
            )
            params += [json.dumps(self.name_found), self.q.casefold()]
        elif self.q:
            clauses.append("instr(e.name_folded, ?) > 0")
            params.append(self.q.casefold())
        if self.member is None:
            source, time, ident = "event AS e", "e.event_time", "e.id"
        else:
            source, time, ident = "event_member AS m", "m.event_time", "m.event_id"
            if need_event or clauses:
                source += " JOIN event AS e ON e.id = m.event_id"
            # A member listed twice in one MemberList finds the event once.
            clauses.insert(0, f"{unindexed}m.account = ? AND {unindexed}m.duplicate = 0")
            params.insert(0, self.member)
        if self.since is not None:
            clauses.append(f"{unindexed}{time} >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append(f"{unindexed}{time} <= ?")
            params.append(self.until)
        return Selection(
            source, " AND ".join(clauses) or "1", params, time, ident, unindexed + time
        )


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
        position = conn.execute(
            "SELECT event_time, id FROM event WHERE id = ?", (cursor,)
        ).fetchone()
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
    return Page(
        rows, rows[0]["id"] if before is not None else None, rows[-1]["id"] if more else None
    )


def event(conn, event_id):
    return conn.execute("SELECT * FROM event WHERE id = ?", (event_id,)).fetchone()


def members(conn, event_id):
    return [
        row[0]
        for row in conn.execute(
            "SELECT account FROM event_member WHERE event_id = ? ORDER BY position", (event_id,)
        )
    ]


def previous_hash(conn, event_id):
    row = conn.execute(
        "SELECT hash FROM event WHERE id < ? ORDER BY id DESC LIMIT 1", (event_id,)
    ).fetchone()
    return None if row is None else row[0]


# The event page lists this many other events of its GroupId, and as many
# of its conflicting repeats.
EVENT_PAGE_ROWS = 20


def same_group(conn, group_id, event_id):
    """Up to EVENT_PAGE_ROWS other events of the same GroupId, newest first
    (custom IDs are reused after a group is destroyed), and whether there
    are more; from the (group_id, event_time, command) index."""
    rows = conn.execute(
        "SELECT id, event_time, name FROM event WHERE group_id = ? AND id != ?"
        " ORDER BY event_time DESC, id DESC LIMIT ?",
        (group_id, event_id, EVENT_PAGE_ROWS + 1),
    ).fetchall()
    return rows[:EVENT_PAGE_ROWS], len(rows) > EVENT_PAGE_ROWS


def head(conn):
    """(id, hash) of the newest row, or (0, None). Ids run from 1 without
    gaps (verify checks that), so the id is also the number of events."""
    row = conn.execute("SELECT id, hash FROM event ORDER BY id DESC LIMIT 1").fetchone()
    return (0, None) if row is None else (row[0], row[1])


def quarantine_size(conn):
    """How many deliveries are in quarantine (ids run from 1 without gaps)."""
    return conn.execute("SELECT coalesce(max(id), 0) FROM quarantine").fetchone()[0]


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
        """WHERE and its parameters. The quarantine is small, so each
        filter is a scan of it, but repeat_of: an authenticated sender can
        repeat an event without end, and its repeats are found in the
        quarantine_by_repeat index."""
        clauses, params = [], []
        for clause, value in (
            ("error_code = ?", self.error_code),
            ("command = ?", self.command),
            ("received_at >= ?", self.since),
            ("received_at <= ?", self.until),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        if self.repeat_of is not None:
            # The reason callback.py writes, up to its first "(", as the
            # index has it.
            clauses.append("error_code = 0 AND substr(reason, 1, instr(reason, '(')) = ?")
            params.append(f"repeat of event {self.repeat_of} (")
        return " AND ".join(clauses) or "1", params


# Bytes of a quarantined body a page reads: enough for the 4,000
# characters it shows, whatever their UTF-8 length. The whole body is its
# own download, so a page of 1 MiB bodies costs no more than small ones.
BODY_SHOWN = 16 * 1024


def quarantined(conn, filters, limit, before=None):
    """Quarantined deliveries, newest first, keyset by id, each body cut to
    its first BODY_SHOWN bytes (``raw``) with its whole length
    (``raw_size``); and the cursor for older rows, if there are any."""
    where, params = filters.where()
    rows = conn.execute(
        "SELECT id, received_at, error_code, reason, command, query, peer, content_length,"
        f" substr(raw, 1, {BODY_SHOWN}) AS raw, length(CAST(raw AS BLOB)) AS raw_size"
        f" FROM quarantine WHERE {where} AND id < ? ORDER BY id DESC LIMIT ?",
        params + [before if before is not None else 2**63 - 1, limit + 1],
    ).fetchall()
    return rows[:limit], rows[limit - 1]["id"] if len(rows) > limit else None


def quarantine_count(conn, filters):
    """How many quarantined deliveries match, counted up to COUNT_CAP (a
    :class:`counting.Count`): an authenticated sender can grow the quarantine."""
    where, params = filters.where()
    found = conn.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM quarantine WHERE {where} LIMIT ?)",
        params + [counting.COUNT_CAP + 1],
    ).fetchone()[0]
    return counting.Count.capped(found)


def repeat_count(conn, event_id):
    """How many conflicting repeats of event ``event_id`` are quarantined,
    counted up to COUNT_CAP in the index."""
    return quarantine_count(conn, QuarantineFilters(repeat_of=event_id))


def quarantined_row(conn, row_id):
    return conn.execute("SELECT * FROM quarantine WHERE id = ?", (row_id,)).fetchone()
