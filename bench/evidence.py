"""How much memory does the evidence archive of a large log take? Issue 15
measured the archive of 500,000 events grow the review process's peak RSS
by 189 MB (its zip central directory, kept in memory), about 3.8 GB at 10M.
Target: a peak RSS growth of 64 MB at most, whatever the size.

Builds (once, then reuses) bench/out/evidence-N.sqlite3 through the append
path (bench/dataset.py) and signs a checkpoint of it (bench/proofs.py), then
for each source tree given (this one by default; ``--against DIR`` adds
another checkout, e.g. ``git archive`` of an older commit unpacked,
measured side by side in the same run) starts ``tim-audit serve --only
review`` on it, downloads the whole /history.evidence to a file and prints
the review process's RSS before and its peak (VmHWM) after, with the time,
events/s and the archive's size. ``--check`` has Info-ZIP test each archive
(``unzip -tqq``) and Python's zipfile count its members.

    python bench/evidence.py [--events 1000000] [--against /tmp/old] [--check]
"""

import argparse
import http.client
import pathlib
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import zipfile

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

import dataset  # noqa: E402
import proofs  # noqa: E402
from quarantine import AUTH, kib, review_server  # noqa: E402

OUT = BENCH / "out"


def built(events):
    """bench/out/evidence-N.sqlite3 with a checkpoint of all its events."""
    OUT.mkdir(exist_ok=True)
    database = OUT / f"evidence-{events}.sqlite3"
    if not database.exists():
        print(f"building {events:,} events in {database} ...", flush=True)
        seconds, _ = dataset.build(database, events, progress=True)
        print(f"built in {seconds:.0f} s", flush=True)
    conn = sqlite3.connect(database)
    try:
        signed = conn.execute("SELECT max(size) FROM checkpoint WHERE tree = 'event'").fetchone()
    except sqlite3.OperationalError:  # no checkpoint table before the first open
        signed = (None,)
    finally:
        conn.close()
    if signed[0] != events:
        print("building the Merkle trees and signing a checkpoint ...", flush=True)
        seconds = proofs.sign_checkpoint(str(database))
        print(f"trees built in {seconds:.0f} s", flush=True)
    return database


def download(port, path):
    """GET /history.evidence into ``path``: its size in bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("GET", "/history.evidence", headers=AUTH)
        response = conn.getresponse()
        assert response.status == 200, response.status
        with open(path, "wb") as file:
            shutil.copyfileobj(response, file, 2**20)
        return path.stat().st_size
    finally:
        conn.close()


def check(path):
    """Info-ZIP's verdict on the archive, and how many members zipfile finds."""
    tested = subprocess.run(["unzip", "-tqq", path], capture_output=True, text=True)
    with zipfile.ZipFile(path) as archive:
        members = len(archive.infolist())
    verdict = "OK" if tested.returncode == 0 else f"FAILED {tested.stdout}{tested.stderr}"
    return f"unzip -t {verdict}; {members:,} members"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--against", type=pathlib.Path, action="append", default=[])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    database = built(args.events)
    work = pathlib.Path(tempfile.mkdtemp(prefix="tim-audit-evidence-"))
    print(
        f"\n{'source':<32} {'RSS before':>11} {'peak RSS':>10} {'growth':>9}"
        f" {'seconds':>8} {'events/s':>9} {'archive':>10}"
    )
    archives = []
    for number, tree in enumerate([ROOT, *args.against]):
        archive = work / f"evidence-{number}.zip"
        with review_server(tree, database, work, LOG_ORIGIN=proofs.ORIGIN) as (process, port):
            before = kib(process.pid, "VmRSS")
            started = time.monotonic()
            size = download(port, archive)
            seconds = time.monotonic() - started
            peak = kib(process.pid, "VmHWM")
        print(
            f"{str(tree if tree != ROOT else '.'):<32} {before / 1024:>8.1f} MB"
            f" {peak / 1024:>7.1f} MB {(peak - before) / 1024:>6.1f} MB {seconds:>8.0f}"
            f" {args.events / seconds:>9,.0f} {size / 2**20:>7,.0f} MB",
            flush=True,
        )
        archives.append((tree, archive))
    if args.check:
        for tree, archive in archives:
            print(f"{tree}: {check(archive)}", flush=True)
    for _, archive in archives:
        archive.unlink()


if __name__ == "__main__":
    main()
