"""The log's two Merkle trees, in SQLite: one over the event rows, one over
the quarantine rows, each leaf being a row's canonical bytes (chain.py), so
that event id N is leaf N - 1.

Each tree's stored hashes (tlog.py's layout) live in a table of their own,
``event_tree`` or ``quarantine_tree``, whose ids are the stored-hash indexes.
The writer appends a batch's hashes in the batch's transaction (append);
the first start of a log made before there were trees builds them once
(build); verify recomputes them from the rows (Check). A proof reads
O(log n) stored hashes, in one SELECT.
"""

import json
import logging

from . import chain, derived, tlog, verification

TABLES = ("event", "quarantine")
BUILD_BATCH = 10_000  # leaves per INSERT while building a tree

logger = logging.getLogger(__name__)


def append(conn, table, size, leaves):
    """Store the hashes of ``leaves`` (canonical bytes) appended to the tree
    of ``table``, which holds ``size`` leaves: one SELECT of its frontier,
    one INSERT of the new hashes."""
    if not leaves:
        return
    tree = tlog.Appender(size, reader(conn, table)(tlog.frontier_indexes(size)))
    first = tlog.stored_hash_count(size)
    hashes = [digest for data in leaves for digest in tree.append(data)]
    conn.executemany(f"INSERT INTO {table}_tree (id, hash) VALUES (?, ?)", enumerate(hashes, first))


def reader(conn, table):
    """tlog's ``read_hashes`` over the stored hashes of ``table``'s tree."""

    def read_hashes(indexes):
        if not indexes:
            return []
        # One statement text whatever the count, so it is prepared once.
        rows = conn.execute(
            f"SELECT id, hash FROM {table}_tree WHERE id IN (SELECT value FROM json_each(?))"
            " ORDER BY id",
            (json.dumps(indexes),),
        ).fetchall()
        if [row[0] for row in rows] != list(indexes):
            missing = sorted(set(indexes) - {row[0] for row in rows})
            raise chain.ChainBroken(
                f"{table}_tree", missing[0], "a stored hash of the tree is missing"
            )
        for index, digest in rows:
            if type(digest) is not bytes or len(digest) != tlog.HASH_SIZE:
                raise chain.ChainBroken(
                    f"{table}_tree",
                    index,
                    f"hash is {chain.shown(digest)}, expected a BLOB of {tlog.HASH_SIZE} bytes",
                )
        return [row[1] for row in rows]

    return read_hashes


def size(conn, table):
    """How many leaves the tree of ``table`` holds, from how many hashes it
    stores (2n minus the 1 bits of n for n leaves)."""
    stored = conn.execute(f"SELECT coalesce(max(id), -1) + 1 FROM {table}_tree").fetchone()[0]
    for leaves in range(stored // 2, stored // 2 + 65):
        if tlog.stored_hash_count(leaves) == stored:
            return leaves
    raise chain.ChainBroken(
        f"{table}_tree", stored - 1, f"{stored} stored hashes are no whole number of leaves"
    )


def root(conn, table, leaves):
    """The root hash of the first ``leaves`` leaves of ``table``'s tree."""
    return tlog.tree_hash(leaves, reader(conn, table))


def leaf(conn, event_id):
    """Event ``event_id``'s leaf data: its canonical bytes, as stored;
    ChainBroken if a value is not of its column's type."""
    with chain.tolerant_text(conn):
        row = conn.execute("SELECT * FROM event WHERE id = ?", (event_id,)).fetchone()
        members = [
            member[0]
            for member in conn.execute(
                "SELECT account FROM event_member WHERE event_id = ? ORDER BY position", (event_id,)
            )
        ]
    return chain.row_bytes("event", row, members)


def build(conn, key):
    """Build the trees of a log that has rows but no trees yet (made by a
    version before them), verifying both chains as they are hashed, in one
    transaction, and record in ``meta`` that the log has trees: from then
    on, missing tree rows are a failure, never "an old log". Returns
    {table: leaves} for each tree built."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = {
            table: conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]
            for table in TABLES
        }
        missing = [table for table in TABLES if rows[table] and not size(conn, table)]
        recorded = trees_since(conn)
        if missing and recorded is not None:
            raise chain.ChainBroken(
                f"{missing[0]}_tree",
                1,
                f"the log has had trees ({recorded}), but this tree's rows are missing",
            )
        if missing:
            verification.verify(
                conn, key, trees={table: _Builder(conn, table) for table in missing}
            )
        if recorded is None:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('trees', ?)", (_since(rows, missing),)
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    built = {table: rows[table] for table in missing}
    if built:
        logger.info(
            "built the Merkle trees of this log, once: %s",
            ", ".join(f"{table} tree of {leaves} leaves" for table, leaves in built.items()),
        )
    return built


def _since(rows, built):
    if built:
        return "built once over " + " and ".join(
            f"{rows[table]} {table} rows made before trees" for table in built
        )
    if not any(rows.values()):
        return "from the first row"
    return "recorded over trees already built"


def trees_since(conn):
    """What ``meta`` records of the log's trees, or None for a log whose
    trees this version has not built yet."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'trees'").fetchone()
    return None if row is None else row[0]


class _Builder:
    """Stores a tree's hashes while verification.verify walks the rows."""

    def __init__(self, conn, table):
        self.conn, self.table = conn, table
        self.size, self.pending = 0, []

    def add(self, data):
        self.pending.append(data)
        if len(self.pending) == BUILD_BATCH:
            self.finish()

    def finish(self):
        append(self.conn, self.table, self.size, self.pending)
        self.size += len(self.pending)
        self.pending = []


def verify(conn, key=None, anchor=None, then=None):
    """verification.verify, checking the trees too, in one snapshot; then
    ``then(conn, checks)``, in the same snapshot, for what is checked
    against the trees (checkpoints.check); then the derived tables against
    the rows just verified. Returns the Heads and {table: Check}, empty for
    a log whose trees are not built yet."""
    conn.execute("BEGIN")
    try:
        checks = {table: Check(conn, table) for table in TABLES} if _has_trees(conn) else {}
        heads = verification.verify(conn, key, anchor, trees=checks)
        if then is not None:
            then(conn, checks)
        derived.check(conn)
    finally:
        conn.execute("ROLLBACK")
    return heads, checks


def _has_trees(conn):
    """False only for a log made before there were trees, which has no
    tree tables: this version's ingest server creates them and builds the
    trees in its first start. A log with the tables is checked against
    them, so tree rows deleted from it are a failure."""
    return (
        conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            " AND name IN ('event_tree', 'quarantine_tree', 'checkpoint')"
        ).fetchone()[0]
        == 3
    )


class Check:
    """Compares the stored hashes of ``table``'s tree with those recomputed
    from its rows, as verification.verify walks them; then ``root`` is the
    recomputed root hash and ``size`` the number of leaves."""

    def __init__(self, conn, table):
        self.conn, self.table = conn, table
        self.tree = tlog.Appender()
        self.stored = None
        self.root = None

    @property
    def size(self):
        return self.tree.size

    def _next_stored(self):
        if self.stored is None:
            self.stored = self.conn.execute(f"SELECT id, hash FROM {self.table}_tree ORDER BY id")
        return self.stored.fetchone()

    def add(self, data):
        row_id = self.tree.size + 1
        for digest in self.tree.append(data):
            stored = self._next_stored()
            if stored is None:
                raise chain.ChainBroken(
                    self.table, row_id, "it is not in the Merkle tree: the tree stops before it"
                )
            if stored[1] != digest:
                raise chain.ChainBroken(
                    self.table,
                    row_id,
                    f"the Merkle tree does not match the rows up to it ({self.table}_tree"
                    f" hash {stored[0]} differs from the one recomputed)",
                )

    def finish(self):
        extra = self._next_stored()
        if extra is not None:
            raise chain.ChainBroken(
                f"{self.table}_tree",
                extra[0],
                f"the tree has hashes beyond those of its {self.tree.size} rows: rows were removed",
            )
        self.root = self.tree.root()
