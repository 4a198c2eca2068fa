import base64
import csv
import dataclasses
import io
import json
import os
import re
import sqlite3

import pytest

from conftest import event, rejection
from dashboard import CREDENTIALS, DAY, START, expected_ids, sample_events
from tencent import group_body, signed_query
from test_history import COMBINED_FILTERS, SINGLE_FILTERS, as_query
from tim_audit.log import db, records
from tim_audit.review import exports, queries

CSV_HEADER = [
    "id",
    "event_time",
    "event_time_ms",
    "group_id",
    "type",
    "name",
    "owner",
    "operator",
    "member_count",
    "members",
    "user_data",
    "received_at",
    "sdkappid",
    "client_ip",
    "opt_platform",
    "peer",
    "hash",
]


@pytest.fixture
def export(client):
    def export(kind, **query):
        response = client.get(f"/history.{kind}", query_string=query, headers=CREDENTIALS)
        assert response.status_code == 200
        return response

    return export


def csv_rows(response):
    text = response.get_data().decode("utf-8")
    assert text.startswith("\ufeff")
    return list(csv.reader(io.StringIO(text[1:])))


@pytest.mark.parametrize(
    "filters",
    SINGLE_FILTERS + COMBINED_FILTERS,
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_csv_holds_exactly_the_matching_events(events, export, filters):
    rows = csv_rows(export("csv", **as_query(filters)))
    assert rows[0] == CSV_HEADER
    assert [int(row[0]) for row in rows[1:]] == expected_ids(events, **filters)


@pytest.mark.parametrize(
    "filters",
    SINGLE_FILTERS + COMBINED_FILTERS,
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_json_holds_exactly_the_matching_events(events, export, filters):
    objects = export("json", **as_query(filters)).get_json()
    assert [o["id"] for o in objects] == expected_ids(events, **filters)


def test_exports_ignore_pagination_and_hold_the_whole_set(events, export):
    assert len(csv_rows(export("csv", limit=5, before=30))) == 41
    assert len(export("json", limit=5).get_json()) == 40


def test_csv_row_has_every_column(post, export, app):
    body = group_body(UserDefinedDataList=[{"Key": "k", "Value": "v"}])
    post(body)
    [header, row] = csv_rows(export("csv"))
    digest = (
        app.extensions["tim_audit"]._connection().execute("SELECT hash FROM event").fetchone()[0]
    )
    record = dict(zip(header, row, strict=True))
    assert record | {"received_at": "", "hash": ""} == {
        "id": "1",
        "event_time": "2022-12-09T08:26:54.123Z",
        "event_time_ms": "1670574414123",
        "group_id": "'@TGS#2J4SZEAEL",
        "type": "Public",
        "name": "MyFirstGroup",
        "owner": "leckie",
        "operator": "group_root",
        "member_count": "2",
        "members": "bob;peter",
        "user_data": '[{"Key": "k", "Value": "v"}]',
        "received_at": "",
        "sdkappid": "1400000001",
        "client_ip": "203.0.113.7",
        "opt_platform": "RESTAPI",
        "peer": "127.0.0.1",
        "hash": "",
    }
    assert record["hash"] == digest
    assert record["received_at"].endswith("Z") and len(record["received_at"]) == 24


@pytest.mark.parametrize(
    "value, exported",
    [
        ("=1+1", "'=1+1"),
        ("+31 6", "'+31 6"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("a=1", "a=1"),
        ("1-2", "1-2"),
        ("", ""),
    ],
)
def test_csv_neutralises_formulas_in_every_text_cell(post, export, value, exported):
    members = [{"Member_Account": value or "x"}]
    post(
        group_body(
            Name=value,
            Owner_Account=value,
            Operator_Account=value,
            Type=value or "T",
            MemberList=members,
        )
    )
    [_, row] = csv_rows(export("csv"))
    record = dict(zip(CSV_HEADER, row, strict=True))
    assert record["name"] == exported
    assert record["owner"] == exported
    assert record["operator"] == exported
    assert record["members"] == (exported or "x")


def test_csv_neutralises_a_member_list_that_starts_a_formula(post, export):
    post(group_body(MemberList=[{"Member_Account": "=cmd"}, {"Member_Account": "bob"}]))
    assert csv_rows(export("csv"))[1][9] == "'=cmd;bob"


@pytest.mark.parametrize(
    "name", ["周末羽毛球 🏸", "사내 공지", "家族👨\u200d👩\u200d👧", "Ωμάδα", "a\u0000b"]
)
def test_unicode_names_are_exported_intact(post, export, name):
    post(group_body(Name=name))
    assert csv_rows(export("csv"))[1][5] == name
    assert export("json").get_json()[0]["Name"] == name


def test_json_uses_tencents_field_names_and_keeps_the_raw_body(post, export, app):
    body = group_body(
        UserDefinedDataList=[{"Key": "k", "Value": "v"}], InviteOption="NeedPermission"
    )
    post(body)
    [record] = export("json").get_json()
    digest = (
        app.extensions["tim_audit"]._connection().execute("SELECT hash FROM event").fetchone()[0]
    )
    assert record | {"ReceivedAt": None} == {
        "id": 1,
        "CallbackCommand": "Group.CallbackAfterCreateGroup",
        "GroupId": "@TGS#2J4SZEAEL",
        "Type": "Public",
        "Name": "MyFirstGroup",
        "Operator_Account": "group_root",
        "Owner_Account": "leckie",
        "MemberList": [{"Member_Account": "bob"}, {"Member_Account": "peter"}],
        "UserDefinedDataList": [{"Key": "k", "Value": "v"}],
        "EventTime": 1670574414123,
        "ReceivedAt": None,
        "SdkAppid": "1400000001",
        "ClientIP": "203.0.113.7",
        "OptPlatform": "RESTAPI",
        "Peer": "127.0.0.1",
        "Hash": digest,
        "RawBody": body.decode(),
    }


def test_json_keeps_absent_and_empty_owner_apart(post, export):
    post(group_body(GroupId="@TGS#a", Owner_Account=None))
    post(group_body(GroupId="@TGS#b", Owner_Account=""))
    owners = {o["GroupId"]: o["Owner_Account"] for o in export("json").get_json()}
    assert owners == {"@TGS#a": None, "@TGS#b": ""}


def test_empty_exports_are_still_well_formed(app, export):
    assert export("json").get_json() == []
    assert csv_rows(export("csv")) == [CSV_HEADER]


def test_exports_stream_in_chunks(app, export):
    log = app.extensions["tim_audit"]
    events = [e for e in sample_events()]
    many = [
        e.__class__(**{**vars(e), "group_id": f"@TGS#x{i}", "event_time": START + i})
        for i, e in enumerate(events * 63)
    ]
    records.write(log._connection(), many, log.key)  # 2,520 events
    for kind in ("csv", "json"):
        response = export(kind)
        assert response.is_streamed
        chunks = [chunk for chunk in response.response if chunk]
        assert len(chunks) >= 3
    assert len(export("json").get_json()) == 2520
    assert len(csv_rows(export("csv"))) == 2521


def test_export_is_named_as_an_attachment(events, export):
    response = export("csv")
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith(
        'attachment; filename="tim-audit-events-'
    ) and disposition.endswith('.csv"')
    assert export("json").headers["Content-Type"] == "application/json"


def test_export_refuses_bad_filters(client, events):
    response = client.get("/history.csv?since=tomorrow", headers=CREDENTIALS)
    assert response.status_code == 400


def test_a_finished_export_gives_its_place_back(client, events):
    for _ in range(5):
        assert client.get("/history.json", headers=CREDENTIALS).status_code == 200


def test_members_are_exported_in_member_list_order(post, export):
    # The account index (and any sort by account) would give amy, amy, mia, zed.
    post(group_body(MemberList=[{"Member_Account": a} for a in ("zed", "amy", "mia", "amy")]))
    post(
        group_body(GroupId="@TGS#room", Type="AVChatRoom", MemberList=None, EventTime=1670574414124)
    )
    by_group = {row[3]: row[9] for row in csv_rows(export("csv"))[1:]}
    assert by_group == {"'@TGS#2J4SZEAEL": "zed;amy;mia;amy", "'@TGS#room": ""}
    by_group = {o["GroupId"]: o["MemberList"] for o in export("json").get_json()}
    assert by_group == {
        "@TGS#2J4SZEAEL": [{"Member_Account": a} for a in ("zed", "amy", "mia", "amy")],
        "@TGS#room": [],
    }


QUARANTINE_HEADER = [
    "id",
    "received_at",
    "error_code",
    "reason",
    "command",
    "query",
    "peer",
    "content_length",
    "body",
    "body_base64",
    "hash",
]


def test_quarantine_exports_hold_every_column_and_the_exact_bytes(post, client, rows):
    post(b'{"Name": "\xe5\x91\xa8", \xff oops')  # not UTF-8
    post(group_body(Name="first"))
    post(group_body(Name="second"))  # a conflicting repeat
    [(first_hash,), (second_hash,)] = rows("SELECT hash FROM quarantine ORDER BY id")
    response = client.get("/quarantine.csv", headers=CREDENTIALS)
    assert response.status_code == 200 and response.is_streamed
    assert response.headers["Content-Disposition"].startswith(
        'attachment; filename="tim-audit-quarantine-'
    )
    [header, second, first] = csv_rows(response)
    assert header == QUARANTINE_HEADER
    reason = "repeat of event 1 (same CallbackCommand, GroupId and EventTime) with a different body"
    assert second[:4] == ["2", second[1], "0", reason]
    assert second[8] == group_body(Name="second").decode()
    assert first[2] == "60021" and first[8] == '{"Name": "周", \ufffd oops'
    assert base64.b64decode(first[9]) == b'{"Name": "\xe5\x91\xa8", \xff oops'
    assert (first[10], second[10]) == (first_hash, second_hash)
    assert first[1].endswith("Z") and len(first[1]) == 24
    objects = client.get("/quarantine.json", headers=CREDENTIALS).get_json()
    assert [o["id"] for o in objects] == [2, 1]
    assert base64.b64decode(objects[1]["BodyBase64"]) == b'{"Name": "\xe5\x91\xa8", \xff oops'
    assert objects[0] | {"ReceivedAt": None, "Query": None} == {
        "id": 2,
        "ReceivedAt": None,
        "ErrorCode": 0,
        "Reason": reason,
        "CallbackCommand": "Group.CallbackAfterCreateGroup",
        "Query": None,
        "Peer": "127.0.0.1",
        "ContentLength": len(group_body(Name="second")),
        "Body": group_body(Name="second").decode(),
        "BodyBase64": base64.b64encode(group_body(Name="second")).decode(),
        "Hash": second_hash,
    }
    assert objects[0]["ReceivedAt"] == second[1]
    assert "Sign=" not in objects[0]["Query"] and "SdkAppid=1400000001" in objects[0]["Query"]


def test_quarantine_csv_neutralises_formulas(post, client):
    post(b"=HYPERLINK(1)")
    [_, row] = csv_rows(client.get("/quarantine.csv", headers=CREDENTIALS))
    assert row[8] == "'=HYPERLINK(1)"


def test_quarantine_exports_follow_the_filters(post, export_quarantine):
    post(b"[]")
    post(b"{")
    post(b"[1]")
    assert [int(row[0]) for row in csv_rows(export_quarantine("csv", error_code=60022))[1:]] == [
        3,
        1,
    ]
    assert [o["id"] for o in export_quarantine("json", error_code=60021).get_json()] == [2]
    assert export_quarantine("json", error_code=0).get_json() == []
    assert csv_rows(export_quarantine("csv", error_code=0)) == [QUARANTINE_HEADER]


def test_quarantine_export_of_a_body_not_kept_leaves_it_empty(make_app):
    app = make_app(MAX_CONTENT_LENGTH=10)
    client = app.test_client()
    client.post("/callback", query_string=signed_query(), data=b"x" * 100)
    [record] = client.get("/quarantine.json", headers=CREDENTIALS).get_json()
    assert (record["ErrorCode"], record["Body"], record["BodyBase64"], record["ContentLength"]) == (
        60020,
        None,
        None,
        100,
    )


@pytest.fixture
def export_quarantine(client):
    def export(kind, **query):
        response = client.get(f"/quarantine.{kind}", query_string=query, headers=CREDENTIALS)
        assert response.status_code == 200
        return response

    return export


# --- an export reads a chunk at a time, of the log as it was when it began ----


def started(client, url):
    """The first chunk of the export at ``url``, and an iterator of the rest."""
    response = client.get(url, headers=CREDENTIALS)
    assert response.status_code == 200
    chunks = iter(response.response)
    return next(chunks), chunks


def parsed(kind, body):
    if kind == "csv":
        return [int(row[0]) for row in list(csv.reader(io.StringIO(body.decode("utf-8")[1:])))[1:]]
    return [record["id"] for record in json.loads(body)]


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_events_that_arrive_during_an_export_are_left_out(client, log, events, monkeypatch, kind):
    monkeypatch.setattr(exports, "CHUNK_ROWS", 7)
    first, rest = started(client, f"/history.{kind}")
    for number in range(41, 61):  # EventTimes among the exported ones, and newer
        log.append(event(number, event_time=START + (number - 41) * DAY // 2 + 1))
    assert parsed(kind, first + b"".join(rest)) == expected_ids(events)


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_a_member_export_pages_on_the_members_rows(client, log, events, monkeypatch, kind):
    monkeypatch.setattr(exports, "CHUNK_ROWS", 2)
    first, rest = started(client, f"/history.{kind}?member=m0")
    log.append(event(41, members=("m0",), event_time=START + DAY))
    assert parsed(kind, first + b"".join(rest)) == expected_ids(events, member="m0")


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_quarantined_deliveries_that_arrive_during_an_export_are_left_out(
    client, log, monkeypatch, kind
):
    monkeypatch.setattr(exports, "CHUNK_ROWS", 3)
    for number in range(1, 11):
        log.append(rejection(number))
    first, rest = started(client, f"/quarantine.{kind}")
    for number in range(11, 16):
        log.append(rejection(number))
    assert parsed(kind, first + b"".join(rest)) == list(range(10, 0, -1))


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_a_quarantine_export_sends_bodies_of_a_bounded_size_a_chunk(client, log, monkeypatch, kind):
    monkeypatch.setattr(exports, "CHUNK_BYTES", 100)
    for number, size in enumerate([10, 250, 40, 40, 30, None, 60], start=1):
        body = None if size is None else bytes([64 + number]) * size  # each its own body
        log.append(dataclasses.replace(rejection(number), raw=body, content_length=size))
    first, rest = started(client, f"/quarantine.{kind}")
    row = rb"^(\d+)," if kind == "csv" else rb'^\{"id": (\d+),'
    ids = [re.findall(row, chunk, re.M) for chunk in [first, *rest]]
    # Newest first: 60 + 0 + 30 bytes; 40 + 40; 250 alone, as it is over; 10.
    assert [[int(i) for i in chunk] for chunk in ids if chunk] == [[7, 6, 5], [4, 3], [2], [1]]


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_an_event_export_sends_events_of_a_bounded_size_a_chunk(client, log, monkeypatch, kind):
    monkeypatch.setattr(exports, "CHUNK_BYTES", 100)
    for number, size in enumerate([10, 250, 40, 40, 30, 0, 60], start=1):
        log.append(event(number, raw=bytes([64 + number]) * size, members=()))
    first, rest = started(client, f"/history.{kind}")
    # Newest first: 60 + 0 + 30 bytes; 40 + 40; 250 alone, as it is over; 10.
    assert chunked_ids(kind, [first, *rest]) == [[7, 6, 5], [4, 3], [2], [1]]


def test_the_sizes_are_read_once_for_every_chunk_rows_events(log, monkeypatch):
    monkeypatch.setattr(exports, "CHUNK_BYTES", 100)
    for number, size in enumerate([10, 250, 40, 40, 30, 0, 60], start=1):
        log.append(event(number, raw=bytes([64 + number]) * size, members=()))
    conn = db.connect(log.path, readonly=True)
    statements = []
    conn.set_trace_callback(statements.append)
    try:
        chunks = list(exports._chunks(conn, "e.id", queries.Filters()))
    finally:
        conn.close()
    assert [[row[0] for row in rows] for rows in chunks] == [[7, 6, 5], [4, 3], [2], [1]]
    # One read of the seven sizes, one that finds no more: not one a chunk.
    assert sum(exports._EVENT_SIZE in sql for sql in statements) == 2


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_an_events_members_and_user_data_count_towards_its_size(client, log, monkeypatch, kind):
    monkeypatch.setattr(exports, "CHUNK_BYTES", 2 * exports.MEMBER_BYTES + 100)
    user_data = json.dumps([{"Key": "k", "Value": "群" * 40}], ensure_ascii=False)
    log.append(event(1, raw=b"1" * 10, members=()))
    log.append(event(2, raw=b"2" * 10, members=("bob", "amy")))
    log.append(event(3, raw=b"3" * 10, members=(), user_data=user_data))
    first, rest = started(client, f"/history.{kind}")
    # 10 + 147 bytes of user data (67 characters), then 10 + 2 members are
    # over (counted in characters, they would not be); 10 + 2 members + 10 are not.
    assert chunked_ids(kind, [first, *rest]) == [[3], [2, 1]]


def chunked_ids(kind, chunks):
    """The ids of the rows in each chunk of an export that has some."""
    row = rb"^(\d+)," if kind == "csv" else rb'^\{"id": ?(\d+),'
    ids = [re.findall(row, chunk, re.M) for chunk in chunks]
    return [[int(i) for i in found] for found in ids if found]


def truncate_wal(path):
    """A checkpoint that resets the WAL, as the writer's bound does, from a
    connection of its own: (busy, frames in the WAL, frames copied), and
    the WAL's size after it. Any reader still on an older snapshot keeps it
    busy."""
    conn = sqlite3.connect(path, timeout=0.2)
    try:
        result = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    return result, os.path.getsize(path + "-wal")


@pytest.mark.parametrize(
    "url",
    [
        "/history.csv",
        "/history.json",
        "/history.json?member=m0",
        "/quarantine.csv",
        "/quarantine.json",
    ],
)
def test_a_stalled_export_holds_no_read_snapshot(client, log, events, app, monkeypatch, url):
    monkeypatch.setattr(exports, "CHUNK_ROWS", 2)
    for number in range(1, 6):
        log.append(rejection(number))
    first, rest = started(client, url)
    log.append(event(41))
    reset = truncate_wal(app.config["DATABASE"])
    assert b"".join(rest)
    assert reset == ((0, 0, 0), 0)
