"""How fast the dashboard answers on a large log, beside Datasette on the
same file, and how that grows with the log.

    python bench/history.py [--events 10000000] [--against 2500000] [--runs 7]
        [--datasette-runs 3] [--no-datasette]

Builds (once, then reuses) bench/out/history-N.sqlite3 for each size with
bench/dataset.py, through tim-audit's own append path, and prints where
its bytes go. Then, in one run, on the ``--events`` log:

1. server-side: each page rendered in-process (Flask test client, no HTTP);
2. through HTTP: ``tim-audit serve`` (ingest and review split, as in
   production), signed in with Basic auth, and Datasette (its own venv in
   bench/out/, outside the project's dependencies) serving the same file,
   for the same questions;
3. a full CSV export from each: rows/s and the review server's peak RSS;
4. callback latency while two full CSV exports run, next to the same
   callbacks with nothing else running.

With ``--against``, steps 1 and 2 run on that smaller log too, and each
page's growth is printed beside. Figures are medians of ``--runs`` runs
after one warm-up (``--datasette-runs`` for Datasette, whose pages take
seconds each on a large log). Targets: every page p50 <= 50 ms
server-side and at most 2x slower for 4x the events; CSV >= 150k rows/s at <= 64 MB; callbacks p99
<= 50 ms during two exports.
"""

import argparse
import base64
import http.client
import json
import os
import pathlib
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import dataset  # noqa: E402
from werkzeug.security import generate_password_hash  # noqa: E402

from tim_audit import create_app  # noqa: E402
from tim_audit.ingest.signature import sign  # noqa: E402

OUT = BENCH / "out"
USER, PASSWORD = "bench", "bench-password-1"
SDKAPPID, TOKEN = "1400000001", "bench-token"
COMMAND = "Group.CallbackAfterCreateGroup"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


def scenarios(conn, name):
    """(label, tim-audit URL, Datasette URL or None)."""
    middle = conn.execute("SELECT max(id) / 2 FROM event").fetchone()[0]
    group_id = conn.execute("SELECT group_id FROM event WHERE id = ?", (middle,)).fetchone()[0]
    quoted = urllib.parse.quote
    table = f"/{name}/event"
    march = ("2026-03-01", "2026-03-31")
    march_ms = (1772323200000, 1774915199999)
    return [
        ("first page, with count", "/history", f"{table}?_sort_desc=event_time"),
        (
            "group_id (exact)",
            f"/history?group_id={quoted(group_id)}",
            f"{table}?group_id={quoted(group_id)}&_sort_desc=event_time",
        ),
        ("owner (a busy one)", "/history?owner=u0", f"{table}?owner=u0&_sort_desc=event_time"),
        (
            "owner (a rare one)",
            "/history?owner=u12345",
            f"{table}?owner=u12345&_sort_desc=event_time",
        ),
        (
            "operator=administrator",
            "/history?operator=administrator",
            f"{table}?operator=administrator&_sort_desc=event_time",
        ),
        (
            "operator + March",
            f"/history?operator=administrator&since={march[0]}&until={march[1]}",
            f"{table}?operator=administrator&event_time__gte={march_ms[0]}&event_time__lte={march_ms[1]}&_sort_desc=event_time",
        ),
        ("member (a busy one)", "/history?member=m0", None),
        ("member (the bot, 9%)", "/history?member=bot_audit", None),
        ("member + type (busy)", "/history?member=m0&type=Private", None),
        ("member + March (busy)", f"/history?member=m0&since={march[0]}&until={march[1]}", None),
        ("type=Public (35%)", "/history?type=Public", f"{table}?type=Public&_sort_desc=event_time"),
        (
            "since/until (March)",
            f"/history?since={march[0]}&until={march[1]}",
            f"{table}?event_time__gte={march_ms[0]}&event_time__lte={march_ms[1]}&_sort_desc=event_time",
        ),
        (
            "combined: type + March",
            f"/history?type=Public&since={march[0]}&until={march[1]}",
            f"{table}?type=Public&event_time__gte={march_ms[0]}&event_time__lte={march_ms[1]}&_sort_desc=event_time",
        ),
        (
            "combined: owner + type",
            "/history?owner=u0&type=Private",
            f"{table}?owner=u0&type=Private&_sort_desc=event_time",
        ),
        (
            "q (common: 羽毛球, 5%)",
            f"/history?q={quoted('羽毛球')}",
            f"{table}?name__contains={quoted('羽毛球')}&_sort_desc=event_time",
        ),
        (
            "q (rare: atlas 77)",
            f"/history?q={quoted('atlas 77')}",
            f"{table}?name__contains={quoted('Atlas 77')}&_sort_desc=event_time",
        ),
        ("q (no match)", "/history?q=zzqx", f"{table}?name__contains=zzqx&_sort_desc=event_time"),
        (
            "q (2 CJK: 业主, 5%)",
            f"/history?q={quoted('业主')}",
            f"{table}?name__contains={quoted('业主')}&_sort_desc=event_time",
        ),
        ("q (1 char: 5)", "/history?q=5", f"{table}?name__contains=5&_sort_desc=event_time"),
        (
            "combined: q + type",
            f"/history?q={quoted('羽毛球')}&type=Public",
            f"{table}?name__contains={quoted('羽毛球')}&type=Public&_sort_desc=event_time",
        ),
        (
            "combined: q + operator",
            f"/history?q={quoted('羽毛球')}&operator=administrator",
            f"{table}?name__contains={quoted('羽毛球')}&operator=administrator&_sort_desc=event_time",
        ),
        (
            "combined: rare q + operator",
            f"/history?q={quoted('atlas 77')}&operator=administrator",
            f"{table}?name__contains={quoted('Atlas 77')}&operator=administrator&_sort_desc=event_time",
        ),
        ("detail page", f"/history/{middle}", f"{table}/{middle}"),
    ]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(port, process, deadline=60):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def get(port, path, headers=None):
    """GET over a new connection; (status, seconds, bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    size = 0
    while chunk := response.read(65536):
        size += len(chunk)
    seconds = time.perf_counter() - started
    conn.close()
    return response.status, seconds, size


def median_ms(samples):
    return statistics.median(samples) * 1000


def reset_peak_rss(pid):
    """Start VmHWM afresh (Linux: clear_refs 5), so the peak is the export's."""
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")


def peak_rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def built(events):
    """bench/out/history-N.sqlite3, built once through the append path."""
    OUT.mkdir(exist_ok=True)
    database = OUT / f"history-{events}.sqlite3"
    have = 0
    if database.exists():
        have = sqlite3.connect(database).execute("SELECT count(*) FROM event").fetchone()[0]
    if have < events:  # the benchmark's own callbacks add a few
        for suffix in ("", "-wal", "-shm"):
            pathlib.Path(f"{database}{suffix}").unlink(missing_ok=True)
        print(f"building {events:,} events in {database} ...", flush=True)
        seconds, largest_wal = dataset.build(database, events, progress=True)
        print(f"built in {seconds:.0f} s; largest WAL {largest_wal / 2**20:.1f} MB", flush=True)
    return database


def bytes_per_event(database):
    """Print where the file's bytes go, per event; returns the total."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        events = conn.execute("SELECT max(id) FROM event").fetchone()[0]
        parts = conn.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
        ).fetchall()
    finally:
        conn.close()
    total = sum(size for _, size in parts)
    print(
        f"{database.name}: {events:,} events, {total / 2**20:,.0f} MB, {total / events:,.0f} bytes per event"
    )
    for name, size in parts:
        if size / events >= 0.5:
            print(f"  {name:28} {size / events:7.1f}")
    return total / events


def config(database):
    return {
        "DATABASE": str(database),
        "SDKAPPID": SDKAPPID,
        "CALLBACK_TOKEN": TOKEN,
        "DASHBOARD_USERS": {USER: generate_password_hash(PASSWORD)},
        "VERIFY_INTERVAL": 0,
    }


def server_side(database, cases, runs, work):
    """Each page rendered in-process: label -> p50 ms."""
    os.environ["TIM_AUDIT_INSTANCE_PATH"] = str(work)
    app = create_app(config(database))
    app.logger.setLevel("WARNING")
    client = app.test_client()
    timings = {}
    for label, url, _ in cases:
        client.get(url, headers=AUTH)
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            response = client.get(url, headers=AUTH)
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200, (url, response.status_code)
        timings[label] = median_ms(samples)
    return timings


def serve(database, work):
    """``tim-audit serve`` on ``database``: (process, ingest port, review port)."""
    ingest, review = free_port(), free_port()
    settings = config(database)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TIM_AUDIT_INSTANCE_PATH": str(work),
        "TIM_AUDIT_DATABASE": str(database),
        "TIM_AUDIT_SDKAPPID": SDKAPPID,
        "TIM_AUDIT_CALLBACK_TOKEN": json.dumps(TOKEN),
        "TIM_AUDIT_DASHBOARD_USERS": json.dumps(settings["DASHBOARD_USERS"]),
        "TIM_AUDIT_VERIFY_INTERVAL": "0",
        "TIM_AUDIT_INGEST_LISTEN": f"127.0.0.1:{ingest}",
        "TIM_AUDIT_REVIEW_LISTEN": f"127.0.0.1:{review}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tim_audit", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(work / f"{database.stem}.log", "ab"),
    )
    wait_for(ingest, process)
    wait_for(review, process)
    return process, ingest, review


def review_pid(process):
    """The review server: serve's child process."""
    with open(f"/proc/{process.pid}/task/{process.pid}/children") as children:
        return int(children.read().split()[0])


def over_http(port, cases, runs, headers=AUTH, column=1):
    """label -> p50 ms over HTTP, for each case with a URL in ``column``."""
    timings = {}
    for case in cases:
        url = case[column]
        if url is None:
            continue
        get(port, url, headers)
        samples = []
        for _ in range(runs):
            status, seconds, _ = get(port, url, headers)
            assert status == 200, (url, status)
            samples.append(seconds)
        timings[case[0]] = median_ms(samples)
    return timings


def callbacks(port, seconds, rate, first):
    """Open loop: callback n is sent at n / rate seconds on a connection of
    its own, whatever happened to the ones before. Returns (latencies in
    ms of the OK ones, failures)."""
    request_time = str(int(time.time()))
    query = urllib.parse.urlencode(
        {
            "SdkAppid": SDKAPPID,
            "CallbackCommand": COMMAND,
            "contenttype": "json",
            "RequestTime": request_time,
            "Sign": sign(TOKEN, request_time),
        }
    )
    latencies, failures = [], []

    def one(number):
        body = json.dumps(
            {
                "CallbackCommand": COMMAND,
                "GroupId": f"@TGS#bench{number}",
                "Operator_Account": "administrator",
                "Owner_Account": "leckie",
                "Type": "Public",
                "Name": f"bench {number}",
                "MemberList": [{"Member_Account": "leckie"}],
                "EventTime": 1_800_000_000_000 + number,
            }
        ).encode()
        started = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(
                "POST",
                f"/callback?{query}",
                body=body,
                headers={"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            ok = response.status == 200 and json.loads(response.read())["ErrorCode"] == 0
            conn.close()
        except (OSError, http.client.HTTPException, ValueError):
            ok = False
        (latencies if ok else failures).append((time.perf_counter() - started) * 1000)

    threads = []
    started = time.perf_counter()
    for n in range(int(seconds * rate)):
        time.sleep(max(0.0, started + n / rate - time.perf_counter()))
        thread = threading.Thread(target=one, args=(first + n,))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return latencies, failures


def percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--against", type=int, help="a smaller log to print each page's growth against"
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--datasette-runs", type=int, default=3)
    parser.add_argument("--no-datasette", action="store_true")
    args = parser.parse_args()

    database = built(args.events)
    smaller = built(args.against) if args.against else None
    print()
    for each in filter(None, (smaller, database)):
        bytes_per_event(each)
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    total = conn.execute("SELECT count(*) FROM event").fetchone()[0]
    cases = scenarios(conn, database.stem)
    conn.close()
    work = pathlib.Path(tempfile.mkdtemp(prefix="tim-audit-history-"))

    server = server_side(database, cases, args.runs, work)
    growth = {}
    if smaller is not None:
        small_conn = sqlite3.connect(f"file:{smaller}?mode=ro", uri=True)
        small_cases = scenarios(small_conn, smaller.stem)
        small_conn.close()
        small_server = server_side(smaller, small_cases, args.runs, work)
        process, _, review = serve(smaller, work)
        try:
            small_http = over_http(review, small_cases, args.runs)
        finally:
            process.terminate()
            process.wait(10)
        growth = {label: (small_server[label], small_http[label]) for label, _, _ in small_cases}

    tim, ingest_port, port = serve(database, work)
    datasette = None
    ds_port = free_port()
    ds_bin = OUT / "datasette-venv" / "bin" / "datasette"
    if not args.no_datasette:
        if not ds_bin.exists():
            print("installing datasette into bench/out/datasette-venv ...", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(OUT / "datasette-venv")], check=True)
            subprocess.run(
                [str(OUT / "datasette-venv" / "bin" / "pip"), "install", "-q", "datasette"],
                check=True,
            )
        datasette = subprocess.Popen(
            [
                str(ds_bin),
                "serve",
                str(database),
                "--port",
                str(ds_port),
                "--setting",
                "sql_time_limit_ms",
                "60000",
                # Its CSV export otherwise stops at 100 MB.
                "--setting",
                "max_csv_mb",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(work / "datasette.log", "wb"),
        )
    try:
        if datasette:
            wait_for(ds_port, datasette)
        version = (
            subprocess.run(
                [str(ds_bin), "--version"], capture_output=True, text=True
            ).stdout.strip()
            if datasette
            else ""
        )
        ours = over_http(port, cases, args.runs)
        theirs = (
            over_http(ds_port, cases, args.datasette_runs, headers={}, column=2)
            if datasette
            else {}
        )
        print(
            f"\n{total:,} events; medians of {args.runs} runs"
            + (f"; Datasette {version}, medians of {args.datasette_runs}" if version else "")
        )
        small = f"{args.against:,}" if args.against else ""
        print(
            f"{'':30} {'server-side':>11} {'HTTP':>7} {'Datasette':>10} {'ratio':>6}"
            + (f"  {'at ' + small + ': server':>18} {'HTTP':>7} {'growth':>7}" if growth else "")
        )
        print(
            f"{'page':30} {'p50 ms':>11} {'p50 ms':>7} {'p50 ms':>10} {'DS/us':>6}"
            + (f"  {'p50 ms':>18} {'p50 ms':>7} {'server':>7}" if growth else "")
        )
        for label, _, _ in cases:
            line = f"{label:30} {server[label]:>11.1f} {ours[label]:>7.1f}"
            if label in theirs:
                line += f" {theirs[label]:>10.1f} {theirs[label] / ours[label]:>5.0f}x"
            else:
                line += f" {'-':>10} {'-':>6}"
            if growth:
                before_server, before_http = growth[label]
                line += f"  {before_server:>18.1f} {before_http:>7.1f} {server[label] / before_server:>6.1f}x"
            print(line, flush=True)

        # 3. Full CSV export.
        print()
        pid = review_pid(tim)
        reset_peak_rss(pid)
        status, seconds, size = get(port, "/history.csv", AUTH)
        assert status == 200
        rss = peak_rss_mb(pid)
        csv_rate = total / seconds
        print(
            f"CSV export, tim-audit: {total:,} rows in {seconds:.1f} s = {csv_rate:,.0f} rows/s,"
            f" {size / 2**20:,.0f} MB, review server peak RSS {rss:.0f} MB"
        )
        if datasette:
            reset_peak_rss(datasette.pid)
            status, ds_seconds, ds_size = get(
                ds_port, f"/{database.stem}/event.csv?_stream=on&_sort_desc=event_time&_size=max"
            )
            print(
                f"CSV export, Datasette: {total:,} rows in {ds_seconds:.1f} s = {total / ds_seconds:,.0f} rows/s,"
                f" {ds_size / 2**20:,.0f} MB, server peak RSS {peak_rss_mb(datasette.pid):.0f} MB"
            )

        # 4. Callbacks alone, then while two exports run.
        alone, alone_failed = callbacks(ingest_port, 5, 50, 0)
        exports = [
            threading.Thread(target=get, args=(port, "/history.csv", AUTH)) for _ in range(2)
        ]
        for thread in exports:
            thread.start()
        time.sleep(0.5)
        during, during_failed = [], []
        while any(thread.is_alive() for thread in exports):
            ok, failed = callbacks(ingest_port, 5, 50, 100_000 + len(during) + len(during_failed))
            during += ok
            during_failed += failed
        for thread in exports:
            thread.join()
        print(
            f"\ncallbacks alone (50/s):        p50 {percentile(alone, 0.5):.1f} ms,"
            f" p99 {percentile(alone, 0.99):.1f} ms, {len(alone)} OK, {len(alone_failed)} failed"
        )
        print(
            f"callbacks during 2 exports:    p50 {percentile(during, 0.5):.1f} ms,"
            f" p99 {percentile(during, 0.99):.1f} ms, {len(during)} OK, {len(during_failed)} failed"
        )
    finally:
        tim.terminate()
        tim.wait(10)
        if datasette:
            datasette.terminate()
            datasette.wait(10)

    checks = [
        ("every page p50 <= 50 ms server-side", all(server[label] <= 50 for label, _, _ in cases)),
        ("CSV >= 150k rows/s", csv_rate >= 150_000),
        ("CSV review server peak RSS <= 64 MB", rss <= 64),
        (
            "callbacks p99 <= 50 ms during two exports, none failed",
            percentile(during, 0.99) <= 50 and not during_failed,
        ),
    ]
    if growth:
        grown = [label for label, _, _ in cases if server[label] > 2 * growth[label][0]]
        checks.append(
            (
                f"no page 2x slower server-side than at {args.against:,}"
                + (f" (not: {', '.join(grown)})" if grown else ""),
                not grown,
            )
        )
    if datasette:
        slower = [label for label in theirs if theirs[label] < ours[label]]
        checks.append(
            (
                f"faster than Datasette on every shared page{'' if not slower else ' (not: ' + ', '.join(slower) + ')'}",
                not slower,
            )
        )
    print()
    for label, passed in checks:
        print(f"  [{'PASS' if passed else 'FAIL'}] {label}")
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
