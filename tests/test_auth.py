import base64
import threading
import time

import pytest
from freezegun import freeze_time
from werkzeug.security import check_password_hash, generate_password_hash

import tim_audit.review.auth
from dashboard import CREDENTIALS, PASSWORD, REVIEWER, REVIEWERS
from tim_audit import create_app
from tim_audit.review.auth import Busy, Reviewers, TooManyFailures
from tencent import group_body

PAGES = [
    ("GET", "/"),
    ("GET", "/history"),
    ("GET", "/history?type=Public"),
    ("GET", "/history/1"),
    ("GET", "/history.csv"),
    ("GET", "/history.json"),
    ("GET", "/quarantine"),
    ("GET", "/quarantine/1.raw"),
    ("POST", "/history/verify"),
]


def basic(name, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


@pytest.fixture
def stored(post):
    post(group_body())
    post(b"{oops")


@pytest.mark.parametrize("method, url", PAGES)
def test_every_page_needs_a_reviewer(client, stored, method, url):
    response = client.open(url, method=method)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="tim-audit", charset="UTF-8"'
    assert "Sign in with your reviewer name and password" in response.get_data(as_text=True)


@pytest.mark.parametrize("method, url", PAGES)
@pytest.mark.parametrize(
    "name, password", [(REVIEWER, "wrong"), ("mallory", PASSWORD), (REVIEWER, ""), ("", "")]
)
def test_wrong_credentials_are_refused(client, stored, method, url, name, password):
    assert client.open(url, method=method, headers=basic(name, password)).status_code == 401


@pytest.mark.parametrize("method, url", PAGES)
def test_right_credentials_are_let_in(client, stored, method, url):
    response = client.open(url, method=method, headers=CREDENTIALS)
    assert response.status_code == {"/": 302, "/history/verify": 303}.get(url, 200)


def test_other_authorization_schemes_are_refused(client, stored):
    response = client.get("/history", headers={"Authorization": "Bearer " + PASSWORD})
    assert response.status_code == 401


def test_password_is_checked_once_then_remembered(app, client, monkeypatch):
    checks = []
    real = tim_audit.review.auth.check_password_hash
    monkeypatch.setattr(
        tim_audit.review.auth, "check_password_hash", lambda *a: checks.append(1) or real(*a)
    )
    for _ in range(3):
        assert client.get("/history", headers=CREDENTIALS).status_code == 200
    assert len(checks) == 1
    assert client.get("/history", headers=basic(REVIEWER, "wrong")).status_code == 401
    assert len(checks) == 2


def test_no_reviewers_configured_explains_what_to_set(make_app):
    response = make_app(DASHBOARD_USERS={}).test_client().get("/history", headers=CREDENTIALS)
    assert response.status_code == 401
    text = response.get_data(as_text=True)
    assert "No reviewers are configured" in text
    assert "DASHBOARD_USERS" in text and "<code>tim-audit hash-password</code>" in text


def test_dashboard_auth_off_lets_everyone_in(make_app):
    client = make_app(DASHBOARD_USERS={}, DASHBOARD_AUTH=False).test_client()
    assert client.get("/history").status_code == 200


def test_callback_and_healthz_need_no_reviewer(client, post):
    assert post(group_body()).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_reviewer_name_is_shown_and_exports_are_logged_with_it(client, stored, caplog):
    caplog.set_level("INFO")
    assert '<span class="reviewer">alice</span>' in client.get(
        "/history", headers=CREDENTIALS
    ).get_data(as_text=True)
    client.get("/history.csv?type=Public", headers=CREDENTIALS).get_data()
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("export ")]
    assert (
        line == 'export reviewer="alice" what=events format=csv rows=1 filters={"type": "Public"}'
    )


def test_hash_password_prints_a_hash_of_the_password(runner):
    result = runner.invoke(
        args=["hash-password"], input="a long enough secret\na long enough secret\n"
    )
    assert result.exit_code == 0
    hashed = result.output.strip().splitlines()[-1]
    assert hashed.startswith("scrypt:")
    assert check_password_hash(hashed, "a long enough secret")


def test_hash_password_refuses_a_short_password(runner):
    result = runner.invoke(args=["hash-password"], input="short\nshort\n")
    assert result.exit_code == 1
    assert "use at least 12 characters" in result.output


def test_hash_password_output_works_as_config(config, make_app):
    hashed = (
        create_app(config)
        .test_cli_runner()
        .invoke(args=["hash-password"], input="bob's own password\nbob's own password\n")
        .output.strip()
        .splitlines()[-1]
    )
    client = make_app(DASHBOARD_USERS={"bob": hashed}).test_client()
    assert client.get("/history", headers=basic("bob", "bob's own password")).status_code == 200
    assert client.get("/history", headers=basic("bob", "bob's own passwore")).status_code == 401


def sign_in(client, password, address="198.51.100.7"):
    return client.get(
        "/history", headers=basic(REVIEWER, password), environ_base={"REMOTE_ADDR": address}
    ).status_code


def test_failed_sign_ins_past_the_limit_are_refused_without_a_check(app, client, monkeypatch):
    checks = []
    real = tim_audit.review.auth.check_password_hash
    monkeypatch.setattr(
        tim_audit.review.auth, "check_password_hash", lambda *a: checks.append(1) or real(*a)
    )
    assert [sign_in(client, f"guess {n}") for n in range(10)] == [401] * 10
    response = client.get(
        "/history",
        headers=basic(REVIEWER, "guess 11"),
        environ_base={"REMOTE_ADDR": "198.51.100.7"},
    )
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "60"
    assert "Too many failed sign-ins from this address" in response.get_data(as_text=True)
    assert sign_in(client, PASSWORD) == 429
    assert len(checks) == 10


def test_a_spray_does_not_lock_out_a_reviewer_already_signed_in(client):
    assert sign_in(client, PASSWORD) == 200
    assert [sign_in(client, f"guess {n}") for n in range(12)] == [401] * 10 + [429] * 2
    assert sign_in(client, PASSWORD) == 200


def test_failed_sign_ins_are_counted_per_address(client):
    assert [sign_in(client, f"guess {n}") for n in range(11)] == [401] * 10 + [429]
    assert sign_in(client, "guess", address="198.51.100.8") == 401
    assert sign_in(client, PASSWORD, address="198.51.100.8") == 200


def test_the_limit_lifts_a_minute_after_the_failures(client):
    with freeze_time("2026-11-30 12:00:00") as frozen:
        assert [sign_in(client, f"guess {n}") for n in range(11)] == [401] * 10 + [429]
        frozen.tick(59)
        assert sign_in(client, PASSWORD) == 429
        frozen.tick(2)
        assert sign_in(client, PASSWORD) == 200


def test_login_failures_is_configurable(make_app):
    client = make_app(LOGIN_FAILURES=2).test_client()
    assert [sign_in(client, f"guess {n}") for n in range(3)] == [401, 401, 429]


# --- a spray costs bounded memory and holds no thread for long ---------------


def test_failures_are_kept_for_at_most_max_addresses(monkeypatch):
    monkeypatch.setattr(tim_audit.review.auth, "MAX_ADDRESSES", 100)
    reviewers = Reviewers(REVIEWERS, 10)
    for n in range(250):
        assert not reviewers.check(REVIEWER, "wrong", f"2001:db8::{n:x}")
    assert list(reviewers._failures) == [f"2001:db8::{n:x}" for n in range(150, 250)]


def test_failures_too_old_to_count_are_forgotten():
    reviewers = Reviewers(REVIEWERS, 10)
    with freeze_time("2026-11-30 12:00:00") as frozen:
        for n in range(50):
            assert not reviewers.check(REVIEWER, "wrong", f"2001:db8::{n:x}")
        frozen.tick(30)
        assert not reviewers.check(REVIEWER, "wrong", "2001:db8::a:0")
        frozen.tick(31)
        assert not reviewers.check(REVIEWER, "wrong", "2001:db8::b:0")
    assert list(reviewers._failures) == ["2001:db8::a:0", "2001:db8::b:0"]


# werkzeug's default method, scrypt: about 0.1 s a check on the CI machine.
SLOW = {REVIEWER: generate_password_hash(PASSWORD)}


@pytest.fixture
def counted(monkeypatch):
    """The password checks made, as (password, seconds taken)."""
    checks = []
    real = tim_audit.review.auth.check_password_hash

    def check(stored, password):
        started = time.monotonic()
        try:
            return real(stored, password)
        finally:
            checks.append((password, time.monotonic() - started))

    monkeypatch.setattr(tim_audit.review.auth, "check_password_hash", check)
    return checks


def concurrently(reviewers, guesses):
    """check() of each (password, address) in ``guesses`` on a thread of its
    own, all at once: each one's outcome (True, False, or the exception's
    class) and seconds taken."""
    outcomes = [None] * len(guesses)

    def guess(index, password, address):
        started = time.monotonic()
        try:
            outcome = reviewers.check(REVIEWER, password, address)
        except (Busy, TooManyFailures) as exc:
            outcome = type(exc)
        outcomes[index] = (outcome, time.monotonic() - started)

    threads = [threading.Thread(target=guess, args=(i, *g)) for i, g in enumerate(guesses)]
    for thread in threads:
        thread.start()
    return threads, outcomes


def test_a_spray_waits_its_turn_at_most_hashing_wait_and_a_signed_in_reviewer_not_at_all(
    counted, monkeypatch
):
    monkeypatch.setattr(tim_audit.review.auth, "HASHING_WAIT", 0.5)
    reviewers = Reviewers(SLOW, 10)
    assert reviewers.check(REVIEWER, PASSWORD, "198.51.100.1")
    threads, outcomes = concurrently(
        reviewers, [(f"guess {n}", f"203.0.113.{n}") for n in range(24)]
    )
    waits = []
    while any(thread.is_alive() for thread in threads):
        started = time.monotonic()
        assert reviewers.check(REVIEWER, PASSWORD, "198.51.100.1")
        waits.append(time.monotonic() - started)
        time.sleep(0.01)
    assert max(waits) < 0.05
    slowest = max(seconds for _, seconds in counted)
    checked = [seconds for outcome, seconds in outcomes if outcome is False]
    busy = [seconds for outcome, seconds in outcomes if outcome is Busy]
    assert len(checked) + len(busy) == 24 and busy
    assert len(counted) == 1 + len(checked)  # the busy ones were not checked
    assert max(busy) < 0.5 + slowest + 0.2


def test_concurrent_guesses_from_one_address_never_pass_the_limit(counted):
    reviewers = Reviewers(SLOW, 3)
    threads, outcomes = concurrently(reviewers, [(f"guess {n}", "203.0.113.9") for n in range(8)])
    for thread in threads:
        thread.join()
    assert sorted(outcome is False for outcome, _ in outcomes) == [False] * 5 + [True] * 3
    assert [outcome for outcome, _ in outcomes if outcome is not False] == [TooManyFailures] * 5
    assert len(counted) == 3


def test_a_sign_in_that_waits_too_long_for_its_turn_is_answered_503_unchecked(
    app, client, monkeypatch
):
    monkeypatch.setattr(tim_audit.review.auth, "HASHING_WAIT", 0.05)
    checking, finish = threading.Event(), threading.Event()
    real = tim_audit.review.auth.check_password_hash

    def held(stored, password):
        checking.set()
        finish.wait(5)
        return real(stored, password)

    monkeypatch.setattr(tim_audit.review.auth, "check_password_hash", held)
    other = threading.Thread(target=sign_in, args=(app.test_client(), "guess", "203.0.113.9"))
    other.start()
    assert checking.wait(5)
    response = client.get(
        "/history", headers=CREDENTIALS, environ_base={"REMOTE_ADDR": "198.51.100.7"}
    )
    finish.set()
    other.join()
    assert (response.status_code, response.headers["Retry-After"]) == (503, "2")
    assert "Your password was not checked: try again in a few seconds." in response.get_data(
        as_text=True
    )
    assert sign_in(client, PASSWORD) == 200


@pytest.mark.parametrize("method", ["pbkdf2:sha256:1000", "scrypt:16384:8:1"])
def test_an_unknown_name_costs_what_a_known_one_does(method):
    """The decoy checked for an unknown name is made as the reviewers' hash
    is, so its timing does not tell which names exist."""
    reviewers = Reviewers({"alice": generate_password_hash("x" * 12, method)}, 10)
    assert not reviewers.check("mallory", "a wrong password", "192.0.2.1")
    assert reviewers._decoy.split("$")[0] == method
