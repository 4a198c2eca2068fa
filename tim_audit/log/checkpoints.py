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

from . import chain, db, merkle, signednote, tlog, tlogproof
from .auditlog import ChainMismatch
from .db import get_db

logger = logging.getLogger(__name__)

bp = Blueprint("checkpoints", __name__)

SIGN_TIMEOUT = 5.0  # seconds the notary waits for the writer's transaction


MAX_NOTE = 64 * 1024  # bytes read of a checkpoint file in CHECKPOINT_DIR

# The type of each stored column, as schema.sql declares it: a table made
# again without STRICT can hold anything, and verify names what it finds.
CHECKPOINT_TYPES = {
    "tree": "TEXT",
    "size": "INTEGER",
    "root": "BLOB",
    "signed_at": "INTEGER",
    "key": "TEXT",
    "note": "BLOB",
}
COSIGNATURE_TYPES = {
    "checkpoint_id": "INTEGER",
    "witness": "TEXT",
    "cosigned_at": "INTEGER",
    "line": "BLOB",
}
# A cosignature/v1 signature: key ID, timestamp, Ed25519 signature.
COSIGNATURE_SIZE = 4 + 8 + 64


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
    """Where rotate-key records the rotations the operator meant: every key
    the log was signed with, oldest first, one per line."""
    return f"{key_path}.rotation"


def read_signer(path, log_origin):
    """The signer key in the file at ``path``, which must be named ``log_origin``."""
    try:
        with open(path, encoding="ascii") as file:
            signer = signednote.Signer(file.read().strip())
    except (OSError, UnicodeDecodeError, signednote.Malformed) as exc:
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


def verifiers(key_path, log_origin, verifier_key=None):
    """The verifier keys of this log, from outside its file: the key at
    ``key_path`` (else CHECKPOINT_VERIFIER_KEY's ``verifier_key``, for a
    server without the private key) and the one it was rotated from on
    purpose. None when there is no key to check with, never the keys the
    database names."""
    if log_origin is None:
        return None
    if os.path.exists(key_path):
        keys = [read_signer(key_path, log_origin).verifier]
    elif verifier_key:
        keys = [
            log_verifier(text)
            for text in ([verifier_key] if isinstance(verifier_key, str) else verifier_key)
        ]
    else:
        return None
    try:
        with open(rotation_path(key_path), encoding="ascii") as file:
            keys += [log_verifier(text) for text in file.read().split()]
    except (OSError, UnicodeDecodeError, signednote.Malformed):
        pass
    return keys


def log_verifier(text):
    """A log's verifier key (Ed25519, type 0x01); a witness's cosignature
    key signs no checkpoint."""
    verifier = signednote.Verifier(text)
    if verifier.cosigner:
        raise signednote.Malformed(
            f"{verifier.name}+{verifier.key_id} is a witness's cosignature key, not a log's key"
        )
    return verifier


def kept(directory, keys, log_origin, newest_only=False):
    """The checkpoints of this log in ``directory`` that one of ``keys``
    signed: (path, table, checkpoint); with ``newest_only``, the largest of
    each tree (by its file name). Read before a snapshot of the log begins,
    so that none is newer than the snapshot. Files of other logs, or that
    do not verify, are not ours to judge."""
    if directory is None or keys is None:
        return []
    try:
        names = os.listdir(directory)
    except OSError as exc:
        raise Contradicted(0, f"cannot read CHECKPOINT_DIR {directory}: {exc.strerror}") from None
    sizes = {}
    for name in names:
        table, _, size = name.removesuffix(".checkpoint").partition("-")
        if name.endswith(".checkpoint") and table in merkle.TABLES and size.isdigit():
            sizes.setdefault(table, []).append((int(size), name))
    found = []
    for table, files in sizes.items():
        for _, name in sorted(files)[-1:] if newest_only else sorted(files):
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as file:
                    note = file.read(MAX_NOTE)
                signed, _ = signednote.open_checkpoint(note, keys, origin(log_origin, table))
            except (OSError, tlog.TlogError):
                continue
            found.append((path, table, signed))
    return found


def check(conn, keys, log_origin, kept=(), witnesses=(), newest_only=False):
    """Check the stored checkpoints, and ``kept`` (from kept()), against the
    trees as stored (merkle.verify has checked them against the rows): each
    is signed by one of ``keys`` (unless None) and its root is the tree's
    root at its size; and every stored cosignature: well-formed, and
    verified with ``witnesses`` (Verifiers, as configured) where it is
    theirs. With ``newest_only``, the newest stored checkpoint of each tree
    alone (the notary's start). Returns how many checkpoints were checked;
    Contradicted names the first that the log does not extend."""
    sizes = {table: merkle.size(conn, table) for table in merkle.TABLES}
    _check_rows(conn)
    rows = (
        [row for row in (latest(conn, table) for table in merkle.TABLES) if row is not None]
        if newest_only
        else conn.execute("SELECT id, tree, size, root, key, note FROM checkpoint ORDER BY id")
    )
    count = 0
    for row in rows:
        table, size = row["tree"], row["size"]
        if keys is not None:
            try:
                signed, signer = signednote.open_checkpoint(
                    chain.as_bytes(row["note"]), keys, origin(log_origin, table)
                )
            except tlog.TlogError as exc:
                raise Contradicted(
                    size, f"the stored {table} checkpoint does not verify: {exc}"
                ) from None
            if (signed.size, signed.root, str(signer)) != (size, row["root"], row["key"]):
                raise Contradicted(size, f"the stored {table} checkpoint's row and note differ")
        _extends(conn, table, sizes[table], size, row["root"], f"the stored {table} checkpoint")
        count += 1
    if not newest_only:
        _check_cosignatures(conn, witnesses)
    for table in merkle.TABLES:
        first = conn.execute(
            "SELECT value FROM meta WHERE key = ?", (f"signed:{table}",)
        ).fetchone()
        if first is not None and latest(conn, table) is None:
            raise Contradicted(
                int(first[0]), f"the log records a first {table} checkpoint, but none is stored"
            )
    for path, table, signed in kept:
        _extends(conn, table, sizes[table], signed.size, signed.root, path)
        count += 1
    return count


def _check_rows(conn):
    """Every stored checkpoint and cosignature value is of its column's
    type, and names a tree there is; every cosignature is of a stored
    checkpoint of the event tree. What the file says is checked against
    the keys after this; this makes sure there is something to check."""
    with chain.tolerant_text(conn):
        for row in conn.execute(f"SELECT id, {', '.join(CHECKPOINT_TYPES)} FROM checkpoint"):
            chain.check_types("checkpoint", row[0], tuple(row)[1:], CHECKPOINT_TYPES)
            if row["tree"] not in merkle.TABLES:
                raise chain.ChainBroken(
                    "checkpoint", row[0], f"tree is {chain.shown(row['tree'])}, expected a tree"
                )
        for row in conn.execute(
            f"SELECT cosignature.id, {', '.join(f'cosignature.{c}' for c in COSIGNATURE_TYPES)},"
            " checkpoint.tree FROM cosignature"
            " LEFT JOIN checkpoint ON checkpoint.id = cosignature.checkpoint_id"
        ):
            check_attached("cosignature", row[0], tuple(row)[1:-1], COSIGNATURE_TYPES, row["tree"])


def check_attached(table, row_id, values, types, tree):
    """A row that belongs to an event checkpoint (a cosignature, a
    timestamp): of its columns' types, checkpoint_id first, and of a stored
    checkpoint whose tree is ``tree`` (None when there is none)."""
    chain.check_types(table, row_id, values, types)
    if tree != "event":
        raise chain.ChainBroken(
            table, row_id, f"checkpoint_id {values[0]} is no stored checkpoint of the events"
        )


def _check_cosignatures(conn, witnesses):
    """Each stored line must be one cosignature/v1 line, by the witness its
    row names and at the time it records; one by a configured witness must
    verify over its checkpoint."""
    configured = {(witness.name, witness.key_id): witness for witness in witnesses}
    for row in conn.execute(
        "SELECT cosignature.id, cosignature.witness, cosignature.cosigned_at, checkpoint.note,"
        " cosignature.line"
        " FROM cosignature JOIN checkpoint ON checkpoint.id = cosignature.checkpoint_id"
        " ORDER BY cosignature.id"
    ):
        line = row["line"]
        try:
            text, _ = signednote.split_note(row["note"])
            name, signature = _signer_of(line)
            key_id = signature[:4].hex()
            if len(signature) != COSIGNATURE_SIZE:
                raise signednote.Malformed("it is not a cosignature/v1 signature")
            named = signednote.Verifier(row["witness"])
            if (named.name, named.key_id) != (name, key_id):
                raise signednote.Malformed(
                    f"it is not by {named.name}+{named.key_id}, as its row says"
                )
            made = int.from_bytes(signature[4:12], "big")
            if made != row["cosigned_at"]:
                raise signednote.Malformed(f"it was made at {made}, not at its cosigned_at")
            witness = configured.get((name, key_id))
            if witness is not None:
                signednote.open_note(text.encode("utf-8") + b"\n" + line, [witness])
        except tlog.TlogError as exc:
            raise chain.ChainBroken(
                "cosignature", row["id"], f"the line ({line[:60]!r}) does not verify: {exc}"
            ) from None


def _signer_of(line):
    """The name and the signature (key ID first) of a signature line;
    Malformed if it is none."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise signednote.Malformed("the line is not UTF-8") from None
    dash, _, rest = text.removesuffix("\n").partition(" ")
    name, _, signature = rest.partition(" ")
    if dash != "\u2014" or not text.endswith("\n") or "\n" in text[:-1]:
        raise signednote.Malformed("it is not one signature line")
    signature = signednote.decode(signature, "the signature")
    if len(signature) < 4:
        raise signednote.Malformed("the signature has no key ID")
    return name, signature


def _extends(conn, table, tree_size, size, root, what):
    if size > tree_size:
        raise Contradicted(
            size, f"{what} records {size} leaves, but the {table} tree has {tree_size}"
        )
    if size and merkle.root(conn, table, size) != root:
        raise Contradicted(size, f"{what} has another root than the {table} tree at {size} leaves")


def latest(conn, table="event"):
    """The newest checkpoint of ``table``'s tree, or None."""
    return conn.execute(
        "SELECT id, tree, size, root, signed_at, key, note FROM checkpoint WHERE tree = ?"
        " ORDER BY id DESC LIMIT 1",
        (table,),
    ).fetchone()


def cosigned(conn, checkpoint):
    """The checkpoint's note with the cosignatures gathered for it: what
    GET /checkpoint serves, and what proofs and archives carry. A stored
    line that is no signature line is left out (verify names it), so the
    note stays one that every verifier can read."""
    lines = conn.execute(
        "SELECT line FROM cosignature WHERE checkpoint_id = ? ORDER BY id", (checkpoint["id"],)
    )
    return chain.as_bytes(checkpoint["note"]) + b"".join(
        chain.as_bytes(line) for (line,) in lines if _is_signature_line(chain.as_bytes(line))
    )


def _is_signature_line(line):
    try:
        _signer_of(line)
    except signednote.Malformed:
        return False
    return True


def best(conn, witness_keys=(), quorum=0, stamped=False, look_back=16):
    """The newest event checkpoint, among the ``look_back`` newest, that at
    least ``quorum`` of ``witness_keys`` cosigned and, with ``stamped``, that
    has a timestamp: the one proofs and archives should use, as the newest
    is bare until its witnesses and the TSA answer. Else the newest. A row
    whose size is no integer (only tampering stores one; verify names it)
    is passed over."""
    rows = conn.execute(
        "SELECT id, tree, size, root, signed_at, key, note FROM checkpoint"
        " WHERE tree = 'event' AND typeof(size) = 'integer' ORDER BY id DESC LIMIT ?",
        (look_back,),
    ).fetchall()
    for row in rows:
        cosigners = {
            key
            for (key,) in conn.execute(
                "SELECT witness FROM cosignature WHERE checkpoint_id = ?", (row["id"],)
            )
        }
        stamp = conn.execute("SELECT 1 FROM timestamp WHERE checkpoint_id = ?", (row["id"],))
        if len(cosigners & set(witness_keys)) >= quorum and (
            not stamped or stamp.fetchone() is not None
        ):
            return row
    return rows[0] if rows else None


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
        # What it knows from its own memory, not the file's: the trees' sizes
        # when it started, what it signed (or checked at start) last, and
        # the refusal it last logged of each tree (logged once, not each round).
        self._at_start = {}
        self._signed = {}
        self._refused = {}
        self._stopping = None
        self._thread = None

    def open(self, conn):
        """Load the key, if there is one, and refuse it unless it signed the
        latest checkpoint or the operator rotated to it on purpose; refuse a
        log that does not extend its newest stored checkpoints or the newest
        ones kept in CHECKPOINT_DIR; and note what the trees held when the
        notary started, from outside the file: its memory."""
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
        if self.directory is not None and not os.path.isdir(self.directory):
            raise KeyRefused(
                f"CHECKPOINT_DIR {self.directory} does not exist: create it (writable by"
                " the user running tim-audit), or unset CHECKPOINT_DIR"
            )
        keys = verifiers(self.key_path, self.origin)
        try:
            check(
                conn,
                keys,
                self.origin,
                kept(self.directory, keys, self.origin, newest_only=True),
                newest_only=True,
            )
        except Contradicted as exc:
            raise KeyRefused(
                f"this log does not extend what it signed before: {exc}. Was the log"
                " rewritten, moved aside or begun again? Restore the log that signed it"
            ) from None
        self._at_start = {table: merkle.size(conn, table) for table in merkle.TABLES}
        self._signed = {}
        for table in merkle.TABLES:
            row = latest(conn, table)
            if row is not None:
                self._signed[table] = (row["size"], row["root"])
        if self.adopt:
            logger.warning(
                "CHECKPOINT_ADOPT is set: the first checkpoint of a tree may be signed over"
                " rows no checkpoint vouched for (%s); unset it once it is",
                ", ".join(f"{size} {table} rows" for table, size in self._at_start.items()),
            )

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
        if rotation is None or rotation[-2:] != [row[0], current]:
            raise KeyRefused(
                f"the checkpoint key {self.key_path} ({current}) is not the key that signed"
                f" the latest checkpoint ({row[0]}): put that key back, or rotate to a new"
                " one on purpose with: tim-audit rotate-key"
            )
        logger.warning("checkpoint key rotated on purpose: from %s to %s", row[0], current)

    def start(self):
        """Start signing, and the publishers; each start has a stop event of
        its own, so a notary reopened after close() signs again."""
        if self.signer is None or self._thread is not None:
            return
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stopping,), name="tim-audit notary", daemon=True
        )
        self._thread.start()
        for publisher in self.publishers:
            publisher.start()

    def close(self):
        """Stop, after a last round: what was written since the last one is
        signed now, so a log stopped before its first checkpoint is not left
        for CHECKPOINT_ADOPT at the next start."""
        for publisher in self.publishers:
            publisher.stop()
        if self._thread is not None:
            self._stopping.set()
            self._thread.join()
            self._thread = None
            try:
                conn = db.connect(self.path, timeout=SIGN_TIMEOUT)
                try:
                    self.sign(conn)
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                logger.error("no checkpoint signed at shutdown: %s", exc)
        for publisher in self.publishers:
            publisher.close()

    def _run(self, stopping):
        conn = None
        while not stopping.wait(self.interval):
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
        for table, (size, root, note) in notes:
            # Known as signed once committed: a round rolled back signed nothing.
            self._signed[table] = (size, root)
            if self.directory is not None:
                ship(self.directory, table, size, note)
        if notes:
            for publisher in self.publishers:
                publisher.notify()
        return [note for _, (_, _, note) in notes]

    def _sign_tree(self, conn, table):
        size = merkle.size(conn, table)
        previous = latest(conn, table)
        key = str(self.signer.verifier)
        if size == 0 or previous is not None and (previous["size"], previous["key"]) == (size, key):
            return None
        refusal = self._refusal(conn, table, previous)
        if refusal is not None:
            if refusal != self._refused.get(table):
                logger.error("refusing to sign the %s tree of %d leaves: %s", table, size, refusal)
            self._refused[table] = refusal
            return None
        self._refused.pop(table, None)
        root = merkle.root(conn, table, size)
        if previous is None:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)", (f"signed:{table}", str(size))
            )
            if self._at_start[table]:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    (f"adopted:{table}", f"{self._at_start[table]} rows, by CHECKPOINT_ADOPT"),
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
        note = signednote.sign_checkpoint(
            signednote.Checkpoint(origin(self.origin, table), size, root), self.signer
        )
        conn.execute(
            "INSERT INTO checkpoint (tree, size, root, signed_at, key, note) VALUES (?, ?, ?, ?, ?, ?)",
            (table, size, root, int(time.time() * 1000), key, note),
        )
        return size, root, note

    def _refusal(self, conn, table, previous):
        """Why the tree must not be signed now, or None. The newest stored
        checkpoint must be the one this notary knows it signed (or found
        and checked at start), as its note says; a first one is signed
        only over rows this notary saw written, or over older ones adopted
        on purpose (CHECKPOINT_ADOPT)."""
        known = self._signed.get(table)
        if previous is None:
            if known is not None:
                return f"its checkpoint of {known[0]} leaves is gone from the log"
            if conn.execute("SELECT 1 FROM meta WHERE key = ?", (f"signed:{table}",)).fetchone():
                return "the log records a first checkpoint of it, but none is stored"
            if self._at_start[table] and not self.adopt:
                return (
                    f"it had {self._at_start[table]} leaves when signing started, and nothing"
                    " outside the file vouches for them. If the log is yours, adopt it on"
                    " purpose: start once with TIM_AUDIT_CHECKPOINT_ADOPT=true"
                )
            return None
        try:
            signed, _ = signednote.open_checkpoint(
                chain.as_bytes(previous["note"]),
                verifiers(self.key_path, self.origin),
                origin(self.origin, table),
            )
        except tlog.TlogError as exc:
            return f"its newest stored checkpoint does not verify: {exc}"
        if (signed.size, signed.root) != (previous["size"], previous["root"]):
            return "its newest stored checkpoint's row and note differ"
        if known is not None and known[0] >= signed.size and known != (signed.size, signed.root):
            return (
                f"its newest stored checkpoint ({signed.size} leaves) is not the one it signed"
                f" last ({known[0]} leaves): the log's checkpoints were changed while it ran"
            )
        return None


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
    return _text(tlogproof.format_hashes(consistency_proof(conn, first, last)))


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
