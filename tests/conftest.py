import contextlib
import os
import pathlib
import shutil
import sqlite3
import subprocess
import threading
from types import SimpleNamespace

import pytest
from waitress import create_server

from dashboard import CREDENTIALS, REVIEWERS, sample_events
from tencent import CREATE, SDKAPPID, TOKEN, group_body, signed_query
from tim_audit import create_app, open_log
from tim_audit.log import chain, db, derived, merkle
from tim_audit.log.records import Event, Rejection


def require(program):
    """The path of ``program``; outside CI a missing one skips the test,
    in CI (where .ci/run installs it) it fails."""
    path = shutil.which(program)
    if path is None:
        message = f"{program} is not installed (.ci/run installs it with apt-get)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


# Where Debian's golang-golang-x-mod-dev puts golang.org/x/mod; the Go
# programs under tests/interop are built from it in GOPATH mode, offline.
GOPATH = pathlib.Path("/usr/share/gocode")


def go_program(tmp_path_factory, package):
    """Build tests/``package`` (a Go program written apart from the product,
    against golang.org/x/mod/sumdb); returns run(*args), which runs it to
    its end, and has the program's path as ``run.path``."""
    go = require("go")
    if not (GOPATH / "src/golang.org/x/mod/sumdb/tlog").is_dir():
        message = f"golang.org/x/mod is not in {GOPATH} (.ci/run installs golang-golang-x-mod-dev)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    build = tmp_path_factory.mktemp("go")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(build),
        "GOPATH": str(GOPATH),
        "GO111MODULE": "off",
        "GOPROXY": "off",
        "GOENV": "off",
        "GOFLAGS": "",
        "GOCACHE": str(build / "cache"),
        "GOTMPDIR": str(build),
    }
    program = build / package.replace("/", "-")
    # GOPATH mode builds a package outside GOPATH only from a relative path.
    result = subprocess.run(
        [go, "build", "-o", str(program), f"./{package}"],
        cwd=pathlib.Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr

    def run(*args):
        return subprocess.run(
            [str(program), *map(str, args)], capture_output=True, text=True, timeout=30
        )

    run.path = program
    return run


@pytest.fixture(autouse=True)
def instance_path(tmp_path, monkeypatch):
    """No test reads the developer's instance/config.py or TIM_AUDIT_*
    variables: each gets an empty instance folder of its own."""
    for key in list(os.environ):
        if key.startswith("TIM_AUDIT_"):
            monkeypatch.delenv(key)
    path = tmp_path / "instance"
    path.mkdir()
    monkeypatch.setenv("TIM_AUDIT_INSTANCE_PATH", str(path))
    return path


@pytest.fixture
def config(tmp_path):
    return {
        "TESTING": True,
        "DATABASE": str(tmp_path / "audit.sqlite3"),
        "SDKAPPID": SDKAPPID,
        "CALLBACK_TOKEN": TOKEN,
        "DASHBOARD_USERS": REVIEWERS,
        "VERIFY_INTERVAL": 0,
    }


@pytest.fixture
def make_app(config):
    """create_app with the test config plus ``overrides``, its log opened as
    the ingest server opens it at start-up; closed after the test."""
    apps = []

    def make(**overrides):
        app = open_log(create_app({**config, **overrides}))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["tim_audit"].close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def post(client):
    """POST ``body`` to /callback as Tencent would; query parameters given
    here replace the signed ones (None leaves one out)."""

    def post(body, command=CREATE, **query):
        return client.post("/callback", query_string=signed_query(command, **query), data=body)

    return post


@pytest.fixture
def events(app):
    """The dashboard's sample log (dashboard.sample_events) appended to the app's."""
    events = sample_events()
    log = app.extensions["tim_audit"]
    for event in events:
        log.append(event)
    return events


# --- a log of the app's, written directly -----------------------------------


def event(number, **fields):
    """An Event for the log, numbered; ``fields`` replace its values."""
    values = {
        "received_at": 1700000000000 + number,
        "command": "Group.CallbackAfterCreateGroup",
        "group_id": f"@TGS#{number}",
        "type": "Public",
        "name": f"group {number}",
        "operator": "administrator",
        "owner": "leckie",
        "event_time": 1700000000000 + number,
        "members": ("bob", "peter"),
        "user_data": None,
        "sdkappid": "1400000001",
        "client_ip": "203.0.113.7",
        "opt_platform": "RESTAPI",
        "peer": "127.0.0.1",
        "raw": group_body(GroupId=f"@TGS#{number}"),
    }
    values.update(fields)
    return Event(**values)


def rejection(number):
    """A refused body, another one for each ``number`` (a retry of the same
    bytes is not stored again)."""
    raw = b"{oops %d" % number
    return Rejection(
        received_at=1700000000000 + number,
        error_code=60021,
        reason="body is not JSON",
        command="Group.CallbackAfterCreateGroup",
        query="SdkAppid=1400000001",
        peer="127.0.0.1",
        content_length=len(raw),
        raw=raw,
    )


@pytest.fixture
def log(app):
    return app.extensions["tim_audit"]


@pytest.fixture
def filled(log):
    """A log of five events (two members each) and two quarantined bodies."""
    for number in range(1, 6):
        log.append(event(number))
    log.append(rejection(1))
    log.append(rejection(2))
    return log


@pytest.fixture
def attacker(filled):
    """A connection to the file with every trigger dropped, as anyone with
    write access to it could do."""
    conn = sqlite3.connect(filled.path, isolation_level=None)
    drop_triggers(conn)
    yield conn
    conn.close()


@pytest.fixture
def old_schema(config):
    """The app's database as a version before STRICT tables created it
    (tests/data/schema-v0.sql is that schema); list it before any fixture
    that opens the app."""
    conn = sqlite3.connect(config["DATABASE"])
    conn.executescript((pathlib.Path(__file__).parent / "data" / "schema-v0.sql").read_text())
    conn.close()


def drop_triggers(conn, keep=()):
    """Drop the triggers, but those whose names start with one of ``keep``."""
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        if not name.startswith(keep):
            conn.execute(f'DROP TRIGGER "{name}"')


def rewrite(conn, key=None):
    """Recompute every event hash from the stored bytes, and both Merkle
    trees, as an attacker who knows the formats (and, without
    AUDIT_HMAC_KEY, needs nothing else) can."""
    previous = chain.GENESIS
    for row in conn.execute("SELECT * FROM event ORDER BY id").fetchall():
        members = [
            m
            for (m,) in conn.execute(
                "SELECT account FROM event_member WHERE event_id = ? ORDER BY position", (row[0],)
            )
        ]
        values = dict(
            zip(
                [d[0] for d in conn.execute("SELECT * FROM event LIMIT 0").description],
                row,
                strict=True,
            )
        )
        previous = chain.link(key, previous, chain.canonical(chain.event_values(values, members)))
        conn.execute("UPDATE event SET hash = ? WHERE id = ?", (previous, row[0]))
    rebuild_trees(conn, key)
    derived.allow_writes(conn)
    derived.rebuild(conn)  # which makes every trigger of the schema again ...
    drop_triggers(conn, keep=("event_derived", "event_hour_"))  # ... but the derived data's


def rebuild_trees(conn, key=None):
    """Both Merkle trees built afresh over the rows as they are now, with
    the log's record that it had trees wiped too, as the attacker knows it."""
    conn.executescript(
        "DELETE FROM event_tree; DELETE FROM quarantine_tree; DELETE FROM meta WHERE key = 'trees'"
    )
    conn.row_factory = sqlite3.Row
    try:
        merkle.build(conn, key)
    finally:
        conn.row_factory = None


def check(log, anchor=None, key=None):
    """verify() of the chains and trees on the log's file, as the verify command runs it."""
    conn = db.connect(log.path, readonly=True)
    try:
        return merkle.verify(conn, key if key is not None else log.key, anchor)[0]
    finally:
        conn.close()


@pytest.fixture
def get(client):
    """GET as the signed-in reviewer."""

    def get(url, **kwargs):
        return client.get(url, headers=CREDENTIALS, **kwargs)

    return get


@pytest.fixture
def rows(config):
    """Run a query on the test's database file through a connection of its
    own, as an auditor with the sqlite3 shell would. It opens no app: a
    test may open the one it needs, as one process writes a log."""

    def rows(sql, params=()):
        conn = sqlite3.connect(config["DATABASE"])
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    return rows


@pytest.fixture
def live_server(app):
    """The app under waitress on a free loopback port."""
    with serving(app) as server:
        yield server


@contextlib.contextmanager
def serving(app):
    """``app`` under waitress on a free loopback port, until the block ends."""
    server = create_server(app, host="127.0.0.1", port=0, threads=8)
    stopping = threading.Event()

    def serve():
        # waitress's own run() only ends when every connection has closed;
        # this loop ends when the test is over, and closes them itself.
        while not stopping.is_set():
            server.asyncore.loop(timeout=0.05, map=server._map, use_poll=True, count=1)
        server.asyncore.close_all(server._map)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(
            app=app,
            host="127.0.0.1",
            port=server.effective_port,
            url=f"http://127.0.0.1:{server.effective_port}",
        )
    finally:
        server.task_dispatcher.shutdown()
        stopping.set()
        thread.join(5)
