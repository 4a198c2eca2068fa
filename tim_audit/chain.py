"""The hash chain: canonical bytes, links and verification.

Pure functions over rows, no Flask and no threads: this is where an auditor
reads what the chain proves. Every event row carries
``hash = H(previous row's hash || canonical(row))``, H being SHA-256, or
HMAC-SHA256 keyed with ``AUDIT_HMAC_KEY`` so that the chain cannot be
recomputed without the key. The canonical bytes cover every stored column,
the raw body and the initial members, so no stored byte can change without
breaking the chain from that row on. Quarantined deliveries form a second
chain of the same kind.
"""

import hashlib
import hmac

GENESIS = "0" * 64

EVENT_COLUMNS = (
    "id", "received_at", "command", "group_id", "type", "name", "name_folded",
    "operator", "owner", "event_time", "member_count", "user_data", "sdkappid",
    "client_ip", "opt_platform", "peer", "raw",
)
QUARANTINE_COLUMNS = (
    "id", "received_at", "error_code", "reason", "command", "query", "peer",
    "content_length", "raw",
)

MEMBER_COLUMNS = ("event_id", "position", "account", "event_time", "duplicate")


class ChainBroken(Exception):
    """The first row at which the log stops verifying."""

    def __init__(self, table, row_id, reason):
        super().__init__(f"{table} row {row_id}: {reason}")
        self.table = table
        self.row_id = row_id
        self.reason = reason


def canonical(values):
    """The bytes a row is chained over.

    Each value is tagged with its kind (N null, I integer, S text, B bytes)
    and, but for null, followed by its length as 8 bytes big-endian and its
    UTF-8 or raw bytes; so distinct rows never share an encoding. The README
    spells this out for auditors who check the chain with their own code.
    """
    out = bytearray()
    for value in values:
        if value is None:
            out += b"N"
            continue
        if isinstance(value, int):
            tag, data = b"I", str(value).encode("ascii")
        elif isinstance(value, str):
            tag, data = b"S", value.encode("utf-8")
        else:
            tag, data = b"B", bytes(value)
        out += tag + len(data).to_bytes(8, "big") + data
    return bytes(out)


def event_values(row, members):
    """An event's values in chain order: its columns, then its members."""
    return [row[column] for column in EVENT_COLUMNS] + list(members)


def link(key, previous, data):
    message = bytes.fromhex(previous) + data
    if key:
        return hmac.new(key, message, hashlib.sha256).hexdigest()
    return hashlib.sha256(message).hexdigest()


def chain_kind(key):
    """How the chain is keyed, as recorded in ``meta``: the fingerprint tells
    a wrong key apart at start-up without revealing it."""
    if not key:
        return "sha256"
    fingerprint = hmac.new(key, b"tim-audit key check", hashlib.sha256).hexdigest()
    return f"hmac-sha256 {fingerprint[:16]}"


def member_rows(event_id, accounts, event_time):
    """An event's event_member rows; verify rebuilds them to compare."""
    seen = set()
    for position, account in enumerate(accounts):
        yield event_id, position, account, event_time, int(account in seen)
        seen.add(account)


def parse_anchor(text):
    """``COUNT:HASH`` as printed by an earlier ``verify``; ValueError if not."""
    count, sep, digest = text.partition(":")
    if not (sep and count.isascii() and count.isdigit()
            and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise ValueError("an anchor is COUNT:HASH, as in the last line of verify")
    return int(count), digest


def verify(conn, key=None, anchor=None):
    """Recompute both chains from the stored bytes alone (and ``key``).

    Returns ``(count, head)`` of the event chain, or raises ChainBroken at
    the first row that does not verify. With ``anchor`` ``(count, hash)``
    from an earlier run, also fails unless the log still extends it, which
    catches truncation and wholesale rewrites that re-chain every row.
    """
    conn.execute("BEGIN")  # one snapshot for every table
    try:
        count, head, at_anchor = _verify_events(conn, key, anchor[0] if anchor else None)
        _verify_quarantine(conn, key)
    finally:
        conn.execute("ROLLBACK")
    if anchor is not None:
        anchor_count, anchor_hash = anchor
        if count < anchor_count:
            raise ChainBroken(
                "event", anchor_count,
                f"missing: the log has {count} rows but the anchor records"
                f" {anchor_count}, so it was truncated",
            )
        if at_anchor != anchor_hash:
            raise ChainBroken(
                "event", anchor_count,
                "its hash differs from the anchor, so the log was rewritten"
                " up to this row",
            )
    return count, head


def _verify_events(conn, key, anchor_count):
    members = conn.execute(
        f"SELECT {', '.join(MEMBER_COLUMNS)} FROM event_member ORDER BY event_id, position"
    )
    member = members.fetchone()
    previous = GENESIS
    at_anchor = GENESIS
    count = 0
    for row in conn.execute("SELECT * FROM event ORDER BY id"):
        _expect_next("event", row, count)
        stored = []
        while member is not None and member["event_id"] <= row["id"]:
            if member["event_id"] < row["id"]:
                raise ChainBroken(
                    "event_member", member["event_id"],
                    "member rows belong to no event",
                )
            stored.append(tuple(member))
            member = members.fetchone()
        accounts = [m[2] for m in stored]
        digest = _next_link("event", row, previous, event_values(row, accounts), key)
        if stored != list(member_rows(row["id"], accounts, row["event_time"])):
            raise ChainBroken(
                "event_member", row["id"],
                "member rows do not match the event (position, event_time or duplicate)",
            )
        previous = digest
        count += 1
        if count == anchor_count:
            at_anchor = digest
    if member is not None:
        raise ChainBroken("event_member", member["event_id"], "member rows belong to no event")
    return count, previous, at_anchor


def _verify_quarantine(conn, key):
    previous = GENESIS
    for count, row in enumerate(conn.execute("SELECT * FROM quarantine ORDER BY id")):
        _expect_next("quarantine", row, count)
        previous = _next_link("quarantine", row, previous, [row[c] for c in QUARANTINE_COLUMNS], key)


def _expect_next(table, row, count):
    """Ids run from 1 without gaps: a missing row shows at the one after it."""
    if row["id"] != count + 1:
        raise ChainBroken(table, row["id"], f"expected row {count + 1} here: rows are missing")


def _next_link(table, row, previous, values, key):
    """The row's hash, checked to cover ``values`` after ``previous``."""
    digest = link(key, previous, canonical(values))
    if digest != row["hash"]:
        raise ChainBroken(
            table, row["id"], "hash does not match the row's contents and the row before it"
        )
    return digest
