"""The writer: append-only for any connection, durable, one chain under
concurrent appends. The chain itself is tested in test_chain.py."""

import os
import sqlite3
import subprocess
import threading
import time

import pytest

from conftest import check, event, require
from tim_audit.log import derived, records, writer
from tim_audit.log.writer import AuditLog, StorageUnavailable

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


# --- append-only, for any connection -------------------------------------


@pytest.mark.parametrize("recursive_triggers", [0, 1])
@pytest.mark.parametrize("statement", STATEMENTS)
@pytest.mark.parametrize("table", TABLES)
def test_mutation_is_refused(filled, table, statement, recursive_triggers):
    conn = sqlite3.connect(filled.path, isolation_level=None)
    # With the writer's function, as a connection past event_hour's guard:
    # the append-only triggers refuse it all the same.
    derived.allow_writes(conn)
    conn.execute(f"PRAGMA recursive_triggers = {recursive_triggers}")
    before = conn.execute(f"SELECT * FROM {table}").fetchall()
    assert before
    with pytest.raises(sqlite3.IntegrityError, match=f"{table} is append-only"):
        conn.execute(STATEMENTS[statement].format(table=table, column=TABLES[table]))
    assert conn.execute(f"SELECT * FROM {table}").fetchall() == before
    conn.close()


@pytest.mark.parametrize(
    "statement, refusal",
    [
        ("PRAGMA recursive_triggers = ON; DELETE FROM event WHERE id = 3;", "is append-only"),
        ("PRAGMA foreign_keys = OFF; UPDATE event SET name = 'x';", "is append-only"),
        # Any write to event reaches event_hour's guard first, when prepared.
        (
            "REPLACE INTO event SELECT * FROM event WHERE id = 1;",
            "no such function: tim_audit_writer",
        ),
        ("DELETE FROM quarantine;", "is append-only"),
    ],
)
def test_sqlite3_shell_cannot_change_the_log(filled, statement, refusal):
    sqlite3_shell = require("sqlite3")
    before = subprocess.run(
        [sqlite3_shell, filled.path, ".dump"], capture_output=True, text=True
    ).stdout
    result = subprocess.run([sqlite3_shell, filled.path, statement], capture_output=True, text=True)
    assert result.returncode != 0
    assert refusal in result.stderr
    assert (
        subprocess.run([sqlite3_shell, filled.path, ".dump"], capture_output=True, text=True).stdout
        == before
    )


@pytest.mark.parametrize("event_id, position", [(5, 2), (1, 2), (5, -1), (6, 0)])
def test_member_cannot_be_added_to_a_stored_event(filled, event_id, position):
    conn = sqlite3.connect(filled.path)
    with pytest.raises(sqlite3.IntegrityError, match="event_member is append-only"):
        conn.execute(
            "INSERT INTO event_member VALUES (?, ?, 'mallory', 1700000000005, 0)",
            (event_id, position),
        )
    conn.close()


def test_writer_commits_with_synchronous_full_in_wal_mode(log):
    conn = log._connection()
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_appended_event_is_visible_to_other_connections_when_append_returns(log, rows):
    receipt = log.append(event(1))
    assert (receipt.outcome, receipt.id) == ("stored", 1)
    assert rows("SELECT id, hash FROM event") == [(1, receipt.hash)]


def test_concurrent_appends_are_all_stored_on_one_chain(log):
    def append_many(thread):
        for number in range(50):
            log.append(event(thread * 1000 + number))

    threads = [threading.Thread(target=append_many, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert check(log).events == 400


def test_a_second_writer_on_the_same_file_is_refused_while_the_first_runs(log, tmp_path):
    """One process writes a log: a second writer, here by another name for
    the same file, cannot open it, and the first goes on writing."""
    log.append(event(1))
    (tmp_path / "link.sqlite3").symlink_to(log.path)
    other = AuditLog(str(tmp_path / "link.sqlite3"))
    with pytest.raises(StorageUnavailable) as refused:
        other.append(event(2))
    assert str(refused.value) == (
        f"cannot open the log: process {os.getpid()} writes the log at {log.path}"
        f" (it holds {log.path}.lock)"
    )
    log.append(event(3))
    assert check(log).events == 2


def job(number, members=0, body=b"{}"):
    members = tuple(f"m{n}" for n in range(members))
    return writer.Job(event(number, members=members, raw=body), started=0, deadline=0)


def test_a_transaction_takes_every_light_entry_and_heavy_ones_up_to_its_budget():
    light = [job(n) for n in range(1, 4)]
    heavy = [job(n, members=300) for n in range(4, 7)]
    jobs = [heavy[0], light[0], heavy[1], light[1], heavy[2], light[2]]
    assert writer._budgeted(jobs, False) == (
        [heavy[0], light[0], light[1], light[2]],
        heavy[1:],
        True,
    )


def test_after_a_heavy_transaction_the_light_entries_go_alone():
    light, heavy = job(1), job(2, members=300)
    assert writer._budgeted([heavy, light], True) == ([light], [heavy], False)
    assert writer._budgeted([heavy], True) == ([heavy], [], True)


def test_a_heavy_entry_over_the_budget_alone_still_goes():
    huge = job(1, members=400, body=b"x" * (writer.WRITE_BUDGET * 4096))
    light, other = job(2), job(3, members=300)
    assert writer._budgeted([huge, light, other], False) == ([huge, light], [other], True)


def test_a_large_body_is_heavy_by_its_bytes():
    assert records.cost(job(1, body=b"x" * (1024 * 1024)).entry) == 1 + 256
    assert records.cost(job(1, members=500).entry) == 1 + 500


def test_close_writes_every_heavy_entry_it_held_back(log, rows):
    """Heavy entries queued together go a budget at a time; close() writes
    the ones still held before the writer stops."""
    log.open()
    jobs = [
        writer.Job(event(n, members=tuple(f"m{m}" for m in range(400))), 0, time.monotonic() + 30)
        for n in range(1, 7)
    ]
    with log._lock:  # queued at once, so that one batch holds them all
        for queued in jobs:
            log._queue.put(queued)
    log.close()
    assert all(queued.receipt is not None and queued.receipt.outcome == "stored" for queued in jobs)
    assert rows("SELECT count(*), sum(member_count) FROM event") == [(6, 2400)]


def test_an_entry_that_cannot_be_written_fails_alone(log, rows):
    """One bad entry in a batch: the others are still written, each in a
    transaction of its own, and the bad one gets its own error."""
    jobs = [
        writer.Job(entry, started=0, deadline=time.monotonic() + 5)
        for entry in (
            event(1),
            event(2, event_time=2**64),
            event(3),  # SQLite cannot hold 2**64
        )
    ]
    log._commit(jobs)
    assert [job.finished for job in jobs] == [True, True, True]
    assert [job.receipt.outcome if job.receipt else None for job in jobs] == [
        "stored",
        None,
        "stored",
    ]
    assert isinstance(jobs[1].error, OverflowError)
    assert rows("SELECT group_id FROM event ORDER BY id") == [("@TGS#1",), ("@TGS#3",)]
    assert check(log).events == 2
    assert log.failure is None


def test_append_raises_the_entrys_own_error(log):
    with pytest.raises(OverflowError):
        log.append(event(1, event_time=2**64))
    assert log.append(event(2)).outcome == "stored"


def test_the_writer_survives_a_failure_of_its_own(log, monkeypatch, caplog):
    """A bug in the writer is logged and does not stop it: the callbacks
    after it are still written."""

    def broken():
        monkeypatch.undo()
        raise RuntimeError("a bug")

    monkeypatch.setattr(log, "_bound_wal", broken)
    assert log.append(event(1)).outcome == "stored"
    assert log.append(event(2)).outcome == "stored"
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "the writer failed on a batch"
    ]


class FailingCommit:
    """The writer's connection, but COMMIT fails as a failing disk makes it."""

    def __init__(self, conn):
        self.conn = conn

    def execute(self, sql, *args):
        if sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_a_failed_commit_is_uncertain_and_the_writer_goes_on(log):
    """A COMMIT that fails other than for a full disk may have landed: the
    answer says so, and the writer reconnects and keeps writing, even when
    the WAL is due for a checkpoint right after."""
    log.append(event(1))
    log._conn = FailingCommit(log._conn)
    log._wal_frames = writer.WAL_CHECKPOINT_FRAMES + 1
    with pytest.raises(writer.StorageUncertain, match="disk I/O error"):
        log.append(event(2))
    assert log.append(event(3)).outcome == "stored"


def test_a_closed_log_opens_again_at_the_next_append(log):
    log.append(event(1))
    log.close()
    assert log.append(event(2)).outcome == "stored"
    assert check(log)[0] == 2
