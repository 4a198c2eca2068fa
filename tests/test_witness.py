"""Witnesses (C2SP tlog-witness v1.0.0, tlog-cosignature v1), each side
against one not written here: tests/interop/witness, a witness and
cosignature checker written apart from the product, in Go, on
golang.org/x/mod/sumdb."""

import contextlib
import os
import http.client
import socket
import sqlite3
import subprocess
import threading
import sys
import time
from pathlib import Path

import pytest

from conftest import event, go_program, rewrite
from dashboard import CREDENTIALS
from test_checkpoints import ORIGIN, sign
from test_faults import free_port
from tim_audit import create_app
from tim_audit.log import checkpoints, db, signednote, witnesses


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    return go_program(tmp_path_factory, "interop/witness")


@pytest.fixture
def config(config):
    return {**config, "LOG_ORIGIN": ORIGIN}


@pytest.fixture
def log_key(instance_path, config):
    """The log's signing key, made before the app starts; its verifier key."""
    result = create_app(config).test_cli_runner().invoke(args=["keygen"])
    assert result.exit_code == 0, result.output
    return result.output.splitlines()[-1]


@contextlib.contextmanager
def started(args, port, log):
    """A server process, once it accepts connections on ``port``; its
    standard error in ``log``. Stopped at the end."""
    with open(log, "wb") as stderr:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the witness did not start"
                time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def go_witness(peer, log_key, tmp_path):
    """The Go witness of our log on loopback: (url, verifier key)."""
    key = tmp_path / "go-witness.key"
    key.write_text(peer("keygen", "go.witness.example/w1").stdout)
    port = free_port()
    serve = [str(peer.path), "serve", f"127.0.0.1:{port}", key, tmp_path / "go.json", log_key]
    with started(serve, port, tmp_path / "go-witness.log"):
        yield f"http://127.0.0.1:{port}", key.read_text().splitlines()[1]


@pytest.fixture
def our_witness(log_key, tmp_path):
    """tim-audit witness on loopback, as a compliance team runs it: (url, verifier key)."""
    key = tmp_path / "our-witness.key"
    made = subprocess.run(
        [sys.executable, "-m", "tim_audit", "keygen", "--witness", "our.witness.example/w2"]
        + ["--out", str(key)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    port = free_port()
    serve = [sys.executable, "-m", "tim_audit", "witness", "--listen", f"127.0.0.1:{port}"]
    serve += ["--key", str(key), "--database", str(tmp_path / "witness.sqlite3")]
    with started([*serve, "--log", log_key], port, tmp_path / "our-witness.log"):
        yield f"http://127.0.0.1:{port}", made.stdout.strip()


def signed_log(make_app, witness_list, count=5, **config):
    """The app of a log of ``count`` events with a checkpoint, witnessed by
    ``witness_list`` ((url, key) pairs), its witness threads not started."""
    app = make_app(WITNESSES=[{"url": url, "key": key} for url, key in witness_list], **config)
    log = app.extensions["tim_audit"]
    for publisher in log.notary.publishers:  # the test runs their rounds itself
        publisher.close()
    for number in range(1, count + 1):
        log.append(event(number))
    sign(log.notary)
    return app


def grow(app, first, last):
    log = app.extensions["tim_audit"]
    for number in range(first, last + 1):
        log.append(event(number))
    sign(log.notary)


def submit(app, index=0):
    """One round of a witness's thread, on a connection of its own."""
    log = app.extensions["tim_audit"]
    conn = db.connect(log.path)
    try:
        return log.notary.publishers[index].publish(conn)
    finally:
        conn.close()


def served(app, path):
    """GET /checkpoint, written to ``path``."""
    response = app.test_client().get("/checkpoint")
    assert response.status_code == 200
    path.write_bytes(response.get_data())
    return path


def post(url, body):
    """A raw add-checkpoint request: (status, content type, body)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/add-checkpoint", body=body)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def latest_note(app):
    conn = db.connect(app.extensions["tim_audit"].path, readonly=True)
    try:
        return bytes(checkpoints.latest(conn)["note"])
    finally:
        conn.close()


def test_keygen_witness_writes_a_private_key_only_its_owner_reads(our_witness, tmp_path):
    _, key = our_witness
    assert oct((tmp_path / "our-witness.key").stat().st_mode & 0o777) == "0o600"
    assert signednote.Verifier(key).cosigner and key.startswith("our.witness.example/w2+")


def test_the_go_witness_cosigns_our_checkpoint_and_go_checks_what_we_serve(
    go_witness, log_key, make_app, peer, tmp_path
):
    app = signed_log(make_app, [go_witness])
    assert submit(app).startswith("\u2014 go.witness.example/w1 ".encode())
    result = peer("verify", go_witness[1], log_key, served(app, tmp_path / "c"))
    assert (result.returncode, result.stdout.split()[:3]) == (0, ["OK", ORIGIN, "5"])


def test_our_witness_cosigns_and_the_go_checker_accepts_it(
    our_witness, log_key, make_app, peer, tmp_path
):
    app = signed_log(make_app, [our_witness])
    assert submit(app).startswith("\u2014 our.witness.example/w2 ".encode())
    grow(app, 6, 9)
    submit(app)  # old 5, with a consistency proof to 9
    result = peer("verify", our_witness[1], log_key, served(app, tmp_path / "c"))
    assert (result.returncode, result.stdout.split()[:3]) == (0, ["OK", ORIGIN, "9"])


def test_a_cosignature_made_by_the_go_witness_checks_with_our_verifier(go_witness, make_app):
    app = signed_log(make_app, [go_witness])
    submit(app)
    note = app.test_client().get("/checkpoint").get_data()
    [cosigner] = signednote.check_cosignatures(note, [signednote.Verifier(go_witness[1])], 1)
    assert cosigner.name == "go.witness.example/w1"


def test_a_cosignature_is_shipped_to_checkpoint_dir_with_its_checkpoint(
    our_witness, make_app, tmp_path
):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    app = signed_log(make_app, [our_witness], CHECKPOINT_DIR=str(shipped))
    line = submit(app)
    assert (shipped / "event-5.checkpoint").read_bytes() == latest_note(app) + line


def test_the_client_resyncs_from_the_size_a_409_gives(go_witness, make_app, rows):
    app = signed_log(make_app, [go_witness])
    assert post(go_witness[0], b"old 0\n\n" + latest_note(app))[0] == 200  # an answer we lost
    grow(app, 6, 7)
    assert submit(app) is not None
    assert rows(
        "SELECT checkpoint.size, cosignature.witness FROM cosignature"
        " JOIN checkpoint ON checkpoint.id = checkpoint_id"
    ) == [(7, go_witness[1])]


def fork(app):
    """As whoever holds the file, with the key: rewrite event 2 and wipe
    every trace of what was signed, so the notary signs the new history."""
    conn = sqlite3.connect(app.extensions["tim_audit"].path, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    conn.execute("UPDATE event SET name = 'harmless' WHERE id = 2")
    rewrite(conn)
    conn.executescript(
        "DELETE FROM checkpoint; DELETE FROM cosignature; DELETE FROM meta WHERE key LIKE 'signed:%'"
    )
    conn.close()


@pytest.mark.parametrize("side", ["go_witness", "our_witness"])
def test_a_witness_never_cosigns_a_second_history(side, request, make_app, rows):
    """The operator rewrites the stopped log, wipes what it signed, and has
    the real key sign the new history on purpose (CHECKPOINT_ADOPT): only
    the witness stands in the way."""
    chosen = request.getfixturevalue(side)
    app = signed_log(make_app, [chosen])
    submit(app)
    app.extensions["tim_audit"].close()
    fork(app)
    forged = make_app(WITNESSES=[{"url": chosen[0], "key": chosen[1]}], CHECKPOINT_ADOPT=True)
    for publisher in forged.extensions["tim_audit"].notary.publishers:
        publisher.close()
    grow(forged, 6, 7)
    assert rows("SELECT size FROM checkpoint") == [(7,)]
    with pytest.raises(witnesses.Refused, match="^422 "):
        submit(forged)
    assert rows("SELECT count(*) FROM cosignature") == [(0,)]


def test_a_witness_answers_409_with_its_size_to_a_stale_old_size(our_witness, make_app):
    app = signed_log(make_app, [our_witness])
    submit(app)
    assert post(our_witness[0], b"old 0\n\n" + latest_note(app)) == (
        409,
        "text/x.tlog.size",
        b"5\n",
    )


def test_the_same_size_with_another_root_is_a_409(our_witness, make_app, log_key, instance_path):
    app = signed_log(make_app, [our_witness])
    submit(app)
    signer = signednote.Signer((instance_path / "checkpoint.key").read_text().strip())
    other = signednote.sign_checkpoint(signednote.Checkpoint(ORIGIN, 5, b"\x07" * 32), signer)
    status, kind, body = post(our_witness[0], b"old 5\n\n" + other)
    assert (status, kind) == (409, "text/plain")
    assert body == b"another root than the checkpoint of 5 leaves cosigned before\n"


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"old 0\n", 400, b"the body is an old size line, proof lines, a blank line and a note\n"),
        (b"old 01\n\nx", 400, b"the old size is not a decimal number"),
        (b"new 0\n\nx", 400, b"the body does not begin with an old size line\n"),
        (b"old 0\n" + b"AAAA\n" * 64 + b"\nx", 400, b"the proof has more than 63 lines\n"),
        (b"old 0\n\nnot a note", 400, b"the note has no blank line before its signatures\n"),
    ],
)
def test_a_malformed_request_is_a_400(our_witness, body, status, message):
    answer = post(our_witness[0], body)
    assert answer[0] == status and answer[2].startswith(message)


def test_an_unknown_origin_is_a_404_and_a_foreign_signature_a_403(our_witness):
    signer = signednote.Signer(signednote.generate_key("elsewhere.example/1")[0])
    note = signednote.sign_checkpoint(
        signednote.Checkpoint("elsewhere.example/1", 1, b"\0" * 32), signer
    )
    assert post(our_witness[0], b"old 0\n\n" + note)[0] == 404
    forger = signednote.Signer(signednote.generate_key(ORIGIN)[0])
    note = signednote.sign_checkpoint(signednote.Checkpoint(ORIGIN, 1, b"\0" * 32), forger)
    assert post(our_witness[0], b"old 0\n\n" + note)[0] == 403


def test_a_proof_after_old_size_0_and_a_bad_proof_are_422(our_witness, make_app):
    app = signed_log(make_app, [our_witness])
    note = latest_note(app)
    assert post(our_witness[0], b"old 0\n" + b"A" * 43 + b"=\n\n" + note)[0] == 422
    submit(app)
    grow(app, 6, 7)
    bad = b"old 5\n" + (b"A" * 43 + b"=\n") * 3 + b"\n" + latest_note(app)
    assert post(our_witness[0], bad)[0] == 422


def test_the_witness_keeps_its_state_in_its_own_file_across_restarts(
    our_witness, make_app, tmp_path
):
    app = signed_log(make_app, [our_witness])
    submit(app)
    conn = sqlite3.connect(tmp_path / "witness.sqlite3")
    assert conn.execute("SELECT origin, size FROM witnessed").fetchall() == [(ORIGIN, 5)]
    conn.close()


def test_check_proof_with_the_witness_key_passes_and_fails_below_quorum(
    go_witness, our_witness, log_key, make_app, tmp_path
):
    app = signed_log(make_app, [go_witness, our_witness])
    runner = app.test_cli_runner()
    submit(app, 0)
    proof = tmp_path / "3.tlog-proof"
    proof.write_bytes(app.test_client().get("/history/3.tlog-proof", headers=CREDENTIALS).data)
    both = ["--witness", go_witness[1], "--witness", our_witness[1]]
    one = runner.invoke(args=["check-proof", str(proof), "--key", log_key, *both, "--quorum", "1"])
    assert (one.exit_code, one.output.strip().endswith(", cosigned by go.witness.example/w1")) == (
        0,
        True,
    )
    all_ = runner.invoke(args=["check-proof", str(proof), "--key", log_key, *both])
    assert (all_.exit_code, all_.output) == (
        1,
        "FAIL the checkpoint is cosigned by 1 of the 2 witnesses given (go.witness.example/w1),"
        " fewer than the quorum of 2\n",
    )
    wrong = signednote.generate_key("go.witness.example/w1", witness=True)[1]
    result = runner.invoke(args=["check-proof", str(proof), "--key", log_key, "--witness", wrong])
    assert result.exit_code == 1
    assert "cosigned by 0 of the 1 witnesses given (none)" in result.output


def test_go_checks_the_log_signature_of_a_proof_that_carries_cosignatures(
    go_witness, log_key, make_app, tmp_path, tmp_path_factory
):
    app = signed_log(make_app, [go_witness])
    submit(app)
    proof = tmp_path / "3.tlog-proof"
    proof.write_bytes(app.test_client().get("/history/3.tlog-proof", headers=CREDENTIALS).data)
    assert "\n\u2014 go.witness.example/w1 ".encode() in proof.read_bytes()
    (tmp_path / "vkey").write_text(log_key)
    result = go_program(tmp_path_factory, "interop")("verify", tmp_path / "vkey", proof)
    assert result.returncode == 0, result.stderr


def test_verify_fails_a_stored_cosignature_that_was_altered(go_witness, make_app):
    app = signed_log(make_app, [go_witness])
    submit(app)
    conn = sqlite3.connect(app.extensions["tim_audit"].path, isolation_level=None)
    conn.execute("DROP TRIGGER cosignature_no_update")
    [(line,)] = conn.execute("SELECT line FROM cosignature").fetchall()
    altered = line[:-5] + (b"B" if line[-5:-4] != b"B" else b"C") + line[-4:]
    conn.execute("UPDATE cosignature SET line = ?", (altered,))
    conn.close()
    result = app.test_cli_runner().invoke(args=["verify"])
    assert result.exit_code == 1
    assert result.output.startswith("FAIL cosignature row 1: the line (")
    assert result.output.endswith(
        " does not verify: the signature by go.witness.example/w1+"
        f"{signednote.Verifier(go_witness[1]).key_id} does not verify: the note's text was altered\n"
    )


def test_a_witness_that_is_down_is_retried_with_its_failure_kept(log_key, make_app, rows):
    down = f"http://127.0.0.1:{free_port()}"
    key = signednote.generate_key("down.example/w", witness=True)[1]
    app = signed_log(make_app, [(down, key)], CHECKPOINT_INTERVAL=1)
    with pytest.raises(OSError):
        submit(app)
    publisher = app.extensions["tim_audit"].notary.publishers[0]
    publisher.start()
    deadline = time.monotonic() + 10
    while publisher.failures < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "Connection refused" in publisher.error
    assert rows("SELECT count(*) FROM cosignature") == [(0,)]


def test_the_strip_shows_who_cosigned_the_latest_checkpoint(go_witness, our_witness, make_app):
    app = signed_log(make_app, [go_witness, our_witness], WITNESS_QUORUM=2)
    submit(app, 0)
    text = app.test_client().get("/history", headers=CREDENTIALS).get_data(as_text=True)
    assert '<span class="witnesses behind">' in text
    assert "Cosigned by 1 of 2 witnesses (quorum 2):" in text
    assert "our.witness.example/w2</span> (last cosigned 0 events)" in text
    submit(app, 1)
    text = app.test_client().get("/history", headers=CREDENTIALS).get_data(as_text=True)
    assert '<span class="witnesses">' in text and "Cosigned by 2 of 2 witnesses" in text


def test_metrics_show_each_witness(log_key, go_witness, make_app):
    down = (
        f"http://127.0.0.1:{free_port()}",
        signednote.generate_key("down.example/w", witness=True)[1],
    )
    app = signed_log(make_app, [go_witness, down], METRICS=True)
    submit(app, 0)
    publisher = app.extensions["tim_audit"].notary.publishers[1]
    publisher.start()
    assert waited(lambda: publisher.failures >= 1)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'tim_audit_witness_cosigned_size{witness="go.witness.example/w1"} 5.0' in text
    assert 'tim_audit_witness_cosigned_size{witness="down.example/w"} 0.0' in text
    [failures] = [
        line
        for line in text.splitlines()
        if line.startswith("tim_audit_witness_failures{") and "down.example/w" in line
    ]
    assert float(failures.split()[-1]) >= 1  # its thread goes on retrying meanwhile


def waited(predicate, seconds=10):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def garbage():
    """A server on loopback that answers every request with bytes that are
    not HTTP, as a broken proxy might."""
    server = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()

    def serve():
        server.settimeout(0.1)
        while not stopping.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"this is not HTTP\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stopping.set()
    thread.join(5)
    server.close()


def test_a_witness_that_answers_garbage_is_counted_and_retried_not_fatal(
    log_key, garbage, make_app, caplog
):
    key = signednote.generate_key("garbage.example/w", witness=True)[1]
    app = signed_log(make_app, [(garbage, key)])
    publisher = app.extensions["tim_audit"].notary.publishers[0]
    publisher.start()
    assert waited(lambda: publisher.failures >= 2)  # it failed, waited and tried again
    assert publisher._thread.is_alive()
    assert "witness garbage.example/w: " in caplog.text


def test_a_witness_ahead_of_a_log_restored_from_a_backup_is_refused(
    go_witness, make_app, rows, tmp_path
):
    app = signed_log(make_app, [go_witness])
    submit(app)
    log = app.extensions["tim_audit"]
    backup = tmp_path / "backup.sqlite3"
    assert app.test_cli_runner().invoke(args=["backup", str(backup)]).exit_code == 0
    grow(app, 6, 7)
    submit(app)  # the witness has now cosigned 7
    log.close()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"audit.sqlite3{suffix}").unlink(missing_ok=True)
    os.replace(backup, tmp_path / "audit.sqlite3")
    restored = make_app(WITNESSES=[{"url": go_witness[0], "key": go_witness[1]}])
    for thread in restored.extensions["tim_audit"].notary.publishers:
        thread.close()
    grow(restored, 6, 6)
    with pytest.raises(
        witnesses.Refused,
        match="it cosigned a tree of 7 leaves, more than the 6 this log has signed",
    ):
        submit(restored)


def test_the_by_hand_cosignature_check_in_docs_auditing_md_works(go_witness, make_app, tmp_path):
    """The commands docs/auditing.md gives an auditor, run as written."""
    app = signed_log(make_app, [go_witness])
    submit(app)
    served(app, tmp_path / "checkpoint.cosigned")
    text = (Path(__file__).parent.parent / "docs" / "auditing.md").read_text()
    block = text[text.index('python3 - "$WITNESS" checkpoint.cosigned') :]
    block = block[: block.index("```")]
    result = subprocess.run(
        ["bash", "-e", "-c", block],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "WITNESS": go_witness[1]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "Signature Verified Successfully"
    (tmp_path / "cosigned.msg").write_bytes((tmp_path / "cosigned.msg").read_bytes() + b" ")
    altered = subprocess.run(
        block[block.index("openssl pkeyutl") :].split(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert altered.returncode != 0


def test_proofs_are_made_against_the_newest_witnessed_checkpoint(
    go_witness, log_key, make_app, tmp_path
):
    app = signed_log(make_app, [go_witness])
    runner = app.test_cli_runner()
    submit(app)
    grow(app, 6, 7)  # signed, not yet cosigned
    client = app.test_client()
    proof = tmp_path / "3.tlog-proof"
    proof.write_bytes(client.get("/history/3.tlog-proof", headers=CREDENTIALS).data)
    result = runner.invoke(
        args=["check-proof", str(proof), "--key", log_key, "--witness", go_witness[1]]
    )
    assert result.exit_code == 0, result.output
    assert "is in the tree of 5 leaves" in result.output
    assert client.get("/history/6.tlog-proof", headers=CREDENTIALS).status_code == 404
