"""``tim-audit serve``: the ingest and review servers under waitress.

Each server has its own listener and thread pool, and by default the review
server runs in a process of its own: an export, a password check or a
verification then spends another process's CPU time and GIL, and cannot
delay a callback (bench/isolation.py measures what that buys), and it runs
at a lower CPU priority, so that even on a machine with every core busy a
reviewer's work waits for callbacks rather than the other way round. Both
listening sockets are bound here, before anything is served, so a port in
use stops the start with one line; the review process inherits its socket,
and is started again if it dies.
"""

import os
import signal
import socket
import subprocess
import sys
import threading

import click
import waitress
from flask import current_app
from flask.cli import with_appcontext

from . import create_ingest_app, create_review_app, open_log
from .config import StartupError, warn_about_config

INGEST, REVIEW = "ingest (callbacks)", "review (dashboard)"  # what the log lines call them

# The review server's largest request: its forms are GETs and one bodiless POST.
REVIEW_BODY_LIMIT = 64 * 1024
RESTART_DELAY = 1.0  # seconds before a review process that died is started again
# On a busy machine the kernel gives callbacks the CPU first: exports,
# verifications and password checks wait, callbacks do not.
REVIEW_NICENESS = 10


@click.command("serve")
@click.option(
    "--only",
    type=click.Choice(["ingest", "review"]),
    help="Run just one server, for example as one of two systemd units.",
)
@click.option("--review-fd", type=int, hidden=True)
@click.option("--parent-fd", type=int, hidden=True)
@with_appcontext
def serve_command(only, review_fd, parent_fd):
    """Serve callbacks on INGEST_LISTEN and the dashboard on REVIEW_LISTEN."""
    config = current_app.config
    if only == "review":
        if review_fd is None:
            sock = listen(config, "REVIEW_LISTEN")
        else:  # the child of a serve that runs both
            sock = socket.socket(fileno=review_fd)
            os.nice(REVIEW_NICENESS)
            _stop_with_parent(parent_fd)
        run(create_review_app(), sock, config["REVIEW_THREADS"], REVIEW_BODY_LIMIT, REVIEW)
        return
    if only is None and _clash(config["INGEST_LISTEN"], config["REVIEW_LISTEN"]):
        raise StartupError(
            f"INGEST_LISTEN ({config['INGEST_LISTEN']}) and REVIEW_LISTEN"
            f" ({config['REVIEW_LISTEN']}) use the same port: give each server its own"
        )
    ingest_socket = listen(config, "INGEST_LISTEN")
    review_socket = None if only == "ingest" else listen(config, "REVIEW_LISTEN")
    ingest = open_log(create_ingest_app())
    review = None if review_socket is None else ReviewProcess(review_socket, ingest.logger)
    try:
        # waitress buffers a whole body before the app sees it: bound that
        # at twice the app's own limit, so a body a little too large still
        # gets a JSON 413 (and is quarantined) while a huge one is cut off.
        run(
            ingest,
            ingest_socket,
            config["INGEST_THREADS"],
            2 * config["MAX_CONTENT_LENGTH"],
            INGEST,
        )
    finally:
        if review is not None:
            review.stop()


def listen(config, key):
    """A listening socket on the configured HOST:PORT (an IPv6 address in
    brackets, or a host name)."""
    host, _, port = config[key].rpartition(":")
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host.strip("[]"),
            int(port),
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )[0]
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {key} {config[key]}: {exc.strerror}") from None
    try:
        return socket.create_server(address, family=family, backlog=1024)
    except OSError as exc:
        raise StartupError(
            f"cannot listen on {key} {config[key]}: {os.strerror(exc.errno)}"
        ) from None


def _clash(first, second):
    """Both listeners on one port of one address (a wildcard is every one)."""
    (host, _, port), (other, _, other_port) = first.rpartition(":"), second.rpartition(":")
    wildcards = {"", "0.0.0.0", "[::]", "::"}  # noqa: S104 (compared, not bound)
    return port == other_port and (host == other or host in wildcards or other in wildcards)


def run(app, sock, threads, body_limit, name):
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT, saying which
    server it is when it starts and when it stops."""
    warn_about_config(app)
    signal.signal(signal.SIGTERM, _exit)
    host, port = sock.getsockname()[:2]
    where = (
        f"{name} on http://{host}:{port}"
        if ":" not in host
        else f"{name} on http://[{host}]:{port}"
    )
    app.logger.info("serving %s with %d threads", where, threads)
    try:
        waitress.serve(
            app,
            sockets=[sock],
            threads=threads,
            max_request_body_size=body_limit,
            outbuf_high_watermark=1024 * 1024,
            ident="tim-audit",
            _quiet=True,
        )
    finally:
        app.logger.info("stopped serving %s", where)


def _exit(signum, frame):
    raise SystemExit(0)


def _stop_with_parent(fd):
    """Stop when the parent is gone, however it went: the end of a pipe
    only the parent holds open reads empty then. An orphaned review server
    would keep REVIEW_LISTEN, and the next serve could not start."""

    def wait():
        os.read(fd, 1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="tim-audit parent watch", daemon=True).start()


class ReviewProcess:
    """The review server in a child process, on a socket bound by the parent."""

    def __init__(self, sock, logger):
        self.sock = sock
        self.logger = logger
        # The child watches the read end; the write end is never written
        # and, not inheritable, closes only when this process ends.
        self._parent_watch, self._alive = os.pipe()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._process = self._start()
        threading.Thread(target=self._watch, name="tim-audit review watcher", daemon=True).start()

    def _start(self):
        fds = (self.sock.fileno(), self._parent_watch)
        # -P: the working directory is not put on sys.path, so the child
        # runs the same installed tim_audit as this process.
        return subprocess.Popen(  # noqa: S603 (this interpreter, fixed arguments)
            [
                sys.executable,
                "-P",
                "-m",
                "tim_audit",
                "serve",
                "--only",
                "review",
                "--review-fd",
                str(fds[0]),
                "--parent-fd",
                str(fds[1]),
            ],
            pass_fds=fds,
            # glibc gives each of the review threads an arena of its own, which
            # keeps what pages used: 72 MB after the 10M benchmark's pages,
            # 57 MB with two arenas (and an export's peak 76 MB, 61 MB).
            env={"MALLOC_ARENA_MAX": "2", **os.environ},
        )

    def _watch(self):
        while True:
            code = self._process.wait()
            if self._stopping.wait(RESTART_DELAY):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.logger.error("the review server exited with %s; starting it again", code)
                self._process = self._start()

    def stop(self):
        with self._lock:
            self._stopping.set()
            process = self._process
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
