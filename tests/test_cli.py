import os
import pathlib
import re
import sqlite3
import subprocess
import sys

import pytest

from conftest import event, serving
from tencent import CREATE, SDKAPPID, TOKEN, group_body, sample
from werkzeug.security import check_password_hash

from tim_audit import create_app

OK_LINE = re.compile(r"OK (\d+) ([0-9a-f]{64}) quarantine (\d+) ([0-9a-f]{64})")
GENESIS = "0" * 64


@pytest.fixture
def three_events(post, rows):
    for number in range(3):
        assert post(group_body(GroupId=f"@TGS#{number}")).status_code == 200
    return [h for (h,) in rows("SELECT hash FROM event ORDER BY id")]


@pytest.fixture
def unopened(config, tmp_path):
    """The app as an operator's command gets it, before any server has
    started: DATABASE does not exist yet."""
    return create_app({**config, "DATABASE": str(tmp_path / "live" / "audit.sqlite3")})


def test_init_db_creates_the_log_with_its_chain_kind(unopened, tmp_path):
    (tmp_path / "live").mkdir()
    runner = unopened.test_cli_runner()
    for _ in range(2):
        result = runner.invoke(args=["init-db"])
        assert (
            result.output == f"Initialized the database at {tmp_path / 'live' / 'audit.sqlite3'}\n"
        )
    conn = sqlite3.connect(tmp_path / "live" / "audit.sqlite3")
    assert conn.execute("SELECT key, value FROM meta").fetchall() == [
        ("chain", "sha256"),
        ("trees", "from the first row"),
    ]
    assert {
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    } >= {
        "event",
        "event_member",
        "quarantine",
        "meta",
    }
    conn.close()


@pytest.mark.parametrize(
    "args",
    [
        ["verify"],
        ["backup", "COPY"],
        ["send-sample", "http://127.0.0.1:9/callback"],
        ["hash-password"],
    ],
)
def test_operator_commands_never_create_the_live_log(unopened, tmp_path, args):
    (tmp_path / "live").mkdir()
    args = [str(tmp_path / "copy.sqlite3") if arg == "COPY" else arg for arg in args]
    unopened.test_cli_runner().invoke(args=args, input="a long enough password\n" * 2)
    assert list((tmp_path / "live").iterdir()) == []


def test_verify_of_another_file_ignores_database(make_app, unopened, tmp_path):
    other = make_app(DATABASE=str(tmp_path / "other.sqlite3"))
    other.extensions["tim_audit"].append(event(1))
    result = unopened.test_cli_runner().invoke(
        args=["verify", "--database", str(tmp_path / "other.sqlite3")]
    )
    assert result.exit_code == 0
    assert result.output.startswith("OK 1 ")
    assert not (tmp_path / "live").exists()


@pytest.mark.parametrize("args", [["verify"], ["backup", "COPY"]])
def test_reading_commands_leave_the_live_log_unchanged(make_app, tmp_path, args):
    app = make_app()
    app.extensions["tim_audit"].append(event(1))
    app.extensions["tim_audit"].close()
    """SQLite's readers of a WAL file make its -shm index (and an empty
    -wal) as they need them; the database itself is not written."""
    live = pathlib.Path(app.config["DATABASE"])
    before = live.read_bytes()
    args = [str(tmp_path / "copy.sqlite3") if arg == "COPY" else arg for arg in args]
    assert app.test_cli_runner().invoke(args=args).exit_code == 0
    assert live.read_bytes() == before
    wal = pathlib.Path(f"{live}-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_verify_says_when_there_is_no_log_yet(unopened, tmp_path):
    result = unopened.test_cli_runner().invoke(args=["verify"])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: there is no log at {tmp_path / 'live' / 'audit.sqlite3'}: the ingest server"
        " creates it when it first starts\n"
    )


def test_verify_ends_with_the_heads_of_both_chains(runner, post, rows, three_events):
    post(b"{oops")
    [(quarantine_head,)] = rows("SELECT hash FROM quarantine")
    result = runner.invoke(args=["verify"])
    assert result.exit_code == 0
    last = result.output.splitlines()[-1]
    assert OK_LINE.fullmatch(last)
    assert last == f"OK 3 {three_events[-1]} quarantine 1 {quarantine_head}"


def test_verify_of_an_empty_log(runner):
    result = runner.invoke(args=["verify"])
    assert (result.exit_code, result.output) == (0, f"OK 0 {GENESIS} quarantine 0 {GENESIS}\n")


def test_verify_fails_naming_the_first_bad_row(runner, attacker):
    attacker.execute("UPDATE event SET owner = 'mallory' WHERE id = 2")
    result = runner.invoke(args=["verify"])
    assert result.exit_code == 1
    assert (
        result.output
        == "FAIL event row 2: hash does not match the row's contents and the row before it\n"
    )


@pytest.mark.parametrize("form", ["N:HASH", "OK N HASH"])
def test_verify_passes_against_an_older_anchor_of_the_event_chain(runner, post, three_events, form):
    anchor = f"3:{three_events[-1]}" if form == "N:HASH" else f"OK 3 {three_events[-1]}"
    post(group_body(GroupId="@TGS#later"))
    result = runner.invoke(args=["verify", "--anchor", anchor])
    assert (result.exit_code, result.output.split()[:2]) == (0, ["OK", "4"])


def test_verify_takes_the_line_it_printed_as_its_anchor(runner, post, three_events):
    post(b"{oops")
    line = runner.invoke(args=["verify"]).output.splitlines()[-1]
    post(group_body(GroupId="@TGS#later"))
    post(b"{oops again")
    result = runner.invoke(args=["verify", "--anchor", line])
    assert result.exit_code == 0
    assert OK_LINE.fullmatch(result.output.strip()).group(1, 3) == ("4", "2")


def test_verify_fails_against_an_anchor_the_log_no_longer_extends(runner, three_events):
    result = runner.invoke(args=["verify", "--anchor", f"3:{'a' * 64}"])
    assert result.exit_code == 1
    assert result.output.startswith("FAIL event row 3: its hash differs from the anchor")
    result = runner.invoke(args=["verify", "--anchor", f"9:{three_events[-1]}"])
    assert result.exit_code == 1
    assert result.output.startswith("FAIL event row 9: missing: the log has 3 rows")


def test_the_anchor_catches_a_deleted_newest_quarantine_row(runner, attacker):
    line = runner.invoke(args=["verify"]).output.splitlines()[-1]
    # Its stored tree hashes too (a tree of one leaf stores one hash).
    attacker.executescript(
        "DELETE FROM quarantine WHERE id = 2; DELETE FROM quarantine_tree WHERE id >= 1"
    )
    assert runner.invoke(args=["verify"]).exit_code == 0  # alone, a shorter chain still verifies
    result = runner.invoke(args=["verify", "--anchor", line])
    assert (result.exit_code, result.output) == (
        1,
        "FAIL quarantine row 2: missing: the log has 1 rows but the anchor records 2, so it was truncated\n",
    )


@pytest.mark.parametrize("anchor", ["three", "OK 3", f"OK 3 {'a' * 64} 0 {'b' * 64}"])
def test_verify_refuses_a_malformed_anchor(runner, anchor):
    result = runner.invoke(args=["verify", "--anchor", anchor])
    assert result.exit_code == 2
    assert "an anchor is the last line of an earlier verify" in result.output


def test_verify_says_when_a_file_is_not_a_log(runner, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a database, but long enough to have a header page\n" * 20)
    result = runner.invoke(args=["verify", "--database", str(path)])
    assert (result.exit_code, result.output) == (
        1,
        "Error: cannot read the log: file is not a database\n",
    )


def test_send_sample_posts_a_signed_callback(live_server, runner, rows):
    result = runner.invoke(args=["send-sample", f"{live_server.url}/callback"])
    assert result.exit_code == 0
    assert result.output == (
        '200 {"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}\nstored as event 1\n'
    )
    assert rows("SELECT type, name, member_count, client_ip, opt_platform FROM event") == [
        ("Public", "tim-audit sample group", 2, "127.0.0.1", "RESTAPI"),
    ]


def test_send_sample_sends_a_given_body(live_server, runner, rows, tmp_path):
    path = tmp_path / "body.json"
    path.write_bytes(sample("community-no-owner"))
    result = runner.invoke(args=["send-sample", "--body", str(path), f"{live_server.url}/callback"])
    assert result.exit_code == 0
    assert rows("SELECT raw FROM event") == [(sample("community-no-owner"),)]


@pytest.mark.parametrize(
    "body, code", [(b"{oops", 60021), (b"[1, 2]", 60022), (b"\xff\xfe", 60021)]
)
def test_send_sample_sends_a_body_that_is_not_an_object_to_be_quarantined(
    live_server, runner, rows, tmp_path, body, code
):
    path = tmp_path / "body.json"
    path.write_bytes(body)
    result = runner.invoke(args=["send-sample", "--body", str(path), f"{live_server.url}/callback"])
    assert result.exit_code == 1
    first, answer = result.output.splitlines()
    assert first == "the body is not a JSON object: sending it as it is, to be quarantined"
    assert answer.startswith(f'400 {{"ActionStatus":"FAIL","ErrorCode":{code},')
    assert rows("SELECT command, error_code, raw FROM quarantine") == [(CREATE, code, body)]


def test_send_sample_takes_the_command_from_the_option(live_server, runner, rows):
    result = runner.invoke(
        args=[
            "send-sample",
            "--command",
            "Group.CallbackAfterGroupDestroyed",
            f"{live_server.url}/callback",
        ]
    )
    assert (result.exit_code, result.output) == (
        0,
        '200 {"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}\n',
    )
    assert rows("SELECT count(*) FROM event") == [(0,)]  # a command tim-audit does not record


def test_send_sample_refuses_a_url_that_is_not_http(runner):
    result = runner.invoke(args=["send-sample", "file:///etc/passwd"])
    assert result.exit_code == 2
    assert (
        result.output.splitlines()[-1]
        == "Error: Invalid value for URL: must start with http:// or https://"
    )


def test_send_sample_exits_non_zero_on_a_refusal(live_server, config):
    runner = create_app({**config, "CALLBACK_TOKEN": "not-the-servers"}).test_cli_runner()
    result = runner.invoke(args=["send-sample", f"{live_server.url}/callback"])
    assert result.exit_code == 1
    assert result.output.startswith('403 {"ActionStatus":"FAIL","ErrorCode":60013,')


def test_send_sample_says_when_the_server_is_unreachable(runner):
    result = runner.invoke(args=["send-sample", "http://127.0.0.1:9/callback"])
    assert result.exit_code == 1
    assert "cannot reach http://127.0.0.1:9/callback" in result.output


def test_flask_command_line_verifies_with_environment_config(app, post, tmp_path):
    """The command as cron runs it: a new process, config from TIM_AUDIT_*."""
    post(group_body())
    env = {
        **os.environ,
        "TIM_AUDIT_DATABASE": app.config["DATABASE"],
        "TIM_AUDIT_SDKAPPID": SDKAPPID,
        "TIM_AUDIT_CALLBACK_TOKEN": TOKEN,
    }
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "tim_audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert OK_LINE.fullmatch(result.stdout.splitlines()[-1])
    assert result.stdout.splitlines()[-1].startswith("OK 1 ")
    assert result.stderr == ""  # nothing for a cron job to mail but the result


def test_send_sample_says_when_the_server_stored_nothing_new(live_server, runner, rows, tmp_path):
    (tmp_path / "body.json").write_bytes(group_body())  # the built-in sample is new each second
    send = ["send-sample", "--body", str(tmp_path / "body.json"), f"{live_server.url}/callback"]
    runner.invoke(args=send)
    result = runner.invoke(args=send)
    assert result.output.splitlines()[-1] == "a repeat of event 1; nothing new stored"
    assert rows("SELECT count(*) FROM event") == [(1,)]


def test_hash_password_reads_a_piped_password_quietly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tim_audit", "hash-password"],
        input="a long enough secret\n",
        env={**os.environ, "TIM_AUDIT_INSTANCE_PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")
    [hashed] = result.stdout.splitlines()
    assert check_password_hash(hashed, "a long enough secret")


def test_tim_audit_help_lists_serve_and_not_flasks_run(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tim_audit", "--help"],
        env={**os.environ, "TIM_AUDIT_INSTANCE_PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    commands = {
        line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()
    }
    assert {"serve", "verify", "witness", "send-sample"} <= commands
    assert not commands & {"run", "shell", "routes"}


def test_hash_password_refuses_a_piped_password_that_is_not_utf_8(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tim_audit", "hash-password"],
        input=b"\xff\xfe not a password\n",
        env={**os.environ, "TIM_AUDIT_INSTANCE_PATH": str(tmp_path)},
        capture_output=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (
        1,
        b"Error: the password piped in is not UTF-8\n",
    )


def test_send_sample_says_what_a_server_without_a_token_did_from_the_log_here(make_app, tmp_path):
    app = make_app(CALLBACK_TOKEN=None)
    (tmp_path / "body.json").write_bytes(group_body())
    send = ["send-sample", "--body", str(tmp_path / "body.json")]
    with serving(app) as server:
        runner = app.test_cli_runner()
        first = runner.invoke(args=[*send, f"{server.url}/callback"])
        again = runner.invoke(args=[*send, f"{server.url}/callback"])
    assert first.output.splitlines()[-1] == "stored as event 1"
    assert again.output.splitlines()[-1] == "a repeat of event 1; nothing new stored"
