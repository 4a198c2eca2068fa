"""What the log records: callbacks and refused deliveries turned into rows.

A batch of entries becomes event, member and quarantine rows, each linked
to the one before it (chain.py), the leaves of the Merkle trees (merkle.py)
and, through the triggers, the derived tables (derived.py). writer.py
decides when and in which transaction; this module, what is written.
"""

import dataclasses
from importlib import resources

from . import chain, derived, merkle
from .chain import (
    EVENT_COLUMNS,
    GENESIS,
    MEMBER_COLUMNS,
    QUARANTINE_COLUMNS,
    chain_kind,
    link,
    member_rows,
)


@dataclasses.dataclass(frozen=True)
class Event:
    """A validated callback and how it reached us, ready to be appended."""

    received_at: int
    command: str
    group_id: str
    type: str
    name: str
    operator: str
    owner: str | None
    event_time: int
    members: tuple[str, ...]
    user_data: str | None
    sdkappid: str
    client_ip: str | None
    opt_platform: str | None
    peer: str | None
    raw: bytes


@dataclasses.dataclass(frozen=True)
class Rejection:
    """An authenticated delivery we refused, kept so that nothing is lost."""

    received_at: int
    error_code: int
    reason: str
    command: str | None
    query: str
    peer: str | None
    content_length: int | None
    raw: bytes | None


@dataclasses.dataclass(frozen=True)
class Receipt:
    """What an append did: ``stored``, ``repeat`` (an identical event was
    already there), ``conflict`` (an event with the same key but other bytes
    was there; nothing written) or ``quarantined``."""

    outcome: str
    id: int
    hash: str


class ChainMismatch(Exception):
    """The configured AUDIT_HMAC_KEY is not the one the log was started with."""


def prepare(conn, key, path):
    """Create the log's tables if they do not exist yet, check that its
    chain is keyed with ``key``, and build the trees of a log made before
    them."""
    conn.executescript(resources.files(__package__).joinpath("schema.sql").read_text())
    _check_chain_kind(conn, key, path)
    merkle.build(conn, key)


def catch_up(conn):
    """Fill the derived tables of a log made before them: after the notary
    has checked the file, so that a log it refuses is refused before
    minutes of writing."""
    derived.catch_up(conn)


def _check_chain_kind(conn, key, path):
    kind = chain_kind(key)
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'chain'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('chain', ?)", (kind,))
    finally:
        conn.execute("COMMIT")
    stored = kind if row is None else row["value"]
    if stored == kind:
        return
    if stored == "sha256":
        raise ChainMismatch(
            f"the log at {path} was started without AUDIT_HMAC_KEY and its"
            " chain cannot switch to an HMAC: unset AUDIT_HMAC_KEY, or point"
            " DATABASE at a new file"
        )
    if not key:
        raise ChainMismatch(
            f"the log at {path} is chained with an HMAC key: set"
            " AUDIT_HMAC_KEY to the key it was started with"
        )
    raise ChainMismatch(f"AUDIT_HMAC_KEY is not the key the log at {path} was started with")


def cost(entry):
    """The rows ``entry`` writes, counting a row for each 4 KiB of its body:
    what the writer budgets a transaction in."""
    members = len(entry.members) if isinstance(entry, Event) else 0
    return 1 + members + len(entry.raw or b"") // 4096


def write(conn, entries, key):
    """Insert ``entries`` in the open transaction; returns their receipts.

    One query finds the stored events the batch repeats; the chain
    hashes are computed here, then every row goes in with executemany.
    """
    event_id, event_hash, quarantine_id, quarantine_hash = conn.execute(
        "SELECT coalesce((SELECT id FROM event ORDER BY id DESC LIMIT 1), 0),"
        " coalesce((SELECT hash FROM event ORDER BY id DESC LIMIT 1), ?),"
        " coalesce((SELECT id FROM quarantine ORDER BY id DESC LIMIT 1), 0),"
        " coalesce((SELECT hash FROM quarantine ORDER BY id DESC LIMIT 1), ?)",
        (GENESIS, GENESIS),
    ).fetchone()
    known = _stored_with_keys(conn, [e for e in entries if isinstance(e, Event)])
    refused = {}
    receipts, events, members, rejections = [], [], [], []
    trees = {"event": (event_id, []), "quarantine": (quarantine_id, [])}
    for entry in entries:
        if isinstance(entry, Rejection):
            same = (entry.error_code, entry.raw)
            if entry.raw is not None and same not in refused:
                refused[same] = _quarantined_before(conn, entry)
            if refused.get(same) is not None:
                receipts.append(Receipt("repeat", *refused[same]))
                continue
            quarantine_id += 1
            row = vars(entry) | {"id": quarantine_id}
            data = chain.row_bytes("quarantine", row)
            quarantine_hash = link(key, quarantine_hash, data)
            trees["quarantine"][1].append(data)
            rejections.append([row[c] for c in QUARANTINE_COLUMNS] + [quarantine_hash])
            receipts.append(Receipt("quarantined", quarantine_id, quarantine_hash))
            if entry.raw is not None:
                refused[same] = (quarantine_id, quarantine_hash)
            continue
        unique = (entry.group_id, entry.event_time, entry.command)
        if unique in known:
            stored_id, stored_hash, stored_raw = known[unique]
            outcome = "repeat" if stored_raw == entry.raw else "conflict"
            receipts.append(Receipt(outcome, stored_id, stored_hash))
            continue
        event_id += 1
        row = vars(entry) | {
            "id": event_id,
            "name_folded": entry.name.casefold(),
            "member_count": len(entry.members),
        }
        data = chain.row_bytes("event", row, entry.members)
        event_hash = link(key, event_hash, data)
        trees["event"][1].append(data)
        events.append([row[c] for c in EVENT_COLUMNS] + [event_hash])
        members.extend(member_rows(event_id, entry.members, entry.event_time))
        known[unique] = (event_id, event_hash, entry.raw)
        receipts.append(Receipt("stored", event_id, event_hash))
    _insert(conn, "event", EVENT_COLUMNS + ("hash",), events)
    _insert(conn, "event_member", MEMBER_COLUMNS, members)
    _insert(conn, "quarantine", QUARANTINE_COLUMNS + ("hash",), rejections)
    for table, (size, leaves) in trees.items():
        merkle.append(conn, table, size, leaves)
    return receipts


def _stored_with_keys(conn, events):
    """The stored events sharing a (GroupId, EventTime, command) key with
    ``events``, as {key: (id, hash, raw)}: one lookup a key through the
    UNIQUE index, reading the body of the one row that matches, however
    many events the GroupId has. Bound parameters match any text the
    schema accepts, NUL included."""
    known = {}
    for key in {(event.group_id, event.event_time, event.command) for event in events}:
        row = conn.execute(
            "SELECT id, hash, raw FROM event WHERE group_id = ? AND event_time = ? AND command = ?",
            key,
        ).fetchone()
        if row is not None:
            known[key] = tuple(row)
    return known


# A retried body is compared with at most this many bytes of earlier ones
# (about 1 ms of the writer's time): the newest rows of its ErrorCode,
# length and first 64 bytes, up to 1,024 of them.
QUARANTINE_COMPARED = 1024 * 1024


def _quarantined_before(conn, rejection):
    """(id, hash) of a quarantined row with the same bytes and ErrorCode, or
    None. A sender that retries a refused body gets the same answer without
    adding its bytes again. The lookup goes through quarantine_by_retry and
    compares whole bodies only for the newest rows sharing a length and a
    prefix, QUARANTINE_COMPARED bytes of them at most, however many such
    rows a sender has made; past those, a copy is stored again, as before."""
    candidates = max(1, min(1024, QUARANTINE_COMPARED // max(len(rejection.raw), 1)))
    return conn.execute(
        "SELECT id, hash FROM quarantine WHERE id IN ("
        "  SELECT id FROM quarantine"
        "  WHERE error_code = ? AND length(raw) = ? AND substr(raw, 1, 64) = ?"
        "  ORDER BY id DESC LIMIT ?"
        ") AND raw = ? ORDER BY id LIMIT 1",
        (
            rejection.error_code,
            len(rejection.raw),
            rejection.raw[:64],
            candidates,
            rejection.raw,
        ),
    ).fetchone()


def _insert(conn, table, columns, rows):
    conn.executemany(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows
    )
