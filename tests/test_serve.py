"""The two servers: ``tim-audit serve`` (ingest and review on separate
listeners, review in a process of its own), ``--only``, and the WSGI entry
points. Real processes, real sockets."""

import contextlib
import http.client
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from dashboard import CREDENTIALS, REVIEWERS
from tencent import group_body
from test_faults import OK, ROOT, free_port, post, server_env
from tim_audit.log import db, records
from tim_audit.log.records import Event
from tim_audit.log.writer import AuditLog


def get(port, path, headers=None, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def answering(port):
    """True once a server answers HTTP on ``port`` (a bound socket accepts
    connections before any process serves it)."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return True
        finally:
            conn.close()
    return False


def children(pid, role="ingest"):
    """The pids of ``pid``'s children that serve ``role``."""
    found = []
    pids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    for child in pids.split():
        try:
            with open(f"/proc/{child}/cmdline", "rb") as cmdline:
                arguments = cmdline.read().split(b"\0")
        except FileNotFoundError:
            continue
        if role.encode() in arguments:
            found.append(int(child))
    return found


@pytest.fixture
def serve(tmp_path):
    """Start ``python -m tim_audit serve [args]``; returns (process, ingest
    port, review port) once the ports it should open answer."""
    processes = []

    def serve(*args, expect=("ingest", "review"), **environment):
        ports = {"ingest": free_port(), "review": free_port()}
        env = {
            **server_env(tmp_path / "audit.sqlite3", tmp_path),
            "TIM_AUDIT_INGEST_LISTEN": f"127.0.0.1:{ports['ingest']}",
            "TIM_AUDIT_REVIEW_LISTEN": f"127.0.0.1:{ports['review']}",
            "TIM_AUDIT_DASHBOARD_USERS": json.dumps(REVIEWERS),
            "PYTHONPATH": str(ROOT),
            **environment,
        }
        log = tmp_path / "serve.log"
        with open(log, "ab") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "tim_audit", "serve", *args],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        processes.append(process)
        deadline = time.monotonic() + 30
        while not all(answering(ports[name]) for name in expect):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the servers did not start"
            time.sleep(0.05)
        return process, ports["ingest"], ports["review"]

    yield serve
    for process in processes:
        process.terminate()
        process.wait(10)


def fill(path, count):
    """``count`` events, written through records.write in large
    transactions, as bench/dataset.py does."""
    log = AuditLog(str(path))
    if not os.path.exists(path):  # else the log's server holds it, and it has its tables
        log.open()
        log.close()
    conn = db.connect(str(path))
    conn.execute("BEGIN IMMEDIATE")
    records.write(
        conn,
        [
            Event(
                received_at=1772323200000 + n,
                command="Group.CallbackAfterCreateGroup",
                group_id=f"@TGS#fill{n}",
                type="Public",
                name=f"filled group {n} " + "x" * 100,
                operator="administrator",
                owner="leckie",
                event_time=1772323200000 + n,
                members=("bob", "peter"),
                user_data=None,
                sdkappid="1400000001",
                client_ip=None,
                opt_platform="RESTAPI",
                peer="127.0.0.1",
                raw=group_body(GroupId=f"@TGS#fill{n}"),
            )
            for n in range(count)
        ],
        log.key,
    )
    conn.execute("COMMIT")
    conn.close()


def test_serve_runs_ingest_and_review_on_their_own_ports(serve):
    process, ingest, review = serve()
    assert post(ingest, group_body()) == (200, OK)
    assert get(ingest, "/healthz") == (200, b'{"configured":true,"events":1,"status":"ok"}\n')
    assert get(review, "/healthz")[0] == 200
    assert get(review, "/history", CREDENTIALS)[0] == 200
    assert get(ingest, "/history", CREDENTIALS)[0] == 404
    assert get(review, "/callback", method="POST")[0] == 404


def test_review_runs_in_a_process_of_its_own_and_is_restarted_if_it_dies(serve):
    process, ingest, review = serve()
    [child] = children(process.pid, "review")
    os.kill(child, signal.SIGKILL)
    time.sleep(0.2)
    deadline = time.monotonic() + 10
    while not answering(review):
        assert time.monotonic() < deadline, "the review server was not started again"
        time.sleep(0.1)
    assert post(ingest, group_body()) == (200, OK)


@pytest.mark.parametrize("environment, arenas", [({}, b"2"), ({"MALLOC_ARENA_MAX": "4"}, b"4")])
def test_review_runs_with_two_malloc_arenas_unless_the_operator_says(serve, environment, arenas):
    process, _, _ = serve(**environment)
    [child] = children(process.pid, "review")
    with open(f"/proc/{child}/environ", "rb") as environ:
        assert b"MALLOC_ARENA_MAX=" + arenas in environ.read().split(b"\0")


@pytest.mark.parametrize(
    "only, running, absent", [("ingest", "ingest", "review"), ("review", "review", "ingest")]
)
def test_only_starts_one_server(serve, tmp_path, only, running, absent):
    fill(tmp_path / "audit.sqlite3", 1)
    process, ingest, review = serve("--only", only, expect=(running,))
    ports = {"ingest": ingest, "review": review}
    assert get(ports[running], "/healthz")[0] == 200
    assert not answering(ports[absent])


def serve_once(tmp_path, **settings):
    """Run ``tim-audit serve`` with ``settings`` (TIM_AUDIT_* variables) when
    it is expected to stop at start-up; the finished process."""
    env = {**server_env(tmp_path / "audit.sqlite3", tmp_path), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "tim_audit", "serve"],
        env={**env, **{f"TIM_AUDIT_{key}": value for key, value in settings.items()}},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_port_in_use_stops_serve_with_one_line(serve, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = serve_once(tmp_path, REVIEW_LISTEN=f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"tim-audit cannot start: cannot listen on REVIEW_LISTEN 127.0.0.1:{port}: Address already in use"
    ]
    assert not (tmp_path / "audit.sqlite3").exists()


def stalled_export(port):
    """Ask for the whole CSV and read nothing: the review thread serving it
    blocks once the socket's buffers and waitress's are full."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        f"GET /history.csv HTTP/1.1\r\nHost: x\r\nAuthorization: {CREDENTIALS['Authorization']}\r\n\r\n".encode()
    )
    return sock


def test_stalled_exports_do_not_delay_callbacks(serve, tmp_path):
    fill(tmp_path / "audit.sqlite3", 20_000)
    process, ingest, review = serve()
    stalled = [stalled_export(review) for _ in range(8)]
    try:
        time.sleep(1)  # the exports fill every buffer and stall
        assert get(review, "/history.csv", CREDENTIALS)[0] == 429
        timings = []
        for n in range(50):
            started = time.monotonic()
            assert post(ingest, group_body(GroupId=f"@TGS#during{n}")) == (200, OK)
            timings.append(time.monotonic() - started)
        assert max(timings) < 0.25
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.parametrize(
    "name, callback, history", [("app", 403, 401), ("ingest", 403, 404), ("review", 404, 401)]
)
def test_wsgi_entry_points_serve_their_paths(tmp_path, monkeypatch, name, callback, history):
    """An unsigned callback is refused (403) where /callback is served; an
    unsigned-in reviewer is asked to sign in (401) where /history is."""
    database = tmp_path / "audit.sqlite3"
    for key, value in server_env(database, tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(ROOT))
    wsgi = importlib.reload(importlib.import_module("wsgi"))
    app = getattr(wsgi, name)
    try:
        assert database.exists() == (name != "review")
        client = app.test_client()
        assert client.post("/callback", data=b"{}").status_code == callback
        assert client.get("/history").status_code == history
    finally:
        if "tim_audit" in app.extensions:
            app.extensions["tim_audit"].close()


def test_exports_past_the_limit_get_429_until_one_ends(live_server):
    fill(live_server.app.config["DATABASE"], 20_000)
    first, second = stalled_export(live_server.port), stalled_export(live_server.port)
    try:
        time.sleep(0.5)
        status, page = get(live_server.port, "/history.csv", CREDENTIALS)
        assert status == 429
        assert b"2 exports are running already" in page
        first.close()
        deadline = time.monotonic() + 10
        while (status := get(live_server.port, "/history.json", CREDENTIALS)[0]) == 429:
            assert time.monotonic() < deadline, "the closed export never gave its place back"
            time.sleep(0.1)
        assert status == 200
    finally:
        first.close()
        second.close()


def test_each_server_says_which_it_is_when_it_starts_and_stops(serve, tmp_path):
    process, ingest, review = serve()
    process.terminate()
    process.wait(10)
    lines = (tmp_path / "serve.log").read_text().splitlines()
    said = [line.split(" INFO tim_audit: ", 1)[1] for line in lines if " INFO tim_audit: " in line]
    assert f"serving ingest (callbacks) on http://127.0.0.1:{ingest} with 8 threads" in said
    assert f"serving review (dashboard) on http://127.0.0.1:{review} with 8 threads" in said
    assert f"stopped serving ingest (callbacks) on http://127.0.0.1:{ingest}" in said


def test_the_same_port_for_both_servers_is_named_as_such(tmp_path):
    result = serve_once(tmp_path, INGEST_LISTEN="127.0.0.1:8090", REVIEW_LISTEN="0.0.0.0:8090")
    assert (result.returncode, result.stderr.strip().splitlines()) == (
        1,
        [
            "tim-audit cannot start: INGEST_LISTEN (127.0.0.1:8090) and REVIEW_LISTEN"
            " (0.0.0.0:8090) use the same port: give each server its own"
        ],
    )


def test_the_same_port_on_two_addresses_is_no_clash(tmp_path):
    port = free_port()
    env = {
        **server_env(tmp_path / "audit.sqlite3", tmp_path),
        "TIM_AUDIT_INGEST_LISTEN": f"127.0.0.1:{port}",
        "TIM_AUDIT_REVIEW_LISTEN": f"127.0.0.2:{port}",
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tim_audit", "serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while get_from("127.0.0.2", port, "/healthz") is None:
            assert process.poll() is None, "serve stopped"
            assert time.monotonic() < deadline, "the review server did not start"
            time.sleep(0.05)
        assert get_from("127.0.0.1", port, "/healthz")[0] == 200
        assert get_from("127.0.0.2", port, "/history")[0] == 401  # the dashboard
        assert get_from("127.0.0.1", port, "/history")[0] == 404  # ingest
    finally:
        process.terminate()
        process.wait(10)


def get_from(host, port, path):
    """(status, body), or None while nothing answers there."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        conn = http.client.HTTPConnection(host, port, timeout=2)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()
    return None
