"""The commands that make and check what an auditor relies on: verify,
keygen, rotate-key, consistency-proof and check-proof."""

import os
import sqlite3
import sys

import click
from flask import current_app
from flask.cli import with_appcontext

from ..log import chain, checkpoints, merkle, notary, signednote, timestamps, tlog, tlogproof
from .operations import read_only


def _witness_options(command):
    command = click.option(
        "--quorum",
        type=click.IntRange(min=1),
        help="How many of the --witness keys must have cosigned; by default all of them.",
    )(command)
    return click.option(
        "--witness",
        "witness_keys",
        multiple=True,
        metavar="VKEY",
        help="A witness's verifier key (cosignature/v1): its cosignature must verify. Repeatable.",
    )(command)


def _witnesses(keys, quorum):
    """The --witness Verifiers and the quorum they must meet."""
    try:
        witnesses = [signednote.Verifier(key) for key in keys]
    except signednote.Malformed as exc:
        raise click.BadParameter(str(exc), param_hint="--witness") from None
    if any(not witness.cosigner for witness in witnesses):
        raise click.BadParameter("a witness's key is a cosignature/v1 key", param_hint="--witness")
    if quorum is not None and quorum > len(witnesses):
        raise click.BadParameter(
            f"{quorum} is more than the {len(witnesses)} --witness keys given",
            param_hint="--quorum",
        )
    return witnesses, len(witnesses) if quorum is None else quorum


@click.command("verify")
@with_appcontext
@click.option(
    "--anchor",
    metavar="LINE",
    help="The last line of an earlier verify (or its older COUNT:HASH form):"
    " also fail unless the log still extends both heads it records.",
)
@click.option(
    "--database",
    type=click.Path(exists=True, dir_okay=False),
    help="Verify this file (a backup, say), read-only, instead of DATABASE.",
)
@click.option(
    "--checkpoint",
    "checkpoint_file",
    type=click.File("rb"),
    help="A checkpoint kept off the box: also fail unless it is signed by a key of this"
    " log and the trees still extend it (a consistency proof to their current size).",
)
@click.option(
    "--key",
    "key",
    multiple=True,
    metavar="VERIFIER_KEY",
    help="The log's verifier key, name+keyid+base64: check every checkpoint's"
    " signature with it instead of the one CHECKPOINT_KEY holds; repeat it for"
    " each key the log was signed with. Never with a key the database names.",
)
@_witness_options
def verify_command(anchor, database, checkpoint_file, key, witness_keys, quorum):
    """Walk both hash chains, recompute both Merkle trees, and check every
    stored checkpoint, and those of this log in CHECKPOINT_DIR, against
    them. Prints 'OK <events> <event-head> quarantine <count>
    <quarantine-head>' and exits 0 when intact; otherwise names the first
    bad row or checkpoint and exits 1."""
    if anchor is not None:
        try:
            anchor = chain.parse_anchor(anchor)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--anchor") from None
    keys, log_origin = _log_keys(key)
    witnesses, quorum = _witnesses(witness_keys, quorum)
    if witnesses and checkpoint_file is None:
        raise click.UsageError("--witness and --quorum check the file given with --checkpoint")
    if checkpoint_file is not None and keys is None:
        raise click.UsageError(
            "--checkpoint needs the log's verifier key to check the file's signature:"
            " give --key, or run where CHECKPOINT_KEY is"
        )
    conn = read_only(database or current_app.config["DATABASE"])
    said = []
    certificates = timestamps.roots(timestamps.read_ca(current_app.config))

    def check_checkpoints(conn, trees):
        stored = checkpoints.check(conn, keys, log_origin, kept, _configured_witnesses())
        timestamps.check_stored(conn, certificates)
        provenance = merkle.trees_since(conn)
        if provenance is not None and provenance.startswith("built once"):
            said.append(f"trees: {provenance}")
        if stored and keys is None:
            said.append(
                f"checkpoints: {stored} agree with the trees; their signatures are not"
                " checked: no verifier key here (give --key)"
            )
        if checkpoint_file is not None:
            note = checkpoint_file.read()
            said.append(_check_kept(conn, trees, note, keys, log_origin))
            for witness in signednote.check_cosignatures(note, witnesses, quorum):
                said.append(f"cosigned by witness {witness.name}+{witness.key_id}")

    try:
        # Read before the snapshot begins, so that none is newer than it.
        kept = checkpoints.kept(current_app.config["CHECKPOINT_DIR"], keys, log_origin)
        heads, _ = merkle.verify(
            conn, current_app.config["AUDIT_HMAC_KEY"], anchor, then=check_checkpoints
        )
        click.echo("".join(f"{line}\n" for line in said), nl=False)
    except (chain.ChainBroken, tlog.TlogError) as exc:
        click.echo(f"FAIL {exc}")
        sys.exit(1)
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot read the log: {exc}") from None
    finally:
        conn.close()
    click.echo(heads.line())


def _configured_witnesses():
    return [signednote.Verifier(witness["key"]) for witness in current_app.config["WITNESSES"]]


def _log_keys(key):
    """The verifier keys to check this log's checkpoints with, from outside
    its file: ``--key``, or the key at CHECKPOINT_KEY and the one it was
    rotated from, or CHECKPOINT_VERIFIER_KEY; and the log's origin
    (LOG_ORIGIN, or the key's name). (None, origin) when there is none."""
    config = current_app.config
    if not key:
        try:
            keys = notary.verifiers(
                config["CHECKPOINT_KEY"], config["LOG_ORIGIN"], config["CHECKPOINT_VERIFIER_KEY"]
            )
        except (notary.KeyRefused, signednote.Malformed) as exc:
            raise click.ClickException(str(exc)) from None
        return keys, config["LOG_ORIGIN"]
    try:
        keys = [notary.log_verifier(text) for text in key]
    except signednote.Malformed as exc:
        raise click.BadParameter(str(exc), param_hint="--key") from None
    return keys, config["LOG_ORIGIN"] or keys[0].name


def _check_kept(conn, trees, note, verifiers, log_origin):
    """Check a checkpoint kept off the box against the trees just
    recomputed from the rows; what it proved, or TlogError."""
    checkpoint, signer = _open_any(note, verifiers, log_origin)
    table = "event" if checkpoint.origin == log_origin else "quarantine"
    if not trees:
        raise tlog.ProofError(
            "the log has no Merkle trees yet: the ingest server builds them when it starts"
        )
    tree = trees[table]
    if checkpoint.size > tree.size:
        raise tlog.ProofError(
            f"the {table} tree has {tree.size} leaves but the checkpoint records"
            f" {checkpoint.size}: the log was truncated"
        )
    if checkpoint.size:
        proof = tlog.consistency_proof(checkpoint.size, tree.size, merkle.reader(conn, table))
        tlog.verify_consistency(checkpoint.size, checkpoint.root, tree.size, tree.root, proof)
    return (
        f"checkpoint {checkpoint.origin} {checkpoint.size} signed by {signer.key_id}:"
        f" the {table} tree of {tree.size} leaves extends it"
    )


def _open_any(note, verifiers, log_origin):
    """The checkpoint, for either tree's origin, signed by one of ``verifiers``."""
    for origin in (log_origin, checkpoints.origin(log_origin, "quarantine")):
        try:
            return signednote.open_checkpoint(note, verifiers, origin)
        except signednote.WrongOrigin:
            continue
    checkpoint = signednote.parse_checkpoint(signednote.open_note(note, verifiers).text)
    raise signednote.WrongOrigin(
        f"the checkpoint is of the log {checkpoint.origin!r}, not {log_origin!r} or its quarantine"
    )


@click.command("keygen")
@click.option(
    "--witness",
    "witness_name",
    metavar="NAME",
    help="Make a witness's cosignature key named NAME instead, for tim-audit witness;"
    " written to --out.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False), help="With --witness: the private key's file."
)
@with_appcontext
def keygen_command(witness_name, out):
    """Make the Ed25519 key that signs checkpoints, in CHECKPOINT_KEY (mode
    0600), and print its verifier key for auditors. Never overwrites a key.
    With --witness, a witness's key, and print the verifier key that goes
    in the log's WITNESSES."""
    if witness_name is not None or out is not None:
        if witness_name is None or out is None:
            raise click.UsageError("--witness NAME and --out FILE go together")
        click.echo(_new_key(out, witness_name, witness=True))
        return
    config = current_app.config
    if config["LOG_ORIGIN"] is None:
        raise click.UsageError(
            "set LOG_ORIGIN first, the log's name, such as im-audit.example.com/1400000001:"
            " the key is named after it"
        )
    verifier = _new_key(config["CHECKPOINT_KEY"], config["LOG_ORIGIN"])
    click.echo(
        f"Wrote the checkpoint signing key to {config['CHECKPOINT_KEY']}. Its verifier key,"
        " for auditors:"
    )
    click.echo(verifier)


@click.command("rotate-key")
@with_appcontext
def rotate_key_command():
    """Replace the checkpoint key on purpose: the old key file is kept as
    CHECKPOINT_KEY.retired-<keyid>, a new key is made, and the next start
    signs with it. Checkpoints signed with the old key stay valid."""
    config = current_app.config
    path = config["CHECKPOINT_KEY"]
    if not os.path.exists(path):
        raise click.UsageError(f"there is no key at {path} to rotate: make one with keygen")
    try:
        old = notary.read_signer(path, config["LOG_ORIGIN"])
    except notary.KeyRefused as exc:
        raise click.ClickException(str(exc)) from None
    retired = f"{path}.retired-{old.key_id}"
    os.replace(path, retired)
    verifier = _new_key(path, config["LOG_ORIGIN"])
    with open(notary.rotation_path(path), "a", encoding="ascii") as file:
        if file.tell() == 0:
            file.write(f"{old.verifier}\n")
        file.write(f"{verifier}\n")
    click.echo(f"Moved the old key to {retired}: keep it offline or destroy it.")
    click.echo(
        f"Wrote a new key to {path}; restart the ingest server to sign with it. Its verifier key:"
    )
    click.echo(verifier)


def _new_key(path, name, witness=False):
    try:
        signer, verifier = signednote.generate_key(name, witness)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        notary.write_key(path, signer)
    except FileExistsError:
        raise click.ClickException(
            f"{path} exists; a key is never overwritten (see rotate-key)"
        ) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None
    return verifier


@click.command("consistency-proof")
@with_appcontext
@click.argument("first", metavar="M", type=click.IntRange(min=1))
@click.argument("last", metavar="[N]", type=click.IntRange(min=1), required=False)
def consistency_proof_command(first, last):
    """Print the RFC 6962 proof that the event tree of M leaves is a prefix
    of the tree of N (by default the latest checkpoint's size), one base64
    hash per line."""
    conn = read_only(current_app.config["DATABASE"])
    try:
        size = merkle.size(conn, "event")
        if last is None:
            latest = checkpoints.latest(conn)
            last = size if latest is None else latest["size"]
        if not first <= last <= size:
            raise click.UsageError(f"M and N must be M <= N <= {size}, the event tree's size")
        click.echo(
            tlogproof.format_hashes(checkpoints.consistency_proof(conn, first, last)), nl=False
        )
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot read the log: {exc}") from None
    finally:
        conn.close()


@click.command("check-proof")
@click.argument("proof_file", metavar="FILE", type=click.File("rb"))
@click.option(
    "--key",
    "verifier_key",
    required=True,
    metavar="VERIFIER_KEY",
    help="The log's verifier key, name+keyid+base64.",
)
@click.option("--origin", help="The log's origin; by default the key's name.")
@_witness_options
def check_proof_command(proof_file, verifier_key, origin, witness_keys, quorum):
    """Check a .tlog-proof file: its checkpoint's signature and origin, its
    witnesses' cosignatures, and that the event in it is in the signed
    tree. Needs no database and no configuration."""
    witnesses, quorum = _witnesses(witness_keys, quorum)
    try:
        proved = tlogproof.check_proof(proof_file.read(), verifier_key, origin, witnesses, quorum)
    except tlog.TlogError as exc:
        click.echo(f"FAIL {exc}")
        sys.exit(1)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--key") from None
    click.echo(
        f"OK event {proved.index + 1} (leaf {proved.index}, {len(proved.leaf)} bytes of canonical"
        f" data) is in the tree of {proved.size} leaves of {proved.origin}, signed by key {proved.key_id}"
        + "".join(f", cosigned by {name}" for name in proved.witnesses)
    )
