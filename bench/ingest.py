"""How fast the ingest server takes callbacks, beside a naive receiver and a
bare Flask app, in one run.

Starts four servers under the same waitress settings (8 threads, 1 MiB
output high-watermark):

- tim-audit's ingest server (``tim-audit serve --only ingest``) on a fresh
  SQLite file, synchronous=FULL: ``tim-audit`` with INGEST_PROCESSES at its
  default (a worker a core, and the writer), ``tim-audit-1`` with 1 (one
  process, as before INGEST_PROCESSES);
- ``../shared/bench/naive_app.py``: marshmallow, one INSERT and COMMIT per
  request under WAL+FULL, no chain, quarantine, triggers or log line;
- ``bench/hello.py``: a bare Flask app answering a POST.

wrk (8 keep-alive connections, one thread) sends each the same kind of
distinct, correctly signed create-group callbacks for ``--seconds`` a round,
rounds alternating so that all four see the same machine. Meanwhile the
WAL files are sampled every 50 ms. Then checks that each tim-audit log holds
every acknowledged event and that ``verify`` passes. CPU time is the
server's and its children's.

    python bench/ingest.py [--seconds 10] [--rounds 3] [--soak 0]

``--soak N`` then sends tim-audit callbacks at full rate for N seconds more
(300 for the issue's five minutes) and prints the largest WAL seen.

Targets (issue #17): tim-audit's callbacks/s at least the naive receiver's,
p99 at most 20 ms, no errors, the WAL under 64 MB.
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import urlencode

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
NAIVE = ROOT.parent / "shared" / "bench"
sys.path.insert(0, str(ROOT))
from loadgen import SDKAPPID, TOKEN  # noqa: E402

from tim_audit.ingest.signature import sign  # noqa: E402

THREADS = 8
WAITRESS = [f"--threads={THREADS}", "--outbuf-high-watermark=1048576"]
CONNECTIONS = 8
WAL_LIMIT = 64 * 1024 * 1024
RESULT = re.compile(r"RESULT (.*)")
# tim-audit's servers: INGEST_PROCESSES at its default, and 1.
TIM_AUDIT = {"tim-audit": {}, "tim-audit-1": {"TIM_AUDIT_INGEST_PROCESSES": "1"}}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(port, process, log_path):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"a server did not start; see {log_path}")


def start(command, cwd, env, log_path, port):
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log_path, "ab"),
    )
    wait_for(port, process, log_path)
    return process


def signed_url(port, request_time):
    query = urlencode(
        {
            "SdkAppid": SDKAPPID,
            "CallbackCommand": "Group.CallbackAfterCreateGroup",
            "contenttype": "json",
            "ClientIP": "203.0.113.7",
            "OptPlatform": "Android",
            "RequestTime": request_time,
            "Sign": sign(TOKEN, request_time),
        }
    )
    return f"http://127.0.0.1:{port}/callback?{query}"


def cpu_seconds(pid):
    """User and system CPU time the process and its living children have
    used so far."""
    children = [
        child
        for task in pathlib.Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
    total = 0
    for process in [pid, *children]:
        fields = pathlib.Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wrk(port, seconds, prefix, pid):
    """One wrk run; returns its figures, with the server's CPU time per
    answered callback."""
    now = str(int(time.time()))
    cpu_before = cpu_seconds(pid)
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(BENCH / "callbacks.lua"),
            signed_url(port, now),
            "--",
            prefix,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = cpu_seconds(pid) - cpu_before
    fields = dict(item.split("=") for item in RESULT.search(output).group(1).split())
    requests = int(fields["requests"])
    failed = int(fields["non2xx"]) + int(fields["errors"])
    return {
        "cpu_us": cpu / max(1, requests) * 1e6,
        "rate": requests / float(fields["seconds"]),
        "p50": int(fields["p50_us"]) / 1000,
        "p99": int(fields["p99_us"]) / 1000,
        "errors": failed,
        "acknowledged": requests - failed,
    }


class WalWatch:
    """The largest size each -wal file reaches, sampled every 50 ms."""

    def __init__(self, paths):
        self.largest = dict.fromkeys(paths, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.05):
            for path in self.largest:
                try:
                    self.largest[path] = max(self.largest[path], os.path.getsize(path))
                except OSError:
                    pass

    def stop(self):
        self._stop.set()
        self._thread.join()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of one round per server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--soak", type=int, default=0, help="seconds of full-rate callbacks at the end"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")

    work = pathlib.Path(tempfile.mkdtemp(prefix="tim-audit-ingest-"))
    naive_database = work / "naive.sqlite3"
    ports = {name: free_port() for name in (*TIM_AUDIT, "naive", "hello")}
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TIM_AUDIT_INSTANCE_PATH": str(work),
        "TIM_AUDIT_SDKAPPID": SDKAPPID,
        "TIM_AUDIT_CALLBACK_TOKEN": json.dumps(TOKEN),
        # wrk signs once per run: a --soak longer than a minute needs the
        # wider window (the signature check itself is unchanged).
        "TIM_AUDIT_SIGN_MAX_AGE": str(max(60, args.soak + 60)),
        "TIM_AUDIT_INGEST_THREADS": str(THREADS),
        "NAIVE_DB": str(naive_database),
    }
    envs = {
        name: {
            **env,
            **processes_setting,
            # Each its own instance folder, for its own checkpoint key.
            "TIM_AUDIT_INSTANCE_PATH": str(work / name),
            "TIM_AUDIT_DATABASE": str(work / f"{name}.sqlite3"),
            "TIM_AUDIT_INGEST_LISTEN": f"127.0.0.1:{ports[name]}",
        }
        for name, processes_setting in TIM_AUDIT.items()
    }
    for name in TIM_AUDIT:
        (work / name).mkdir()
    waitress = [sys.executable, "-m", "waitress", *WAITRESS]
    processes = {
        name: start(
            [sys.executable, "-m", "tim_audit", "serve", "--only", "ingest"],
            ROOT,
            envs[name],
            work / f"{name}.log",
            ports[name],
        )
        for name in TIM_AUDIT
    }
    processes |= {
        "naive": start(
            [*waitress, f"--listen=127.0.0.1:{ports['naive']}", "naive_app:app"],
            NAIVE,
            env,
            work / "naive.log",
            ports["naive"],
        ),
        "hello": start(
            [*waitress, f"--listen=127.0.0.1:{ports['hello']}", "hello:app"],
            BENCH,
            env,
            work / "hello.log",
            ports["hello"],
        ),
    }
    wals = {name: f"{work / name}.sqlite3-wal" for name in TIM_AUDIT} | {
        "naive": f"{naive_database}-wal"
    }
    watch = WalWatch(wals.values())
    results = {name: [] for name in processes}
    acknowledged = dict.fromkeys(TIM_AUDIT, 0)
    try:
        for name in processes:  # warm up
            figures = wrk(ports[name], 2, f"warm{name[:3]}", processes[name].pid)
            if name in TIM_AUDIT:
                acknowledged[name] += figures["acknowledged"]
        print(
            f"{args.rounds} rounds of {args.seconds} s per server; wrk, {CONNECTIONS} keep-alive"
            f" connections; waitress {' '.join(WAITRESS)}\n"
        )
        print(
            f"{'round':>5}  {'server':<11} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs':>8} {'errors':>7}"
        )
        for round_number in range(1, args.rounds + 1):
            for name in processes:
                figures = wrk(
                    ports[name], args.seconds, f"r{round_number}{name[:3]}", processes[name].pid
                )
                if name in TIM_AUDIT:
                    acknowledged[name] += figures["acknowledged"]
                results[name].append(figures)
                print(
                    f"{round_number:>5}  {name:<11} {figures['rate']:>8.0f} {figures['p50']:>8.2f}"
                    f" {figures['p99']:>8.2f} {figures['cpu_us']:>8.0f} {figures['errors']:>7}"
                )
        soak = None
        if args.soak:
            soak = wrk(ports["tim-audit"], args.soak, "soak", processes["tim-audit"].pid)
            acknowledged["tim-audit"] += soak["acknowledged"]
    finally:
        watch.stop()
        for process in processes.values():
            process.terminate()
            process.wait(10)

    def median(name, key):
        return statistics.median(r[key] for r in results[name])

    print("\nmedians")
    for name in processes:
        print(
            f"  {name:<11} {median(name, 'rate'):>8.0f} req/s  p50 {median(name, 'p50'):.2f} ms"
            f"  p99 {median(name, 'p99'):.2f} ms  CPU {median(name, 'cpu_us'):.0f} µs/callback"
        )
    for name in TIM_AUDIT:
        print(
            f"  {name}/naive: {median(name, 'rate') / median('naive', 'rate'):.2f}"
            f"   {name}/hello: {median(name, 'rate') / median('hello', 'rate'):.2f}"
        )
    if soak:
        print(
            f"\nsoak: {args.soak} s at {soak['rate']:.0f} req/s, p50 {soak['p50']:.2f} ms,"
            f" p99 {soak['p99']:.2f} ms, {soak['errors']} errors"
        )
    print(
        "largest WAL: "
        + ", ".join(f"{n} {watch.largest[w] / 2**20:.1f} MB" for n, w in wals.items())
    )

    to_naive = median("tim-audit", "rate") / median("naive", "rate")
    errors = sum(r["errors"] for r in results["tim-audit"]) + (soak["errors"] if soak else 0)
    checks = [
        (f"tim-audit/naive {to_naive:.2f} >= 1.0", to_naive >= 1.0),
        (f"p99 {median('tim-audit', 'p99'):.2f} ms <= 20 ms", median("tim-audit", "p99") <= 20),
        (f"errors {errors} == 0", errors == 0),
    ]
    print()
    for name in TIM_AUDIT:
        database = work / f"{name}.sqlite3"
        conn = sqlite3.connect(database)
        stored = conn.execute("SELECT count(*) FROM event").fetchone()[0]
        conn.close()
        verified = (
            subprocess.run(
                [sys.executable, "-m", "tim_audit", "verify"],
                env=envs[name],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        # wrk stops with up to one request in flight per connection: those
        # may be stored without their answer having been counted.
        print(
            f"{name} log: {stored} events stored, {acknowledged[name]} acknowledged;"
            f" verify: {verified}"
        )
        rounds = len(results[name]) + 1 + (name == "tim-audit" and soak is not None)
        wal = watch.largest[wals[name]]
        checks += [
            (
                f"{name}: every acknowledged event is stored",
                acknowledged[name] <= stored <= acknowledged[name] + CONNECTIONS * rounds,
            ),
            (f"{name}: verify passes", verified.startswith(f"OK {stored} ")),
            (f"{name}: WAL {wal / 2**20:.1f} MB < 64 MB", wal < WAL_LIMIT),
        ]
    print()
    for label, passed in checks:
        print(f"  [{'PASS' if passed else 'FAIL'}] {label}")
    print(f"\n(work files in {work})")
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
