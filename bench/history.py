"""How fast the dashboard answers on a log of a million events, beside
Datasette on the same file.

    python bench/history.py [--events 1000000] [--runs 7] [--no-datasette]

Builds (once, then reuses) bench/out/history-1m.sqlite3 with bench/dataset.py
through tim-audit's own append path. Then, in one run:

1. server-side: each page rendered in-process (Flask test client, no HTTP);
2. through HTTP: tim-audit under waitress, signed in with Basic auth, and
   Datasette (its own venv in bench/out/, outside the project's
   dependencies) serving the same file, for the same questions;
3. a full CSV export from each: rows/s and the server's peak RSS;
4. callback latency while two full CSV exports run, next to the same
   callbacks with nothing else running.

Figures are medians of ``--runs`` runs after one warm-up. Targets at 1M
events: pages p50 <= 30 ms, q <= 100 ms, CSV >= 100k rows/s at <= 64 MB.
"""

import argparse
import base64
import http.client
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
import threading
import time
import urllib.parse

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import dataset  # noqa: E402
import ingest  # noqa: E402
import loadgen  # noqa: E402
from werkzeug.security import generate_password_hash  # noqa: E402

from tim_audit import create_app  # noqa: E402

OUT = BENCH / "out"
USER, PASSWORD = "bench", "bench-password-1"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


def scenarios(conn):
    """(label, tim-audit URL, Datasette URL or None)."""
    group_id = conn.execute("SELECT group_id FROM event WHERE id = 500000").fetchone()[0]
    detail = 500000
    quoted = urllib.parse.quote
    table = "/history-1m/event"
    march = ("2026-03-01", "2026-03-31")
    march_ms = (1772323200000, 1774915199999)
    return [
        ("first page, with count", "/history", f"{table}?_sort_desc=event_time"),
        ("group_id (exact)", f"/history?group_id={quoted(group_id)}",
         f"{table}?group_id={quoted(group_id)}&_sort_desc=event_time"),
        ("owner (a busy one)", "/history?owner=u0", f"{table}?owner=u0&_sort_desc=event_time"),
        ("owner (a rare one)", "/history?owner=u12345", f"{table}?owner=u12345&_sort_desc=event_time"),
        ("operator=administrator", "/history?operator=administrator",
         f"{table}?operator=administrator&_sort_desc=event_time"),
        ("member (a busy one)", "/history?member=m0", None),
        ("member (the bot, 9%)", "/history?member=bot_audit", None),
        ("type=Public (35%)", "/history?type=Public", f"{table}?type=Public&_sort_desc=event_time"),
        ("since/until (March)", f"/history?since={march[0]}&until={march[1]}",
         f"{table}?event_time__gte={march_ms[0]}&event_time__lte={march_ms[1]}&_sort_desc=event_time"),
        ("combined: type + March", f"/history?type=Public&since={march[0]}&until={march[1]}",
         f"{table}?type=Public&event_time__gte={march_ms[0]}&event_time__lte={march_ms[1]}&_sort_desc=event_time"),
        ("combined: owner + type", "/history?owner=u0&type=Private",
         f"{table}?owner=u0&type=Private&_sort_desc=event_time"),
        ("q (common: 羽毛球, 5%)", f"/history?q={quoted('羽毛球')}",
         f"{table}?name__contains={quoted('羽毛球')}&_sort_desc=event_time"),
        ("q (rare: atlas 77)", f"/history?q={quoted('atlas 77')}",
         f"{table}?name__contains={quoted('Atlas 77')}&_sort_desc=event_time"),
        ("q (no match)", "/history?q=zzqx", f"{table}?name__contains=zzqx&_sort_desc=event_time"),
        ("combined: q + type", f"/history?q={quoted('羽毛球')}&type=Public",
         f"{table}?name__contains={quoted('羽毛球')}&type=Public&_sort_desc=event_time"),
        ("detail page", f"/history/{detail}", f"{table}/{detail}"),
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-datasette", action="store_true")
    args = parser.parse_args()

    OUT.mkdir(exist_ok=True)
    database = OUT / "history-1m.sqlite3"
    if database.exists():
        have = sqlite3.connect(database).execute("SELECT count(*) FROM event").fetchone()[0]
    else:
        have = 0
    if have < args.events:
        for suffix in ("", "-wal", "-shm"):
            pathlib.Path(f"{database}{suffix}").unlink(missing_ok=True)
        print(f"building {args.events:,} events in {database} ...", flush=True)
        seconds, largest_wal = dataset.build(database, args.events, progress=True)
        print(f"built in {seconds:.0f} s; largest WAL {largest_wal / 2**20:.1f} MB", flush=True)
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    total = conn.execute("SELECT count(*) FROM event").fetchone()[0]
    cases = scenarios(conn)
    conn.close()
    print(f"\n{total:,} events, {database.stat().st_size / 2**20:,.0f} MB; medians of {args.runs} runs\n")

    work = pathlib.Path(tempfile.mkdtemp(prefix="tim-audit-history-"))
    config = {
        "DATABASE": str(database), "SDKAPPID": loadgen.SDKAPPID, "CALLBACK_TOKEN": loadgen.TOKEN,
        "DASHBOARD_USERS": {USER: generate_password_hash(PASSWORD)}, "VERIFY_INTERVAL": 0,
    }

    # 1. Server-side.
    os.environ["TIM_AUDIT_INSTANCE_PATH"] = str(work)
    app = create_app(config)
    app.logger.setLevel("WARNING")
    client = app.test_client()
    server_side = {}
    for label, url, _ in cases:
        client.get(url, headers=AUTH)
        samples = []
        for _ in range(args.runs):
            started = time.perf_counter()
            response = client.get(url, headers=AUTH)
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200, (url, response.status_code)
        server_side[label] = median_ms(samples)
    app.extensions["tim_audit"].close()

    # 2. Through HTTP, tim-audit and Datasette side by side.
    env = {
        **os.environ, "TIM_AUDIT_INSTANCE_PATH": str(work), "TIM_AUDIT_DATABASE": str(database),
        "TIM_AUDIT_SDKAPPID": loadgen.SDKAPPID, "TIM_AUDIT_CALLBACK_TOKEN": json.dumps(loadgen.TOKEN),
        "TIM_AUDIT_DASHBOARD_USERS": json.dumps(config["DASHBOARD_USERS"]),
        "TIM_AUDIT_VERIFY_INTERVAL": "0",
    }
    port = free_port()
    tim = subprocess.Popen(
        [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", *ingest.WAITRESS, "wsgi:app"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(work / "tim-audit.log", "wb"),
    )
    datasette = None
    ds_port = free_port()
    ds_bin = OUT / "datasette-venv" / "bin" / "datasette"
    if not args.no_datasette:
        if not ds_bin.exists():
            print("installing datasette into bench/out/datasette-venv ...", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(OUT / "datasette-venv")], check=True)
            subprocess.run([str(OUT / "datasette-venv" / "bin" / "pip"), "install", "-q", "datasette"], check=True)
        datasette = subprocess.Popen(
            [str(ds_bin), "serve", str(database), "--port", str(ds_port),
             "--setting", "sql_time_limit_ms", "60000"],
            stdout=subprocess.DEVNULL, stderr=open(work / "datasette.log", "wb"),
        )
    try:
        wait_for(port, tim)
        if datasette:
            wait_for(ds_port, datasette)
        version = subprocess.run([str(ds_bin), "--version"], capture_output=True, text=True).stdout.strip() if datasette else ""
        print(f"{'':32} {'server-side':>11} {'HTTP':>9} {'Datasette':>10} {'ratio':>7}")
        print(f"{'page':32} {'p50 ms':>11} {'p50 ms':>9} {'p50 ms':>10} {'DS/us':>7}")
        rows = []
        for label, url, ds_url in cases:
            get(port, url, AUTH)
            ours = []
            for _ in range(args.runs):
                status, seconds, _ = get(port, url, AUTH)
                assert status == 200, (url, status)
                ours.append(seconds)
            theirs = None
            if datasette and ds_url:
                get(ds_port, ds_url)
                samples = []
                for _ in range(args.runs):
                    status, seconds, _ = get(ds_port, ds_url)
                    assert status == 200, (ds_url, status)
                    samples.append(seconds)
                theirs = median_ms(samples)
            ours_ms = median_ms(ours)
            rows.append((label, server_side[label], ours_ms, theirs))
            ratio = f"{theirs / ours_ms:>6.0f}x" if theirs else f"{'-':>7}"
            print(f"{label:32} {server_side[label]:>11.1f} {ours_ms:>9.1f}"
                  f" {theirs if theirs is not None else float('nan'):>10.1f} {ratio}", flush=True)

        # 3. Full CSV export.
        print()
        reset_peak_rss(tim.pid)
        status, seconds, size = get(port, "/history.csv", AUTH)
        assert status == 200
        rss = peak_rss_mb(tim.pid)
        print(f"CSV export, tim-audit: {total:,} rows in {seconds:.1f} s = {total / seconds:,.0f} rows/s,"
              f" {size / 2**20:,.0f} MB, server peak RSS {rss:.0f} MB")
        csv_rate = total / seconds
        ds_rate = None
        if datasette:
            reset_peak_rss(datasette.pid)
            status, ds_seconds, ds_size = get(ds_port, "/history-1m/event.csv?_stream=on&_sort_desc=event_time&_size=max")
            ds_rate = total / ds_seconds
            print(f"CSV export, Datasette: {total:,} rows in {ds_seconds:.1f} s = {ds_rate:,.0f} rows/s,"
                  f" {ds_size / 2**20:,.0f} MB, server peak RSS {peak_rss_mb(datasette.pid):.0f} MB"
                  f"  ({version}; ratio {csv_rate / ds_rate:.1f}x)")

        # 4. Callbacks while two exports run.
        rng = random.Random(11)
        first = 10_000_000
        quiet = loadgen.measure(port, loadgen.callbacks(first, 2000, rng), 8, True)
        exports = [threading.Thread(target=get, args=(port, "/history.csv", AUTH)) for _ in range(2)]
        for thread in exports:
            thread.start()
        time.sleep(0.5)
        results = []
        while any(thread.is_alive() for thread in exports):
            results.append(loadgen.measure(port, loadgen.callbacks(first + 2000 + len(results) * 500, 500, rng), 8, True))
        for thread in exports:
            thread.join()
        latencies_p50 = statistics.median(r["p50"] for r in results)
        latencies_p99 = max(r["p99"] for r in results)
        errors = sum(r["errors"] for r in results)
        print(f"\ncallbacks alone:              p50 {quiet['p50']:.1f} ms, p99 {quiet['p99']:.1f} ms,"
              f" {quiet['rate']:.0f}/s")
        print(f"callbacks during 2 exports:   p50 {latencies_p50:.1f} ms, p99 {latencies_p99:.1f} ms"
              f" (worst of {len(results)} rounds of 500), errors {errors}")
    finally:
        tim.terminate()
        tim.wait(10)
        if datasette:
            datasette.terminate()
            datasette.wait(10)

    pages = [r for r in rows if not r[0].startswith("q ") and "q +" not in r[0]]
    checks = [
        ("every page p50 <= 30 ms over HTTP", all(r[2] <= 30 for r in pages)),
        ("q p50 <= 100 ms over HTTP", all(r[2] <= 100 for r in rows if r[0].startswith("q "))),
        ("CSV >= 100k rows/s", csv_rate >= 100_000),
        ("CSV server peak RSS <= 64 MB", rss <= 64),
    ]
    if datasette:
        slower = [r[0] for r in rows if r[3] is not None and r[3] < r[2]]
        checks.append((f"faster than Datasette on every shared page{'' if not slower else ' (not: ' + ', '.join(slower) + ')'}", not slower))
    print()
    for label, passed in checks:
        print(f"  [{'PASS' if passed else 'FAIL'}] {label}")
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
