"""How long an online backup of a 100k-event log takes while callbacks keep
arriving, how big it is, and what it does to callback latency.

    python bench/backup.py [--events 100000]

Builds the log with bench/dataset.py, starts tim-audit under waitress,
keeps 8 connections of signed callbacks going, runs
``flask --app tim_audit backup`` meanwhile, then verifies the copy.
"""

import argparse
import json
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BENCH = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import dataset  # noqa: E402
import history  # noqa: E402
import ingest  # noqa: E402
import loadgen  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="tim-audit-backup-"))
    database = work / "audit.sqlite3"
    print(f"building {args.events:,} events ...", flush=True)
    dataset.build(database, args.events)
    env = {
        **os.environ,
        "TIM_AUDIT_INSTANCE_PATH": str(work),
        "TIM_AUDIT_DATABASE": str(database),
        "TIM_AUDIT_SDKAPPID": loadgen.SDKAPPID,
        "TIM_AUDIT_CALLBACK_TOKEN": json.dumps(loadgen.TOKEN),
    }
    port = history.free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "waitress",
            f"--listen=127.0.0.1:{port}",
            *ingest.WAITRESS,
            "wsgi:app",
        ],
        cwd=BENCH.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rounds, stop = [], threading.Event()
    rng = random.Random(5)

    def keep_posting():
        first = 50_000_000
        while not stop.is_set():
            rounds.append(
                (
                    time.monotonic(),
                    loadgen.measure(port, loadgen.callbacks(first, 200, rng), 8, True),
                )
            )
            first += 200

    try:
        history.wait_for(port, server)
        quiet = loadgen.measure(port, loadgen.callbacks(40_000_000, 2000, rng), 8, True)
        posting = threading.Thread(target=keep_posting)
        posting.start()
        time.sleep(1)
        started = time.monotonic()
        backup = subprocess.run(
            [
                sys.executable,
                "-m",
                "flask",
                "--app",
                "tim_audit",
                "backup",
                str(work / "copy.sqlite3"),
            ],
            cwd=BENCH.parent,
            env=env,
            capture_output=True,
            text=True,
        )
        finished = time.monotonic()
        time.sleep(1)
        stop.set()
        posting.join()
    finally:
        server.terminate()
        server.wait()
    print(backup.stdout.strip() or backup.stderr.strip())
    during = [figures for at, figures in rounds if started <= at <= finished]
    print(
        f"\nbackup: {finished - started:.1f} s wall (including start-up and verifying the copy),"
        f" {(work / 'copy.sqlite3').stat().st_size / 2**20:.0f} MB"
    )
    print(f"callbacks alone:          p50 {quiet['p50']:.1f} ms, p99 {quiet['p99']:.1f} ms")
    if during:
        print(
            f"callbacks during backup:  p50 {statistics.median(f['p50'] for f in during):.1f} ms,"
            f" p99 {max(f['p99'] for f in during):.1f} ms (worst of {len(during)} rounds of 200),"
            f" errors {sum(f['errors'] for f in during)}"
        )
    verified = (
        subprocess.run(
            [
                sys.executable,
                "-m",
                "flask",
                "--app",
                "tim_audit",
                "verify",
                "--database",
                str(work / "copy.sqlite3"),
            ],
            cwd=BENCH.parent,
            env=env,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    print(f"verify of the copy: {verified}")
    return 0 if backup.returncode == 0 and verified.startswith("OK ") else 1


if __name__ == "__main__":
    sys.exit(main())
