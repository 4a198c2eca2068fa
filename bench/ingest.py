"""How fast /callback takes callbacks, next to a bare Flask app.

Starts tim-audit (a fresh SQLite file, synchronous=FULL) and bench/hello.py
under the same waitress settings, each in a process of its own, and sends
both the same distinct, correctly signed create-group callbacks over 8
keep-alive connections, alternating rounds so that both see the same
machine. Then checks that the log holds exactly the acknowledged events and
that ``flask --app tim_audit verify`` passes.

    python bench/ingest.py [--requests 5000] [--rounds 3] [--connections 8]

Targets: callbacks/s at least 0.8 of the bare app's, p99 at most 20 ms, no
errors.
"""

import argparse
import json
import os
import pathlib
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlencode

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import loadgen  # noqa: E402

from tim_audit.signature import sign  # noqa: E402

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
SDKAPPID = "1400000001"
TOKEN = "bench-token"
COMMAND = "Group.CallbackAfterCreateGroup"
# The settings the README recommends; both servers get the same.
WAITRESS = ["--threads=8", "--outbuf-high-watermark=1048576"]
OK = {"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0}
NAMES = ["周末羽毛球 🏸", "사내 공지", "Project Atlas", "家族", "Ops on-call", "Ωμάδα", "設計レビュー"]


def serve(app_spec, cwd, env, log_path):
    """Start waitress on a free loopback port; returns (process, port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", *WAITRESS, app_spec],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=open(log_path, "ab"),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{app_spec} did not start; see {log_path}")


def callbacks(first, count, rng):
    """Distinct create-group callbacks, signed now (the window is 60 s)."""
    now = str(int(time.time()))
    query = urlencode({
        "SdkAppid": SDKAPPID, "CallbackCommand": COMMAND, "contenttype": "json",
        "ClientIP": "203.0.113.7", "OptPlatform": "Android",
        "RequestTime": now, "Sign": sign(TOKEN, now),
    })
    requests = []
    for number in range(first, first + count):
        members = [{"Member_Account": f"user{rng.randrange(50000)}"} for _ in range(rng.randint(0, 6))]
        body = {
            "CallbackCommand": COMMAND,
            "GroupId": f"@TGS#bench{number:09d}",
            "Operator_Account": "administrator",
            "Owner_Account": members[0]["Member_Account"] if members else "",
            "Type": rng.choice(["Public", "Private", "ChatRoom", "AVChatRoom", "Community"]),
            "Name": f"{rng.choice(NAMES)} {number}",
            "MemberList": members,
            "EventTime": 1700000000000 + number,
        }
        requests.append(loadgen.post_request(
            f"/callback?{query}", json.dumps(body, ensure_ascii=False).encode("utf-8")
        ))
    return requests


def measure(port, requests, connections, expect_ok):
    results, wall = loadgen.run("127.0.0.1", port, requests, connections)
    latencies = [seconds for _, _, seconds in results]
    good = [r for r in results if r[0] == 200 and (not expect_ok or json.loads(r[1]) == OK)]
    return {
        "rate": len(results) / wall,
        "p50": loadgen.percentile(latencies, 0.50) * 1000,
        "p99": loadgen.percentile(latencies, 0.99) * 1000,
        "errors": len(results) - len(good),
        "acknowledged": len(good),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="callbacks per round and server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()

    rng = random.Random(7)
    work = pathlib.Path(tempfile.mkdtemp(prefix="tim-audit-ingest-"))
    env = {
        **os.environ,
        "TIM_AUDIT_INSTANCE_PATH": str(work),
        "TIM_AUDIT_DATABASE": str(work / "bench.sqlite3"),
        "TIM_AUDIT_SDKAPPID": SDKAPPID,
        "TIM_AUDIT_CALLBACK_TOKEN": json.dumps(TOKEN),
    }
    servers = {
        "hello": serve("hello:app", BENCH, env, work / "hello.log"),
        "tim-audit": serve("wsgi:app", ROOT, env, work / "tim-audit.log"),
    }
    results = {name: [] for name in servers}
    acknowledged = 0
    sent = 0
    try:
        for name, (_, port) in servers.items():  # warm up both
            warm = measure(port, callbacks(sent, 200, rng), args.connections, name == "tim-audit")
            if name == "tim-audit":
                acknowledged += warm["acknowledged"]
                sent += 200
        print(f"{args.rounds} rounds of {args.requests} callbacks over {args.connections}"
              f" keep-alive connections, waitress {' '.join(WAITRESS)}\n")
        print(f"{'round':>5}  {'server':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for round_number in range(1, args.rounds + 1):
            for name, (_, port) in servers.items():
                requests = callbacks(sent, args.requests, rng)
                figures = measure(port, requests, args.connections, name == "tim-audit")
                if name == "tim-audit":
                    acknowledged += figures["acknowledged"]
                    sent += args.requests
                results[name].append(figures)
                print(f"{round_number:>5}  {name:<10} {figures['rate']:>8.0f} {figures['p50']:>8.2f}"
                      f" {figures['p99']:>8.2f} {figures['errors']:>7}")
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(10)

    def median(name, key):
        return statistics.median(r[key] for r in results[name])

    ratio = median("tim-audit", "rate") / median("hello", "rate")
    errors = sum(r["errors"] for r in results["tim-audit"])
    print("\nmedians")
    for name in servers:
        print(f"  {name:<10} {median(name, 'rate'):>8.0f} req/s  p50 {median(name, 'p50'):.2f} ms"
              f"  p99 {median(name, 'p99'):.2f} ms")
    print(f"  ratio tim-audit/hello: {ratio:.2f}")

    conn = sqlite3.connect(env["TIM_AUDIT_DATABASE"])
    stored = conn.execute("SELECT count(*) FROM event").fetchone()[0]
    conn.close()
    verified = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "tim_audit", "verify"],
        env=env, cwd=ROOT, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]
    print(f"\nlog: {stored} events stored, {acknowledged} acknowledged of {sent} sent; verify: {verified}")

    checks = [
        (f"ratio {ratio:.2f} >= 0.8", ratio >= 0.8),
        (f"p99 {median('tim-audit', 'p99'):.2f} ms <= 20 ms", median("tim-audit", "p99") <= 20),
        (f"errors {errors} == 0", errors == 0),
        ("log holds exactly the acknowledged events", stored == acknowledged == sent),
        ("verify passes", verified.startswith(f"OK {stored} ")),
    ]
    print()
    for label, passed in checks:
        print(f"  [{'PASS' if passed else 'FAIL'}] {label}")
    print(f"\n(work files in {work})")
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
