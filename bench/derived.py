"""What comparing the derived tables with the chained rows adds to verify:
the whole of merkle.verify (chains, trees, derived tables) and the derived
check alone, each in a read snapshot of a log made by dataset.py, medians
of --repeat runs taken in turn.

    python bench/derived.py PATH [--repeat 3] [--key HEX]
"""

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from tim_audit.log import db, derived, merkle  # noqa: E402


def timed(path, run):
    conn = db.connect(path, readonly=True)
    try:
        started = time.perf_counter()
        run(conn)
        return time.perf_counter() - started
    finally:
        conn.close()


def check_alone(conn):
    """derived.check in a snapshot of its own, as merkle.verify runs it."""
    conn.execute("BEGIN")
    derived.check(conn)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--key", help="AUDIT_HMAC_KEY as hex, if the log has one")
    args = parser.parse_args()
    key = bytes.fromhex(args.key) if args.key else None
    whole, check = [], []
    for _ in range(args.repeat):
        whole.append(timed(args.path, lambda conn: merkle.verify(conn, key)))
        check.append(timed(args.path, check_alone))
    events = db.connect(args.path, readonly=True).execute("SELECT count(*) FROM event").fetchone()
    whole, check = statistics.median(whole), statistics.median(check)
    print(f"{events[0]:,} events, medians of {args.repeat}")
    print(f"  verify, derived check included  {whole:8.2f} s")
    print(f"  derived check alone             {check:8.2f} s  ({check / whole:.0%} of verify)")


if __name__ == "__main__":
    main()
