"""Signed checkpoints of the two Merkle trees as the log stores them: the
queries that read them and the checks that the log extends every one. What
an auditor keeps off the box and checks proofs against; published.py
serves them.

Checkpoints of the event tree are under LOG_ORIGIN, those of the
quarantine tree under LOG_ORIGIN + "/quarantine", both signed by the key
named LOG_ORIGIN; notary.py signs them.
"""

import logging
import os

from . import chain, merkle, signednote, tlog

logger = logging.getLogger(__name__)

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


class Contradicted(chain.ChainBroken):
    """A checkpoint, stored or kept in CHECKPOINT_DIR, that the log does not
    extend: ``checkpoint <size>: why``."""

    def __init__(self, size, reason):
        Exception.__init__(self, f"checkpoint {size}: {reason}")
        self.table, self.row_id, self.reason = "checkpoint", size, reason


def origin(log_origin, table):
    return log_origin if table == "event" else f"{log_origin}/{table}"


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


def consistency_proof(conn, first, last):
    return tlog.consistency_proof(first, last, merkle.reader(conn, "event"))
