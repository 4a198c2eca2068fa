"""What each requirement of the ingest path costs, in CPU time per callback.

Each part is timed on its own, in this process, with time.process_time
(CPU, not waiting for the disk), over the same events bench/dataset.py
makes, written in batches of 8 as under load:

- the chain: canonical bytes and the link hash of each event;
- the Merkle tree: its leaf hash and the stored hashes of each event;
- what an ingest worker does before the writer: the signature check, the
  strict JSON parse, marshmallow, the log line each callback writes (to a
  file);
- the hand-off to the writer when INGEST_PROCESSES > 1 (handoff.py): the
  entry's frame made and read back, and a whole round trip over a
  socketpair, both ends in this process, as 8 request threads make them,
  to a writer that answers at once;
- dedupe: the query that finds stored events a batch repeats;
- the append-only triggers and the dashboard's indexes: the writer's
  inserts with and without them, on otherwise identical databases;
- the whole write of a batch, as the writer does it (inserts, chain, tree,
  dedupe; synchronous=OFF so that fsync stays out of the figure).

    python bench/costs.py [--events 20000]
"""

import argparse
import json
import logging
import pathlib
import re
import sqlite3
import sys
import tempfile
import threading
import time

BENCH = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import dataset  # noqa: E402

from tim_audit import config, create_ingest_app, handoff, serve  # noqa: E402
from tim_audit.ingest import callback, signature  # noqa: E402
from tim_audit.ingest.schemas import RECORDED  # noqa: E402
from tim_audit.log import chain, derived, records, tlog  # noqa: E402
from tim_audit.log.writer import AuditLog, Job  # noqa: E402

BATCH = 8


def per_event(function, count):
    started = time.process_time()
    function()
    return (time.process_time() - started) / count * 1e6


def write_all(path, events, schema_filter=None):
    """CPU µs per event to write ``events`` in batches through records.write, on a
    new log whose schema has ``schema_filter`` applied."""
    log = AuditLog(str(path))
    log.open()
    log.close()
    conn = sqlite3.connect(path, isolation_level=None)
    derived.allow_writes(conn)  # as the writer's connection, for the hourly counts' triggers
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA synchronous = OFF")
    if schema_filter is not None:
        for sql in schema_filter(conn):
            conn.execute(sql)

    def write():
        for start in range(0, len(events), BATCH):
            conn.execute("BEGIN IMMEDIATE")
            records.write(conn, events[start : start + BATCH], log.key)
            conn.execute("COMMIT")

    try:
        return per_event(write, len(events))
    finally:
        conn.close()


def round_trips(events):
    """CPU µs per entry for ``events`` sent through handoff by 8 threads,
    each on a connection of its own, to a Desk whose log answers at once."""

    class Immediate:
        failure = None

        def submit(self, entry, started, notify):
            job = Job(entry, started, started + 1.0, notify)
            job.finish(records.Receipt("stored", 1, "0" * 64))
            return job

    desk = handoff.Desk(Immediate(), serve.ingest_body_limit(config.DEFAULTS))
    pairs = [handoff.pair() for _ in range(8)]
    for own, _ in pairs:
        desk.attach(own)
    remote = handoff.Remote([theirs for _, theirs in pairs])

    def send(share):
        for event in share:
            remote.append(event)

    def all_threads():
        threads = [threading.Thread(target=send, args=(events[n::8],)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    try:
        return per_event(all_threads, len(events))
    finally:
        desk.close()
        for _, theirs in pairs:
            theirs.close()


def drop(kind, pattern):
    def statements(conn):
        names = conn.execute("SELECT name FROM sqlite_master WHERE type = ?", (kind,)).fetchall()
        return [f"DROP {kind.upper()} {name}" for (name,) in names if re.fullmatch(pattern, name)]

    return statements


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="tim-audit-costs-"))
    events = list(dataset.events(args.events, 730))
    count = len(events)

    rows = []
    previous = chain.GENESIS

    def chain_all():
        nonlocal previous
        for number, event in enumerate(events, 1):
            row = vars(event) | {
                "id": number,
                "name_folded": event.name.casefold(),
                "member_count": len(event.members),
            }
            previous = chain.link(None, previous, chain.row_bytes("event", row, event.members))
            rows.append(row)

    costs = {"chain (canonical bytes + link)": per_event(chain_all, count)}
    leaves = [
        chain.row_bytes("event", row, event.members)
        for row, event in zip(rows, events, strict=True)
    ]
    costs["Merkle tree (leaf + stored hashes)"] = per_event(
        lambda: list(tlog.all_stored_hashes(leaves)), count
    )

    token, now = "bench-token", str(int(time.time()))
    sign = signature.sign(token, now)
    costs["signature check (Sign, RequestTime)"] = per_event(
        lambda: [signature.check((token,), sign, now, 60) for _ in range(count)], count
    )
    costs["JSON parse (strict: UTF-8, no duplicate keys)"] = per_event(
        lambda: [callback._parse_json(event.raw) for event in events], count
    )
    bodies = [json.loads(event.raw) for event in events]
    schema = RECORDED["Group.CallbackAfterCreateGroup"]
    costs["marshmallow load"] = per_event(lambda: [schema.load(body) for body in bodies], count)

    app = create_ingest_app({"DATABASE": str(work / "unused.sqlite3"), "SDKAPPID": "1400000001"})
    handler = logging.FileHandler(work / "callbacks.log")
    handler.setFormatter(logging.getLogger().handlers[0].formatter)
    logging.getLogger().handlers[:] = [handler]
    outcome = callback.Outcome("stored", 200, callback.ErrorCode.OK, "", "@TGS#2J4SZEAEL")
    with app.test_request_context("/callback?CallbackCommand=Group.CallbackAfterCreateGroup"):
        costs["log line"] = per_event(
            lambda: [callback._log(outcome, 0.001) for _ in range(count)], count
        )

    frames = []
    costs["hand-off: the entry's frame, made"] = per_event(
        lambda: frames.extend(handoff._encode(event, 0.0) for event in events), count
    )
    costs["hand-off: the entry's frame, read"] = per_event(
        lambda: [handoff._decode(*frame) for frame in frames], count
    )
    costs["hand-off: a round trip, both ends (8 threads)"] = round_trips(events)

    full = write_all(work / "full.sqlite3", events)
    no_triggers = write_all(work / "no-triggers.sqlite3", events, drop("trigger", r".*_no_.*"))
    no_indexes = write_all(
        work / "no-indexes.sqlite3", events, drop("index", r"event_by_.*|event_member_by_.*")
    )
    conn = sqlite3.connect(work / "full.sqlite3", isolation_level=None)
    costs["dedupe query"] = per_event(
        lambda: [
            records._stored_with_keys(conn, events[s : s + BATCH]) for s in range(0, count, BATCH)
        ],
        count,
    )
    conn.close()
    costs["append-only triggers"] = full - no_triggers
    costs["dashboard indexes"] = full - no_indexes
    costs["the whole write of a batch (chain, tree, dedupe, triggers, indexes)"] = full

    print(f"{count:,} events from bench/dataset.py, batches of {BATCH}; CPU µs per callback\n")
    for label, micros in costs.items():
        print(f"  {label:<66} {micros:>7.1f}")
    print(f"\n(work files in {work})")


if __name__ == "__main__":
    main()
