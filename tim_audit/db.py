"""SQLite connections.

The writer (see auditlog.py) keeps one connection for the life of the
process; every dashboard request reads through a fresh read-only one, so no
page can change the log whatever its code does.
"""

import os
import pathlib
import sqlite3

from flask import current_app, g


def connect(path, *, readonly=False, timeout=1.0):
    """Open ``path`` in WAL mode with the pragmas the log relies on.

    ``synchronous=FULL`` makes every commit durable before it returns, which
    is what lets the callback answer OK right after it.
    """
    if readonly:
        uri = pathlib.Path(path).absolute().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
    else:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA journal_size_limit = 16777216")  # the WAL file, after a burst
    conn.row_factory = sqlite3.Row
    return conn


class NoLog(sqlite3.OperationalError):
    """The review server started before the ingest server created the log;
    an OperationalError, as the failure to open it was."""


def get_db():
    """The request's read-only connection, opened on first use."""
    if "db" not in g:
        path = current_app.config["DATABASE"]
        try:
            g.db = connect(path, readonly=True, timeout=current_app.config["STORAGE_TIMEOUT"])
        except sqlite3.OperationalError:
            # Only the writer creates the log: with none in this app (the
            # review server), a missing file is one not created yet.
            if os.path.exists(path) or "tim_audit" in current_app.extensions:
                raise
            raise NoLog(
                "the log does not exist yet: the ingest server creates it when it first starts"
            ) from None
        # TEXT that is not UTF-8 (only tampering stores it) would fail the
        # whole page; shown with replacement characters, the row's own
        # verification flags it.
        g.db.text_factory = lambda data: data.decode("utf-8", "replace")
    return g.db


def require_log():
    """before_request of every review page and export, after sign-in: a
    log that cannot be opened is answered before any answer has begun, an
    export's included."""
    get_db()


def close_db(exc=None):
    db = g.pop("db", None)
    if db is not None:
        db.close()


def init_app(app):
    app.teardown_appcontext(close_db)
