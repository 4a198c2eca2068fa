"""The derived tables (the name index and the hourly counts): only the
writer changes them, verify compares them with the chained rows, queries
do not answer from them while they are behind, and rebuild-index, which
makes them again, runs only while no ingest server holds the log."""

import os
import sqlite3

import markupsafe
import pytest

from conftest import event
from dashboard import listed_ids
from test_tampering import run_verification
from tim_audit import StartupError, create_app

HOUR = 1700000000000 // 3600000  # the hour of every event in ``filled``
REPAIR = "; tim-audit rebuild-index makes it again from the chained rows"

DAMAGE = {
    "deleted name row": (
        "DELETE FROM event_name WHERE rowid = 3",
        "derived event_name: the name index holds 4 names of 5 events",
    ),
    "altered name row": (
        "UPDATE event_name SET name_folded = 'group 9' WHERE rowid = 3",
        "derived event_name: the name index's trigrams are not those of the chained events' names",
    ),
    "changed hourly count": (
        "UPDATE event_hour SET events = 4",
        f"derived event_hour: hour {HOUR} type 'Public' counts 4 events, the chained rows 5",
    ),
    "missing hour row": (
        "DELETE FROM event_hour",
        f"derived event_hour: hour {HOUR} type 'Public' has no row for its 5 events",
    ),
    "extra hour row": (
        f"INSERT INTO event_hour VALUES ({HOUR + 1}, 'Public', 2)",
        f"derived event_hour: hour {HOUR + 1} type 'Public' counts 2 events, the chained rows 0",
    ),
    # The same characters in another order keep every count and plain sum.
    "name row swapped for an anagram": (
        "INSERT INTO event_name (event_name, rowid, name_folded) VALUES ('delete', 3, 'group 3');"
        " INSERT INTO event_name (rowid, name_folded) VALUES (3, 'gruop 3')",
        "derived event_name: the name index's trigrams are not those of the chained events' names",
    ),
    "record of the index cut short": (
        "UPDATE event_name_data SET block = x'80' WHERE id = 1",
        "derived event_name: its record of what it holds is cut short",
    ),
    "record of the index of another type": (
        "UPDATE event_name_data SET block = 4611686018427387904 WHERE id = 1",
        "derived event_name: its record of what it holds is not a BLOB",
    ),
    "unreadable index": (
        "UPDATE event_name_data SET block = x'ffffffffffffffffffff' WHERE id = 10",
        "derived event_name: it cannot be read: database disk image is malformed",
    ),
    "hour of another type": (
        f"INSERT INTO event_hour VALUES ('{HOUR}x', 'Public', 5)",
        f"derived event_hour: a row holds hour TEXT '{HOUR}x' and events INTEGER 5,"
        " where both are whole numbers",
    ),
}


@pytest.fixture(params=DAMAGE.values(), ids=DAMAGE.keys())
def damaged(request, attacker):
    """The five-event log with its derived data changed one way, by someone
    with the file who dropped the triggers first; what verify says."""
    statement, failure = request.param
    attacker.executescript(statement)
    return failure + REPAIR


# --- only the writer changes them ----------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        f"INSERT INTO event_hour VALUES ({HOUR + 1}, 'Public', 1)",
        "UPDATE event_hour SET events = 4",
        "DELETE FROM event_hour",
    ],
)
def test_another_connection_cannot_change_the_hourly_counts(filled, rows, statement):
    conn = sqlite3.connect(filled.path)
    try:
        with pytest.raises(sqlite3.OperationalError, match="no such function: tim_audit_writer"):
            conn.execute(statement)
    finally:
        conn.close()
    assert rows("SELECT * FROM event_hour") == [(HOUR, "Public", 5)]


def test_a_log_without_the_triggers_gets_them_back_when_opened(filled, attacker, make_app):
    filled.close()
    make_app()
    conn = sqlite3.connect(filled.path)
    try:
        with pytest.raises(sqlite3.OperationalError, match="no such function: tim_audit_writer"):
            conn.execute("UPDATE event_hour SET events = 4")
    finally:
        conn.close()


# --- verify compares them with the chained rows ----------------------------------


def test_verify_fails_derived_data_that_does_not_match_the_chained_rows(damaged, runner):
    result = runner.invoke(args=["verify"])
    assert (result.exit_code, result.output) == (1, f"FAIL {damaged}\n")


def test_the_strip_shows_the_derived_failure(damaged, app, get):
    run_verification(app)
    text = get("/history").get_data(as_text=True)
    assert 'class="integrity broken"' in text
    assert str(markupsafe.escape(damaged)) in text


def test_pages_answer_in_full_from_the_chained_rows_once_verified(damaged, app, get):
    run_verification(app)
    text = get("/history").get_data(as_text=True)
    assert "<strong>5</strong> events match" in text
    assert listed_ids(get("/history", query_string={"q": "group 3"}).get_data(as_text=True)) == [3]


def test_rebuild_index_repairs_what_verify_failed(filled, runner, damaged):
    filled.close()
    assert runner.invoke(args=["rebuild-index"]).exit_code == 0
    result = runner.invoke(args=["verify"])
    assert result.exit_code == 0
    assert result.output.startswith("OK 5 ")


# --- queries do not answer from them while they are behind -----------------------


def test_a_name_search_walks_past_an_index_that_cannot_be_read(filled, attacker, get):
    attacker.execute("UPDATE event_name_data SET block = x'ffffffffffffffffffff' WHERE id = 10")
    assert listed_ids(get("/history", query_string={"q": "group 3"}).get_data(as_text=True)) == [3]


def test_a_name_search_finds_an_event_the_index_lost(filled, attacker, get):
    attacker.execute("DELETE FROM event_name WHERE rowid = 3")
    assert listed_ids(get("/history", query_string={"q": "group 3"}).get_data(as_text=True)) == [3]


def test_the_count_ignores_hourly_counts_behind_the_log(filled, attacker, get):
    # As a rebuild that stopped before its last batch leaves them.
    attacker.execute("DELETE FROM event_name WHERE rowid = 5")
    attacker.execute("UPDATE event_hour SET events = 4")
    assert "<strong>5</strong> events match" in get("/history").get_data(as_text=True)


def test_counts_found_unlike_the_chained_rows_are_not_used_once_verified(
    filled, attacker, app, get
):
    attacker.execute("UPDATE event_hour SET events = events - 5")  # covers every event still
    assert "<strong>0</strong> events match" in get("/history").get_data(as_text=True)
    run_verification(app)
    assert app.extensions["tim_audit.verifier"].derived_failed
    assert "<strong>5</strong> events match" in get("/history").get_data(as_text=True)


def test_a_later_failure_before_the_derived_check_keeps_them_unused(filled, attacker, app, get):
    attacker.execute("UPDATE event_hour SET events = events - 5")
    run_verification(app)
    attacker.execute("UPDATE event SET name = 'harmless' WHERE id = 2")  # the chain fails first
    assert run_verification(app).failure.startswith("event row 2: ")
    assert app.extensions["tim_audit.verifier"].derived_failed
    assert "<strong>5</strong> events match" in get("/history").get_data(as_text=True)


def test_a_name_index_found_unlike_the_chained_rows_is_not_used_once_verified(
    filled, attacker, app, get
):
    attacker.execute("UPDATE event_name SET name_folded = 'group 9' WHERE rowid = 3")
    assert listed_ids(get("/history", query_string={"q": "group 3"}).get_data(as_text=True)) == []
    run_verification(app)
    assert app.extensions["tim_audit.verifier"].derived_failed
    assert listed_ids(get("/history", query_string={"q": "group 3"}).get_data(as_text=True)) == [3]


# --- what the name index holds ---------------------------------------------------


def test_a_name_is_searched_in_its_first_1024_characters(filled, get, runner):
    filled.append(event(6, name="x" * 1000 + "needle" + "y" * 200 + "haystack"))
    assert listed_ids(get("/history", query_string={"q": "NEEDLE"}).get_data(as_text=True)) == [6]
    assert listed_ids(get("/history", query_string={"q": "haystack"}).get_data(as_text=True)) == []
    result = runner.invoke(args=["verify"])
    assert (result.exit_code, result.output[:5]) == (0, "OK 6 ")


# --- rebuild-index and the running server ----------------------------------------


def test_rebuild_index_is_refused_while_a_server_writes_the_log(live_server, runner, rows):
    path = live_server.app.config["DATABASE"]
    rows("SELECT 1")  # the log exists: the server opened it
    result = runner.invoke(args=["rebuild-index"])
    assert (result.exit_code, result.output) == (
        1,
        f"Error: process {os.getpid()} writes the log at {path} (it holds {path}.lock):"
        " stop the ingest server, run rebuild-index, then start it again\n",
    )


def test_a_second_ingest_server_on_the_same_log_does_not_start(app, make_app):
    with pytest.raises(StartupError, match=f"process {os.getpid()} writes the log at "):
        make_app()


def test_health_of_a_second_ingest_app_names_the_process_that_writes(app, config):
    response = create_app(config).test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "unavailable",
        "error": f"process {os.getpid()} writes the log at {app.config['DATABASE']}"
        f" (it holds {app.config['DATABASE']}.lock)",
    }


def test_rebuild_index_runs_once_the_server_has_stopped(filled, runner, rows):
    filled.close()
    result = runner.invoke(args=["rebuild-index"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("rebuilt the name index and hourly counts of 5 events in ")
    assert rows("SELECT * FROM event_hour") == [(HOUR, "Public", 5)]
