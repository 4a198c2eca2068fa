"""The quarantine: deliveries the log refused to chain, kept with their
bodies as received, for reviewers to list, download and export."""

from flask import Blueprint, Response, abort

from ..log import chain
from ..log.db import get_db, require_log
from . import exports, forms, pages, queries
from .auth import require_reviewer

bp = Blueprint("quarantine", __name__)
bp.before_request(require_reviewer)
bp.before_request(require_log)

# What each ErrorCode kept in quarantine means, for the Kind filter.
KINDS = {
    0: "repeat with a different body",
    60020: "body too large",
    60021: "body not JSON",
    60022: "JSON but not an object",
    60023: "CallbackCommand differs",
    60024: "invalid fields",
}


@bp.get("/quarantine")
def listing():
    conn = get_db()
    context = {
        "integrity": pages.integrity(conn),
        "total": None,
        "rows": [],
        "older": None,
        "kinds": KINDS,
    }
    try:
        args = forms.load(forms.QuarantineArgs)
        filters = forms.quarantine_filters(args)
        context["total"] = queries.quarantine_count(conn, filters)
        context["rows"], context["older"] = queries.quarantined(
            conn, filters, args["limit"], args["before"]
        )
    except forms.BadQuery as exc:
        return _page(context, exc.problems), 400
    return _page(context)


def _page(context, problems=None):
    return pages.list_page(
        "quarantine.html", "quarantine.listing", forms.QUARANTINE_FILTERS, context, problems
    )


@bp.get("/quarantine/<int:row_id>.raw")
def body(row_id):
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


@bp.get("/quarantine.csv")
def export_csv():
    return _export("csv", exports.quarantine_csv_chunks, "text/csv")


@bp.get("/quarantine.json")
def export_json():
    return _export("json", exports.quarantine_json_chunks, "application/json")


def _export(extension, chunks, mimetype):
    """The matching deliveries, as ``chunks`` yields them; bad filters get
    the quarantine page, marked, as a 400."""
    try:
        filters = forms.quarantine_filters(forms.load(forms.QuarantineArgs))
    except forms.BadQuery:
        return listing()
    return pages.export(
        "quarantine", extension, chunks, mimetype, filters, forms.QUARANTINE_FILTERS
    )
