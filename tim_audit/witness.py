"""The witness server, ``tim-audit witness``: what a compliance team runs on
a machine of its own to cosign an operator's log, as C2SP tlog-witness
v1.0.0 and tlog-cosignature v1 define it.

It cosigns a checkpoint only if the log's key signed it and it extends the
last checkpoint this witness cosigned for that origin, so it never cosigns
two histories. Its one piece of state, the latest cosigned checkpoint of
each origin, is in a SQLite file of its own (witness.sql), changed by a
compare-and-swap in one transaction and made durable before it answers.
It needs no instance configuration and never reads the log's file.
"""

import sqlite3
from importlib import resources

import click
from flask import Flask, Response, current_app, request

from .log import db, notary, signednote, tlog, tlogproof
from .serve import listen, run

MAX_BODY = 64 * 1024  # bytes of a request: 63 proof lines and a note with its signatures
MAX_PROOF = 63  # consistency proof lines, as the spec bounds the client


class Refused(Exception):
    """An answer other than 200, with the status the spec gives it."""

    def __init__(self, status, message, mimetype="text/plain"):
        super().__init__(message)
        self.status, self.mimetype = status, mimetype


def open_state(path):
    """The witness's file, created if need be."""
    conn = db.connect(path, timeout=5.0)
    conn.executescript(resources.files(__package__).joinpath("witness.sql").read_text())
    return conn


def create_witness_app(signer, logs, database):
    """``signer``: the witness's cosignature key; ``logs``: {origin: the
    log's Verifiers}, each log named by its key; ``database``: its file."""
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY)
    app.extensions["tim_audit.witness"] = (signer, logs, database)
    open_state(database).close()
    app.add_url_rule("/add-checkpoint", view_func=add_checkpoint_view, methods=["POST"])
    return app


def add_checkpoint_view():
    signer, logs, database = current_app.extensions["tim_audit.witness"]
    body = request.get_data(cache=False)
    try:
        old, proof, note = parse_request(body)
        checkpoint = _checked(note, logs)
        conn = open_state(database)
        try:
            line = add_checkpoint(conn, signer, old, proof, note, checkpoint)
        finally:
            conn.close()
    except Refused as exc:
        # As given: Flask would add a charset to a text/ mimetype, and the
        # spec's 409 is exactly text/x.tlog.size.
        return Response(f"{exc}\n", exc.status, content_type=exc.mimetype)
    except sqlite3.Error as exc:
        current_app.logger.error("cannot record the checkpoint: %s", exc)
        return Response("the witness cannot record the checkpoint now\n", 503)
    return Response(line, 200, mimetype="text/plain")


def parse_request(body):
    """``old N``, up to 63 base64 hashes, a blank line, the signed note."""
    head, blank, note = body.partition(b"\n\n")
    if not blank:
        raise Refused(400, "the body is an old size line, proof lines, a blank line and a note")
    try:
        lines = head.decode("ascii").split("\n")
        if not lines[0].startswith("old "):
            raise signednote.Malformed("the body does not begin with an old size line")
        old = signednote.parse_count(lines[0].removeprefix("old "), "the old size")
        if len(lines) - 1 > MAX_PROOF:
            raise signednote.Malformed(f"the proof has more than {MAX_PROOF} lines")
        proof = tlogproof.parse_hashes("".join(f"{line}\n" for line in lines[1:]).encode("ascii"))
    except (UnicodeDecodeError, signednote.Malformed) as exc:
        raise Refused(400, str(exc)) from None
    return old, proof, note


def _checked(note, logs):
    """The checkpoint in ``note``, signed by the key of the log it names."""
    try:
        text, _ = signednote.split_note(note)
        origin = signednote.parse_checkpoint(text).origin
    except signednote.Malformed as exc:
        raise Refused(400, str(exc)) from None
    if origin not in logs:
        raise Refused(404, f"this witness does not witness the log {origin!r}")
    try:
        checkpoint, _ = signednote.open_checkpoint(note, logs[origin], origin)
    except signednote.Malformed as exc:
        raise Refused(400, str(exc)) from None
    except tlog.TlogError as exc:
        raise Refused(403, str(exc)) from None
    return checkpoint


def add_checkpoint(conn, signer, old, proof, note, checkpoint):
    """Cosign ``checkpoint`` if it extends the latest one cosigned for its
    origin, recording it in the same transaction; its cosignature line."""
    if old > checkpoint.size:
        raise Refused(400, f"the old size {old} is beyond the checkpoint's {checkpoint.size}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(
            "SELECT size, root FROM witnessed WHERE origin = ?", (checkpoint.origin,)
        ).fetchone()
        size, root = (row["size"], row["root"]) if row is not None else (0, None)
        if old != size:
            raise Refused(409, str(size), "text/x.tlog.size")
        if old == checkpoint.size and root is not None and root != checkpoint.root:
            raise Refused(409, f"another root than the checkpoint of {size} leaves cosigned before")
        if proof and (old == 0 or old == checkpoint.size):
            raise Refused(422, "a proof from a tree to itself, or from none, is empty")
        if 0 < old < checkpoint.size:
            try:
                tlog.verify_consistency(old, root, checkpoint.size, checkpoint.root, proof)
            except tlog.TlogError as exc:
                raise Refused(422, str(exc)) from None
        line = signednote.signature_line(signednote.format_checkpoint(checkpoint), signer)
        conn.execute(
            "INSERT INTO witnessed (origin, size, root, note) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (origin) DO UPDATE SET size = excluded.size, root = excluded.root,"
            " note = excluded.note",
            (checkpoint.origin, checkpoint.size, checkpoint.root, note),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return line


@click.command("witness")
@click.option("--listen", "address", required=True, metavar="HOST:PORT")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.File("r", encoding="ascii"),
    help="The witness's private key, from tim-audit keygen --witness.",
)
@click.option(
    "--database",
    required=True,
    type=click.Path(dir_okay=False),
    help="The witness's own SQLite file: the latest checkpoint it cosigned of each log.",
)
@click.option(
    "--log",
    "log_keys",
    required=True,
    multiple=True,
    metavar="LOG_VKEY",
    help="The verifier key of a log to witness; its name is the log's origin. Repeatable.",
)
def witness_command(address, key_file, database, log_keys):
    """Serve POST /add-checkpoint: cosign each log's checkpoints, each only
    if it extends the last one this witness cosigned for that log."""
    try:
        signer = signednote.Signer(key_file.read().strip())
    except signednote.Malformed as exc:
        raise click.BadParameter(str(exc), param_hint="--key") from None
    if not signer.verifier.cosigner:
        raise click.BadParameter("not a witness's key: make one with keygen --witness", "--key")
    logs = {}
    for text in log_keys:
        try:
            verifier = notary.log_verifier(text)
        except signednote.Malformed as exc:
            raise click.BadParameter(str(exc), param_hint="--log") from None
        logs.setdefault(verifier.name, []).append(verifier)
    sock = listen({"--listen": address}, "--listen")
    try:
        app = create_witness_app(signer, logs, database)
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot open the database {database}: {exc}") from None
    app.logger.info("witness %s of %s", signer.verifier, ", ".join(sorted(logs)))
    run(app, sock, threads=4, body_limit=MAX_BODY, name="witness (add-checkpoint)")
