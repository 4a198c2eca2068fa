"""Counts behind the dashboard that do not grow with the log.

A count is read from the hourly summary (event_hour) where that can
answer it: type and time only, while the summary is current
(derived.current). Otherwise it is counted up to COUNT_CAP matches and for
at most COUNT_TIME, and :class:`Count` says which bound stopped it.
"""

import bisect
import dataclasses
import sqlite3
import time as clock

from ..log import derived

# An exact count stops here, and the page says "more than" this.
COUNT_CAP = 10_000
# A count that has not reached COUNT_CAP stops after this long (seconds),
# and the page says "at least" what it had counted.
COUNT_TIME = 0.01
HOUR = 3_600_000  # ms, the summary's unit


def interrupted(exc):
    """Whether SQLite stopped because a progress handler asked it to."""
    return getattr(exc, "sqlite_errorname", None) == "SQLITE_INTERRUPT"


@dataclasses.dataclass(frozen=True)
class Count:
    """How many events match: ``exact``, ``more`` than value (the count
    stopped at COUNT_CAP) or ``at least`` value (it stopped at COUNT_TIME)."""

    value: int
    kind: str = "exact"

    @classmethod
    def capped(cls, found):
        """``found`` matches, read up to COUNT_CAP + 1: exact, or more than COUNT_CAP."""
        return cls(COUNT_CAP, "more") if found > COUNT_CAP else cls(found)


def count(conn, filters):
    """The number of matching events, from the summary when only type and
    time are asked for and it covers every event; otherwise counted,
    within COUNT_CAP and COUNT_TIME."""
    if _summarised(filters) and filters.derived and derived.current(conn):
        return Count(summed(conn, filters.type, filters.since, filters.until))
    if filters.name_at_least is not None and _name_only(filters):
        return Count(filters.name_at_least, "at least")
    if filters.name_found is not None and _name_only(filters):
        found = len(filters.name_found)
        return Count.capped(found)
    selection = filters.select(need_event=False)
    found = 0
    deadline = clock.monotonic() + COUNT_TIME
    conn.set_progress_handler(lambda: clock.monotonic() > deadline, 1000)
    try:
        for _ in conn.execute(
            f"SELECT 1 FROM {selection.source} WHERE {selection.where} LIMIT ?",
            selection.params + [COUNT_CAP + 1],
        ):
            found += 1
    except sqlite3.OperationalError as exc:
        if not interrupted(exc):
            raise
        return Count(found, "at least")
    finally:
        conn.set_progress_handler(None, 0)
    return Count.capped(found)


def _summarised(filters):
    """Whether event_hour can answer for ``filters``: type and time only."""
    return all(
        getattr(filters, name) is None for name in ("group_id", "owner", "operator", "member", "q")
    )


def _name_only(filters):
    return all(
        getattr(filters, name) is None
        for name in ("group_id", "owner", "operator", "member", "type", "since", "until")
    )


def summed(conn, type, since, until):
    """Events of ``type`` (None: any) with EventTime in [since, until]
    (None: unbounded): the whole hours from event_hour, the part of an
    hour cut by either bound from the index."""
    first = None if since is None else -(-since // HOUR)  # the first whole hour
    stop = None if until is None else (until + 1) // HOUR  # the hour after the last whole one
    if first is not None and stop is not None and first > stop:
        return _indexed(conn, type, since, until)
    clauses, params = ["1"], []
    for clause, value in (("type = ?", type), ("hour >= ?", first), ("hour < ?", stop)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    total = conn.execute(
        f"SELECT coalesce(sum(events), 0) FROM event_hour WHERE {' AND '.join(clauses)}", params
    ).fetchone()[0]
    if since is not None and since < first * HOUR:
        total += _indexed(conn, type, since, first * HOUR - 1)
    if until is not None and stop * HOUR <= until:
        total += _indexed(conn, type, stop * HOUR, until)
    return total


def _indexed(conn, type, since, until):
    if type is None:
        return conn.execute(
            "SELECT count(*) FROM event WHERE event_time BETWEEN ? AND ?", (since, until)
        ).fetchone()[0]
    return conn.execute(
        "SELECT count(*) FROM event WHERE type = ? AND event_time BETWEEN ? AND ?",
        (type, since, until),
    ).fetchone()[0]


def newest(conn, filters):
    """The newest matching EventTime: the first entry of the index range
    that is an integer (a tampered row may hold anything, and text sorts
    above every number)."""
    return _edge(conn, filters, "DESC")


def oldest(conn, filters):
    """The oldest matching EventTime, found as newest() finds the newest."""
    return _edge(conn, filters, "ASC")


def _edge(conn, filters, order):
    selection = filters.select(need_event=False)
    row = conn.execute(
        f"SELECT {selection.time} FROM {selection.source} WHERE {selection.where}"
        f" AND typeof({selection.time}) = 'integer' ORDER BY {selection.time} {order} LIMIT 1",
        selection.params,
    ).fetchone()
    return None if row is None else row[0]


def per_day(conn, filters, days):
    """How many events match in each ``(start_ms, stop_ms)`` of ``days``
    (in order, back to back): from the summary where it answers; else the
    matching EventTimes in their span, counted per day here, which is only
    asked for when the count was exact and so within COUNT_CAP rows.
    ``days`` carry the time bounds, so ``filters`` should have no
    since/until of their own."""
    if _summarised(filters) and filters.derived and derived.current(conn):
        return [summed(conn, filters.type, start, stop - 1) for start, stop in days]
    # A name search whose count was exact has all its matches' ids.
    found = filters.name_found
    selection = filters.select(
        need_event=False, by_id=found is not None and len(found) <= COUNT_CAP or None
    )
    times = sorted(
        row[0]
        for row in conn.execute(
            f"SELECT {selection.time} FROM {selection.source} WHERE {selection.where}"
            f" AND {selection.bound} >= ? AND {selection.bound} < ?",
            selection.params + [days[0][0], days[-1][1]],
        )
    )
    return [
        bisect.bisect_left(times, stop) - bisect.bisect_left(times, start) for start, stop in days
    ]
