"""Verification: both chains recomputed from the stored bytes alone.

chain.py says what each row's bytes and link are; this walks the rows in
one snapshot and names the first one that does not match, so that the
format stays free of SQL. Every row's bytes come from chain.row_bytes, the
encoder the writer uses.
"""

import contextlib

from . import chain
from .chain import (
    GENESIS,
    MEMBER_COLUMNS,
    MEMBER_TYPES,
    ChainBroken,
    Heads,
    check_types,
    is_hash,
    link,
    member_rows,
    tolerant_text,
)


def verify(conn, key=None, anchor=None, trees=None):
    """Recompute both chains from the stored bytes alone (and ``key``).

    Returns the :class:`Heads` of both chains, or raises ChainBroken at the
    first row that does not verify. With ``anchor`` (Heads from an earlier
    run), also fails unless the log still extends it, which catches
    truncation and wholesale rewrites that re-chain every row.

    ``trees`` maps "event" and "quarantine" to what each row's canonical
    bytes are given to once the row verifies: an object whose ``add(data)``
    takes them in id order, and whose ``finish()`` is called after the last
    (merkle.py checks or builds the Merkle trees so, in the same walk). It
    all happens in one snapshot: the caller's transaction, if it has one.
    """
    anchor = anchor or Heads(None, None)
    trees = trees or {}
    with tolerant_text(conn), _snapshot(conn):
        events, event_head, at_event_anchor = _verify_events(
            conn, key, anchor.events, trees.get("event")
        )
        quarantined, quarantine_head, at_quarantine_anchor = _verify_quarantine(
            conn, key, anchor.quarantined, trees.get("quarantine")
        )
    if anchor.events is not None:
        _check_anchor("event", events, at_event_anchor, anchor.events, anchor.event_head)
    if anchor.quarantined is not None:
        _check_anchor(
            "quarantine",
            quarantined,
            at_quarantine_anchor,
            anchor.quarantined,
            anchor.quarantine_head,
        )
    return Heads(events, event_head, quarantined, quarantine_head)


@contextlib.contextmanager
def _snapshot(conn):
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")


def verify_event(conn, event_id, key=None):
    """Check one event against the row before it, as its page shows;
    ChainBroken if it does not verify."""
    with tolerant_text(conn):
        conn.execute("BEGIN")
        try:
            row = conn.execute("SELECT * FROM event WHERE id = ?", (event_id,)).fetchone()
            before = conn.execute("SELECT hash FROM event WHERE id = ?", (event_id - 1,)).fetchone()
            members = conn.execute(
                f"SELECT {', '.join(MEMBER_COLUMNS)} FROM event_member WHERE event_id = ?"
                " ORDER BY position",
                (event_id,),
            ).fetchall()
        finally:
            conn.execute("ROLLBACK")
    if event_id == 1:
        previous = GENESIS
    elif before is None:
        raise ChainBroken(
            "event", event_id, f"expected row {event_id - 1} before it: rows are missing"
        )
    elif not is_hash(before[0]):
        raise ChainBroken("event", event_id - 1, "its hash is not 64 lowercase hex digits")
    else:
        previous = before[0]
    for member in members:
        check_types("event_member", event_id, member, MEMBER_TYPES)
    _check_event(row, [tuple(m) for m in members], previous, key)


def _check_event(row, stored, previous, key, tree=None):
    """The event's hash, checked to follow ``previous`` and to cover the
    event and its ``stored`` member rows, which must be what its member
    list implies."""
    accounts = [m[2] for m in stored]
    digest = _next_link("event", row, previous, chain.row_bytes("event", row, accounts), key, tree)
    if stored != list(member_rows(row["id"], accounts, row["event_time"])):
        raise ChainBroken(
            "event_member",
            row["id"],
            "member rows do not match the event (position, event_time or duplicate)",
        )
    return digest


def _verify_events(conn, key, anchor_count, tree):
    members = conn.execute(
        f"SELECT {', '.join(MEMBER_COLUMNS)} FROM event_member ORDER BY event_id, position"
    )

    def next_member():
        member = members.fetchone()
        if member is not None:
            check_types("event_member", member["event_id"], member, MEMBER_TYPES)
        return member

    member = next_member()
    previous = at_anchor = GENESIS
    count = 0
    for row in conn.execute("SELECT * FROM event ORDER BY id"):
        _expect_next("event", row, count)
        stored = []
        while member is not None and member["event_id"] <= row["id"]:
            if member["event_id"] < row["id"]:
                raise ChainBroken(
                    "event_member",
                    member["event_id"],
                    "member rows belong to no event",
                )
            stored.append(tuple(member))
            member = next_member()
        previous = _check_event(row, stored, previous, key, tree)
        count += 1
        if count == anchor_count:
            at_anchor = previous
    if member is not None:
        raise ChainBroken("event_member", member["event_id"], "member rows belong to no event")
    if tree is not None:
        tree.finish()
    return count, previous, at_anchor


def _verify_quarantine(conn, key, anchor_count, tree):
    previous = at_anchor = GENESIS
    count = 0
    for row in conn.execute("SELECT * FROM quarantine ORDER BY id"):
        _expect_next("quarantine", row, count)
        previous = _next_link(
            "quarantine", row, previous, chain.row_bytes("quarantine", row), key, tree
        )
        count += 1
        if count == anchor_count:
            at_anchor = previous
    if tree is not None:
        tree.finish()
    return count, previous, at_anchor


def _check_anchor(table, count, at_anchor, anchor_count, anchor_hash):
    """The chain still extends the anchor: it is as long, and its row at
    the anchor's count has the anchor's hash."""
    if count < anchor_count:
        raise ChainBroken(
            table,
            anchor_count,
            f"missing: the log has {count} rows but the anchor records"
            f" {anchor_count}, so it was truncated",
        )
    if at_anchor != anchor_hash:
        raise ChainBroken(
            table,
            anchor_count,
            "its hash differs from the anchor, so the log was rewritten up to this row",
        )


def _expect_next(table, row, count):
    """Ids run from 1 without gaps: a missing row shows at the one after it."""
    if row["id"] != count + 1:
        raise ChainBroken(table, row["id"], f"expected row {count + 1} here: rows are missing")


def _next_link(table, row, previous, data, key, tree=None):
    """The row's hash, checked to cover ``data`` after ``previous``."""
    digest = link(key, previous, data)
    if digest != row["hash"]:
        raise ChainBroken(
            table, row["id"], "hash does not match the row's contents and the row before it"
        )
    if tree is not None:
        tree.add(data)
    return digest
