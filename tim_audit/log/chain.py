"""The hash chain: canonical bytes, links and anchors.

Pure functions over rows, no Flask, no threads and no queries (verification.py
walks the stored rows with them): this is where an auditor reads what the
chain proves. Every event row carries
``hash = H(previous row's hash || canonical(row))``, H being SHA-256, or
HMAC-SHA256 keyed with ``AUDIT_HMAC_KEY`` so that the chain cannot be
recomputed without the key. The canonical bytes cover every stored column,
the raw body and the initial members, so no stored byte can change without
breaking the chain from that row on. Quarantined deliveries form a second
chain of the same kind.
"""

import contextlib
import hashlib
import hmac
from typing import NamedTuple

GENESIS = "0" * 64

# Each chained column in chain order, with the SQLite type it holds as
# schema.sql declares it. New logs' tables are STRICT, so SQLite itself
# refuses any other type there; tables made before that are not, and there
# only verify notices a value that changed type.
EVENT_TYPES = {
    "id": "INTEGER",
    "received_at": "INTEGER",
    "command": "TEXT",
    "group_id": "TEXT",
    "type": "TEXT",
    "name": "TEXT",
    "name_folded": "TEXT",
    "operator": "TEXT",
    "owner": "TEXT or NULL",
    "event_time": "INTEGER",
    "member_count": "INTEGER",
    "user_data": "TEXT or NULL",
    "sdkappid": "TEXT",
    "client_ip": "TEXT or NULL",
    "opt_platform": "TEXT or NULL",
    "peer": "TEXT or NULL",
    "raw": "BLOB",
}
QUARANTINE_TYPES = {
    "id": "INTEGER",
    "received_at": "INTEGER",
    "error_code": "INTEGER",
    "reason": "TEXT",
    "command": "TEXT or NULL",
    "query": "TEXT",
    "peer": "TEXT or NULL",
    "content_length": "INTEGER or NULL",
    "raw": "BLOB or NULL",
}
MEMBER_TYPES = {
    "event_id": "INTEGER",
    "position": "INTEGER",
    "account": "TEXT",
    "event_time": "INTEGER",
    "duplicate": "INTEGER",
}

EVENT_COLUMNS = tuple(EVENT_TYPES)
QUARANTINE_COLUMNS = tuple(QUARANTINE_TYPES)
MEMBER_COLUMNS = tuple(MEMBER_TYPES)


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
    UTF-8 or raw bytes; so distinct rows never share an encoding. docs/design.md
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


class NotUtf8(bytes):
    """TEXT whose bytes are not UTF-8, read as such: only tampering stores it."""


def _text(data):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return NotUtf8(data)


@contextlib.contextmanager
def tolerant_text(conn):
    """Read TEXT that is not UTF-8 as :class:`NotUtf8` rather than failing
    the whole read, so that verify can name the row that holds it."""
    saved = conn.text_factory
    conn.text_factory = _text
    try:
        yield conn
    finally:
        conn.text_factory = saved


def as_bytes(value):
    """A stored BLOB as bytes. A tampered table can hold TEXT or a number
    there (verify names it): taken as the bytes of its text, so that it
    renders and fails to parse, where bytes() would raise or, given a large
    integer, allocate that many bytes."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")


def _storage_class(value):
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return "INTEGER"
    if isinstance(value, float):
        return "REAL"
    if isinstance(value, str):
        return "TEXT"
    return "BLOB"


def shown(value):
    """A stored value as the sqlite3 shell would write it, cut short."""
    kind = _storage_class(value)
    if kind == "TEXT":
        text = value if len(value) <= 40 else value[:40] + "…"
        return "TEXT '" + text.replace("'", "''") + "'"
    if kind == "BLOB":
        data = bytes(value)
        shown = f"X'{data[:20].hex().upper()}{'…' if len(data) > 20 else ''}'"
        return f"TEXT {shown} (not UTF-8)" if isinstance(value, NotUtf8) else f"BLOB {shown}"
    return kind if value is None else f"{kind} {value!r}"


def check_types(table, row_id, values, types):
    """Refuse a value whose SQLite type is not its column's declared one:
    canonical() would encode it under another tag, or not at all."""
    for column, value in zip(types, values, strict=True):
        declared = types[column]
        if isinstance(value, NotUtf8) or _storage_class(value) not in declared.split(" or "):
            raise ChainBroken(table, row_id, f"{column} is {shown(value)}, expected {declared}")


def event_values(row, members):
    """An event's values in chain order, each of its declared type: its
    columns, then its members' accounts."""
    values = [row[column] for column in EVENT_COLUMNS]
    check_types("event", row["id"], values, EVENT_TYPES)
    for position, account in enumerate(members):
        if not isinstance(account, str) or isinstance(account, NotUtf8):
            raise ChainBroken(
                "event_member",
                row["id"],
                f"account at position {position} is {shown(account)}, expected TEXT",
            )
    return values + list(members)


def quarantine_values(row):
    values = [row[column] for column in QUARANTINE_COLUMNS]
    check_types("quarantine", row["id"], values, QUARANTINE_TYPES)
    return values


def row_bytes(table, row, members=()):
    """The canonical bytes of a row of ``table`` ("event", with its
    ``members``' accounts, or "quarantine"): what its link hashes and its
    Merkle leaf holds. The writer, verify, verify_event, the trees and the
    proofs all take them from here, so what is written and what is checked
    cannot drift apart. ChainBroken if a value is not of its column's type."""
    if table == "event":
        return canonical(event_values(row, members))
    return canonical(quarantine_values(row))


def link(key, previous, data):
    message = bytes.fromhex(previous) + data
    if key:
        return hmac.new(key, message, hashlib.sha256).hexdigest()
    return hashlib.sha256(message).hexdigest()


def is_hash(text):
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


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


class Heads(NamedTuple):
    """Where both chains end: what verify prints, and --anchor takes back.

    An anchor written before the quarantine chain was anchored has no
    quarantine count and head; it holds for the event chain alone.
    """

    events: int
    event_head: str
    quarantined: int | None = None
    quarantine_head: str | None = None

    def line(self):
        return f"OK {self.events} {self.event_head} quarantine {self.quarantined} {self.quarantine_head}"


def parse_anchor(text):
    """Heads from a line an earlier verify printed, ``OK N HASH quarantine
    M HASH`` (or ``OK N HASH`` before quarantine was anchored), or from the
    older ``N:HASH``; ValueError if it is none of these."""
    words = text.split()
    if words[:1] == ["OK"]:
        words = words[1:]
    elif len(words) == 1:
        words = words[0].split(":")
    if len(words) == 5 and words[2] == "quarantine":
        counts, hashes = [words[0], words[3]], [words[1], words[4]]
    elif len(words) == 2:
        counts, hashes = words[:1], words[1:]
    else:
        counts, hashes = [], []
    if (
        not counts
        or not all(c.isascii() and c.isdigit() for c in counts)
        or not all(map(is_hash, hashes))
    ):
        raise ValueError(
            "an anchor is the last line of an earlier verify"
            " (OK COUNT HASH quarantine COUNT HASH), or COUNT:HASH"
        )
    if len(counts) == 1:
        return Heads(int(counts[0]), hashes[0])
    return Heads(int(counts[0]), hashes[0], int(counts[1]), hashes[1])
