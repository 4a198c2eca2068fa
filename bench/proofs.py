"""What the Merkle trees cost and give, on a log of a million events.

    python bench/proofs.py PATH [--runs 200] [--export-events 10000]

PATH is a log built by bench/dataset.py (its trees are built by the first
open, as on a service's first start with this version). Prints:

1. inclusion- and consistency-proof generation, p50 and p99 over --runs
   random proofs, from the stored hashes through a read-only connection;
2. verify: both chains alone, then chains and trees in the same walk;
3. /history.evidence for about --export-events events, streamed through the
   review app in a process of its own: events/s and that process's peak RSS.

Targets at 1M events: proofs p50 <= 5 ms, the trees add <= 50% to verify,
the archive streams >= 2k events/s at <= 64 MB RSS.
"""

import argparse
import os
import pathlib
import random
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tim_audit.log import checkpoints, db, merkle, notary, signednote, tlog, verification  # noqa: E402
from tim_audit.log.writer import AuditLog  # noqa: E402

ORIGIN = "bench.example/1400000001"

EXPORT = """
import resource, sys, time
from tim_audit import create_review_app
app = create_review_app({"DATABASE": sys.argv[1], "DASHBOARD_AUTH": False, "LOG_ORIGIN": sys.argv[2]})
started = time.monotonic()
response = app.test_client().get("/history.evidence", query_string={"since": sys.argv[3], "until": sys.argv[4]},
                                 buffered=False)
size = sum(len(chunk) for chunk in response.response)
seconds = time.monotonic() - started
print(response.status_code, size, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def percentiles(samples):
    samples = sorted(samples)
    return statistics.median(samples) * 1000, samples[int(len(samples) * 0.99)] * 1000


def sign_checkpoint(path):
    """Open the log (building its trees the first time) and sign a checkpoint
    with the bench's key, kept beside the log (PATH.checkpoint.key) so that
    a later run signs with it again; a log whose latest checkpoint a key
    since lost signed is rotated to it on purpose, as rotate-key does."""
    started = time.monotonic()
    key = f"{path}.checkpoint.key"
    if not os.path.exists(key):
        notary.write_key(key, signednote.generate_key(ORIGIN)[0])
    signing = notary.Notary(path, key, ORIGIN, 3600, adopt=True)  # the bench made this log
    log = AuditLog(path, notary=signing)
    try:
        log.open()
    except notary.KeyRefused:
        conn = db.connect(path, readonly=True)
        [latest] = conn.execute("SELECT key FROM checkpoint ORDER BY id DESC LIMIT 1").fetchone()
        conn.close()
        with open(notary.rotation_path(key), "w", encoding="ascii") as file:
            file.write(f"{latest}\n{notary.read_signer(key, ORIGIN).verifier}\n")
        log.open()
    opened = time.monotonic() - started
    conn = db.connect(path)
    try:
        signing.sign(conn)
    finally:
        conn.close()
        log.close()
    return opened


def proofs(path, runs, rng):
    conn = db.connect(path, readonly=True)
    size = merkle.size(conn, "event")
    inclusion, consistency = [], []
    for _ in range(runs):
        index = rng.randrange(size)
        started = time.perf_counter()
        tlog.inclusion_proof(size, index, merkle.reader(conn, "event"))
        inclusion.append(time.perf_counter() - started)
        old = rng.randrange(1, size)
        started = time.perf_counter()
        checkpoints.consistency_proof(conn, old, size)
        consistency.append(time.perf_counter() - started)
    conn.close()
    return size, percentiles(inclusion), percentiles(consistency)


def verify(path, trees):
    conn = db.connect(path, readonly=True)
    started = time.monotonic()
    if trees:
        merkle.verify(conn)
    else:
        verification.verify(conn)
    conn.close()
    return time.monotonic() - started


def export(path, events):
    """Since/until around the newest ``events`` events of the checkpoint."""
    conn = db.connect(path, readonly=True)
    size = checkpoints.latest(conn)["size"]
    first, last = conn.execute(
        "SELECT min(event_time), max(event_time) FROM event WHERE id BETWEEN ? AND ?",
        (size - events + 1, size),
    ).fetchone()
    matched = conn.execute(
        "SELECT count(*) FROM event WHERE event_time BETWEEN ? AND ? AND id <= ?",
        (first, last, size),
    ).fetchone()[0]
    conn.close()
    iso = [
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"
        for ms in (first, last)
    ]
    result = subprocess.run(
        [sys.executable, "-c", EXPORT, path, ORIGIN, *iso],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    status, size, seconds, rss_kb = result.stdout.split()
    assert status == "200", result.stdout
    return matched, int(size), float(seconds), int(rss_kb) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--export-events", type=int, default=10_000)
    args = parser.parse_args()
    rng = random.Random(1)
    opened = sign_checkpoint(args.path)
    print(f"open (builds the trees the first time) and sign: {opened:.1f} s")
    size, inclusion, consistency = proofs(args.path, args.runs, rng)
    print(f"{size:,} events")
    print(f"inclusion proof:   p50 {inclusion[0]:.2f} ms, p99 {inclusion[1]:.2f} ms")
    print(f"consistency proof: p50 {consistency[0]:.2f} ms, p99 {consistency[1]:.2f} ms")
    chains = verify(args.path, trees=False)
    both = verify(args.path, trees=True)
    print(
        f"verify: chains {chains:.1f} s, chains and trees {both:.1f} s (+{(both / chains - 1) * 100:.0f}%)"
    )
    events, size, seconds, rss = export(args.path, args.export_events)
    print(
        f"/history.evidence: {events:,} events, {size / 1e6:.1f} MB in {seconds:.2f} s,"
        f" {events / seconds:,.0f} events/s, peak RSS {rss:.0f} MB"
    )


if __name__ == "__main__":
    main()
