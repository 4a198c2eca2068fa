from datetime import datetime, timezone

import pytest
from freezegun import freeze_time

from tim_audit.ingest import signature

REQUEST_TIME = 1669872112
VECTOR = "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061"


def at(seconds):
    return freeze_time(datetime.fromtimestamp(seconds, tz=timezone.utc))


def test_sign_matches_tencents_test_vector():
    assert signature.sign("xxxxyyyy", str(REQUEST_TIME)) == VECTOR


@pytest.mark.parametrize("skew", [-60, 0, 60])
def test_request_time_within_window_passes(skew):
    with at(REQUEST_TIME + skew):
        signature.check(("xxxxyyyy",), VECTOR, str(REQUEST_TIME), 60)


@pytest.mark.parametrize("skew", [-61, 61, 3600])
def test_request_time_outside_window_fails(skew):
    with at(REQUEST_TIME + skew), pytest.raises(signature.StaleRequestTime):
        signature.check(("xxxxyyyy",), VECTOR, str(REQUEST_TIME), 60)


def test_window_follows_max_age():
    with at(REQUEST_TIME + 300):
        signature.check(("xxxxyyyy",), VECTOR, str(REQUEST_TIME), 300)
    with at(REQUEST_TIME + 301), pytest.raises(signature.StaleRequestTime):
        signature.check(("xxxxyyyy",), VECTOR, str(REQUEST_TIME), 300)


def test_upper_case_sign_is_accepted():
    with at(REQUEST_TIME):
        signature.check(("xxxxyyyy",), VECTOR.upper(), str(REQUEST_TIME), 60)


@pytest.mark.parametrize(
    "request_time", [None, "", "abc", "-1669872112", "1669872112.5", "١٢٣", " 1669872112"]
)
def test_malformed_request_time_fails(request_time):
    with at(REQUEST_TIME), pytest.raises(signature.BadRequestTime):
        signature.check(("xxxxyyyy",), VECTOR, request_time, 60)


@pytest.mark.parametrize(
    "given",
    [
        None,
        "",
        VECTOR[:-1],
        VECTOR[:-1] + "0",
        "é" * 64,
        signature.sign("other", str(REQUEST_TIME)),
    ],
)
def test_wrong_or_missing_sign_fails(given):
    with at(REQUEST_TIME), pytest.raises(signature.BadSign):
        signature.check(("xxxxyyyy",), given, str(REQUEST_TIME), 60)


def test_sign_made_for_another_request_time_fails():
    with at(REQUEST_TIME), pytest.raises(signature.BadSign):
        signature.check(("xxxxyyyy",), VECTOR, str(REQUEST_TIME + 1), 60)
