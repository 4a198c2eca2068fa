"""Name search through the trigram index (event_name).

A name of NAME_INDEX_MIN or more characters with few matches is looked up
in the index once and its matches read by id; a short or common one is
found by walking the EventTime index, which carries the casefolded name,
until a page is full. The index is not used while it is behind the log (a
rebuild under way, or rows taken out): then names are walked.
"""

import dataclasses
import sqlite3
import time as clock

from ..log import derived
from . import counting

# The trigram index answers a name search of this many characters or more.
NAME_INDEX_MIN = 3
# A search the index matches this often or less reads its matches by id;
# a commoner one walks the EventTime index, where a page of them is near.
SPARSE_NAMES = 2_000


def _phrase(q):
    """``q`` as an FTS5 phrase: the casefolded text, quoted, which the
    trigram tokenizer matches as a substring."""
    return '"' + q.casefold().replace('"', '""') + '"'


def _cover(q):
    """``q`` as an FTS5 query for the events whose name has every one of a
    few of its trigrams, side by side from the start and one at the end:
    all those whose name has q, and perhaps a few more. Fewer trigrams
    than the phrase, and no positions to match: a third of its time on a
    rare name made of common parts."""
    folded = q.casefold()
    starts = sorted({*range(0, len(folded) - 2, 3), len(folded) - 3})
    return " AND ".join('"' + folded[at : at + 3].replace('"', '""') + '"' for at in starts)


def route(conn, filters):
    """``filters`` with their name search looked up in the trigram index
    once, up to COUNT_CAP + 1 matches (counting.py): when there are at most
    SPARSE_NAMES (or, with other filters, COUNT_CAP; see Filters.by_id),
    they are read by id; more are found by walking the EventTime index,
    which meets a page of such common names soon.

    The lookup reads every candidate of the query's trigrams, which grows
    with the log for a rare name made of common parts ("atlas 77"). With a
    filter off the EventTime index, whose pages read the ids and check each
    name, it asks for a few of the trigrams only (_cover). Otherwise, once
    it has found more than SPARSE_NAMES, so that the walk is the plan
    anyway, it stops after COUNT_TIME, and the count says "at least" what
    it found; the deadline is checked between rows, so a lookup that finds
    nothing for long is not cut short."""
    # FTS5 reads a NUL as the end of the query: such a search walks, and
    # so does any while the index is behind the log (derived.current).
    if not filters.q or len(filters.q.casefold()) < NAME_INDEX_MIN or "\0" in filters.q:
        return filters
    if not (filters.derived and derived.current(conn)):
        return filters
    try:
        return _found(conn, filters)
    except sqlite3.DatabaseError as exc:  # a damaged index (verify names it): walk
        if isinstance(exc, sqlite3.OperationalError):
            raise
        return filters


def _found(conn, filters):
    if filters.off_time_index:
        ids = _lookup(conn, _cover(filters.q), [])
        if len(ids) > counting.COUNT_CAP:  # more candidates than the cap; matches too?
            ids = _lookup(conn, _phrase(filters.q), [])
        return dataclasses.replace(filters, name_found=tuple(ids))
    ids = []
    deadline = clock.monotonic() + counting.COUNT_TIME
    conn.set_progress_handler(lambda: len(ids) > SPARSE_NAMES and clock.monotonic() > deadline, 100)
    try:
        _lookup(conn, _phrase(filters.q), ids)
    except sqlite3.OperationalError as exc:
        if not counting.interrupted(exc):
            raise
        return dataclasses.replace(filters, name_at_least=len(ids))
    finally:
        conn.set_progress_handler(None, 0)
    return dataclasses.replace(filters, name_found=tuple(ids))


def _lookup(conn, query, ids):
    """``ids`` with the rowids ``query`` matches in the trigram index
    appended, up to COUNT_CAP + 1, as they are read."""
    for row in conn.execute(
        "SELECT rowid FROM event_name WHERE event_name MATCH ? LIMIT ?",
        (query, counting.COUNT_CAP + 1),
    ):
        ids.append(row[0])
    return ids
