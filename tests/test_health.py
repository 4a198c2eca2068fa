import os

from tencent import group_body


def test_healthz_reports_the_event_count(client, post):
    post(b'{"not": "valid"}')
    for number in range(3):
        post(group_body(GroupId=f"@TGS#{number}"))
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "events": 3, "configured": True}


def test_healthz_says_when_sdkappid_is_not_configured(make_app):
    response = make_app(SDKAPPID=None).test_client().get("/healthz")
    assert (response.status_code, response.get_json()["configured"]) == (200, False)


def test_healthz_is_unavailable_when_the_database_cannot_be_opened(app, client):
    os.rename(app.config["DATABASE"], app.config["DATABASE"] + ".moved")
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "error": "unable to open database file"}
