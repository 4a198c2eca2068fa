"""SQLite connections.

The writer (see writer.py) keeps one connection for the life of the
process; every dashboard request reads through a fresh read-only one, so no
page can change the log whatever its code does.
"""

import contextlib
import fcntl
import os
import pathlib
import sqlite3

from flask import current_app, g

from . import derived


def connect(path, *, readonly=False, timeout=1.0):
    """Open ``path`` in WAL mode with the pragmas the log relies on; a
    read-write connection may write the derived tables (derived.py).

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
        derived.allow_writes(conn)
    conn.row_factory = sqlite3.Row
    return conn


class Held(Exception):
    """Another writer holds the log: an ingest server, or rebuild-index."""


def hold(path):
    """Take the lock that the one process writing the log at ``path`` holds
    for as long as it writes: an advisory flock on ``<path>.lock``, which
    the kernel releases however that process ends, so a crash never leaves
    it stale. Returns the lock file's descriptor, to close when done;
    raises :class:`Held` while another holder (even in this process) has it.

    The file names the holder's pid, in one fixed-width write, so that a
    refused process never reads it half written. A file another user made
    (root running rebuild-index first) is still locked, read-only, without
    the pid."""
    path = os.path.realpath(path)  # one lock file, by whichever link the log is named
    try:
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except PermissionError:
        fd = os.open(f"{path}.lock", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise Held(f"process {holder} writes the log at {path} (it holds {path}.lock)") from None
    with contextlib.suppress(OSError):  # read-only: the lock holds without the pid
        os.pwrite(fd, f"{os.getpid():>10}\n".encode("ascii"), 0)
    return fd


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
