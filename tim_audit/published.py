"""The public checkpoint paths, on the ingest server: ``GET /checkpoint``,
``/checkpoint/consistency`` and ``/checkpoint.tsr``. A checkpoint reveals a
tree size and a root hash, a consistency proof more hashes, a token a
time: nothing else of the log."""

import contextlib
import sqlite3

from flask import Blueprint, Response, request

from .log import checkpoints, merkle, timestamps, tlogproof
from .log.db import get_db

bp = Blueprint("published", __name__)


def _text(body, status=200):
    return Response(body, status, mimetype="text/plain")


@bp.get("/checkpoint")
def checkpoint():
    try:
        row = checkpoints.latest(get_db())
    except sqlite3.OperationalError:  # a log this version's writer has not opened yet
        row = None
    if row is None:
        return _text("No checkpoint has been signed yet.\n", 404)
    return _text(checkpoints.cosigned(get_db(), row))


@bp.get("/checkpoint/consistency")
def consistency():
    """``from=M`` and, by default the latest checkpoint's size, ``to=N``."""
    conn = get_db()
    row = checkpoints.latest(conn)
    size = merkle.size(conn, "event")
    try:
        first = _count(request.args.get("from"), "from")
        default = row["size"] if row is not None else size
        last = default if request.args.get("to") is None else _count(request.args["to"], "to")
        if not 0 < first <= last <= size:
            raise ValueError(f"from and to must be 0 < from <= to <= {size}, the tree's size")
    except ValueError as exc:
        return _text(f"{exc}\n", 400)
    return _text(tlogproof.format_hashes(checkpoints.consistency_proof(conn, first, last)))


def _count(value, name):
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise ValueError(f"{name} must be a tree size, a whole number")
    return int(value)


@bp.get("/checkpoint.tsr")
def latest_token():
    """The token of the checkpoint GET /checkpoint serves, on the ingest
    server. It is over the note as the log signed it: the first five lines
    of GET /checkpoint, before any cosignature."""
    conn = get_db()
    token = None
    with contextlib.suppress(sqlite3.OperationalError):  # a log not opened by this version yet
        latest = checkpoints.latest(conn, "event")
        token = None if latest is None else timestamps.stored(conn, latest["id"])
    if token is None:
        return Response("The latest checkpoint has no timestamp yet.\n", 404, mimetype="text/plain")
    return Response(token, mimetype=timestamps.REPLY_TYPE)
