"""Operator commands: ``tim-audit <command>`` (or ``flask --app tim_audit <command>``)."""

import contextlib
import json
import os
import sqlite3
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import click
from flask import current_app
from flask.cli import with_appcontext

from werkzeug.security import generate_password_hash

from ..ingest import signature
from ..log import (
    auditlog,
    chain,
    checkpoints,
    db,
    derived,
    merkle,
    notary,
    signednote,
    timestamps,
    tlog,
    tlogproof,
)
from ..ingest.callback import RECEIPT_HEADER

MIN_PASSWORD = 12
CREATE_GROUP = "Group.CallbackAfterCreateGroup"


@click.command("init-db")
@with_appcontext
def init_db_command():
    """Create the log now, with its chain keyed as configured, before the
    ingest server first starts (which would create it otherwise)."""
    log = auditlog.open_log(current_app).extensions["tim_audit"]
    log.close()
    click.echo(f"Initialized the database at {log.path}")


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
    conn = _read_only(database or current_app.config["DATABASE"])
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
    conn = _read_only(current_app.config["DATABASE"])
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


@click.command("backup")
@with_appcontext
@click.argument("destination", type=click.Path(dir_okay=False))
def backup_command(destination):
    """Copy the log to DESTINATION while the service keeps running, then
    verify the copy. The copy is one consistent snapshot (SQLite's online
    backup in a single step, which in WAL mode never blocks the writer),
    written beside DESTINATION and renamed into place only once verified."""
    if os.path.exists(destination):
        raise click.UsageError(f"{destination} exists; back up to a new file")
    folder = os.path.dirname(os.path.abspath(destination))
    if not os.path.isdir(folder):
        raise click.UsageError(
            f"the folder {folder} does not exist; create it, or back up into one that does"
        )
    partial = f"{destination}.partial"
    started = time.monotonic()
    source = _read_only(current_app.config["DATABASE"])
    copy = None
    try:
        copy = sqlite3.connect(partial, isolation_level=None)
        source.backup(copy)
        copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        copy.row_factory = sqlite3.Row
        heads, _ = merkle.verify(copy, current_app.config["AUDIT_HMAC_KEY"])
    except (sqlite3.Error, chain.ChainBroken) as exc:
        if copy is not None:
            copy.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        raise click.ClickException(f"backup failed: {exc}") from None
    finally:
        source.close()
    copy.close()
    os.replace(partial, destination)
    size = os.path.getsize(destination)
    click.echo(
        f"backed up {heads.events} events to {destination} ({size:,} bytes) in {time.monotonic() - started:.1f} s"
    )
    click.echo(heads.line())


@click.command("rebuild-index")
@with_appcontext
def rebuild_index_command():
    """Make the name index and the hourly counts again from the chained
    rows, while no ingest server runs: it writes the log, so it is refused
    while one holds it. They are derived data, outside the chain; this
    never changes a chained row."""
    path = current_app.config["DATABASE"]
    _read_only(path).close()  # the same message as verify's when there is no log
    try:
        held = db.hold(path)
    except db.Held as exc:
        raise click.ClickException(
            f"{exc}: stop the ingest server, run rebuild-index, then start it again"
        ) from None
    started = time.monotonic()
    conn = db.connect(path, timeout=current_app.config["STORAGE_TIMEOUT"])
    try:
        events = derived.rebuild(conn)
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot rebuild the index: {exc}") from None
    finally:
        conn.close()
        os.close(held)
    click.echo(
        f"rebuilt the name index and hourly counts of {events} events in {time.monotonic() - started:.1f} s"
    )


@click.command("send-sample")
@with_appcontext
@click.argument("url")
@click.option(
    "--body",
    "body_file",
    type=click.File("rb"),
    help="Send this file's bytes instead of the built-in sample, as they are: a file"
    " that is not a JSON object is sent too, to see it quarantined.",
)
@click.option(
    "--command",
    metavar="COMMAND",
    help="CallbackCommand for the URL. Default: the body's, or"
    f" {CREATE_GROUP} when the body does not name one.",
)
def send_sample_command(url, body_file, command):
    """Post a correctly signed sample callback to URL (for example
    http://127.0.0.1:8080/callback), signed with this instance's config."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise click.BadParameter("must start with http:// or https://", param_hint="URL")
    config = current_app.config
    if not config["SDKAPPID"]:
        raise click.UsageError("SDKAPPID is not configured; the server would refuse the sample")
    now = int(time.time())
    if body_file is None:
        raw = json.dumps(_sample_body(now), ensure_ascii=False).encode("utf-8")
    else:
        raw = body_file.read()
    body = _json_object(raw)
    if body is None:
        click.echo("the body is not a JSON object: sending it as it is, to be quarantined")
    if command is None:
        named = (body or {}).get("CallbackCommand")
        command = named if isinstance(named, str) else CREATE_GROUP
    query = {
        "SdkAppid": config["SDKAPPID"],
        "CallbackCommand": command,
        "contenttype": "json",
        "ClientIP": "127.0.0.1",
        "OptPlatform": "RESTAPI",
    }
    if config["CALLBACK_TOKEN"]:
        query["RequestTime"] = str(now)
        query["Sign"] = signature.sign(config["CALLBACK_TOKEN"][0], str(now))
    request = urllib.request.Request(  # noqa: S310 (the URL is http or https, checked above)
        f"{url}?{urllib.parse.urlencode(query)}",
        data=raw,
        method="POST",
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    receipt, before = None, _stored_here(body, command)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (as above)
            status, answer = response.status, response.read()
            receipt = response.headers.get(RECEIPT_HEADER)
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read()
    except urllib.error.URLError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc.reason}") from None
    click.echo(f"{status} {answer.decode('utf-8', 'replace').strip()}")
    if receipt is None and status == 200:
        receipt = _receipt_here(before, _stored_here(body, command), raw)
    if receipt is not None:
        click.echo(_what_was_stored(receipt))
    if status != 200:
        sys.exit(1)


def _stored_here(body, command):
    """(id, raw) of the event with the body's key in this instance's log,
    read-only, or None: how send-sample tells what a server without
    CALLBACK_TOKEN did, as that server does not say (it would tell anyone)."""
    try:
        key = (body["GroupId"], int(body["EventTime"]), command)
        conn = _read_only(current_app.config["DATABASE"])
    except (KeyError, TypeError, ValueError, click.ClickException):
        return None
    try:
        return conn.execute(
            "SELECT id, raw FROM event WHERE group_id = ? AND event_time = ? AND command = ?",
            key,
        ).fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def _receipt_here(before, after, raw):
    """The Tim-Audit-Event header the server would have sent, from this
    instance's log before and after; None when the event is not in it."""
    if after is None:
        return None
    if before is None:
        return f"{after['id']} stored"
    return f"{after['id']} {'repeat' if bytes(after['raw']) == raw else 'conflict'}"


def _what_was_stored(receipt):
    """What the server did with a 200, from its Tim-Audit-Event header."""
    event_id, _, outcome = receipt.partition(" ")
    return {
        "stored": f"stored as event {event_id}",
        "repeat": f"a repeat of event {event_id}; nothing new stored",
        "conflict": f"a repeat of event {event_id} with another body; the body was quarantined",
    }.get(outcome, f"the server says: {receipt}")


@click.command("hash-password")
def hash_password_command():
    """Ask for a reviewer's password and print a hash for DASHBOARD_USERS.
    Piped in (not a terminal), the password is the first line of input."""
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        try:
            password = sys.stdin.buffer.readline().decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise click.ClickException("the password piped in is not UTF-8") from None
    if len(password) < MIN_PASSWORD:
        raise click.ClickException(f"use at least {MIN_PASSWORD} characters")
    click.echo(generate_password_hash(password))


def _read_only(path):
    """A read-only connection to the log at ``path``; never creates it."""
    if not os.path.isfile(path):
        raise click.ClickException(
            f"there is no log at {path}: the ingest server creates it when it first starts"
        )
    try:
        return db.connect(path, readonly=True)
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot read the log at {path}: {exc}") from None


def _json_object(raw):
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deeply
        return None
    return body if isinstance(body, dict) else None


def _sample_body(now):
    return {
        "CallbackCommand": CREATE_GROUP,
        "GroupId": f"@TGS#sample{now}",
        "Operator_Account": "administrator",
        "Owner_Account": "leckie",
        "Type": "Public",
        "Name": "tim-audit sample group",
        "MemberList": [{"Member_Account": "leckie"}, {"Member_Account": "bob"}],
        "EventTime": now * 1000,
    }
