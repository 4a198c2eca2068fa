"""RFC 6962 Merkle trees: the leaf and node hashes, the stored layout, and
inclusion and consistency proofs with their checks. With signednote.py (the
signed checkpoints) and tlogproof.py (proof files), the evidence an auditor
can check without the database, the configuration or this program.

Pure functions, no Flask, no SQL and no threads, over RFC 6962 §2.1: leaf
hash ``SHA-256(0x00 || data)``, node hash ``SHA-256(0x01 || left ||
right)``, inclusion and consistency proofs
(https://www.rfc-editor.org/rfc/rfc6962#section-2.1).

The tree is stored as the hashes of its complete subtrees, in the order
they become known, as Go's checksum database does: so appending a leaf
writes two hashes on average, and any tree head or proof reads O(log n) of
them. The layout and the proof algorithms follow golang.org/x/mod/sumdb/tlog
(Copyright 2019 The Go Authors, BSD-style license), rewritten here. Storage
is the caller's: functions that read stored hashes take
``read_hashes(indexes)``, which returns the hash stored at each index, in
order; it is called once per tree head or proof, never with an empty list,
and with strictly increasing indexes.

Everything that fails to check raises a TlogError saying what failed.
"""

import hashlib

HASH_SIZE = 32


class TlogError(Exception):
    """Evidence that does not check; the message says what failed."""


class ProofError(TlogError):
    """An inclusion or consistency proof that does not lead to the root."""


# RFC 6962 hashes


def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(width):
    """RFC 6962's k: the largest power of two smaller than ``width`` (> 1)."""
    return 1 << ((width - 1).bit_length() - 1)


# Stored hashes


def stored_hash_index(level, n):
    """Where the ``n``th hash of ``level`` is stored (level 0: the leaves).

    Hashes are stored as they become known: leaf i, then the hash of each
    subtree that leaf i completes, lowest first. Before leaf i come the
    hashes of every complete subtree of i leaves, i + i/2 + i/4 + ... of
    them, which is 2i minus the number of 1 bits of i. (The order of
    Crosby and Wallach, "Efficient Data Structures for Tamper-Evident
    Logging", §3.3, as in Go's tlog.StoredHashIndex.)
    """
    last = ((n + 1) << level) - 1  # the leaf that completes this subtree
    return 2 * last - last.bit_count() + level


def stored_hash_count(size):
    """How many hashes a tree of ``size`` leaves stores: one per complete
    subtree, size + size/2 + size/4 + ..."""
    return 2 * size - size.bit_count()


def all_stored_hashes(leaves):
    """Every stored hash of the tree over the ``leaves`` data, in stored
    order, keeping only O(log n) hashes in memory: to build the stored
    hashes of an existing log, or to check them against its rows."""
    tree = Appender()
    for data in leaves:
        yield from tree.append(data)


def frontier_indexes(size):
    """Where the hashes of the largest complete subtrees of the first
    ``size`` leaves are stored, largest first: one per 1 bit of size, and
    all that appending more leaves reads."""
    indexes, start = [], 0
    for level in reversed(range(size.bit_length())):
        if size >> level & 1:
            indexes.append(stored_hash_index(level, start >> level))
            start += 1 << level
    return indexes


class Appender:
    """A tree of ``size`` leaves that grows one leaf at a time, from its
    frontier (the hashes stored at frontier_indexes(size)) alone: so a
    batch of leaves reads the stored hashes once, and a whole log is hashed
    in O(log n) memory."""

    def __init__(self, size=0, frontier=()):
        if len(frontier) != size.bit_count():
            raise ValueError(
                f"a tree of {size} leaves has {size.bit_count()} frontier hashes, not {len(frontier)}"
            )
        self.size = size
        self._complete = list(frontier)  # largest first

    def append(self, data):
        """Add leaf ``data``; returns the hashes to store for it, in order."""
        digest = leaf_hash(data)
        hashes = [digest]
        for _ in range(_completed(self.size)):
            digest = node_hash(self._complete.pop(), digest)
            hashes.append(digest)
        self._complete.append(digest)
        self.size += 1
        return hashes

    def root(self):
        """The tree's root hash: RFC 6962 joins its complete subtrees from the right."""
        if not self._complete:
            return hashlib.sha256().digest()
        digest = self._complete[-1]
        for left in reversed(self._complete[:-1]):
            digest = node_hash(left, digest)
        return digest


def _completed(n):
    """How many subtrees leaf ``n`` completes: one per trailing 1 bit of n."""
    return ((n + 1) & -(n + 1)).bit_length() - 1


def tree_hash(size, read_hashes):
    """The root hash of the first ``size`` leaves, from at most
    1 + log2(size) stored hashes; RFC 6962's SHA-256 of nothing for an
    empty tree (where Go's tlog uses 32 zero bytes)."""
    if size == 0:
        return hashlib.sha256().digest()
    return _subtree_hashes([(0, size)], read_hashes)[0]


def inclusion_proof(size, index, read_hashes):
    """RFC 6962's audit path of leaf ``index`` in the tree of ``size``
    leaves, the leaf's sibling first (Go's tlog.ProveRecord)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
    return _subtree_hashes(_inclusion_path(index, 0, size), read_hashes)


def consistency_proof(m, n, read_hashes):
    """RFC 6962's proof that the tree of ``m`` leaves is a prefix of the
    tree of ``n`` (Go's tlog.ProveTree)."""
    if not 0 < m <= n:
        raise ValueError(f"no consistency proof from {m} to {n} leaves: it needs 0 < m <= n")
    return _subtree_hashes(_consistency_path(m, 0, n), read_hashes)


def _inclusion_path(index, lo, hi):
    """The subtrees (lo, hi) whose hashes make the audit path of leaf
    ``index`` in leaves [lo, hi), lowest first: RFC 6962's PATH."""
    if hi - lo == 1:
        return []
    k = _split(hi - lo)
    if index < lo + k:
        return _inclusion_path(index, lo, lo + k) + [(lo + k, hi)]
    return _inclusion_path(index, lo + k, hi) + [(lo, lo + k)]


def _consistency_path(m, lo, hi):
    """The subtrees whose hashes prove that the first ``m`` leaves of
    [lo, hi) are unchanged, lowest first: RFC 6962's SUBPROOF, whose flag
    is true while the walk has only gone left, that is while lo is 0."""
    if m == hi:
        return [] if lo == 0 else [(lo, hi)]
    k = _split(hi - lo)
    if m <= lo + k:
        return _consistency_path(m, lo, lo + k) + [(lo + k, hi)]
    return _consistency_path(m, lo + k, hi) + [(lo, lo + k)]


def _subtree_hashes(subtrees, read_hashes):
    """The hash of each subtree (lo, hi), from one read of the stored hashes
    of the complete subtrees that make it up (Go's subTreeIndex)."""
    parts = []
    for lo, hi in subtrees:
        part = []
        while lo < hi:
            width = _split(hi - lo + 1)  # the largest power of two <= hi - lo
            part.append(stored_hash_index(width.bit_length() - 1, lo // width))
            lo += width
        parts.append(part)
    indexes = sorted(index for part in parts for index in part)
    stored = dict(zip(indexes, _read(read_hashes, indexes), strict=True))
    hashes = []
    for part in parts:
        # RFC 6962 splits off the largest complete subtree on the left, so
        # the root of a part joins its pieces from the right.
        digest = stored[part[-1]]
        for index in reversed(part[:-1]):
            digest = node_hash(stored[index], digest)
        hashes.append(digest)
    return hashes


def _read(read_hashes, indexes):
    if not indexes:
        return []
    hashes = list(read_hashes(indexes))
    if len(hashes) != len(indexes) or any(len(digest) != HASH_SIZE for digest in hashes):
        raise ValueError(
            f"read_hashes returned {len(hashes)} values for {len(indexes)} indexes,"
            f" not one {HASH_SIZE}-byte hash for each"
        )
    return hashes


# Verifying proofs


def verify_inclusion(size, root, index, leaf, proof):
    """Raise ProofError unless ``proof`` shows the leaf hash ``leaf`` at
    ``index`` in the tree of ``size`` leaves whose root hash is ``root``
    (Go's tlog.CheckRecord)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} cannot be in a tree of {size} leaves")
    path = _inclusion_path(index, 0, size)
    _expect_hashes(proof, len(path), f"an inclusion proof of leaf {index} in {size} leaves")
    digest = leaf
    for (lo, _), sibling in zip(path, proof, strict=True):
        digest = node_hash(digest, sibling) if lo > index else node_hash(sibling, digest)
    if digest != root:
        raise ProofError(
            f"the inclusion proof does not lead from the leaf hash to the root hash"
            f" of the tree of {size} leaves: the leaf, its index, the proof or the"
            f" root was altered"
        )


def verify_consistency(m, m_root, n, n_root, proof):
    """Raise ProofError unless ``proof`` shows that the tree of ``m`` leaves
    with root ``m_root`` is a prefix of the tree of ``n`` leaves with root
    ``n_root`` (Go's tlog.CheckTree)."""
    if m > n:
        raise ProofError(f"a tree of {n} leaves cannot extend a larger tree of {m}")
    if m < 1:
        raise ProofError(f"consistency proofs start from a tree of at least one leaf, not {m}")
    path = _consistency_path(m, 0, n)
    _expect_hashes(proof, len(path), f"a consistency proof from {m} to {n} leaves")
    if m == n and m_root != n_root:
        raise ProofError(
            f"two trees of {m} leaves have different root hashes: the log was rewritten,"
            f" or a root hash altered"
        )
    if path and path[0][1] == m:
        # The proof starts with the hash of a subtree ending at leaf m that
        # both trees share; otherwise the older tree is such a subtree.
        old = new = proof[0]
        path, proof = path[1:], proof[1:]
    else:
        old = new = m_root
    for (lo, _), sibling in zip(path, proof, strict=True):
        if lo >= m:
            new = node_hash(new, sibling)
        else:
            old, new = node_hash(sibling, old), node_hash(sibling, new)
    if old != m_root:
        raise ProofError(
            f"the consistency proof does not lead to the root hash of the earlier"
            f" tree of {m} leaves: its first {m} leaves were rewritten, or the proof altered"
        )
    if new != n_root:
        raise ProofError(
            f"the consistency proof does not lead to the root hash of the later"
            f" tree of {n} leaves: the proof or a root hash was altered"
        )


def _expect_hashes(proof, count, what):
    if len(proof) != count:
        raise ProofError(f"{what} has {count} hashes, not {len(proof)}")
