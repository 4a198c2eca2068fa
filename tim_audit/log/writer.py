"""The audit log's writer: the only code that changes the database.

It decides when and in which transaction entries are written, and answers
each append truthfully; records.py decides what they become.
"""

import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Callable

import sqlite3

from . import db, records
from .chain import ChainBroken
from .records import ChainMismatch

logger = logging.getLogger(__name__)

CHECKPOINT_EVERY = 0.25  # seconds


class StorageUnavailable(Exception):
    """The database could not take a write in time: full, locked or failing."""


# No append waits longer than this for its answer, even when a commit hangs:
# Tencent gives up at 2 s, and an after-event callback it gives up on is lost.
ANSWER_BOUND = 1.45  # seconds from the request's start: the rest of it fits in 1.5 s
# A job joins a transaction only with at least this much of its time left,
# so that a commit that goes as usual is answered before its deadline.
SEAL_MARGIN = 0.25  # seconds
# Past this many WAL frames (4 KiB pages: 16 MB) the writer finishes the
# checkpoint itself, between two transactions, so the next one starts the
# WAL afresh.
WAL_CHECKPOINT_FRAMES = 4096
MAX_BATCH = 256
SQLITE_FULL = 13
# Why an entry given up on was never stored.
TIMED_OUT = "timed out waiting for the database"

_PENDING, _SEALED, _CANCELLED = "pending", "sealed", "cancelled"


class StorageUncertain(Exception):
    """A transaction holding the entry did not finish in time, or failed in
    a way that does not rule out that it committed: neither "stored" nor
    "not stored" would be true. A retry is recognised as a repeat."""


@dataclasses.dataclass(eq=False)
class Job:
    """One append, from the queue to its answer. ``notify`` is called with
    the job once it is finished, on the thread that finished it (the
    writer's): AuditLog.append wakes its caller from it, the hand-off's
    desk answers a worker from it."""

    entry: object  # what records.write takes
    started: float  # time.monotonic() when its request began
    deadline: float  # when it is given up on unless sealed (AuditLog.give_up)
    notify: Callable[["Job"], None] | None = None
    state: str = _PENDING
    finished: bool = False
    receipt: records.Receipt | None = None
    error: Exception | None = None

    def finish(self, receipt=None, error=None):
        self.receipt, self.error, self.finished = receipt, error, True
        if self.notify is not None:
            self.notify(self)

    def result(self):
        """The receipt, or the error it finished with."""
        if self.error is not None:
            raise self.error
        return self.receipt


class AuditLog:
    """The single writer of one database file.

    Appends from every thread are queued to one writer thread, which commits
    whatever has queued up in a single transaction (group commit: one fsync
    for many callbacks). ``BEGIN IMMEDIATE`` keeps other processes out while
    a batch is written, and the chain head is read inside that transaction,
    so the chain never forks.

    :meth:`open` takes the log's lock (db.hold) and keeps it until
    :meth:`close`, so a second ingest server on the same file, or
    rebuild-index, is refused while this one writes.

    Creating the object touches nothing: the file is created and the writer
    started by :meth:`open`, which the servers call at start-up and the first
    append calls otherwise. So an operator's command never creates the log.
    """

    def __init__(self, path, *, key=None, timeout=1.0, notary=None):
        self.path = path
        self.key = key
        self.timeout = timeout
        self.notary = notary  # signs checkpoints of the trees (notary.py)
        self.failure = None
        self._lock = threading.Lock()  # guards opening and every job's state
        self._queue = queue.SimpleQueue()
        self._conn = None
        self._held = None  # the lock's descriptor (db.hold) while the writer runs
        self._writer = None
        self._checkpointer = None
        self._closing = threading.Event()
        self._wal_frames = 0
        self._busy_since = None  # when the writer started on the batch it is on

    def open(self):
        """Create the log if it does not exist yet, check that its chain is
        keyed as configured, and start the writer. Idempotent; refused
        while close() is still draining the writer."""
        with self._lock:
            if self._closing.is_set():
                raise StorageUnavailable("the log is closing")
            if self._writer is not None:
                return
            self._held = db.hold(self.path)
            try:
                self._conn = self._connect()
                records.prepare(self._conn, self.key, self.path)
                if self.notary is not None:
                    self.notary.open(self._conn)
                records.catch_up(self._conn)
            except BaseException:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                os.close(self._held)
                self._held = None
                raise
            self._writer = threading.Thread(target=self._run, name="tim-audit writer", daemon=True)
            self._writer.start()
            self._checkpointer = threading.Thread(
                target=self._checkpoint, name="tim-audit checkpoint", daemon=True
            )
            self._checkpointer.start()
            if self.notary is not None:
                self.notary.start()

    def _connect(self):
        """The writer's connection. It never checkpoints on commit: the
        copy and its fsync would hold up the batch behind it."""
        conn = db.connect(self.path, timeout=self.timeout)
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    def _checkpoint(self):
        """Copy committed WAL frames into the database every CHECKPOINT_EVERY
        seconds. PASSIVE never waits for the writer or for readers; under
        sustained writes it never quite finishes, so it also notes how many
        frames the WAL holds for the writer to finish the job (_bound_wal)."""
        conn = None
        while not self._closing.wait(CHECKPOINT_EVERY):
            try:
                conn = conn or db.connect(self.path, timeout=self.timeout)
                busy, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if not busy:
                    self._wal_frames = frames
            except sqlite3.Error:
                pass  # the next round retries; a failing disk also fails appends, which say so
        if conn is not None:
            conn.close()

    def append(self, entry, started=None):
        """Write ``entry`` durably and return its :class:`Receipt`.

        ``started`` (time.monotonic()) is when the request began, so that
        every append it makes shares one budget. A receipt means committed
        with synchronous=FULL. :class:`StorageUnavailable` within ``timeout``
        means the entry was never part of a transaction and never will be.
        A job already sealed into a transaction waits for its commit, until
        ANSWER_BOUND; then :class:`StorageUncertain`.
        """
        done = threading.Event()
        job = self.submit(entry, started, lambda job: done.set())
        if not done.wait(max(0.0, job.deadline - time.monotonic())):
            if self.give_up(job):
                raise StorageUnavailable(TIMED_OUT)
            if not done.wait(max(0.0, job.started + ANSWER_BOUND - time.monotonic())):
                raise StorageUncertain("the database did not confirm the commit in time")
        return job.result()

    def submit(self, entry, started=None, notify=None):
        """Queue ``entry`` for the writer and return its :class:`Job` at
        once: :meth:`append` without the wait, for a caller that answers
        from ``notify`` and keeps the job's deadlines itself (give_up at
        job.deadline, StorageUncertain at ANSWER_BOUND). Raises
        StorageUnavailable, as append does, when it cannot be queued."""
        started = time.monotonic() if started is None else started
        if self._writer is None:
            try:
                self.open()
            except (sqlite3.Error, OSError, ChainMismatch, ChainBroken, db.Held) as exc:
                self.failure = str(exc)
                raise StorageUnavailable(f"cannot open the log: {exc}") from None
        stalled = self.stalled()
        if stalled:
            # Refused at once rather than queued behind a stuck batch, so
            # that callbacks do not hold every thread while the disk hangs.
            self.failure = stalled
            raise StorageUnavailable(stalled)
        job = Job(entry, started, started + self.timeout, notify)
        self._queue.put(job)
        return job

    def give_up(self, job):
        """At ``job.deadline``: cancel the job if no transaction holds it
        yet (True: it is never stored, answer StorageUnavailable). False
        once it is sealed into one, or already finished."""
        with self._lock:
            if job.state != _PENDING:
                return False
            job.state = _CANCELLED
            self.failure = TIMED_OUT
            return True

    def stalled(self):
        """Why the writer is stuck, if it has been on one batch for longer
        than ``timeout`` (a lock held elsewhere, a hung disk); else None."""
        since = self._busy_since
        if since is not None and time.monotonic() - since > self.timeout:
            return f"the database has not finished a write in {time.monotonic() - since:.1f} s"
        return None

    def _run(self):
        held, closing, heavy = [], False, False
        while True:
            batch = list(held)  # held heavy jobs, at most one a request thread
            if not batch and not closing:
                batch = [self._queue.get()]
            while not closing and len(batch) < len(held) + MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            closing = closing or None in batch  # close() queued None
            jobs, held, heavy = _budgeted([job for job in batch if job is not None], heavy)
            self._busy_since = time.monotonic()
            try:
                if jobs:
                    self._commit(jobs)
                    self._bound_wal()
            except Exception as exc:  # a bug here must not stop the writer for good
                logger.exception("the writer failed on a batch")
                self._abandon()
                for job in jobs:
                    if not job.finished:
                        job.finish(error=exc)
            self._busy_since = None
            if closing and not held:
                return

    def _seal(self, jobs):
        """The jobs this transaction will carry: each becomes uncancellable
        here, or is refused here if too little of its time is left."""
        now = time.monotonic()
        sealed = []
        with self._lock:
            for job in jobs:
                if job.state != _PENDING:
                    continue
                if job.deadline - now >= SEAL_MARGIN:
                    job.state = _SEALED
                    sealed.append(job)
                else:
                    job.state = _CANCELLED
                    job.finish(error=StorageUnavailable(TIMED_OUT))
        return sealed

    def _commit(self, jobs):
        """Write ``jobs`` in one transaction, or fail them truthfully."""
        waiting = [job for job in jobs if job.state == _PENDING]
        if not waiting:
            return
        wait = max(job.deadline for job in waiting) - SEAL_MARGIN - time.monotonic()
        try:
            conn = self._connection()
            conn.execute(f"PRAGMA busy_timeout = {max(1, int(wait * 1000))}")
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._abandon()
            self.failure = str(exc)
            for job in self._seal(waiting):
                job.finish(error=StorageUnavailable(str(exc)))
            return
        sealed = self._seal(waiting)
        if not sealed:
            conn.execute("ROLLBACK")
            return
        try:
            receipts = records.write(conn, [job.entry for job in sealed], self.key)
        except sqlite3.OperationalError as exc:  # the disk or the file, not the entries
            self._abandon()
            self.failure = str(exc)
            for job in sealed:
                job.finish(error=StorageUnavailable(str(exc)))
            return
        except Exception as exc:
            # Something in one entry: write them one by one, so that only
            # the entry at fault fails.
            self._abandon()
            if len(sealed) == 1:
                sealed[0].finish(error=exc)
            else:
                for job in sealed:
                    self._commit_alone(job)
            return
        self._finish(sealed, receipts)

    def _commit_alone(self, job):
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            receipts = records.write(conn, [job.entry], self.key)
        except Exception as exc:
            self._abandon()
            job.finish(
                error=StorageUnavailable(str(exc))
                if isinstance(exc, sqlite3.OperationalError)
                else exc
            )
            return
        self._finish([job], receipts)

    def _finish(self, jobs, receipts):
        """COMMIT, then answer. A failed COMMIT is "not stored" only when
        SQLite says the disk was full (nothing was written); any other
        failure there may have left a committed transaction in the WAL."""
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self.failure = str(exc)
            full = getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL
            self._abandon()
            if not full:
                self._reconnect()
            for job in jobs:
                job.finish(error=(StorageUnavailable if full else StorageUncertain)(str(exc)))
            return
        self.failure = None
        for job, receipt in zip(jobs, receipts, strict=True):
            job.finish(receipt)

    def _bound_wal(self):
        """Keep the WAL bounded under sustained writes: once it holds
        WAL_CHECKPOINT_FRAMES, checkpoint here, between two transactions,
        where no frame can arrive meanwhile. When that copies every frame,
        the next transaction starts the WAL over, and journal_size_limit
        trims the file. PASSIVE: a reader holding an old snapshot (a long
        export) delays this, and never the writer."""
        if self._wal_frames < WAL_CHECKPOINT_FRAMES:
            return
        try:
            busy, frames, copied = (
                self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            )
        except sqlite3.Error:
            return  # tried again after the next batch
        if not busy and frames == copied:
            self._wal_frames = 0

    def _connection(self):
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _reconnect(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _abandon(self):
        """Roll back a failed batch; a connection left in a state SQLite
        will not roll back is closed and reopened on the next batch."""
        if self._conn is None:
            return
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            self._reconnect()

    def close(self):
        """Stop the writer once the queue is written; for tests, init-db
        and shutdown."""
        with self._lock:
            writer, self._writer = self._writer, None
            if writer is None:
                return
            self._closing.set()
        self._queue.put(None)
        writer.join()
        self._checkpointer.join()
        if self.notary is not None:
            self.notary.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        os.close(self._held)
        self._held = None
        self._closing.clear()


# What one transaction writes of heavy entries, in rows as records.cost
# counts them: about one event with the most members the schema takes. Light entries (LIGHT rows or fewer) all go in every
# transaction; heavy ones as this allows (and always one), in the order they
# came, but not in the transaction right after one that had some while
# light ones wait. So a sender of the heaviest bodies the bounds allow holds
# another callback up by one such transaction at most, and a heavy entry
# waits for the heavy ones before it and a light transaction at most each.
WRITE_BUDGET = 512
LIGHT = 16


def _budgeted(jobs, after_heavy):
    """The jobs for the next transaction, those held for a later one, and
    whether it carries heavy ones. Right after a transaction that did, the
    light ones go alone, so that a light entry waits for one heavy
    transaction at most; jobs already given up on are dropped."""
    costed = [(job, records.cost(job.entry)) for job in jobs if job.state == _PENDING]
    light = any(cost <= LIGHT for _, cost in costed)
    taken, held, spent = [], [], 0
    for job, cost in costed:
        if cost <= LIGHT:
            taken.append(job)
        elif not (after_heavy and light) and (not spent or spent + cost <= WRITE_BUDGET):
            taken.append(job)
            spent += cost
        else:
            held.append(job)
    return taken, held, spent > 0
