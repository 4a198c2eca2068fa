"""The query strings of the list pages and their exports: the filter forms,
checked and loaded into the filters queries.py answers. A filtered view
lives entirely in its URL, so it can be pasted into a report."""

import datetime
import re

from flask import current_app, request
from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates_schema,
)

from . import queries, times

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


def load(schema):
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
        when = when.replace(tzinfo=times.zone())
    try:
        if whole_day and end:
            return times.ms(when + datetime.timedelta(days=1)) - 1
        return times.ms(when)
    except OverflowError:
        raise BadQuery({name: "Out of range: use a date from 0001-01-01 to 9999-12-30."}) from None


def history_filters(args):
    verifier = current_app.extensions.get("tim_audit.verifier")
    return queries.Filters(
        **{name: args[name] for name in HISTORY_FILTERS},
        derived=verifier is None or not verifier.derived_failed,
    )


def quarantine_filters(args):
    return queries.QuarantineFilters(**{name: args[name] for name in QUARANTINE_FILTERS})
