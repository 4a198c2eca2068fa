"""The dashboard: the history of group creation, for compliance reviewers.

Every page and export sits behind HTTP Basic authentication (auth.py) and
reads through the request's read-only connection. A filtered view lives
entirely in its URL, so it can be pasted into a report.
"""

import json
import re
import time

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from markupsafe import Markup, escape
from werkzeug.exceptions import ServiceUnavailable

from ..log import chain, verification
from . import chart, counting, exports, forms, queries, search, times
from .auth import require_reviewer
from ..log.db import NoLog, get_db, require_log

bp = Blueprint("history", __name__)
bp.before_request(require_reviewer)
bp.before_request(require_log)

# What each ErrorCode kept in quarantine means, for the Kind filter.
QUARANTINE_KINDS = {
    0: "repeat with a different body",
    60020: "body too large",
    60021: "body not JSON",
    60022: "JSON but not an object",
    60023: "CallbackCommand differs",
    60024: "invalid fields",
}
# The reason callback.py gives a conflicting repeat; the rest of it is fixed text.
_REPEAT_OF = re.compile(r"repeat of event ([1-9][0-9]{0,17}) \(")


@bp.get("/")
def index():
    return redirect(url_for("history.events"))


@bp.get("/history")
def events():
    conn = get_db()
    context = {
        "integrity": _integrity(conn),
        "total": None,
        "chart": None,
        "page": queries.Page([], None, None),
        "count_time_ms": round(counting.COUNT_TIME * 1000),
    }
    try:
        args = forms.load(forms.HistoryArgs)
        filters = search.route(conn, forms.history_filters(args))
        context["total"] = total = counting.count(conn, filters)
        # A count cut short may have stopped before its first match.
        if total.value or total.kind != "exact":
            context["page"] = page = queries.page(
                conn, filters, args["limit"], args["before"], args["after"]
            )
            if total.kind == "at least" and not (args["before"] or args["after"]):
                context["total"] = counting.Count(max(total.value, len(page.rows)), total.kind)
            # Per-day counts cost no more than the count when that was exact.
            if total.kind == "exact":
                context["chart"] = chart.chart(conn, filters)
    except forms.BadQuery as exc:
        return _list_page(
            "history.html", "history.events", forms.HISTORY_FILTERS, context, exc.problems
        ), 400
    except queries.UnknownCursor as exc:
        cursor = "before" if request.args.get("before") else "after"
        problems = {cursor: f"There is no event {exc.args[0]} to page from."}
        return _list_page(
            "history.html", "history.events", forms.HISTORY_FILTERS, context, problems
        ), 400
    return _list_page("history.html", "history.events", forms.HISTORY_FILTERS, context)


def _list_page(template, endpoint, names, context, problems=None):
    """A list page: its form filled in as sent, the active filters (each
    with a link that drops it), and what is wrong with any of them."""
    kept = _query_string(names)
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


def _integrity(conn):
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


def _query_string(names):
    """This URL's filters and limit, without its cursor, for links."""
    return {k: v for k, v in request.args.items() if (k in names or k == "limit") and v}


@bp.get("/history/<int:event_id>")
def event(event_id):
    conn = get_db()
    row = queries.event(conn, event_id) if event_id < 2**63 else None
    if row is None:
        abort(404, description=f"There is no event {event_id}.")
    members = queries.members(conn, event_id)
    try:
        verification.verify_event(conn, event_id, current_app.config["AUDIT_HMAC_KEY"])
        broken = None
    except chain.ChainBroken as exc:
        broken = str(exc)
    received = _as_text(row["raw"])
    try:
        raw = json.dumps(json.loads(received), ensure_ascii=False, indent=2)
    except ValueError:
        raw = received
    same_group, more_same_group = queries.same_group(conn, row["group_id"], event_id)
    return render_template(
        "event.html",
        integrity=_integrity(conn),
        event=row,
        members=members,
        user_data=_user_data(row["user_data"]),
        raw=raw,
        received=received,
        raw_size=len(row["raw"] if isinstance(row["raw"], bytes) else received.encode()),
        previous=queries.previous_hash(conn, event_id),
        broken=broken,
        same_group=same_group,
        more_same_group=more_same_group,
        repeats=queries.quarantined(
            conn, queries.QuarantineFilters(repeat_of=event_id), queries.EVENT_PAGE_ROWS
        )[0],
        repeat_count=queries.repeat_count(conn, event_id),
    )


def _as_text(value):
    """A stored value as text, whatever its type: only a tampered row holds
    anything but the declared one, and its page must still show it."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _user_data(stored):
    """UserDefinedDataList as a list of {Key, Value}, or, when the stored
    value is not one (a tampered row), that value as text."""
    if stored is None:
        return None
    try:
        pairs = json.loads(_as_text(stored))
    except ValueError:
        return _as_text(stored)
    if isinstance(pairs, list) and all(isinstance(pair, dict) for pair in pairs):
        return pairs
    return _as_text(stored)


@bp.get("/history.csv")
def export_csv():
    return _export("events", "csv", exports.csv_chunks, "text/csv")


@bp.get("/history.json")
def export_json():
    return _export("events", "json", exports.json_chunks, "application/json")


@bp.get("/quarantine.csv")
def export_quarantine_csv():
    return _export("quarantine", "csv", exports.quarantine_csv_chunks, "text/csv")


@bp.get("/quarantine.json")
def export_quarantine_json():
    return _export("quarantine", "json", exports.quarantine_json_chunks, "application/json")


# What is exported: its query string, filters, filter names and list page.
_EXPORTED = {
    "events": (forms.HistoryArgs, forms.history_filters, forms.HISTORY_FILTERS, "history.events"),
    "quarantine": (
        forms.QuarantineArgs,
        forms.quarantine_filters,
        forms.QUARANTINE_FILTERS,
        "history.quarantine",
    ),
}


def _export(what, extension, chunks, mimetype):
    """The whole matching set of ``what``, as ``chunks`` yields it, streamed;
    bad filters get their list page, marked, as a 400."""
    schema, make_filters, names, endpoint = _EXPORTED[what]
    try:
        filters = make_filters(forms.load(schema))
    except forms.BadQuery:
        return current_app.view_functions[endpoint]()
    slot = _export_slot()
    counter = {"rows": 0}
    reviewer, asked = g.reviewer, _query_string(names)
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


@bp.post("/history/verify")
def verify():
    """Start a verification now. It needs no CSRF token: it is read-only
    and idempotent (one runs at a time; asking again while it runs does
    nothing), so a forged request could at most start one early. A browser
    says when a POST comes from another site, and that is refused anyway."""
    if request.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site"):
        abort(403, description="Verify now is only accepted from the dashboard itself.")
    current_app.extensions["tim_audit.verifier"].start()
    return redirect(url_for("history.events"), 303)


@bp.get("/quarantine")
def quarantine():
    conn = get_db()
    context = {
        "integrity": _integrity(conn),
        "total": None,
        "rows": [],
        "older": None,
        "kinds": QUARANTINE_KINDS,
    }
    try:
        args = forms.load(forms.QuarantineArgs)
        filters = forms.quarantine_filters(args)
        context["total"] = queries.quarantine_count(conn, filters)
        context["rows"], context["older"] = queries.quarantined(
            conn, filters, args["limit"], args["before"]
        )
    except forms.BadQuery as exc:
        return _list_page(
            "quarantine.html", "history.quarantine", forms.QUARANTINE_FILTERS, context, exc.problems
        ), 400
    return _list_page("quarantine.html", "history.quarantine", forms.QUARANTINE_FILTERS, context)


@bp.get("/quarantine/<int:row_id>.raw")
def quarantined_body(row_id):
    row = queries.quarantined_row(get_db(), row_id) if row_id < 2**63 else None
    if row is None or row["raw"] is None:
        abort(404, description=f"No body is kept for quarantined delivery {row_id}.")
    return Response(
        chain.as_bytes(row["raw"]),
        mimetype="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="tim-audit-quarantine-{row_id}.body"'
        },
    )


bp.add_app_template_filter(chain.as_bytes)


@bp.app_template_filter("count")
def count(value):
    """A whole number with thousands separators; a stored value of another
    type (only tampering stores one, and verify names it) as it is."""
    return f"{value:,}" if type(value) is int else value


@bp.app_template_filter("utc")
def utc(ms):
    """UTC ISO 8601 with milliseconds, as exported."""
    if not isinstance(ms, int):
        return _as_text(ms)  # a tampered row's value, as stored
    when = times.instant(ms)
    if when is None:
        return f"{ms} ms"
    return when.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


@bp.app_template_filter("local")
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


@bp.app_template_filter("repeat_of")
def repeat_of(reason):
    """(event id, the rest of the reason) when ``reason`` is a conflicting
    repeat's, else None. It is stored data, so anything else is shown as is."""
    found = _REPEAT_OF.match(reason) if isinstance(reason, str) else None
    return (int(found.group(1)), reason[found.end(1) :]) if found else None


@bp.app_template_filter("wbr")
def wbr(value, marks):
    """``value``, escaped, free to wrap after each of ``marks`` and nowhere
    else: a query string at "&", an account at "_", never inside a word."""
    pieces = re.split(f"(?<=[{re.escape(marks)}])", _as_text(value))
    return Markup("<wbr>").join(escape(piece) for piece in pieces)


@bp.app_template_filter("id_parts")
def id_parts(value, keep=8):
    """An id as (lead, head, tail): the lead ends at its last punctuation
    and may wrap there; of the run after it, the tail (the last ``keep``
    characters) always shows, so that ids which differ at the end look
    different even when the head is cut."""
    text = _as_text(value)
    run = re.search(r"[0-9A-Za-z]*\Z", text).start()
    split = max(run, len(text) - keep)
    return text[:run], text[run:split], text[split:]


@bp.app_context_processor
def _page_globals():
    zone = current_app.config["DISPLAY_TIMEZONE"]
    return {"display_timezone": zone, "shown_in_utc": zone in ("UTC", "Etc/UTC")}


@bp.app_errorhandler(400)
@bp.app_errorhandler(404)
@bp.app_errorhandler(429)
def _error_page(exc):
    headers = {"Retry-After": "10"} if exc.code in (429, 503) else {}
    return render_template("error.html", error=exc), exc.code, headers


@bp.app_errorhandler(NoLog)
def _no_log(exc):
    return _error_page(ServiceUnavailable(f"{exc}."))
