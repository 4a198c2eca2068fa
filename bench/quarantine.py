"""How much memory do the quarantine page and exports take? Issue 15
measured one request for 200 quarantined 1 MiB bodies take the review
process from 49 to 257 MB.

Builds a log of ``--rows`` quarantined bodies of ``--size`` bytes each, then
for each source tree given (this one by default; ``--against DIR`` adds
another checkout, e.g. ``git archive`` of an older commit unpacked,
measured side by side in the same run) and for each of
``/quarantine?limit=ROWS``, ``/quarantine.csv`` and ``/quarantine.json``
starts ``tim-audit serve --only review`` on it (a process per request, so
each peak is its own), asks for it ``--requests`` times, and prints the
review process's RSS before and its peak (VmHWM) after, with the median
time of a request.

    python bench/quarantine.py [--rows 200] [--size 1048576] [--against /tmp/old]
"""

import argparse
import base64
import contextlib
import http.client
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from werkzeug.security import generate_password_hash

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from tim_audit.log.records import Rejection  # noqa: E402
from tim_audit.log.writer import AuditLog  # noqa: E402

USER, PASSWORD = "bench", "bench-password-1"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


def build(path, rows, size):
    log = AuditLog(str(path))
    log.open()
    for number in range(rows):
        body = b'{"Name": "' + b"x" * (size - 12) + b'"}'
        log.append(
            Rejection(
                received_at=1772323200000 + number,
                error_code=60024,
                reason="invalid fields: Name is too long",
                command="Group.CallbackAfterCreateGroup",
                query="SdkAppid=1400000001&CallbackCommand=Group.CallbackAfterCreateGroup",
                peer="127.0.0.1",
                content_length=len(body),
                raw=body,
            )
        )
    log.close()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kib(pid, field):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", path, headers=AUTH)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextlib.contextmanager
def review_server(tree, database, work, **settings):
    """``tim-audit serve --only review`` from the source ``tree`` on
    ``database``, with TIM_AUDIT_ ``settings``, until the block ends: its
    process and port, once it answers."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "TIM_AUDIT_INSTANCE_PATH": str(work),
        "TIM_AUDIT_DATABASE": str(database),
        "TIM_AUDIT_REVIEW_LISTEN": f"127.0.0.1:{port}",
        "TIM_AUDIT_DASHBOARD_USERS": json.dumps({USER: generate_password_hash(PASSWORD)}),
        "TIM_AUDIT_VERIFY_INTERVAL": "0",
        **{f"TIM_AUDIT_{name}": value for name, value in settings.items()},
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tim_audit", "serve", "--only", "review"],
        cwd=tree,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if get(port, "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the review server did not start"
            time.sleep(0.1)
        yield process, port
    finally:
        process.terminate()
        process.wait(10)


def measure(tree, database, path, requests, work):
    with review_server(tree, database, work) as (process, port):
        before = kib(process.pid, "VmRSS")
        times = []
        for _ in range(requests):
            started = time.monotonic()
            status, body = get(port, path)
            times.append(time.monotonic() - started)
            assert status == 200, status
        return before, kib(process.pid, "VmHWM"), statistics.median(times), len(body)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024 * 1024)
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--against", type=pathlib.Path, action="append", default=[])
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="tim-audit-quarantine-"))
    database = work / "audit.sqlite3"
    print(f"building {args.rows} quarantined bodies of {args.size:,} bytes ...", flush=True)
    build(database, args.rows, args.size)
    print(
        f"\n{'source':<32} {'request':<22} {'RSS before':>11} {'peak RSS':>10}"
        f" {'median s':>9} {'size':>9}"
    )
    for tree in [ROOT, *args.against]:
        for path in (f"/quarantine?limit={args.rows}", "/quarantine.csv", "/quarantine.json"):
            before, peak, seconds, size = measure(tree, database, path, args.requests, work)
            print(
                f"{str(tree):<32} {path:<22} {before / 1024:>8.1f} MB {peak / 1024:>7.1f} MB"
                f" {seconds:>9.3f} {size / 2**20:>6.1f} MB"
            )
    print(f"\n(work files in {work})")


if __name__ == "__main__":
    main()
