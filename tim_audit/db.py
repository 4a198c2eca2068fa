"""SQLite connections.

The writer (see auditlog.py) keeps one connection for the life of the
process; every dashboard request reads through a fresh read-only one, so no
page can change the log whatever its code does.
"""

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
        conn = sqlite3.connect(
            path, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA journal_size_limit = 16777216")  # the WAL file, after a burst
    conn.row_factory = sqlite3.Row
    return conn


def get_db():
    """The request's read-only connection, opened on first use."""
    if "db" not in g:
        g.db = connect(
            current_app.config["DATABASE"],
            readonly=True,
            timeout=current_app.config["STORAGE_TIMEOUT"],
        )
        # TEXT that is not UTF-8 (only tampering stores it) would fail the
        # whole page; shown with replacement characters, the row's own
        # verification flags it.
        g.db.text_factory = lambda data: data.decode("utf-8", "replace")
    return g.db


def close_db(exc=None):
    db = g.pop("db", None)
    if db is not None:
        db.close()


def init_app(app):
    app.teardown_appcontext(close_db)
