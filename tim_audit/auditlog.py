"""The audit log's writer: the only code that changes the database.

Rows are chained as chain.py defines; this module decides when and in which
transaction they are written.
"""

import dataclasses
import json
import threading
import time
from importlib import resources

import sqlite3

from flask import current_app

from . import db
from .chain import (
    EVENT_COLUMNS, GENESIS, MEMBER_COLUMNS, QUARANTINE_COLUMNS, canonical, chain_kind,
    event_values, link, member_rows,
)

CHECKPOINT_EVERY = 1.0  # seconds


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


class StorageUnavailable(Exception):
    """The database could not take a write in time: full, locked or failing."""


class ChainMismatch(Exception):
    """The configured AUDIT_HMAC_KEY is not the one the log was started with."""


@dataclasses.dataclass(eq=False)
class _Job:
    entry: Event | Rejection
    deadline: float
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    receipt: Receipt | None = None
    error: Exception | None = None


class AuditLog:
    """The single writer of one database file.

    Appends from all threads go through :meth:`append`; ``BEGIN IMMEDIATE``
    keeps other processes out while a batch is written, and the chain head
    is read inside that transaction, so the chain never forks.
    """

    def __init__(self, path, *, key=None, timeout=1.0):
        self.path = path
        self.key = key
        self.timeout = timeout
        self.failure = None
        self._writer = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue = []
        self._conn = self._open()
        self._conn.executescript(resources.files(__package__).joinpath("schema.sql").read_text())
        self._check_chain_kind()
        self._closing = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint, name="tim-audit checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _open(self):
        """The writer's connection. It never checkpoints: copying the WAL
        into the database (and its fsync) would land on whichever callback
        happened to commit; _checkpoint does it in the background."""
        conn = db.connect(self.path, timeout=self.timeout)
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    def _checkpoint(self):
        """Copy committed WAL frames into the database every CHECKPOINT_EVERY
        seconds. PASSIVE never waits for the writer or for readers (a long
        export only holds back the frames it may still read)."""
        conn = None
        while not self._closing.wait(CHECKPOINT_EVERY):
            try:
                conn = conn or db.connect(self.path, timeout=self.timeout)
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                pass  # the next round retries; a failing disk also fails appends, which say so
        if conn is not None:
            conn.close()

    def _check_chain_kind(self):
        kind = chain_kind(self.key)
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'chain'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO meta (key, value) VALUES ('chain', ?)", (kind,))
        finally:
            self._conn.execute("COMMIT")
        stored = kind if row is None else row["value"]
        if stored == kind:
            return
        if stored == "sha256":
            raise ChainMismatch(
                f"the log at {self.path} was started without AUDIT_HMAC_KEY and its"
                " chain cannot switch to an HMAC: unset AUDIT_HMAC_KEY, or point"
                " DATABASE at a new file"
            )
        if not self.key:
            raise ChainMismatch(
                f"the log at {self.path} is chained with an HMAC key: set"
                " AUDIT_HMAC_KEY to the key it was started with"
            )
        raise ChainMismatch(
            f"AUDIT_HMAC_KEY is not the key the log at {self.path} was started with"
        )

    def append(self, entry):
        """Write ``entry`` durably and return its :class:`Receipt`.

        Threads that arrive while a batch is being written queue up, and the
        next one to take the writer commits the whole queue in a single
        transaction: concurrent callbacks share one fsync (group commit).
        A receipt is returned only once its transaction has committed;
        otherwise :class:`StorageUnavailable` is raised within ``timeout``.
        """
        job = _Job(entry, time.monotonic() + self.timeout)
        with self._queue_lock:
            self._queue.append(job)
        if self._writer.acquire(timeout=self.timeout):
            try:
                if not job.done.is_set():
                    with self._queue_lock:
                        batch, self._queue = self._queue, []
                    self._commit(batch)
            finally:
                self._writer.release()
        else:
            with self._queue_lock:
                if job in self._queue:
                    self._queue.remove(job)
                    raise StorageUnavailable("timed out waiting for the database writer")
        if not job.done.wait(max(0.0, job.deadline - time.monotonic())):
            raise StorageUnavailable("timed out waiting for the database")
        if job.error is not None:
            raise job.error
        return job.receipt

    def _commit(self, batch):
        now = time.monotonic()
        live = []
        for job in batch:
            if job.deadline > now:
                live.append(job)
            else:
                job.error = StorageUnavailable("timed out waiting for the database")
                job.done.set()
        if not live:
            return
        wait_ms = max(1, int((min(job.deadline for job in live) - now) * 1000))
        try:
            conn = self._connection()
            conn.execute(f"PRAGMA busy_timeout = {wait_ms}")
            try:
                receipts = self._write(conn, [job.entry for job in live])
            except sqlite3.OperationalError:
                raise
            except Exception as exc:
                # Something in one entry; write them one by one so that
                # only the entry at fault fails.
                self._abandon()
                if len(live) == 1:
                    live[0].error = exc
                else:
                    self._write_each(live)
            else:
                for job, receipt in zip(live, receipts, strict=True):
                    job.receipt = receipt
        except sqlite3.Error as exc:
            self._abandon()
            self.failure = str(exc)
            for job in live:
                if job.receipt is None and job.error is None:
                    job.error = StorageUnavailable(str(exc))
        else:
            self.failure = None
        for job in live:
            job.done.set()

    def _write_each(self, jobs):
        for job in jobs:
            try:
                [job.receipt] = self._write(self._connection(), [job.entry])
            except sqlite3.OperationalError:
                raise
            except Exception as exc:
                self._abandon()
                job.error = exc

    def _connection(self):
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _abandon(self):
        """Roll back a failed batch; a connection left in a state SQLite
        will not roll back is closed and reopened on the next batch."""
        if self._conn is None:
            return
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            self._conn.close()
            self._conn = None

    def _write(self, conn, entries):
        """Append ``entries`` in one transaction; returns their receipts.

        One query finds the stored events the batch repeats; the chain
        hashes are computed here, then every row goes in with executemany.
        """
        conn.execute("BEGIN IMMEDIATE")
        event_id, event_hash, quarantine_id, quarantine_hash = conn.execute(
            "SELECT coalesce((SELECT id FROM event ORDER BY id DESC LIMIT 1), 0),"
            " coalesce((SELECT hash FROM event ORDER BY id DESC LIMIT 1), ?),"
            " coalesce((SELECT id FROM quarantine ORDER BY id DESC LIMIT 1), 0),"
            " coalesce((SELECT hash FROM quarantine ORDER BY id DESC LIMIT 1), ?)",
            (GENESIS, GENESIS),
        ).fetchone()
        known = self._stored_with_keys(conn, [e for e in entries if isinstance(e, Event)])
        receipts, events, members, rejections = [], [], [], []
        for entry in entries:
            if isinstance(entry, Rejection):
                quarantine_id += 1
                row = vars(entry) | {"id": quarantine_id}
                quarantine_hash = link(self.key, quarantine_hash, canonical(row[c] for c in QUARANTINE_COLUMNS))
                rejections.append([row[c] for c in QUARANTINE_COLUMNS] + [quarantine_hash])
                receipts.append(Receipt("quarantined", quarantine_id, quarantine_hash))
                continue
            key = (entry.group_id, entry.event_time, entry.command)
            if key in known:
                stored_id, stored_hash, stored_raw = known[key]
                outcome = "repeat" if stored_raw == entry.raw else "conflict"
                receipts.append(Receipt(outcome, stored_id, stored_hash))
                continue
            event_id += 1
            row = vars(entry) | {
                "id": event_id, "name_folded": entry.name.casefold(), "member_count": len(entry.members),
            }
            event_hash = link(self.key, event_hash, canonical(event_values(row, entry.members)))
            events.append([row[c] for c in EVENT_COLUMNS] + [event_hash])
            members.extend(member_rows(event_id, entry.members, entry.event_time))
            known[key] = (event_id, event_hash, entry.raw)
            receipts.append(Receipt("stored", event_id, event_hash))
        _insert(conn, "event", EVENT_COLUMNS + ("hash",), events)
        _insert(conn, "event_member", MEMBER_COLUMNS, members)
        _insert(conn, "quarantine", QUARANTINE_COLUMNS + ("hash",), rejections)
        conn.execute("COMMIT")
        return receipts

    @staticmethod
    def _stored_with_keys(conn, events):
        """The stored events sharing a (GroupId, EventTime, command) key with
        ``events``, as {key: (id, hash, raw)}."""
        if not events:
            return {}
        # One statement text whatever the batch size, so the statement
        # cache holds one prepared statement, not one per size.
        rows = conn.execute(
            "SELECT group_id, event_time, command, id, hash, raw FROM event"
            " WHERE group_id IN (SELECT value FROM json_each(?))",
            (json.dumps(sorted({event.group_id for event in events})),),
        )
        return {(r[0], r[1], r[2]): (r[3], r[4], r[5]) for r in rows}

    def close(self):
        self._closing.set()
        self._checkpointer.join()
        with self._writer:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _insert(conn, table, columns, rows):
    conn.executemany(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows
    )


def current_log():
    return current_app.extensions["tim_audit"]
