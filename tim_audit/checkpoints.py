"""Signed checkpoints of the two Merkle trees, and the public endpoints that
serve them: what an auditor keeps off the box and checks proofs against.

The ingest server's notary signs a checkpoint of each tree that has grown
every CHECKPOINT_INTERVAL seconds, in a thread of its own with its own
connection, never on a callback's path. Before signing it checks that the
tree extends the previous checkpoint, so it never signs two inconsistent
heads. Signing is on when the CHECKPOINT_KEY file exists; ``keygen`` makes
it. Checkpoints of the event tree are under LOG_ORIGIN, those of the
quarantine tree under LOG_ORIGIN + "/quarantine", both signed by the key
named LOG_ORIGIN.
"""

import logging
import os
import sqlite3
import threading
import time

from flask import Blueprint, Response, request

from . import db, merkle, tlog
from .auditlog import ChainMismatch
from .db import get_db

logger = logging.getLogger(__name__)

bp = Blueprint("checkpoints", __name__)

SIGN_TIMEOUT = 5.0  # seconds the notary waits for the writer's transaction


class KeyRefused(ChainMismatch):
    """The signing key cannot be used: the service must not start with it."""


def origin(log_origin, table):
    return log_origin if table == "event" else f"{log_origin}/{table}"


def rotation_path(key_path):
    """Where rotate-key records a rotation the operator meant."""
    return f"{key_path}.rotation"


def read_signer(path, log_origin):
    """The signer key in the file at ``path``, which must be named ``log_origin``."""
    try:
        with open(path, encoding="ascii") as file:
            signer = tlog.Signer(file.read().strip())
    except (OSError, UnicodeDecodeError, tlog.Malformed) as exc:
        raise KeyRefused(f"cannot read the checkpoint key {path}: {exc}") from None
    if signer.name != log_origin:
        raise KeyRefused(
            f"the checkpoint key {path} is named {signer.name!r}, but LOG_ORIGIN is"
            f" {log_origin!r}: set LOG_ORIGIN to the key's name"
        )
    return signer


def write_key(path, text):
    """Write a private key file readable by its owner alone; never over another."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(f"{text}\n")


def latest(conn, table="event"):
    """The newest checkpoint of ``table``'s tree, or None."""
    return conn.execute(
        "SELECT id, tree, size, root, signed_at, key, note FROM checkpoint WHERE tree = ?"
        " ORDER BY id DESC LIMIT 1",
        (table,),
    ).fetchone()


def covering(conn, event_id):
    """The oldest event checkpoint whose tree includes event ``event_id``."""
    return conn.execute(
        "SELECT id, tree, size, root, signed_at, key, note FROM checkpoint"
        " WHERE tree = 'event' AND size >= ? ORDER BY id LIMIT 1",
        (event_id,),
    ).fetchone()


class Notary:
    """Signs the checkpoints of one log; owned by its AuditLog, which opens
    it with the log and closes it with the writer."""

    def __init__(self, path, key_path, log_origin, interval, directory=None, publishers=()):
        self.path = path
        self.key_path = key_path
        self.origin = log_origin
        self.interval = interval
        self.directory = directory
        # Threads that carry each new checkpoint off the box (witnesses, a
        # timestamp authority): started and stopped with the notary, woken
        # by notify() after a checkpoint commits, never waited for.
        self.publishers = list(publishers)
        self.signer = None
        self._stopping = threading.Event()
        self._thread = None

    def open(self, conn):
        """Load the key, if there is one, and refuse it unless it signed the
        latest checkpoint or the operator rotated to it on purpose."""
        if not os.path.exists(self.key_path):
            return
        if self.origin is None:
            raise KeyRefused(
                f"the checkpoint key {self.key_path} exists, so checkpoints are signed:"
                " set LOG_ORIGIN to the name it was made for"
            )
        self.signer = read_signer(self.key_path, self.origin)
        row = conn.execute("SELECT key FROM checkpoint ORDER BY id DESC LIMIT 1").fetchone()
        current = str(self.signer.verifier)
        if row is None or row[0] == current:
            return
        try:
            with open(rotation_path(self.key_path), encoding="ascii") as file:
                rotation = file.read().split()
        except (OSError, UnicodeDecodeError):
            rotation = None
        if rotation != [row[0], current]:
            raise KeyRefused(
                f"the checkpoint key {self.key_path} ({current}) is not the key that signed"
                f" the latest checkpoint ({row[0]}): put that key back, or rotate to a new"
                " one on purpose with: flask --app tim_audit rotate-key"
            )
        logger.warning("checkpoint key rotated on purpose: from %s to %s", row[0], current)

    def start(self):
        if self.signer is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="tim-audit notary", daemon=True)
        self._thread.start()
        for publisher in self.publishers:
            publisher.start()

    def close(self):
        for publisher in self.publishers:
            publisher.close()
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self):
        conn = None
        while not self._stopping.wait(self.interval):
            try:
                conn = conn or db.connect(self.path, timeout=SIGN_TIMEOUT)
                self.sign(conn)
            except sqlite3.Error as exc:
                logger.error("no checkpoint signed this round: %s", exc)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def sign(self, conn):
        """Sign a checkpoint of each tree that grew (or that the key has not
        signed yet); returns the new notes. One write transaction, held for
        a few milliseconds: the writer waits for it at most that long."""
        notes = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in merkle.TABLES:
                note = self._sign_tree(conn, table)
                if note is not None:
                    notes.append((table, note))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        for table, (size, note) in notes:
            self._ship(table, size, note)
        if notes:
            for publisher in self.publishers:
                publisher.notify()
        return [note for _, (_, note) in notes]

    def _sign_tree(self, conn, table):
        size = merkle.size(conn, table)
        previous = latest(conn, table)
        key = str(self.signer.verifier)
        if size == 0 or previous is not None and (previous["size"], previous["key"]) == (size, key):
            return None
        root = merkle.root(conn, table, size)
        if previous is not None:
            try:
                proof = tlog.consistency_proof(previous["size"], size, merkle.reader(conn, table))
                tlog.verify_consistency(previous["size"], previous["root"], size, root, proof)
            except (ValueError, tlog.ProofError) as exc:
                logger.error(
                    "refusing to sign the %s tree of %d leaves: it does not extend checkpoint"
                    " %d of %d leaves: %s",
                    table,
                    size,
                    previous["id"],
                    previous["size"],
                    exc,
                )
                return None
        note = tlog.sign_checkpoint(
            tlog.Checkpoint(origin(self.origin, table), size, root), self.signer
        )
        conn.execute(
            "INSERT INTO checkpoint (tree, size, root, signed_at, key, note) VALUES (?, ?, ?, ?, ?, ?)",
            (table, size, root, int(time.time() * 1000), key, note),
        )
        return size, note

    def _ship(self, table, size, note):
        """Write the checkpoint to CHECKPOINT_DIR, whole or not at all."""
        if self.directory is None:
            return
        path = os.path.join(self.directory, f"{table}-{size}.checkpoint")
        try:
            with open(f"{path}.partial", "wb") as file:
                file.write(note)
            os.replace(f"{path}.partial", path)
        except OSError as exc:
            logger.error("cannot write the checkpoint to %s: %s", path, exc.strerror)


# The public endpoints, on the ingest server: a checkpoint reveals a tree
# size and a root hash, a consistency proof more hashes, nothing else.


def _text(body, status=200):
    return Response(body, status, mimetype="text/plain")


@bp.get("/checkpoint")
def checkpoint():
    try:
        row = latest(get_db())
    except sqlite3.OperationalError:  # a log this version's writer has not opened yet
        row = None
    if row is None:
        return _text("No checkpoint has been signed yet.\n", 404)
    return _text(bytes(row["note"]))


@bp.get("/checkpoint/consistency")
def consistency():
    """``from=M`` and, by default the latest checkpoint's size, ``to=N``."""
    conn = get_db()
    row = latest(conn)
    size = merkle.size(conn, "event")
    try:
        first = _count(request.args.get("from"), "from")
        default = row["size"] if row is not None else size
        last = default if request.args.get("to") is None else _count(request.args["to"], "to")
        if not 0 < first <= last <= size:
            raise ValueError(f"from and to must be 0 < from <= to <= {size}, the tree's size")
    except ValueError as exc:
        return _text(f"{exc}\n", 400)
    return _text(tlog.format_hashes(consistency_proof(conn, first, last)))


def consistency_proof(conn, first, last):
    return tlog.consistency_proof(first, last, merkle.reader(conn, "event"))


def _count(value, name):
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise ValueError(f"{name} must be a tree size, a whole number")
    return int(value)


def notary(config):
    """The ingest server's notary, as configured."""
    return Notary(
        os.path.abspath(config["DATABASE"]),
        config["CHECKPOINT_KEY"],
        config["LOG_ORIGIN"],
        config["CHECKPOINT_INTERVAL"],
        config["CHECKPOINT_DIR"],
    )
