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


# Field bounds, in UTF-8 bytes. Tencent documents the limits below; each
# bound is at least twice the largest figure it gives, so that a limit Tencent
# raises or documents loosely does not turn a real event away, while no sender
# can make the writer index or store a field of unbounded size. A body over
# a bound is quarantined with its bytes (ErrorCode 60024), never indexed.
# Members are the exception, bounded at Tencent's own 500: each is a row and
# an entry in the account index, at a page of its own, so that 500 of them
# take the writer 13 ms (p50; 1,000 of 128 bytes took 57 ms), and
# bench/worst.py measures what a sender of such bodies does to callbacks.
#   GroupId: custom IDs are printable ASCII of at most 48 bytes (IM SDK,
#     V2TIMGroupInfo.groupID); system IDs such as @TGS#2J4SZEAEL are shorter.
#   Accounts (Operator, Owner, Member_Account): UserIDs are at most 32 bytes
#     (Chat "Usage Limits", product 1047, doc 34381).
#   Name: at most 30 bytes (V2TIMCreateGroupInfo.groupName) or 100 bytes
#     of UTF-8 (V2TIMGroupInfo.groupName), depending on the page.
#   Type: one of a few short words (Work, Public, Meeting, AVChatRoom, ...).
#   MemberList: at most 500 initial members (Web SDK CreateGroupParams).
#   UserDefinedDataList: group custom field keys of at most 16 bytes and
#     values of at most 512 bytes (V2TIMSetGroupInfoParam.customInfo).
MAX_GROUP_ID = 256
MAX_ACCOUNT = 64
MAX_NAME = 1024
MAX_TYPE = 64
MAX_MEMBERS = 500
MAX_USER_DATA = 64
MAX_USER_DATA_KEY = 256
MAX_USER_DATA_VALUE = 8192


class Text(fields.String):
    """A string SQLite can store as UTF-8 (no unpaired surrogates), of at
    most ``max_bytes`` bytes in UTF-8 when given."""

    def __init__(self, *args, max_bytes=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_bytes = max_bytes

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValidationError("Not valid Unicode (unpaired surrogate).") from None
        if self.max_bytes is not None and size > self.max_bytes:
            raise ValidationError(f"Longer than {self.max_bytes} bytes of UTF-8 ({size}).")
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
    Member_Account = Text(required=True, validate=validate.Length(min=1), max_bytes=MAX_ACCOUNT)


class UserDefinedData(Body):
    Key = Text(required=True, max_bytes=MAX_USER_DATA_KEY)
    Value = Text(required=True, max_bytes=MAX_USER_DATA_VALUE)


class AfterCreateGroup(Body):
    """``Group.CallbackAfterCreateGroup``.

    Owner_Account may be absent or empty (a group can have no owner);
    MemberList is absent or empty for AVChatRoom; UserDefinedDataList is
    sent only when switched on in the console. Type is not checked against
    Tencent's current values, which change; fields are bounded in size only
    (see above).
    """

    CallbackCommand = Text(required=True)
    GroupId = Text(required=True, validate=validate.Length(min=1), max_bytes=MAX_GROUP_ID)
    Type = Text(required=True, validate=validate.Length(min=1), max_bytes=MAX_TYPE)
    Name = Text(required=True, max_bytes=MAX_NAME)
    Operator_Account = Text(required=True, max_bytes=MAX_ACCOUNT)
    Owner_Account = Text(load_default=None, allow_none=True, max_bytes=MAX_ACCOUNT)
    MemberList = fields.List(
        fields.Nested(Member),
        load_default=None,
        allow_none=True,
        validate=validate.Length(max=MAX_MEMBERS, error="More than {max} members."),
    )
    UserDefinedDataList = fields.List(
        fields.Nested(UserDefinedData),
        load_default=None,
        allow_none=True,
        validate=validate.Length(max=MAX_USER_DATA, error="More than {max} entries."),
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
