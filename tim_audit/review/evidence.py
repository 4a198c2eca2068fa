"""Evidence for reviewers to hand over: each event's tlog-proof against the
latest checkpoint, an archive of the filtered events with their proofs,
and the list of checkpoints. Behind the same sign-in as the dashboard."""

import base64
import contextlib
import json
import sqlite3
import tempfile
import time

from flask import Blueprint, Response, abort, current_app, render_template, request

from ..log import chain, checkpoints, merkle, signednote, timestamps, tlog, tlogproof
from . import exports, forms, history, pages, queries, zipstream
from .auth import require_reviewer
from ..log.db import get_db, require_log

bp = Blueprint("evidence", __name__)
bp.before_request(require_reviewer)
bp.before_request(require_log)


README = """\
Evidence from the tim-audit log {origin}
{rule}

{count} events, the ones matching {filters},
each proved to be in the log's Merkle tree of {size} events, whose
checkpoint was signed at {signed_at} by the key {key_id}.{newer}{failed}

Files
  checkpoint                  the signed checkpoint (c2sp.org/tlog-checkpoint)
  verifier.key                the public key that signed it (c2sp.org/signed-note)
{files}  events/<id>.json            each event as the service shows it
  events/<id>.tlog-proof      each event's proof (c2sp.org/tlog-proof): its
                              canonical bytes (the "extra" line, base64), its
                              index (id - 1) and the hashes to the root

Check one proof with tim-audit, which needs neither the log nor its settings:

  tim-audit check-proof events/<id>.tlog-proof --key "$(cat verifier.key)"

Or by hand, with any RFC 6962 implementation (Go's golang.org/x/mod/sumdb/tlog
CheckRecord, for one):
  1. Check the checkpoint's signature with verifier.key: its last line is
     "— <key name> <base64>"; the base64 is the 4-byte key ID then an Ed25519
     signature over every line before the blank line, newlines included.
  2. Its first line must be the log's origin, {origin};
     then the tree size and the base64 root hash.
  3. Decode the proof's "extra" line: the leaf data. The leaf hash is
     SHA-256(0x00 || data); hash it with each proof hash in turn
     (SHA-256(0x01 || left || right)) as RFC 6962 section 2.1.1 says, for
     leaf "index" in a tree of the checkpoint's size. The result must be the
     checkpoint's root hash.
  4. The leaf data is the event's canonical bytes, as tim-audit's
     docs/design.md defines them ("How a row is chained"): its columns,
     then its members.
     They carry the raw body as received; compare them with events/<id>.json.

{timestamp}Keep the checkpoint: a later checkpoint of the log must extend it. Ask the
service's operator for a consistency proof (GET /checkpoint/consistency?from=
{size}) and check it against both checkpoints' roots (RFC 6962 section 2.1.2).
"""


COSIGNED_FILES = """\
  checkpoint.cosigned         the same checkpoint with the cosignature lines of
                              the log's witnesses (c2sp.org/tlog-cosignature);
                              every proof below carries it
"""
TIMESTAMP_FILES = """\
  checkpoint.tsr              an RFC 3161 timestamp of the file checkpoint
  tsa-ca.pem                  the certificates of the timestamp authority
"""
TIMESTAMP_STEPS = """\
Check that the checkpoint existed at the time its timestamp names, with
OpenSSL (it prints "Verification: OK"; "openssl ts -reply -in checkpoint.tsr
-text" shows the time):

  openssl ts -verify -data checkpoint -in checkpoint.tsr -CAfile tsa-ca.pem

"""


@bp.app_context_processor
def _page_globals():
    return {"proof_status": _proof_status}


def _not_yet(conn, event_id):
    """Why an event has no proof yet, when its row is fine."""
    covering = checkpoints.covering(conn, event_id)
    if covering is None:
        return (
            f"Event {event_id} is not in a signed checkpoint yet; the next one is signed"
            " within CHECKPOINT_INTERVAL seconds of its arrival."
        )
    return (
        f"Event {event_id} is in checkpoint {covering['id']}, which is not yet cosigned by"
        f" WITNESS_QUORUM witnesses{' and timestamped' if _stamped() else ''}; its proof is"
        " offered once it is."
    )


def _stamped():
    return current_app.config["TIMESTAMP_URL"] is not None


def _proof_status(event_id):
    """For the detail page: the checkpoint the event's proof is against
    and None, or None and why there is none; the same rule as the proof
    download, so the page never offers a proof that would fail."""
    with contextlib.suppress(sqlite3.OperationalError):  # no checkpoint table yet
        conn = get_db()
        best = _best(conn)
        if best is None or event_id > best["size"]:
            return None, _not_yet(conn, event_id)
        try:
            proof_file(conn, chain.as_bytes(best["note"]), event_id)
        except chain.ChainBroken as exc:
            return None, f"No proof: {exc}."
        return best, None
    return None, "No checkpoint has been signed yet."


def _best(conn):
    """The checkpoint proofs are made against: the newest that is witnessed
    and timestamped as configured, so that its evidence is whole."""
    config = current_app.config
    return checkpoints.best(
        conn,
        [witness["key"] for witness in config["WITNESSES"]],
        config["WITNESS_QUORUM"],
        _stamped(),
    )


@bp.get("/checkpoints")
def listing():
    try:
        args = forms.load(forms.PageArgs)
    except forms.BadQuery as exc:
        abort(
            400,
            description="; ".join(f"{field}: {problem}" for field, problem in exc.problems.items()),
        )
    # Each root in base64, as its checkpoint file writes it.
    rows = [
        {
            **row,
            "root": base64.b64encode(row["root"]).decode()
            if type(row["root"]) is bytes
            else chain.shown(row["root"]),
        }
        for row in map(dict, _checkpoints(get_db(), args["limit"], args["before"]))
    ]
    older = rows[-1]["id"] if len(rows) == args["limit"] else None
    return render_template(
        "checkpoints.html",
        integrity=pages.integrity(get_db()),
        rows=rows,
        older=older,
        limit=args["limit"],
    )


def _checkpoints(conn, limit, before):
    try:
        return conn.execute(
            "SELECT id, tree, size, root, signed_at, key FROM checkpoint WHERE id < ?"
            " ORDER BY id DESC LIMIT ?",
            (before or 2**63 - 1, limit),
        ).fetchall()
    except sqlite3.OperationalError:
        return []


@bp.get("/checkpoints/<int:checkpoint_id>.checkpoint")
def checkpoint_note(checkpoint_id):
    row = (
        get_db()
        .execute(
            "SELECT id, tree, size, note FROM checkpoint WHERE id = ?",
            (min(checkpoint_id, 2**63 - 1),),
        )
        .fetchone()
    )
    if row is None:
        abort(404, description=f"There is no checkpoint {checkpoint_id}.")
    # Named as CHECKPOINT_DIR names it, from the stored row only when that
    # is a tree and a size: a tampered row must not reach the header.
    name = f"checkpoint-{row['id']}"
    if row["tree"] in merkle.TABLES and type(row["size"]) is int:
        name = f"{row['tree']}-{row['size']}"
    return Response(
        checkpoints.cosigned(get_db(), row),
        mimetype="text/plain",
        headers={"Content-Disposition": f'attachment; filename="{name}.checkpoint"'},
    )


@bp.get("/history/<int:event_id>.tlog-proof")
def proof(event_id):
    conn = get_db()
    latest = _best(conn)
    if queries.event(conn, min(event_id, 2**63 - 1)) is None:
        abort(404, description=f"There is no event {event_id}.")
    if latest is None or event_id > latest["size"]:
        abort(404, description=_not_yet(conn, event_id))
    try:
        data = proof_file(conn, checkpoints.cosigned(conn, latest), event_id)
    except chain.ChainBroken as exc:
        abort(409, description=f"No proof: the log does not verify here: {exc}")
    return Response(
        data,
        mimetype="text/plain",
        headers={
            "Content-Disposition": f'attachment; filename="tim-audit-event-{event_id}.tlog-proof"'
        },
    )


def proof_file(conn, note, event_id):
    """The tlog-proof of event ``event_id`` in the tree that ``note`` (the
    checkpoint, with its cosignatures) signs, with the event's canonical
    bytes as its extra data. ChainBroken when the row as stored is not the
    leaf the checkpoint signed: a proof that cannot check is never made."""
    try:
        signed = signednote.parse_checkpoint(signednote.split_note(note)[0])
    except signednote.Malformed as exc:
        raise chain.ChainBroken("checkpoint", signed_size(note), f"its note: {exc}") from None
    hashes = tlog.inclusion_proof(signed.size, event_id - 1, merkle.reader(conn, "event"))
    leaf = merkle.leaf(conn, event_id)
    try:
        tlog.verify_inclusion(signed.size, signed.root, event_id - 1, tlog.leaf_hash(leaf), hashes)
    except tlog.ProofError:
        raise chain.ChainBroken(
            "event",
            event_id,
            f"no proof leads from it to the root that checkpoint of {signed.size} events"
            " signed: the row, or the tree's hashes above it, changed after it was signed",
        ) from None
    return tlogproof.format_proof(tlogproof.Proof(event_id - 1, tuple(hashes), note, leaf))


def signed_size(note):
    """The size line of a note that may not parse, for a message."""
    return note.split(b"\n")[1][:20].decode("ascii", "replace") if note.count(b"\n") else "?"


@bp.get("/history.evidence")
def export_evidence():
    best = None
    with contextlib.suppress(sqlite3.OperationalError):  # no checkpoint table yet
        best = _best(get_db())
    if best is None:
        abort(
            404, description="No checkpoint has been signed yet: there is nothing to prove against."
        )
    return history.export("zip", archive_chunks, "application/zip")


def archive_chunks(conn, filters, counter):
    """The evidence archive of ``filters``, streamed a chunk of events at a
    time. Nothing grows with the number of events but the zip's central
    directory, which zipstream keeps in a temporary file until the end."""
    latest = _best(conn)
    with tempfile.TemporaryFile() as directory:
        archive = zipstream.Writer(directory, time.localtime()[:6])
        pending = []

        def add(name, data):
            pending.append(archive.add(name, data))

        def take():
            data = b"".join(pending)
            pending.clear()
            return data

        note = checkpoints.cosigned(conn, latest)
        add("checkpoint", chain.as_bytes(latest["note"]))
        if note != chain.as_bytes(latest["note"]):
            add("checkpoint.cosigned", note)
        add("verifier.key", f"{latest['key']}\n")
        token = timestamps.stored(conn, latest["id"])
        ca = current_app.extensions["tim_audit.tsa_ca"]
        if token is not None and ca is not None:
            add("checkpoint.tsr", token)
            add("tsa-ca.pem", ca)
        newer, failed = 0, 0
        for objects in exports.json_objects(conn, filters):
            for event_id, document in objects:
                if event_id > latest["size"]:
                    newer += 1
                    continue
                add(f"events/{event_id}.json", document + "\n")
                try:
                    add(f"events/{event_id}.tlog-proof", proof_file(conn, note, event_id))
                except chain.ChainBroken as exc:
                    failed += 1
                    add(f"events/{event_id}.FAILS.txt", f"No proof: {exc}\n")
                counter["rows"] += 1
            yield take()
        add("README.txt", _readme(latest, counter["rows"], newer, note, token and ca, failed))
        yield take()
        yield from archive.finish()


def _readme(latest, count, newer, note, stamped, failed):
    try:
        origin = signednote.parse_checkpoint(
            signednote.split_note(chain.as_bytes(latest["note"]))[0]
        ).origin
    except tlog.TlogError as exc:
        origin = f"(its checkpoint's note does not parse: {exc})"
    asked = {k: v for k, v in request.args.items() if k in forms.HISTORY_FILTERS and v}
    return README.format(
        origin=origin,
        rule="=" * (30 + len(origin)),
        count=count,
        filters=json.dumps(asked, ensure_ascii=False) if asked else "no filter (all events)",
        size=latest["size"],
        signed_at=pages.utc(latest["signed_at"]),
        key_id=pages.key_id(latest["key"]),
        newer=(
            f"\n{newer} newer matching events are not in this checkpoint yet and are"
            " left out: export again after the next checkpoint."
        )
        if newer
        else "",
        failed=(
            f"\n{failed} of them have NO PROOF against this checkpoint: the row, or the tree's"
            " hashes above it, changed after it was signed. Each has events/<id>.FAILS.txt"
            " saying why, and its .json shows it as stored."
        )
        if failed
        else "",
        files=(COSIGNED_FILES if note != chain.as_bytes(latest["note"]) else "")
        + (TIMESTAMP_FILES if stamped else ""),
        timestamp=TIMESTAMP_STEPS if stamped else "",
    )
