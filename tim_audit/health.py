"""``GET /healthz``: for the proxy, the process supervisor and monitoring."""

import sqlite3

from flask import Blueprint, current_app, jsonify

from .review import queries
from .log.records import ChainMismatch
from .log.writer import StorageUnavailable
from .log.chain import ChainBroken
from .log.db import Held, get_db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """200 with the event count while the database answers and, on the
    ingest server, takes writes; 503 when it does not, or when the last
    write failed (disk full, locked by another process) and none has
    succeeded since. The review server only reads."""
    log = current_app.extensions.get("tim_audit")
    try:
        if log is not None:
            log.open()
        events, _ = queries.head(get_db())
    except (sqlite3.Error, OSError, ChainMismatch, ChainBroken, StorageUnavailable, Held) as exc:
        return jsonify(status="unavailable", error=str(exc)), 503
    configured = bool(current_app.config["SDKAPPID"])
    problem = log and (log.stalled() or log.failure and f"the last write failed: {log.failure}")
    if problem:
        return jsonify(
            status="unavailable", events=events, configured=configured, error=problem
        ), 503
    return jsonify(status="ok", events=events, configured=configured)
