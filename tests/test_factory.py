import pytest

from tim_audit import StartupError, create_app, create_ingest_app, create_review_app, open_log

from dashboard import REVIEWERS
from tencent import SDKAPPID


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
    (instance_path / "config.py").write_text('SDKAPPID = 1400000009\nCALLBACK_TOKEN = "from-file"\n')
    app = made()
    assert app.config["SDKAPPID"] == "1400000009"
    assert app.config["CALLBACK_TOKEN"] == ("from-file",)


def test_environment_overrides_instance_config(made, instance_path, monkeypatch):
    (instance_path / "config.py").write_text('SDKAPPID = 1400000009\nSIGN_MAX_AGE = 30\n')
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
        "SDKAPPID is not set", "DASHBOARD_USERS is empty", "CALLBACK_TOKEN is not set",
    ]


def test_dashboard_without_authentication_is_warned_about(made, caplog):
    made({"SDKAPPID": SDKAPPID, "CALLBACK_TOKEN": "t", "DASHBOARD_AUTH": False})
    assert warnings(caplog) == ["DASHBOARD_AUTH is off"]


def test_configured_app_warns_about_nothing(made, caplog):
    made({"SDKAPPID": SDKAPPID, "CALLBACK_TOKEN": "t", "DASHBOARD_USERS": REVIEWERS})
    assert warnings(caplog) == []


@pytest.mark.parametrize("key, value, message", [
    ("CALLBACK_TOKEN", True, "CALLBACK_TOKEN must be a string or a list of strings"),
    ("CALLBACK_TOKEN", ["ok", ""], "CALLBACK_TOKEN must be a string or a list of strings"),
    ("SDKAPPID", 1.5, "SDKAPPID must be the app's SDKAppID"),
    ("SIGN_MAX_AGE", -1, "SIGN_MAX_AGE must be a whole number of at least 0"),
    ("SIGN_MAX_AGE", "60", "SIGN_MAX_AGE must be a whole number of at least 0"),
    ("STORAGE_TIMEOUT", 5, "STORAGE_TIMEOUT must be seconds between 0.25 and 1.2"),
    ("STORAGE_TIMEOUT", 0.1, "STORAGE_TIMEOUT must be seconds between 0.25 and 1.2"),
    ("INGEST_LISTEN", "8080", "INGEST_LISTEN must be HOST:PORT"),
    ("REVIEW_LISTEN", "127.0.0.1:99999", "REVIEW_LISTEN must be HOST:PORT"),
    ("MAX_EXPORTS", 0, "MAX_EXPORTS must be a whole number of at least 1"),
    ("LOGIN_FAILURES", 0, "LOGIN_FAILURES must be a whole number of at least 1"),
    ("AUDIT_HMAC_KEY", "short", "AUDIT_HMAC_KEY must be a string of at least 16 bytes"),
    ("DASHBOARD_USERS", {"alice": "correct horse battery"}, "DASHBOARD_USERS['alice'] is not a password hash"),
    ("DASHBOARD_USERS", ["alice"], "DASHBOARD_USERS must map reviewer names to password hashes"),
    ("DASHBOARD_AUTH", "no", "DASHBOARD_AUTH must be true or false"),
    ("DISPLAY_TIMEZONE", "Mars/Olympus", "DISPLAY_TIMEZONE must be an IANA time zone"),
    ("VERIFY_INTERVAL", -5, "VERIFY_INTERVAL must be whole seconds"),
])
def test_impossible_config_stops_start_up(made, key, value, message):
    with pytest.raises(StartupError) as caught:
        made({key: value})
    assert str(caught.value).startswith(f"tim-audit cannot start: {message}")


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
    with pytest.raises(StartupError, match=f"cannot open the database {path}: file is not a database"):
        made({"DATABASE": str(path)})


def test_hmac_key_cannot_be_added_to_an_unkeyed_log(made, tmp_path):
    database = str(tmp_path / "audit.sqlite3")
    made({"DATABASE": database})
    with pytest.raises(StartupError, match="was started without AUDIT_HMAC_KEY"):
        made({"DATABASE": database, "AUDIT_HMAC_KEY": "k" * 32})


def test_keyed_log_refuses_to_start_without_its_key(made, tmp_path):
    database = str(tmp_path / "audit.sqlite3")
    made({"DATABASE": database, "AUDIT_HMAC_KEY": "k" * 32})
    with pytest.raises(StartupError, match="is chained with an HMAC key: set AUDIT_HMAC_KEY"):
        made({"DATABASE": database})
    with pytest.raises(StartupError, match="AUDIT_HMAC_KEY is not the key the log at"):
        made({"DATABASE": database, "AUDIT_HMAC_KEY": "x" * 32})
    assert made({"DATABASE": database, "AUDIT_HMAC_KEY": "k" * 32}).config["AUDIT_HMAC_KEY"] == b"k" * 32
