"""marshmallow schemas of the callback bodies tim-audit records.

Tencent adds fields over time, at the top level and inside list items: they
are accepted and left out of the deserialized result (the raw body keeps
them). Nested schemas do not inherit a parent's ``unknown`` setting, so
every schema here derives from :class:`Body`.
"""

import re

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

# EventTime is the time of a real event on Tencent's servers, in ms: from
# 2000-01-01T00:00:00.000Z up to 2100-01-01 (exclusive). Tencent IM did not
# exist before 2000, and a time past 2100 can only be a broken clock; either
# is quarantined (ErrorCode 60024) rather than written into the history,
# which shows every time in this range as a date in every time zone.
MIN_EVENT_TIME = 946684800000
MAX_EVENT_TIME = 4102444799999

_DIGITS = re.compile(r"[0-9]{1,15}")


class Body(Schema):
    class Meta:
        unknown = EXCLUDE


class Text(fields.String):
    """A string SQLite can store as UTF-8: no unpaired surrogates."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("Not valid Unicode (unpaired surrogate).") from None
        return text


class Milliseconds(fields.Field):
    """Integer milliseconds, given as a JSON number or as a string of digits:
    Tencent's documented sample quotes EventTime, real deliveries do not."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and _DIGITS.fullmatch(value):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValidationError("Not an integer number of milliseconds.")


class Member(Body):
    Member_Account = Text(required=True, validate=validate.Length(min=1))


class UserDefinedData(Body):
    Key = Text(required=True)
    Value = Text(required=True)


class AfterCreateGroup(Body):
    """``Group.CallbackAfterCreateGroup``.

    Owner_Account may be absent or empty (a group can have no owner);
    MemberList is absent or empty for AVChatRoom; UserDefinedDataList is
    sent only when switched on in the console. Name and Type are not checked
    against Tencent's current limits and values, which change.
    """

    CallbackCommand = Text(required=True)
    GroupId = Text(required=True, validate=validate.Length(min=1))
    Type = Text(required=True, validate=validate.Length(min=1))
    Name = Text(required=True)
    Operator_Account = Text(required=True)
    Owner_Account = Text(load_default=None, allow_none=True)
    MemberList = fields.List(fields.Nested(Member), load_default=None, allow_none=True)
    UserDefinedDataList = fields.List(
        fields.Nested(UserDefinedData), load_default=None, allow_none=True
    )
    EventTime = Milliseconds(
        required=True,
        validate=validate.Range(
            min=MIN_EVENT_TIME,
            max=MAX_EVENT_TIME,
            error="Not a time from 2000-01-01 to 2099-12-31 (UTC) in ms since the epoch.",
        ),
    )


# The commands whose bodies are kept; any other command is acknowledged and
# dropped (message callbacks carry chat content). Schemas hold no per-load
# state, so one instance serves every thread.
RECORDED = {"Group.CallbackAfterCreateGroup": AfterCreateGroup()}
