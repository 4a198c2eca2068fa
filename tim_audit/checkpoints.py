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

from . import chain, db, merkle, tlog
from .auditlog import ChainMismatch
from .db import get_db

logger = logging.getLogger(__name__)

bp = Blueprint("checkpoints", __name__)

SIGN_TIMEOUT = 5.0  # seconds the notary waits for the writer's transaction


MAX_NOTE = 64 * 1024  # bytes read of a checkpoint file in CHECKPOINT_DIR


class KeyRefused(ChainMismatch):
    """The signing key cannot be used: the service must not start with it."""


class Contradicted(chain.ChainBroken):
    """A checkpoint, stored or kept in CHECKPOINT_DIR, that the log does not
    extend: ``checkpoint <size>: why``."""

    def __init__(self, size, reason):
        Exception.__init__(self, f"checkpoint {size}: {reason}")
        self.table, self.row_id, self.reason = "checkpoint", size, reason


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


def verifiers(key_path, log_origin):
    """The verifier keys of this log, from outside its file: the key at
    ``key_path`` and the one it was rotated from on purpose. None when there
    is no key to check with, never the keys the database names."""
    if log_origin is None or not os.path.exists(key_path):
        return None
    keys = [read_signer(key_path, log_origin).verifier]
    try:
        with open(rotation_path(key_path), encoding="ascii") as file:
            keys += [tlog.Verifier(text) for text in file.read().split()]
    except (OSError, UnicodeDecodeError, tlog.Malformed):
        pass
    return keys


def check(conn, keys, log_origin, directory=None, witnesses=()):
    """Check every stored checkpoint, and every checkpoint of this log in
    ``directory``, against the trees as stored (merkle.verify has checked
    them against the rows): each is signed by one of ``keys`` (unless None)
    and its root is the tree's root at its size; and every stored
    cosignature of one of ``witnesses`` (Verifiers, as configured). Returns
    how many checkpoints were checked; Contradicted names the first that
    the log does not extend."""
    sizes = {table: merkle.size(conn, table) for table in merkle.TABLES}
    count = 0
    for row in conn.execute("SELECT tree, size, root, note FROM checkpoint ORDER BY id"):
        table, size = row["tree"], row["size"]
        if keys is not None:
            try:
                signed, _ = tlog.open_checkpoint(
                    bytes(row["note"]), keys, origin(log_origin, table)
                )
            except tlog.TlogError as exc:
                raise Contradicted(
                    size, f"the stored {table} checkpoint does not verify: {exc}"
                ) from None
            if (signed.size, signed.root) != (size, row["root"]):
                raise Contradicted(size, f"the stored {table} checkpoint's row and note differ")
        _extends(conn, table, sizes[table], size, row["root"], f"the stored {table} checkpoint")
        count += 1
    _check_cosignatures(conn, witnesses)
    for table in merkle.TABLES:
        first = conn.execute(
            "SELECT value FROM meta WHERE key = ?", (f"signed:{table}",)
        ).fetchone()
        if first is not None and latest(conn, table) is None:
            raise Contradicted(
                int(first[0]), f"the log records a first {table} checkpoint, but none is stored"
            )
    if directory is not None and keys is not None:
        for path, table, signed in _kept(directory, keys, log_origin):
            _extends(conn, table, sizes[table], signed.size, signed.root, path)
            count += 1
    return count


def _check_cosignatures(conn, witnesses):
    configured = {str(witness): witness for witness in witnesses}
    for row in conn.execute(
        "SELECT checkpoint.size, checkpoint.note, cosignature.witness, cosignature.line"
        " FROM cosignature JOIN checkpoint ON checkpoint.id = cosignature.checkpoint_id"
        " ORDER BY cosignature.id"
    ):
        witness = configured.get(row["witness"])
        if witness is None:
            continue
        try:
            text, _ = tlog.split_note(bytes(row["note"]))
            tlog.open_note(text.encode("utf-8") + b"\n" + bytes(row["line"]), [witness])
        except tlog.TlogError as exc:
            raise Contradicted(
                row["size"], f"the cosignature of witness {witness.name} does not verify: {exc}"
            ) from None


def _extends(conn, table, tree_size, size, root, what):
    if size > tree_size:
        raise Contradicted(
            size, f"{what} records {size} leaves, but the {table} tree has {tree_size}"
        )
    if size and merkle.root(conn, table, size) != root:
        raise Contradicted(size, f"{what} has another root than the {table} tree at {size} leaves")


def _kept(directory, keys, log_origin):
    """The checkpoints of this log in ``directory`` that one of ``keys``
    signed: (path, table, checkpoint). Files of other logs are not ours
    to judge."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise Contradicted(0, f"cannot read CHECKPOINT_DIR {directory}: {exc.strerror}") from None
    for name in names:
        table = name.partition("-")[0]
        if not name.endswith(".checkpoint") or table not in merkle.TABLES:
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as file:
                note = file.read(MAX_NOTE)
            signed, _ = tlog.open_checkpoint(note, keys, origin(log_origin, table))
        except (OSError, tlog.TlogError):
            continue
        yield path, table, signed


def latest(conn, table="event"):
    """The newest checkpoint of ``table``'s tree, or None."""
    return conn.execute(
        "SELECT id, tree, size, root, signed_at, key, note FROM checkpoint WHERE tree = ?"
        " ORDER BY id DESC LIMIT 1",
        (table,),
    ).fetchone()


def cosigned(conn, checkpoint):
    """The checkpoint's note with the cosignatures gathered for it: what
    GET /checkpoint serves, and what proofs and archives carry."""
    lines = conn.execute(
        "SELECT line FROM cosignature WHERE checkpoint_id = ? ORDER BY id", (checkpoint["id"],)
    )
    return bytes(checkpoint["note"]) + b"".join(bytes(line[0]) for line in lines)


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

    def __init__(
        self, path, key_path, log_origin, interval, directory=None, publishers=(), adopt=False
    ):
        self.path = path
        self.key_path = key_path
        self.origin = log_origin
        self.interval = interval
        self.directory = directory
        # Threads that carry each new checkpoint off the box (witnesses, a
        # timestamp authority): started and stopped with the notary, woken
        # by notify() after a checkpoint commits, never waited for.
        self.publishers = list(publishers)
        self.adopt = adopt  # CHECKPOINT_ADOPT: sign over events from before signing
        self.signer = None
        self._stopping = threading.Event()
        self._thread = None

    def open(self, conn):
        """Load the key, if there is one, and refuse it unless it signed the
        latest checkpoint or the operator rotated to it on purpose; refuse a
        log that does not extend the checkpoints kept in CHECKPOINT_DIR; and
        record from when the log is signed."""
        has_checkpoints = conn.execute("SELECT EXISTS (SELECT 1 FROM checkpoint)").fetchone()[0]
        if not os.path.exists(self.key_path):
            if has_checkpoints:
                raise KeyRefused(
                    f"the checkpoint key {self.key_path} does not exist, but this log has signed"
                    " checkpoints: put the key back (or set CHECKPOINT_KEY to it)"
                )
            return
        if self.origin is None:
            raise KeyRefused(
                f"the checkpoint key {self.key_path} exists, so checkpoints are signed:"
                " set LOG_ORIGIN to the name it was made for"
            )
        self.signer = read_signer(self.key_path, self.origin)
        self._check_key(conn)
        if self.directory is not None:
            if not os.path.isdir(self.directory):
                raise KeyRefused(
                    f"CHECKPOINT_DIR {self.directory} does not exist: create it (writable by"
                    " the user running tim-audit), or unset CHECKPOINT_DIR"
                )
            try:
                check(conn, verifiers(self.key_path, self.origin), self.origin, self.directory)
            except Contradicted as exc:
                raise KeyRefused(
                    f"this log does not extend what it signed before: {exc}. Was the log"
                    " moved aside or begun again? Restore the log that signed it"
                ) from None
        self._record_signing(conn)
        self._stopping.clear()

    def _check_key(self, conn):
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
                " one on purpose with: tim-audit rotate-key"
            )
        logger.warning("checkpoint key rotated on purpose: from %s to %s", row[0], current)

    def _record_signing(self, conn):
        """Record in ``meta`` from when this log is signed: from its first row,
        or over the rows it had when the operator adopted them on purpose
        (CHECKPOINT_ADOPT). Without that record the notary signs no first
        checkpoint, so a log rebuilt over rewritten rows is not signed."""
        if conn.execute("SELECT 1 FROM meta WHERE key = 'signing'").fetchone() is not None:
            return
        sizes = {table: merkle.size(conn, table) for table in merkle.TABLES}
        has_checkpoints = conn.execute("SELECT EXISTS (SELECT 1 FROM checkpoint)").fetchone()[0]
        if has_checkpoints:
            since = "recorded over checkpoints signed before"
        elif not any(sizes.values()):
            since = "from the first row"
        elif self.adopt:
            since = "adopted on purpose (CHECKPOINT_ADOPT) over " + " and ".join(
                f"{size} {table} rows" for table, size in sizes.items()
            )
            logger.warning(
                "CHECKPOINT_ADOPT: signing the first checkpoints over rows no checkpoint"
                " vouched for: %s; unset it now",
                ", ".join(f"{size} {table} rows" for table, size in sizes.items()),
            )
        else:
            logger.error(
                "signing no checkpoint: this log's %s were written before it was signed,"
                " and nothing outside the file vouches for them. If the log is yours,"
                " adopt it on purpose: start once with TIM_AUDIT_CHECKPOINT_ADOPT=true",
                " and ".join(f"{size} {table} rows" for table, size in sizes.items()),
            )
            self.signer = None
            return
        conn.execute("INSERT INTO meta (key, value) VALUES ('signing', ?)", (since,))

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
            if self.directory is not None:
                ship(self.directory, table, size, note)
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
        if previous is None:
            first = conn.execute("SELECT 1 FROM meta WHERE key = ?", (f"signed:{table}",))
            if first.fetchone() is not None:
                logger.error(
                    "refusing to sign the %s tree: the log records a first checkpoint of it,"
                    " but none is stored: its checkpoints were removed",
                    table,
                )
                return None
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)", (f"signed:{table}", str(size))
            )
        else:
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


def ship(directory, table, size, note):
    """Write the checkpoint to CHECKPOINT_DIR, whole or not at all: once
    signed, and again with each cosignature."""
    path = os.path.join(directory, f"{table}-{size}.checkpoint")
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
    return _text(cosigned(get_db(), row))


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


def notary(config, publishers=()):
    """The ingest server's notary, as configured."""
    return Notary(
        os.path.abspath(config["DATABASE"]),
        config["CHECKPOINT_KEY"],
        config["LOG_ORIGIN"],
        config["CHECKPOINT_INTERVAL"],
        config["CHECKPOINT_DIR"],
        publishers,
        adopt=config["CHECKPOINT_ADOPT"],
    )
