"""The attacks of issue 14, run black-box: a real ingest server signs and
ships its checkpoints, is stopped, and whoever holds the file rewrites it.
What is outside the file (the key, CHECKPOINT_DIR) must catch each one."""

import http.client
import os
import sqlite3
import subprocess
import sys
import time
from urllib.parse import urlencode

import pytest

from conftest import rewrite
from tencent import group_body, signed_query
from test_faults import server_env
from test_serve import serve  # noqa: F401 (the fixture)
from tim_audit.log import merkle, signednote

ORIGIN = "im-audit.example.com/1400000001"


@pytest.fixture
def environment(tmp_path):
    folder = tmp_path / "shipped"
    folder.mkdir()
    return {
        "TIM_AUDIT_LOG_ORIGIN": ORIGIN,
        "TIM_AUDIT_CHECKPOINT_DIR": str(folder),
        "TIM_AUDIT_CHECKPOINT_INTERVAL": "1",
    }


def command(tmp_path, environment, *args):
    return subprocess.run(
        [sys.executable, "-m", "tim_audit", *args],
        env={**server_env(tmp_path / "audit.sqlite3", tmp_path), **environment},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def post(port, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/callback?" + urlencode(signed_query()), body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def signed_log(serve, tmp_path, environment):  # noqa: F811
    """Five events through a real ingest server, signed and shipped to
    CHECKPOINT_DIR, the server stopped; the verifier key."""
    result = command(tmp_path, environment, "keygen")
    assert result.returncode == 0, result.stderr
    process, port, _ = serve("--only", "ingest", expect=("ingest",), **environment)
    for number in range(1, 6):
        body = group_body(GroupId=f"@TGS#{number}", EventTime=1700000000000 + number)
        assert post(port, body)[0] == 200
    shipped = tmp_path / "shipped" / "event-5.checkpoint"
    deadline = time.monotonic() + 20
    while not shipped.exists():
        assert time.monotonic() < deadline, "no checkpoint was shipped"
        time.sleep(0.05)
    process.terminate()
    assert process.wait(20) == 0
    return result.stdout.splitlines()[-1]


def copy_of(path):
    """A copy of the log with everything committed, its WAL included."""
    copy = path.with_name("copy.sqlite3")
    source, target = sqlite3.connect(path), sqlite3.connect(copy)
    source.backup(target)
    source.close()
    target.close()
    return copy


def attack(path, *statements):
    """As whoever holds the file: drop the triggers, change event 2's name,
    re-chain the rows and rebuild the trees, then run ``statements``."""
    conn = sqlite3.connect(path, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    conn.execute("UPDATE event SET name = 'harmless' WHERE id = 2")
    rewrite(conn)
    for statement in statements:
        conn.execute(statement)
    conn.close()


def test_wipe_and_re_sign_fails_verify_and_is_never_signed(
    signed_log,
    serve,  # noqa: F811
    tmp_path,
    environment,
):
    copy = copy_of(tmp_path / "audit.sqlite3")
    attack(copy, "DELETE FROM checkpoint", "DELETE FROM meta WHERE key <> 'chain'")
    result = command(tmp_path, environment, "verify", "--database", str(copy))
    assert (result.returncode, result.stdout) == (
        1,
        f"FAIL checkpoint 5: {tmp_path}/shipped/event-5.checkpoint has another root than the"
        " event tree at 5 leaves\n",
    )
    for stale in ("audit.sqlite3-wal", "audit.sqlite3-shm"):
        (tmp_path / stale).unlink(missing_ok=True)
    os.replace(copy, tmp_path / "audit.sqlite3")
    started = command(tmp_path, environment, "serve", "--only", "ingest")
    assert started.returncode == 1
    assert started.stderr.splitlines()[-1] == (
        "tim-audit cannot start: this log does not extend what it signed before: checkpoint 5:"
        f" {tmp_path}/shipped/event-5.checkpoint has another root than the event tree at 5"
        " leaves. Was the log rewritten, moved aside or begun again? Restore the log that signed it"
    )
    assert os.listdir(tmp_path / "shipped") == ["event-5.checkpoint"]


def test_the_issues_wipe_of_the_tree_rows_fails_verify(signed_log, tmp_path, environment):
    copy = copy_of(tmp_path / "audit.sqlite3")
    conn = sqlite3.connect(copy, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    conn.executescript(
        "DELETE FROM event_tree; DELETE FROM quarantine_tree; DELETE FROM checkpoint"
    )
    conn.close()
    result = command(tmp_path, {}, "verify", "--database", str(copy))
    assert (result.returncode, result.stdout) == (
        1,
        "FAIL event row 1: it is not in the Merkle tree: the tree stops before it\n",
    )


def test_checkpoints_kept_and_rows_rewritten_fails_verify(signed_log, tmp_path, environment):
    copy = copy_of(tmp_path / "audit.sqlite3")
    attack(copy)
    result = command(tmp_path, {"TIM_AUDIT_LOG_ORIGIN": ORIGIN}, "verify", "--database", str(copy))
    assert (result.returncode, result.stdout) == (
        1,
        "FAIL checkpoint 5: the stored event checkpoint has another root than the event tree"
        " at 5 leaves\n",
    )


def test_an_inserted_foreign_key_checkpoint_fails_verify(signed_log, tmp_path, environment):
    copy = copy_of(tmp_path / "audit.sqlite3")
    signer = signednote.Signer(signednote.generate_key(ORIGIN)[0])
    attack(copy, "DELETE FROM checkpoint", "DELETE FROM meta WHERE key LIKE 'signed:%'")
    conn = sqlite3.connect(copy, isolation_level=None)
    root = merkle.root(conn, "event", 5)
    conn.execute(
        "INSERT INTO checkpoint (tree, size, root, signed_at, key, note) VALUES (?, ?, ?, ?, ?, ?)",
        (
            "event",
            5,
            root,
            0,
            str(signer.verifier),
            signednote.sign_checkpoint(signednote.Checkpoint(ORIGIN, 5, root), signer),
        ),
    )
    conn.close()
    verify = ("verify", "--database", str(copy), "--key", signed_log)
    result = command(tmp_path, {"TIM_AUDIT_LOG_ORIGIN": ORIGIN}, *verify)
    assert result.returncode == 1
    assert result.stdout.startswith(
        "FAIL checkpoint 5: the stored event checkpoint does not verify: the note is not signed"
        f" by {'+'.join(signed_log.split('+')[:2])}"
    )
