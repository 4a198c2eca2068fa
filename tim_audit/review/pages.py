"""What every page of the dashboard shares, whichever blueprint serves it:
the integrity strip, the list pages' form and filter summary, the template
filters, the error pages, and the bound on running exports. The review app
registers it once (init_app); each view calls what it needs.
"""

import contextlib
import json
import re
import sqlite3
import threading
import time

from flask import (
    Response,
    abort,
    current_app,
    g,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from markupsafe import Markup, escape
from werkzeug.exceptions import ServiceUnavailable

from ..log import chain, checkpoints, witnesses
from ..log.db import NoLog, get_db
from . import queries, times

# The reason callback.py gives a conflicting repeat; the rest of it is fixed text.
_REPEAT_OF = re.compile(r"repeat of event ([1-9][0-9]{0,17}) \(")


def init_app(app):
    """The filters, globals and error pages of every page, app-wide, and the
    MAX_EXPORTS places for running exports."""
    app.extensions["tim_audit.exports"] = threading.BoundedSemaphore(app.config["MAX_EXPORTS"])
    for function in (chain.as_bytes, count, utc, local, repeat_of, wbr, id_parts, key_id):
        app.add_template_filter(function)
    app.context_processor(_page_globals)
    for code in (400, 404, 429):
        app.register_error_handler(code, _error_page)
    app.register_error_handler(NoLog, _no_log)


def integrity(conn):
    """What the header strip shows; starts a verification when one is due."""
    verifier = current_app.extensions["tim_audit.verifier"]
    verifier.start_if_due()
    head_id, head_hash = queries.head(conn)
    quarantined = queries.quarantine_size(conn)
    last = verifier.last
    failed = last is None or last.failure
    return {
        "total": head_id,
        "head_id": head_id,
        "head_hash": head_hash,
        "quarantined": quarantined,
        "last": last,
        "running": verifier.running,
        "newer": head_id - (head_id if failed else last.count),
        "newer_quarantined": quarantined - (quarantined if failed else last.quarantined),
    }


def _latest_checkpoint():
    with contextlib.suppress(sqlite3.OperationalError):  # no checkpoint table yet
        return checkpoints.latest(get_db())
    return None


def _witnessing():
    """For the strip: each configured witness's name and the size of the
    newest checkpoint it cosigned (None before the log has the table), and
    the quorum; None when WITNESSES is empty."""
    configured = current_app.config["WITNESSES"]
    if not configured:
        return None
    sizes = {}
    with contextlib.suppress(sqlite3.OperationalError):
        sizes = {w["key"]: witnesses.last_cosigned(get_db(), w["key"]) for w in configured}
    return {
        "quorum": current_app.config["WITNESS_QUORUM"],
        "witnesses": [
            (witness["key"].split("+")[0], sizes.get(witness["key"])) for witness in configured
        ],
    }


def _page_globals():
    zone = current_app.config["DISPLAY_TIMEZONE"]
    return {
        "display_timezone": zone,
        "shown_in_utc": zone in ("UTC", "Etc/UTC"),
        "latest_checkpoint": _latest_checkpoint,
        "witnessing": _witnessing,
    }


def list_page(template, endpoint, names, context, problems=None):
    """A list page: its form filled in as sent, the active filters (each
    with a link that drops it), and what is wrong with any of them."""
    kept = query_string(names)
    active = [
        {
            "name": name,
            "label": label,
            "value": kept[name],
            "remove": url_for(endpoint, **{k: v for k, v in kept.items() if k != name}),
        }
        for name, label in names.items()
        if name in kept
    ]
    return render_template(
        template,
        form={name: request.args.get(name, "") for name in (*names, "limit")},
        active=active,
        problems=problems or {},
        query_string=kept,
        clear=url_for(endpoint, **{k: v for k, v in kept.items() if k == "limit"}),
        **context,
    )


def query_string(names):
    """This URL's filters and limit, without its cursor, for links."""
    return {k: v for k, v in request.args.items() if (k in names or k == "limit") and v}


def export(what, extension, chunks, mimetype, filters, names):
    """The whole set of ``what`` that ``filters`` match, as ``chunks``
    yields it, streamed in one of MAX_EXPORTS places and logged with the
    filters of ``names`` as asked."""
    slot = _export_slot()
    counter = {"rows": 0}
    reviewer, asked = g.reviewer, query_string(names)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())

    def stream():
        try:
            yield from chunks(get_db(), filters, counter)
        finally:
            slot()
            current_app.logger.info(
                "export reviewer=%s what=%s format=%s rows=%d filters=%s",
                json.dumps(reviewer),
                what,
                extension,
                counter["rows"],
                json.dumps(asked, ensure_ascii=False),
                extra={
                    "fields": {
                        "event": "export",
                        "reviewer": reviewer,
                        "what": what,
                        "format": extension,
                        "rows": counter["rows"],
                        "filters": asked,
                    }
                },
            )

    response = Response(
        stream_with_context(stream()),
        mimetype=mimetype,
        headers={
            "Content-Disposition": f'attachment; filename="tim-audit-{what}-{stamp}.{extension}"'
        },
    )
    # Also when the server closes a response it never started to send.
    response.call_on_close(slot)
    return response


def _export_slot():
    """One of MAX_EXPORTS places for a running export, or a 429 page. The
    place is given back by the callable returned, once however often it is
    called: a stalled download holds a thread, and these bound how many."""
    running = current_app.extensions["tim_audit.exports"]
    if not running.acquire(blocking=False):
        abort(
            429,
            description=(
                f"{current_app.config['MAX_EXPORTS']} exports are running already;"
                " try again when one has finished."
            ),
        )
    held = [running]
    return lambda: held and held.pop().release()


def as_text(value):
    """A stored value as text, whatever its type: only a tampered row holds
    anything but the declared one, and its page must still show it."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def count(value):
    """A whole number with thousands separators; a stored value of another
    type (only tampering stores one, and verify names it) as it is."""
    return f"{value:,}" if type(value) is int else value


def utc(ms):
    """UTC ISO 8601 with milliseconds, as exported."""
    if not isinstance(ms, int):
        return as_text(ms)  # a tampered row's value, as stored
    when = times.instant(ms)
    if when is None:
        return f"{ms} ms"
    return when.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def local(ms):
    """The same instant in DISPLAY_TIMEZONE (in UTC where that zone's
    calendar ends, at the edges of years 1 and 9999)."""
    when = times.instant(ms) if isinstance(ms, int) else None
    try:
        return (
            when.astimezone(times.zone())
            .replace(tzinfo=None)
            .isoformat(" ", timespec="milliseconds")
        )
    except (AttributeError, OverflowError):
        return utc(ms)


def repeat_of(reason):
    """(event id, the rest of the reason) when ``reason`` is a conflicting
    repeat's, else None. It is stored data, so anything else is shown as is."""
    found = _REPEAT_OF.match(reason) if isinstance(reason, str) else None
    return (int(found.group(1)), reason[found.end(1) :]) if found else None


def wbr(value, marks):
    """``value``, escaped, free to wrap after each of ``marks`` and nowhere
    else: a query string at "&", an account at "_", never inside a word."""
    pieces = re.split(f"(?<=[{re.escape(marks)}])", as_text(value))
    return Markup("<wbr>").join(escape(piece) for piece in pieces)


def id_parts(value, keep=8):
    """An id as (lead, head, tail): the lead ends at its last punctuation
    and may wrap there; of the run after it, the tail (the last ``keep``
    characters) always shows, so that ids which differ at the end look
    different even when the head is cut."""
    text = as_text(value)
    run = re.search(r"[0-9A-Za-z]*\Z", text).start()
    split = max(run, len(text) - keep)
    return text[:run], text[run:split], text[split:]


def key_id(verifier_key):
    """The key ID of a verifier key name+keyid+base64; a stored value that
    is no such key (only tampering stores one, and verify names it) is
    shown whole."""
    if not isinstance(verifier_key, str):
        return verifier_key
    parts = verifier_key.split("+", 2)
    return parts[1] if len(parts) == 3 else verifier_key


def _error_page(exc):
    headers = {"Retry-After": "10"} if exc.code in (429, 503) else {}
    return render_template("error.html", error=exc), exc.code, headers


def _no_log(exc):
    return _error_page(ServiceUnavailable(f"{exc}."))
