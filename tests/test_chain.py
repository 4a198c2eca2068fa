"""The hash chain: what verify proves, and what it names when a row was
tampered with (by someone with the file, the triggers dropped)."""

import sqlite3

import pytest

from conftest import check, event, rebuild_trees, rejection, rewrite
from tim_audit.log import chain, db, derived, merkle, signednote, tlog, tlogproof, verification
from tim_audit.log.chain import GENESIS, ChainBroken, Heads, canonical, link
from tim_audit.review import evidence


def strict_tables(path):
    conn = sqlite3.connect(path)
    try:
        return {
            name: strict
            for name, strict in conn.execute(
                "SELECT name, strict FROM pragma_table_list WHERE schema = 'main' AND name NOT LIKE 'sqlite_%'"
            )
        }
    finally:
        conn.close()


def without_derived(tables):
    """The tables that hold the record: the name index and the hourly
    counts are derived data, rebuilt at will (derived.py)."""
    return {
        name: strict
        for name, strict in tables.items()
        if not name.startswith("event_name") and name != "event_hour"
    }


# --- the chain ------------------------------------------------------------


def test_canonical_bytes_are_tagged_and_length_prefixed():
    assert canonical([1, "é", None, b"\x00"]) == (
        b"I"
        + (1).to_bytes(8, "big")
        + b"1"
        + b"S"
        + (2).to_bytes(8, "big")
        + "é".encode()
        + b"N"
        + b"B"
        + (1).to_bytes(8, "big")
        + b"\x00"
    )


@pytest.mark.parametrize(
    "one, other",
    [
        (["ab", "c"], ["a", "bc"]),
        ([None], [""]),
        ([1], ["1"]),
        (["x"], [b"x"]),
        (["bob", "peter"], ["bob"]),
    ],
)
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
    [(quarantine_head,)] = rows("SELECT hash FROM quarantine WHERE id = 2")
    assert check(filled) == Heads(5, head, 2, quarantine_head)


def test_verify_of_an_empty_log_is_genesis(log):
    assert check(log) == Heads(0, GENESIS, 0, GENESIS)


# --- tampering, with the triggers dropped ----------------------------------


def test_verify_names_an_edited_middle_row(filled, attacker):
    attacker.execute("UPDATE event SET name = 'harmless' WHERE id = 3")
    with pytest.raises(ChainBroken) as caught:
        check(filled)
    assert (caught.value.table, caught.value.row_id) == ("event", 3)
    assert (
        str(caught.value)
        == "event row 3: hash does not match the row's contents and the row before it"
    )


def test_verify_names_an_edited_raw_body(filled, attacker):
    attacker.execute("UPDATE event SET raw = CAST('{}' AS BLOB) WHERE id = 2")
    with pytest.raises(ChainBroken) as caught:
        check(filled)
    assert caught.value.row_id == 2


def test_verify_names_an_event_whose_member_was_edited(filled, attacker):
    attacker.execute(
        "UPDATE event_member SET account = 'mallory' WHERE event_id = 4 AND position = 1"
    )
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
        "@TGS#1",
        "@TGS#3",
        "@TGS#2",
        "@TGS#4",
        "@TGS#5",
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
    attacker.execute("DELETE FROM event_tree WHERE id >= ?", (tlog.stored_hash_count(3),))
    derived.allow_writes(attacker)
    derived.rebuild(attacker)  # the name index and counts, made again to match
    assert check(filled).events == 3
    with pytest.raises(ChainBroken) as caught:
        check(filled, anchor=anchor)
    assert str(caught.value) == (
        "event row 5: missing: the log has 3 rows but the anchor records 5, so it was truncated"
    )


def test_rechained_log_passes_alone_but_fails_against_an_anchor(filled, attacker):
    anchor = check(filled)
    attacker.execute("UPDATE event SET name = 'harmless' WHERE id = 3")
    rewrite(attacker)
    assert check(filled).events == 5
    with pytest.raises(ChainBroken, match="event row 5: its hash differs from the anchor"):
        check(filled, anchor=anchor)


def test_an_older_anchor_still_passes_as_the_log_grows(filled, rows):
    [(third,)] = rows("SELECT hash FROM event WHERE id = 3")
    assert check(filled, anchor=Heads(3, third)).events == 5


def test_anchor_of_an_empty_log_is_genesis(filled):
    assert check(filled, anchor=Heads(0, GENESIS, 0, GENESIS)).events == 5


# --- AUDIT_HMAC_KEY --------------------------------------------------------

KEY = b"k" * 32


def test_keyed_chain_verifies_only_with_its_key(make_app):
    log = make_app(AUDIT_HMAC_KEY=KEY.decode()).extensions["tim_audit"]
    log.append(event(1))
    log.append(event(2))
    assert check(log, key=KEY).events == 2
    with pytest.raises(ChainBroken) as caught:
        check(log, key=b"x" * 32)
    assert caught.value.row_id == 1


def test_keyed_chain_cannot_be_recomputed_without_the_key(make_app):
    log = make_app(AUDIT_HMAC_KEY=KEY.decode()).extensions["tim_audit"]
    for number in range(1, 4):
        log.append(event(number))
    conn = sqlite3.connect(log.path, isolation_level=None)
    for trigger in (
        "event_no_update",
        "event_tree_no_delete",
        "quarantine_tree_no_delete",
        "meta_no_delete",
    ):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("UPDATE event SET name = 'harmless' WHERE id = 2")
    rewrite(conn)  # with plain SHA-256: the attacker has no key
    conn.close()
    with pytest.raises(ChainBroken) as caught:
        check(log, key=KEY)
    assert caught.value.row_id == 1


def test_verify_names_an_event_whose_member_event_time_was_moved(filled, attacker):
    attacker.execute("UPDATE event_member SET event_time = 1 WHERE event_id = 3")
    with pytest.raises(ChainBroken, match="event_member row 3: member rows do not match the event"):
        check(filled)


def test_verify_names_an_event_whose_member_duplicate_flag_was_edited(filled, attacker):
    attacker.execute("UPDATE event_member SET duplicate = 1 WHERE event_id = 2 AND position = 1")
    with pytest.raises(ChainBroken, match="event_member row 2: member rows do not match the event"):
        check(filled)


def test_verify_names_an_event_whose_folded_name_was_edited(filled, attacker):
    """name_folded decides what a name search finds, so it is chained too."""
    attacker.execute("UPDATE event SET name_folded = 'hidden' WHERE id = 2")
    with pytest.raises(ChainBroken) as caught:
        check(filled)
    assert caught.value.row_id == 2


def test_chain_of_a_known_event_is_unchanged():
    """The encoding docs/design.md documents: logs already written must verify."""
    entry = event(
        1, members=("bob", "peter", "bob"), owner=None, user_data='[{"Key":"k","Value":"v"}]'
    )
    row = vars(entry) | {"id": 1, "name_folded": entry.name.casefold(), "member_count": 3}
    assert link(None, GENESIS, canonical(chain.event_values(row, entry.members))) == (
        "b36985d1d2e7b5726f177984095c285703725976c9dfbb1093c755a66ecf244b"
    )


def test_chained_values_of_another_type_are_refused():
    entry = event(1)
    row = vars(entry) | {"id": 7, "name_folded": entry.name, "member_count": 2.5}
    with pytest.raises(ChainBroken) as caught:
        chain.event_values(row, entry.members)
    assert str(caught.value) == "event row 7: member_count is REAL 2.5, expected INTEGER"


# --- STRICT tables, and logs made before them -------------------------------


def test_new_logs_have_strict_tables(log):
    assert without_derived(strict_tables(log.path)) == {
        "meta": 1,
        "event": 1,
        "event_member": 1,
        "quarantine": 1,
        "event_tree": 1,
        "quarantine_tree": 1,
        "checkpoint": 1,
        "cosignature": 1,
        "timestamp": 1,
    }


@pytest.mark.parametrize(
    "statement, message",
    [
        (
            "UPDATE event SET member_count = 2.5",
            "cannot store REAL value in INTEGER column event.member_count",
        ),
        ("UPDATE event SET name = X'FF'", "cannot store BLOB value in TEXT column event.name"),
        (
            "UPDATE event SET raw = CAST(raw AS TEXT)",
            "cannot store TEXT value in BLOB column event.raw",
        ),
        (
            "UPDATE quarantine SET content_length = 'x'",
            "cannot store TEXT value in INTEGER column quarantine.content_length",
        ),
        (
            "UPDATE event_member SET account = X'00'",
            "cannot store BLOB value in TEXT column event_member.account",
        ),
    ],
)
def test_strict_tables_refuse_a_value_of_another_type(attacker, statement, message):
    with pytest.raises(sqlite3.IntegrityError, match=message):
        attacker.execute(statement)


def test_a_log_made_before_strict_tables_opens_verifies_and_grows(old_schema, log, rows):
    assert without_derived(strict_tables(log.path)) == {
        "meta": 0,
        "event": 0,
        "event_member": 0,
        "quarantine": 0,
        "event_tree": 1,
        "quarantine_tree": 1,
        "checkpoint": 1,
        "cosignature": 1,
        "timestamp": 1,
    }
    for number in range(1, 4):
        log.append(event(number))
    log.append(rejection(1))
    [(head,)] = rows("SELECT hash FROM event WHERE id = 3")
    assert check(log)[:2] == (3, head)
    log.append(event(4))
    log.append(rejection(2))
    assert check(log, anchor=Heads(3, head))[::2] == (4, 2)
    assert strict_tables(log.path)["event"] == 0  # left as it was


@pytest.mark.parametrize(
    "statement, failure",
    [
        (
            "UPDATE event SET member_count = 2.5 WHERE id = 2",
            "event row 2: member_count is REAL 2.5, expected INTEGER",
        ),
        (
            "UPDATE event SET name = X'FF' WHERE id = 2",
            "event row 2: name is BLOB X'FF', expected TEXT",
        ),
        (
            "UPDATE event SET event_time = 'soon' WHERE id = 2",
            "event row 2: event_time is TEXT 'soon', expected INTEGER",
        ),
        (
            "UPDATE event SET owner = X'' WHERE id = 2",
            "event row 2: owner is BLOB X'', expected TEXT or NULL",
        ),
        (
            "UPDATE event SET raw = CAST(raw AS TEXT) WHERE id = 2",
            'event row 2: raw is TEXT \'{"CallbackCommand": "Group.CallbackAfter…\', expected BLOB',
        ),
        (
            "UPDATE event_member SET account = X'626F62' WHERE event_id = 2 AND position = 0",
            "event_member row 2: account is BLOB X'626F62', expected TEXT",
        ),
        (
            "UPDATE event_member SET event_time = 'later' WHERE event_id = 2 AND position = 0",
            "event_member row 2: event_time is TEXT 'later', expected INTEGER",
        ),
        (
            "UPDATE quarantine SET content_length = 'five' WHERE id = 1",
            "quarantine row 1: content_length is TEXT 'five', expected INTEGER or NULL",
        ),
    ],
)
def test_verify_names_a_value_whose_type_changed_in_an_old_log(
    old_schema, filled, attacker, statement, failure
):
    attacker.execute(statement)
    with pytest.raises(ChainBroken) as caught:
        check(filled)
    assert str(caught.value) == failure


def test_verify_names_text_that_is_not_utf8(filled, attacker):
    """STRICT takes it (it is TEXT); only verify can tell."""
    attacker.execute("UPDATE event SET name = CAST(X'FF41' AS TEXT) WHERE id = 3")
    with pytest.raises(ChainBroken) as caught:
        check(filled)
    assert str(caught.value) == "event row 3: name is TEXT X'FF41' (not UTF-8), expected TEXT"


# --- anchors ------------------------------------------------------------------

H, Q = "a" * 64, "b" * 64


@pytest.mark.parametrize(
    "text, heads",
    [
        (f"OK 5 {H} quarantine 2 {Q}", Heads(5, H, 2, Q)),
        (f"  OK 5 {H} quarantine 2 {Q}\r\n", Heads(5, H, 2, Q)),
        (f"OK 5 {H}", Heads(5, H)),
        (f"5:{H}", Heads(5, H)),
        (f"0:{GENESIS}", Heads(0, GENESIS)),
    ],
)
def test_anchor_is_the_line_verify_prints_or_count_colon_hash(text, heads):
    assert chain.parse_anchor(text) == heads


@pytest.mark.parametrize(
    "text",
    [
        "",
        "5",
        "5:abc",
        "x:" + H,
        "5:" + "G" * 64,
        "-1:" + H,
        "5:" + "A" * 64,
        f"OK 5:{H}",
        "OK 5",
        f"OK 5 {H} 2 {Q}",
        f"OK 5 {H} quarantine 2",
        f"OK 5 {H} quarantine x {Q}",
        f"OK 5 {H} events 2 {Q}",
        "FAIL event row 2: hash does not match the row's contents and the row before it",
    ],
)
def test_malformed_anchor_is_refused(text):
    with pytest.raises(ValueError, match="an anchor is the last line of an earlier verify"):
        chain.parse_anchor(text)


def test_the_anchor_line_round_trips(filled):
    heads = check(filled)
    assert chain.parse_anchor(heads.line()) == heads
    assert check(filled, anchor=chain.parse_anchor(heads.line())) == heads


def test_a_deleted_newest_quarantine_row_fails_against_an_anchor(filled, attacker):
    anchor = check(filled)
    attacker.execute("DELETE FROM quarantine WHERE id = 2")
    attacker.execute("DELETE FROM quarantine_tree WHERE id >= 1")
    assert check(filled).quarantined == 1
    with pytest.raises(ChainBroken) as caught:
        check(filled, anchor=anchor)
    assert str(caught.value) == (
        "quarantine row 2: missing: the log has 1 rows but the anchor records 2, so it was truncated"
    )


def test_a_rechained_quarantine_row_fails_against_an_anchor(filled, attacker):
    anchor = check(filled)
    attacker.execute("UPDATE quarantine SET reason = 'nothing to see' WHERE id = 2")
    [first] = attacker.execute("SELECT hash FROM quarantine WHERE id = 1").fetchall()
    attacker.row_factory = sqlite3.Row
    row = attacker.execute("SELECT * FROM quarantine WHERE id = 2").fetchone()
    attacker.execute(
        "UPDATE quarantine SET hash = ? WHERE id = 2",
        (link(None, first[0], canonical(chain.quarantine_values(row))),),
    )
    rebuild_trees(attacker)
    assert check(filled).quarantined == 2
    with pytest.raises(ChainBroken, match="quarantine row 2: its hash differs from the anchor"):
        check(filled, anchor=anchor)


def test_an_anchor_from_before_quarantine_was_anchored_checks_events_alone(filled, attacker, rows):
    [(head,)] = rows("SELECT hash FROM event WHERE id = 5")
    attacker.execute("DELETE FROM quarantine WHERE id = 2")
    attacker.execute("DELETE FROM quarantine_tree WHERE id >= 1")
    assert check(filled, anchor=Heads(5, head)) == Heads(
        5, head, 1, rows("SELECT hash FROM quarantine")[0][0]
    )


# --- one encoder of a row's canonical bytes ---------------------------------


def test_every_path_takes_a_rows_bytes_from_the_one_encoder(log, monkeypatch):
    """Given another encoding, the writer, verify, verify_event, the trees
    and the proofs still agree, which they could not if one of them built
    the bytes itself; and the rows so written fail once the real one is back."""
    real = chain.row_bytes
    monkeypatch.setattr(chain, "row_bytes", lambda *row: b"other encoding " + real(*row)[::-1])
    for number in range(1, 4):
        log.append(event(number))
    log.append(rejection(1))
    signer, verifier = signednote.generate_key("example.com/log")
    conn = db.connect(log.path, readonly=True)
    try:
        heads, checks = merkle.verify(conn, log.key)
        assert (heads.events, heads.quarantined) == (3, 1)
        assert [checks[table].size for table in merkle.TABLES] == [3, 1]
        for number in range(1, 4):
            verification.verify_event(conn, number, log.key)
        leaf = merkle.leaf(conn, 2)
        assert leaf.startswith(b"other encoding ")
        root = merkle.root(conn, "event", 3)
        note = signednote.sign_checkpoint(
            signednote.Checkpoint("example.com/log", 3, root), signednote.Signer(signer)
        )
        assert tlogproof.check_proof(evidence.proof_file(conn, note, 2), verifier).leaf == leaf

        monkeypatch.undo()
        with pytest.raises(ChainBroken, match="event row 1: hash does not match"):
            merkle.verify(conn, log.key)
        with pytest.raises(ChainBroken, match="event row 2: hash does not match"):
            verification.verify_event(conn, 2, log.key)
        with pytest.raises(ChainBroken, match="event row 2: no proof leads"):
            evidence.proof_file(conn, note, 2)
    finally:
        conn.close()
