"""What the log records: repeats and conflicts, bodies refused again,
member rows and folded names, and the lookups that find a repeat."""

import sqlite3

import pytest

from conftest import event, rejection
from tim_audit.log import records


def test_repeat_returns_the_stored_event(log):
    first = log.append(event(1))
    again = log.append(event(1, received_at=1800000000000))
    assert again == records.Receipt("repeat", first.id, first.hash)


def test_same_key_with_other_bytes_is_a_conflict_and_writes_nothing(log, rows):
    log.append(event(1))
    receipt = log.append(event(1, raw=b'{"other": true}'))
    assert (receipt.outcome, receipt.id) == ("conflict", 1)
    assert rows("SELECT count(*) FROM event") == [(1,)]


def test_a_retried_refused_body_is_looked_up_through_its_index_alone(log, rows):
    """However many bodies of its ErrorCode the quarantine holds, the lookup
    reads the newest few of its length and first bytes, then those rows."""
    for number in range(1, 301):
        log.append(rejection(number))
    conn = log._connection()
    statements = []
    conn.set_trace_callback(statements.append)
    try:
        assert log.append(rejection(7)).outcome == "repeat"
    finally:
        conn.set_trace_callback(None)
    [lookup] = [sql for sql in statements if "substr(raw, 1, 64)" in sql]
    plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {lookup}")]
    assert plan == [
        "SEARCH quarantine USING INTEGER PRIMARY KEY (rowid=?)",
        "LIST SUBQUERY 1",
        "SEARCH quarantine USING INDEX quarantine_by_retry (error_code=? AND <expr>=? AND <expr>=?)",
    ]
    assert rows("SELECT count(*) FROM quarantine") == [(300,)]


def test_the_same_event_twice_in_one_batch_is_stored_once(log, rows):
    conn = log._connection()
    receipts = records.write(conn, [event(1), event(1), event(1, raw=b"{}")], log.key)
    assert [r.outcome for r in receipts] == ["stored", "repeat", "conflict"]
    assert {r.id for r in receipts} == {1}
    assert rows("SELECT count(*) FROM event") == [(1,)]


def test_member_listed_twice_is_flagged_as_a_duplicate(log, rows):
    log.append(event(1, members=("bob", "peter", "bob")))
    assert rows("SELECT position, account, duplicate FROM event_member ORDER BY position") == [
        (0, "bob", 0),
        (1, "peter", 0),
        (2, "bob", 1),
    ]


def test_folded_name_is_the_casefolded_name(log, rows):
    log.append(event(1, name="Straße ΣΊΣΥΦΟΣ 周末"))
    assert rows("SELECT name_folded FROM event") == [("strasse σίσυφοσ 周末",)]


@pytest.mark.parametrize(
    "group_id", ["@TGS#a\x00b", "\x00", "@TGS#🎉群", "@TGS#" + "x" * 1000], ids=repr
)
def test_a_repeat_is_found_whatever_text_its_group_id_holds(log, rows, group_id):
    stored = log.append(event(1, group_id=group_id))
    assert log.append(event(1, group_id=group_id)) == records.Receipt(
        "repeat", stored.id, stored.hash
    )
    assert log.append(event(1, group_id=group_id, raw=b"{}")).outcome == "conflict"
    assert rows("SELECT count(*) FROM event") == [(1,)]


def test_a_repeat_on_a_group_id_with_many_events_reads_only_the_one_row(log, rows):
    for number in range(1, 4):
        log.append(event(number, group_id="@TGS#hot", event_time=1700000000000 + number))
    conn = sqlite3.connect(log.path)
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT id, hash, raw FROM event"
        " WHERE group_id = ? AND event_time = ? AND command = ?",
        ("@TGS#hot", 1700000000002, "Group.CallbackAfterCreateGroup"),
    ).fetchall()
    conn.close()
    assert [row[3] for row in plan] == [
        "SEARCH event USING INDEX sqlite_autoindex_event_1 (group_id=? AND event_time=? AND command=?)"
    ]
    assert log.append(event(2, group_id="@TGS#hot", event_time=1700000000002)).outcome == "repeat"
