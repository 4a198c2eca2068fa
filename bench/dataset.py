"""A realistic log of group creations, written through tim-audit's own append
path (records.write, which writes every callback's batch: same rows, same
chain, large transactions), for the dashboard benchmark and for screenshots.

    python bench/dataset.py PATH [--events 1000000] [--days 730]

Variety: five group types in uneven shares; 20,000 owners and 60,000
members drawn with a long tail; most groups made by "administrator" over
REST; a bot that is put into one group in ten; names in Chinese, Japanese,
Korean, English, German, Russian, Greek, Arabic and emoji; user-defined data
on one group in five; a few late deliveries out of EventTime order.
"""

import argparse
import itertools
import json
import os
import pathlib
import random
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from tim_audit.log import db, records  # noqa: E402
from tim_audit.log.records import Event  # noqa: E402
from tim_audit.log.writer import AuditLog  # noqa: E402

DAY_MS = 86_400_000
# The WAL a batch may leave before the next batch is made smaller.
WAL_TARGET = 32 * 2**20
END = 1_795_910_400_000  # 2026-11-28T00:00:00Z
TYPES = [("Public", 35), ("Private", 30), ("ChatRoom", 15), ("AVChatRoom", 10), ("Community", 10)]
PLATFORMS = ["RESTAPI", "Android", "iOS", "Web", "Windows", "Mac", "iPad"]
BOT = "bot_audit"
NAMES = [
    "{n}周末羽毛球 🏸",
    "{n}号楼业主群",
    "家族群 {n}",
    "项目组-{n}",
    "深圳分公司{n}",
    "读书会 第{n}期",
    "設計レビュー {n}",
    "営業チーム{n}",
    "사내 공지 {n}",
    "동아리 {n}기",
    "Project Atlas {n}",
    "Ops on-call #{n}",
    "Design review {n}",
    "Straße Team {n}",
    "Команда {n}",
    "Ομάδα {n}",
    "فريق {n}",
    "🎉 Launch party {n}",
    "Family 👨\u200d👩\u200d👧 {n}",
    "Release train {n}",
]


def _user(rng, population, prefix):
    """A long tail: a few users appear very often, most rarely."""
    return f"{prefix}{int(population * rng.random() ** 3)}"


def events(count, days, seed=1):
    rng = random.Random(seed)
    start = END - days * DAY_MS
    step = days * DAY_MS / count
    types, weights = zip(*TYPES, strict=True)
    for number in range(count):
        event_time = int(start + number * step + rng.random() * step)
        if rng.random() < 0.01:  # a retried delivery arriving late
            event_time -= rng.randint(1000, 600_000)
        group_type = rng.choices(types, weights)[0]
        owner = "" if rng.random() < 0.03 else _user(rng, 20_000, "u")
        operator = "administrator" if rng.random() < 0.6 else (owner or _user(rng, 20_000, "u"))
        members = (
            []
            if group_type == "AVChatRoom"
            else (
                [owner] * bool(owner) + [_user(rng, 60_000, "m") for _ in range(rng.randint(0, 12))]
            )
        )
        if members and rng.random() < 0.1:
            members.append(BOT)
        prefix = "@TGS#_" if group_type == "Community" else "@TGS#"
        body = {
            "CallbackCommand": "Group.CallbackAfterCreateGroup",
            "GroupId": f"{prefix}{number:08X}{rng.randrange(36**3):03x}",
            "Operator_Account": operator,
            "Owner_Account": owner,
            "Type": group_type,
            "Name": rng.choice(NAMES).format(n=rng.randint(1, 999)),
            "MemberList": [{"Member_Account": m} for m in members],
            "EventTime": event_time,
        }
        user_data = None
        if rng.random() < 0.2:
            user_data = [{"Key": "Department", "Value": rng.choice(["HR", "财务", "R&D", "영업"])}]
            body["UserDefinedDataList"] = user_data
        yield Event(
            received_at=event_time + rng.randint(30, 900),
            command=body["CallbackCommand"],
            group_id=body["GroupId"],
            type=group_type,
            name=body["Name"],
            operator=operator,
            owner=owner,
            event_time=event_time,
            members=tuple(members),
            user_data=None if user_data is None else json.dumps(user_data, ensure_ascii=False),
            sdkappid="1400000001",
            client_ip=f"203.0.113.{rng.randrange(1, 255)}",
            opt_platform=rng.choice(PLATFORMS),
            peer="127.0.0.1",
            raw=json.dumps(body, ensure_ascii=False).encode("utf-8"),
        )


def build(path, count, days=730, batch=2000, seed=1, progress=False):
    """Append ``count`` events to the log at ``path``, up to ``batch`` to a
    transaction, through records.write as the writer does; a checkpoint after each
    keeps the WAL small, as the writer's _bound_wal does. A batch dirties
    more index pages the larger the log, so it is halved whenever its
    commit left more than WAL_TARGET in the WAL. Returns (seconds, largest
    WAL in bytes)."""
    log = AuditLog(str(path))
    log.open()
    log.close()
    conn = db.connect(str(path))
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    # A large page cache: the indexes are appended to all over, and past a
    # few million events the default 2 MB makes each batch read them back.
    conn.execute("PRAGMA cache_size = -1048576")
    started = time.monotonic()
    largest_wal = written = 0
    pending = events(count, days, seed)
    try:
        while chunk := list(itertools.islice(pending, batch)):
            conn.execute("BEGIN IMMEDIATE")
            records.write(conn, chunk, log.key)
            conn.execute("COMMIT")
            wal = os.path.getsize(f"{path}-wal")
            largest_wal = max(largest_wal, wal)
            if wal > WAL_TARGET:
                batch = max(batch // 2, 1)
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            before, written = written, written + len(chunk)
            if progress and written // 100_000 > before // 100_000:
                print(f"  {written:,} events, {time.monotonic() - started:.0f} s", file=sys.stderr)
        # No ANALYZE: the service never runs it, so the queries are planned
        # here as on a real log (and as the query plan tests check).
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.monotonic() - started, largest_wal


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=730)
    args = parser.parse_args()
    seconds, largest_wal = build(args.path, args.events, args.days, progress=True)
    print(f"{args.events:,} events in {seconds:.0f} s; largest WAL {largest_wal / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
