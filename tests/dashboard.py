"""A small log with every kind of value the dashboard filters on, and a
reference filter to check the dashboard's answers against."""

import base64
import html
import json
import re

from werkzeug.security import generate_password_hash

from tim_audit.log.records import Event

# The reviewer the tests sign in as; a cheap hash keeps the suite fast.
REVIEWER, PASSWORD = "alice", "correct horse battery staple"
REVIEWERS = {REVIEWER: generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")}

DAY = 86_400_000
START = 1_772_323_200_000  # 2026-03-01T00:00:00Z

CREDENTIALS = {
    "Authorization": "Basic " + base64.b64encode(f"{REVIEWER}:{PASSWORD}".encode()).decode()
}

NAMES = [
    "周末羽毛球 🏸",
    "사내 공지",
    "Project Atlas",
    "STRASSE crew",
    "Straße Team",
    "<script>alert(1)</script>",
    '=HYPERLINK("http://evil")',
    "家族群",
    "ops",
    "Ωμάδα",
]
TYPES = ["Public", "Private", "ChatRoom", "AVChatRoom", "Community"]


def sample_events():
    """40 events over 10 days; a few share an EventTime, one lists a member
    twice, one has no owner field and one an empty owner."""
    events = []
    for number in range(40):
        event_time = START + (number // 4) * DAY + (number % 4) * 3_600_000
        if number in (10, 11):
            event_time = START + 2 * DAY + 7_200_000  # a tie on EventTime
        members = [f"m{number % 3}", f"m{3 + number % 5}"]
        if number == 7:
            members = ["bob", "carol", "bob"]
        owner = None if number == 5 else "" if number == 6 else f"owner{number % 4}"
        events.append(
            Event(
                received_at=event_time + 500,
                command="Group.CallbackAfterCreateGroup",
                group_id=f"@TGS#g{number % 37}",  # three group ids are reused
                type=TYPES[number % 5],
                name=NAMES[number % len(NAMES)],
                operator="administrator" if number % 2 else f"owner{number % 4}",
                owner=owner,
                event_time=event_time,
                members=tuple(members),
                user_data=None,
                sdkappid="1400000001",
                client_ip="203.0.113.7",
                opt_platform="Android",
                peer="127.0.0.1",
                raw=json.dumps(
                    {
                        "CallbackCommand": "Group.CallbackAfterCreateGroup",
                        "GroupId": f"@TGS#g{number % 37}",
                        "n": number,
                    }
                ).encode(),
            )
        )
    return events


def expected_ids(
    events,
    group_id=None,
    owner=None,
    operator=None,
    member=None,
    type=None,
    q=None,
    since=None,
    until=None,
):
    """The ids the dashboard must list, newest EventTime first, ties by id."""
    matched = []
    for event_id, event in enumerate(events, start=1):
        if (
            (group_id is None or event.group_id == group_id)
            and (owner is None or event.owner == owner)
            and (operator is None or event.operator == operator)
            and (member is None or member in event.members)
            and (type is None or event.type == type)
            and (q is None or q.casefold() in event.name.casefold())
            and (since is None or event.event_time >= since)
            and (until is None or event.event_time <= until)
        ):
            matched.append((event.event_time, event_id))
    return [event_id for _, event_id in sorted(matched, reverse=True)]


def listed_ids(page_html):
    """The event ids linked from the rows of a history page, in order."""
    table = (
        page_html.split('<table class="events">', 1)[1].split("</table>", 1)[0]
        if '<table class="events">' in page_html
        else ""
    )
    return [int(i) for i in re.findall(r'<a href="/history/(\d+)"', table)]


def link(page_html, rel):
    found = re.search(rf'<a rel="{rel}" href="([^"]+)"', page_html)
    return html.unescape(found.group(1)) if found else None
