"""Can one authenticated sender stall the writer? Callbacks at a steady rate
while another sender posts the worst bodies, side by side with a quiet run.

``tim-audit serve`` (the default arrangement) on a fresh log. For
``--seconds``, callbacks arrive at ``--rate`` per second on their own
schedule (open loop, 2 s each, as Tencent gives them), while ``--senders``
connections post, back to back, bodies chosen in turn from:

- ``name``: a valid body whose Name is at the bound (1,024 bytes of UTF-8);
- ``members``: the most members the schema takes, each at the account bound;
- ``user data``: the most UserDefinedDataList entries, each at the bounds;
- ``hot group``: a new event on one GroupId that holds all of them, then an
  identical repeat and a conflicting repeat of it;
- ``NUL id``: a GroupId holding NUL, and its repeat;
- ``refused again``: the same 1 MB body over the Name bound, every time;
- ``refused anew``: a different 1 MB body over the Name bound, every time.

    python bench/worst.py [--seconds 20] [--rate 50] [--senders 1]

Target (issue 15): callback p99 <= 50 ms and no failures while one sender
posts the worst bodies; ``--senders 2`` shows what two at once do.
"""

import argparse
import http.client
import itertools
import json
import pathlib
import statistics
import sys
import tempfile
import threading
import time
from urllib.parse import urlencode

BENCH = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import isolation  # noqa: E402
import loadgen  # noqa: E402

from tim_audit.ingest import schemas  # noqa: E402
from tim_audit.ingest.signature import sign  # noqa: E402

BIG = 1024 * 1024 - 4096  # a refused body just under MAX_CONTENT_LENGTH


def body(number, **fields):
    return json.dumps(
        {
            "CallbackCommand": loadgen.COMMAND,
            "GroupId": f"@TGS#worst{number}",
            "Operator_Account": "administrator",
            "Owner_Account": "leckie",
            "Type": "Public",
            "Name": f"worst {number}",
            "EventTime": 1700000000000 + number,
            **fields,
        },
        ensure_ascii=False,
    ).encode()


def worst_bodies():
    """(kind, body) in turn, for ever."""
    name = "群" * (schemas.MAX_NAME // 3) + "x" * (schemas.MAX_NAME % 3)
    members = [
        {"Member_Account": f"{n:0>{schemas.MAX_ACCOUNT}}"} for n in range(schemas.MAX_MEMBERS)
    ]
    user_data = [
        {"Key": f"{n:0>{schemas.MAX_USER_DATA_KEY}}", "Value": "v" * schemas.MAX_USER_DATA_VALUE}
        for n in range(schemas.MAX_USER_DATA)
    ]
    refused = body(0, Name="x" * BIG)
    for number in itertools.count(1):
        yield "name", body(number, Name=name)
        yield "members", body(number, GroupId=f"@TGS#m{number}", MemberList=members)
        yield "user data", body(number, GroupId=f"@TGS#u{number}", UserDefinedDataList=user_data)
        hot = body(number, GroupId="@TGS#hot", MemberList=members[:100])
        yield "hot group", hot
        yield "hot group", hot
        yield "hot group", body(number, GroupId="@TGS#hot", Name="a conflicting body")
        nul = body(number, GroupId=f"@TGS#\x00{number % 7}\x00")
        yield "NUL id", nul
        yield "NUL id", nul
        yield "refused again", refused
        yield "refused anew", body(number, Name=f"{number}" + "x" * BIG)


def query():
    request_time = str(int(time.time()))
    return urlencode(
        {
            "SdkAppid": loadgen.SDKAPPID,
            "CallbackCommand": loadgen.COMMAND,
            "contenttype": "json",
            "RequestTime": request_time,
            "Sign": sign(loadgen.TOKEN, request_time),
        }
    )


class WorstSender:
    """``senders`` connections posting worst bodies back to back until stopped;
    counts the answers by kind and status."""

    def __init__(self, port, senders):
        self.port = port
        self.stop = threading.Event()
        self.bodies = worst_bodies()
        self.lock = threading.Lock()
        self.answers = {}
        self.sent = 0
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(senders)]
        for thread in self.threads:
            thread.start()

    def _send(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            with self.lock:
                kind, data = next(self.bodies)
            try:
                conn.request("POST", f"/callback?{query()}", body=data)
                response = conn.getresponse()
                answer = json.loads(response.read())
                outcome = (response.status, answer["ErrorCode"])
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                outcome = "error"
            with self.lock:
                self.sent += len(data)
                counts = self.answers.setdefault(kind, {})
                counts[outcome] = counts.get(outcome, 0) + 1
        conn.close()

    def close(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def figures(results):
    answered = sorted(r for r in results if r is not None)
    failed = len(results) - len(answered)
    p50 = statistics.median(answered) * 1000 if answered else float("nan")
    p99 = answered[int(0.99 * (len(answered) - 1))] * 1000 if answered else float("nan")
    worst = answered[-1] * 1000 if answered else float("nan")
    return p50, p99, worst, failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=50, help="callbacks per second")
    parser.add_argument("--senders", type=int, default=1, help="connections of worst bodies")
    args = parser.parse_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="tim-audit-worst-"))
    database = work / "audit.sqlite3"
    process, ingest, _ = isolation.start("split", database, work)
    try:
        quiet = figures(isolation.callbacks(ingest, args.seconds, args.rate, "quiet-"))
        sender = WorstSender(ingest, args.senders)
        started = time.monotonic()
        loaded = figures(isolation.callbacks(ingest, args.seconds, args.rate, "loaded-"))
        sender.close()
        elapsed = time.monotonic() - started
    finally:
        process.terminate()
        process.wait(15)
    print(
        f"{args.rate} callbacks/s for {args.seconds} s, quiet and then beside {args.senders}"
        f" connections of worst bodies ({sender.sent / elapsed / 1e6:.1f} MB/s,"
        f" {sum(sum(c.values()) for c in sender.answers.values()) / elapsed:.0f} bodies/s)\n"
    )
    print(f"{'run':<8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'failed':>7}")
    for run, (p50, p99, worst, failed) in (("quiet", quiet), ("loaded", loaded)):
        print(f"{run:<8} {p50:>8.2f} {p99:>8.2f} {worst:>8.2f} {failed:>7}")
    print("\nworst bodies answered (status, ErrorCode): count")
    for kind, counts in sender.answers.items():
        print(f"  {kind:<14} {counts}")
    _, p99, _, failed = loaded
    passed = p99 <= 50 and not failed
    print(
        f"\n  [{'PASS' if passed else 'FAIL'}] callback p99 {p99:.2f} ms <= 50 ms under the"
        f" worst bodies, {failed} failed or timed out; p99 {p99 / quiet[1]:.2f}x the quiet run's"
    )
    print(f"\n(work files in {work})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
