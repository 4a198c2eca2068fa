import hashlib
import json

import pytest

from tim_audit.ingest import schemas
from tencent import CREATE, TOKEN, group_body, sample, signed_query

OK = {"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0}


def test_doc_sample_is_stored_and_answered_ok(post, rows):
    body = sample("doc-sample")
    response = post(body)
    assert response.status_code == 200
    assert response.get_json() == OK
    assert rows(
        "SELECT id, command, group_id, type, name, operator, owner, event_time,"
        " member_count, user_data, sdkappid, client_ip, opt_platform, peer, raw FROM event"
    ) == [
        (
            1,
            CREATE,
            "@TGS#2J4SZEAEL",
            "Public",
            "MyFirstGroup",
            "group_root",
            "leckie",
            1670574414123,
            2,
            '[{"Key": "UserDefined1", "Value": "hello"}, {"Key": "UserDefined2", "Value": "world"}]',
            "1400000001",
            "203.0.113.7",
            "RESTAPI",
            "127.0.0.1",
            body,
        )
    ]
    assert rows("SELECT event_id, position, account FROM event_member") == [
        (1, 0, "bob"),
        (1, 1, "peter"),
    ]


def test_answer_is_exactly_tencents_ok_json(post):
    """Types too: 0 == False and 0 == 0.0 in Python, not for Tencent."""
    response = post(sample("doc-sample"))
    assert (response.status_code, response.headers["Content-Type"]) == (200, "application/json")
    assert {key: (type(value), value) for key, value in json.loads(response.data).items()} == {
        "ActionStatus": (str, "OK"),
        "ErrorInfo": (str, ""),
        "ErrorCode": (int, 0),
    }


def test_event_time_as_number_is_stored_as_integer(post, rows):
    assert post(sample("delivery-number-eventtime")).status_code == 200
    assert rows("SELECT event_time, typeof(event_time) FROM event") == [(1682914763569, "integer")]


def test_event_time_as_string_is_stored_as_integer(post, rows):
    assert post(group_body(EventTime="1670574414123")).status_code == 200
    assert rows("SELECT event_time, typeof(event_time) FROM event") == [(1670574414123, "integer")]


def test_unknown_fields_are_accepted_and_kept_in_raw_body(post, rows):
    body = sample("delivery-number-eventtime")  # InviteOption, and Role inside a member
    assert post(body).get_json() == OK
    [(raw,)] = rows("SELECT raw FROM event")
    assert raw == body
    assert json.loads(raw)["InviteOption"] == "NeedPermission"
    assert json.loads(raw)["MemberList"][1]["Role"] == "Admin"
    assert rows("SELECT account FROM event_member ORDER BY position") == [("u1001",), ("u1002",)]


def test_unknown_nested_fields_in_user_defined_data_are_accepted(post, rows):
    body = group_body(UserDefinedDataList=[{"Key": "k", "Value": "v", "Since": 3}])
    assert post(body).get_json() == OK
    assert rows("SELECT user_data FROM event") == [('[{"Key": "k", "Value": "v"}]',)]


def test_group_with_empty_owner_is_stored(post, rows):
    assert post(sample("community-no-owner")).get_json() == OK
    assert rows("SELECT group_id, type, owner, member_count FROM event") == [
        ("@TGS#_community01", "Community", "", 0),
    ]


def test_group_without_owner_field_is_stored_with_null_owner(post, rows):
    assert post(group_body(Owner_Account=None)).get_json() == OK
    assert rows("SELECT owner FROM event") == [(None,)]


def test_avchatroom_without_member_list_is_stored(post, rows):
    assert post(sample("avchatroom-no-members")).get_json() == OK
    assert rows("SELECT type, member_count, user_data FROM event") == [("AVChatRoom", 0, None)]
    assert rows("SELECT count(*) FROM event_member") == [(0,)]


@pytest.mark.parametrize(
    "name",
    ["周末羽毛球 🏸", "사내 공지", "家族👨‍👩‍👧", "Ωμάδα", "<script>alert(1)</script>", "a\u0000b"],
)
def test_unicode_names_round_trip(post, rows, name):
    body = group_body(Name=name, MemberList=[{"Member_Account": "用户_1"}])
    assert post(body).get_json() == OK
    assert rows("SELECT name, raw FROM event") == [(name, body)]
    assert rows("SELECT account FROM event_member") == [("用户_1",)]


def test_new_group_type_is_accepted(post, rows):
    assert post(group_body(Type="Work2030")).get_json() == OK
    assert rows("SELECT type FROM event") == [("Work2030",)]


def test_content_type_header_is_ignored(client, rows):
    response = client.post(
        "/callback",
        query_string=signed_query(),
        data=group_body(),
        content_type="application/x-www-form-urlencoded",
    )
    assert response.get_json() == OK
    assert rows("SELECT count(*) FROM event") == [(1,)]


def test_repeat_delivery_is_answered_ok_and_stored_once(post, rows):
    body = sample("doc-sample")
    assert post(body).get_json() == OK
    assert post(body).get_json() == OK
    assert rows("SELECT count(*) FROM event") == [(1,)]
    assert rows("SELECT count(*) FROM event_member") == [(2,)]
    assert rows("SELECT count(*) FROM quarantine") == [(0,)]


def test_same_group_and_event_time_with_other_bytes_is_quarantined_not_stored(post, rows):
    assert post(group_body(Name="first")).get_json() == OK
    second = group_body(Name="second")
    assert post(second).get_json() == OK
    assert rows("SELECT name FROM event") == [("first",)]
    assert rows("SELECT error_code, reason, raw FROM quarantine") == [
        (
            0,
            "repeat of event 1 (same CallbackCommand, GroupId and EventTime) with a different body",
            second,
        )
    ]


def test_identical_conflicting_retries_are_quarantined_once(post, rows):
    assert post(group_body(Name="first")).get_json() == OK
    second = group_body(Name="second")
    assert [post(second).get_json() for _ in range(3)] == [OK] * 3
    assert rows("SELECT id, raw FROM quarantine") == [(1, second)]


def test_reused_group_id_with_new_event_time_is_a_new_event(post, rows):
    assert post(group_body(EventTime=1670574414123)).get_json() == OK
    assert post(group_body(EventTime=1770574414123)).get_json() == OK
    assert rows("SELECT id, event_time FROM event") == [(1, 1670574414123), (2, 1770574414123)]


def auditor_encoding(values):
    """The canonical bytes as docs/design.md spells them out, written here
    again as an auditor would, without tim-audit's code."""
    out = b""
    for value in values:
        if value is None:
            out += b"N"
            continue
        tag, data = (
            (b"I", str(value).encode())
            if isinstance(value, int)
            else ((b"S", value.encode()) if isinstance(value, str) else (b"B", bytes(value)))
        )
        out += tag + len(data).to_bytes(8, "big") + data
    return out


def test_events_are_chained_in_order(post, rows):
    for number in range(3):
        post(group_body(GroupId=f"@TGS#{number}"))
    columns = (
        "id, received_at, command, group_id, type, name, name_folded, operator, owner, event_time,"
        " member_count, user_data, sdkappid, client_ip, opt_platform, peer, raw"
    )
    previous = bytes(32)
    for row in rows(f"SELECT {columns}, hash FROM event ORDER BY id"):
        members = [
            m
            for (m,) in rows(
                "SELECT account FROM event_member WHERE event_id = ? ORDER BY position", (row[0],)
            )
        ]
        expected = hashlib.sha256(previous + auditor_encoding([*row[:-1], *members])).hexdigest()
        assert row[-1] == expected
        previous = bytes.fromhex(expected)
    assert [group_id for (group_id,) in rows("SELECT group_id FROM event ORDER BY id")] == [
        "@TGS#0",
        "@TGS#1",
        "@TGS#2",
    ]


# --- refusals before the body is read: answered, logged, never stored -----

AUTH_REFUSALS = [
    ("wrong SdkAppid", {"SdkAppid": "1400000002"}, 60010, "SdkAppid"),
    ("missing SdkAppid", {"SdkAppid": None}, 60010, "SdkAppid"),
    ("missing RequestTime", {"RequestTime": None}, 60011, "RequestTime"),
    ("RequestTime not a number", {"RequestTime": "soon", "Sign": "0" * 64}, 60011, "RequestTime"),
    ("RequestTime too old", {"request_time": 1669872112}, 60012, "RequestTime"),
    ("wrong Sign", {"Sign": "0" * 64}, 60013, "Sign"),
    ("missing Sign", {"Sign": None}, 60013, "Sign"),
    ("Sign of another token", {"token": "another"}, 60013, "Sign"),
]


@pytest.mark.parametrize(
    "query, code, named", [a[1:] for a in AUTH_REFUSALS], ids=[a[0] for a in AUTH_REFUSALS]
)
def test_unauthenticated_request_is_refused_and_not_kept(post, rows, query, code, named):
    response = post(sample("doc-sample"), **query)
    assert response.status_code == 403
    answer = response.get_json()
    assert answer["ActionStatus"] == "FAIL"
    assert answer["ErrorCode"] == code
    assert named in answer["ErrorInfo"]
    assert rows("SELECT count(*) FROM event") == [(0,)]
    assert rows("SELECT count(*) FROM quarantine") == [(0,)]


def test_unconfigured_sdkappid_fails_every_callback_clearly(make_app):
    client = make_app(SDKAPPID=None).test_client()
    response = client.post("/callback", query_string=signed_query(), data=sample("doc-sample"))
    assert response.status_code == 503
    assert response.get_json() == {
        "ActionStatus": "FAIL",
        "ErrorCode": 60001,
        "ErrorInfo": "tim-audit is not configured: set SDKAPPID to this app's SDKAppID",
    }


def test_without_callback_token_unsigned_callbacks_are_stored(make_app, rows):
    client = make_app(CALLBACK_TOKEN=None).test_client()
    query = signed_query(RequestTime=None, Sign=None)
    assert client.post("/callback", query_string=query, data=sample("doc-sample")).get_json() == OK
    assert rows("SELECT count(*) FROM event") == [(1,)]


# --- refusals of an authenticated body: answered and quarantined ----------

BODY_REFUSALS = [
    ("not JSON", b"{not json", 400, 60021, "body is not JSON"),
    ("empty body", b"", 400, 60021, "body is not JSON"),
    ("invalid UTF-8", b'{"Name": "\xff"}', 400, 60021, "body is not UTF-8"),
    ("UTF-16", group_body().decode().encode("utf-16"), 400, 60021, "body is not UTF-8"),
    ("NaN", b'{"EventTime": NaN}', 400, 60021, "NaN is not JSON"),
    ("duplicate key", b'{"GroupId": "a", "GroupId": "b"}', 400, 60021, "duplicate key 'GroupId'"),
    ("array", b"[]", 400, 60022, "not an object"),
    (
        "other command in body",
        sample("other-command-destroyed"),
        400,
        60023,
        "CallbackCommand in the body does not match the one in the URL",
    ),
    (
        "no command in body",
        group_body(CallbackCommand=None),
        400,
        60023,
        "CallbackCommand is missing from the body",
    ),
]


@pytest.mark.parametrize(
    "body, status, code, info", [r[1:] for r in BODY_REFUSALS], ids=[r[0] for r in BODY_REFUSALS]
)
def test_refused_body_is_quarantined_with_its_bytes(post, rows, body, status, code, info):
    response = post(body)
    assert response.status_code == status
    answer = response.get_json()
    assert (answer["ActionStatus"], answer["ErrorCode"]) == ("FAIL", code)
    assert info in answer["ErrorInfo"]
    assert rows("SELECT count(*) FROM event") == [(0,)]
    # content_length is the declared header; the test client sends none for b"".
    assert rows("SELECT error_code, reason, command, raw, content_length FROM quarantine") == [
        (code, answer["ErrorInfo"], CREATE, body, len(body) or None),
    ]


def test_identical_retries_of_a_refused_body_get_its_answer_and_are_stored_once(post, rows, caplog):
    caplog.set_level("INFO")
    answers = [post(b"{oops") for _ in range(3)]
    assert {(a.status_code, a.get_data()) for a in answers} == {
        (answers[0].status_code, answers[0].get_data())
    }
    assert answers[0].get_json()["ErrorCode"] == 60021
    assert rows("SELECT id, raw FROM quarantine") == [(1, b"{oops")]
    outcomes = [
        r.fields["outcome"] for r in caplog.records if r.getMessage().startswith("callback ")
    ]
    assert outcomes == ["not_json", "quarantined_again", "quarantined_again"]


def test_refused_bodies_sharing_length_and_start_are_each_stored(post, rows):
    first, second = b"{" + b"x" * 100 + b"1", b"{" + b"x" * 100 + b"2"
    for body in (first, second, first, second):
        assert post(body).status_code == 400
    assert rows("SELECT id, raw FROM quarantine") == [(1, first), (2, second)]


INVALID_FIELDS = [
    ("GroupId missing", {"GroupId": None}, "GroupId: Missing data for required field."),
    ("GroupId empty", {"GroupId": ""}, "GroupId: Shorter than minimum length 1."),
    ("GroupId a number", {"GroupId": 12}, "GroupId: Not a valid string."),
    ("Type missing", {"Type": None}, "Type: Missing data for required field."),
    ("Name missing", {"Name": None}, "Name: Missing data for required field."),
    (
        "Operator missing",
        {"Operator_Account": None},
        "Operator_Account: Missing data for required field.",
    ),
    ("EventTime missing", {"EventTime": None}, "EventTime: Missing data for required field."),
    (
        "EventTime words",
        {"EventTime": "yesterday"},
        "EventTime: Not an integer number of milliseconds.",
    ),
    (
        "EventTime float",
        {"EventTime": 1670574414123.5},
        "EventTime: Not an integer number of milliseconds.",
    ),
    ("EventTime bool", {"EventTime": True}, "EventTime: Not an integer number of milliseconds."),
    (
        "EventTime negative",
        {"EventTime": -1},
        "EventTime: Not a time from 2000-01-01 to 2099-12-31",
    ),
    (
        "EventTime huge",
        {"EventTime": 10**30},
        "EventTime: Not a time from 2000-01-01 to 2099-12-31",
    ),
    ("MemberList not a list", {"MemberList": "bob"}, "MemberList: Not a valid list."),
    (
        "member without account",
        {"MemberList": [{"Member_Account": "bob"}, {"Role": "Admin"}]},
        "MemberList.1.Member_Account: Missing data for required field.",
    ),
    (
        "user data without Value",
        {"UserDefinedDataList": [{"Key": "k"}]},
        "UserDefinedDataList.0.Value: Missing data for required field.",
    ),
    ("unpaired surrogate", {"Name": "\ud800"}, "Name: Not valid Unicode (unpaired surrogate)."),
]


@pytest.mark.parametrize(
    "fields, problem", [f[1:] for f in INVALID_FIELDS], ids=[f[0] for f in INVALID_FIELDS]
)
def test_invalid_fields_are_named_and_quarantined(post, rows, fields, problem):
    body = json.dumps({**json.loads(group_body()), **fields}).encode()
    body = json.dumps({k: v for k, v in json.loads(body).items() if v is not None}).encode()
    response = post(body)
    assert response.status_code == 400
    answer = response.get_json()
    assert answer["ErrorCode"] == 60024
    assert answer["ErrorInfo"].startswith("invalid fields: ")
    assert problem in answer["ErrorInfo"]
    assert rows("SELECT count(*) FROM event") == [(0,)]
    assert rows("SELECT error_code, raw FROM quarantine") == [(60024, body)]


def _at(size, unit="群"):
    """Text of exactly ``size`` bytes of UTF-8, mostly three-byte characters."""
    return unit * (size // len(unit.encode())) + "x" * (size % len(unit.encode()))


# Each bounded field, and the body with it at a given size in bytes (or
# entries, for the lists). GroupId and accounts stay ASCII, as Tencent's are.
BOUNDED = [
    ("GroupId", schemas.MAX_GROUP_ID, lambda n: {"GroupId": "g" * n}),
    ("Type", schemas.MAX_TYPE, lambda n: {"Type": "t" * n}),
    ("Name", schemas.MAX_NAME, lambda n: {"Name": _at(n)}),
    ("Operator_Account", schemas.MAX_ACCOUNT, lambda n: {"Operator_Account": "o" * n}),
    ("Owner_Account", schemas.MAX_ACCOUNT, lambda n: {"Owner_Account": "o" * n}),
    (
        "MemberList.0.Member_Account",
        schemas.MAX_ACCOUNT,
        lambda n: {"MemberList": [{"Member_Account": "m" * n}]},
    ),
    (
        "UserDefinedDataList.0.Key",
        schemas.MAX_USER_DATA_KEY,
        lambda n: {"UserDefinedDataList": [{"Key": "k" * n, "Value": "v"}]},
    ),
    (
        "UserDefinedDataList.0.Value",
        schemas.MAX_USER_DATA_VALUE,
        lambda n: {"UserDefinedDataList": [{"Key": "k", "Value": _at(n)}]},
    ),
    (
        "MemberList",
        schemas.MAX_MEMBERS,
        lambda n: {"MemberList": [{"Member_Account": f"m{i}"} for i in range(n)]},
    ),
    (
        "UserDefinedDataList",
        schemas.MAX_USER_DATA,
        lambda n: {"UserDefinedDataList": [{"Key": f"k{i}", "Value": "v"} for i in range(n)]},
    ),
]


@pytest.mark.parametrize("field, bound, fields", BOUNDED, ids=[b[0] for b in BOUNDED])
def test_a_field_at_its_bound_is_stored(post, rows, field, bound, fields):
    response = post(group_body(**fields(bound)))
    assert (response.status_code, response.get_json()) == (200, OK)
    assert rows("SELECT count(*) FROM event") == [(1,)]


@pytest.mark.parametrize("field, bound, fields", BOUNDED, ids=[b[0] for b in BOUNDED])
def test_a_field_over_its_bound_is_quarantined_not_indexed(post, rows, field, bound, fields):
    body = group_body(**fields(bound + 1))
    response = post(body)
    assert response.status_code == 400
    problem = (
        f"More than {bound} {'members' if field == 'MemberList' else 'entries'}."
        if field in ("MemberList", "UserDefinedDataList")
        else f"Longer than {bound} bytes of UTF-8 ({bound + 1})."
    )
    assert response.get_json() == {
        "ActionStatus": "FAIL",
        "ErrorCode": 60024,
        "ErrorInfo": f"invalid fields: {field}: {problem}",
    }
    assert rows("SELECT count(*) FROM event") == [(0,)]
    assert rows("SELECT error_code, raw FROM quarantine") == [(60024, body)]


def test_error_info_names_every_invalid_field(post):
    body = group_body(GroupId=None, EventTime="soon", Type=7)
    info = post(body).get_json()["ErrorInfo"]
    assert info == (
        "invalid fields: GroupId: Missing data for required field.;"
        " Type: Not a valid string.; EventTime: Not an integer number of milliseconds."
    )


def test_error_info_stays_short_for_many_invalid_members(post):
    body = group_body(MemberList=[{}] * 500)
    info = post(body).get_json()["ErrorInfo"]
    assert info.endswith("; and 490 more")
    assert len(info) < 1000


def test_body_over_the_limit_is_quarantined_without_its_bytes(make_app, rows):
    client = make_app(MAX_CONTENT_LENGTH=1000).test_client()
    body = group_body(Name="x" * 2000)
    query = signed_query()
    response = client.post("/callback", query_string=query, data=body)
    assert response.status_code == 413
    assert response.get_json() == {
        "ActionStatus": "FAIL",
        "ErrorCode": 60020,
        "ErrorInfo": "body is larger than 1000 bytes",
    }
    assert rows("SELECT count(*) FROM event") == [(0,)]
    [(code, reason, raw, length, kept_query)] = rows(
        "SELECT error_code, reason, raw, content_length, query FROM quarantine"
    )
    assert (code, reason, raw, length) == (60020, "body is larger than 1000 bytes", None, len(body))
    assert "Sign=" not in kept_query
    assert f"RequestTime={query['RequestTime']}" in kept_query


def test_unauthenticated_body_over_the_limit_is_not_read_or_kept(make_app, rows):
    client = make_app(MAX_CONTENT_LENGTH=1000).test_client()
    response = client.post("/callback", query_string=signed_query(Sign="0" * 64), data=b"x" * 5000)
    assert (response.status_code, response.get_json()["ErrorCode"]) == (403, 60013)
    assert rows("SELECT count(*) FROM quarantine") == [(0,)]


def test_quarantine_keeps_query_without_sign(post, rows):
    query = signed_query()
    post(b"{oops", **{k: v for k, v in query.items() if k not in ("SdkAppid", "CallbackCommand")})
    [(kept, peer)] = rows("SELECT query, peer FROM quarantine")
    assert query["Sign"] not in kept and "Sign" not in kept
    assert kept.startswith("SdkAppid=1400000001&CallbackCommand=Group.CallbackAfterCreateGroup&")
    assert peer == "127.0.0.1"


# --- commands we do not record ---------------------------------------------


def test_other_command_is_acknowledged_and_not_stored(post, rows):
    response = post(sample("other-command-destroyed"), command="Group.CallbackAfterGroupDestroyed")
    assert (response.status_code, response.get_json()) == (200, OK)
    assert rows("SELECT count(*) FROM event") == [(0,)]
    assert rows("SELECT count(*) FROM quarantine") == [(0,)]


def test_message_callback_body_is_never_kept_even_when_invalid(post, rows):
    response = post(b'{"Text": "private chat", broken', command="C2C.CallbackAfterSendMsg")
    assert response.get_json() == OK
    assert rows("SELECT count(*) FROM quarantine") == [(0,)]


def test_other_command_still_needs_authentication(post):
    response = post(b"{}", command="C2C.CallbackAfterSendMsg", Sign="0" * 64)
    assert (response.status_code, response.get_json()["ErrorCode"]) == (403, 60013)


@pytest.mark.parametrize("query", [{}, {"Sign": "0" * 64}, {"SdkAppid": "1"}, {"RequestTime": "1"}])
def test_before_event_command_always_gets_error_code_zero(post, rows, query):
    response = post(b"not even json", command="Group.CallbackBeforeCreateGroup", **query)
    assert (response.status_code, response.get_json()) == (200, OK)
    assert rows("SELECT count(*) FROM quarantine") == [(0,)]


def test_before_event_command_gets_zero_even_when_unconfigured(make_app):
    client = make_app(SDKAPPID=None).test_client()
    query = signed_query("Group.CallbackBeforeCreateGroup")
    assert client.post("/callback", query_string=query, data=b"{}").get_json() == OK


def test_missing_callback_command_is_refused_and_body_left_unread(post, rows):
    response = post(group_body(), CallbackCommand=None)
    assert response.status_code == 400
    assert response.get_json() == {
        "ActionStatus": "FAIL",
        "ErrorCode": 60023,
        "ErrorInfo": "CallbackCommand is missing from the URL",
    }
    assert rows("SELECT count(*) FROM event") == [(0,)]
    assert rows("SELECT count(*) FROM quarantine") == [(0,)]


# --- the shape of every answer ----------------------------------------------


def test_wrong_method_gets_json_error(client):
    response = client.get("/callback")
    assert response.status_code == 405
    assert response.get_json() == {
        "ActionStatus": "FAIL",
        "ErrorCode": 60002,
        "ErrorInfo": "use POST",
    }


def test_log_line_names_outcome_and_never_the_sign_or_token(post, caplog):
    caplog.set_level("INFO")
    query = signed_query()
    post(sample("doc-sample"), Sign=query["Sign"], RequestTime=query["RequestTime"])
    post(sample("doc-sample"), Sign="f" * 64)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("callback ")]
    assert lines[0].startswith(
        'callback outcome=stored status=200 code=0 command="Group.CallbackAfterCreateGroup" group_id="@TGS#2J4SZEAEL" ms='
    )
    assert lines[1].startswith("callback outcome=bad_sign status=403 code=60013 ")
    text = caplog.text
    assert query["Sign"] not in text and "f" * 64 not in text and TOKEN not in text


def test_log_line_quotes_values_so_lines_cannot_be_forged(post, caplog):
    caplog.set_level("INFO")
    post(group_body(GroupId='@TGS#x\ncallback outcome="stored"'))
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("callback ")]
    assert "\n" not in line
    assert 'group_id="@TGS#x\\ncallback outcome=\\"stored\\""' in line


def test_a_request_werkzeug_refuses_is_a_json_4xx_not_an_internal_error(client, rows):
    response = client.post(
        "/callback",
        query_string=signed_query(),
        data=b"{}",
        environ_overrides={"CONTENT_LENGTH": "100"},
    )  # the sender stopped early
    assert response.status_code == 400
    assert response.get_json() == {
        "ActionStatus": "FAIL",
        "ErrorCode": 60003,
        "ErrorInfo": "400 Bad Request: The browser (or proxy) sent a request that this server could not understand.",
    }
    assert rows("SELECT (SELECT count(*) FROM event), (SELECT count(*) FROM quarantine)") == [
        (0, 0)
    ]


def test_an_unexpected_error_is_a_json_500_and_logged(app, post, rows, caplog, monkeypatch):
    def broken(entry, started):
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.extensions["tim_audit"], "append", broken)
    response = post(group_body())
    assert response.status_code == 500
    assert response.get_json() == {
        "ActionStatus": "FAIL",
        "ErrorCode": 60031,
        "ErrorInfo": "internal error; see the server log",
    }
    assert "callback failed" in caplog.text and "RuntimeError: a bug" in caplog.text
    assert rows("SELECT count(*) FROM event") == [(0,)]


def test_a_stored_callback_names_its_event_to_an_authenticated_sender(post):
    assert post(group_body()).headers["Tim-Audit-Event"] == "1 stored"
    assert post(group_body()).headers["Tim-Audit-Event"] == "1 repeat"
    assert post(group_body(Name="other")).headers["Tim-Audit-Event"] == "1 conflict"


def test_without_callback_token_no_answer_says_which_events_exist(make_app):
    client = make_app(CALLBACK_TOKEN=None).test_client()
    query = signed_query(RequestTime=None, Sign=None)
    response = client.post("/callback", query_string=query, data=group_body())
    assert response.status_code == 200
    assert "Tim-Audit-Event" not in response.headers
