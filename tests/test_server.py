"""The app as deployed: under waitress, over real sockets."""

import http.client
import json
import threading
from urllib.parse import urlencode

from tencent import group_body, signed_query

OK = {"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0}


def post_all(server, bodies, connections):
    """POST each body over ``connections`` keep-alive connections at once;
    returns the (status, answer) of every one."""
    answers = []
    lock = threading.Lock()

    def worker(chunk):
        conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
        for body in chunk:
            conn.request("POST", "/callback?" + urlencode(signed_query()), body=body)
            response = conn.getresponse()
            answer = (response.status, json.loads(response.read()))
            with lock:
                answers.append(answer)
        conn.close()

    threads = [
        threading.Thread(target=worker, args=(bodies[i::connections],)) for i in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_a_thousand_callbacks_from_eight_threads_are_all_stored_once(live_server, runner, rows):
    bodies = [group_body(GroupId=f"@TGS#load{n}", EventTime=1700000000000 + n) for n in range(1000)]
    answers = post_all(live_server, bodies, connections=8)
    assert answers == [(200, OK)] * 1000
    assert rows("SELECT count(*), count(DISTINCT group_id), min(id), max(id) FROM event") == [
        (1000, 1000, 1, 1000)
    ]
    assert rows("SELECT count(*) FROM event_member") == [(2000,)]
    result = runner.invoke(args=["verify"])
    assert (result.exit_code, result.output.split()[:2]) == (0, ["OK", "1000"])


def test_repeats_sent_concurrently_are_stored_once(live_server, runner, rows):
    bodies = [group_body(GroupId=f"@TGS#dup{n % 10}") for n in range(200)]
    answers = post_all(live_server, bodies, connections=8)
    assert answers == [(200, OK)] * 200
    assert rows("SELECT count(*) FROM event") == [(10,)]
    assert runner.invoke(args=["verify"]).output.startswith("OK 10 ")


def test_healthz_over_http(live_server):
    conn = http.client.HTTPConnection(live_server.host, live_server.port, timeout=10)
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    answer = (response.status, json.loads(response.read()))
    conn.close()
    assert answer == (200, {"status": "ok", "events": 0, "configured": True})
