"""Starting the log for an app: where its file goes, and what to tell the
operator when it cannot be used. The writer itself (writer.py) knows
nothing of Flask."""

import os

import sqlite3

from flask import current_app

from . import db
from ..config import StartupError
from .chain import ChainBroken
from .records import ChainMismatch


def open_log(app):
    """Create the log if need be and start the writer, as the ingest server
    starts; explain a database that cannot be used rather than show a
    traceback. Returns ``app``."""
    path = os.path.abspath(app.config["DATABASE"])
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        if directory != os.path.abspath(app.instance_path):
            raise StartupError(
                f"the directory of DATABASE, {directory}, does not exist: create it"
                " (writable by the user running tim-audit) or set DATABASE to a"
                " file in an existing directory"
            )
        try:
            os.makedirs(directory)
        except OSError as exc:
            raise StartupError(
                f"cannot create the instance folder {directory}: {exc.strerror}"
            ) from None
        app.logger.warning(
            "the instance folder %s did not exist: created it (is TIM_AUDIT_INSTANCE_PATH right?)",
            directory,
        )
    if not os.access(directory, os.W_OK):
        raise StartupError(
            f"the directory {directory} is not writable by this user: SQLite"
            " keeps its -wal and -shm files beside the database. Give the user"
            " running tim-audit write access to it, or set DATABASE elsewhere"
        )
    if not os.path.exists(path):
        app.logger.info("there is no log at %s: starting a new, empty one", path)
    try:
        app.extensions["tim_audit"].open()
    except ChainMismatch as exc:
        raise StartupError(str(exc)) from None
    except db.Held as exc:
        raise StartupError(
            f"{exc}: one process writes a log; stop the other ingest server, or wait for"
            " rebuild-index to finish"
        ) from None
    except ChainBroken as exc:
        raise StartupError(
            f"the log does not verify, so its Merkle trees cannot be built over it: {exc}"
        ) from None
    except sqlite3.Error as exc:
        raise StartupError(f"cannot open the database {path}: {exc}") from None
    return app


def current_log():
    return current_app.extensions["tim_audit"]
