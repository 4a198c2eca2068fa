"""Poison rows in the tables that hold the evidence: whatever value an
attacker with the file stores in any column of checkpoint, cosignature,
timestamp or a tree table, every page and endpoint answers (the value shown
as stored, never a 500), the evidence archive is a whole zip, and verify
answers FAIL lines, never a traceback."""

import io
import itertools
import shutil
import sqlite3
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import event, rejection
from dashboard import CREDENTIALS, REVIEWERS
from test_checkpoints import ORIGIN, sign
from tencent import SDKAPPID, TOKEN
from tim_audit import create_app, open_log
from tim_audit.log import checkpoints, db, signednote, timestamps
from tsa import TSA

COLUMNS = {
    "checkpoint": ["tree", "size", "root", "signed_at", "key", "note"],
    "cosignature": ["checkpoint_id", "witness", "cosigned_at", "line"],
    "timestamp": ["checkpoint_id", "stamped_at", "token"],
    "event_tree": ["hash"],
    "quarantine_tree": ["hash"],
}
TARGETS = [(table, column) for table, columns in COLUMNS.items() for column in columns]

# Every kind of value SQLite stores: text that is not UTF-8 is given as
# ("not utf-8", bytes) and cast in SQL, as the sqlite3 shell would store it.
VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.text(max_size=60),
    st.binary(max_size=80),
    st.tuples(st.just("not utf-8"), st.binary(min_size=1, max_size=40)),
    st.sampled_from(["event", "quarantine", "", "\u2014 w AAAA\n", "a+b+c"]),
    st.integers(min_value=-2, max_value=12),
)

# What a reviewer and an auditor reach: every answer must be one of these.
ANSWERS = {
    "/history": {200},
    "/history/1": {200},
    "/history/3": {200},
    "/checkpoints": {200},
    "/checkpoints/1.checkpoint": {200, 404},
    "/checkpoint": {200, 404},
    "/checkpoint.tsr": {200, 404},
    "/history/3.tlog-proof": {200, 404, 409},
    "/quarantine": {200},
}

_copies = itertools.count()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A log of five events and two quarantined bodies, a checkpoint of each
    tree, a real cosignature of the event checkpoint by a configured witness
    and a real timestamp of it (openssl ts as the TSA); verify passes on it.
    Its config, with every path absolute."""
    instance = tmp_path_factory.mktemp("poison")
    signer, _ = signednote.generate_key(ORIGIN)
    (instance / "checkpoint.key").write_text(signer + "\n")
    (instance / "checkpoint.key").chmod(0o600)
    witness_signer, witness_key = signednote.generate_key("witness.example", witness=True)
    with TSA(instance / "tsa") as tsa:
        config = {
            "TESTING": True,
            "DATABASE": str(instance / "template.sqlite3"),
            "SDKAPPID": SDKAPPID,
            "CALLBACK_TOKEN": TOKEN,
            "DASHBOARD_USERS": REVIEWERS,
            "VERIFY_INTERVAL": 0,
            "LOG_ORIGIN": ORIGIN,
            "CHECKPOINT_KEY": str(instance / "checkpoint.key"),
            "TIMESTAMP_URL": tsa.url,
            "TIMESTAMP_CA": str(tsa.ca),
            "WITNESSES": [{"url": "http://127.0.0.1:9/", "key": witness_key}],
        }
        app = open_log(create_app(config))
        log = app.extensions["tim_audit"]
        for thread in log.notary.publishers:  # the rounds are run here
            thread.close()
        for number in range(1, 6):
            log.append(event(number))
        log.append(rejection(1))
        log.append(rejection(2))
        sign(log.notary)
        conn = db.connect(log.path)
        try:
            [timestamper] = [
                p for p in log.notary.publishers if isinstance(p, timestamps.Timestamper)
            ]
            assert timestamper.publish(conn) is not None
            latest = checkpoints.latest(conn, "event")
            text, _ = signednote.split_note(bytes(latest["note"]))
            line = signednote.signature_line(text, signednote.Signer(witness_signer))
            conn.execute(
                "INSERT INTO cosignature (checkpoint_id, witness, cosigned_at, line)"
                " VALUES (?, ?, ?, ?)",
                (latest["id"], witness_key, signednote.signature_time(line), line),
            )
        finally:
            conn.close()
        log.close()
    result = create_app(config).test_cli_runner().invoke(args=["verify"])
    assert (result.exit_code, result.output[:3]) == (0, "OK "), result.output
    return config


def loosen(conn, table):
    """``table`` made again without STRICT or column types, so that a column
    takes a value of any type, as whoever holds the file can do."""
    columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
    declared = ", ".join("id INTEGER PRIMARY KEY" if c == "id" else c for c in columns)
    conn.execute("PRAGMA legacy_alter_table = ON")
    conn.executescript(
        f"ALTER TABLE {table} RENAME TO {table}_strict;"
        f" CREATE TABLE {table} ({declared});"
        f" INSERT INTO {table} SELECT * FROM {table}_strict;"
        f" DROP TABLE {table}_strict;"
    )


def poisoned(template, table, column, value):
    """A copy of the template with ``value`` in ``column`` of ``table``'s first row."""
    path = template["DATABASE"].replace("template", f"poisoned-{next(_copies)}")
    shutil.copy(template["DATABASE"], path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            conn.execute(f'DROP TRIGGER "{name}"')
        loosen(conn, table)
        sql = f"UPDATE {table} SET {column} = ? WHERE id = (SELECT min(id) FROM {table})"
        if isinstance(value, tuple):
            sql = sql.replace("= ?", "= CAST(? AS TEXT)")
            value = value[1]
        conn.execute(sql, (value,))
    finally:
        conn.close()
    return {**template, "DATABASE": path, "TIMESTAMP_URL": None, "WITNESSES": template["WITNESSES"]}


def original(template, table, column):
    conn = sqlite3.connect(template["DATABASE"])
    try:
        return conn.execute(f"SELECT {column} FROM {table} ORDER BY id LIMIT 1").fetchone()[0]
    finally:
        conn.close()


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=VALUES)
@pytest.mark.parametrize("table, column", TARGETS, ids=[f"{t}.{c}" for t, c in TARGETS])
def test_any_value_in_any_column_renders_everywhere_and_verify_names_it(
    template, table, column, value
):
    app = create_app(poisoned(template, table, column, value))
    client = app.test_client()
    for url, statuses in ANSWERS.items():
        response = client.get(url, headers=CREDENTIALS)
        assert response.status_code in statuses, (url, response.status_code)
    response = client.get("/history.evidence", headers=CREDENTIALS)
    assert response.status_code in (200, 404)  # 404: no usable checkpoint of the events is left
    if response.status_code == 200:
        assert zipfile.ZipFile(io.BytesIO(response.data)).testzip() is None
    result = app.test_cli_runner().invoke(args=["verify"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    # signed_at is the notary's word alone, so another whole number cannot be told
    # from it; any other change is named.
    unchanged = value == original(template, table, column) and type(value) is type(
        original(template, table, column)
    )
    if unchanged or (column == "signed_at" and type(value) is int):
        assert result.exit_code in (0, 1), result.output
    else:
        assert result.exit_code == 1, result.output
        assert result.output.startswith("FAIL "), result.output
        assert table in result.output.splitlines()[0], result.output
