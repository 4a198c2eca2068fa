"""The dashboard's history of group creation, for compliance reviewers: the
list of events, each event's page, and the list's CSV and JSON exports.

Every page and export sits behind HTTP Basic authentication (auth.py) and
reads through the request's read-only connection.
"""

import json

from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for

from ..log import chain, verification
from ..log.db import get_db, require_log
from . import chart, counting, exports, forms, pages, queries, search
from .auth import require_reviewer

bp = Blueprint("history", __name__)
bp.before_request(require_reviewer)
bp.before_request(require_log)


@bp.get("/")
def index():
    return redirect(url_for("history.events"))


@bp.get("/history")
def events():
    conn = get_db()
    context = {
        "integrity": pages.integrity(conn),
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
        return _page(context, exc.problems), 400
    except queries.UnknownCursor as exc:
        cursor = "before" if request.args.get("before") else "after"
        return _page(context, {cursor: f"There is no event {exc.args[0]} to page from."}), 400
    return _page(context)


def _page(context, problems=None):
    return pages.list_page(
        "history.html", "history.events", forms.HISTORY_FILTERS, context, problems
    )


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
    received = pages.as_text(row["raw"])
    try:
        raw = json.dumps(json.loads(received), ensure_ascii=False, indent=2)
    except ValueError:
        raw = received
    same_group, more_same_group = queries.same_group(conn, row["group_id"], event_id)
    return render_template(
        "event.html",
        integrity=pages.integrity(conn),
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


def _user_data(stored):
    """UserDefinedDataList as a list of {Key, Value}, or, when the stored
    value is not one (a tampered row), that value as text."""
    if stored is None:
        return None
    try:
        pairs = json.loads(pages.as_text(stored))
    except ValueError:
        return pages.as_text(stored)
    if isinstance(pairs, list) and all(isinstance(pair, dict) for pair in pairs):
        return pairs
    return pages.as_text(stored)


@bp.get("/history.csv")
def export_csv():
    return export("csv", exports.csv_chunks, "text/csv")


@bp.get("/history.json")
def export_json():
    return export("json", exports.json_chunks, "application/json")


def export(extension, chunks, mimetype):
    """The matching events, as ``chunks`` yields them (the evidence archive
    is one such export); bad filters get the history page, marked, as a 400."""
    try:
        filters = forms.history_filters(forms.load(forms.HistoryArgs))
    except forms.BadQuery:
        return events()
    return pages.export("events", extension, chunks, mimetype, filters, forms.HISTORY_FILTERS)


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
