"""The Merkle trees over the log: stored with their rows, built once for an
older log, and checked by verify."""

import logging
import sqlite3

import pytest

from conftest import check, event, rejection
from tim_audit import StartupError
from tim_audit.log import chain, merkle, records, tlog


def leaves(path, table):
    """Each row's canonical bytes, recomputed from the file as an auditor would."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        if table == "quarantine":
            return [
                chain.canonical(chain.quarantine_values(row))
                for row in conn.execute("SELECT * FROM quarantine ORDER BY id")
            ]
        return [
            chain.canonical(
                chain.event_values(
                    row,
                    [
                        m[0]
                        for m in conn.execute(
                            "SELECT account FROM event_member WHERE event_id = ? ORDER BY position",
                            (row["id"],),
                        )
                    ],
                )
            )
            for row in conn.execute("SELECT * FROM event ORDER BY id").fetchall()
        ]
    finally:
        conn.close()


def stored(rows, table):
    return [bytes(h) for (h,) in rows(f"SELECT hash FROM {table}_tree ORDER BY id")]


def test_each_event_is_a_leaf_of_its_canonical_bytes_stored_with_its_row(filled, rows):
    data = leaves(filled.path, "event")
    assert len(data) == 5
    assert stored(rows, "event") == list(tlog.all_stored_hashes(data))
    assert [i for (i,) in rows("SELECT id FROM event_tree ORDER BY id")] == list(
        range(tlog.stored_hash_count(5))
    )


def test_quarantine_has_a_tree_of_its_own(filled, rows):
    assert stored(rows, "quarantine") == list(
        tlog.all_stored_hashes(leaves(filled.path, "quarantine"))
    )


def test_a_batch_of_many_entries_stores_the_same_hashes_as_one_at_a_time(log, rows):
    conn = log._connection()
    conn.execute("BEGIN IMMEDIATE")
    records.write(conn, [event(n) for n in range(1, 40)] + [rejection(1), rejection(2)], log.key)
    conn.execute("COMMIT")
    assert stored(rows, "event") == list(tlog.all_stored_hashes(leaves(log.path, "event")))
    assert stored(rows, "quarantine") == list(
        tlog.all_stored_hashes(leaves(log.path, "quarantine"))
    )


def test_a_repeat_adds_no_leaf(log, rows):
    log.append(event(1))
    log.append(event(1))
    assert len(stored(rows, "event")) == 1


def test_tree_tables_are_append_only(filled):
    conn = sqlite3.connect(filled.path)
    try:
        for statement in (
            "UPDATE event_tree SET hash = zeroblob(32) WHERE id = 0",
            "DELETE FROM quarantine_tree",
            "INSERT INTO event_tree (id, hash) VALUES (3, zeroblob(32))",
            "INSERT INTO event_tree (id, hash) VALUES (100, zeroblob(32))",
            "INSERT INTO event_tree (id, hash) VALUES (8, zeroblob(31))",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="_tree is append-only"):
                conn.execute(statement)
    finally:
        conn.close()


def test_the_root_is_the_rfc_root_of_the_rows(filled, rows):
    conn = sqlite3.connect(filled.path)
    try:
        assert merkle.size(conn, "event") == 5
        data = leaves(filled.path, "event")
        hashes = list(tlog.all_stored_hashes(data))
        assert merkle.root(conn, "event", 5) == tlog.tree_hash(
            5, lambda ix: [hashes[i] for i in ix]
        )
    finally:
        conn.close()


# --- a log made before there were trees -------------------------------------


@pytest.fixture
def treeless(filled, attacker):
    """The five-event log as a version before the trees left it: none of the
    tables that came with the trees, and no record in ``meta`` of them."""
    filled.close()
    attacker.executescript(
        "DROP TABLE event_tree; DROP TABLE quarantine_tree; DROP TABLE timestamp;"
        " DROP TABLE cosignature; DROP TABLE checkpoint; DELETE FROM meta WHERE key = 'trees'"
    )
    return filled


@pytest.fixture
def wiped(filled, attacker):
    """The five-event log with its tree rows deleted and its record of them kept."""
    filled.close()
    attacker.executescript("DELETE FROM event_tree; DELETE FROM quarantine_tree")
    return filled


def test_the_first_start_builds_the_trees_and_says_so(treeless, make_app, rows, caplog):
    with caplog.at_level(logging.INFO, logger="tim_audit.log.merkle"):
        make_app()
    assert caplog.messages == [
        "built the Merkle trees of this log, once: event tree of 5 leaves, quarantine tree of 2 leaves"
    ]
    assert stored(rows, "event") == list(tlog.all_stored_hashes(leaves(treeless.path, "event")))
    assert stored(rows, "quarantine") == list(
        tlog.all_stored_hashes(leaves(treeless.path, "quarantine"))
    )


def test_a_later_start_builds_nothing(filled, make_app, caplog):
    filled.close()
    with caplog.at_level(logging.INFO, logger="tim_audit.log.merkle"):
        make_app()
    assert caplog.messages == []


def test_verify_passes_on_a_log_whose_trees_are_not_built_yet(treeless):
    assert check(treeless).events == 5


def test_verify_fails_a_log_whose_tree_rows_and_their_record_were_deleted(filled, attacker):
    filled.close()
    attacker.executescript(
        "DELETE FROM event_tree; DELETE FROM quarantine_tree; DELETE FROM meta WHERE key = 'trees'"
    )
    with pytest.raises(chain.ChainBroken) as caught:
        check(filled)
    assert str(caught.value) == (
        "event row 1: it is not in the Merkle tree: the tree stops before it"
    )


def test_verify_says_when_the_trees_were_built_over_an_older_log(treeless, make_app, runner):
    make_app()
    result = runner.invoke(args=["verify"])
    assert result.output.splitlines()[0] == (
        "trees: built once over 5 event rows made before trees and 2 quarantine rows made"
        " before trees"
    )


def test_the_first_start_records_that_the_log_has_trees(treeless, make_app, rows):
    make_app()
    assert rows("SELECT value FROM meta WHERE key = 'trees'") == [
        ("built once over 5 event rows made before trees and 2 quarantine rows made before trees",)
    ]


def test_a_new_log_records_its_trees_from_the_first_row(log, rows):
    assert rows("SELECT value FROM meta WHERE key = 'trees'") == [("from the first row",)]


def test_verify_fails_a_log_that_had_trees_and_lost_their_rows(wiped):
    with pytest.raises(chain.ChainBroken) as caught:
        check(wiped)
    assert (
        str(caught.value) == "event row 1: it is not in the Merkle tree: the tree stops before it"
    )


def test_a_log_that_lost_its_tree_rows_refuses_to_start_rather_than_rebuild_them(
    wiped, make_app, rows
):
    with pytest.raises(
        StartupError,
        match="event_tree row 1: the log has had trees \\(from the first row\\), but this"
        " tree's rows are missing",
    ):
        make_app()
    assert rows("SELECT count(*) FROM event_tree") == [(0,)]


def test_a_log_that_does_not_verify_refuses_to_start_rather_than_build_trees_over_it(
    treeless, attacker, make_app
):
    attacker.execute("UPDATE event SET name = 'harmless' WHERE id = 2")
    with pytest.raises(
        StartupError,
        match="the log does not verify, so its Merkle trees cannot be"
        " built over it: event row 2: hash does not match",
    ):
        make_app()


# --- verify checks the trees ------------------------------------------------


def test_verify_names_a_tree_hash_that_was_altered(filled, attacker):
    attacker.execute("UPDATE event_tree SET hash = zeroblob(32) WHERE id = 3")
    with pytest.raises(chain.ChainBroken) as caught:
        check(filled)
    assert str(caught.value) == (
        "event row 3: the Merkle tree does not match the rows up to it"
        " (event_tree hash 3 differs from the one recomputed)"
    )


def test_verify_catches_the_newest_rows_cut_off_by_the_tree(filled, attacker):
    attacker.executescript(
        "DELETE FROM event WHERE id = 5; DELETE FROM event_member WHERE event_id = 5"
    )
    with pytest.raises(chain.ChainBroken) as caught:
        check(filled)
    assert str(caught.value) == (
        "event_tree row 7: the tree has hashes beyond those of its 4 rows: rows were removed"
    )


def test_verify_catches_a_tree_cut_short(filled, attacker):
    attacker.execute("DELETE FROM quarantine_tree WHERE id >= 1")
    with pytest.raises(chain.ChainBroken, match="quarantine row 2: it is not in the Merkle tree"):
        check(filled)
