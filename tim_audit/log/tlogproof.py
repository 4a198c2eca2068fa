"""Proofs as they travel: C2SP tlog-proof files (https://c2sp.org/tlog-proof),
which carry a leaf, its audit path and the signed checkpoint it leads to,
and consistency proofs as text, one base64 hash per line.

Pure functions, no Flask, no SQL and no threads. Everything that fails to
check raises a tlog.TlogError saying what failed.
"""

from typing import NamedTuple

from . import signednote, tlog

PROOF_HEADER = "c2sp.org/tlog-proof@v1"


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
        lines.append(f"extra {signednote.encode(extra)}")
    lines.append(f"index {index}")
    lines.extend(signednote.encode(digest) for digest in hashes)
    return "".join(f"{line}\n" for line in lines).encode("ascii") + b"\n" + checkpoint


def parse_proof(data):
    head, blank, checkpoint = data.partition(b"\n\n")
    if not blank:
        raise signednote.Malformed("the proof has no blank line before its checkpoint")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise signednote.Malformed(
            "the proof's lines before the checkpoint are not ASCII"
        ) from None
    if lines.pop(0) != PROOF_HEADER:
        raise signednote.Malformed(f"the proof does not start with the line {PROOF_HEADER}")
    extra = None
    if lines and lines[0].startswith("extra "):
        extra = signednote.decode(lines.pop(0).removeprefix("extra "), "the extra data")
    if not lines or not lines[0].startswith("index "):
        raise signednote.Malformed("the proof has no index line")
    index = signednote.parse_count(lines.pop(0).removeprefix("index "), "the index")
    hashes = tuple(
        signednote.decode_hash(line, f"proof hash {number}") for number, line in enumerate(lines, 1)
    )
    return Proof(index, hashes, checkpoint, extra)


def check_proof(data, verifier_key, origin=None, witnesses=(), quorum=0):
    """Check a tlog-proof file whose ``extra`` is the leaf data: its
    checkpoint's signature by ``verifier_key`` (text form), its origin (by
    default the key's name), the cosignatures of at least ``quorum`` of
    ``witnesses`` (Verifiers), and the inclusion of the leaf. Returns Proved."""
    verifier = signednote.Verifier(verifier_key)
    if verifier.cosigner:
        raise signednote.Malformed("the key is a witness's cosignature key; give the log's key")
    proof = parse_proof(data)
    if proof.extra is None:
        raise signednote.Malformed("the proof has no extra line: it carries no leaf data to check")
    checkpoint, _ = signednote.open_checkpoint(proof.checkpoint, [verifier], origin)
    cosigners = signednote.check_cosignatures(proof.checkpoint, witnesses, quorum)
    tlog.verify_inclusion(
        checkpoint.size, checkpoint.root, proof.index, tlog.leaf_hash(proof.extra), proof.hashes
    )
    return Proved(
        proof.index,
        checkpoint.size,
        checkpoint.origin,
        verifier.key_id,
        proof.extra,
        tuple(witness.name for witness in cosigners),
    )


# Hashes as text, one base64 hash per line (consistency proofs over HTTP)


def format_hashes(hashes):
    return "".join(f"{signednote.encode(digest)}\n" for digest in hashes).encode("ascii")


def parse_hashes(data):
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise signednote.Malformed("the hashes are not ASCII") from None
    if text and not text.endswith("\n"):
        raise signednote.Malformed("the last hash does not end with a newline")
    lines = text[:-1].split("\n") if text else []
    return [signednote.decode_hash(line, f"hash {number}") for number, line in enumerate(lines, 1)]
