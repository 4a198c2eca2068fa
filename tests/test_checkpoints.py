"""Signed checkpoints, proofs and the evidence archive: keygen, the notary,
the endpoints, check-proof and verify --checkpoint, and the tampering each
catches."""

import io
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import time
import zipfile

import pytest

from conftest import event, rewrite
from test_exports import started, truncate_wal
from test_tampering import run_verification
from test_zipstream import Unseekable, info_zip_tests
from tim_audit import StartupError, create_app
from tim_audit.log import db, merkle, signednote, tlog, tlogproof
from tim_audit.review import exports

ORIGIN = "im-audit.example.com/1400000001"


@pytest.fixture
def config(config):
    return {**config, "LOG_ORIGIN": ORIGIN}


@pytest.fixture
def keyed(instance_path, config):
    """A checkpoint key made with keygen, before the app starts; its verifier key."""
    result = create_app(config).test_cli_runner().invoke(args=["keygen"])
    assert result.exit_code == 0, result.output
    return result.output.splitlines()[-1]


@pytest.fixture
def notary(keyed, app):
    return app.extensions["tim_audit"].notary


@pytest.fixture
def signed(notary, filled):
    """The five-event log with one checkpoint of each tree."""
    notes = sign(notary)
    assert len(notes) == 2
    return notes


def sign(notary):
    """One round of the notary, as its thread runs it, on a connection of its own."""
    conn = db.connect(notary.path)
    try:
        return notary.sign(conn)
    finally:
        conn.close()


# --- keygen ------------------------------------------------------------------


def test_keygen_writes_a_private_key_only_its_owner_reads_and_prints_the_verifier_key(
    instance_path, keyed
):
    path = instance_path / "checkpoint.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    signer = signednote.Signer(path.read_text().strip())
    assert keyed == str(signer.verifier)
    assert keyed.startswith(f"{ORIGIN}+{signer.key_id}+")


def test_keygen_never_overwrites_a_key(instance_path, keyed, config):
    before = (instance_path / "checkpoint.key").read_bytes()
    result = create_app(config).test_cli_runner().invoke(args=["keygen"])
    assert result.exit_code == 1
    assert "exists; a key is never overwritten (see rotate-key)" in result.output
    assert (instance_path / "checkpoint.key").read_bytes() == before


def test_keygen_needs_a_log_origin(instance_path, config):
    result = create_app({**config, "LOG_ORIGIN": None}).test_cli_runner().invoke(args=["keygen"])
    assert result.exit_code == 2
    assert "set LOG_ORIGIN first" in result.output
    assert not (instance_path / "checkpoint.key").exists()


def test_keygen_does_not_create_the_database(instance_path, keyed, config):
    assert not os.path.exists(config["DATABASE"])


@pytest.mark.parametrize("origin", ["", "has space", "a+b", 5])
def test_a_log_origin_that_cannot_name_a_key_is_refused(config, origin):
    with pytest.raises(StartupError, match="LOG_ORIGIN must be the log's name"):
        create_app({**config, "LOG_ORIGIN": origin})


def test_a_key_without_a_log_origin_refuses_to_start(keyed, make_app):
    with pytest.raises(StartupError, match="so checkpoints are signed: set LOG_ORIGIN"):
        make_app(LOG_ORIGIN=None)


def test_a_key_named_for_another_origin_refuses_to_start(keyed, make_app):
    with pytest.raises(
        StartupError, match="is named 'im-audit.example.com/1400000001', but LOG_ORIGIN"
    ):
        make_app(LOG_ORIGIN="elsewhere.example/1")


# --- the notary --------------------------------------------------------------


def test_a_checkpoint_of_each_tree_is_signed_when_it_grew(signed, keyed, filled, rows):
    event_note, quarantine_note = signed
    verifier = signednote.Verifier(keyed)
    checkpoint, _ = signednote.open_checkpoint(event_note, [verifier])
    assert (checkpoint.origin, checkpoint.size) == (ORIGIN, 5)
    checkpoint, _ = signednote.open_checkpoint(quarantine_note, [verifier], f"{ORIGIN}/quarantine")
    assert checkpoint.size == 2
    assert rows("SELECT tree, size, key, note FROM checkpoint ORDER BY id") == [
        ("event", 5, keyed, event_note),
        ("quarantine", 2, keyed, quarantine_note),
    ]


def test_nothing_is_signed_while_the_trees_do_not_grow(signed, notary, filled, rows):
    assert sign(notary) == []
    filled.append(event(6))
    [note] = sign(notary)
    assert b"\n6\n" in note
    assert rows("SELECT tree, size FROM checkpoint ORDER BY id")[-1] == ("event", 6)


def test_the_notary_signs_on_its_own_every_interval(keyed, make_app, rows):
    log = make_app(CHECKPOINT_INTERVAL=1).extensions["tim_audit"]
    log.append(event(1))
    for _ in range(50):
        if rows("SELECT size FROM checkpoint"):
            break
        time.sleep(0.1)
    assert rows("SELECT tree, size FROM checkpoint") == [("event", 1)]


def test_an_inconsistent_tree_is_never_signed(signed, notary, filled, attacker, rows, caplog):
    attacker.execute("UPDATE event SET name = 'harmless' WHERE id = 2")
    rewrite(attacker)
    filled.append(event(6))
    with caplog.at_level(logging.ERROR, logger="tim_audit.log.notary"):
        assert sign(notary) == []
    assert (
        "refusing to sign the event tree of 6 leaves: it does not extend checkpoint 1"
        in caplog.text
    )
    assert rows("SELECT tree, size FROM checkpoint") == [("event", 5), ("quarantine", 2)]


def test_checkpoint_dir_gets_each_checkpoint_as_a_file(keyed, make_app, tmp_path):
    (tmp_path / "shipped").mkdir()
    log = make_app(CHECKPOINT_DIR=str(tmp_path / "shipped")).extensions["tim_audit"]
    log.append(event(1))
    [note] = sign(log.notary)
    assert os.listdir(tmp_path / "shipped") == ["event-1.checkpoint"]
    assert (tmp_path / "shipped" / "event-1.checkpoint").read_bytes() == note


def test_the_checkpoint_table_is_append_only(signed, filled):
    conn = sqlite3.connect(filled.path)
    try:
        for statement in (
            "UPDATE checkpoint SET size = 9",
            "DELETE FROM checkpoint",
            "INSERT INTO checkpoint (tree, size, root, signed_at, key, note)"
            " VALUES ('event', 4, zeroblob(32), 0, 'k', x'00')",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="checkpoint is append-only"):
                conn.execute(statement)
    finally:
        conn.close()


# --- the key the log was signed with -----------------------------------------


def test_another_key_than_the_latest_checkpoints_refuses_to_start(
    signed, filled, instance_path, make_app
):
    filled.close()
    (instance_path / "checkpoint.key").unlink()
    result = (
        create_app({"LOG_ORIGIN": ORIGIN, "DATABASE": filled.path})
        .test_cli_runner()
        .invoke(args=["keygen"])
    )
    assert result.exit_code == 0
    with pytest.raises(StartupError, match="is not the key that signed the latest checkpoint"):
        make_app()


def test_rotate_key_lets_the_next_start_sign_with_the_new_key(
    signed, keyed, filled, instance_path, make_app, rows, caplog
):
    filled.close()
    app = create_app({"LOG_ORIGIN": ORIGIN, "DATABASE": filled.path})
    result = app.test_cli_runner().invoke(args=["rotate-key"])
    assert result.exit_code == 0, result.output
    new = result.output.splitlines()[-1]
    old_id = keyed.split("+")[1]
    assert (instance_path / f"checkpoint.key.retired-{old_id}").exists()
    with caplog.at_level(logging.WARNING, logger="tim_audit.log.notary"):
        log = make_app().extensions["tim_audit"]
    assert f"checkpoint key rotated on purpose: from {keyed} to {new}" in caplog.text
    notes = sign(log.notary)
    assert [signednote.open_checkpoint(notes[0], [signednote.Verifier(new)])[0].size] == [5]
    # The old checkpoints stay valid, under the old key.
    [(old_note,)] = rows("SELECT note FROM checkpoint WHERE id = 1")
    assert signednote.open_checkpoint(old_note, [signednote.Verifier(keyed)])[0].size == 5


def test_two_rotations_keep_every_checkpoint_verifiable(signed, filled, make_app, runner):
    for number in (6, 7):
        filled.close()
        app = create_app({"LOG_ORIGIN": ORIGIN, "DATABASE": filled.path})
        assert app.test_cli_runner().invoke(args=["rotate-key"]).exit_code == 0
        filled = make_app().extensions["tim_audit"]
        filled.append(event(number))
        assert len(sign(filled.notary)) == 2  # the event tree, and the quarantine's re-signed
    result = runner.invoke(args=["verify"])
    assert (result.exit_code, result.output.split()[:2]) == (0, ["OK", "7"])


def test_a_clean_stop_signs_what_was_written_since_the_last_round(keyed, make_app, rows):
    """So a log stopped before its first checkpoint is signed, and its next
    start needs no CHECKPOINT_ADOPT."""
    log = make_app(CHECKPOINT_INTERVAL=3600).extensions["tim_audit"]
    log.append(event(1))
    log.close()
    assert rows("SELECT tree, size FROM checkpoint") == [("event", 1)]
    log = make_app(CHECKPOINT_INTERVAL=3600).extensions["tim_audit"]
    log.append(event(2))
    assert len(sign(log.notary)) == 1


# --- the public endpoints ----------------------------------------------------


def test_get_checkpoint_serves_the_latest_byte_exact_without_sign_in(signed, client):
    response = client.get("/checkpoint")
    assert (response.status_code, response.mimetype) == (200, "text/plain")
    assert response.data == signed[0]


def test_get_checkpoint_before_any_is_a_404(client):
    response = client.get("/checkpoint")
    assert (response.status_code, response.data) == (404, b"No checkpoint has been signed yet.\n")


def test_consistency_endpoint_gives_the_proof_between_two_sizes(
    signed, notary, filled, client, keyed
):
    for number in range(6, 12):
        filled.append(event(number))
    [later] = sign(notary)
    old, _ = signednote.open_checkpoint(signed[0], [signednote.Verifier(keyed)])
    new, _ = signednote.open_checkpoint(later, [signednote.Verifier(keyed)])
    response = client.get("/checkpoint/consistency?from=5")
    assert response.status_code == 200
    proof = tlogproof.parse_hashes(response.data)
    tlog.verify_consistency(5, old.root, 11, new.root, proof)
    assert client.get("/checkpoint/consistency?from=5&to=11").data == response.data


@pytest.mark.parametrize(
    "query, message",
    [
        ("", b"from must be a tree size, a whole number\n"),
        ("from=x", b"from must be a tree size, a whole number\n"),
        ("from=-1", b"from must be a tree size, a whole number\n"),
        ("from=0", b"from and to must be 0 < from <= to <= 5, the tree's size\n"),
        ("from=3&to=2", b"from and to must be 0 < from <= to <= 5, the tree's size\n"),
        ("from=3&to=6", b"from and to must be 0 < from <= to <= 5, the tree's size\n"),
        ("from=3&to=99999999999999999999", b"to must be a tree size, a whole number\n"),
    ],
)
def test_consistency_endpoint_refuses_bad_sizes(signed, client, query, message):
    response = client.get(f"/checkpoint/consistency?{query}")
    assert (response.status_code, response.data) == (400, message)


def test_consistency_proof_command_prints_what_the_endpoint_serves(signed, client, runner):
    result = runner.invoke(args=["consistency-proof", "3"])
    assert result.exit_code == 0
    assert result.output.encode() == client.get("/checkpoint/consistency?from=3").data
    assert runner.invoke(args=["consistency-proof", "3", "9"]).exit_code == 2


# --- proofs on the review side ---------------------------------------------------


def test_an_events_proof_checks_with_check_proof(signed, get, runner, keyed, tmp_path):
    response = get("/history/3.tlog-proof")
    assert response.status_code == 200
    proved = tlogproof.check_proof(response.data, keyed)
    assert (proved.index, proved.size, proved.origin) == (2, 5, ORIGIN)
    (tmp_path / "3.tlog-proof").write_bytes(response.data)
    result = runner.invoke(args=["check-proof", str(tmp_path / "3.tlog-proof"), "--key", keyed])
    assert result.exit_code == 0
    assert result.output.startswith(
        f"OK event 3 (leaf 2, {len(proved.leaf)} bytes of canonical data)"
        f" is in the tree of 5 leaves of {ORIGIN}, signed by key"
    )


def test_a_proof_needs_sign_in(signed, client):
    assert client.get("/history/3.tlog-proof").status_code == 401


def test_no_proof_of_an_event_not_yet_in_a_checkpoint(signed, filled, get):
    filled.append(event(6))
    response = get("/history/6.tlog-proof")
    assert response.status_code == 404
    assert "not in a signed checkpoint yet" in response.get_data(as_text=True)
    assert get("/history/99.tlog-proof").status_code == 404


def test_the_event_page_says_which_checkpoint_includes_it(signed, get, keyed):
    text = get("/history/3").get_data(as_text=True)
    assert (
        f'Proof: included in checkpoint 1 (5 events),\n    signed by key <code title="{keyed}">'
        f"{keyed.split('+')[1]}</code>" in text
    )


def test_the_integrity_strip_shows_the_latest_checkpoint(signed, get, keyed):
    text = get("/history").get_data(as_text=True)
    assert 'Checkpoint of <a href="/checkpoints">5 events</a>' in text
    assert f'by key <code title="{keyed}">{keyed.split("+")[1]}</code>' in text


def test_the_checkpoints_page_lists_them(signed, get):
    text = get("/checkpoints").get_data(as_text=True)
    assert text.count("<td>event</td>") == 1 and text.count("<td>quarantine</td>") == 1
    assert get("/checkpoints/1.checkpoint").data == signed[0]


# --- the evidence archive ----------------------------------------------------


def test_the_evidence_archive_holds_each_events_json_and_proof(signed, get, keyed, filled):
    filled.append(event(6, owner="someone else"))
    response = get("/history.evidence?owner=leckie")
    assert (response.status_code, response.mimetype) == (200, "application/zip")
    archive = zipfile.ZipFile(io.BytesIO(response.data))
    assert sorted(archive.namelist()) == sorted(
        ["checkpoint", "verifier.key", "README.txt"]
        + [f"events/{n}.{kind}" for n in range(1, 6) for kind in ("json", "tlog-proof")]
    )
    assert archive.read("checkpoint") == signed[0]
    assert archive.read("verifier.key").decode().strip() == keyed
    for number in range(1, 6):
        proved = tlogproof.check_proof(archive.read(f"events/{number}.tlog-proof"), keyed)
        assert proved.index == number - 1
        assert json.loads(archive.read(f"events/{number}.json"))["id"] == number
    assert "check-proof" in archive.read("README.txt").decode()


def test_the_evidence_archive_is_the_zip_zipfile_writes_with_every_zipinfo_kept(
    signed, get, monkeypatch
):
    monkeypatch.setattr(exports, "CHUNK_ROWS", 2)
    served = get("/history.evidence").data
    read = zipfile.ZipFile(io.BytesIO(served))
    assert read.testzip() is None
    out = Unseekable()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as plain:
        for member in read.infolist():
            info = zipfile.ZipInfo(member.filename, member.date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            plain.writestr(info, read.read(member))
    assert len(read.infolist()) == 13
    assert out.written == served


def test_events_newer_than_the_checkpoint_are_left_out_and_the_readme_says_so(signed, get, filled):
    filled.append(event(6))
    archive = zipfile.ZipFile(io.BytesIO(get("/history.evidence").data))
    assert "events/6.json" not in archive.namelist()
    assert (
        "1 newer matching events are not in this checkpoint yet"
        in archive.read("README.txt").decode()
    )


def test_an_evidence_archive_in_chunks_of_a_bounded_size_holds_the_same_files(
    notary, log, get, monkeypatch
):
    for number, size in enumerate([10, 250, 40, 40, 30, 0, 60], start=1):
        log.append(event(number, raw=bytes([64 + number]) * size, members=()))
    sign(notary)
    whole = zipfile.ZipFile(io.BytesIO(get("/history.evidence").data))
    monkeypatch.setattr(exports, "CHUNK_BYTES", 100)  # chunks of events 7-5, 4-3, 2, 1
    chunked = zipfile.ZipFile(io.BytesIO(get("/history.evidence").data))
    assert [(name, chunked.read(name)) for name in chunked.namelist()] == [
        (name, whole.read(name)) for name in whole.namelist()
    ]
    assert [name for name in whole.namelist() if name.endswith(".json")] == [
        f"events/{number}.json" for number in range(7, 0, -1)
    ]


def test_a_stalled_evidence_archive_holds_no_read_snapshot(
    signed, client, filled, app, monkeypatch
):
    monkeypatch.setattr(exports, "CHUNK_ROWS", 2)
    first, rest = started(client, "/history.evidence")
    filled.append(event(6))
    reset = truncate_wal(app.config["DATABASE"])
    archive = zipfile.ZipFile(io.BytesIO(first + b"".join(rest)))
    assert sorted(name for name in archive.namelist() if name.endswith(".json")) == [
        f"events/{n}.json" for n in range(1, 6)
    ]
    assert reset == ((0, 0, 0), 0)


def test_info_zip_tests_the_evidence_archive_ok(signed, get, tmp_path):
    code, said, names = info_zip_tests(get("/history.evidence").data, tmp_path)
    assert (code, said) == (0, "")
    assert names[:2] == ["checkpoint", "verifier.key"] and names[-1] == "README.txt"
    assert len(names) == 13


def test_no_evidence_before_any_checkpoint(filled, get):
    assert get("/history.evidence").status_code == 404


# --- tampering caught by check-proof and verify ------------------------------


def test_check_proof_fails_an_edited_event(signed, get, runner, keyed, tmp_path):
    proof = tlogproof.parse_proof(get("/history/3.tlog-proof").data)
    edited = proof._replace(extra=proof.extra.replace(b"group 3", b"group X"))
    (tmp_path / "p").write_bytes(tlogproof.format_proof(edited))
    result = runner.invoke(args=["check-proof", str(tmp_path / "p"), "--key", keyed])
    assert result.exit_code == 1
    assert result.output.startswith(
        "FAIL the inclusion proof does not lead from the leaf hash to the root"
    )


def test_check_proof_fails_a_proof_moved_to_another_event(signed, get, runner, keyed, tmp_path):
    proof = tlogproof.parse_proof(get("/history/3.tlog-proof").data)
    (tmp_path / "p").write_bytes(tlogproof.format_proof(proof._replace(index=3)))
    result = runner.invoke(args=["check-proof", str(tmp_path / "p"), "--key", keyed])
    assert result.exit_code == 1
    assert result.output.startswith("FAIL the inclusion proof does not lead")


def test_check_proof_fails_a_checkpoint_signed_with_another_key(
    signed, get, runner, keyed, tmp_path
):
    proof = tlogproof.parse_proof(get("/history/3.tlog-proof").data)
    other = signednote.Signer(signednote.generate_key(ORIGIN)[0])
    checkpoint = signednote.parse_checkpoint(
        signednote.open_note(proof.checkpoint, [signednote.Verifier(keyed)]).text
    )
    (tmp_path / "p").write_bytes(
        tlogproof.format_proof(
            proof._replace(checkpoint=signednote.sign_checkpoint(checkpoint, other))
        )
    )
    result = runner.invoke(args=["check-proof", str(tmp_path / "p"), "--key", keyed])
    assert result.exit_code == 1
    assert result.output.startswith(
        f"FAIL the note is not signed by {ORIGIN}+{keyed.split('+')[1]}"
    )


def test_check_proof_fails_a_checkpoint_of_another_origin(signed, get, runner, keyed, tmp_path):
    (tmp_path / "p").write_bytes(get("/history/3.tlog-proof").data)
    result = runner.invoke(
        args=["check-proof", str(tmp_path / "p"), "--key", keyed, "--origin", "elsewhere.example/1"]
    )
    assert (result.exit_code, result.output) == (
        1,
        f"FAIL the checkpoint is of the log '{ORIGIN}', not 'elsewhere.example/1'\n",
    )


def test_check_proof_needs_no_database_and_no_configuration(signed, get, keyed, tmp_path):
    (tmp_path / "p").write_bytes(get("/history/3.tlog-proof").data)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "TIM_AUDIT_INSTANCE_PATH": str(empty),
    }
    result = subprocess.run(
        [sys.executable, "-m", "tim_audit", "check-proof", str(tmp_path / "p"), "--key", keyed],
        env=env,
        cwd=empty,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK event 3")
    assert os.listdir(empty) == []


@pytest.fixture
def kept(signed, tmp_path):
    """The event checkpoint, kept off the box."""
    path = tmp_path / "kept.checkpoint"
    path.write_bytes(signed[0])
    return str(path)


def test_verify_checks_a_kept_checkpoint_against_the_grown_log(kept, filled, runner):
    filled.append(event(6))
    result = runner.invoke(args=["verify", "--checkpoint", kept])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].endswith(": the event tree of 6 leaves extends it")


def forget_checkpoints(attacker):
    """Remove every trace of the stored checkpoints from the file, as an
    attacker who knows the schema would: only a kept one remains."""
    attacker.executescript("DELETE FROM checkpoint; DELETE FROM meta WHERE key LIKE 'signed:%'")


def test_verify_fails_a_truncated_log_at_its_stored_checkpoint(signed, attacker, runner):
    attacker.executescript(
        "DELETE FROM event WHERE id = 5; DELETE FROM event_member WHERE event_id = 5;"
        " DELETE FROM event_tree WHERE id >= 7"
    )
    result = runner.invoke(args=["verify"])
    assert (result.exit_code, result.output) == (
        1,
        "FAIL checkpoint 5: the stored event checkpoint records 5 leaves, but the event tree"
        " has 4\n",
    )


def test_verify_checkpoint_fails_a_truncated_log(kept, attacker, runner):
    attacker.executescript(
        "DELETE FROM event WHERE id = 5; DELETE FROM event_member WHERE event_id = 5;"
        " DELETE FROM event_tree WHERE id >= 7"
    )
    forget_checkpoints(attacker)
    result = runner.invoke(args=["verify", "--checkpoint", kept])
    assert (result.exit_code, result.output) == (
        1,
        "FAIL the event tree has 4 leaves but the checkpoint records 5: the log was truncated\n",
    )


def test_verify_fails_a_log_rewritten_under_its_stored_checkpoints(signed, attacker, runner):
    attacker.execute("UPDATE event SET name = 'harmless' WHERE id = 2")
    rewrite(attacker)
    result = runner.invoke(args=["verify"])
    assert (result.exit_code, result.output) == (
        1,
        "FAIL checkpoint 5: the stored event checkpoint has another root than the event tree"
        " at 5 leaves\n",
    )


def test_verify_checkpoint_fails_a_log_rewritten_and_rechained(kept, filled, attacker, runner):
    attacker.execute("UPDATE event SET name = 'harmless' WHERE id = 2")
    rewrite(attacker)
    forget_checkpoints(attacker)
    assert runner.invoke(args=["verify", "--checkpoint", kept]).output == (
        "FAIL two trees of 5 leaves have different root hashes: the log was rewritten,"
        " or a root hash altered\n"
    )
    filled.append(event(6))
    alone = runner.invoke(args=["verify"])
    assert alone.exit_code == 0, alone.output  # alone, it verifies
    result = runner.invoke(args=["verify", "--checkpoint", kept])
    assert (result.exit_code, result.output) == (
        1,
        "FAIL the consistency proof does not lead to the root hash of the earlier tree of 5"
        " leaves: its first 5 leaves were rewritten, or the proof altered\n",
    )


def test_verify_with_another_key_fails_the_stored_checkpoints(signed, runner):
    other = signednote.generate_key(ORIGIN)[1]
    result = runner.invoke(args=["verify", "--key", other])
    assert result.exit_code == 1
    assert result.output.startswith(
        "FAIL checkpoint 5: the stored event checkpoint does not verify: the note is not"
        f" signed by {'+'.join(other.split('+')[:2])}:"
    )


def test_verify_checkpoint_fails_a_checkpoint_signed_with_another_key(kept, runner, attacker):
    forget_checkpoints(attacker)
    other = signednote.generate_key(ORIGIN)[1]
    result = runner.invoke(args=["verify", "--checkpoint", kept, "--key", other])
    assert result.exit_code == 1
    assert result.output.startswith(
        f"FAIL the note is not signed by {'+'.join(other.split('+')[:2])}:"
    )


def test_verify_fails_a_checkpoint_inserted_with_a_foreign_key(signed, filled, attacker, runner):
    signer, _ = signednote.generate_key(ORIGIN)
    signer = signednote.Signer(signer)
    filled.append(event(6))
    root = merkle.root(attacker, "event", 6)
    note = signednote.sign_checkpoint(signednote.Checkpoint(ORIGIN, 6, root), signer)
    attacker.execute(
        "INSERT INTO checkpoint (tree, size, root, signed_at, key, note) VALUES (?, ?, ?, ?, ?, ?)",
        ("event", 6, root, 0, str(signer.verifier), note),
    )
    result = runner.invoke(args=["verify"])
    assert result.exit_code == 1
    assert result.output.startswith(
        "FAIL checkpoint 6: the stored event checkpoint does not verify: the note is not signed by"
    )


def test_verify_checkpoint_needs_a_verifier_key(kept, runner, instance_path):
    (instance_path / "checkpoint.key").unlink()
    result = runner.invoke(args=["verify", "--checkpoint", kept])
    assert result.exit_code == 2
    assert "--checkpoint needs the log's verifier key" in result.output


def test_verify_without_a_key_checks_the_stored_roots_and_says_the_signatures_are_not(
    signed, runner, instance_path
):
    (instance_path / "checkpoint.key").unlink()
    result = runner.invoke(args=["verify"])
    assert result.exit_code == 0
    assert result.output.splitlines()[0] == (
        "checkpoints: 2 agree with the trees; their signatures are not checked: no verifier"
        " key here (give --key)"
    )


def test_verify_checkpoint_fails_a_checkpoint_of_another_origin(
    signed, keyed, runner, tmp_path, instance_path
):
    signer = signednote.Signer((instance_path / "checkpoint.key").read_text().strip())
    checkpoint = signednote.parse_checkpoint(
        signednote.open_note(signed[0], [signednote.Verifier(keyed)]).text
    )
    (tmp_path / "c").write_bytes(
        signednote.sign_checkpoint(checkpoint._replace(origin="elsewhere.example/1"), signer)
    )
    result = runner.invoke(args=["verify", "--checkpoint", str(tmp_path / "c")])
    assert (result.exit_code, result.output) == (
        1,
        f"FAIL the checkpoint is of the log 'elsewhere.example/1', not '{ORIGIN}' or its quarantine\n",
    )


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "before=-1"])
def test_the_checkpoints_page_refuses_a_bad_query_with_a_400(get, query):
    response = get(f"/checkpoints?{query}")
    assert response.status_code == 400
    assert query.split("=")[0] in response.get_data(as_text=True)


# --- the log never forgets what it signed ------------------------------------


def test_a_missing_key_on_a_log_with_checkpoints_stops_start_up_with_one_line(
    signed, filled, make_app, instance_path
):
    filled.close()
    (instance_path / "checkpoint.key").unlink()
    with pytest.raises(StartupError) as caught:
        make_app()
    assert str(caught.value) == (
        f"tim-audit cannot start: the checkpoint key {instance_path / 'checkpoint.key'} does not"
        " exist, but this log has signed checkpoints: put the key back (or set CHECKPOINT_KEY"
        " to it)"
    )


def test_reopening_the_log_restarts_the_notary(keyed, make_app, rows):
    log = make_app(CHECKPOINT_INTERVAL=1).extensions["tim_audit"]
    log.close()
    log.open()
    log.append(event(1))
    deadline = time.monotonic() + 10
    while rows("SELECT count(*) FROM checkpoint") == [(0,)]:
        assert time.monotonic() < deadline, "the reopened notary signed nothing"
        time.sleep(0.05)
    assert rows("SELECT tree, size FROM checkpoint") == [("event", 1)]


@pytest.fixture
def unsigned(make_app, config):
    """Five events written before there was a key: nothing outside the file
    vouches for them."""
    log = make_app().extensions["tim_audit"]
    for number in range(1, 6):
        log.append(event(number))
    log.close()
    result = create_app(config).test_cli_runner().invoke(args=["keygen"])
    assert result.exit_code == 0, result.output
    return log


def test_no_first_checkpoint_is_signed_over_events_from_before_signing(
    unsigned, make_app, rows, caplog
):
    log = make_app().extensions["tim_audit"]
    assert sign(log.notary) == []
    assert rows("SELECT count(*) FROM checkpoint") == [(0,)]
    assert (
        "refusing to sign the event tree of 5 leaves: it had 5 leaves when signing started,"
        " and nothing outside the file vouches for them" in caplog.text
    )


def test_checkpoint_adopt_signs_them_on_purpose_and_says_so(unsigned, make_app, rows, caplog):
    log = make_app(CHECKPOINT_ADOPT=True).extensions["tim_audit"]
    assert len(sign(log.notary)) == 1
    assert rows("SELECT tree, size FROM checkpoint") == [("event", 5)]
    assert rows("SELECT value FROM meta WHERE key = 'adopted:event'") == [
        ("5 rows, by CHECKPOINT_ADOPT",)
    ]
    assert "CHECKPOINT_ADOPT is set: the first checkpoint of a tree may be signed" in caplog.text


def test_a_notary_that_saw_its_checkpoints_removed_while_it_ran_signs_nothing(
    signed, filled, attacker, rows, caplog
):
    attacker.executescript("DELETE FROM checkpoint; DELETE FROM meta WHERE key LIKE 'signed:%'")
    filled.append(event(6))
    assert sign(filled.notary) == []
    assert rows("SELECT count(*) FROM checkpoint") == [(0,)]
    assert "its checkpoint of 5 leaves is gone from the log" in caplog.text


def test_the_notary_refuses_a_stored_checkpoint_whose_row_and_note_differ(
    signed, filled, attacker, make_app, rows
):
    attacker.execute("UPDATE event SET name = 'harmless' WHERE id = 2")
    rewrite(attacker)
    root = merkle.root(attacker, "event", 5)
    attacker.execute("UPDATE checkpoint SET root = ? WHERE tree = 'event'", (root,))
    filled.close()
    with pytest.raises(
        StartupError,
        match="this log does not extend what it signed before: checkpoint 5: the stored event"
        " checkpoint's row and note differ",
    ):
        make_app()
    assert rows("SELECT size FROM checkpoint WHERE tree = 'event'") == [(5,)]


def test_a_log_whose_checkpoints_were_removed_does_not_start(
    signed, filled, attacker, make_app, rows
):
    attacker.execute("DELETE FROM checkpoint")
    filled.close()
    with pytest.raises(
        StartupError,
        match="checkpoint 5: the log records a first event checkpoint, but none is stored",
    ):
        make_app()
    assert rows("SELECT count(*) FROM checkpoint") == [(0,)]


def test_a_missing_checkpoint_dir_stops_start_up(keyed, make_app, tmp_path):
    with pytest.raises(StartupError, match="CHECKPOINT_DIR .*/nowhere does not exist: create it"):
        make_app(CHECKPOINT_DIR=str(tmp_path / "nowhere"))


def test_a_refused_start_up_fills_no_derived_table(
    keyed, filled, attacker, make_app, tmp_path, rows
):
    """A log made before the derived tables is filled at start-up, which
    at 10M events is minutes of writing: not for a log the notary refuses."""
    attacker.execute("DELETE FROM event_hour")
    filled.close()
    with pytest.raises(StartupError, match="CHECKPOINT_DIR .*/nowhere does not exist: create it"):
        make_app(CHECKPOINT_DIR=str(tmp_path / "nowhere"))
    assert rows("SELECT count(*) FROM event_hour") == [(0,)]


@pytest.fixture
def shipped(keyed, make_app, tmp_path):
    """A log whose five events were signed, and the checkpoint shipped to CHECKPOINT_DIR."""
    folder = tmp_path / "shipped"
    folder.mkdir()
    log = make_app(CHECKPOINT_DIR=str(folder)).extensions["tim_audit"]
    for number in range(1, 6):
        log.append(event(number))
    sign(log.notary)
    log.close()
    assert sorted(os.listdir(folder)) == ["event-5.checkpoint"]
    return folder


def test_a_log_begun_again_beside_its_checkpoint_dir_refuses_to_start(shipped, make_app, tmp_path):
    os.rename(tmp_path / "audit.sqlite3", tmp_path / "aside.sqlite3")
    with pytest.raises(
        StartupError,
        match=f"this log does not extend what it signed before: checkpoint 5: {shipped}/"
        "event-5.checkpoint records 5 leaves, but the event tree has 0",
    ):
        make_app(CHECKPOINT_DIR=str(shipped))
    assert sorted(os.listdir(shipped)) == ["event-5.checkpoint"]


def test_verify_checks_the_log_against_its_checkpoint_dir(shipped, config, tmp_path):
    conn = sqlite3.connect(tmp_path / "audit.sqlite3", isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    conn.execute("UPDATE event SET name = 'harmless' WHERE id = 2")
    rewrite(conn)
    conn.executescript("DELETE FROM checkpoint; DELETE FROM meta WHERE key <> 'chain'")
    conn.close()
    runner = create_app({**config, "CHECKPOINT_DIR": str(shipped)}).test_cli_runner()
    assert runner.invoke(args=["verify"]).output == (
        f"FAIL checkpoint 5: {shipped}/event-5.checkpoint has another root than the event tree"
        " at 5 leaves\n"
    )


def test_the_strip_turns_red_when_a_stored_checkpoint_contradicts_the_rows(
    signed, attacker, app, get
):
    attacker.execute("UPDATE event SET name = 'harmless' WHERE id = 2")
    rewrite(attacker)
    run_verification(app)
    text = get("/history").get_data(as_text=True)
    assert 'class="integrity broken"' in text
    assert (
        "checkpoint 5: the stored event checkpoint has another root than the event tree at 5"
        " leaves" in text
    )


def test_a_row_that_fails_verification_offers_no_proof_and_says_why(signed, filled, attacker, get):
    attacker.execute("UPDATE event SET name = 'harmless' WHERE id = 2")
    text = get("/history/2").get_data(as_text=True)
    assert "This row does NOT verify" in text
    assert "Proof: none. This row does not verify (above), so no proof of it is offered" in text
    assert "Proof: included" not in text and "Download its proof" not in text
    response = get("/history/2.tlog-proof")
    assert response.status_code == 409
    assert (
        "event row 2: no proof leads from it to the root that checkpoint of 5 events signed"
        in response.get_data(as_text=True)
    )


def test_the_archive_of_a_tampered_log_marks_each_event_that_fails(signed, filled, attacker, get):
    attacker.execute("UPDATE event SET name = 'harmless' WHERE id = 2")
    archive = zipfile.ZipFile(io.BytesIO(get("/history.evidence").data))
    names = set(archive.namelist())
    assert "events/2.FAILS.txt" in names and "events/2.tlog-proof" not in names
    assert {f"events/{n}.tlog-proof" for n in (1, 3, 4, 5)} <= names
    assert (
        archive.read("events/2.FAILS.txt")
        .decode()
        .startswith("No proof: event row 2: no proof leads from it to the root that checkpoint")
    )
    assert "1 of them have NO PROOF against this checkpoint" in archive.read("README.txt").decode()


def test_a_rewritten_and_rechained_row_offers_no_proof_on_its_page(signed, filled, attacker, get):
    attacker.execute("UPDATE event SET name = 'harmless' WHERE id = 2")
    rewrite(attacker)  # the chain verifies again: only the signed checkpoint tells
    text = get("/history/2").get_data(as_text=True)
    assert "This row does NOT verify" not in text
    assert "Proof: No proof: event row 2: no proof leads from it to the root" in text
    assert "Download its proof" not in text


def test_a_stored_key_that_is_no_key_renders_and_verify_names_it(signed, attacker, get, runner):
    attacker.execute("UPDATE checkpoint SET key = 'no plus here' WHERE id = 1")
    for page in ("/history", "/checkpoints", "/history/1"):
        assert get(page).status_code == 200, page
    assert "no plus here" in get("/checkpoints").get_data(as_text=True)
    assert runner.invoke(args=["verify"]).output == (
        "FAIL checkpoint 5: the stored event checkpoint's row and note differ\n"
    )


def test_a_stored_note_that_is_not_utf_8_leaves_a_whole_archive_and_fails_verify(
    signed, attacker, get, runner
):
    attacker.execute("UPDATE checkpoint SET note = CAST(x'ff' || note AS BLOB) WHERE id = 1")
    response = get("/history.evidence")
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(response.data))
    assert archive.testzip() is None
    assert archive.read("events/3.FAILS.txt").decode().startswith("No proof: checkpoint ")
    assert "its checkpoint's note does not parse" in archive.read("README.txt").decode()
    result = runner.invoke(args=["verify"])
    assert (result.exit_code, result.output) == (
        1,
        "FAIL checkpoint 5: the stored event checkpoint does not verify: the note is not UTF-8\n",
    )
