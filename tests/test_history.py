import base64
import dataclasses
import datetime
import html
import re

import pytest

from dashboard import CREDENTIALS, DAY, START, expected_ids, link, listed_ids, sample_events
from tencent import CREATE, group_body, signed_query
import conftest
from tim_audit import create_app
from tim_audit.log import db, records
from tim_audit.review import counting
from tim_audit.log.records import Rejection


def page_ids(get, **query):
    response = get("/history", query_string={"limit": 500, **query})
    assert response.status_code == 200
    return listed_ids(response.get_data(as_text=True))


SINGLE_FILTERS = [
    {"group_id": "@TGS#g1"},
    {"group_id": "@TGS#g36"},
    {"owner": "owner1"},
    {"operator": "administrator"},
    {"operator": "owner2"},
    {"member": "m1"},
    {"member": "bob"},
    {"member": "nobody"},
    {"type": "Public"},
    {"type": "Community"},
    {"q": "羽毛球"},
    {"q": "strasse"},
    {"q": "ATLAS"},
    {"q": "<script>"},
    {"q": "🏸"},
    {"q": "Ω"},
    {"since": START + 5 * DAY},
    {"until": START + 2 * DAY + 7_200_000},
]

COMBINED_FILTERS = [
    {"type": "Public", "operator": "administrator"},
    {"owner": "owner1", "member": "m1"},
    {"member": "m4", "since": START + 2 * DAY, "until": START + 6 * DAY},
    {"q": "a", "type": "Private", "since": START + DAY},
    {
        "group_id": "@TGS#g2",
        "owner": "owner2",
        "type": "ChatRoom",
        "operator": "owner2",
        "member": "m2",
        "q": "공지",
        "since": START,
        "until": START + 10 * DAY,
    },
]


def as_query(filters):
    """Filters as the dashboard takes them: times as UTC ISO strings."""
    query = dict(filters)
    for key in ("since", "until"):
        if key in query:
            ms = query[key]
            query[key] = f"{_iso(ms)}Z"
    return query


def _iso(ms):
    when = datetime.datetime.fromtimestamp(ms // 1000, datetime.timezone.utc)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}"


@pytest.mark.parametrize(
    "filters",
    SINGLE_FILTERS + COMBINED_FILTERS,
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_filter_lists_exactly_the_matching_events(events, get, filters):
    expected = expected_ids(events, **filters)
    assert page_ids(get, **as_query(filters)) == expected
    text = get("/history", query_string=as_query(filters)).get_data(as_text=True)
    count = re.search(r"<strong>([\d,]+)</strong> events? match", text).group(1)
    assert int(count.replace(",", "")) == len(expected)


def test_unfiltered_history_lists_newest_first_with_ties_by_id(events, get):
    ids = page_ids(get)
    assert ids == expected_ids(events)
    assert ids.index(12) < ids.index(11) < ids.index(10)  # 10 and 11 share an EventTime


def test_member_listed_twice_finds_its_event_once(events, get):
    assert page_ids(get, member="bob") == [8]


def test_whole_day_bounds_are_read_in_display_timezone(make_app):
    app = make_app(DISPLAY_TIMEZONE="Asia/Shanghai")
    log = app.extensions["tim_audit"]
    events = sample_events()
    for event in events:
        log.append(event)
    get = lambda url, **kw: app.test_client().get(url, headers=CREDENTIALS, **kw)  # noqa: E731
    # 2026-03-03 in Shanghai runs from 2026-03-02T16:00Z to 2026-03-03T16:00Z.
    since, until = START + DAY + 16 * 3_600_000, START + 2 * DAY + 16 * 3_600_000 - 1
    assert page_ids(get, since="2026-03-03", until="2026-03-03") == expected_ids(
        events, since=since, until=until
    )


@pytest.mark.parametrize(
    "since, ms",
    [
        ("2026-03-03", START + 2 * DAY),
        ("2026-03-03T08:00:00+08:00", START + 2 * DAY),
        ("2026-03-03 01:00", START + 2 * DAY + 3_600_000),
        ("2026-03-03T01:00:00.001Z", START + 2 * DAY + 3_600_001),
    ],
)
def test_since_takes_dates_and_times_with_or_without_offsets(events, get, since, ms):
    assert page_ids(get, since=since) == expected_ids(events, since=ms)


@pytest.mark.parametrize(
    "since", ["1773100800000", "20260303", "2026-03-03T01", "03/03/2026", "2026-03-03T01:00+0800"]
)
def test_since_refuses_other_forms(events, get, since):
    response = get("/history", query_string={"since": since})
    assert response.status_code == 400
    assert "Not an ISO date or date-time" in response.get_data(as_text=True)


@pytest.mark.parametrize("limit", [1, 3, 7, 40, 500])
def test_pages_visit_every_event_once_in_both_directions(events, get, limit):
    expected = expected_ids(events)
    seen, pages = [], []
    url = f"/history?limit={limit}"
    while url:
        text = get(url).get_data(as_text=True)
        pages.append(listed_ids(text))
        seen += pages[-1]
        url = link(text, "next")
    assert seen == expected
    assert all(len(ids) == limit for ids in pages[:-1])
    back = list(reversed(pages[-1]))
    text = (
        get(f"/history?limit={limit}&after={pages[-1][0]}").get_data(as_text=True)
        if len(pages) > 1
        else ""
    )
    while text:
        back += list(reversed(listed_ids(text)))
        url = link(text, "prev")
        text = get(url).get_data(as_text=True) if url else ""
    assert back == list(reversed(expected))


def test_pages_keep_the_filters(events, get):
    text = get("/history?type=Public&limit=2").get_data(as_text=True)
    assert link(text, "next").startswith("/history?before=")
    assert "type=Public" in link(text, "next") and "limit=2" in link(text, "next")
    seen = listed_ids(text)
    while url := link(text, "next"):
        text = get(url).get_data(as_text=True)
        seen += listed_ids(text)
    assert seen == expected_ids(events, type="Public")


def test_first_page_has_no_newer_link_and_last_page_no_older(events, get):
    first = page = get("/history?limit=7").get_data(as_text=True)
    while link(page, "next"):
        page = get(link(page, "next")).get_data(as_text=True)
    assert page != first
    assert link(first, "prev") is None and link(first, "next") is not None
    assert link(page, "next") is None and link(page, "prev") is not None


@pytest.mark.parametrize(
    "query, problem",
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("before=abc", "before"),
        ("before=1&after=2", "before or after"),
        ("before=99999999999999999999", "before"),
        ("since=yesterday", "since"),
        ("until=2026-13-45", "until"),
        ("q=" + "x" * 300, "q"),
        ("before=9999", "no event 9999"),
    ],
)
def test_bad_query_is_a_400_page_naming_the_problem(events, get, query, problem):
    response = get(f"/history?{query}")
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert problem in html.unescape(response.get_data(as_text=True))


def test_empty_form_fields_mean_any(events, get):
    assert page_ids(get, group_id="", owner="", q="", since="", until="", type="") == expected_ids(
        events
    )


def test_no_match_lists_each_filter_with_a_link_that_drops_it(events, get):
    text = html.unescape(get("/history?owner=nobody&type=Public&limit=100").get_data(as_text=True))
    assert "<strong>0</strong> events match" in text
    empty = text.split('<div class="empty">', 1)[1].split("</div>", 1)[0]
    assert "No events match" in empty
    assert re.findall(r'<span>([^<]+)</span> <q>([^<]+)</q>\s*<a href="([^"]+)"', empty) == [
        ("Owner", "nobody", "/history?type=Public&limit=100"),
        ("Type", "Public", "/history?owner=nobody&limit=100"),
    ]
    assert "Export all" not in text and "/history.csv" not in text


def test_empty_log_says_nothing_is_recorded_and_offers_no_export(get):
    text = get("/history").get_data(as_text=True)
    assert "No events have been recorded yet." in text
    assert "Export all" not in text


def test_active_filters_are_summed_up_above_the_results(events, get):
    text = html.unescape(
        get("/history?type=Public&q=ops&since=2026-03-02&before=30").get_data(as_text=True)
    )
    summary = text.split('<ul class="active"', 1)[1].split("</ul>", 1)[0]
    assert re.findall(r'<span>([^<]+)</span> <q>([^<]+)</q>\s*<a href="([^"]+)"', summary) == [
        ("Type", "Public", "/history?q=ops&since=2026-03-02"),
        ("Name contains", "ops", "/history?type=Public&since=2026-03-02"),
        ("Since", "2026-03-02", "/history?type=Public&q=ops"),
    ]
    assert '<a href="/history">Remove all</a>' in summary


def test_unfiltered_history_has_no_filter_summary(events, get):
    assert '<ul class="active"' not in get("/history").get_data(as_text=True)


@pytest.mark.parametrize(
    "name, hint",
    [
        ("since", "e.g. 2026-03-01"),
        ("until", "e.g. 2026-03-31T18:00"),
        ("group_id", "e.g. @TGS#2J4SZEAEL"),
    ],
)
def test_placeholders_read_as_examples(get, name, hint):
    text = get("/history").get_data(as_text=True)
    assert re.search(rf'<input name="{name}" value="" placeholder="{hint}">', text)


def test_placeholders_are_styled_as_hints(client):
    with client.get("/static/style.css") as response:
        css = response.get_data(as_text=True)
    assert re.search(r"::placeholder\s*{[^}]*font-style: italic", css)


@pytest.mark.parametrize(
    "url",
    [
        "/history?owner=alice&since=yesterday&limit=100",
        "/history.csv?owner=alice&since=yesterday&limit=100",
        "/history.json?owner=alice&since=yesterday&limit=100",
    ],
)
def test_bad_filter_answers_the_history_page_with_the_field_marked(events, get, url):
    response = get(url)
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert "<nav>" in text and '<form class="filters"' in text
    assert '<input name="owner" value="alice">' in text
    assert (
        '<input name="since" value="yesterday" placeholder="e.g. 2026-03-01"'
        ' aria-invalid="true" aria-describedby="problem-since">'
    ) in text
    assert '<span class="problem" id="problem-since">Not an ISO date or date-time' in text
    assert "<option selected>100</option>" in text
    assert listed_ids(text) == [] and "events match" not in text


def test_unknown_cursor_offers_the_first_page_with_the_filters(events, get):
    response = get("/history?type=Public&before=9999")
    assert response.status_code == 400
    text = html.unescape(response.get_data(as_text=True))
    assert "There is no event 9999 to page from." in text
    assert '<a href="/history?type=Public">Start from the newest</a>' in text


# --- one event -------------------------------------------------------------


def test_detail_page_shows_every_field(app, client, post, get):
    body = group_body(
        UserDefinedDataList=[{"Key": "Department", "Value": "财务"}], Name="周末羽毛球 🏸"
    )
    post(body)
    text = get("/history/1").get_data(as_text=True)
    for shown in (
        "Group.CallbackAfterCreateGroup",
        "@TGS#2J4SZEAEL",
        "周末羽毛球 🏸",
        "Public",
        "leckie",
        "group_root",
        "bob",
        "peter",
        "Department",
        "财务",
        "1400000001",
        "203.0.113.7",
        "RESTAPI",
        "127.0.0.1",
        "2022-12-09T08:26:54.123Z",
        "1670574414123",
    ):
        assert shown in text
    [(digest,)] = (
        app.extensions["tim_audit"]._connection().execute("SELECT hash FROM event").fetchall()
    )
    assert digest in text
    assert "0" * 64 in text  # the first row's previous hash
    assert "This row's hash matches its contents and the row before it." in text
    assert (
        "\n  &#34;GroupId&#34;: &#34;@TGS#2J4SZEAEL&#34;,\n" in text
    )  # the raw body, pretty-printed


def test_detail_page_says_when_a_row_does_not_verify(app, post, get):
    post(group_body())
    conn = app.extensions["tim_audit"]._connection()
    conn.execute("DROP TRIGGER event_no_update")
    conn.execute("UPDATE event SET name = 'edited'")
    text = get("/history/1").get_data(as_text=True)
    assert (
        "This row does NOT verify: event row 1: hash does not match the row&#39;s contents"
        " and the row before it. Its values are shown as stored." in text
    )


def test_detail_page_links_other_events_of_the_same_group(events, get):
    text = get("/history/2").get_data(as_text=True)  # @TGS#g1, reused by event 39
    assert 'href="/history/39"' in text
    assert "Other events of this GroupId" in text


def test_detail_page_lists_twenty_other_events_of_the_group_and_links_to_all(app, get):
    log = app.extensions["tim_audit"]
    records.write(
        log._connection(),
        [conftest.event(n, group_id="@TGS#reused") for n in range(1, 23)],
        log.key,
    )
    text = get("/history/1").get_data(as_text=True)
    listed = re.findall(r'<li><a href="/history/(\d+)">', text)
    assert listed == [str(n) for n in range(22, 2, -1)]
    assert '<a href="/history?group_id=@TGS%23reused">All events of this GroupId</a>' in text


def test_detail_page_of_a_group_with_twenty_others_has_no_more_link(app, get):
    log = app.extensions["tim_audit"]
    records.write(
        log._connection(),
        [conftest.event(n, group_id="@TGS#reused") for n in range(1, 22)],
        log.key,
    )
    text = get("/history/1").get_data(as_text=True)
    assert len(re.findall(r'<li><a href="/history/(\d+)">', text)) == 20
    assert "All events of this GroupId" not in text


@pytest.mark.parametrize("event_id", ["999", "0", "99999999999999999999999"])
def test_unknown_event_is_a_404_page(events, get, event_id):
    response = get(f"/history/{event_id}")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert f"There is no event {event_id}." in response.get_data(as_text=True)


# --- what a page may contain ------------------------------------------------


@pytest.mark.parametrize("url", ["/history", "/history/6", "/history?q=script"])
def test_names_are_escaped(events, get, url):
    text = get(url).get_data(as_text=True)
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_raw_body_is_escaped(post, get):
    post(group_body(Name="</pre><img src=x onerror=alert(1)>"))
    text = get("/history/1").get_data(as_text=True)
    assert "<img" not in text
    assert "&lt;/pre&gt;&lt;img src=x onerror=alert(1)&gt;" in text


@pytest.mark.parametrize("name", ["周末羽毛球 🏸", "사내 공지", "家族👨\u200d👩\u200d👧"])
def test_unicode_names_are_shown_intact(post, get, name):
    post(group_body(Name=name))
    assert name in get("/history").get_data(as_text=True)
    assert name in get("/history/1").get_data(as_text=True)


@pytest.mark.parametrize(
    "url",
    [
        "/history",
        "/history/1",
        "/history.csv",
        "/history.json",
        "/quarantine",
        "/no-such-page",
        "/callback",
        "/healthz",
    ],
)
def test_security_headers_are_sent(events, get, url):
    response = get(url)
    assert response.headers["Content-Security-Policy"] == "default-src 'self'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"


def test_pages_load_nothing_from_elsewhere(events, get):
    text = get("/history").get_data(as_text=True)
    assert re.findall(r'(?:src|href)="(?:https?:)?//', text) == []
    assert "<script" not in text and "style=" not in text


def test_times_are_shown_in_display_timezone_with_utc_alongside(make_app):
    app = make_app(DISPLAY_TIMEZONE="Asia/Shanghai")
    app.test_client().post("/callback", query_string=signed_query(), data=group_body())
    text = app.test_client().get("/history", headers=CREDENTIALS).get_data(as_text=True)
    assert (
        '<time datetime="2022-12-09T08:26:54.123Z" title="2022-12-09T08:26:54.123Z">2022-12-09 16:26:54.123</time>'
        in text
    )
    assert "Event time (Asia/<wbr>Shanghai)" in text


# --- chart and integrity strip ----------------------------------------------


def test_chart_counts_events_per_day_from_the_oldest_to_the_newest(events, get):
    text = get("/history").get_data(as_text=True)
    titles = re.findall(r"<title>(\d{4}-\d{2}-\d{2}): (\d+) events?</title>", text)
    assert [day for day, _ in titles] == [f"2026-03-{day:02d}" for day in range(1, 11)]
    assert [int(n) for _, n in titles] == [4] * 10
    assert "Events per day (UTC), 2026-03-01 – 2026-03-10</figcaption>" in text
    # The axis: every other day labelled, under its bar; the peak and 0 beside it.
    assert re.findall(r'<text x="([\d.]+)%" y="76">([^<]+)</text>', text) == [
        ("15.0", "Mar 2"),
        ("35.0", "Mar 4"),
        ("55.0", "Mar 6"),
        ("75.0", "Mar 8"),
        ("95.0", "Mar 10"),
    ]
    assert '<p class="scale" aria-hidden="true"><span>4</span><span>0</span></p>' in text


def day_after(days, hours=0):
    return START + days * DAY + hours * 3_600_000


@pytest.mark.parametrize(
    "times, unit, bars, first, last",
    [
        # One event: a day of hours, up to its hour.
        ([day_after(0, 14.5)], "hour", 24, "2026-02-28 15:00", "2026-03-01 14:00"),
        ([START, day_after(1, 23.99)], "hour", 48, "2026-03-01 00:00", "2026-03-02 23:00"),
        ([START, day_after(2)], "day", 3, "2026-03-01", "2026-03-03"),
        ([START, day_after(91)], "day", 92, "2026-03-01", "2026-05-31"),
        ([START, day_after(92)], "week", 15, "week of 2026-02-23", "week of 2026-06-01"),
        ([START, day_after(3 * 365)], "month", 36, "2026-03", "2029-02"),
        ([START, day_after(20 * 365)], "year", 21, "2026", "2046"),
    ],
    ids=["one event", "under two days", "two days", "91 days", "92 days", "3 years", "20 years"],
)
def test_chart_unit_fits_the_range_of_the_events(app, get, times, unit, bars, first, last):
    log = app.extensions["tim_audit"]
    for number, event_time in enumerate(times):
        log.append(
            dataclasses.replace(
                sample_events()[0], group_id=f"@TGS#{number}", event_time=int(event_time)
            )
        )
    text = get("/history").get_data(as_text=True)
    titles = re.findall(r"<title>([^<]+): (\d+) events?</title>", text)
    assert (len(titles), titles[0][0], titles[-1][0]) == (bars, first, last)
    assert sum(int(n) for _, n in titles) == len(times)
    assert f"Events per {unit} (UTC), {first} – {last}</figcaption>" in text
    assert 0 < len(re.findall(r"<text ", text)) <= 8


def test_chart_follows_the_filter_and_its_dates(events, get):
    text = get("/history?type=Public&since=2026-03-02&until=2026-03-05").get_data(as_text=True)
    titles = re.findall(r"<title>(\d{4}-\d{2}-\d{2}): (\d+) events?</title>", text)
    assert [day for day, _ in titles] == ["2026-03-02", "2026-03-03", "2026-03-04", "2026-03-05"]
    since, until = START + DAY, START + 5 * DAY - 1
    assert sum(int(n) for _, n in titles) == len(
        expected_ids(events, type="Public", since=since, until=until)
    )


def test_chart_of_an_until_in_the_future_ends_at_the_newest_event(events, get):
    text = get("/history?until=2099-01-01").get_data(as_text=True)
    titles = re.findall(r"<title>(\d{4}-\d{2}-\d{2}): (\d+) events?</title>", text)
    assert titles[-1][0] == "2026-03-10"


def test_integrity_strip_shows_count_and_head(events, app, get):
    text = get("/history").get_data(as_text=True)
    [(head,)] = (
        app.extensions["tim_audit"]
        ._connection()
        .execute("SELECT hash FROM event WHERE id = 40")
        .fetchall()
    )
    assert "<strong>40</strong> events" in text
    assert f'title="{head}"' in text
    assert "Not verified since this server started." in text


def test_verification_can_be_run_from_the_page(events, app, client, get):
    response = client.post("/history/verify", headers=CREDENTIALS)
    assert (response.status_code, response.headers["Location"]) == (303, "/history")
    app.extensions["tim_audit.verifier"].wait(10)
    text = get("/history").get_data(as_text=True)
    head = (
        app.extensions["tim_audit"]
        ._connection()
        .execute("SELECT hash FROM event WHERE id = 40")
        .fetchone()[0]
    )
    assert re.search(
        r"Chain verified at <time[^>]*>[^<]+</time>:\s+40 events, head <code title=\"" + head, text
    )


def test_a_broken_chain_turns_the_strip_red(events, app, get):
    conn = app.extensions["tim_audit"]._connection()
    conn.execute("DROP TRIGGER event_no_update")
    conn.execute("UPDATE event SET name = 'edited' WHERE id = 17")
    verifier = app.extensions["tim_audit.verifier"]
    verifier.start()
    verifier.wait(10)
    text = get("/history").get_data(as_text=True)
    assert 'class="integrity broken"' in text
    assert "Verification FAILED" in text and "event row 17: hash does not match" in text


def test_verification_runs_when_due(make_app):
    app = make_app(VERIFY_INTERVAL=600)
    app.test_client().get("/history", headers=CREDENTIALS)
    verifier = app.extensions["tim_audit.verifier"]
    verifier.wait(10)
    assert verifier.last.count == 0 and verifier.last.failure is None
    first = verifier.last
    app.test_client().get("/history", headers=CREDENTIALS)
    verifier.wait(10)
    assert verifier.last is first  # not due again for ten minutes


@pytest.mark.parametrize(
    "zone, footer",
    [
        ("UTC", "<footer>Times are shown in UTC, as in exports.</footer>"),
        (
            "Asia/Shanghai",
            "<footer>Times are shown in Asia/Shanghai; hover a time for UTC."
            " Exports use UTC.</footer>",
        ),
    ],
)
def test_footer_says_each_thing_once(make_app, zone, footer):
    app = make_app(DISPLAY_TIMEZONE=zone)
    text = app.test_client().get("/history", headers=CREDENTIALS).get_data(as_text=True)
    assert re.findall(r"<footer>.*</footer>", text) == [footer]


def test_checkpoints_page_shows_each_root_as_its_file_writes_it(config, make_app):
    origin = {"LOG_ORIGIN": "im-audit.example.com/1400000001"}
    result = create_app({**config, **origin}).test_cli_runner().invoke(args=["keygen"])
    assert result.exit_code == 0, result.output
    app = make_app(**origin)
    log = app.extensions["tim_audit"]
    for event in sample_events()[:3]:
        log.append(event)
    conn = db.connect(log.path)
    try:
        log.notary.sign(conn)
    finally:
        conn.close()
    client = app.test_client()
    note = client.get("/checkpoints/1.checkpoint", headers=CREDENTIALS).get_data(as_text=True)
    root = note.splitlines()[2]
    assert len(base64.b64decode(root, validate=True)) == 32
    text = client.get("/checkpoints", headers=CREDENTIALS).get_data(as_text=True)
    assert f'<td><code class="root">{root}</code></td>' in text
    assert base64.b64decode(root).hex()[:16] not in text
    assert "The head in the strip\nabove is another value" in text


# --- quarantine ------------------------------------------------------------


def test_quarantine_page_lists_reason_and_escaped_body(post, get):
    post(b'{"Name": "<script>alert(1)</script>"')
    post(b"[]")
    text = get("/quarantine").get_data(as_text=True)
    assert text.index("body is JSON but not an object") < text.index("body is not JSON")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>" not in text
    assert 'href="/quarantine/1.raw"' in text


def test_quarantined_body_downloads_byte_for_byte(post, get):
    body = b'{"Name": "\xe5\x91\xa8\xe6\x9c\xab", oops'
    post(body)
    response = get("/quarantine/1.raw")
    assert response.data == body
    assert (
        response.headers["Content-Disposition"]
        == 'attachment; filename="tim-audit-quarantine-1.body"'
    )


def test_quarantine_pages_older(post, get):
    for number in range(5):
        post(b"{" + str(number).encode())
    text = get("/quarantine?limit=2").get_data(as_text=True)
    assert re.findall(r"<td>(\d+)</td>\s*<td><time", text) == ["5", "4"]
    text = get(link(text, "next")).get_data(as_text=True)
    assert re.findall(r"<td>(\d+)</td>\s*<td><time", text) == ["3", "2"]


def test_root_redirects_to_history(get):
    response = get("/")
    assert (response.status_code, response.headers["Location"]) == (302, "/history")


@pytest.mark.parametrize("query", ["limit=0", "limit=x", "before=abc", "before=-3", "limit=501"])
def test_bad_quarantine_paging_is_a_400(get, query):
    response = get(f"/quarantine?{query}")
    assert response.status_code == 400
    assert query.split("=")[0] in response.get_data(as_text=True)


def test_conflicting_repeat_and_its_event_link_to_each_other(post, get):
    post(group_body(Name="first"))
    post(group_body(Name="second"))
    text = get("/quarantine").get_data(as_text=True)
    assert (
        '<td class="reason">repeat of <a href="/history/1">event 1</a> (same CallbackCommand,'
        " GroupId and EventTime) with a different body</td>"
    ) in text
    text = get("/history/1").get_data(as_text=True)
    assert "Conflicting repeats (1)" in text
    assert '<a href="/quarantine?repeat_of=1#q1">quarantined #1</a>' in text
    assert '<tr id="q1">' in get("/quarantine?repeat_of=1").get_data(as_text=True)


def test_the_event_page_counts_conflicting_repeats_only_up_to_the_cap(post, get, monkeypatch):
    monkeypatch.setattr(counting, "COUNT_CAP", 2)
    for name in ("first", "second", "third", "fourth"):
        post(group_body(Name=name))
    text = get("/history/1").get_data(as_text=True)
    assert "Conflicting repeats (more than 2)" in text
    assert text.count('<a href="/quarantine?repeat_of=1#q') == 3
    assert '<a href="/quarantine?repeat_of=1">All of them</a>' in text


def test_the_quarantine_page_counts_only_up_to_the_cap(post, get, monkeypatch):
    monkeypatch.setattr(counting, "COUNT_CAP", 2)
    for number in range(3):
        post(b"{oops %d" % number)
    text = get("/quarantine").get_data(as_text=True)
    assert "<strong>more than 2</strong> deliveries match" in text
    assert "Export all of them:" in text
    assert len(quarantine_ids(text)) == 3


def test_event_without_repeats_does_not_mention_them(post, get):
    post(group_body())
    assert "Conflicting repeats" not in get("/history/1").get_data(as_text=True)


@pytest.mark.parametrize(
    "reason",
    [
        "repeat of event 99999999999999999999999 (same CallbackCommand, GroupId and EventTime) with a different body",
        "repeat of event -1 (",
        "repeat of event 0 (",
        "repeat of event 2",
        "repeat of event 3x (",
        "<b>repeat of event 1 (</b>",
        "",
    ],
)
def test_odd_repeat_reason_is_shown_as_stored_without_a_link(app, get, reason):
    app.extensions["tim_audit"].append(
        Rejection(
            received_at=START,
            error_code=0,
            reason=reason,
            command=CREATE,
            query="",
            peer=None,
            content_length=None,
            raw=None,
        )
    )
    response = get("/quarantine")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert f'<td class="reason">{html.escape(reason, quote=False)}</td>' in text.replace(
        "&#34;", '"'
    )


def test_repeat_link_needs_error_code_zero(app, get):
    app.extensions["tim_audit"].append(
        Rejection(
            received_at=START,
            error_code=60024,
            reason="repeat of event 1 (says the sender)",
            command=CREATE,
            query="",
            peer=None,
            content_length=None,
            raw=None,
        )
    )
    assert 'href="/history/1"' not in get("/quarantine").get_data(as_text=True)


@pytest.fixture
def quarantined(app):
    """Six quarantined deliveries, a day apart: three kinds, two commands."""
    log = app.extensions["tim_audit"]
    kinds = [
        (60021, CREATE),
        (60024, CREATE),
        (0, CREATE),
        (60021, "Group.CallbackAfterGroupDestroyed"),
        (60024, CREATE),
        (0, CREATE),
    ]
    for number, (code, command) in enumerate(kinds):
        reason = "repeat of event 1 (x" if code == 0 and number == 2 else f"reason {number}"
        log.append(
            Rejection(
                received_at=START + number * DAY,
                error_code=code,
                reason=reason,
                command=command,
                query=f"n={number}",
                peer=None,
                content_length=3,
                raw=b"{%d}" % number,
            )
        )


def quarantine_ids(text):
    return [int(i) for i in re.findall(r'<tr id="q(\d+)">', text)]


@pytest.mark.parametrize(
    "query, ids",
    [
        ("", [6, 5, 4, 3, 2, 1]),
        ("error_code=60021", [4, 1]),
        ("error_code=0", [6, 3]),
        ("error_code=60020", []),
        ("command=Group.CallbackAfterGroupDestroyed", [4]),
        ("repeat_of=1", [3]),
        ("since=2026-03-03", [6, 5, 4, 3]),
        ("until=2026-03-02", [2, 1]),
        ("since=2026-03-02&until=2026-03-05T00:00:00.000Z&error_code=60024", [5, 2]),
    ],
)
def test_quarantine_filter_lists_exactly_the_matching_deliveries(quarantined, get, query, ids):
    text = get(f"/quarantine?{query}").get_data(as_text=True)
    assert quarantine_ids(text) == ids
    assert re.search(r"<strong>(\d+)</strong> deliver", text).group(1) == str(len(ids))


def test_quarantine_pages_keep_the_filters(quarantined, get):
    text = get("/quarantine?error_code=60021&limit=1").get_data(as_text=True)
    assert quarantine_ids(text) == [4]
    assert link(text, "next") == "/quarantine?before=4&error_code=60021&limit=1"
    assert quarantine_ids(get(link(text, "next")).get_data(as_text=True)) == [1]


def test_quarantine_sums_up_its_filters_each_removable(quarantined, get):
    text = html.unescape(get("/quarantine?error_code=60020&command=x").get_data(as_text=True))
    assert "No quarantined deliveries match" in text and "Export all" not in text
    assert re.findall(r'<span>([^<]+)</span> <q>([^<]+)</q>\s*<a href="([^"]+)"', text)[:2] == [
        ("ErrorCode", "60020", "/quarantine?command=x"),
        ("CallbackCommand", "x", "/quarantine?error_code=60020"),
    ]


@pytest.mark.parametrize(
    "query, field",
    [
        ("error_code=x", "error_code"),
        ("error_code=-1", "error_code"),
        ("repeat_of=0", "repeat_of"),
        ("since=soon", "since"),
        ("until=9999-12-31", "until"),
        ("limit=0", "limit"),
        ("before=x", "before"),
    ],
)
def test_bad_quarantine_filter_answers_the_page_with_the_field_marked(
    quarantined, get, query, field
):
    for url in (f"/quarantine?command=keep&{query}", f"/quarantine.csv?command=keep&{query}"):
        response = get(url)
        assert response.status_code == 400
        text = response.get_data(as_text=True)
        assert '<form class="filters"' in text and '<input name="command" value="keep"' in text
        assert f"<li><code>{field}</code>: " in text
        assert quarantine_ids(text) == []


def test_the_quarantine_page_reads_a_bounded_prefix_of_each_body(app, get, rows):
    log = app.extensions["tim_audit"]
    body = b'{"Name": "' + "群".encode() * 400_000 + b'"}'  # 1.2 MB of three-byte characters
    log.append(dataclasses.replace(conftest.rejection(1), content_length=len(body), raw=body))
    text = get("/quarantine").get_data(as_text=True)
    assert f"<summary>{len(body):,} bytes</summary>" in text
    shown = html.unescape(text.split('<pre class="raw">')[1].split("</pre>")[0])
    assert shown == '{"Name": "' + "群" * 3990
    assert "… the first 4,000 characters of it: download it whole." in text
