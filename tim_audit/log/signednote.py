"""Signed notes with Ed25519 keys, the checkpoints they carry and the
witnesses' cosignatures: what says who vouched for which tree head.

Pure functions, no Flask, no SQL and no threads, over three open formats:

- C2SP signed-note (https://c2sp.org/signed-note), following
  golang.org/x/mod/sumdb/note (Copyright 2019 The Go Authors, BSD-style
  license), so keys and notes interoperate with it;
- C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint);
- C2SP tlog-cosignature (https://c2sp.org/tlog-cosignature).

Notes are bytes; the texts inside them, str. Everything that fails to check
raises a tlog.TlogError saying what failed.
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

from . import tlog

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


class Malformed(tlog.TlogError):
    """A key, note, checkpoint or proof that is not in its format."""


class UnknownKey(tlog.TlogError):
    """A note with no signature by any of the keys it was checked with."""


class BadSignature(tlog.TlogError):
    """A signature by a known key that does not verify: the text was altered."""


class WrongOrigin(tlog.TlogError):
    """A checkpoint of another log than the one expected."""


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
        return f"{self.name}+{self.key_id}+{encode(self._raw)}"

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
        self.verifier = Verifier(f"{name}+{self.key_id}+{encode(raw[:1] + public)}")

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
        f"PRIVATE+KEY+{name}+{key_id}+{encode(kind + seed)}",
        f"{name}+{key_id}+{encode(kind + public)}",
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
    signature = encode(bytes.fromhex(signer.key_id) + signer.sign(text.encode("utf-8")))
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
    lines = [origin, str(size), encode(root), *extensions]
    if (
        any(not line or "\n" in line for line in lines)
        or not 0 <= size <= _MAX_COUNT
        or len(root) != tlog.HASH_SIZE
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
        decode_hash(root, "the root hash"),
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


def check_cosignatures(note, witnesses, quorum):
    """The ``witnesses`` whose cosignatures on ``note`` verify; tlog.ProofError
    unless there are at least ``quorum``. A witness vouches that the
    checkpoint extends every other it cosigned of that log."""
    cosigners = []
    for witness in {(witness.name, witness.key_id): witness for witness in witnesses}.values():
        try:
            open_note(note, [witness])
        except tlog.TlogError:
            continue
        cosigners.append(witness)
    if len(cosigners) < quorum:
        names = ", ".join(witness.name for witness in cosigners) or "none"
        raise tlog.ProofError(
            f"the checkpoint is cosigned by {len(cosigners)} of the {len(witnesses)} witnesses"
            f" given ({names}), fewer than the quorum of {quorum}"
        )
    return cosigners


# Encodings


def encode(data):
    return base64.b64encode(data).decode("ascii")


def decode(text, what):
    """Standard base64, in its one canonical spelling: no other text decodes
    to the same bytes, so no altered byte of a file goes unnoticed."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Malformed(f"{what} is not base64") from None
    if encode(data) != text:
        raise Malformed(f"{what} is not base64 in its canonical form")
    return data


def decode_hash(text, what):
    digest = decode(text, what)
    if len(digest) != tlog.HASH_SIZE:
        raise Malformed(f"{what} is {len(digest)} bytes, not {tlog.HASH_SIZE}")
    return digest


def parse_count(text, what):
    if not _DECIMAL.fullmatch(text) or int(text) > _MAX_COUNT:
        raise Malformed(f"{what} is not a decimal number without leading zeros below 2**63")
    return int(text)
