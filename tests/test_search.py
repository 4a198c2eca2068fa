"""Name search through the trigram index, counts that do not grow with the
log, the derived data's rebuild, and the query plans behind each filter."""

import random
import re
import sqlite3

import pytest

from conftest import event
from dashboard import listed_ids
from tim_audit import create_app
from tim_audit.log import db, records
from tim_audit.review import counting, queries, search

# Characters names are drawn from: CJK, Hangul, kana, emoji (with a ZWJ
# sequence and a skin tone), and letters whose case folding is not 1:1.
ALPHABET = (
    list("羽毛球家族群业主设计读书会")
    + list("공지동아리")
    + list("レビュー")
    + ["🏸", "🎉", "👨\u200d👩\u200d👧", "👍🏽"]
    + list("aAbBsSßẞσΣςİıiIﬁkK ΩωЖж-#1")
)


def random_names(rng, count):
    return ["".join(rng.choices(ALPHABET, k=rng.randint(1, 12))) for _ in range(count)]


def append_all(log, entries):
    """Append ``entries`` in one transaction through records.write, as the
    writer and bench/dataset.py do: the trigger indexes them."""
    log.open()
    conn = db.connect(log.path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        records.write(conn, entries, log.key)
        conn.execute("COMMIT")
    finally:
        conn.close()


@pytest.fixture
def named(log):
    """3,000 events with random names, newest last; returns the names."""
    names = random_names(random.Random(5), 3000)
    append_all(log, [event(number, name=name) for number, name in enumerate(names, 1)])
    return names


def scanned(names, q):
    """The ids whose name contains ``q`` as docs/dashboard.md defines it, newest first."""
    folded = q.casefold()
    return [
        number for number, name in reversed(list(enumerate(names, 1))) if folded in name.casefold()
    ]


def queries_for(names, rng, length, count):
    """Substrings of ``length`` characters of random names, some in other
    cases, and random strings of that length (mostly matching nothing)."""
    found = []
    while len(found) < count:
        name = rng.choice(names)
        if len(name) >= length:
            start = rng.randrange(len(name) - length + 1)
            found.append(name[start : start + length])
        found.append("".join(rng.choices(ALPHABET, k=length)))
    return [q.upper() if rng.random() < 0.3 else q for q in found[:count]]


def test_the_name_index_agrees_with_a_plain_scan(named, rows):
    rng = random.Random(6)
    for length in (3, 4, 6):
        for q in queries_for(named, rng, length, 400):
            indexed = rows(
                "SELECT rowid FROM event_name WHERE event_name MATCH ? ORDER BY rowid DESC",
                (search._phrase(q),),
            )
            assert [rowid for (rowid,) in indexed] == scanned(named, q), q


@pytest.mark.parametrize("length", [1, 2, 3, 5])
def test_name_search_lists_and_counts_what_a_plain_scan_finds(named, get, length):
    for q in queries_for(named, random.Random(length), length, 40):
        expected = scanned(named, q)
        text = get("/history", query_string={"q": q, "limit": 500}).get_data(as_text=True)
        assert listed_ids(text) == expected[:500], q
        if expected:
            assert (
                re.search(r"<strong>([\d,]+)</strong> events? match", text).group(1)
                == f"{len(expected):,}"
            ), q


@pytest.mark.parametrize(
    "q, name",
    [
        ("STRASSE", "Straße Team"),
        ("straße", "STRASSE crew"),
        ("ΣΟΦΊΑ", "σοφία"),
        ("ﬁ", "FIELD"),
        ("羽毛球", "周末羽毛球 🏸"),
        ("羽毛", "周末羽毛球 🏸"),
        ("🏸", "周末羽毛球 🏸"),
    ],
)
def test_name_search_folds_case_as_documented(log, get, q, name):
    append_all(log, [event(1, name=name), event(2, name="other")])
    assert listed_ids(get("/history", query_string={"q": q}).get_data(as_text=True)) == [1]


def test_a_common_name_is_found_by_walking_the_time_index(log, get, monkeypatch):
    monkeypatch.setattr(search, "SPARSE_NAMES", 10)
    append_all(log, [event(number, name=f"team {number % 2}") for number in range(1, 41)])
    text = get("/history", query_string={"q": "team 1", "limit": 5}).get_data(as_text=True)
    assert listed_ids(text) == [39, 37, 35, 33, 31]
    assert "<strong>20</strong> events match" in text


@pytest.mark.parametrize(
    "filters, by_id",
    [
        ({}, False),
        ({"type": "Public"}, False),
        ({"operator": "administrator"}, True),
        ({"owner": "leckie"}, True),
        ({"member": "bob"}, True),
        ({"since": 1}, False),
    ],
    ids=str,
)
def test_a_common_name_with_a_filter_off_the_time_index_is_read_by_id(
    planner, monkeypatch, filters, by_id
):
    monkeypatch.setattr(search, "SPARSE_NAMES", 1)
    routed = search.route(planner, queries.Filters(q="team 1", **filters))
    assert 1 < len(routed.name_found) <= counting.COUNT_CAP
    assert routed.by_id is by_id
    [plan] = planned(planner, lambda conn: queries.page(conn, routed, 50))
    assert (plan[0] == "SEARCH e USING INTEGER PRIMARY KEY (rowid=?)") is by_id


# --- counts that say what they are -------------------------------------------


def test_a_count_past_the_cap_says_more_than(log, get, monkeypatch):
    monkeypatch.setattr(counting, "COUNT_CAP", 5)
    append_all(log, [event(number, owner="busy") for number in range(1, 9)])
    text = get("/history", query_string={"owner": "busy"}).get_data(as_text=True)
    assert "More than <strong>5</strong> events match" in text
    assert 'class="chart"' not in text
    assert "Export all:" in text


def test_a_count_that_runs_out_of_time_says_at_least(log, get, monkeypatch):
    monkeypatch.setattr(counting, "COUNT_TIME", 0)
    append_all(log, [event(number, owner="busy") for number in range(1, 301)])
    text = get("/history", query_string={"owner": "busy"}).get_data(as_text=True)
    found = re.search(
        r"At least <strong>(\d+)</strong> events? match: counting stopped after 0 ms", text
    )
    assert found and int(found.group(1)) < 300
    assert 'class="chart"' not in text


def test_a_name_lookup_that_runs_out_of_time_says_at_least_and_still_lists_the_newest(
    log, get, monkeypatch
):
    monkeypatch.setattr(counting, "COUNT_TIME", 0)
    monkeypatch.setattr(search, "SPARSE_NAMES", 10)
    append_all(log, [event(number, name=f"team {number % 2}") for number in range(1, 601)])
    text = get("/history", query_string={"q": "team 1", "limit": 3}).get_data(as_text=True)
    found = re.search(
        r"At least <strong>(\d+)</strong> events? match: counting stopped after 0 ms", text
    )
    assert found and 10 < int(found.group(1)) < 300
    assert listed_ids(text) == [599, 597, 595]
    assert 'class="chart"' not in text


@pytest.mark.parametrize("filters", [{}, {"operator": "administrator"}], ids=str)
def test_a_name_with_the_trigrams_of_q_apart_is_not_found(log, get, filters):
    append_all(
        log,
        [event(1, name="Project Atlas 77"), event(2, name="atlas 5 has 77"), event(3, name="x")],
    )
    text = get("/history", query_string={"q": "atlas 77", **filters}).get_data(as_text=True)
    assert listed_ids(text) == [1]
    assert "<strong>1</strong> event matches" in text


def test_a_name_whose_candidates_pass_the_cap_is_still_read_by_id(log, monkeypatch):
    monkeypatch.setattr(counting, "COUNT_CAP", 4)
    monkeypatch.setattr(search, "SPARSE_NAMES", 2)
    append_all(
        log,
        [event(1, name="Project Atlas 77")]
        + [event(number, name="atlas 5 has 77") for number in range(2, 8)],
    )
    conn = db.connect(log.path, readonly=True)
    try:
        routed = search.route(conn, queries.Filters(q="atlas 77", operator="administrator"))
    finally:
        conn.close()
    assert (routed.name_found, routed.by_id) == ((1,), True)


@pytest.mark.parametrize("filters", [{}, {"operator": "administrator"}], ids=str)
def test_a_name_search_with_a_nul_is_answered(log, get, filters):
    append_all(log, [event(1, name="a\0bc"), event(2, name="abc")])
    response = get("/history", query_string={"q": "a\0bc", **filters})
    assert response.status_code == 200
    assert listed_ids(response.get_data(as_text=True)) == [1]


def test_a_name_lookup_of_a_few_matches_is_never_cut_short(log, get, monkeypatch):
    monkeypatch.setattr(counting, "COUNT_TIME", 0)
    append_all(log, [event(number, name=f"team {number % 2}") for number in range(1, 601)])
    text = get("/history", query_string={"q": "team 1", "limit": 3}).get_data(as_text=True)
    assert "<strong>300</strong> events match" in text


def test_a_count_cut_short_before_its_first_match_still_lists_it(log, get, monkeypatch):
    monkeypatch.setattr(counting, "COUNT_TIME", 0)
    monkeypatch.setattr(search, "SPARSE_NAMES", 1)
    # Enough matches to read by id that the count is checked before the last.
    append_all(log, [event(number, name=f"team {number % 2}") for number in range(1, 4001)])
    text = get("/history", query_string={"q": "team 1", "group_id": "@TGS#3999"}).get_data(
        as_text=True
    )
    assert "At least <strong>1</strong> event matches" in text
    assert listed_ids(text) == [3999]
    assert "No events match" not in text


def test_a_name_lookup_with_a_filter_off_the_time_index_is_never_cut_short(log, monkeypatch):
    monkeypatch.setattr(counting, "COUNT_TIME", 0)
    append_all(log, [event(number, name=f"team {number % 2}") for number in range(1, 601)])
    conn = db.connect(log.path, readonly=True)
    try:
        routed = search.route(conn, queries.Filters(q="team 1", operator="administrator"))
    finally:
        conn.close()
    assert (routed.name_at_least, len(routed.name_found)) == (None, 300)


def test_counts_by_type_and_time_come_exact_from_the_summary(log, get, monkeypatch):
    monkeypatch.setattr(counting, "COUNT_CAP", 1)
    hour = counting.HOUR
    start = 1_772_323_200_000  # 2026-03-01T00:00:00Z
    # Every 20 minutes for two days: bounds cut hours in the middle.
    append_all(
        log,
        [
            event(
                number,
                event_time=start + number * hour // 3,
                type=("Public", "Private")[number % 2],
            )
            for number in range(1, 145)
        ],
    )
    for query, expected in [
        ({}, 144),
        ({"type": "Public"}, 72),
        ({"since": "2026-03-01T00:30:00Z", "until": "2026-03-01T05:10:00Z"}, 14),
        ({"type": "Private", "since": "2026-03-01T00:30:00Z", "until": "2026-03-01T05:10:00Z"}, 7),
        ({"since": "2026-03-01T01:05:00Z", "until": "2026-03-01T01:35:00Z"}, 1),
    ]:
        text = get("/history", query_string=query).get_data(as_text=True)
        assert re.search(r"<strong>([\d,]+)</strong> events? match", text).group(1) == str(
            expected
        ), query
        assert 'class="chart"' in text


# --- derived data: rebuilt from the chained rows -------------------------------


def test_rebuild_restores_a_dropped_name_index_and_verify_still_passes(filled, runner, get, rows):
    before = runner.invoke(args=["verify"]).output
    conn = sqlite3.connect(filled.path)
    conn.execute("DROP TABLE event_name")
    conn.close()
    filled.close()  # rebuild-index runs while no ingest server does
    result = runner.invoke(args=["rebuild-index"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("rebuilt the name index and hourly counts of 5 events in ")
    assert rows("SELECT rowid FROM event_name WHERE event_name MATCH '\"group 3\"'") == [(3,)]
    assert runner.invoke(args=["verify"]).output == before
    assert listed_ids(get("/history", query_string={"q": "GROUP 3"}).get_data(as_text=True)) == [3]
    filled.append(event(6))  # the writer's trigger finds the index again
    assert listed_ids(get("/history", query_string={"q": "group 6"}).get_data(as_text=True)) == [6]


def test_rebuild_corrects_a_damaged_summary(filled, attacker, runner, get):
    attacker.execute("UPDATE event_hour SET events = 1000")
    assert "<strong>1,000</strong> events match" in get("/history").get_data(as_text=True)
    filled.close()
    assert runner.invoke(args=["rebuild-index"]).exit_code == 0
    assert "<strong>5</strong> events match" in get("/history").get_data(as_text=True)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE event SET name = 'changed'",
        "DELETE FROM event WHERE id = 1",
        "UPDATE event_member SET account = 'mallory'",
    ],
)
def test_chained_rows_stay_append_only_after_a_rebuild(filled, runner, statement):
    filled.close()
    assert runner.invoke(args=["rebuild-index"]).exit_code == 0
    conn = sqlite3.connect(filled.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="is append-only"):
            conn.execute(statement)
    finally:
        conn.close()


def test_rebuild_of_a_missing_log_says_so(config, tmp_path):
    missing = tmp_path / "missing.sqlite3"
    result = (
        create_app({**config, "DATABASE": str(missing)})
        .test_cli_runner()
        .invoke(args=["rebuild-index"])
    )
    assert result.exit_code == 1
    assert f"there is no log at {missing}" in result.output
    assert not missing.exists()


def test_a_log_from_before_the_index_is_indexed_when_opened(make_app, config):
    app = make_app()
    log = app.extensions["tim_audit"]
    append_all(log, [event(1, name="Straße"), event(2)])
    log.close()
    conn = sqlite3.connect(config["DATABASE"])
    for statement in (
        "DROP TRIGGER event_derived",
        "DROP TABLE event_name",
        "DROP TABLE event_hour",
    ):
        conn.execute(statement)
    conn.close()
    reopened = make_app().extensions["tim_audit"]
    conn = sqlite3.connect(reopened.path)
    try:
        assert conn.execute(
            "SELECT rowid FROM event_name WHERE event_name MATCH 'strasse'"
        ).fetchall() == [(1,)]
        assert conn.execute("SELECT sum(events) FROM event_hour").fetchone() == (2,)
    finally:
        conn.close()


# --- query plans ----------------------------------------------------------------


def planned(conn, run):
    """The EXPLAIN QUERY PLAN details of every statement ``run(conn)`` runs."""
    statements = []
    conn.set_trace_callback(statements.append)
    try:
        run(conn)
    finally:
        conn.set_trace_callback(None)
    return [
        [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        for sql in statements
        if sql.lstrip().upper().startswith(("SELECT", "WITH"))
    ]


@pytest.fixture
def planner(log):
    """A read-only connection to a small log, planned without statistics
    as a live log is (the service never runs ANALYZE)."""
    append_all(log, [event(number, name=f"team {number % 3}") for number in range(1, 50)])
    conn = db.connect(log.path, readonly=True)
    yield conn
    conn.close()


LIST = {"e": "SEARCH e USING INTEGER PRIMARY KEY (rowid=?)"}
PLANS = [
    ("first page", {}, "SCAN e USING INDEX event_by_time"),
    (
        "member + type",
        {"member": "bob", "type": "Public"},
        "SEARCH m USING COVERING INDEX event_member_by_account (account=? AND duplicate=?)",
    ),
    (
        "member + time",
        {"member": "bob", "since": 1, "until": 2},
        "SEARCH m USING COVERING INDEX event_member_by_account (account=? AND duplicate=? AND event_time>? AND event_time<?)",
    ),
    (
        "operator + time",
        {"operator": "administrator", "since": 1, "until": 2},
        "SEARCH e USING INDEX event_by_operator (operator=? AND event_time>? AND event_time<?)",
    ),
    (
        "owner + type",
        {"owner": "leckie", "type": "Public"},
        "SEARCH e USING INDEX event_by_owner (owner=?)",
    ),
    ("type", {"type": "Public"}, "SEARCH e USING INDEX event_by_type (type=?)"),
    ("q walked", {"q": "te"}, "SCAN e USING INDEX event_by_time"),
    ("q walked + type", {"q": "te", "type": "Public"}, "SCAN e USING INDEX event_by_time"),
    (
        "q walked + operator",
        {"q": "te", "operator": "administrator"},
        "SEARCH e USING INDEX event_by_operator (operator=?)",
    ),
    (
        "q walked + member",
        {"q": "te", "member": "bob"},
        "SEARCH m USING COVERING INDEX event_member_by_account (account=? AND duplicate=?)",
    ),
]


@pytest.mark.parametrize("label, filters, first", PLANS, ids=[p[0] for p in PLANS])
def test_a_page_reads_the_intended_index_in_list_order(planner, label, filters, first):
    [plan] = planned(planner, lambda conn: queries.page(conn, queries.Filters(**filters), 50))
    assert plan[0] == first
    # Ties on EventTime are put in id order as they come; nothing more is sorted.
    assert [step for step in plan[1:] if "TEMP B-TREE" in step] in (
        [],
        ["USE TEMP B-TREE FOR RIGHT PART OF ORDER BY"],
    ), plan


def test_an_events_page_reads_its_group_and_repeats_from_indexes(planner):
    plans = planned(
        planner,
        lambda conn: (
            queries.same_group(conn, "@TGS#1", 1),
            queries.quarantined(conn, queries.QuarantineFilters(repeat_of=1), 20),
            queries.repeat_count(conn, 1),
        ),
    )
    assert plans == [
        [
            "SEARCH event USING INDEX sqlite_autoindex_event_1 (group_id=?)",
            "USE TEMP B-TREE FOR RIGHT PART OF ORDER BY",
        ],
        [
            "SEARCH quarantine USING INDEX quarantine_by_repeat (error_code=? AND <expr>=? AND rowid<?)"
        ],
        [
            "CO-ROUTINE (subquery-1)",
            "SEARCH quarantine USING INDEX quarantine_by_repeat (error_code=? AND <expr>=?)",
            "SCAN (subquery-1)",
        ],
    ]


@pytest.mark.parametrize(
    "filters",
    [
        {"q": "team 1"},
        {"q": "team 1", "type": "Public"},
        {"q": "team 1", "operator": "administrator"},
        {"q": "team 1", "member": "bob"},
        {"q": "team 1", "owner": "leckie", "since": 1},
    ],
    ids=str,
)
def test_a_rare_name_is_read_through_the_name_index(planner, filters):
    routed = search.route(planner, queries.Filters(**filters))
    assert routed.by_id
    [plan] = planned(planner, lambda conn: queries.page(conn, routed, 50))
    assert plan[0] == "SEARCH e USING INTEGER PRIMARY KEY (rowid=?)"
    assert plan[1:3] == ["LIST SUBQUERY 1", "SCAN json_each VIRTUAL TABLE INDEX 1:"]
    assert all(
        step.startswith(("SEARCH m USING PRIMARY KEY (event_id=?)", "USE TEMP B-TREE FOR ORDER BY"))
        for step in plan[3:]
    ), plan


# derived.current: two lookups, however large the log.
CURRENT = [["SEARCH event_name_data USING INTEGER PRIMARY KEY (rowid=?)"], ["SEARCH event"]]


@pytest.mark.parametrize(
    "filters, index",
    [
        ({}, "SCAN event_hour USING COVERING INDEX event_hour_by_type"),
        ({"type": "Public"}, "SEARCH event_hour USING COVERING INDEX event_hour_by_type (type=?)"),
        (
            {"since": counting.HOUR * 10 + 1, "until": counting.HOUR * 20},
            "SEARCH event_hour USING PRIMARY KEY (hour>? AND hour<?)",
        ),
    ],
    ids=str,
)
def test_a_count_by_type_and_time_reads_the_summary(planner, filters, index):
    plans = planned(planner, lambda conn: counting.count(conn, queries.Filters(**filters)))
    assert plans[:2] == CURRENT  # first, whether the summary covers every event
    assert plans[2] == [index]
    for edge in plans[3:]:  # the hours cut by since or until
        assert edge[0].startswith(
            "SEARCH event USING COVERING INDEX event_by_time (event_time>? AND event_time<?)"
        ), edge


def test_the_hours_a_bound_cuts_are_counted_in_a_covering_index(planner):
    filters = queries.Filters(type="Public", since=counting.HOUR * 10 + 1, until=counting.HOUR * 20)
    plans = planned(planner, lambda conn: counting.count(conn, filters))
    assert plans[:2] == CURRENT
    assert (
        plans[3:]
        == [
            [
                "SEARCH event USING COVERING INDEX event_by_type (type=? AND event_time>? AND event_time<?)"
            ]
        ]
        * 2
    )


@pytest.mark.parametrize(
    "filters, index",
    [
        (
            {"owner": "leckie", "type": "Public"},
            "SEARCH e USING COVERING INDEX event_by_owner (owner=?)",
        ),
        (
            {"operator": "administrator", "type": "Public", "since": 1},
            "SEARCH e USING COVERING INDEX event_by_operator (operator=? AND event_time>?)",
        ),
        ({"q": "te", "type": "Public"}, "SCAN e USING COVERING INDEX event_by_time"),
        (
            {"member": "bob", "since": 1},
            "SEARCH m USING COVERING INDEX event_member_by_account (account=? AND duplicate=? AND event_time>?)",
        ),
        (
            {"type": "Public", "derived": False},
            "SEARCH e USING COVERING INDEX event_by_type (type=?)",
        ),
    ],
    ids=str,
)
def test_a_count_of_filters_an_index_carries_reads_that_index_alone(planner, filters, index):
    plans = planned(planner, lambda conn: counting.count(conn, queries.Filters(**filters)))
    assert plans == [[index]]
