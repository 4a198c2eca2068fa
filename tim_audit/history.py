"""The dashboard: the history of group creation, for compliance reviewers.

Every page and export sits behind HTTP Basic authentication (auth.py) and
reads through the request's read-only connection. A filtered view lives
entirely in its URL, so it can be pasted into a report.
"""

import dataclasses
import datetime
import json
import re
import time
from zoneinfo import ZoneInfo

from flask import (
    Blueprint, Response, abort, current_app, g, redirect, render_template, request,
    stream_with_context, url_for,
)
from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load, validate, validates_schema

from . import chain, exports, queries
from .auth import require_reviewer
from .db import get_db

bp = Blueprint("history", __name__)
bp.before_request(require_reviewer)

CHART_DAYS = 60
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2})?"
)
_MAX_TEXT = 256
FILTER_NAMES = ("group_id", "owner", "operator", "member", "type", "q", "since", "until")


class Moment(fields.Field):
    """An ISO date (a whole day) or date-time; without an offset it is read
    in DISPLAY_TIMEZONE. Loads as (datetime, is_whole_day)."""

    def _deserialize(self, value, attr, data, **kwargs):
        whole_day = isinstance(value, str) and bool(_DATE.fullmatch(value))
        try:
            if not (whole_day or isinstance(value, str) and _DATE_TIME.fullmatch(value)):
                raise ValueError
            return datetime.datetime.fromisoformat(value), whole_day
        except ValueError:
            raise ValidationError(
                "Not an ISO date or date-time, such as 2026-03-01, 2026-03-01T08:30"
                " or 2026-03-01T08:30:00.000+08:00."
            ) from None


class PageArgs(Schema):
    """The query string of a paged list: how many rows, from where."""

    class Meta:
        unknown = EXCLUDE

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    before = fields.Integer(load_default=None, validate=validate.Range(min=1, max=2**63 - 1))

    @pre_load
    def _leave_out_empty(self, data, **kwargs):
        """An empty form field means "any"."""
        return {key: value for key, value in data.items() if value != ""}


class HistoryArgs(PageArgs):
    """The query string of /history and its exports."""

    group_id = fields.String(load_default=None, validate=validate.Length(max=_MAX_TEXT))
    owner = fields.String(load_default=None, validate=validate.Length(max=_MAX_TEXT))
    operator = fields.String(load_default=None, validate=validate.Length(max=_MAX_TEXT))
    member = fields.String(load_default=None, validate=validate.Length(max=_MAX_TEXT))
    type = fields.String(load_default=None, validate=validate.Length(max=_MAX_TEXT))
    q = fields.String(load_default=None, validate=validate.Length(max=_MAX_TEXT))
    since = Moment(load_default=None)
    until = Moment(load_default=None)
    after = fields.Integer(load_default=None, validate=validate.Range(min=1, max=2**63 - 1))

    @validates_schema
    def _one_cursor(self, data, **kwargs):
        if data["before"] is not None and data["after"] is not None:
            raise ValidationError("Use before or after, not both.", "before")


def _zone():
    return ZoneInfo(current_app.config["DISPLAY_TIMEZONE"])


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _milliseconds(moment, end):
    """A Moment as ms since the epoch: a whole day starts at its first ms,
    or (for ``until``) ends at its last."""
    when, whole_day = moment
    if when.tzinfo is None:
        when = when.replace(tzinfo=_zone())
    if whole_day and end:
        return _ms(when + datetime.timedelta(days=1)) - 1
    return _ms(when)


def _ms(when):
    return (when - _EPOCH) // datetime.timedelta(milliseconds=1)


def _load(schema):
    """The query string through ``schema``; a 400 page naming each problem."""
    try:
        return schema().load(request.args.to_dict())
    except ValidationError as exc:
        abort(400, description=_problems(exc.messages))


def _arguments():
    """The validated query string of a history view, and its filters."""
    args = _load(HistoryArgs)
    try:
        since = None if args["since"] is None else _milliseconds(args["since"], end=False)
        until = None if args["until"] is None else _milliseconds(args["until"], end=True)
    except (OverflowError, ValueError):
        abort(400, description="since/until: out of range.")
    filters = queries.Filters(
        group_id=args["group_id"], owner=args["owner"], operator=args["operator"],
        member=args["member"], type=args["type"], q=args["q"], since=since, until=until,
    )
    return args, filters


def _problems(messages):
    return "; ".join(f"{field}: {' '.join(problems)}" for field, problems in messages.items())


@bp.get("/")
def index():
    return redirect(url_for("history.events"))


@bp.get("/history")
def events():
    args, filters = _arguments()
    conn = get_db()
    total = queries.count(conn, filters)
    result = queries.Page([], None, None)
    if total:
        try:
            result = queries.page(conn, filters, args["limit"], args["before"], args["after"])
        except queries.UnknownCursor as exc:
            abort(400, description=f"There is no event {exc.args[0]} to page from.")
    return render_template(
        "history.html",
        integrity=_integrity(conn),
        page=result,
        total=total,
        chart=_chart(conn, filters) if total else None,
        filters={name: request.args.get(name, "") for name in FILTER_NAMES},
        limit=args["limit"],
        query_string=_query_string(),
    )


def _integrity(conn):
    """What the header strip shows; starts a verification when one is due."""
    verifier = current_app.extensions["tim_audit.verifier"]
    verifier.start_if_due()
    head_id, head_hash = queries.head(conn)
    last = verifier.last
    covered = head_id if last is None or last.failure else last.count
    return {"total": head_id, "head_id": head_id, "head_hash": head_hash,
            "last": last, "running": verifier.running, "newer": head_id - covered}


def _query_string():
    """This URL's filters and limit, without its cursor, for links."""
    return {k: v for k, v in request.args.items() if k in FILTER_NAMES + ("limit",) and v}


def _chart(conn, filters):
    """Events per day (in DISPLAY_TIMEZONE) over the last CHART_DAYS days
    that the filter reaches, ending at ``until`` or the newest match."""
    zone = _zone()
    # An until in the future would chart empty days.
    newest = queries.newest(conn, filters if filters.until is None else queries.Filters())
    if newest is None:
        return None  # what matches is tampered rows whose EventTime is no integer
    end = newest if filters.until is None else min(filters.until, newest)
    last_day = datetime.datetime.fromtimestamp(end / 1000, zone).date()
    first_day = last_day - datetime.timedelta(days=CHART_DAYS - 1)
    if filters.since is not None:
        first_day = max(first_day, datetime.datetime.fromtimestamp(filters.since / 1000, zone).date())
    days = []
    day = first_day
    while day <= last_day:
        following = day + datetime.timedelta(days=1)
        start = _ms(datetime.datetime.combine(day, datetime.time(), zone))
        stop = _ms(datetime.datetime.combine(following, datetime.time(), zone))
        # Clipped to since/until here, so each day is one index range.
        if filters.since is not None:
            start = max(start, filters.since)
        if filters.until is not None:
            stop = min(stop, filters.until + 1)
        days.append((day, start, stop))
        day = following
    unbounded = dataclasses.replace(filters, since=None, until=None)
    counts = queries.per_day(conn, unbounded, [(start, stop) for _, start, stop in days])
    return {"days": [(day, n) for (day, _, _), n in zip(days, counts, strict=True)], "max": max(counts)}


@bp.get("/history/<int:event_id>")
def event(event_id):
    conn = get_db()
    row = queries.event(conn, event_id) if event_id < 2**63 else None
    if row is None:
        abort(404, description=f"There is no event {event_id}.")
    members = queries.members(conn, event_id)
    try:
        chain.verify_event(conn, event_id, current_app.config["AUDIT_HMAC_KEY"])
        broken = None
    except chain.ChainBroken as exc:
        broken = str(exc)
    received = _as_text(row["raw"])
    try:
        raw = json.dumps(json.loads(received), ensure_ascii=False, indent=2)
    except ValueError:
        raw = received
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
        same_group=queries.same_group(conn, row["group_id"], event_id),
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
    return _export("csv", exports.csv_chunks, "text/csv")


@bp.get("/history.json")
def export_json():
    return _export("json", exports.json_chunks, "application/json")


def _export(extension, chunks, mimetype):
    _, filters = _arguments()
    slot = _export_slot()
    counter = {"rows": 0}
    reviewer, asked = g.reviewer, _query_string()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())

    def stream():
        try:
            yield from chunks(get_db(), filters, counter)
        finally:
            slot()
            current_app.logger.info(
                "export reviewer=%s format=%s rows=%d filters=%s", json.dumps(reviewer),
                extension, counter["rows"], json.dumps(asked, ensure_ascii=False),
                extra={"fields": {"event": "export", "reviewer": reviewer, "format": extension,
                                  "rows": counter["rows"], "filters": asked}},
            )

    response = Response(
        stream_with_context(stream()),
        mimetype=mimetype,
        headers={"Content-Disposition": f'attachment; filename="tim-audit-events-{stamp}.{extension}"'},
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
        abort(429, description=(
            f"{current_app.config['MAX_EXPORTS']} exports are running already;"
            " try again when one has finished."
        ))
    held = [running]
    return lambda: held and held.pop().release()


@bp.post("/history/verify")
def verify():
    """Start a verification now; it is read-only, so a forged request can
    do no more than start one (and only one runs at a time)."""
    current_app.extensions["tim_audit.verifier"].start()
    return redirect(url_for("history.events"), 303)


@bp.get("/quarantine")
def quarantine():
    args = _load(PageArgs)
    conn = get_db()
    rows, older = queries.quarantined(conn, args["limit"], args["before"])
    return render_template(
        "quarantine.html", integrity=_integrity(conn), rows=rows, older=older, limit=args["limit"]
    )


@bp.get("/quarantine/<int:row_id>.raw")
def quarantined_body(row_id):
    row = queries.quarantined_row(get_db(), row_id) if row_id < 2**63 else None
    if row is None or row["raw"] is None:
        abort(404, description=f"No body is kept for quarantined delivery {row_id}.")
    return Response(
        bytes(row["raw"]), mimetype="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="tim-audit-quarantine-{row_id}.body"'},
    )


@bp.app_template_filter("utc")
def utc(ms):
    """UTC ISO 8601 with milliseconds, as exported."""
    if not isinstance(ms, int):
        return _as_text(ms)  # a tampered row's value, as stored
    when = datetime.datetime.fromtimestamp(ms // 1000, datetime.timezone.utc)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


@bp.app_template_filter("local")
def local(ms):
    """The same instant in DISPLAY_TIMEZONE."""
    if not isinstance(ms, int):
        return _as_text(ms)
    when = datetime.datetime.fromtimestamp(ms // 1000, _zone())
    return f"{when:%Y-%m-%d %H:%M:%S}.{ms % 1000:03d}"


@bp.app_context_processor
def _page_globals():
    return {"display_timezone": current_app.config["DISPLAY_TIMEZONE"]}


@bp.app_errorhandler(400)
@bp.app_errorhandler(404)
@bp.app_errorhandler(429)
def _error_page(exc):
    headers = {"Retry-After": "10"} if exc.code == 429 else {}
    return render_template("error.html", error=exc), exc.code, headers
