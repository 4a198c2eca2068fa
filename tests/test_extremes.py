"""EventTime is accepted from 2000 to 2099; every page, chart and export
renders every time the schema accepts, every EventTime an older version
accepted and every received_at the writer could store, in every time zone."""

import csv
import dataclasses
import io
import itertools
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dashboard import CREDENTIALS, listed_ids, sample_events
from tencent import group_body
from tim_audit import create_app
from tim_audit.log.records import Rejection
from tim_audit.ingest.schemas import MAX_EVENT_TIME, MIN_EVENT_TIME

ZONES = ["Pacific/Kiritimati", "America/St_Johns", "Asia/Shanghai", "UTC", "Pacific/Pago_Pago"]
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
OLD_MAX_EVENT_TIME = 253402300799999  # 9999-12-31, what earlier versions accepted
EDGES = [
    MIN_EVENT_TIME,
    MAX_EVENT_TIME,
    0,
    -1,
    OLD_MAX_EVENT_TIME,
    OLD_MAX_EVENT_TIME + 1,
    -62135596800000,
    2**63 - 1,
    -(2**63),
]


@pytest.mark.parametrize("event_time", [MIN_EVENT_TIME, MAX_EVENT_TIME, str(MAX_EVENT_TIME)])
def test_event_time_from_2000_to_2099_is_stored(post, rows, event_time):
    assert post(group_body(EventTime=event_time)).status_code == 200
    assert rows("SELECT event_time FROM event") == [(int(event_time),)]


@pytest.mark.parametrize(
    "event_time",
    [
        MIN_EVENT_TIME - 1,
        MAX_EVENT_TIME + 1,
        0,
        OLD_MAX_EVENT_TIME,
        str(MAX_EVENT_TIME + 1),
        "0",
    ],
)
def test_event_time_outside_2000_to_2099_is_quarantined(post, rows, event_time):
    body = group_body(EventTime=event_time)
    response = post(body)
    assert response.status_code == 400
    assert response.get_json() == {
        "ActionStatus": "FAIL",
        "ErrorCode": 60024,
        "ErrorInfo": "invalid fields: EventTime: Not a time from 2000-01-01 to 2099-12-31"
        " (UTC) in ms since the epoch.",
    }
    assert rows("SELECT count(*) FROM event") == [(0,)]
    assert rows("SELECT error_code, raw FROM quarantine") == [(60024, body)]


_databases = itertools.count()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    zone=st.sampled_from(ZONES),
    event_time=st.one_of(
        st.integers(MIN_EVENT_TIME, MAX_EVENT_TIME),
        st.integers(0, OLD_MAX_EVENT_TIME),
        INT64,
        st.sampled_from(EDGES),
    ),
    received_at=st.one_of(INT64, st.sampled_from(EDGES)),
)
@example(zone="Asia/Shanghai", event_time=OLD_MAX_EVENT_TIME, received_at=OLD_MAX_EVENT_TIME)
@example(zone="Pacific/Kiritimati", event_time=OLD_MAX_EVENT_TIME, received_at=2**63 - 1)
@example(zone="Pacific/Pago_Pago", event_time=0, received_at=-(2**63))
def test_every_page_renders_extreme_times_in_every_zone(
    config, tmp_path, zone, event_time, received_at
):
    # A fresh log per example, so the event is the only one with its GroupId
    # and the newest (or oldest) there is.
    app = create_app(
        {
            **config,
            "DISPLAY_TIMEZONE": zone,
            "DATABASE": str(tmp_path / f"extreme-{next(_databases)}.sqlite3"),
        }
    )
    try:
        log = app.extensions["tim_audit"]
        ordinary = sample_events()[0]
        log.append(ordinary)
        log.append(
            dataclasses.replace(
                ordinary, group_id="@TGS#extreme", event_time=event_time, received_at=received_at
            )
        )
        log.append(
            Rejection(
                received_at=received_at,
                error_code=0,
                reason="repeat of event 2 (same"
                " CallbackCommand, GroupId and EventTime) with a different body",
                command=ordinary.command,
                query="",
                peer=None,
                content_length=3,
                raw=b"{}!",
            )
        )
        client = app.test_client()

        def get(url):
            response = client.get(url, headers=CREDENTIALS)
            assert response.status_code == 200, (url, response.status_code)
            return response

        assert sorted(listed_ids(get("/history").get_data(as_text=True))) == [1, 2]
        assert listed_ids(get("/history?group_id=@TGS%23extreme").get_data(as_text=True)) == [2]
        assert "@TGS#extreme" in get("/history/2").get_data(as_text=True)
        exported = list(
            csv.reader(
                io.StringIO(get("/history.csv?group_id=@TGS%23extreme").get_data(as_text=True)[1:])
            )
        )
        assert exported[1][2] == str(event_time)
        [record] = get("/history.json?group_id=@TGS%23extreme").get_json()
        assert record["EventTime"] == event_time
        assert 'href="/history/2"' in get("/quarantine").get_data(as_text=True)
        assert json.loads(get("/quarantine.json").get_data())[0]["id"] == 1
        assert (
            len(list(csv.reader(io.StringIO(get("/quarantine.csv").get_data(as_text=True))))) == 2
        )
        for since in ("0001-01-01", "2000-01-01", "9999-12-30"):
            get(f"/history?since={since}")
            get(f"/quarantine?since={since}")
    finally:
        app.extensions["tim_audit"].close()


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize(
    "query",
    [
        "since=0001-01-01",
        "until=0001-01-01",
        "since=9999-12-30",
        "until=9999-12-30",
        "since=9999-12-31T23:59:59.999-12:00",
    ],
)
def test_since_and_until_at_the_ends_of_the_calendar_are_answered(make_app, zone, query):
    app = make_app(DISPLAY_TIMEZONE=zone)
    for event in sample_events():
        app.extensions["tim_audit"].append(event)
    assert app.test_client().get(f"/history?{query}", headers=CREDENTIALS).status_code == 200


@pytest.mark.parametrize("zone", ZONES)
def test_until_past_the_calendar_is_a_400_naming_it(make_app, zone):
    response = (
        make_app(DISPLAY_TIMEZONE=zone)
        .test_client()
        .get("/history?until=9999-12-31", headers=CREDENTIALS)
    )
    assert response.status_code == 400
    assert (
        'id="problem-until">Out of range: use a date from 0001-01-01 to 9999-12-30.<'
        in response.get_data(as_text=True)
    )
