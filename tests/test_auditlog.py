import sqlite3
import subprocess
import threading
import time

import pytest

from conftest import require
from tencent import group_body
from tim_audit import auditlog, chain, db
from tim_audit.auditlog import AuditLog, Event, Rejection
from tim_audit.chain import ChainBroken, canonical, link, verify

TABLES = {
    "event": "name",
    "event_member": "account",
    "quarantine": "reason",
    "meta": "value",
}

STATEMENTS = {
    "update": "UPDATE {table} SET {column} = {column}",
    "delete": "DELETE FROM {table}",
    "insert or replace": "INSERT OR REPLACE INTO {table} SELECT * FROM {table}",
    "replace into": "REPLACE INTO {table} SELECT * FROM {table}",
    "insert or ignore": "INSERT OR IGNORE INTO {table} SELECT * FROM {table}",
    "upsert do nothing": "INSERT INTO {table} SELECT * FROM {table} WHERE true ON CONFLICT DO NOTHING",
    "upsert do update": (
        "INSERT INTO {table} SELECT * FROM {table} WHERE true"
        " ON CONFLICT DO UPDATE SET {column} = 'changed'"
    ),
}


def event(number, **fields):
    values = {
        "received_at": 1700000000000 + number,
        "command": "Group.CallbackAfterCreateGroup",
        "group_id": f"@TGS#{number}",
        "type": "Public",
        "name": f"group {number}",
        "operator": "administrator",
        "owner": "leckie",
        "event_time": 1700000000000 + number,
        "members": ("bob", "peter"),
        "user_data": None,
        "sdkappid": "1400000001",
        "client_ip": "203.0.113.7",
        "opt_platform": "RESTAPI",
        "peer": "127.0.0.1",
        "raw": group_body(GroupId=f"@TGS#{number}"),
    }
    values.update(fields)
    return Event(**values)


def rejection(number):
    return Rejection(
        received_at=1700000000000 + number, error_code=60021, reason="body is not JSON",
        command="Group.CallbackAfterCreateGroup", query="SdkAppid=1400000001", peer="127.0.0.1",
        content_length=5, raw=b"{oops",
    )


@pytest.fixture
def log(app):
    return app.extensions["tim_audit"]


@pytest.fixture
def filled(log):
    """A log of five events (two members each) and two quarantined bodies."""
    for number in range(1, 6):
        log.append(event(number))
    log.append(rejection(1))
    log.append(rejection(2))
    return log


@pytest.fixture
def attacker(filled):
    """A connection to the file with every trigger dropped, as anyone with
    write access to it could do."""
    conn = sqlite3.connect(filled.path, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    yield conn
    conn.close()


def check(log, anchor=None, key=None):
    conn = db.connect(log.path, readonly=True)
    try:
        return verify(conn, key if key is not None else log.key, anchor)
    finally:
        conn.close()


def rehash(conn, key=None):
    """Recompute every event hash from the stored bytes, as an attacker who
    knows the format (and, without AUDIT_HMAC_KEY, needs nothing else) can."""
    previous = chain.GENESIS
    for row in conn.execute("SELECT * FROM event ORDER BY id").fetchall():
        members = [m for (m,) in conn.execute(
            "SELECT account FROM event_member WHERE event_id = ? ORDER BY position", (row[0],)
        )]
        values = dict(zip([d[0] for d in conn.execute("SELECT * FROM event LIMIT 0").description], row, strict=True))
        previous = link(key, previous, canonical(chain.event_values(values, members)))
        conn.execute("UPDATE event SET hash = ? WHERE id = ?", (previous, row[0]))


# --- append-only, for any connection -------------------------------------

@pytest.mark.parametrize("recursive_triggers", [0, 1])
@pytest.mark.parametrize("statement", STATEMENTS)
@pytest.mark.parametrize("table", TABLES)
def test_mutation_is_refused(filled, table, statement, recursive_triggers):
    conn = sqlite3.connect(filled.path, isolation_level=None)
    conn.execute(f"PRAGMA recursive_triggers = {recursive_triggers}")
    before = conn.execute(f"SELECT * FROM {table}").fetchall()
    assert before
    with pytest.raises(sqlite3.IntegrityError, match=f"{table} is append-only"):
        conn.execute(STATEMENTS[statement].format(table=table, column=TABLES[table]))
    assert conn.execute(f"SELECT * FROM {table}").fetchall() == before
    conn.close()


@pytest.mark.parametrize("statement", [
    "PRAGMA recursive_triggers = ON; DELETE FROM event WHERE id = 3;",
    "PRAGMA foreign_keys = OFF; UPDATE event SET name = 'x';",
    "REPLACE INTO event SELECT * FROM event WHERE id = 1;",
    "DELETE FROM quarantine;",
])
def test_sqlite3_shell_cannot_change_the_log(filled, statement):
    sqlite3_shell = require("sqlite3")
    before = subprocess.run([sqlite3_shell, filled.path, ".dump"], capture_output=True, text=True).stdout
    result = subprocess.run([sqlite3_shell, filled.path, statement], capture_output=True, text=True)
    assert result.returncode != 0
    assert "is append-only" in result.stderr
    assert subprocess.run([sqlite3_shell, filled.path, ".dump"], capture_output=True, text=True).stdout == before


@pytest.mark.parametrize("event_id, position", [(5, 2), (1, 2), (5, -1), (6, 0)])
def test_member_cannot_be_added_to_a_stored_event(filled, event_id, position):
    conn = sqlite3.connect(filled.path)
    with pytest.raises(sqlite3.IntegrityError, match="event_member is append-only"):
        conn.execute("INSERT INTO event_member VALUES (?, ?, 'mallory', 1700000000005, 0)", (event_id, position))
    conn.close()


def test_writer_commits_with_synchronous_full_in_wal_mode(log):
    conn = log._connection()
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_appended_event_is_visible_to_other_connections_when_append_returns(log, rows):
    receipt = log.append(event(1))
    assert (receipt.outcome, receipt.id) == ("stored", 1)
    assert rows("SELECT id, hash FROM event") == [(1, receipt.hash)]


def test_repeat_returns_the_stored_event(log):
    first = log.append(event(1))
    again = log.append(event(1, received_at=1800000000000))
    assert again == auditlog.Receipt("repeat", first.id, first.hash)


def test_same_key_with_other_bytes_is_a_conflict_and_writes_nothing(log, rows):
    log.append(event(1))
    receipt = log.append(event(1, raw=b'{"other": true}'))
    assert (receipt.outcome, receipt.id) == ("conflict", 1)
    assert rows("SELECT count(*) FROM event") == [(1,)]


def test_concurrent_appends_are_all_stored_on_one_chain(log):
    def append_many(thread):
        for number in range(50):
            log.append(event(thread * 1000 + number))

    threads = [threading.Thread(target=append_many, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert check(log)[0] == 400


def test_two_writers_on_one_file_never_fork_the_chain(log):
    """A second AuditLog stands in for a second process: only BEGIN
    IMMEDIATE and the head read inside it keep the chain whole."""
    other = AuditLog(log.path)
    try:
        def append_many(writer, base):
            for number in range(100):
                writer.append(event(base + number))

        threads = [threading.Thread(target=append_many, args=(writer, base))
                   for writer, base in ((log, 0), (other, 1000), (log, 2000), (other, 3000))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        other.close()
    assert check(log)[0] == 400


# --- the chain ------------------------------------------------------------

def test_canonical_bytes_are_tagged_and_length_prefixed():
    assert canonical([1, "é", None, b"\x00"]) == (
        b"I" + (1).to_bytes(8, "big") + b"1"
        + b"S" + (2).to_bytes(8, "big") + "é".encode()
        + b"N"
        + b"B" + (1).to_bytes(8, "big") + b"\x00"
    )


@pytest.mark.parametrize("one, other", [
    (["ab", "c"], ["a", "bc"]),
    ([None], [""]),
    ([1], ["1"]),
    (["x"], [b"x"]),
    (["bob", "peter"], ["bob"]),
])
def test_canonical_bytes_never_collide(one, other):
    assert canonical(one) != canonical(other)


def test_chain_links_each_row_to_the_one_before(filled, rows):
    [(first,), (second,)] = rows("SELECT hash FROM event WHERE id <= 2 ORDER BY id")
    conn = db.connect(filled.path, readonly=True)
    row = conn.execute("SELECT * FROM event WHERE id = 2").fetchone()
    conn.close()
    assert link(None, first, canonical(chain.event_values(row, ["bob", "peter"]))) == second


def test_verify_passes_on_an_untouched_log(filled, rows):
    [(head,)] = rows("SELECT hash FROM event WHERE id = 5")
    assert check(filled) == (5, head)


def test_verify_of_an_empty_log_is_genesis(log):
    assert check(log) == (0, "0" * 64)


# --- tampering, with the triggers dropped ----------------------------------

def test_verify_names_an_edited_middle_row(filled, attacker):
    attacker.execute("UPDATE event SET name = 'harmless' WHERE id = 3")
    with pytest.raises(ChainBroken) as caught:
        check(filled)
    assert (caught.value.table, caught.value.row_id) == ("event", 3)
    assert str(caught.value) == "event row 3: hash does not match the row's contents and the row before it"


def test_verify_names_an_edited_raw_body(filled, attacker):
    attacker.execute("UPDATE event SET raw = CAST('{}' AS BLOB) WHERE id = 2")
    with pytest.raises(ChainBroken) as caught:
        check(filled)
    assert caught.value.row_id == 2


def test_verify_names_a_row_whose_value_changed_type_only(filled, attacker):
    attacker.execute("UPDATE event SET raw = CAST(raw AS TEXT) WHERE id = 4")
    with pytest.raises(ChainBroken) as caught:
        check(filled)
    assert caught.value.row_id == 4


def test_verify_names_an_event_whose_member_was_edited(filled, attacker):
    attacker.execute("UPDATE event_member SET account = 'mallory' WHERE event_id = 4 AND position = 1")
    with pytest.raises(ChainBroken) as caught:
        check(filled)
    assert (caught.value.table, caught.value.row_id) == ("event", 4)


def test_verify_names_an_event_given_an_extra_member(filled, attacker):
    attacker.execute("INSERT INTO event_member VALUES (2, 2, 'mallory', 1700000000002, 0)")
    with pytest.raises(ChainBroken) as caught:
        check(filled)
    assert caught.value.row_id == 2


def test_verify_names_member_rows_of_no_event(filled, attacker):
    attacker.execute("INSERT INTO event_member VALUES (9, 0, 'ghost', 1700000000009, 0)")
    with pytest.raises(ChainBroken, match="event_member row 9: member rows belong to no event"):
        check(filled)


def test_verify_names_the_row_after_a_deleted_one(filled, attacker):
    attacker.execute("DELETE FROM event WHERE id = 3")
    attacker.execute("DELETE FROM event_member WHERE event_id = 3")
    with pytest.raises(ChainBroken) as caught:
        check(filled)
    assert str(caught.value) == "event row 4: expected row 3 here: rows are missing"


def test_verify_names_a_swapped_pair(filled, attacker):
    others = ", ".join(c for c in chain.EVENT_COLUMNS if c != "id")
    attacker.execute("CREATE TEMP TABLE pair AS SELECT * FROM event WHERE id IN (2, 3)")
    attacker.execute("DELETE FROM event WHERE id IN (2, 3)")
    attacker.execute(f"INSERT INTO event SELECT 5 - id, {others}, hash FROM pair")
    assert [r[0] for r in attacker.execute("SELECT group_id FROM event ORDER BY id")] == [
        "@TGS#1", "@TGS#3", "@TGS#2", "@TGS#4", "@TGS#5",
    ]
    with pytest.raises(ChainBroken) as caught:
        check(filled)
    assert caught.value.row_id == 2


def test_verify_names_an_edited_quarantine_row(filled, attacker):
    attacker.execute("UPDATE quarantine SET reason = 'nothing to see' WHERE id = 1")
    with pytest.raises(ChainBroken, match="quarantine row 1: hash does not match"):
        check(filled)


def test_verify_names_a_deleted_quarantine_row(filled, attacker):
    attacker.execute("DELETE FROM quarantine WHERE id = 1")
    with pytest.raises(ChainBroken, match="quarantine row 2: expected row 1 here"):
        check(filled)


def test_truncation_passes_alone_but_fails_against_an_anchor(filled, attacker, rows):
    anchor = check(filled)
    attacker.execute("DELETE FROM event WHERE id > 3")
    attacker.execute("DELETE FROM event_member WHERE event_id > 3")
    assert check(filled)[0] == 3
    with pytest.raises(ChainBroken) as caught:
        check(filled, anchor=anchor)
    assert str(caught.value) == (
        "event row 5: missing: the log has 3 rows but the anchor records 5, so it was truncated"
    )


def test_rechained_log_passes_alone_but_fails_against_an_anchor(filled, attacker):
    anchor = check(filled)
    attacker.execute("UPDATE event SET name = 'harmless' WHERE id = 3")
    rehash(attacker)
    assert check(filled)[0] == 5
    with pytest.raises(ChainBroken, match="event row 5: its hash differs from the anchor"):
        check(filled, anchor=anchor)


def test_an_older_anchor_still_passes_as_the_log_grows(filled, rows):
    [(third,)] = rows("SELECT hash FROM event WHERE id = 3")
    assert check(filled, anchor=(3, third))[0] == 5


def test_anchor_of_an_empty_log_is_genesis(filled):
    assert check(filled, anchor=(0, "0" * 64))[0] == 5


@pytest.mark.parametrize("text", ["5", "5:abc", "x:" + "0" * 64, "5:" + "G" * 64, "-1:" + "0" * 64, "5:" + "A" * 64])
def test_malformed_anchor_is_refused(text):
    with pytest.raises(ValueError):
        chain.parse_anchor(text)


# --- AUDIT_HMAC_KEY --------------------------------------------------------

KEY = b"k" * 32


def test_keyed_chain_verifies_only_with_its_key(make_app):
    log = make_app(AUDIT_HMAC_KEY=KEY.decode()).extensions["tim_audit"]
    log.append(event(1))
    log.append(event(2))
    assert check(log, key=KEY)[0] == 2
    with pytest.raises(ChainBroken) as caught:
        check(log, key=b"x" * 32)
    assert caught.value.row_id == 1


def test_keyed_chain_cannot_be_recomputed_without_the_key(make_app):
    log = make_app(AUDIT_HMAC_KEY=KEY.decode()).extensions["tim_audit"]
    for number in range(1, 4):
        log.append(event(number))
    conn = sqlite3.connect(log.path, isolation_level=None)
    conn.execute("DROP TRIGGER event_no_update")
    conn.execute("UPDATE event SET name = 'harmless' WHERE id = 2")
    rehash(conn)  # with plain SHA-256: the attacker has no key
    conn.close()
    with pytest.raises(ChainBroken) as caught:
        check(log, key=KEY)
    assert caught.value.row_id == 1


def test_the_same_event_twice_in_one_batch_is_stored_once(log, rows):
    conn = log._connection()
    receipts = log._write(conn, [event(1), event(1), event(1, raw=b"{}")])
    assert [r.outcome for r in receipts] == ["stored", "repeat", "conflict"]
    assert {r.id for r in receipts} == {1}
    assert rows("SELECT count(*) FROM event") == [(1,)]


def test_verify_names_an_event_whose_member_event_time_was_moved(filled, attacker):
    attacker.execute("UPDATE event_member SET event_time = 1 WHERE event_id = 3")
    with pytest.raises(ChainBroken, match="event_member row 3: member rows do not match the event"):
        check(filled)


def test_verify_names_an_event_whose_member_duplicate_flag_was_edited(filled, attacker):
    attacker.execute("UPDATE event_member SET duplicate = 1 WHERE event_id = 2 AND position = 1")
    with pytest.raises(ChainBroken, match="event_member row 2: member rows do not match the event"):
        check(filled)


def test_member_listed_twice_is_flagged_as_a_duplicate(log, rows):
    log.append(event(1, members=("bob", "peter", "bob")))
    assert rows("SELECT position, account, duplicate FROM event_member ORDER BY position") == [
        (0, "bob", 0), (1, "peter", 0), (2, "bob", 1),
    ]


def test_verify_names_an_event_whose_folded_name_was_edited(filled, attacker):
    """name_folded decides what a name search finds, so it is chained too."""
    attacker.execute("UPDATE event SET name_folded = 'hidden' WHERE id = 2")
    with pytest.raises(ChainBroken) as caught:
        check(filled)
    assert caught.value.row_id == 2


def test_folded_name_is_the_casefolded_name(log, rows):
    log.append(event(1, name="Straße ΣΊΣΥΦΟΣ 周末"))
    assert rows("SELECT name_folded FROM event") == [("strasse σίσυφοσ 周末",)]


def test_an_entry_that_cannot_be_written_fails_alone(log, rows):
    """One bad entry in a batch: the others are still written, each in a
    transaction of its own, and the bad one gets its own error."""
    jobs = [auditlog._Job(entry, deadline=time.monotonic() + 5) for entry in (
        event(1), event(2, event_time=2**64), event(3),  # SQLite cannot hold 2**64
    )]
    log._commit(jobs)
    assert [job.done.is_set() for job in jobs] == [True, True, True]
    assert [job.receipt.outcome if job.receipt else None for job in jobs] == ["stored", None, "stored"]
    assert isinstance(jobs[1].error, OverflowError)
    assert rows("SELECT group_id FROM event ORDER BY id") == [("@TGS#1",), ("@TGS#3",)]
    assert check(log)[0] == 2
    assert log.failure is None


def test_append_raises_the_entrys_own_error(log):
    with pytest.raises(OverflowError):
        log.append(event(1, event_time=2**64))
    assert log.append(event(2)).outcome == "stored"
