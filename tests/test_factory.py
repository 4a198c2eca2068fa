import os
import shutil
import subprocess
import sys

import pytest
from werkzeug.security import generate_password_hash

from tim_audit import StartupError, create_app, create_ingest_app, create_review_app, open_log

from dashboard import CREDENTIALS, REVIEWERS
from tencent import SDKAPPID
from test_faults import ROOT


@pytest.fixture
def made(tmp_path):
    """create_app as the operator runs it, its log opened as the ingest
    server opens it: no test config but TESTING and DATABASE unless given."""
    apps = []

    def made(test_config=None):
        app = open_log(create_app(test_config))
        apps.append(app)
        return app

    yield made
    for app in apps:
        app.extensions["tim_audit"].close()


def test_defaults(made, instance_path):
    app = made()
    assert app.config["SDKAPPID"] is None
    assert app.config["CALLBACK_TOKEN"] == ()
    assert app.config["SIGN_MAX_AGE"] == 60
    assert app.config["MAX_CONTENT_LENGTH"] == 1024 * 1024
    assert app.config["DATABASE"] == str(instance_path / "tim_audit.sqlite3")
    assert (instance_path / "tim_audit.sqlite3").is_file()


@pytest.mark.parametrize("factory", [create_app, create_ingest_app, create_review_app])
def test_factories_do_not_create_the_database(factory, instance_path):
    app = factory()
    assert app.config["DATABASE"] == str(instance_path / "tim_audit.sqlite3")
    assert list(instance_path.iterdir()) == []


def test_instance_config_file_is_read(made, instance_path):
    (instance_path / "config.py").write_text(
        'SDKAPPID = 1400000009\nCALLBACK_TOKEN = "from-file"\n'
    )
    app = made()
    assert app.config["SDKAPPID"] == "1400000009"
    assert app.config["CALLBACK_TOKEN"] == ("from-file",)


def test_environment_overrides_instance_config(made, instance_path, monkeypatch):
    (instance_path / "config.py").write_text("SDKAPPID = 1400000009\nSIGN_MAX_AGE = 30\n")
    monkeypatch.setenv("TIM_AUDIT_SDKAPPID", "1400000001")
    app = made()
    assert app.config["SDKAPPID"] == "1400000001"
    assert app.config["SIGN_MAX_AGE"] == 30


def test_environment_values_are_parsed_as_json(made, monkeypatch):
    monkeypatch.setenv("TIM_AUDIT_SIGN_MAX_AGE", "120")
    monkeypatch.setenv("TIM_AUDIT_CALLBACK_TOKEN", '["old-token", "new-token"]')
    app = made()
    assert app.config["SIGN_MAX_AGE"] == 120
    assert app.config["CALLBACK_TOKEN"] == ("old-token", "new-token")


def test_numeric_token_from_environment_stays_a_string(made, monkeypatch):
    monkeypatch.setenv("TIM_AUDIT_CALLBACK_TOKEN", "20240101")
    assert made().config["CALLBACK_TOKEN"] == ("20240101",)


def test_test_config_overrides_environment(made, monkeypatch):
    monkeypatch.setenv("TIM_AUDIT_SDKAPPID", "1400000001")
    assert made({"SDKAPPID": "1400000002"}).config["SDKAPPID"] == "1400000002"


def warnings(caplog):
    return [r.getMessage().split(":")[0] for r in caplog.records if r.levelname == "WARNING"]


def test_unset_sdkappid_token_and_reviewers_are_warned_about(made, caplog):
    made()
    assert warnings(caplog) == [
        "SDKAPPID is not set",
        "DASHBOARD_USERS is empty",
        "CALLBACK_TOKEN is not set",
    ]


def test_dashboard_without_authentication_is_warned_about(made, caplog):
    made({"SDKAPPID": SDKAPPID, "CALLBACK_TOKEN": "t", "DASHBOARD_AUTH": False})
    assert warnings(caplog) == ["DASHBOARD_AUTH is off"]


def test_configured_app_warns_about_nothing(made, caplog):
    made({"SDKAPPID": SDKAPPID, "CALLBACK_TOKEN": "t", "DASHBOARD_USERS": REVIEWERS})
    assert warnings(caplog) == []


STORAGE_TIMEOUT_MUST = (
    "STORAGE_TIMEOUT must be seconds between 0.5 and 1.2 (every callback is answered within 1.5 s;"
    " Tencent waits 2 s)"
)
SDKAPPID_MUST = "SDKAPPID must be your app's SDKAppID, a positive whole number of at most 10 digits"
HASH = generate_password_hash("correct horse battery", method="pbkdf2:sha256:1000")
NOT_A_HASH = (
    "has no password hash for 'alice' (or one cut short): make one with tim-audit hash-password"
)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("SDKAPPID", "abc", f"{SDKAPPID_MUST}, not 'abc'"),
        ("SDKAPPID", 0, f"{SDKAPPID_MUST}, not 0"),
        ("SDKAPPID", -5, f"{SDKAPPID_MUST}, not -5"),
        ("SDKAPPID", "-5", f"{SDKAPPID_MUST}, not '-5'"),
        ("SDKAPPID", 12345678901234567890, f"{SDKAPPID_MUST}, not 12345678901234567890"),
        ("SDKAPPID", "14000000011", f"{SDKAPPID_MUST}, not '14000000011'"),
        ("SDKAPPID", "01400000001", f"{SDKAPPID_MUST}, not '01400000001'"),
        ("SDKAPPID", 1.5, f"{SDKAPPID_MUST}, not 1.5"),
        ("SDKAPPID", True, f"{SDKAPPID_MUST}, not True"),
        (
            "CALLBACK_TOKEN",
            True,
            "CALLBACK_TOKEN must be a string or a list of strings; in the"
            " environment, quote it as JSON: TIM_AUDIT_CALLBACK_TOKEN='\"…\"'",
        ),
        (
            "CALLBACK_TOKEN",
            ["ok", ""],
            "CALLBACK_TOKEN must be a string or a list of strings; in the"
            " environment, quote it as JSON: TIM_AUDIT_CALLBACK_TOKEN='\"…\"'",
        ),
        (
            "CALLBACK_TOKEN",
            ["real-token", "paste-the-console-token-here"],
            "CALLBACK_TOKEN is still"
            " the example's placeholder: paste the token from the IM console's callback authentication",
        ),
        ("SIGN_MAX_AGE", -1, "SIGN_MAX_AGE must be a whole number of at least 0, not -1"),
        ("SIGN_MAX_AGE", "60", "SIGN_MAX_AGE must be a whole number of at least 0, not '60'"),
        ("MAX_CONTENT_LENGTH", 0, "MAX_CONTENT_LENGTH must be a whole number of at least 1, not 0"),
        ("STORAGE_TIMEOUT", 5, f"{STORAGE_TIMEOUT_MUST}, not 5"),
        ("STORAGE_TIMEOUT", 0.1, f"{STORAGE_TIMEOUT_MUST}, not 0.1"),
        ("STORAGE_TIMEOUT", 0.25, f"{STORAGE_TIMEOUT_MUST}, not 0.25"),
        ("STORAGE_TIMEOUT", True, f"{STORAGE_TIMEOUT_MUST}, not True"),
        (
            "INGEST_LISTEN",
            "8080",
            "INGEST_LISTEN must be HOST:PORT, such as 127.0.0.1:8080, not '8080'",
        ),
        (
            "REVIEW_LISTEN",
            "127.0.0.1:99999",
            "REVIEW_LISTEN must be HOST:PORT, such as 127.0.0.1:8081, not '127.0.0.1:99999'",
        ),
        ("INGEST_THREADS", 0, "INGEST_THREADS must be a whole number of at least 1, not 0"),
        ("MAX_EXPORTS", 0, "MAX_EXPORTS must be a whole number of at least 1, not 0"),
        ("LOGIN_FAILURES", 0, "LOGIN_FAILURES must be a whole number of at least 1, not 0"),
        ("AUDIT_HMAC_KEY", "short", "AUDIT_HMAC_KEY must be a string of at least 16 bytes"),
        ("DASHBOARD_USERS", {"alice": "correct horse battery"}, f"DASHBOARD_USERS {NOT_A_HASH}"),
        ("DASHBOARD_USERS", {"alice": HASH[:-1]}, f"DASHBOARD_USERS {NOT_A_HASH}"),
        ("DASHBOARD_USERS", {"alice": HASH.rsplit("$", 1)[0]}, f"DASHBOARD_USERS {NOT_A_HASH}"),
        (
            "DASHBOARD_USERS",
            {"alice": "pbkdf2:sha999:1000$salt$" + "a" * 64},
            f"DASHBOARD_USERS {NOT_A_HASH}",
        ),
        ("DASHBOARD_USERS", {"alice": None}, f"DASHBOARD_USERS {NOT_A_HASH}"),
        (
            "DASHBOARD_USERS",
            {"": HASH},
            "DASHBOARD_USERS has a reviewer named '', who could never sign"
            " in: a name must not be empty or contain ':' (HTTP Basic ends the name there)",
        ),
        (
            "DASHBOARD_USERS",
            {"ali:ce": HASH},
            "DASHBOARD_USERS has a reviewer named 'ali:ce', who could"
            " never sign in: a name must not be empty or contain ':' (HTTP Basic ends the name there)",
        ),
        (
            "DASHBOARD_USERS",
            ["alice"],
            "DASHBOARD_USERS must map reviewer names to password hashes",
        ),
        ("DASHBOARD_AUTH", "no", "DASHBOARD_AUTH must be true or false, not 'no'"),
        (
            "DISPLAY_TIMEZONE",
            "Mars/Olympus",
            "DISPLAY_TIMEZONE must be an IANA time zone such as Asia/Shanghai, not 'Mars/Olympus'",
        ),
        (
            "VERIFY_INTERVAL",
            -5,
            "VERIFY_INTERVAL must be whole seconds (0: only when asked), not -5",
        ),
        (
            "PROXY_FIX",
            1.0,
            "PROXY_FIX must be the number of trusted proxies in front (0: none), not 1.0",
        ),
        ("METRICS", "yes", "METRICS must be true or false, not 'yes'"),
        ("LOG_FORMAT", "xml", 'LOG_FORMAT must be "text" or "json", not \'xml\''),
        ("DATABASE", 5, "DATABASE must be the path of the SQLite file, not 5"),
    ],
)
def test_impossible_config_stops_start_up(made, key, value, message):
    with pytest.raises(StartupError) as caught:
        made({key: value})
    assert str(caught.value) == f"tim-audit cannot start: {message}"


@pytest.mark.parametrize("value", [1400000001, "1400000001", 9999999999, 1])
def test_sdkappid_of_up_to_ten_digits_is_kept_as_a_string(made, value):
    assert made({"SDKAPPID": value}).config["SDKAPPID"] == str(value)


@pytest.mark.parametrize("method", ["scrypt", "pbkdf2:sha256:1000", "pbkdf2:sha512:1000"])
def test_werkzeug_password_hashes_are_accepted(made, method):
    users = {"alice": generate_password_hash("correct horse battery", method=method)}
    assert made({"DASHBOARD_USERS": users}).config["DASHBOARD_USERS"] == users


def test_the_example_config_copied_as_it_is_stops_start_up(made, instance_path):
    shutil.copy(ROOT / "instance" / "config.example.py", instance_path / "config.py")
    with pytest.raises(StartupError) as caught:
        made()
    assert str(caught.value) == (
        "tim-audit cannot start: CALLBACK_TOKEN is still the example's placeholder: paste the"
        " token from the IM console's callback authentication"
    )


def test_syntax_error_in_instance_config_names_file_and_line(made, instance_path):
    (instance_path / "config.py").write_text('SDKAPPID = 1400000001\nCALLBACK_TOKEN = ("t"\n')
    with pytest.raises(StartupError) as caught:
        made()
    assert str(caught.value) == (
        f"tim-audit cannot start: {instance_path / 'config.py'}, line 2: '(' was never closed"
    )


def test_error_running_instance_config_names_file_and_line(made, instance_path):
    (instance_path / "config.py").write_text("SDKAPPID = 1400000001\nCALLBACK_TOKEN = token\n")
    with pytest.raises(StartupError) as caught:
        made()
    assert str(caught.value) == (
        f"tim-audit cannot start: {instance_path / 'config.py'}, line 2:"
        " NameError: name 'token' is not defined"
    )


def test_bad_instance_config_is_one_line_on_stderr_from_waitress(tmp_path):
    instance = tmp_path / "instance"
    (instance / "config.py").write_text('SDKAPPID = "1400000001\n')
    env = {**os.environ, "TIM_AUDIT_INSTANCE_PATH": str(instance)}
    result = subprocess.run(
        [sys.executable, "-m", "waitress", "--listen=127.0.0.1:0", "wsgi:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"tim-audit cannot start: {instance / 'config.py'}, line 1:"
        " unterminated string literal (detected at line 1)\n"
    )


def test_relative_database_is_in_the_instance_folder(made, instance_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIM_AUDIT_DATABASE", "audit.sqlite3")
    assert made().config["DATABASE"] == str(instance_path / "audit.sqlite3")
    assert (instance_path / "audit.sqlite3").is_file()
    assert not (tmp_path / "audit.sqlite3").exists()


def test_missing_database_directory_stops_start_up(made, tmp_path):
    path = tmp_path / "no-such-dir" / "audit.sqlite3"
    with pytest.raises(StartupError) as caught:
        made({"DATABASE": str(path)})
    assert str(caught.value) == (
        f"tim-audit cannot start: the directory of DATABASE, {path.parent}, does not exist:"
        " create it (writable by the user running tim-audit) or set DATABASE to a file in"
        " an existing directory"
    )
    assert not path.parent.exists()


def test_database_that_is_not_sqlite_stops_start_up(made, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a database " * 100)
    with pytest.raises(
        StartupError, match=f"cannot open the database {path}: file is not a database"
    ):
        made({"DATABASE": str(path)})


def test_hmac_key_cannot_be_added_to_an_unkeyed_log(made, tmp_path):
    database = str(tmp_path / "audit.sqlite3")
    made({"DATABASE": database}).extensions["tim_audit"].close()
    with pytest.raises(StartupError, match="was started without AUDIT_HMAC_KEY"):
        made({"DATABASE": database, "AUDIT_HMAC_KEY": "k" * 32})


def test_keyed_log_refuses_to_start_without_its_key(made, tmp_path):
    database = str(tmp_path / "audit.sqlite3")
    made({"DATABASE": database, "AUDIT_HMAC_KEY": "k" * 32}).extensions["tim_audit"].close()
    with pytest.raises(StartupError, match="is chained with an HMAC key: set AUDIT_HMAC_KEY"):
        made({"DATABASE": database})
    with pytest.raises(StartupError, match="AUDIT_HMAC_KEY is not the key the log at"):
        made({"DATABASE": database, "AUDIT_HMAC_KEY": "x" * 32})
    assert (
        made({"DATABASE": database, "AUDIT_HMAC_KEY": "k" * 32}).config["AUDIT_HMAC_KEY"]
        == b"k" * 32
    )


# --- a review server started before the log exists --------------------------

NO_LOG = "the log does not exist yet: the ingest server creates it when it first starts"


@pytest.mark.parametrize(
    "method, url",
    [
        ("GET", "/history"),
        ("GET", "/history/1"),
        ("GET", "/history.csv"),
        ("GET", "/history.json"),
        ("GET", "/quarantine"),
        ("GET", "/quarantine/1.raw"),
        ("GET", "/quarantine.csv"),
        ("GET", "/quarantine.json"),
        ("GET", "/checkpoints"),
        ("GET", "/checkpoints/1.checkpoint"),
        ("GET", "/history/1.tlog-proof"),
        ("GET", "/history.evidence"),
        ("POST", "/history/verify"),
    ],
)
def test_review_pages_before_the_log_exists_say_so_with_a_503(config, method, url):
    response = create_review_app(config).test_client().open(url, method=method, headers=CREDENTIALS)
    assert (response.status_code, response.mimetype) == (503, "text/html")
    assert f"<p>{NO_LOG}.</p>" in response.get_data(as_text=True)
    assert response.headers["Retry-After"] == "10"
    assert not os.path.exists(config["DATABASE"])


def test_review_healthz_before_the_log_exists_says_so_with_a_503(config):
    response = create_review_app(config).test_client().get("/healthz")
    assert (response.status_code, response.get_json()) == (
        503,
        {"status": "unavailable", "error": NO_LOG},
    )
    assert not os.path.exists(config["DATABASE"])


def test_review_pages_answer_once_the_ingest_server_created_the_log(config, make_app):
    client = create_review_app(config).test_client()
    assert client.get("/history", headers=CREDENTIALS).status_code == 503
    make_app()
    assert client.get("/history", headers=CREDENTIALS).status_code == 200
    assert client.get("/healthz").get_json() == {"status": "ok", "events": 0, "configured": True}


def test_a_misspelled_key_in_config_py_is_warned_about_with_the_closest(
    made, instance_path, caplog
):
    (instance_path / "config.py").write_text("STORAGE_TIMOUT = 0.8\nhelper = 1\n")
    made({"SDKAPPID": SDKAPPID, "CALLBACK_TOKEN": "t", "DASHBOARD_USERS": REVIEWERS})
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{instance_path / 'config.py'} sets STORAGE_TIMOUT, which tim-audit does not read:"
        " did you mean STORAGE_TIMEOUT?"
    ]


def test_a_misspelled_environment_variable_is_warned_about(made, monkeypatch, caplog):
    monkeypatch.setenv("TIM_AUDIT_CHECKPOINT_DIRECTORY", '"/srv/checkpoints"')
    made({"SDKAPPID": SDKAPPID, "CALLBACK_TOKEN": "t", "DASHBOARD_USERS": REVIEWERS})
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "the environment sets TIM_AUDIT_CHECKPOINT_DIRECTORY, which tim-audit does not read:"
        " did you mean CHECKPOINT_DIR?"
    ]


def test_an_instance_folder_that_did_not_exist_is_said_at_start_and_the_new_log_too(
    tmp_path, monkeypatch, caplog
):
    folder = tmp_path / "nowhere" / "yet"
    monkeypatch.setenv("TIM_AUDIT_INSTANCE_PATH", str(folder))
    app = open_log(create_app({"TESTING": True}))
    try:
        messages = [r.getMessage() for r in caplog.records]
    finally:
        app.extensions["tim_audit"].close()
    assert (
        f"the instance folder {folder} did not exist: created it (is TIM_AUDIT_INSTANCE_PATH"
        " right?)" in messages
    )
    assert f"there is no log at {folder / 'tim_audit.sqlite3'}: starting a new, empty one" in (
        messages
    )
