"""Hostile input: whatever arrives, /callback answers JSON (never a 500 or an
HTML page) and stores an event only for a valid, authenticated callback;
the dashboard answers 200, 400 or 404, never 500. Property-based, with
hypothesis; replays of a captured request are checked against the clock."""

import http.client
import itertools
import json
import re
import sqlite3
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

import pytest
from freezegun import freeze_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard import CREDENTIALS
from tencent import CREATE, group_body, signed_query
from tim_audit.ingest import schemas
from tim_audit.ingest.schemas import MAX_EVENT_TIME, MIN_EVENT_TIME

# One app (and database) per test, shared by its examples: each example
# compares the rows before and after itself.
hostile = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

FIELDS = [
    "CallbackCommand",
    "GroupId",
    "Type",
    "Name",
    "Operator_Account",
    "Owner_Account",
    "MemberList",
    "UserDefinedDataList",
    "EventTime",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)


def counts(app):
    conn = sqlite3.connect(app.config["DATABASE"])
    try:
        return conn.execute(
            "SELECT (SELECT count(*) FROM event), (SELECT count(*) FROM quarantine)"
        ).fetchone()
    finally:
        conn.close()


def fits(value, bound):
    """A string the schema takes where at most ``bound`` bytes of UTF-8 fit:
    UTF-8 has no unpaired surrogate."""
    try:
        return isinstance(value, str) and len(value.encode("utf-8")) <= bound
    except UnicodeEncodeError:
        return False


def kept_once(app, body, before):
    """No event was added, and ``body`` is in quarantine once: a retry of
    the same bytes gets the same answer and is not stored again."""
    conn = sqlite3.connect(app.config["DATABASE"])
    try:
        kept = conn.execute("SELECT count(*) FROM quarantine WHERE raw = ?", (body,)).fetchone()[0]
    finally:
        conn.close()
    return counts(app)[0] == before[0] and kept == 1


def answered_in_json(response):
    """The shape every answer has, whatever went wrong."""
    assert response.status_code in (200, 400, 403, 413, 503), response.status_code
    assert response.mimetype == "application/json"
    answer = response.get_json()
    assert set(answer) == {"ActionStatus", "ErrorInfo", "ErrorCode"}
    assert (
        (answer["ActionStatus"] == "OK")
        == (answer["ErrorCode"] == 0)
        == (response.status_code == 200)
    )
    return answer


@hostile
@given(body=st.binary(max_size=2000))
def test_arbitrary_bytes_are_refused_and_quarantined(app, client, body):
    before = counts(app)
    answer = answered_in_json(client.post("/callback", query_string=signed_query(), data=body))
    assert answer["ErrorCode"] in (60021, 60022, 60023, 60024)
    assert kept_once(app, body, before)


@hostile
@given(value=json_values)
def test_arbitrary_json_is_never_stored(app, client, value):
    before = counts(app)
    body = json.dumps(value).encode()
    answer = answered_in_json(client.post("/callback", query_string=signed_query(), data=body))
    assert answer["ErrorCode"] in (60022, 60023, 60024)
    assert counts(app)[0] == before[0]


@hostile
@given(field=st.sampled_from(FIELDS), value=json_values)
def test_a_wrong_value_in_any_field_is_refused_and_kept(app, client, field, value):
    body = json.loads(group_body(GroupId="@TGS#wrong"))
    body[field] = value
    valid = {
        "CallbackCommand": value == CREATE,
        "GroupId": fits(value, schemas.MAX_GROUP_ID) and value != "",
        "Type": fits(value, schemas.MAX_TYPE) and value != "",
        "Name": fits(value, schemas.MAX_NAME),
        "Operator_Account": fits(value, schemas.MAX_ACCOUNT),
        "Owner_Account": value is None or fits(value, schemas.MAX_ACCOUNT),
        "MemberList": value is None
        or (
            isinstance(value, list)
            and len(value) <= schemas.MAX_MEMBERS
            and all(
                isinstance(m, dict)
                and fits(m.get("Member_Account"), schemas.MAX_ACCOUNT)
                and m["Member_Account"]
                for m in value
            )
        ),
        "UserDefinedDataList": value is None
        or (
            isinstance(value, list)
            and len(value) <= schemas.MAX_USER_DATA
            and all(
                isinstance(d, dict)
                and fits(d.get("Key"), schemas.MAX_USER_DATA_KEY)
                and fits(d.get("Value"), schemas.MAX_USER_DATA_VALUE)
                for d in value
            )
        ),
        "EventTime": (
            isinstance(value, int)
            and not isinstance(value, bool)
            and MIN_EVENT_TIME <= value <= MAX_EVENT_TIME
        )
        or (
            isinstance(value, str)
            and re.fullmatch("[0-9]{1,15}", value) is not None
            and MIN_EVENT_TIME <= int(value) <= MAX_EVENT_TIME
        ),
    }[field]
    try:
        json.dumps(value).encode("utf-8")
    except UnicodeEncodeError:
        valid = False  # unpaired surrogates
    before = counts(app)
    data = json.dumps(body).encode()
    answer = answered_in_json(client.post("/callback", query_string=signed_query(), data=data))
    if valid:
        assert answer["ErrorCode"] == 0
        assert counts(app)[0] in (before[0], before[0] + 1)  # or a repeat
    else:
        assert answer["ErrorCode"] in (60023, 60024)
        assert kept_once(app, data, before)


_fresh = itertools.count()


def stored_once(app, raw):
    conn = sqlite3.connect(app.config["DATABASE"])
    try:
        return conn.execute(
            "SELECT (SELECT count(*) FROM event WHERE raw = ?),"
            " (SELECT count(*) FROM quarantine WHERE raw = ?)",
            (raw, raw),
        ).fetchone()
    finally:
        conn.close()


@settings(hostile, max_examples=100)
@given(
    group_id=st.text(st.characters(exclude_categories=()), min_size=1, max_size=80)
    | st.sampled_from(
        ["\x00", "@TGS#a\x00b", "@TGS#🎉群", "g" * schemas.MAX_GROUP_ID, "群" * 86, "\ud800"]
    )
)
def test_any_group_id_the_schema_takes_is_a_key_for_repeats(app, client, group_id):
    """Stored once, a repeat of the same bytes is that event, another body
    a conflict kept once; an id the schema refuses (an unpaired surrogate,
    or longer than its bound) is quarantined, whatever it holds."""
    event_time = MIN_EVENT_TIME + next(_fresh)

    def body(name):
        return json.dumps(
            {**json.loads(group_body()), "GroupId": group_id, "EventTime": event_time, "Name": name}
        ).encode()  # ASCII, with an unpaired surrogate escaped as JSON allows

    def send(data):
        response = client.post("/callback", query_string=signed_query(), data=data)
        return response.status_code, response.headers.get("Tim-Audit-Event")

    first, other = body("first"), body("other")
    if fits(group_id, schemas.MAX_GROUP_ID):
        [(status, receipt)] = {send(first)}
        assert status == 200 and receipt.endswith(" stored")
        event_id = receipt.split()[0]
        assert send(first) == (200, f"{event_id} repeat")
        assert send(other) == (200, f"{event_id} conflict")
        assert send(other) == (200, f"{event_id} conflict")
        assert (stored_once(app, first), stored_once(app, other)) == ((1, 0), (0, 1))
    else:
        assert send(first) == (400, None)
        assert send(first) == (400, None)
        assert stored_once(app, first) == (0, 1)


@hostile
@given(
    extra=st.dictionaries(
        st.text(min_size=1, max_size=12).filter(lambda k: k not in FIELDS), json_values, max_size=4
    ),
    member_extra=st.dictionaries(
        st.text(min_size=1, max_size=12).filter(lambda k: k != "Member_Account"),
        json_values,
        max_size=3,
    ),
)
def test_unknown_fields_anywhere_are_accepted_and_kept(app, client, extra, member_extra):
    number = next(_fresh)
    body = json.loads(group_body(GroupId=f"@TGS#u{number}", EventTime=1700000000000 + number))
    body.update(extra)
    body["MemberList"][0].update(member_extra)
    raw = json.dumps(body).encode()
    response = client.post("/callback", query_string=signed_query(), data=raw)
    assert answered_in_json(response)["ErrorCode"] == 0
    conn = sqlite3.connect(app.config["DATABASE"])
    stored = conn.execute(
        "SELECT raw FROM event WHERE group_id = ? AND event_time = ?",
        (f"@TGS#u{number}", 1700000000000 + number),
    ).fetchone()
    conn.close()
    assert stored is not None and json.loads(stored[0]) == json.loads(raw)


@hostile
@given(
    query=st.dictionaries(
        st.sampled_from(
            ["SdkAppid", "CallbackCommand", "RequestTime", "Sign", "ClientIP", "OptPlatform", "x"]
        ),
        st.text(max_size=80),
        max_size=7,
    )
)
def test_arbitrary_query_strings_store_nothing(app, client, query):
    before = counts(app)
    answer = answered_in_json(client.post("/callback", query_string=query, data=group_body()))
    command = query.get("CallbackCommand")
    if answer["ErrorCode"] == 0:
        assert command is not None and (".CallbackBefore" in command)
    assert counts(app) == before


@hostile
@given(
    name=st.text(min_size=1, max_size=20).filter(lambda s: not s.isascii()),
    encoding=st.sampled_from(
        ["utf-16", "utf-16-le", "utf-32", "utf-8-sig", "gb18030", "euc-kr", "latin-1"]
    ),
)
def test_bodies_not_in_utf8_are_refused(app, client, name, encoding):
    try:
        body = group_body(Name=name).decode("utf-8").encode(encoding)
    except UnicodeEncodeError:
        return
    try:
        body.decode("utf-8")
        # Some other encodings' bytes happen to be UTF-8 too (latin-1 "Â\x80"
        # is UTF-8 for U+0080): such a body is valid UTF-8 JSON, and stored.
        also_utf8 = not body.startswith(b"\xef\xbb\xbf")
    except UnicodeDecodeError:
        also_utf8 = False
    before = counts(app)
    answer = answered_in_json(client.post("/callback", query_string=signed_query(), data=body))
    if not also_utf8:
        assert answer["ErrorCode"] == 60021
        assert kept_once(app, body, before)


@hostile
@given(depth=st.integers(min_value=1, max_value=100_000))
def test_deep_nesting_is_stored_or_refused_never_an_error(app, client, depth):
    body = (
        group_body(GroupId=f"@TGS#deep{depth}")[:-1]
        + b', "deep": '
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )
    before = counts(app)
    answer = answered_in_json(client.post("/callback", query_string=signed_query(), data=body))
    if answer["ErrorCode"] == 0:
        assert counts(app)[0] == before[0] + 1
    else:
        assert answer == {
            "ActionStatus": "FAIL",
            "ErrorCode": 60021,
            "ErrorInfo": "body is not JSON: nested too deeply",
        }
        assert counts(app)[0] == before[0]


@hostile
@given(
    number=st.one_of(
        st.integers(),
        st.integers(min_value=10**15, max_value=10**400),
        st.floats(allow_nan=False),
        st.just("1e999"),
        st.just("-0"),
        st.just("9" * 5000),
    )
)
def test_huge_numbers_are_refused_or_stored_never_an_error(app, client, number):
    text = number if isinstance(number, str) else json.dumps(number)
    body = group_body(GroupId="@TGS#num")[:-1] + b', "Big": ' + text.encode() + b"}"
    body = body.replace(b'"EventTime": 1670574414123', b'"EventTime": ' + text.encode())
    answer = answered_in_json(client.post("/callback", query_string=signed_query(), data=body))
    try:
        value = json.loads(text)
    except ValueError:  # more digits than Python parses
        value = None
    valid = isinstance(value, int) and MIN_EVENT_TIME <= value <= MAX_EVENT_TIME
    assert (answer["ErrorCode"] == 0) == valid


@hostile
@given(key=st.sampled_from(FIELDS + ["Other"]), first=json_values, second=json_values)
def test_duplicate_keys_are_refused(app, client, key, first, second):
    body = (
        group_body()[:-1]
        + f', "{key}": {json.dumps(first)}, "{key}": {json.dumps(second)}}}'.encode()
    )
    before = counts(app)
    answer = answered_in_json(client.post("/callback", query_string=signed_query(), data=body))
    assert answer["ErrorCode"] == 60021
    assert f"duplicate key {key!r}" in answer["ErrorInfo"]
    assert kept_once(app, body, before)


@pytest.fixture
def small_app(make_app):
    return make_app(MAX_CONTENT_LENGTH=4096)


@hostile
@given(size=st.integers(min_value=1, max_value=8_000))
def test_oversized_bodies_get_413_and_are_kept_without_bytes(small_app, size):
    app = small_app
    body = group_body(
        UserDefinedDataList=[{"Key": "pad", "Value": "x" * size}],
        GroupId=f"@TGS#size{next(_fresh)}",
    )
    before = counts(app)
    answer = answered_in_json(
        app.test_client().post("/callback", query_string=signed_query(), data=body)
    )
    if len(body) > 4096:
        assert answer["ErrorCode"] == 60020
        conn = sqlite3.connect(app.config["DATABASE"])
        assert conn.execute(
            "SELECT raw, content_length FROM quarantine ORDER BY id DESC LIMIT 1"
        ).fetchone() == (None, len(body))
        conn.close()
        assert counts(app) == (before[0], before[1] + 1)
    else:
        assert answer["ErrorCode"] == 0


def post_chunked(server, body):
    """POST ``body`` with Transfer-Encoding: chunked over a socket to real
    waitress, which reads it whole and sets Content-Length before the app runs."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    conn.request("POST", f"/callback?{urlencode(signed_query())}", body=chunks, encode_chunked=True)
    response = conn.getresponse()
    answer = (response.status, json.loads(response.read()))
    conn.close()
    return answer


def body_of_length(size):
    """A valid body of exactly ``size`` bytes, padded by a field of the kind
    Tencent adds, which is kept in the raw body and bounded only by its size."""
    body = group_body(Padding="")
    return group_body(Padding="x" * (size - len(body)))


def test_chunked_body_of_exactly_the_limit_is_stored(live_server, rows):
    body = body_of_length(live_server.app.config["MAX_CONTENT_LENGTH"])
    assert post_chunked(live_server, body) == (
        200,
        {"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0},
    )
    assert rows("SELECT raw FROM event") == [(body,)]


def test_chunked_body_over_the_limit_gets_413_and_is_kept_without_bytes(live_server, rows):
    body = body_of_length(live_server.app.config["MAX_CONTENT_LENGTH"] + 1)
    status, answer = post_chunked(live_server, body)
    assert (status, answer["ErrorCode"]) == (413, 60020)
    assert rows("SELECT raw, content_length FROM quarantine") == [(None, len(body))]
    assert rows("SELECT count(*) FROM event") == [(0,)]


# --- replay -------------------------------------------------------------------

CAPTURED_AT = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def captured(client):
    """A valid request as it went over the wire, signed at CAPTURED_AT."""
    with freeze_time(CAPTURED_AT):
        query = signed_query()
        assert client.post("/callback", query_string=query, data=group_body()).status_code == 200
    return query


@pytest.mark.parametrize("later", [61, 3600, -61])
def test_replay_outside_the_window_is_refused(client, captured, rows, later):
    with freeze_time(CAPTURED_AT + timedelta(seconds=later)):
        response = client.post(
            "/callback", query_string=captured, data=group_body(GroupId="@TGS#replayed")
        )
    assert (response.status_code, response.get_json()["ErrorCode"]) == (403, 60012)
    assert rows("SELECT group_id FROM event") == [("@TGS#2J4SZEAEL",)]


@pytest.mark.parametrize("later", [1, 30, 60])
def test_replay_inside_the_window_is_a_repeat(client, captured, rows, later):
    with freeze_time(CAPTURED_AT + timedelta(seconds=later)):
        response = client.post("/callback", query_string=captured, data=group_body())
    assert response.get_json() == {"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0}
    assert rows("SELECT count(*) FROM event") == [(1,)]


# --- the dashboard ------------------------------------------------------------

DASHBOARD_ARGS = [
    "group_id",
    "owner",
    "operator",
    "member",
    "type",
    "q",
    "since",
    "until",
    "limit",
    "before",
    "after",
    "x",
]


@pytest.fixture
def some_events(post):
    for n in range(5):
        post(group_body(GroupId=f"@TGS#{n}", EventTime=1700000000000 + n))
    post(b"{oops")


@hostile
@given(
    query=st.dictionaries(
        st.sampled_from(DASHBOARD_ARGS), st.text(max_size=40) | st.integers().map(str), max_size=6
    ),
    path=st.sampled_from(["/history", "/history.csv", "/history.json", "/quarantine"]),
)
def test_dashboard_query_strings_get_200_or_400(client, some_events, query, path):
    response = client.get(path, query_string=query, headers=CREDENTIALS)
    assert response.status_code in (200, 400)
    if response.status_code == 200 and path.endswith(".json"):
        assert isinstance(response.get_json(), list)
    else:
        response.get_data()


@hostile
@given(
    segment=st.text(min_size=1, max_size=30).filter(
        lambda s: (
            "/" not in s and s not in (".", "..", "verify")
        )  # POST /history/verify is a form's
    )
)
def test_dashboard_paths_get_200_or_404(client, some_events, segment):
    for path in (f"/history/{segment}", f"/quarantine/{segment}.raw"):
        response = client.get(path, headers=CREDENTIALS)
        assert response.status_code in (200, 404), (path, response.status_code)
