"""``POST /callback``: Tencent IM posts here after events happen.

The checks run in a fixed order and each refusal has a stable ErrorCode
(docs/callback.md lists them): who is calling (SdkAppid, then Sign and
RequestTime), then the body (size, JSON, command, fields). A request that passed the first
two but whose body is refused is quarantined with its bytes, so nothing an
authenticated sender sent is lost; a retry of a refused body gets the same
answer, logged as ``quarantined_again``, and its bytes are not stored twice.
Commands we do not record are answered OK and dropped unread: message
callbacks carry chat content.
"""

import enum
import json
import time
from collections import namedtuple
from urllib.parse import urlencode

from flask import Blueprint, current_app, jsonify, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, default_exceptions

from . import signature
from ..log.records import Event, Rejection
from ..log.startup import current_log
from ..log.writer import StorageUncertain, StorageUnavailable
from .schemas import RECORDED

bp = Blueprint("callback", __name__)


class ErrorCode(enum.IntEnum):
    OK = 0
    NOT_CONFIGURED = 60001
    METHOD_NOT_ALLOWED = 60002
    BAD_REQUEST = 60003
    WRONG_SDKAPPID = 60010
    BAD_REQUEST_TIME = 60011
    STALE_REQUEST_TIME = 60012
    BAD_SIGN = 60013
    TOO_LARGE = 60020
    NOT_JSON = 60021
    NOT_AN_OBJECT = 60022
    COMMAND_MISMATCH = 60023
    INVALID_FIELDS = 60024
    STORAGE_UNAVAILABLE = 60030
    INTERNAL_ERROR = 60031
    STORAGE_UNCERTAIN = 60032


_SIGNATURE_CODES = {
    signature.BadRequestTime: ErrorCode.BAD_REQUEST_TIME,
    signature.StaleRequestTime: ErrorCode.STALE_REQUEST_TIME,
    signature.BadSign: ErrorCode.BAD_SIGN,
}

# How many field problems ErrorInfo names before it says "and N more".
_MAX_PROBLEMS = 10

Outcome = namedtuple("Outcome", "name status code info group_id event_id", defaults=[None])

# Names the stored event a 200 is about, for send-sample and an operator's
# curl: "12 stored", "12 repeat" (nothing new stored) or "12 conflict" (a
# repeat with another body, quarantined). Only a sender that proved it
# holds CALLBACK_TOKEN gets it: it says whether an event exists.
RECEIPT_HEADER = "Tim-Audit-Event"


class Refusal(Exception):
    def __init__(self, status, code, info):
        super().__init__(info)
        self.status = status
        self.code = code
        self.info = info

    def outcome(self, group_id=None):
        return Outcome(self.code.name.lower(), self.status, self.code, self.info, group_id)


@bp.post("/callback")
def receive():
    started = time.monotonic()
    outcome = _process(int(time.time() * 1000), started)
    seconds = time.monotonic() - started
    _log(outcome, seconds)
    metrics = current_app.extensions.get("tim_audit.metrics")
    if metrics is not None:
        metrics.observe(outcome.name, seconds)
    response = _answer(outcome.status, outcome.code, outcome.info)
    if outcome.event_id is not None and current_app.config["CALLBACK_TOKEN"]:
        response.headers[RECEIPT_HEADER] = f"{outcome.event_id} {outcome.name}"
    return response


def _process(received_at, started):
    command = request.args.get("CallbackCommand")
    if command is not None and ".CallbackBefore" in command:
        # A non-zero ErrorCode would block the user's action; we only audit.
        return Outcome("ignored", 200, ErrorCode.OK, "", None)
    try:
        _authenticate(request.args)
    except Refusal as refusal:
        return refusal.outcome()
    if command is None:
        return Outcome(
            "command_mismatch",
            400,
            ErrorCode.COMMAND_MISMATCH,
            "CallbackCommand is missing from the URL",
            None,
        )
    if command not in RECORDED:
        return Outcome("ignored", 200, ErrorCode.OK, "", None)

    raw = None
    try:
        raw = _read_body()
        event = _deserialize(command, raw, received_at)
    except Refusal as refusal:
        try:
            receipt = _quarantine(refusal.code, refusal.info, raw, received_at, started)
        except (StorageUnavailable, StorageUncertain) as exc:
            return _unavailable(exc)
        if receipt.outcome == "repeat":
            return refusal.outcome()._replace(name="quarantined_again")
        return refusal.outcome()

    try:
        receipt = current_log().append(event, started)
        if receipt.outcome == "conflict":
            _quarantine(
                ErrorCode.OK,
                f"repeat of event {receipt.id} (same CallbackCommand, GroupId and"
                " EventTime) with a different body",
                raw,
                received_at,
                started,
            )
    except (StorageUnavailable, StorageUncertain) as exc:
        return _unavailable(exc, event.group_id)
    return Outcome(receipt.outcome, 200, ErrorCode.OK, "", event.group_id, receipt.id)


def _authenticate(args):
    config = current_app.config
    if not config["SDKAPPID"]:
        raise Refusal(
            503,
            ErrorCode.NOT_CONFIGURED,
            "tim-audit is not configured: set SDKAPPID to this app's SDKAppID",
        )
    if args.get("SdkAppid") != config["SDKAPPID"]:
        raise Refusal(
            403, ErrorCode.WRONG_SDKAPPID, "SdkAppid is missing or is not this app's SDKAppID"
        )
    if config["CALLBACK_TOKEN"]:
        try:
            signature.check(
                config["CALLBACK_TOKEN"],
                args.get("Sign"),
                args.get("RequestTime"),
                config["SIGN_MAX_AGE"],
            )
        except signature.SignatureError as exc:
            raise Refusal(403, _SIGNATURE_CODES[type(exc)], str(exc)) from None


def _read_body():
    """The body, or a 413 Refusal when it is larger than MAX_CONTENT_LENGTH.

    waitress reads a chunked body whole (up to its max_request_body_size)
    and sets Content-Length, so werkzeug checks every body's length before
    reading it.
    """
    try:
        return request.get_data(cache=False)
    except RequestEntityTooLarge:
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        raise Refusal(413, ErrorCode.TOO_LARGE, f"body is larger than {limit} bytes") from None


def _deserialize(command, raw, received_at):
    body = _parse_json(raw)
    if "CallbackCommand" not in body:
        raise Refusal(400, ErrorCode.COMMAND_MISMATCH, "CallbackCommand is missing from the body")
    if body["CallbackCommand"] != command:
        raise Refusal(
            400,
            ErrorCode.COMMAND_MISMATCH,
            "CallbackCommand in the body does not match the one in the URL",
        )
    try:
        data = RECORDED[command].load(body)
    except ValidationError as exc:
        raise Refusal(400, ErrorCode.INVALID_FIELDS, _describe(exc.messages)) from None
    user_data = data["UserDefinedDataList"]
    return Event(
        received_at=received_at,
        command=command,
        group_id=data["GroupId"],
        type=data["Type"],
        name=data["Name"],
        operator=data["Operator_Account"],
        owner=data["Owner_Account"],
        event_time=data["EventTime"],
        members=tuple(member["Member_Account"] for member in data["MemberList"] or ()),
        user_data=None if user_data is None else json.dumps(user_data, ensure_ascii=False),
        sdkappid=request.args["SdkAppid"],
        client_ip=request.args.get("ClientIP"),
        opt_platform=request.args.get("OptPlatform"),
        peer=request.remote_addr,
        raw=raw,
    )


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs):
    """Refuse duplicate keys: parsers disagree on which one wins, and the
    stored fields must say what the raw body says."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def _parse_json(raw):
    """The body as a JSON object: strict UTF-8 JSON (RFC 8259), whatever
    the Content-Type header says; Refusal otherwise."""
    try:
        body = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constants
        )
    except UnicodeDecodeError as exc:
        raise Refusal(
            400, ErrorCode.NOT_JSON, f"body is not UTF-8: {exc.reason} at byte {exc.start}"
        ) from None
    except RecursionError:
        raise Refusal(400, ErrorCode.NOT_JSON, "body is not JSON: nested too deeply") from None
    except ValueError as exc:
        raise Refusal(400, ErrorCode.NOT_JSON, f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Refusal(400, ErrorCode.NOT_AN_OBJECT, "body is JSON but not an object")
    return body


def _describe(messages):
    """marshmallow's nested error dict as one line naming each field."""
    problems = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        else:
            problems.append(f"{path}: {' '.join(node)}")

    walk(messages, "")
    text = "; ".join(problems[:_MAX_PROBLEMS])
    if len(problems) > _MAX_PROBLEMS:
        text += f"; and {len(problems) - _MAX_PROBLEMS} more"
    return f"invalid fields: {text}"


def _quarantine(code, reason, raw, received_at, started):
    return current_log().append(
        Rejection(
            received_at=received_at,
            error_code=int(code),
            reason=reason,
            command=request.args.get("CallbackCommand"),
            query=urlencode([(k, v) for k, v in request.args.items(multi=True) if k != "Sign"]),
            peer=request.remote_addr,
            content_length=request.content_length,
            raw=raw,
        ),
        started,
    )


def _unavailable(exc, group_id=None):
    """503 only when nothing was, or ever will be, recorded; when a commit
    may still land, say that instead (a retry is recognised as a repeat)."""
    if isinstance(exc, StorageUncertain):
        return Outcome(
            "storage_uncertain",
            500,
            ErrorCode.STORAGE_UNCERTAIN,
            f"the audit log did not confirm this write in time ({exc}); it may have"
            " been recorded, and a retry is recognised as a repeat",
            group_id,
        )
    return Outcome(
        "storage_unavailable",
        503,
        ErrorCode.STORAGE_UNAVAILABLE,
        f"the audit log cannot store this now ({exc}); nothing was recorded",
        group_id,
    )


def _log(outcome, seconds):
    """One line per callback. Text from the request is JSON-quoted so that a
    crafted GroupId cannot forge log lines; the query (with Sign) is never
    logged."""
    fields = {
        "outcome": outcome.name,
        "status": outcome.status,
        "code": int(outcome.code),
        "command": request.args.get("CallbackCommand"),
        "group_id": outcome.group_id,
        "ms": round(seconds * 1000, 2),
    }
    current_app.logger.info(
        "callback outcome=%s status=%d code=%d command=%s group_id=%s ms=%.2f",
        outcome.name,
        outcome.status,
        outcome.code,
        json.dumps(fields["command"], ensure_ascii=False),
        json.dumps(outcome.group_id, ensure_ascii=False),
        fields["ms"],
        extra={"fields": {"event": "callback", **fields}},
    )


def _answer(status, code, info):
    if code == ErrorCode.OK and not info:
        return current_app.response_class(_OK, status, mimetype="application/json")
    body = {
        "ActionStatus": "OK" if code == ErrorCode.OK else "FAIL",
        "ErrorInfo": info,
        "ErrorCode": int(code),
    }
    response = jsonify(body)
    response.status_code = status
    return response


# The answer to nearly every callback, serialized once.
_OK = json.dumps(
    {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}, separators=(",", ":")
).encode()


@bp.errorhandler(Exception)
def _failed(exc):
    """Errors here are JSON, never an HTML page: Tencent counts a non-JSON
    answer as a failed delivery."""
    if isinstance(exc, HTTPException):
        return _answer(exc.code, ErrorCode.INTERNAL_ERROR, exc.description)
    current_app.logger.exception("callback failed")
    metrics = current_app.extensions.get("tim_audit.metrics")
    if metrics is not None:
        metrics.callbacks.labels("internal_error").inc()
    return _answer(500, ErrorCode.INTERNAL_ERROR, "internal error; see the server log")


def _client_error(exc):
    """A request werkzeug refused (a body shorter than its Content-Length,
    say): the sender's fault, not ours."""
    metrics = current_app.extensions.get("tim_audit.metrics")
    if metrics is not None:
        metrics.callbacks.labels("bad_request").inc()
    return _answer(exc.code, ErrorCode.BAD_REQUEST, f"{exc.code} {exc.name}: {exc.description}")


# The app's handler for a code (the dashboard's HTML 400 page) would win
# over this blueprint's handler for Exception, so each 4xx is claimed here.
for _code in default_exceptions:
    if 400 <= _code < 500:
        bp.register_error_handler(_code, _client_error)


@bp.app_errorhandler(405)
def _method_not_allowed(exc):
    if request.path != "/callback":
        return exc
    return _answer(405, ErrorCode.METHOD_NOT_ALLOWED, "use POST")
