"""RFC 3161 timestamps of the checkpoints, from a real timestamp authority:
``openssl ts -reply`` on loopback (tests/tsa.py), and checked with
``openssl ts -verify``, neither written here."""

import io
import sqlite3
import time
import zipfile

import pytest

from conftest import event
from dashboard import CREDENTIALS
from test_checkpoints import ORIGIN, sign
from tim_audit import StartupError, create_app
from tim_audit.log import db, publisher, timestamps
from tsa import TSA, openssl_verify


@pytest.fixture
def config(config):
    return {**config, "LOG_ORIGIN": ORIGIN}


@pytest.fixture
def tsa(tmp_path):
    with TSA(tmp_path / "tsa") as tsa:
        yield tsa


@pytest.fixture
def stamped_app(instance_path, config, tsa, make_app):
    """A log of five events, signed, with TIMESTAMP_URL set; its thread stopped."""
    result = create_app(config).test_cli_runner().invoke(args=["keygen"])
    assert result.exit_code == 0, result.output
    app = make_app(TIMESTAMP_URL=tsa.url, TIMESTAMP_CA=str(tsa.ca))
    log = app.extensions["tim_audit"]
    for thread in log.notary.publishers:  # the test runs its rounds itself
        thread.close()
    for number in range(1, 6):
        log.append(event(number))
    sign(log.notary)
    return app


def stamp(app):
    """One round of the timestamper's thread, on a connection of its own."""
    log = app.extensions["tim_audit"]
    conn = db.connect(log.path)
    try:
        return log.notary.publishers[0].publish(conn)
    finally:
        conn.close()


def note_of(app, tmp_path):
    conn = db.connect(app.extensions["tim_audit"].path, readonly=True)
    try:
        note = conn.execute("SELECT note FROM checkpoint WHERE tree = 'event'").fetchone()[0]
    finally:
        conn.close()
    path = tmp_path / "checkpoint"
    path.write_bytes(note)
    return path


def test_a_checkpoint_gets_a_token_that_openssl_accepts(stamped_app, tsa, rows, tmp_path):
    token = stamp(stamped_app)
    assert rows("SELECT checkpoint_id, token FROM timestamp") == [(1, token)]
    (tmp_path / "checkpoint.tsr").write_bytes(token)
    result = openssl_verify(note_of(stamped_app, tmp_path), tmp_path / "checkpoint.tsr", tsa.ca)
    assert (result.returncode, result.stdout) == (0, "Verification: OK\n")


def test_openssl_refuses_the_token_for_an_edited_checkpoint(stamped_app, tsa, tmp_path):
    (tmp_path / "checkpoint.tsr").write_bytes(stamp(stamped_app))
    checkpoint = note_of(stamped_app, tmp_path)
    checkpoint.write_bytes(checkpoint.read_bytes().replace(b"\n5\n", b"\n6\n"))
    result = openssl_verify(checkpoint, tmp_path / "checkpoint.tsr", tsa.ca)
    assert result.returncode == 1
    assert "message imprint mismatch" in result.stdout + result.stderr


def test_a_checkpoint_is_timestamped_once(stamped_app, tsa):
    assert stamp(stamped_app) is not None
    assert stamp(stamped_app) is None
    assert tsa.requests == 1


def test_get_checkpoint_tsr_serves_the_latest_token(stamped_app, tsa):
    client = stamped_app.test_client()
    assert client.get("/checkpoint.tsr").status_code == 404
    token = stamp(stamped_app)
    response = client.get("/checkpoint.tsr")
    assert (response.status_code, response.mimetype, response.data) == (
        200,
        "application/timestamp-reply",
        token,
    )


@pytest.mark.parametrize(
    "mode, reason",
    [
        ("http-error", "the TSA answered 500"),
        ("rejection", "the TSA refused: status 2"),
        ("wrong-ca", "the TSA's answer does not verify"),
    ],
)
def test_an_answer_that_does_not_verify_is_refused_and_not_stored(
    stamped_app, tsa, rows, mode, reason
):
    tsa.mode = mode
    with pytest.raises(timestamps.Refused, match=reason):
        stamp(stamped_app)
    assert rows("SELECT count(*) FROM timestamp") == [(0,)]


def test_a_stalled_tsa_times_out_and_stores_nothing(stamped_app, tsa, rows, monkeypatch):
    monkeypatch.setattr(publisher, "TIMEOUT", 0.5)
    tsa.mode, tsa.stall = "stall", 5
    with pytest.raises(OSError, match="timed out"):
        stamp(stamped_app)
    assert rows("SELECT count(*) FROM timestamp") == [(0,)]


def test_the_evidence_archive_holds_the_token_and_openssl_accepts_it(stamped_app, tsa, tmp_path):
    stamp(stamped_app)
    response = stamped_app.test_client().get("/history.evidence", headers=CREDENTIALS)
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(response.data))
    archive.extractall(tmp_path / "evidence")
    folder = tmp_path / "evidence"
    assert {"checkpoint", "checkpoint.tsr", "tsa-ca.pem"} <= set(archive.namelist())
    assert (folder / "tsa-ca.pem").read_bytes() == tsa.ca.read_bytes()
    assert (
        "openssl ts -verify -data checkpoint -in checkpoint.tsr -CAfile tsa-ca.pem"
        in (folder / "README.txt").read_text()
    )
    result = openssl_verify(folder / "checkpoint", folder / "checkpoint.tsr", folder / "tsa-ca.pem")
    assert (result.returncode, result.stdout) == (0, "Verification: OK\n")
    (folder / "checkpoint").write_bytes((folder / "checkpoint").read_bytes() + b"\n")
    result = openssl_verify(folder / "checkpoint", folder / "checkpoint.tsr", folder / "tsa-ca.pem")
    assert result.returncode == 1


def test_verify_fails_a_stored_token_that_was_swapped(stamped_app, tsa, tmp_path):
    stamp(stamped_app)
    conn = sqlite3.connect(stamped_app.extensions["tim_audit"].path, isolation_level=None)
    conn.execute("DROP TRIGGER timestamp_no_update")
    [(token,)] = conn.execute("SELECT token FROM timestamp").fetchall()
    conn.execute("UPDATE timestamp SET token = ?", (token[:-1] + bytes([token[-1] ^ 1]),))
    conn.close()
    result = stamped_app.test_cli_runner().invoke(args=["verify"])
    assert result.exit_code == 1
    assert result.output.startswith(
        "FAIL checkpoint 5: its timestamp does not verify with TIMESTAMP_CA:"
    )


def test_timestamp_url_without_a_ca_stops_start_up(config, tsa):
    with pytest.raises(StartupError, match="TIMESTAMP_URL is set, but TIMESTAMP_CA is not"):
        create_app({**config, "TIMESTAMP_URL": tsa.url})


def test_a_timestamp_ca_that_holds_no_certificate_stops_start_up(config, tsa, tmp_path):
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(StartupError, match="holds no PEM certificate"):
        create_app(
            {**config, "TIMESTAMP_URL": tsa.url, "TIMESTAMP_CA": str(tmp_path / "empty.pem")}
        )


def test_metrics_count_the_failed_timestamp_requests(stamped_app, tsa, make_app, config):
    stamped_app.extensions["tim_audit"].close()  # the server restarts with METRICS
    app = make_app(TIMESTAMP_URL=tsa.url, TIMESTAMP_CA=str(tsa.ca), METRICS=True)
    tsa.mode = "http-error"
    timestamper = app.extensions["tim_audit"].notary.publishers[0]
    deadline = time.monotonic() + 10
    while timestamper.failures < 1:  # its thread's first try, at start
        assert time.monotonic() < deadline, "the timestamper never tried"
        time.sleep(0.05)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    [value] = [
        line.split()[1]
        for line in text.splitlines()
        if line.startswith("tim_audit_timestamp_failures ")
    ]
    assert float(value) >= 1


def test_checkpoint_tsr_checks_with_the_first_five_lines_of_get_checkpoint(
    stamped_app, tsa, tmp_path
):
    """As docs/auditing.md tells an auditor with curl: the token is over the
    note as the log signed it, before any cosignature line."""
    stamp(stamped_app)
    client = stamped_app.test_client()
    served = client.get("/checkpoint").data + "\u2014 witness.example/w AAAA\n".encode()
    (tmp_path / "checkpoint").write_bytes(b"".join(served.splitlines(keepends=True)[:5]))
    (tmp_path / "checkpoint.tsr").write_bytes(client.get("/checkpoint.tsr").data)
    result = openssl_verify(tmp_path / "checkpoint", tmp_path / "checkpoint.tsr", tsa.ca)
    assert (result.returncode, result.stdout) == (0, "Verification: OK\n")


def test_checkpoint_tsr_is_a_404_while_the_latest_checkpoint_has_no_token(stamped_app):
    stamp(stamped_app)
    log = stamped_app.extensions["tim_audit"]
    log.append(event(6))
    sign(log.notary)
    response = stamped_app.test_client().get("/checkpoint.tsr")
    assert (response.status_code, response.data) == (
        404,
        b"The latest checkpoint has no timestamp yet.\n",
    )
