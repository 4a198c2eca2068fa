"""The log holds under crashes, full disks, locks and bad start-up
conditions: nothing acknowledged is lost, nothing half-written is left."""

import contextlib
import http.client
import json
import os
import pathlib
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from urllib.parse import urlencode

import pytest

from conftest import serving
from tencent import SDKAPPID, TOKEN, group_body, signed_query
from tim_audit.ingest import schemas

ROOT = pathlib.Path(__file__).resolve().parents[1]
OK = {"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0}


def server_env(database, instance):
    return {
        **os.environ,
        "TIM_AUDIT_INSTANCE_PATH": str(instance),
        "TIM_AUDIT_DATABASE": str(database),
        "TIM_AUDIT_SDKAPPID": SDKAPPID,
        "TIM_AUDIT_CALLBACK_TOKEN": json.dumps(TOKEN),
    }


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(env, port, wrapper=()):
    """waitress in a process of its own, as deployed, started through
    ``wrapper`` (such as strace and its options) if given; returns once it
    answers."""
    process = subprocess.Popen(
        [
            *wrapper,
            sys.executable,
            "-m",
            "waitress",
            f"--listen=127.0.0.1:{port}",
            "--threads=8",
            "wsgi:app",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return process
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the server did not start")


def post(port, body, conn=None):
    """(status, answer) for one signed callback; None if the connection broke."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/callback?" + urlencode(signed_query()), body=body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    except (OSError, http.client.HTTPException):
        return None
    finally:
        if own:
            conn.close()


def stored_group_ids(database):
    conn = sqlite3.connect(database)
    try:
        return dict(
            conn.execute("SELECT group_id, count(*) FROM event GROUP BY group_id").fetchall()
        )
    finally:
        conn.close()


def verify(env):
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "tim_audit", "verify"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout.strip().splitlines()[-1]


# --- a crash under load ------------------------------------------------------


@pytest.mark.parametrize("kill_after", [25, 120, 300])
def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path, kill_after):
    database, port = tmp_path / "audit.sqlite3", free_port()
    env = server_env(database, tmp_path)
    server = start_server(env, port)
    bodies = {f"@TGS#crash{n:04d}": group_body(GroupId=f"@TGS#crash{n:04d}") for n in range(400)}
    acknowledged, sent, lock = set(), [], threading.Lock()
    queue = list(bodies)

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    group_id = queue.pop(0)
                    sent.append(group_id)
                answer = post(port, bodies[group_id], conn)
                if answer is None:
                    return  # the server is gone
                if answer == (200, OK):
                    with lock:
                        acknowledged.add(group_id)
        finally:
            conn.close()

    clients = [threading.Thread(target=client) for _ in range(6)]
    for thread in clients:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < kill_after and time.monotonic() < deadline:
        time.sleep(0.001)
    server.send_signal(signal.SIGKILL)
    server.wait()
    for thread in clients:
        thread.join()
    killed_at = len(acknowledged)

    server = start_server(env, port)
    try:
        stored = stored_group_ids(database)
        assert all(stored.get(group_id) == 1 for group_id in acknowledged)
        assert set(stored.values()) == {1}
        assert set(stored) <= set(sent)
        assert verify(env)[0] == 0

        # Tencent's retry: the acknowledged ones again add nothing ...
        for group_id in sorted(acknowledged):
            assert post(port, bodies[group_id]) == (200, OK)
        assert stored_group_ids(database) == stored
        # ... and the rest land exactly once.
        for group_id in bodies:
            assert post(port, bodies[group_id]) == (200, OK)
        assert stored_group_ids(database) == {group_id: 1 for group_id in bodies}
        status, last = verify(env)
        assert (status, last.split()[:2]) == (0, ["OK", "400"])
    finally:
        server.terminate()
        server.wait()
    print(
        f"killed after {kill_after}+ acknowledged: {killed_at} acknowledged,"
        f" {len(stored)} stored, {len(sent)} sent"
    )


# --- the disk is full --------------------------------------------------------

# A valid body of about 40 KB (the most members the schema takes, each at
# the bound), so that
# storing it needs new pages.
MANY_MEMBERS = [
    {"Member_Account": f"{n:0>{schemas.MAX_ACCOUNT}}"} for n in range(schemas.MAX_MEMBERS)
]


def test_full_database_answers_503_at_once_and_recovers(app, client, post, rows, runner):
    assert post(group_body(GroupId="@TGS#before")).status_code == 200
    writer = app.extensions["tim_audit"]._connection()
    writer.execute(f"PRAGMA max_page_count = {writer.execute('PRAGMA page_count').fetchone()[0]}")

    started = time.monotonic()
    response = post(group_body(GroupId="@TGS#lost", MemberList=MANY_MEMBERS))
    assert time.monotonic() - started < 0.5
    assert response.status_code == 503
    answer = response.get_json()
    assert answer["ErrorCode"] == 60030
    assert answer["ErrorInfo"] == (
        "the audit log cannot store this now (database or disk is full); nothing was recorded"
    )
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.get_json()["error"] == "the last write failed: database or disk is full"
    assert rows("SELECT group_id FROM event") == [("@TGS#before",)]
    assert rows("SELECT count(*) FROM event_member") == [(2,)]
    assert runner.invoke(args=["verify"]).output.startswith("OK 1 ")

    writer.execute("PRAGMA max_page_count = 1073741823")  # room is made
    assert post(group_body(GroupId="@TGS#after", MemberList=MANY_MEMBERS)).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert rows("SELECT group_id FROM event ORDER BY id") == [("@TGS#before",), ("@TGS#after",)]
    assert runner.invoke(args=["verify"]).output.startswith("OK 2 ")


def test_full_disk_cannot_quarantine_either(app, post, rows):
    writer = app.extensions["tim_audit"]._connection()
    writer.execute(f"PRAGMA max_page_count = {writer.execute('PRAGMA page_count').fetchone()[0]}")
    response = post(b"{" + b"x" * 200_000)
    assert (response.status_code, response.get_json()["ErrorCode"]) == (503, 60030)
    assert rows("SELECT count(*) FROM quarantine") == [(0,)]


@contextlib.contextmanager
def tmpfs(path, options):
    """A tmpfs mounted at ``path`` (root only; skips where mount is refused)."""
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip(f"cannot mount a tmpfs ({options}) here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.fixture
def small_filesystem(tmp_path):
    """A 3 MB filesystem, so the disk itself fills up."""
    (tmp_path / "small").mkdir()
    with tmpfs(tmp_path / "small", "size=3m") as path:
        yield path


def fill_up(filler):
    """Write ``filler`` until the filesystem it is on has no room left."""
    with contextlib.suppress(OSError), open(filler, "wb") as blob:
        while True:
            blob.write(b"\0" * 65536)
            blob.flush()
            os.fsync(blob.fileno())


def test_real_full_disk_answers_503_and_recovers_when_space_is_freed(
    make_app, small_filesystem, runner
):
    app = make_app(DATABASE=str(small_filesystem / "audit.sqlite3"))
    client = app.test_client()

    def send(group_id):
        return client.post(
            "/callback",
            query_string=signed_query(),
            data=group_body(GroupId=group_id, MemberList=MANY_MEMBERS[:200]),
        )

    assert send("@TGS#first").status_code == 200
    filler = small_filesystem / "filler"
    fill_up(filler)
    answers = [send(f"@TGS#full{n}") for n in range(20)]
    refused = [a for a in answers if a.status_code == 503]
    assert refused and all(a.get_json()["ErrorCode"] == 60030 for a in refused)
    assert client.get("/healthz").status_code == 503
    stored = [a for a in answers if a.status_code == 200]
    filler.unlink()
    assert send("@TGS#after").status_code == 200
    assert client.get("/healthz").status_code == 200
    conn = sqlite3.connect(app.config["DATABASE"])
    assert conn.execute("SELECT count(*) FROM event").fetchone()[0] == 2 + len(stored)
    conn.close()
    result = app.test_cli_runner().invoke(args=["verify"])
    assert result.exit_code == 0, result.output


def events(database):
    """(id, GroupId, members stored) of each event in the log."""
    conn = sqlite3.connect(database)
    try:
        return conn.execute(
            "SELECT id, group_id, (SELECT count(*) FROM event_member WHERE event_id = event.id)"
            " FROM event ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def fill_up_at_commit(log, filler):
    """Fill the disk as the writer's next COMMIT starts, and only then: its
    rows were written with room to spare, in SQLite's cache, and reach the
    WAL at COMMIT. Returns the list in which that COMMIT is noted."""
    committed = []

    def trace(sql):
        if sql == "COMMIT" and not committed:
            committed.append(sql)
            fill_up(filler)

    log._conn.set_trace_callback(trace)
    return committed


def test_a_disk_full_at_commit_answers_503_keeps_nothing_and_stores_the_retry(
    make_app, small_filesystem
):
    """SQLITE_FULL from COMMIT is the one failure there that rules out a
    commit: 503, nothing of the transaction in the log, and the same
    server stores the retry once there is room again."""
    database = small_filesystem / "audit.sqlite3"
    app = make_app(DATABASE=str(database))
    # The most members the schema takes, each a row and an index entry,
    # make more frames than the WAL file has room for: the COMMIT needs new
    # room on the disk.
    large = group_body(GroupId="@TGS#full", MemberList=MANY_MEMBERS)
    filler = small_filesystem / "filler"
    with serving(app) as server:
        assert post(server.port, group_body(GroupId="@TGS#before")) == (200, OK)
        committed = fill_up_at_commit(app.extensions["tim_audit"], filler)
        assert post(server.port, large) == (
            503,
            {
                "ActionStatus": "FAIL",
                "ErrorCode": 60030,
                "ErrorInfo": "the audit log cannot store this now (database or disk is full);"
                " nothing was recorded",
            },
        )
        assert committed == ["COMMIT"]  # the batch was written: the failure was COMMIT's
        health = app.test_client().get("/healthz")
        assert (health.status_code, health.get_json()["error"]) == (
            503,
            "the last write failed: database or disk is full",
        )
        assert events(database) == [(1, "@TGS#before", 2)]
        assert app.test_cli_runner().invoke(args=["verify"]).output.startswith("OK 1 ")

        filler.unlink()
        assert post(server.port, large) == (200, OK)
        assert post(server.port, group_body(GroupId="@TGS#after")) == (200, OK)
    assert app.test_client().get("/healthz").status_code == 200
    assert events(database) == [
        (1, "@TGS#before", 2),
        (2, "@TGS#full", schemas.MAX_MEMBERS),
        (3, "@TGS#after", 2),
    ]
    assert app.test_cli_runner().invoke(args=["verify"]).output.startswith("OK 3 ")


def test_a_write_error_at_commit_answers_that_the_callback_may_be_stored(tmp_path):
    """A file size limit cuts the WAL short at COMMIT. SQLite writes the rest
    of a short write again, which fails with EFBIG: SQLITE_IOERR_WRITE, not
    SQLITE_FULL, and an I/O error at COMMIT does not rule out a commit, so
    the answer is 500/60032, not 503. Nothing was committed; once the limit
    is lifted the same server stores the retry, once."""
    database, port = tmp_path / "audit.sqlite3", free_port()
    env = server_env(database, tmp_path)
    server = start_server(env, port)
    large = group_body(GroupId="@TGS#cut", MemberList=MANY_MEMBERS)
    try:
        assert post(port, group_body(GroupId="@TGS#before")) == (200, OK)
        limit = max(os.path.getsize(path) for path in tmp_path.glob("audit.sqlite3*"))
        resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        assert post(port, large) == (
            500,
            {
                "ActionStatus": "FAIL",
                "ErrorCode": 60032,
                "ErrorInfo": "the audit log did not confirm this write in time (disk I/O error);"
                " it may have been recorded, and a retry is recognised as a repeat",
            },
        )
        assert events(database) == [(1, "@TGS#before", 2)]
        resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        assert post(port, large) == (200, OK)
        assert post(port, large) == (200, OK)  # a repeat
    finally:
        server.terminate()
        server.wait()
    assert events(database) == [(1, "@TGS#before", 2), (2, "@TGS#cut", schemas.MAX_MEMBERS)]
    status, last = verify(env)
    assert (status, last.split()[:2]) == (0, ["OK", "2"])


# --- another process holds the write lock -------------------------------------

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


def hold_lock(database):
    """Another process holding the database's write lock, until it reads a
    line on its stdin (``holder.communicate("done\\n")``)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, database],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "locked\n"
    return holder


def test_locked_database_answers_503_within_a_second_and_a_half(live_server, rows):
    holder = hold_lock(live_server.app.config["DATABASE"])
    try:
        timings = []

        def one(n):
            started = time.monotonic()
            answer = post(live_server.port, group_body(GroupId=f"@TGS#locked{n}"))
            timings.append((time.monotonic() - started, answer))

        threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(timings) == 8
        for seconds, (status, answer) in timings:
            assert status == 503 and answer["ErrorCode"] == 60030
            assert seconds < 1.5
        health = http.client.HTTPConnection(live_server.host, live_server.port, timeout=5)
        health.request("GET", "/healthz")
        assert health.getresponse().status == 503
        health.close()
    finally:
        holder.communicate("done\n", timeout=10)
    assert post(live_server.port, group_body(GroupId="@TGS#unlocked")) == (200, OK)
    assert rows("SELECT group_id FROM event") == [("@TGS#unlocked",)]


# --- start-up -----------------------------------------------------------------


def refused_start(env, command=("-m", "waitress", "--listen=127.0.0.1:0", "wsgi:app")):
    """Start as an operator would; it must stop by itself, exit 1 and say
    why in one line, not a traceback. Returns that line."""
    result = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_missing_database_directory_stops_with_a_message_not_a_traceback(tmp_path):
    missing = tmp_path / "not-there"
    assert refused_start(server_env(missing / "audit.sqlite3", tmp_path)) == (
        f"tim-audit cannot start: the directory of DATABASE, {missing}, does not exist: create it"
        " (writable by the user running tim-audit) or set DATABASE to a file in an existing directory"
    )


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory this process cannot write: a read-only mount for root
    (which chmod cannot stop), a 0555 directory for anyone else."""
    path = tmp_path / "read-only"
    path.mkdir()
    if os.geteuid() == 0:
        with tmpfs(path, "ro,size=1m"):
            yield path
    else:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


def test_read_only_database_directory_stops_with_a_message_not_a_traceback(tmp_path, read_only_dir):
    assert refused_start(server_env(read_only_dir / "audit.sqlite3", tmp_path)) == (
        f"tim-audit cannot start: the directory {read_only_dir} is not writable by this user:"
        " SQLite keeps its -wal and -shm files beside the database. Give the user running"
        " tim-audit write access to it, or set DATABASE elsewhere"
    )


def test_start_up_error_reaches_the_flask_command_line_too(tmp_path):
    env = {**server_env(tmp_path / "audit.sqlite3", tmp_path), "TIM_AUDIT_SIGN_MAX_AGE": "-1"}
    line = refused_start(env, ("-m", "flask", "--app", "tim_audit", "verify"))
    assert (
        line == "tim-audit cannot start: SIGN_MAX_AGE must be a whole number of at least 0, not -1"
    )


# --- a stalled disk: 503 means never stored ------------------------------------


@pytest.mark.parametrize("held", [0.6, 0.8, 0.9, 1.0, 1.1])
def test_callbacks_answered_503_under_a_lock_are_never_stored_and_a_retry_is_stored_once(
    live_server, rows, held
):
    """The lock is let go around the callbacks' deadline, when the writer
    gets it with jobs whose callers are giving up: each is either stored and
    answered 200, or answered 503 and never stored."""
    holder = hold_lock(live_server.app.config["DATABASE"])
    answers = {}

    def one(n):
        started = time.monotonic()
        answers[f"@TGS#stall{n}"] = (
            post(live_server.port, group_body(GroupId=f"@TGS#stall{n}")),
            time.monotonic() - started,
        )

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(held)
    holder.communicate("done\n", timeout=10)
    for thread in threads:
        thread.join()
    time.sleep(0.5)  # anything still committing has landed by now
    stored = {group_id for (group_id,) in rows("SELECT group_id FROM event")}
    for group_id, ((status, answer), seconds) in answers.items():
        assert seconds < 1.5
        if status == 200:
            assert answer == OK and group_id in stored
        else:
            assert (status, answer["ErrorCode"]) == (503, 60030) and group_id not in stored
    for group_id in answers:
        assert post(live_server.port, group_body(GroupId=group_id)) == (200, OK)
    assert sorted(rows("SELECT group_id, count(*) FROM event GROUP BY group_id")) == [
        (group_id, 1) for group_id in sorted(answers)
    ]


def hang_first_commit(log, seconds):
    """Make the writer's next COMMIT take ``seconds`` (a disk stalled
    mid-write), and only that one. The hook stays on the connection: taking
    it off while the COMMIT sleeps would wait for SQLite's lock."""
    hung = []

    def trace(sql):
        if sql == "COMMIT" and not hung:
            hung.append(sql)
            time.sleep(seconds)

    log._conn.set_trace_callback(trace)


def test_a_commit_that_hangs_is_answered_within_the_bound_and_never_503(live_server, rows):
    """A COMMIT that takes 2 s (a disk stalled mid-write): the callback is
    answered at 1.5 s that the write may have been stored, not that it was
    not; it is, and a retry is recognised as a repeat."""
    hang_first_commit(live_server.app.extensions["tim_audit"], 2)
    started = time.monotonic()
    status, answer = post(live_server.port, group_body(GroupId="@TGS#hung"))
    seconds = time.monotonic() - started
    assert (status, answer["ErrorCode"], answer["ActionStatus"]) == (500, 60032, "FAIL")
    assert "may have been recorded" in answer["ErrorInfo"]
    assert 1.4 < seconds < 1.5
    time.sleep(1)
    assert rows("SELECT group_id FROM event") == [("@TGS#hung",)]
    assert post(live_server.port, group_body(GroupId="@TGS#hung")) == (200, OK)
    assert rows("SELECT count(*) FROM event") == [(1,)]


def test_the_shortest_storage_timeout_still_stores_callbacks(make_app):
    client = make_app(STORAGE_TIMEOUT=0.5).test_client()
    answers = [
        client.post(
            "/callback", query_string=signed_query(), data=group_body(GroupId=f"@TGS#short{n}")
        )
        for n in range(20)
    ]
    assert [(a.status_code, a.get_json()) for a in answers] == [(200, OK)] * 20


def test_a_lock_let_go_between_deadlines_stores_the_later_callbacks_and_refuses_the_earlier(
    live_server, rows
):
    """Callbacks arrive 50 ms apart while another process holds the lock,
    which it lets go when the first ones have less than SEAL_MARGIN left:
    the writer gets the lock with both kinds queued, refuses the first
    (503, never stored) and commits the rest (200)."""
    holder = hold_lock(live_server.app.config["DATABASE"])
    answers = {}

    def one(n):
        answers[f"@TGS#staggered{n}"] = post(
            live_server.port, group_body(GroupId=f"@TGS#staggered{n}")
        )

    threads = []
    started = time.monotonic()
    for n in range(8):
        time.sleep(max(0.0, started + n * 0.05 - time.monotonic()))
        threads.append(threading.Thread(target=one, args=(n,)))
        threads[-1].start()
    time.sleep(max(0.0, started + 0.9 - time.monotonic()))
    holder.communicate("done\n", timeout=10)
    for thread in threads:
        thread.join()
    time.sleep(0.5)
    stored = {group_id for (group_id,) in rows("SELECT group_id FROM event")}
    statuses = {group_id: status for group_id, (status, _) in answers.items()}
    assert {group_id for group_id, status in statuses.items() if status == 200} == stored
    assert set(statuses.values()) == {200, 503}
    assert statuses["@TGS#staggered0"] == 503 and statuses["@TGS#staggered7"] == 200


def test_while_a_commit_hangs_every_callback_is_answered_within_the_bound(live_server, rows):
    """More callbacks than threads while a COMMIT hangs for 3 s: the ones
    in the hung transaction are answered 60032, the others 503 at once
    rather than queued behind it, each within 1.5 s of being sent, and
    /healthz says why."""
    hang_first_commit(live_server.app.extensions["tim_audit"], 3)
    answers = []

    def one(n):
        sent = time.monotonic()
        status, answer = post(live_server.port, group_body(GroupId=f"@TGS#wave{n}"))
        answers.append((f"@TGS#wave{n}", status, answer["ErrorCode"], time.monotonic() - sent))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    time.sleep(1.2)
    health = http.client.HTTPConnection(live_server.host, live_server.port, timeout=5)
    health.request("GET", "/healthz")
    response = health.getresponse()
    assert response.status == 503
    assert "has not finished a write" in json.loads(response.read())["error"]
    health.close()
    for thread in threads:
        thread.join()
    time.sleep(2)
    assert max(seconds for *_, seconds in answers) < 1.5
    assert {(status, code) for _, status, code, _ in answers} == {(500, 60032), (503, 60030)}
    stored = {group_id for (group_id,) in rows("SELECT group_id FROM event")}
    assert stored == {group_id for group_id, status, _, _ in answers if status == 500}
