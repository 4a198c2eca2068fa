"""The dashboard: the history of group creation, for compliance reviewers.

Every page and export sits behind HTTP Basic authentication (auth.py) and
reads through the request's read-only connection. A filtered view lives
entirely in its URL, so it can be pasted into a report.
"""

import dataclasses
import datetime
import itertools
import json
import re
import time
from zoneinfo import ZoneInfo

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
from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates_schema,
)
from werkzeug.exceptions import ServiceUnavailable

from ..log import chain, verification
from . import counting, exports, queries, search
from ..ingest.schemas import MAX_EVENT_TIME, MIN_EVENT_TIME
from .auth import require_reviewer
from ..log.db import NoLog, get_db, require_log

bp = Blueprint("history", __name__)
bp.before_request(require_reviewer)
bp.before_request(require_log)

HOUR = 3_600_000
DAY = 24 * HOUR
# The chart's unit for the span of its range: hours under two days, days
# up to three months, then weeks, months and, past ten years, years.
CHART_UNITS = [
    (2 * DAY, "hour"),
    (92 * DAY, "day"),
    (730 * DAY, "week"),
    (3653 * DAY, "month"),
    (None, "year"),
]
# Every how many units the axis is labelled, the fewest that keep it to
# MAX_TICKS labels.
CHART_STEPS = {
    "hour": (1, 2, 3, 6, 12),
    "day": (1, 2, 7, 14),
    "week": (1, 2, 4, 8, 13, 26),
    "month": (1, 2, 3, 6, 12),
    "year": (1, 2, 5, 10, 20),
}
MAX_TICKS = 8
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2})?"
)
_MAX_TEXT = 256
_ID = validate.Range(min=1, max=2**63 - 1)

# The filters of each list, in the order the summary names them.
HISTORY_FILTERS = {
    "group_id": "GroupId",
    "owner": "Owner",
    "operator": "Operator",
    "member": "Initial member",
    "type": "Type",
    "q": "Name contains",
    "since": "Since",
    "until": "Until",
}
QUARANTINE_FILTERS = {
    "error_code": "ErrorCode",
    "command": "CallbackCommand",
    "repeat_of": "Repeat of event",
    "since": "Received since",
    "until": "Received until",
}
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
    before = fields.Integer(load_default=None, validate=_ID)

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
    after = fields.Integer(load_default=None, validate=_ID)

    @validates_schema
    def _one_cursor(self, data, **kwargs):
        if data["before"] is not None and data["after"] is not None:
            raise ValidationError("Use before or after, not both.", "before")


class QuarantineArgs(PageArgs):
    """The query string of /quarantine and its exports."""

    error_code = fields.Integer(load_default=None, validate=validate.Range(min=0, max=2**31 - 1))
    command = fields.String(load_default=None, validate=validate.Length(max=_MAX_TEXT))
    repeat_of = fields.Integer(load_default=None, validate=_ID)
    since = Moment(load_default=None)
    until = Moment(load_default=None)


class BadQuery(Exception):
    """A query string that cannot be answered; ``problems`` maps each
    field to what is wrong with it."""

    def __init__(self, problems):
        super().__init__(problems)
        self.problems = problems


def _zone():
    return ZoneInfo(current_app.config["DISPLAY_TIMEZONE"])


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _ms(when):
    return (when - _EPOCH) // datetime.timedelta(milliseconds=1)


def _load(schema):
    """The query string through ``schema``, and since/until in ms."""
    try:
        args = schema().load(request.args.to_dict())
    except ValidationError as exc:
        raise BadQuery(
            {field: " ".join(problems) for field, problems in exc.messages.items()}
        ) from None
    for name, end in (("since", False), ("until", True)):
        if args.get(name) is not None:
            args[name] = _milliseconds(name, *args[name], end=end)
    return args


def _milliseconds(name, when, whole_day, end):
    """A Moment as ms since the epoch: a whole day starts at its first ms,
    or (for ``until``) ends at its last."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=_zone())
    try:
        if whole_day and end:
            return _ms(when + datetime.timedelta(days=1)) - 1
        return _ms(when)
    except OverflowError:
        raise BadQuery({name: "Out of range: use a date from 0001-01-01 to 9999-12-30."}) from None


def _history_filters(args):
    verifier = current_app.extensions.get("tim_audit.verifier")
    return queries.Filters(
        **{name: args[name] for name in HISTORY_FILTERS},
        derived=verifier is None or not verifier.derived_failed,
    )


def _quarantine_filters(args):
    return queries.QuarantineFilters(**{name: args[name] for name in QUARANTINE_FILTERS})


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
        args = _load(HistoryArgs)
        filters = search.route(conn, _history_filters(args))
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
                context["chart"] = _chart(conn, filters)
    except BadQuery as exc:
        return _list_page(
            "history.html", "history.events", HISTORY_FILTERS, context, exc.problems
        ), 400
    except queries.UnknownCursor as exc:
        cursor = "before" if request.args.get("before") else "after"
        problems = {cursor: f"There is no event {exc.args[0]} to page from."}
        return _list_page("history.html", "history.events", HISTORY_FILTERS, context, problems), 400
    return _list_page("history.html", "history.events", HISTORY_FILTERS, context)


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


def _chart(conn, filters):
    """Events per hour, day, week, month or year (in DISPLAY_TIMEZONE),
    whichever fits the range: from ``since`` or the oldest match to
    ``until`` or the newest, never past the log's own first and last
    events. An hourly chart shows a day at least.

    Only EventTimes the schema accepts are charted: their days exist in
    every zone. None when no match lies in that range.
    """
    zone = _zone()
    since = MIN_EVENT_TIME if filters.since is None else max(filters.since, MIN_EVENT_TIME)
    until = MAX_EVENT_TIME if filters.until is None else min(filters.until, MAX_EVENT_TIME)
    if since > until:
        return None
    charted = dataclasses.replace(filters, since=since, until=until)
    last = counting.newest(conn, charted)
    if last is None:
        return None
    first = counting.oldest(conn, charted)
    everything = queries.Filters(since=MIN_EVENT_TIME, until=MAX_EVENT_TIME)
    if filters.since is not None:  # a since before the log began would chart empty days
        first = max(since, counting.oldest(conn, everything))
    if filters.until is not None:  # and an until in the future, empty days to come
        last = min(until, counting.newest(conn, everything))
    unit = next(unit for span, unit in CHART_UNITS if span is None or last - first < span)
    if unit == "hour":
        first = max(since, min(first, last - 23 * HOUR))
    starts = _unit_starts(unit, first, last, zone)
    # Clipped to since/until here, so each bar is one index range.
    spans = [
        (max(_ms(start), since), min(_ms(stop), until + 1))
        for start, stop in itertools.pairwise(starts)
    ]
    unbounded = dataclasses.replace(filters, since=None, until=None)
    counts = counting.per_day(conn, unbounded, spans)
    step = next(
        (n for n in CHART_STEPS[unit] if len(spans) <= MAX_TICKS * n), CHART_STEPS[unit][-1]
    )
    width = 100 / len(spans)
    return {
        "unit": unit,
        "first": _label(unit, starts[0], "title"),
        "last": _label(unit, starts[-2], "title"),
        "peak": max(counts),
        "bars": [
            {"x": round(n * width, 4), "title": _label(unit, start, "title"), "count": count}
            for n, (start, count) in enumerate(zip(starts[:-1], counts, strict=True))
        ],
        "width": round(width, 4),
        "ticks": [
            {"x": round((n + 0.5) * width, 4), "label": _label(unit, start, "tick")}
            for n, start in enumerate(starts[:-1])
            if _ordinal(unit, start) % step == 0
        ],
    }


def _unit_starts(unit, first, last, zone):
    """The start of each ``unit`` from the one holding ms ``first`` to the
    one holding ``last``, and the start of the one after (local times)."""
    local = _instant(first).astimezone(zone)
    if unit == "hour":
        # Stepped in UTC: a local hour may repeat or be missing.
        at = local.replace(minute=0, second=0, microsecond=0).astimezone(datetime.timezone.utc)
        starts = [at]
        while _ms(starts[-1]) <= last:
            starts.append(starts[-1] + datetime.timedelta(hours=1))
        return [start.astimezone(zone) for start in starts]
    day = local.date()
    day = {
        "day": day,
        "week": day - datetime.timedelta(days=day.weekday()),
        "month": day.replace(day=1),
        "year": day.replace(month=1, day=1),
    }[unit]
    starts = [datetime.datetime.combine(day, datetime.time(), zone)]
    while _ms(starts[-1]) <= last:
        day = starts[-1].date()
        if unit in ("day", "week"):
            day += datetime.timedelta(days=1 if unit == "day" else 7)
        elif unit == "month":
            day = day.replace(year=day.year + day.month // 12, month=day.month % 12 + 1)
        else:
            day = day.replace(year=day.year + 1)
        starts.append(datetime.datetime.combine(day, datetime.time(), zone))
    return starts


def _ordinal(unit, start):
    """A running number of ``unit``s, so that ticks fall on round values:
    whole hours of the day, Mondays, the first months of quarters."""
    return {
        "hour": start.hour,
        "day": start.toordinal() - 1,
        "week": start.toordinal() // 7,
        "month": start.month - 1,
        "year": start.year,
    }[unit]


def _label(unit, start, form):
    """A bar's title, or its tick on the axis: short, a new day's date
    where hours begin one."""
    if unit == "hour":
        if form == "title":
            return f"{start:%Y-%m-%d %H:00}"
        return f"{start:%b} {start.day}" if start.hour == 0 else f"{start:%H:00}"
    if unit == "month":
        return f"{start:%Y-%m}" if form == "title" else f"{start:%b %Y}"
    if unit == "year":
        return str(start.year)
    if form == "title":
        return f"week of {start:%Y-%m-%d}" if unit == "week" else f"{start:%Y-%m-%d}"
    return f"{start:%b} {start.day}"


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
    "events": (HistoryArgs, _history_filters, HISTORY_FILTERS, "history.events"),
    "quarantine": (QuarantineArgs, _quarantine_filters, QUARANTINE_FILTERS, "history.quarantine"),
}


def _export(what, extension, chunks, mimetype):
    """The whole matching set of ``what``, as ``chunks`` yields it, streamed;
    bad filters get their list page, marked, as a 400."""
    schema, make_filters, names, endpoint = _EXPORTED[what]
    try:
        filters = make_filters(_load(schema))
    except BadQuery:
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
        args = _load(QuarantineArgs)
        filters = _quarantine_filters(args)
        context["total"] = queries.quarantine_count(conn, filters)
        context["rows"], context["older"] = queries.quarantined(
            conn, filters, args["limit"], args["before"]
        )
    except BadQuery as exc:
        return _list_page(
            "quarantine.html", "history.quarantine", QUARANTINE_FILTERS, context, exc.problems
        ), 400
    return _list_page("quarantine.html", "history.quarantine", QUARANTINE_FILTERS, context)


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


def _instant(ms):
    """``ms`` as an aware UTC datetime, or None for a value no datetime can
    hold: received_at is whatever the writer stored, and a tampered row can
    hold anything."""
    try:
        return _EPOCH + datetime.timedelta(milliseconds=ms)
    except (OverflowError, TypeError):
        return None


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
    when = _instant(ms)
    if when is None:
        return f"{ms} ms"
    return when.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


@bp.app_template_filter("local")
def local(ms):
    """The same instant in DISPLAY_TIMEZONE (in UTC where that zone's
    calendar ends, at the edges of years 1 and 9999)."""
    when = _instant(ms) if isinstance(ms, int) else None
    try:
        return when.astimezone(_zone()).replace(tzinfo=None).isoformat(" ", timespec="milliseconds")
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
