"""What a tampered log does to the tools and pages: verify names the row,
the integrity strip turns red, and every page still renders (the row's
values as stored, flagged) rather than answering 500."""

import base64
import csv
import dataclasses
import io
import json
import logging
import os
import subprocess
import sys

import markupsafe
import pytest

from conftest import event, rejection
from dashboard import CREDENTIALS
from tencent import SDKAPPID, TOKEN
from tim_audit.log import verification
from tim_audit.review import exports


@dataclasses.dataclass
class Tampering:
    sql: str
    failure: str  # what verify says
    row: int  # the event whose page flags it ...
    flag: str  # ... and how
    old_schema: bool = False  # a type can change only in tables that are not STRICT


TAMPERINGS = {
    "type": Tampering(
        "UPDATE event SET member_count = 2.5 WHERE id = 2",
        "event row 2: member_count is REAL 2.5, expected INTEGER",
        2,
        "event row 2: member_count is REAL 2.5, expected INTEGER",
        old_schema=True,
    ),
    "value": Tampering(
        "UPDATE event SET name = 'harmless' WHERE id = 2",
        "event row 2: hash does not match the row's contents and the row before it",
        2,
        "event row 2: hash does not match the row's contents and the row before it",
    ),
    "deleted row": Tampering(
        "DELETE FROM event WHERE id = 2; DELETE FROM event_member WHERE event_id = 2",
        "event row 3: expected row 2 here: rows are missing",
        3,
        "event row 3: expected row 2 before it: rows are missing",
    ),
}


@pytest.fixture(params=TAMPERINGS.values(), ids=TAMPERINGS.keys())
def tampered(request):
    """The five-event log, tampered with one way; the app is open on it."""
    tampering = request.param
    if tampering.old_schema:
        request.getfixturevalue("old_schema")
    request.getfixturevalue("attacker").executescript(tampering.sql)
    return tampering


def verify_in_a_new_process(app):
    env = {
        **os.environ,
        "TIM_AUDIT_DATABASE": app.config["DATABASE"],
        "TIM_AUDIT_SDKAPPID": SDKAPPID,
        "TIM_AUDIT_CALLBACK_TOKEN": TOKEN,
    }
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "tim_audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_verification(app):
    verifier = app.extensions["tim_audit.verifier"]
    assert verifier.start()
    verifier.wait(10)
    return verifier.last


def escaped(text):
    return str(markupsafe.escape(text))


# --- the acceptance: verify, the strip, the pages ----------------------------


def test_verify_names_the_row_and_exits_1(tampered, app):
    result = verify_in_a_new_process(app)
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        f"FAIL {tampered.failure}\n",
        "",
    )


def test_the_strip_turns_red_with_the_failure(tampered, app, get):
    run_verification(app)
    response = get("/history")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert 'class="integrity broken"' in text
    assert "Verification FAILED at " in text and escaped(tampered.failure) in text
    assert "Chain verified" not in text


def test_every_page_renders_and_the_row_is_flagged(tampered, app, get):
    assert get("/history").status_code == 200
    for event_id in (1, 2, 3, 4, 5):
        response = get(f"/history/{event_id}")
        if event_id == 2 and tampered.row == 3:
            assert response.status_code == 404  # the deleted row
            continue
        assert response.status_code == 200
        text = response.get_data(as_text=True)
        if event_id == tampered.row:
            assert f"This row does NOT verify: {escaped(tampered.flag)}." in text
        elif event_id < tampered.row:
            assert "This row's hash matches its contents and the row before it." in text


# --- the strip says what the last check covered -------------------------------


def test_the_strip_counts_newer_events_not_yet_verified(filled, app, get):
    run_verification(app)
    for number in range(6, 9):
        filled.append(event(number))
    text = get("/history").get_data(as_text=True)
    assert "<strong>8</strong> events" in text
    assert "Chain verified at" in text and "5 events, head" in text
    assert "3 newer events not yet verified." in text
    assert 'class="integrity"' in text


def test_the_strip_turns_red_when_the_log_shrank_since_the_check(filled, app, attacker, get):
    run_verification(app)
    attacker.execute("DELETE FROM event WHERE id > 3")
    text = get("/history").get_data(as_text=True)
    assert 'class="integrity broken"' in text
    assert "The log now holds fewer events than this check covered: rows were removed." in text


def test_a_failure_replaces_an_earlier_green(old_schema, filled, app, attacker, get):
    assert run_verification(app).failure is None
    attacker.execute("UPDATE event SET member_count = 2.5 WHERE id = 4")
    assert (
        run_verification(app).failure == "event row 4: member_count is REAL 2.5, expected INTEGER"
    )
    text = get("/history").get_data(as_text=True)
    assert "Chain verified" not in text and 'class="integrity broken"' in text


def test_any_error_in_a_verification_is_recorded_as_a_failure(
    filled, app, get, monkeypatch, caplog
):
    def broken(conn, key=None, anchor=None, trees=None):
        raise RuntimeError("disk controller on fire")

    monkeypatch.setattr(verification, "verify", broken)
    with caplog.at_level(logging.ERROR):
        last = run_verification(app)
    assert last.failure == "verification stopped: RuntimeError: disk controller on fire"
    assert [r.exc_info[0] for r in caplog.records if r.name == "tim_audit.review.integrity"] == [
        RuntimeError
    ]
    text = get("/history").get_data(as_text=True)
    assert "Verification FAILED" in text and "disk controller on fire" in text
    assert "Traceback" not in text


# --- pages show a tampered value as stored ----------------------------------


@pytest.mark.parametrize(
    "statement, shown",
    [
        ("UPDATE event SET member_count = 2.5 WHERE id = 2", '<td class="number">2.5</td>'),
        ("UPDATE event SET name = X'FF' WHERE id = 2", "b&#39;\\xff&#39;"),
        ("UPDATE event SET event_time = 'soon' WHERE id = 2", ">soon</time>"),
        ("UPDATE event SET received_at = 1.5 WHERE id = 2", ">1.5</time>"),
        ("UPDATE event SET owner = X'6D616C6C6F7279' WHERE id = 2", "mallory"),
    ],
)
def test_history_lists_a_row_of_another_type(old_schema, filled, attacker, get, statement, shown):
    attacker.execute(statement)
    response = get("/history")
    assert response.status_code == 200
    assert shown in response.get_data(as_text=True)


def test_history_filtered_to_rows_of_no_integer_event_time_has_no_chart(
    old_schema, filled, attacker, get
):
    attacker.execute("UPDATE event SET event_time = 'soon' WHERE id = 2")
    response = get("/history?group_id=@TGS%232")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert ">soon</time>" in text and "Events per day" not in text


@pytest.mark.parametrize(
    "statement, shown, flag",
    [
        (
            "UPDATE event SET member_count = 2.5 WHERE id = 2",
            None,
            "member_count is REAL 2.5, expected INTEGER",
        ),
        (
            "UPDATE event SET event_time = 'soon' WHERE id = 2",
            ">soon</time>",
            "event_time is TEXT &#39;soon&#39;",
        ),
        (
            "UPDATE event SET raw = CAST(raw AS TEXT) WHERE id = 2",
            "&#34;GroupId&#34;: &#34;@TGS#2&#34;",
            "raw is TEXT",
        ),
        (
            "UPDATE event SET raw = 12 WHERE id = 2",
            "Raw body (2 bytes)",
            "raw is INTEGER 12, expected BLOB",
        ),
        (
            "UPDATE event SET user_data = 'not json' WHERE id = 2",
            "as stored: <code>not json</code>",
            "event row 2: hash does not match",
        ),
        (
            "UPDATE event SET user_data = X'00' WHERE id = 2",
            "Not a list of pairs",
            "user_data is BLOB X&#39;00&#39;",
        ),
        (
            "UPDATE event_member SET account = X'626F62' WHERE event_id = 2 AND position = 0",
            None,
            "event_member row 2: account is BLOB",
        ),
        (
            "UPDATE event_member SET duplicate = 1 WHERE event_id = 2 AND position = 1",
            None,
            "event_member row 2: member rows do not match the event",
        ),
    ],
)
def test_detail_page_shows_a_tampered_row_flagged(
    old_schema, filled, attacker, get, statement, shown, flag
):
    attacker.execute(statement)
    response = get("/history/2")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "This row does NOT verify: " in text and flag in text
    if shown:
        assert shown in text


def test_text_that_is_not_utf8_is_shown_replaced_and_flagged(filled, attacker, get):
    attacker.execute("UPDATE event SET name = CAST(X'FF41' AS TEXT) WHERE id = 2")
    assert "\ufffdA" in get("/history").get_data(as_text=True)
    text = get("/history/2").get_data(as_text=True)
    assert "\ufffdA" in text
    assert (
        "This row does NOT verify: event row 2: name is TEXT X&#39;FF41&#39; (not UTF-8), expected TEXT."
        in text
    )


def test_a_broken_hash_before_a_row_is_named_on_its_page(filled, attacker, get):
    attacker.execute("UPDATE event SET hash = 'zz' WHERE id = 2")
    text = get("/history/3").get_data(as_text=True)
    assert "This row does NOT verify: event row 2: its hash is not 64 lowercase hex digits." in text


# --- exports write a tampered value as stored, whole -------------------------


@dataclasses.dataclass
class Exported:
    sql: str
    column: str  # event 2's CSV column ...
    field: str  # ... and JSON field
    csv: str
    json: object
    old_schema: bool = False


EXPORTED = {
    "user_data not JSON": Exported(
        "UPDATE event SET user_data = 'not json' WHERE id = 2",
        "user_data",
        "UserDefinedDataList",
        "not json",
        "not json",
    ),
    "user_data BLOB": Exported(
        "UPDATE event SET user_data = X'5B5D' WHERE id = 2",
        "user_data",
        "UserDefinedDataList",
        "X'5B5D'",
        "X'5B5D'",
        old_schema=True,
    ),
    "name BLOB": Exported(
        "UPDATE event SET name = X'FF' WHERE id = 2",
        "name",
        "Name",
        "X'FF'",
        "X'FF'",
        old_schema=True,
    ),
    "owner BLOB of a formula": Exported(
        "UPDATE event SET owner = X'3D31' WHERE id = 2",
        "owner",
        "Owner_Account",
        "X'3D31'",
        "X'3D31'",
        old_schema=True,
    ),
    "event_time BLOB": Exported(
        "UPDATE event SET event_time = X'01' WHERE id = 2",
        "event_time_ms",
        "EventTime",
        "X'01'",
        "X'01'",
        old_schema=True,
    ),
    "event_time TEXT": Exported(
        "UPDATE event SET event_time = 'soon' WHERE id = 2",
        "event_time",
        "EventTime",
        "soon",
        "soon",
        old_schema=True,
    ),
    "event_time REAL": Exported(
        "UPDATE event SET event_time = 0.1 + 0.2 WHERE id = 2",
        "event_time_ms",
        "EventTime",
        "0.30000000000000004",
        0.30000000000000004,
        old_schema=True,
    ),
    "event_time REAL not finite": Exported(
        "UPDATE event SET event_time = -1e308 * 10 WHERE id = 2",
        "event_time_ms",
        "EventTime",
        "-inf",
        "-Inf",
        old_schema=True,
    ),
    "event_time TEXT of a formula": Exported(
        "UPDATE event SET event_time = '=1+1' WHERE id = 2",
        "event_time",
        "EventTime",
        "'=1+1",
        "=1+1",
        old_schema=True,
    ),
    "received_at BLOB": Exported(
        "UPDATE event SET received_at = X'FF' WHERE id = 2",
        "received_at",
        "ReceivedAt",
        "X'FF'",
        "X'FF'",
        old_schema=True,
    ),
    "member BLOB": Exported(
        "UPDATE event_member SET account = X'626F62' WHERE event_id = 2 AND position = 0",
        "members",
        "MemberList",
        "X'626F62';peter",
        [{"Member_Account": "X'626F62'"}, {"Member_Account": "peter"}],
        old_schema=True,
    ),
}


@pytest.mark.parametrize(
    "statement, column, exported",
    [
        ("UPDATE event SET member_count = 1e19 WHERE id = 2", "member_count", "1e+19"),
        ("UPDATE event SET event_time = '=1+1' WHERE id = 2", "event_time_ms", "'=1+1"),
        ("UPDATE event SET hash = '-1' WHERE id = 2", "hash", "'-1"),
    ],
)
def test_csv_export_writes_a_tampered_cell_whole_and_guards_it_in_any_column(
    old_schema, filled, attacker, get, statement, column, exported
):
    attacker.execute(statement)
    header, *records = csv.reader(io.StringIO(download(get, "/history.csv").decode("utf-8")[1:]))
    by_id = {record[0]: dict(zip(header, record, strict=True)) for record in records}
    assert by_id["2"][column] == exported


@pytest.fixture(params=EXPORTED.values(), ids=EXPORTED.keys())
def exported(request, monkeypatch):
    """The five-event log with event 2 tampered with one way, exported two
    events a chunk, so that a failure at event 2 would cut the export short."""
    tampering = request.param
    if tampering.old_schema:
        request.getfixturevalue("old_schema")
    request.getfixturevalue("attacker").executescript(tampering.sql)
    monkeypatch.setattr(exports, "CHUNK_ROWS", 2)
    return tampering


def download(get, url):
    response = get(url)
    assert response.status_code == 200
    return response.get_data()  # the whole stream


def test_csv_export_writes_a_tampered_value_as_stored(exported, get):
    header, *records = csv.reader(io.StringIO(download(get, "/history.csv").decode("utf-8")[1:]))
    by_id = {record[0]: dict(zip(header, record, strict=True)) for record in records}
    assert sorted(by_id) == ["1", "2", "3", "4", "5"]
    assert by_id["2"][exported.column] == exported.csv


def test_json_export_writes_a_tampered_value_as_stored(exported, get):
    by_id = {record["id"]: record for record in json.loads(download(get, "/history.json"))}
    assert sorted(by_id) == [1, 2, 3, 4, 5]
    assert by_id[2][exported.field] == exported.json


@pytest.mark.parametrize(
    "statement, body",
    [
        ("UPDATE quarantine SET raw = 'abc' WHERE id = 1", b"abc"),
        ("UPDATE quarantine SET raw = 12 WHERE id = 1", b"12"),
    ],
)
def test_a_quarantined_body_of_another_type_is_shown_and_exported_as_stored(
    old_schema, filled, attacker, get, statement, body
):
    attacker.execute(statement)
    page = get("/quarantine")
    assert page.status_code == 200
    assert (
        f'<summary>{len(body)} bytes</summary>\n          <pre class="raw">{body.decode()}</pre>'
        in page.get_data(as_text=True)
    )
    assert download(get, "/quarantine/1.raw") == body
    header, *records = csv.reader(io.StringIO(download(get, "/quarantine.csv").decode("utf-8")[1:]))
    record = dict(zip(header, records[-1], strict=True))
    assert (record["id"], record["body"], record["body_base64"]) == (
        "1",
        body.decode(),
        base64.b64encode(body).decode(),
    )
    [_, record] = json.loads(download(get, "/quarantine.json"))
    assert (record["id"], record["Body"], record["BodyBase64"]) == (
        1,
        body.decode(),
        base64.b64encode(body).decode(),
    )


def test_a_quarantine_blob_is_exported_as_stored(old_schema, filled, attacker, get):
    attacker.execute("UPDATE quarantine SET reason = X'FF', query = X'3D31' WHERE id = 1")
    assert get("/quarantine").status_code == 200
    header, *records = csv.reader(io.StringIO(download(get, "/quarantine.csv").decode("utf-8")[1:]))
    record = dict(zip(header, records[-1], strict=True))
    assert (record["reason"], record["query"]) == ("X'FF'", "X'3D31'")
    [_, record] = json.loads(download(get, "/quarantine.json"))
    assert (record["Reason"], record["Query"]) == ("X'FF'", "X'3D31'")


def test_the_strip_counts_the_quarantine_and_its_newer_deliveries(filled, app, get):
    run_verification(app)
    filled.append(rejection(3))
    text = get("/history").get_data(as_text=True)
    assert '<a href="/quarantine">3 quarantined</a>' in text
    assert "and 2 quarantined (" in text
    assert "1 newer quarantined delivery not yet verified." in text


def test_verify_now_from_another_site_is_refused(app, client):
    response = client.post(
        "/history/verify", headers={**CREDENTIALS, "Sec-Fetch-Site": "cross-site"}
    )
    assert response.status_code == 403
    assert not app.extensions["tim_audit.verifier"].running
    same = client.post("/history/verify", headers={**CREDENTIALS, "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 303


def test_quarantine_csv_guards_a_tampered_hash_like_every_other_cell(attacker, get):
    attacker.execute("UPDATE quarantine SET hash = '=HYPERLINK(\"http://x\")' WHERE id = 1")
    text = download(get, "/quarantine.csv").decode("utf-8")[1:]
    header, *records = csv.reader(io.StringIO(text))
    by_id = {record[0]: dict(zip(header, record, strict=True)) for record in records}
    assert by_id["1"]["hash"] == '\'=HYPERLINK("http://x")'
