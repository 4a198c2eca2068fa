"""The Merkle tree, its proofs and signed checkpoints: evidence an auditor
can check without the database, the configuration or this program.

Pure functions, no Flask, no SQL and no threads, over four open formats:

- RFC 6962 §2.1: leaf hash ``SHA-256(0x00 || data)``, node hash
  ``SHA-256(0x01 || left || right)``, inclusion and consistency proofs
  (https://www.rfc-editor.org/rfc/rfc6962#section-2.1);
- C2SP signed-note with Ed25519 keys (https://c2sp.org/signed-note);
- C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint);
- C2SP tlog-proof (https://c2sp.org/tlog-proof).

The tree is stored as the hashes of its complete subtrees, in the order
they become known, as Go's checksum database does: so appending a leaf
writes two hashes on average, and any tree head or proof reads O(log n) of
them. The layout and the proof algorithms follow golang.org/x/mod/sumdb/tlog
(Copyright 2019 The Go Authors, BSD-style license), rewritten here; signed
notes follow golang.org/x/mod/sumdb/note, so keys and notes interoperate
with it. Storage is the caller's: functions that read stored hashes take
``read_hashes(indexes)``, which returns the hash stored at each index, in
order; it is called once per tree head or proof, never with an empty list,
and with strictly increasing indexes.

Artifacts that travel (notes, proofs) are bytes; the texts inside them, str.
Everything that fails to check raises a TlogError saying what failed.
"""

import base64
import binascii
import hashlib
import re
import time
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

HASH_SIZE = 32
PROOF_HEADER = "c2sp.org/tlog-proof@v1"

_ED25519 = b"\x01"  # signed-note's signature type byte for Ed25519
# tlog-cosignature/v1: a witness's timestamped Ed25519 cosignature, whose
# signature is a big-endian u64 timestamp and the Ed25519 signature of
# "cosignature/v1\ntime <timestamp>\n" followed by the checkpoint's text.
_COSIGNATURE = b"\x04"
_MAX_SIGNATURES = 100  # as Go's note.Open; the spec asks for at least 16
_MAX_COUNT = 2**63 - 1  # tree sizes and indexes, as Go's int64
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_KEY_ID = re.compile(r"[0-9a-fA-F]{8}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


class TlogError(Exception):
    """Evidence that does not check; the message says what failed."""


class Malformed(TlogError):
    """A key, note, checkpoint or proof that is not in its format."""


class UnknownKey(TlogError):
    """A note with no signature by any of the keys it was checked with."""


class BadSignature(TlogError):
    """A signature by a known key that does not verify: the text was altered."""


class WrongOrigin(TlogError):
    """A checkpoint of another log than the one expected."""


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


# Signed notes


class Verifier:
    """A verifier key, from its text form ``name+keyid+base64(0x01 || public key)``."""

    def __init__(self, text):
        name, _, rest = text.partition("+")
        key_id, _, key = rest.partition("+")
        if not (_valid_name(name) and _KEY_ID.fullmatch(key_id)):
            raise Malformed("a verifier key is name+keyid+base64, the key ID being 8 hex digits")
        raw = decode(key, "the verifier key")
        if raw[:1] not in (_ED25519, _COSIGNATURE) or len(raw) != 33:
            raise Malformed(
                "the verifier key is not an Ed25519 key (type 0x01 and 32 bytes), nor a"
                " witness's cosignature/v1 key (type 0x04)"
            )
        if bytes.fromhex(key_id) != _key_id(name, raw[1:], raw[:1]):
            raise Malformed("the verifier key's ID does not match its name and public key")
        self.cosigner = raw[:1] == _COSIGNATURE
        self.name = name
        self.key_id = key_id.lower()
        self._public = Ed25519PublicKey.from_public_bytes(raw[1:])
        self._raw = raw

    def __str__(self):
        return f"{self.name}+{self.key_id}+{_encode(self._raw)}"

    def verify(self, message, signature):
        if self.cosigner:
            timestamp = int.from_bytes(signature[:8], "big")
            if len(signature) != 72 or timestamp > _MAX_COUNT:
                return False
            message, signature = _cosigned(message, timestamp), signature[8:]
        try:
            self._public.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Signer:
    """A signer key, from the text ``PRIVATE+KEY+name+keyid+base64(0x01 ||
    seed)`` that Go's note.GenerateKey writes, or a witness's with type
    0x04 in place of 0x01. Whoever has it can sign."""

    def __init__(self, text):
        parts = text.split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise Malformed("a signer key is PRIVATE+KEY+name+keyid+base64")
        _, _, name, key_id, key = parts
        if not (_valid_name(name) and _KEY_ID.fullmatch(key_id)):
            raise Malformed(
                "a signer key is PRIVATE+KEY+name+keyid+base64, the key ID being 8 hex digits"
            )
        raw = decode(key, "the signer key")
        if raw[:1] not in (_ED25519, _COSIGNATURE) or len(raw) != 33:
            raise Malformed("the signer key is not an Ed25519 key (type 0x01 and a 32-byte seed)")
        self._private = Ed25519PrivateKey.from_private_bytes(raw[1:])
        public = self._private.public_key().public_bytes_raw()
        if bytes.fromhex(key_id) != _key_id(name, public, raw[:1]):
            raise Malformed("the signer key's ID does not match its name and public key")
        self.name = name
        self.key_id = key_id.lower()
        self.verifier = Verifier(f"{name}+{self.key_id}+{_encode(raw[:1] + public)}")

    def sign(self, message):
        """A cosigner's signature is timestamped now, as tlog-cosignature/v1 says."""
        if not self.verifier.cosigner:
            return self._private.sign(message)
        timestamp = int(time.time())
        return timestamp.to_bytes(8, "big") + self._private.sign(_cosigned(message, timestamp))


def _cosigned(message, timestamp):
    return b"cosignature/v1\ntime %d\n" % timestamp + message


def generate_key(name, witness=False):
    """A new Ed25519 key named ``name``: its signer and verifier key texts,
    as Go's note.GenerateKey makes them; a witness's cosignature/v1 key
    with ``witness``."""
    if not _valid_name(name):
        raise ValueError(f"{name!r} cannot name a key: it must be non-empty, without spaces or '+'")
    kind = _COSIGNATURE if witness else _ED25519
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    key_id = _key_id(name, public, kind).hex()
    seed = private.private_bytes_raw()
    return (
        f"PRIVATE+KEY+{name}+{key_id}+{_encode(kind + seed)}",
        f"{name}+{key_id}+{_encode(kind + public)}",
    )


class Note(NamedTuple):
    text: str
    signers: tuple  # the Verifiers whose signatures verified


def sign_note(text, signer):
    """The note of ``text``, signed by ``signer``."""
    if not text.endswith("\n") or _CONTROL.search(text):
        raise ValueError("a note's text ends with a newline and has no other control characters")
    return text.encode("utf-8") + b"\n" + signature_line(text, signer)


def signature_line(text, signer):
    """``signer``'s signature line for a note of ``text``: what a witness
    answers, and what a log appends to a note it already signed."""
    signature = _encode(bytes.fromhex(signer.key_id) + signer.sign(text.encode("utf-8")))
    return f"\u2014 {signer.name} {signature}\n".encode()


def signature_time(line):
    """The timestamp a cosignature line carries, in seconds."""
    return int.from_bytes(
        decode(line.decode("utf-8").split(" ")[2].strip(), "the line")[4:12], "big"
    )


def open_note(note, verifiers):
    """The text of the note, once signed by at least one of ``verifiers``.

    As the spec has it: signatures by other keys are ignored, and one by a
    known key that does not verify refuses the whole note.
    """
    text, lines = split_note(note)
    if len(lines) > _MAX_SIGNATURES:
        raise Malformed(f"the note has more than {_MAX_SIGNATURES} signatures")
    known = {(verifier.name, verifier.key_id): verifier for verifier in verifiers}
    message = text.encode("utf-8")
    signers, others = {}, []
    for line in lines:
        dash, _, rest = line.partition(" ")
        name, _, signature = rest.partition(" ")
        if dash != "\u2014" or not _valid_name(name):
            raise Malformed(
                "a signature line is an em dash, a space, a key name, a space and base64"
            )
        signature = decode(signature, f"the signature by {name}")
        if len(signature) < 5:
            raise Malformed(f"the signature by {name} is too short")
        key_id = signature[:4].hex()
        verifier = known.get((name, key_id))
        if verifier is None:
            others.append(f"{name}+{key_id}")
        elif not verifier.verify(message, signature[4:]):
            raise BadSignature(
                f"the signature by {name}+{key_id} does not verify: the note's text was altered"
            )
        else:
            signers[name, key_id] = verifier
    if not signers:
        expected = ", ".join(f"{v.name}+{v.key_id}" for v in known.values()) or "no key"
        raise UnknownKey(
            f"the note is not signed by {expected}: its signatures are by {', '.join(others)}"
        )
    return Note(text, tuple(signers.values()))


def split_note(note):
    """The text of the note and its signature lines, none of them checked."""
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("the note is not UTF-8") from None
    if _CONTROL.search(decoded):
        raise Malformed("the note has control characters other than newlines")
    split = decoded.rfind("\n\n")
    if split < 0:
        raise Malformed("the note has no blank line before its signatures")
    text, block = decoded[: split + 1], decoded[split + 2 :]
    if not block.endswith("\n"):
        raise Malformed("the note does not end with a signature line")
    return text, block[:-1].split("\n")


def _key_id(name, public, kind=_ED25519):
    """signed-note's key ID, for an Ed25519 public key of signature type ``kind``."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + kind + public).digest()[:4]


def _valid_name(name):
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


# Checkpoints


class Checkpoint(NamedTuple):
    origin: str
    size: int
    root: bytes
    extensions: tuple = ()


def format_checkpoint(checkpoint):
    """The checkpoint's note text: origin, tree size, base64 root hash, and
    any extension lines."""
    origin, size, root, extensions = checkpoint
    lines = [origin, str(size), _encode(root), *extensions]
    if (
        any(not line or "\n" in line for line in lines)
        or not 0 <= size <= _MAX_COUNT
        or len(root) != HASH_SIZE
    ):
        raise ValueError(
            "a checkpoint is an origin, a tree size, a 32-byte root hash and"
            " extension lines, none of them empty or with a newline"
        )
    return "".join(f"{line}\n" for line in lines)


def parse_checkpoint(text):
    if not text.endswith("\n"):
        raise Malformed("the checkpoint does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or "" in lines:
        raise Malformed(
            "a checkpoint is at least three non-empty lines: origin, tree size and root hash"
        )
    origin, size, root, *extensions = lines
    return Checkpoint(
        origin,
        parse_count(size, "the tree size"),
        _decode_hash(root, "the root hash"),
        tuple(extensions),
    )


def sign_checkpoint(checkpoint, signer):
    return sign_note(format_checkpoint(checkpoint), signer)


def open_checkpoint(note, verifiers, origin=None):
    """The checkpoint in ``note`` and the key that signed it, once signed
    by one of ``verifiers`` for the log ``origin``: by default the name of
    that key, which the spec says should be the log's origin."""
    text, signers = open_note(note, verifiers)
    checkpoint = parse_checkpoint(text)
    expected = signers[0].name if origin is None else origin
    if checkpoint.origin != expected:
        raise WrongOrigin(f"the checkpoint is of the log {checkpoint.origin!r}, not {expected!r}")
    return checkpoint, signers[0]


# Proof files


class Proof(NamedTuple):
    index: int
    hashes: tuple
    checkpoint: bytes  # the signed checkpoint note
    extra: bytes = None


class Proved(NamedTuple):
    """What a proof file proved: the leaf data ``leaf`` is leaf ``index`` of
    the tree of ``size`` leaves of the log ``origin``, signed by ``key_id``."""

    index: int
    size: int
    origin: str
    key_id: str
    leaf: bytes
    witnesses: tuple = ()  # the names of the witnesses whose cosignatures verified


def format_proof(proof):
    """The tlog-proof file: header, ``extra`` when there is some, ``index``,
    the audit path, a blank line, the signed checkpoint."""
    index, hashes, checkpoint, extra = proof
    lines = [PROOF_HEADER]
    if extra is not None:
        lines.append(f"extra {_encode(extra)}")
    lines.append(f"index {index}")
    lines.extend(_encode(digest) for digest in hashes)
    return "".join(f"{line}\n" for line in lines).encode("ascii") + b"\n" + checkpoint


def parse_proof(data):
    head, blank, checkpoint = data.partition(b"\n\n")
    if not blank:
        raise Malformed("the proof has no blank line before its checkpoint")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise Malformed("the proof's lines before the checkpoint are not ASCII") from None
    if lines.pop(0) != PROOF_HEADER:
        raise Malformed(f"the proof does not start with the line {PROOF_HEADER}")
    extra = None
    if lines and lines[0].startswith("extra "):
        extra = decode(lines.pop(0).removeprefix("extra "), "the extra data")
    if not lines or not lines[0].startswith("index "):
        raise Malformed("the proof has no index line")
    index = parse_count(lines.pop(0).removeprefix("index "), "the index")
    hashes = tuple(
        _decode_hash(line, f"proof hash {number}") for number, line in enumerate(lines, 1)
    )
    return Proof(index, hashes, checkpoint, extra)


def check_proof(data, verifier_key, origin=None, witnesses=(), quorum=0):
    """Check a tlog-proof file whose ``extra`` is the leaf data: its
    checkpoint's signature by ``verifier_key`` (text form), its origin (by
    default the key's name), the cosignatures of at least ``quorum`` of
    ``witnesses`` (Verifiers), and the inclusion of the leaf. Returns Proved."""
    verifier = Verifier(verifier_key)
    if verifier.cosigner:
        raise Malformed("the key is a witness's cosignature key; give the log's key")
    proof = parse_proof(data)
    if proof.extra is None:
        raise Malformed("the proof has no extra line: it carries no leaf data to check")
    checkpoint, _ = open_checkpoint(proof.checkpoint, [verifier], origin)
    cosigners = check_cosignatures(proof.checkpoint, witnesses, quorum)
    verify_inclusion(
        checkpoint.size, checkpoint.root, proof.index, leaf_hash(proof.extra), proof.hashes
    )
    return Proved(
        proof.index,
        checkpoint.size,
        checkpoint.origin,
        verifier.key_id,
        proof.extra,
        tuple(witness.name for witness in cosigners),
    )


def check_cosignatures(note, witnesses, quorum):
    """The ``witnesses`` whose cosignatures on ``note`` verify; ProofError
    unless there are at least ``quorum``. A witness vouches that the
    checkpoint extends every other it cosigned of that log."""
    cosigners = []
    for witness in {(witness.name, witness.key_id): witness for witness in witnesses}.values():
        try:
            open_note(note, [witness])
        except TlogError:
            continue
        cosigners.append(witness)
    if len(cosigners) < quorum:
        names = ", ".join(witness.name for witness in cosigners) or "none"
        raise ProofError(
            f"the checkpoint is cosigned by {len(cosigners)} of the {len(witnesses)} witnesses"
            f" given ({names}), fewer than the quorum of {quorum}"
        )
    return cosigners


# Hashes as text, one base64 hash per line (consistency proofs over HTTP)


def format_hashes(hashes):
    return "".join(f"{_encode(digest)}\n" for digest in hashes).encode("ascii")


def parse_hashes(data):
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise Malformed("the hashes are not ASCII") from None
    if text and not text.endswith("\n"):
        raise Malformed("the last hash does not end with a newline")
    lines = text[:-1].split("\n") if text else []
    return [_decode_hash(line, f"hash {number}") for number, line in enumerate(lines, 1)]


# Encodings


def _encode(data):
    return base64.b64encode(data).decode("ascii")


def decode(text, what):
    """Standard base64, in its one canonical spelling: no other text decodes
    to the same bytes, so no altered byte of a file goes unnoticed."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Malformed(f"{what} is not base64") from None
    if _encode(data) != text:
        raise Malformed(f"{what} is not base64 in its canonical form")
    return data


def _decode_hash(text, what):
    digest = decode(text, what)
    if len(digest) != HASH_SIZE:
        raise Malformed(f"{what} is {len(digest)} bytes, not {HASH_SIZE}")
    return digest


def parse_count(text, what):
    if not _DECIMAL.fullmatch(text) or int(text) > _MAX_COUNT:
        raise Malformed(f"{what} is not a decimal number without leading zeros below 2**63")
    return int(text)
