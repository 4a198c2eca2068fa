"""The notary: signs the checkpoints of the two Merkle trees, with the key
it keeps in CHECKPOINT_KEY.

The ingest server's notary signs a checkpoint of each tree that has grown
every CHECKPOINT_INTERVAL seconds, in a thread of its own with its own
connection, never on a callback's path. Before signing it checks that the
tree extends the previous checkpoint, so it never signs two inconsistent
heads. Signing is on when the CHECKPOINT_KEY file exists; ``keygen`` makes
it.
"""

import logging
import os
import sqlite3
import threading
import time

from . import chain, checkpoints, db, merkle, signednote, tlog
from .records import ChainMismatch

logger = logging.getLogger(__name__)

SIGN_TIMEOUT = 5.0  # seconds the notary waits for the writer's transaction


class KeyRefused(ChainMismatch):
    """The signing key cannot be used: the service must not start with it."""


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
            checkpoints.check(
                conn,
                keys,
                self.origin,
                checkpoints.kept(self.directory, keys, self.origin, newest_only=True),
                newest_only=True,
            )
        except checkpoints.Contradicted as exc:
            raise KeyRefused(
                f"this log does not extend what it signed before: {exc}. Was the log"
                " rewritten, moved aside or begun again? Restore the log that signed it"
            ) from None
        self._at_start = {table: merkle.size(conn, table) for table in merkle.TABLES}
        self._signed = {}
        for table in merkle.TABLES:
            row = checkpoints.latest(conn, table)
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
                checkpoints.ship(self.directory, table, size, note)
        if notes:
            for publisher in self.publishers:
                publisher.notify()
        return [note for _, (_, _, note) in notes]

    def _sign_tree(self, conn, table):
        size = merkle.size(conn, table)
        previous = checkpoints.latest(conn, table)
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
            signednote.Checkpoint(checkpoints.origin(self.origin, table), size, root), self.signer
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
                checkpoints.origin(self.origin, table),
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


def from_config(config, publishers=()):
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
