"""What an operator runs and watches: token rotation, the proxy, metrics,
logs, backups."""

import json
import pathlib
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from dashboard import CREDENTIALS
from tencent import group_body, signed_query
from test_faults import ROOT, free_port, post, server_env, start_server
from tim_audit import create_ingest_app, create_review_app, open_log

OK = {"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0}


# --- token rotation -----------------------------------------------------------


@pytest.mark.parametrize("token", ["old-token", "new-token"])
def test_any_listed_token_is_accepted(make_app, rows, token):
    client = make_app(CALLBACK_TOKEN=["old-token", "new-token"]).test_client()
    response = client.post("/callback", query_string=signed_query(token=token), data=group_body())
    assert response.get_json() == OK
    assert rows("SELECT count(*) FROM event") == [(1,)]


def test_an_unlisted_token_is_refused_during_rotation(make_app):
    client = make_app(CALLBACK_TOKEN=["old-token", "new-token"]).test_client()
    response = client.post(
        "/callback", query_string=signed_query(token="older-token"), data=group_body()
    )
    assert (response.status_code, response.get_json()["ErrorCode"]) == (403, 60013)


# --- behind a reverse proxy ---------------------------------------------------


def test_without_proxy_fix_forwarded_headers_are_ignored(client, rows):
    client.post(
        "/callback",
        query_string=signed_query(),
        data=group_body(),
        headers={"X-Forwarded-For": "198.51.100.9"},
    )
    assert rows("SELECT peer FROM event") == [("127.0.0.1",)]


def test_proxy_fix_records_the_client_the_trusted_proxy_saw(make_app, rows):
    client = make_app(PROXY_FIX=1).test_client()
    client.post(
        "/callback",
        query_string=signed_query(),
        data=group_body(),
        headers={"X-Forwarded-For": "203.0.113.66, 198.51.100.9"},
    )
    assert rows("SELECT peer FROM event") == [("198.51.100.9",)]


def test_proxy_fix_counts_hops(make_app, rows):
    client = make_app(PROXY_FIX=2).test_client()
    client.post(
        "/callback",
        query_string=signed_query(),
        data=group_body(),
        headers={"X-Forwarded-For": "spoofed, 203.0.113.66, 198.51.100.9"},
    )
    assert rows("SELECT peer FROM event") == [("203.0.113.66",)]


def test_proxy_fix_applies_to_quarantined_deliveries(make_app, rows):
    client = make_app(PROXY_FIX=1).test_client()
    client.post(
        "/callback",
        query_string=signed_query(),
        data=b"{oops",
        headers={"X-Forwarded-For": "198.51.100.9"},
    )
    assert rows("SELECT peer FROM quarantine") == [("198.51.100.9",)]


# --- metrics ------------------------------------------------------------------


def test_metrics_are_off_by_default(client):
    assert client.get("/metrics").status_code == 404


def metric(text, name, labels=""):
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} "):
            return float(line.split()[-1])
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_metrics_count_callbacks_by_outcome_and_the_log(make_app):
    client = make_app(METRICS=True).test_client()
    send = lambda body, **q: client.post("/callback", query_string=signed_query(**q), data=body)  # noqa: E731
    send(group_body())
    send(group_body())
    send(group_body(GroupId="@TGS#other"))
    send(b"{oops")
    send(group_body(), Sign="0" * 64)
    send(b"{}", command="C2C.CallbackAfterSendMsg")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert metric(text, "tim_audit_callbacks_total", '{outcome="stored"}') == 2
    assert metric(text, "tim_audit_callbacks_total", '{outcome="repeat"}') == 1
    assert metric(text, "tim_audit_callbacks_total", '{outcome="not_json"}') == 1
    assert metric(text, "tim_audit_callbacks_total", '{outcome="bad_sign"}') == 1
    assert metric(text, "tim_audit_callbacks_total", '{outcome="ignored"}') == 1
    assert metric(text, "tim_audit_callbacks_total", '{outcome="storage_unavailable"}') == 0
    assert metric(text, "tim_audit_callback_seconds_count") == 6
    assert metric(text, "tim_audit_events") == 2
    assert metric(text, "tim_audit_quarantined") == 1


def test_metrics_need_no_reviewer_but_are_not_on_the_dashboard(make_app, config):
    app = make_app(METRICS=True)
    client = app.test_client()
    response = client.get("/metrics")
    assert (response.status_code, response.mimetype) == (200, "text/plain")
    assert "tim_audit_events 0.0" in response.get_data(as_text=True)
    assert client.get("/history").status_code == 401
    page = client.get("/history", headers=CREDENTIALS)
    assert page.status_code == 200
    assert "metrics" not in page.get_data(as_text=True).lower()
    app.extensions["tim_audit"].close()  # one process writes a log
    ingest = open_log(create_ingest_app({**config, "METRICS": True}))
    try:
        assert ingest.test_client().get("/metrics").status_code == 200
    finally:
        ingest.extensions["tim_audit"].close()
    review = create_review_app({**config, "METRICS": True}).test_client()
    assert review.get("/metrics").status_code == 404
    assert review.get("/metrics", headers=CREDENTIALS).status_code == 404


# --- logs -----------------------------------------------------------------------


def server_log(tmp_path, bodies, **settings):
    """Everything waitress-serve printed while it took ``bodies``."""
    env = server_env(tmp_path / "audit.sqlite3", tmp_path)
    env.update({f"TIM_AUDIT_{key}": value for key, value in settings.items()})
    port = free_port()
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            deadline = time.monotonic() + 30
            while post(port, bodies[0]) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            for body in bodies[1:]:
                post(port, body)
        finally:
            process.terminate()
            process.wait()
    return (tmp_path / "server.log").read_text()


def test_json_log_lines_carry_the_callback_fields(tmp_path):
    text = server_log(tmp_path, [group_body(), group_body(GroupId="@TGS#x\ny")], LOG_FORMAT="json")
    records = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    callbacks = [r for r in records if r.get("event") == "callback"]
    assert [c["group_id"] for c in callbacks][-2:] == ["@TGS#2J4SZEAEL", "@TGS#x\ny"]
    last = callbacks[-1]
    assert set(last) == {
        "time",
        "level",
        "logger",
        "message",
        "event",
        "outcome",
        "status",
        "code",
        "command",
        "group_id",
        "ms",
    }
    assert (last["outcome"], last["status"], last["code"], last["level"]) == (
        "stored",
        200,
        0,
        "INFO",
    )
    assert last["time"].endswith("Z")


def test_each_callback_is_logged_once_under_waitress(tmp_path):
    text = server_log(tmp_path, [group_body()])
    assert text.count("callback outcome=stored") == 1
    assert " INFO tim_audit: callback outcome=stored status=200 code=0 " in text


# --- backups --------------------------------------------------------------------


def test_backup_is_a_verified_copy(app, post, runner, tmp_path):
    for n in range(5):
        post(group_body(GroupId=f"@TGS#{n}"))
    post(b"{oops")
    destination = tmp_path / "backup.sqlite3"
    result = runner.invoke(args=["backup", str(destination)])
    assert result.exit_code == 0, result.output
    live = runner.invoke(args=["verify"]).output.splitlines()[-1]
    assert result.output.splitlines()[-1] == live
    assert result.output.startswith(f"backed up 5 events to {destination} (")
    copy = sqlite3.connect(destination)
    assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert copy.execute("SELECT count(*) FROM quarantine").fetchone() == (1,)
    copy.close()
    assert not pathlib.Path(f"{destination}-wal").exists()


def test_backup_refuses_to_overwrite(runner, tmp_path):
    destination = tmp_path / "backup.sqlite3"
    destination.write_text("yesterday's")
    result = runner.invoke(args=["backup", str(destination)])
    assert result.exit_code == 2
    assert "exists; back up to a new file" in result.output
    assert destination.read_text() == "yesterday's"


def test_backup_into_a_missing_folder_says_to_create_it(runner, tmp_path):
    destination = tmp_path / "not-there" / "backup.sqlite3"
    result = runner.invoke(args=["backup", str(destination)])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        f"Error: the folder {destination.parent} does not exist; create it, or back up into one that does"
    )
    assert not destination.parent.exists()


def test_backup_while_callbacks_keep_arriving(tmp_path):
    database, port = tmp_path / "audit.sqlite3", free_port()
    env = server_env(database, tmp_path)
    server = start_server(env, port)
    acknowledged, stop = [], threading.Event()

    def keep_posting():
        n = 0
        while not stop.is_set():
            if post(port, group_body(GroupId=f"@TGS#live{n}")) == (200, OK):
                acknowledged.append(n)
            n += 1

    posting = threading.Thread(target=keep_posting)
    posting.start()
    try:
        while len(acknowledged) < 200:
            time.sleep(0.01)
        before = len(acknowledged)
        destination = tmp_path / "backup.sqlite3"
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "tim_audit", "backup", str(destination)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        after = len(acknowledged)
    finally:
        stop.set()
        posting.join()
        server.terminate()
        server.wait()
    assert result.returncode == 0, result.stderr
    count = int(result.stdout.splitlines()[-1].split()[1])
    assert before <= count <= after + 1
    copied = destination.read_bytes()
    verified = subprocess.run(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "tim_audit",
            "verify",
            "--database",
            str(destination),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.stdout.splitlines()[-1] == result.stdout.splitlines()[-1]
    assert destination.read_bytes() == copied  # verifying a copy leaves it as it was
