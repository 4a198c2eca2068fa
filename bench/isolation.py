"""Can reviewers delay callbacks? The same hostile review load against three
ways of serving tim-audit, in one run.

On a log of ``--events`` events (100k; built once into bench/out/), each
arrangement gets a fresh copy of the log and, for ``--seconds``:

- callbacks at a steady ``--rate`` per second on the ingest port, each on
  its own schedule whatever the answers do (open loop), each given 2 s, as
  Tencent gives them;
- on the review port: 8 CSV exports of the whole log that read nothing
  (stalled downloads), 16 clients sending wrong Basic passwords as fast as
  they are answered, and a verification always running.

The arrangements:

- ``split``: ``tim-audit serve``, ingest here and review in a child process
  (the default);
- ``one process``: both servers in one process, two listeners and two
  thread pools, one GIL;
- ``combined``: ``wsgi:app`` under waitress: one listener, one pool;
- ``witnessed``: ``split`` that also signs a checkpoint every second and
  carries each off the box, to a witness that stalls 10 s before every
  answer and a timestamp authority that refuses every request (issue 14:
  neither may touch a callback).

    python bench/isolation.py [--events 100000] [--seconds 20] [--rate 50]

Target for ``split`` and ``witnessed``: callback p99 <= 50 ms, no failures,
no timeouts.
"""

import argparse
import base64
import http.client
import http.server
import json
import multiprocessing
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import urlencode

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import dataset  # noqa: E402
import loadgen  # noqa: E402
from werkzeug.security import generate_password_hash  # noqa: E402

from tim_audit.ingest.signature import sign  # noqa: E402

OUT = BENCH / "out"
USER, PASSWORD = "bench", "bench-password-1"
WRONG = {"Authorization": "Basic " + base64.b64encode(f"{USER}:not-the-password".encode()).decode()}
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}

# Two servers in one process: what serve would be without a child process.
ONE_PROCESS = """
import sys, threading, waitress
from tim_audit import create_ingest_app, create_review_app, open_log
ingest, review = open_log(create_ingest_app()), create_review_app()
for app, port in ((review, int(sys.argv[2])), (ingest, int(sys.argv[1]))):
    server = waitress.create_server(app, host="127.0.0.1", port=port, threads=8,
                                    outbuf_high_watermark=1048576)
    threading.Thread(target=server.run, daemon=True).start()
threading.Event().wait()
"""


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(port, process):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a server exited with {process.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            conn.close()
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
    raise SystemExit("a server did not start")


class Unhelpful(http.server.ThreadingHTTPServer):
    """A witness that stalls ``delay`` seconds before answering 503, or a
    TSA that refuses at once (``delay`` 0, status 500), on loopback."""

    daemon_threads = True

    def __init__(self, delay, status):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(delay)
                self.send_error(status)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


def off_the_box(env, work):
    """The settings that sign and ship checkpoints to a stalled witness and
    a refusing TSA (started here), with a key made by keygen."""
    from tim_audit.log import signednote

    witness, tsa = Unhelpful(10, 503), Unhelpful(0, 500)
    ca = work / "tsa-ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        + ["-nodes", "-keyout", str(work / "tsa-ca.key"), "-out", str(ca), "-subj", "/CN=bench"],
        check=True,
        capture_output=True,
    )
    settings = {
        "TIM_AUDIT_LOG_ORIGIN": "bench.example/1",
        "TIM_AUDIT_CHECKPOINT_KEY": str(work / "checkpoint.key"),
        "TIM_AUDIT_CHECKPOINT_INTERVAL": "1",
        "TIM_AUDIT_CHECKPOINT_ADOPT": "true",  # the bench's log was built before signing
        "TIM_AUDIT_WITNESSES": json.dumps(
            [{"url": witness.url, "key": signednote.generate_key("stalled.example/w", True)[1]}]
        ),
        "TIM_AUDIT_TIMESTAMP_URL": tsa.url,
        "TIM_AUDIT_TIMESTAMP_CA": str(ca),
    }
    subprocess.run(
        [sys.executable, "-m", "tim_audit", "keygen"],
        cwd=ROOT,
        env={**env, **settings},
        check=True,
        capture_output=True,
    )
    return settings  # the two servers run on in their threads


def start(arrangement, database, work):
    """Start one arrangement; returns (processes, ingest port, review port)."""
    ingest, review = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TIM_AUDIT_INSTANCE_PATH": str(work),
        "TIM_AUDIT_DATABASE": str(database),
        "TIM_AUDIT_SDKAPPID": loadgen.SDKAPPID,
        "TIM_AUDIT_CALLBACK_TOKEN": json.dumps(loadgen.TOKEN),
        "TIM_AUDIT_DASHBOARD_USERS": json.dumps({USER: generate_password_hash(PASSWORD)}),
        "TIM_AUDIT_VERIFY_INTERVAL": "0",
        "TIM_AUDIT_INGEST_LISTEN": f"127.0.0.1:{ingest}",
        "TIM_AUDIT_REVIEW_LISTEN": f"127.0.0.1:{review}",
    }
    log = open(work / f"{arrangement.replace(' ', '-')}.log", "ab")
    if arrangement == "witnessed":
        env.update(off_the_box(env, work))
    if arrangement in ("split", "witnessed"):
        command = [sys.executable, "-m", "tim_audit", "serve"]
    elif arrangement == "one process":
        command = [sys.executable, "-c", ONE_PROCESS, str(ingest), str(review)]
    else:
        review = ingest
        command = [
            sys.executable,
            "-m",
            "waitress",
            f"--listen=127.0.0.1:{ingest}",
            "--threads=8",
            "--outbuf-high-watermark=1048576",
            "wsgi:app",
        ]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    wait_for(ingest, process)
    wait_for(review, process)
    return process, ingest, review


class ReviewLoad:
    """Stalled exports, a password spray and verifications, until stopped."""

    def __init__(self, port):
        self.port = port
        self.stop = threading.Event()
        self.answers = {"wrong password": {}, "verify": {}}
        self.exports = [self._stalled_export() for _ in range(8)]
        self.threads = [threading.Thread(target=self._spray, daemon=True) for _ in range(16)]
        self.threads.append(threading.Thread(target=self._verify, daemon=True))
        for thread in self.threads:
            thread.start()

    def _stalled_export(self):
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            f"GET /history.csv HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n\r\n".encode()
        )
        return sock

    def _count(self, kind, status):
        self.answers[kind][status] = self.answers[kind].get(status, 0) + 1

    def _request(self, kind, method, path, headers):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            response.read()
            self._count(kind, response.status)
        except (OSError, http.client.HTTPException):
            self._count(kind, "error")
        finally:
            conn.close()

    def _spray(self):
        while not self.stop.is_set():
            self._request("wrong password", "GET", "/history", WRONG)

    def _verify(self):
        while not self.stop.wait(0.5):
            self._request("verify", "POST", "/history/verify", AUTH)

    def close(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(15)
        for sock in self.exports:
            sock.close()


def review_load(port, stop, answers):
    load = ReviewLoad(port)
    stop.wait()
    load.close()
    answers.put(load.answers)


def callbacks(port, seconds, rate, prefix):
    """Open loop: callback n is sent at n / rate seconds, on a connection of
    its own, whatever happened to the ones before. Returns a list of
    latencies in seconds, or None for a failure or a timeout."""
    request_time = str(int(time.time()))
    query = urlencode(
        {
            "SdkAppid": loadgen.SDKAPPID,
            "CallbackCommand": loadgen.COMMAND,
            "contenttype": "json",
            "RequestTime": request_time,
            "Sign": sign(loadgen.TOKEN, request_time),
        }
    )
    results = [None] * int(seconds * rate)

    def one(number):
        body = json.dumps(
            {
                "CallbackCommand": loadgen.COMMAND,
                "GroupId": f"@TGS#{prefix}{number}",
                "Operator_Account": "administrator",
                "Owner_Account": "leckie",
                "Type": "Public",
                "Name": f"isolation {number}",
                "MemberList": [{"Member_Account": "leckie"}],
                "EventTime": 1700000000000 + number,
            }
        ).encode()
        started = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("POST", f"/callback?{query}", body=body)
            response = conn.getresponse()
            answer = json.loads(response.read())
            conn.close()
        except (OSError, http.client.HTTPException, ValueError):
            return
        if response.status == 200 and answer == loadgen.OK:
            results[number] = time.perf_counter() - started

    threads = []
    begin = time.perf_counter()
    for number in range(len(results)):
        time.sleep(max(0.0, begin + number / rate - time.perf_counter()))
        thread = threading.Thread(target=one, args=(number,), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=50, help="callbacks per second")
    args = parser.parse_args()

    OUT.mkdir(exist_ok=True)
    built = OUT / f"isolation-{args.events}.sqlite3"
    if not built.exists():
        print(f"building {args.events:,} events in {built} ...", flush=True)
        dataset.build(built, args.events)
    work = pathlib.Path(tempfile.mkdtemp(prefix="tim-audit-isolation-"))
    print(
        f"{args.events:,} events; {args.rate} callbacks/s for {args.seconds} s while the review"
        " side takes 8 stalled CSV exports, 16 clients with wrong passwords and a verify\n"
    )
    print(
        f"{'arrangement':<12} {'quiet p50':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        f" {'failed':>7}   review answers"
    )
    figures = {}
    for number, arrangement in enumerate(("split", "one process", "combined", "witnessed")):
        database = work / f"{number}.sqlite3"
        shutil.copy(built, database)
        process, ingest, review = start(arrangement, database, work)
        try:
            quiet = [r for r in callbacks(ingest, 5, args.rate, f"q{number}-") if r is not None]
            # The review load runs in a process of its own, so that its 17
            # threads cannot hold up this one's clocks.
            stop, answers = multiprocessing.Event(), multiprocessing.Queue()
            load = multiprocessing.Process(target=review_load, args=(review, stop, answers))
            load.start()
            time.sleep(2)  # the exports stall, the spray and a verify are under way
            results = callbacks(ingest, args.seconds, args.rate, f"l{number}-")
            stop.set()
            review_answers = answers.get(timeout=30)
            load.join(30)
        finally:
            process.terminate()
            process.wait(15)
        answered = sorted(r for r in results if r is not None)
        failed = len(results) - len(answered)
        p50 = statistics.median(answered) * 1000 if answered else float("nan")
        p99 = answered[int(0.99 * (len(answered) - 1))] * 1000 if answered else float("nan")
        figures[arrangement] = (p99, failed)
        print(
            f"{arrangement:<12} {statistics.median(quiet) * 1000:>9.2f} {p50:>8.2f} {p99:>8.2f}"
            f" {(answered[-1] * 1000 if answered else float('nan')):>8.2f} {failed:>7}   {review_answers}"
        )
    passed = True
    print()
    for arrangement in ("split", "witnessed"):
        p99, failed = figures[arrangement]
        passed = passed and p99 <= 50 and not failed
        print(
            f"  [{'PASS' if p99 <= 50 and not failed else 'FAIL'}] {arrangement}: p99"
            f" {p99:.2f} ms <= 50 ms, {failed} failed or timed out"
        )
    witnessed = work / "witnessed.log"
    print(
        f"  witnessed: {witnessed.read_text().count('publisher: witness ')} witness failures and"
        f" {witnessed.read_text().count('publisher: timestamps: ')} refused timestamps logged"
    )
    print(f"\n(work files in {work})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
