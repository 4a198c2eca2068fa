"""The operator's commands, that run the service: init-db, backup,
rebuild-index, send-sample and hash-password."""

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
from ..ingest.callback import RECEIPT_HEADER
from ..log import chain, db, derived, merkle, startup

MIN_PASSWORD = 12
CREATE_GROUP = "Group.CallbackAfterCreateGroup"


@click.command("init-db")
@with_appcontext
def init_db_command():
    """Create the log now, with its chain keyed as configured, before the
    ingest server first starts (which would create it otherwise)."""
    log = startup.open_log(current_app).extensions["tim_audit"]
    log.close()
    click.echo(f"Initialized the database at {log.path}")


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
    source = read_only(current_app.config["DATABASE"])
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
    read_only(path).close()  # the same message as verify's when there is no log
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
        conn = read_only(current_app.config["DATABASE"])
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


def read_only(path):
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
