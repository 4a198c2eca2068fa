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

With INGEST_PROCESSES > 1 the ingest server is that many worker processes,
and this process is their writer (handoff.py): callbacks use every core,
and there is still one writer, one chain and one tree. Each worker listens
on INGEST_LISTEN with a socket of its own (SO_REUSEPORT), and the kernel
spreads connections among them by their addresses: on one shared socket,
the worker that woke first took every connection of a burst (all 8 of wrk's
keep-alive connections in 5 runs of 8), and kept them. This process makes
each socket, listening, before its worker starts, and hands it over: a
connection that comes while the worker starts waits in its backlog rather
than being refused, and once the worker has died the kernel sends the
socket no more (the connections queued on it then are reset). A worker
that died is started again on a new socket. If this process dies, the
workers stop with it,
as the review server does, and the service manager starts them all again
(deploy/tim-audit.service: Restart=on-failure): nothing answers 200
meanwhile, and what was answered 200 is committed.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import click
import waitress
from flask import current_app
from flask.cli import with_appcontext
from prometheus_client import generate_latest

from . import create_ingest_app, create_review_app, handoff, open_log
from .config import StartupError, warn_about_config

INGEST, REVIEW = "ingest (callbacks)", "review (dashboard)"  # what the log lines call them

# The review server's largest request: its forms are GETs and one bodiless POST.
REVIEW_BODY_LIMIT = 64 * 1024
RESTART_DELAY = 1.0  # seconds before a child process that died is started again
STOP_TIMEOUT = 8.0  # seconds the children have to stop (the unit gives 10 in all)
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
@click.option("--writer-fd", type=int, multiple=True, hidden=True)
@click.option("--ingest-fd", type=int, hidden=True)
@with_appcontext
def serve_command(only, review_fd, parent_fd, writer_fd, ingest_fd):
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
    if writer_fd:  # an ingest worker of a serve that writes for it
        _stop_with_parent(parent_fd)
        app = create_ingest_app(log=handoff.Remote([socket.socket(fileno=fd) for fd in writer_fd]))
        _run_ingest(app, socket.socket(fileno=ingest_fd), warn=False)
        return
    if only is None and _clash(config["INGEST_LISTEN"], config["REVIEW_LISTEN"]):
        raise StartupError(
            f"INGEST_LISTEN ({config['INGEST_LISTEN']}) and REVIEW_LISTEN"
            f" ({config['REVIEW_LISTEN']}) use the same port: give each server its own"
        )
    if config["INGEST_PROCESSES"] == 1:
        ingest_sockets = [listen(config, "INGEST_LISTEN")]
    else:
        ingest_sockets = _listen_apart(config, "INGEST_LISTEN", config["INGEST_PROCESSES"])
    review_socket = None if only == "ingest" else listen(config, "REVIEW_LISTEN")
    shared = None
    if config["INGEST_PROCESSES"] > 1 and config["METRICS"]:
        # Where the workers count callbacks (metrics.py); set before the
        # app, whose metrics sum what is counted there.
        shared = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
            prefix="tim-audit-metrics-"
        )
    ingest = open_log(create_ingest_app())
    children = []
    try:
        if review_socket is not None:
            children.append(Child("the review server", ingest.logger, _review(review_socket)))
        if config["INGEST_PROCESSES"] == 1:
            _run_ingest(ingest, ingest_sockets[0])
        else:
            _write_for_workers(ingest, ingest_sockets, children)
    finally:
        _stop(children)
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)


def ingest_body_limit(config):
    """The largest body waitress takes for the ingest app. It buffers a
    whole body before the app sees it: bound that at twice the app's own
    limit, so a body a little too large still gets a JSON 413 (and is
    quarantined) while a huge one is cut off."""
    return 2 * config["MAX_CONTENT_LENGTH"]


def _run_ingest(app, sock, warn=True):
    config = app.config
    run(app, sock, config["INGEST_THREADS"], ingest_body_limit(config), INGEST, warn)


def _write_for_workers(app, sockets, children):
    """Be the writer of INGEST_PROCESSES workers until SIGTERM or SIGINT.
    This process keeps the log's writer, its notary and its WAL
    checkpoints; the workers, the HTTP, signature and marshmallow work."""
    config = app.config
    warn_about_config(app)
    signal.signal(signal.SIGTERM, _exit)
    counted = app.extensions.get("tim_audit.metrics")
    desk = handoff.Desk(
        app.extensions["tim_audit"],
        ingest_body_limit(config),
        counted and (lambda: generate_latest(counted.registry)),
    )
    for number, sock in enumerate(sockets, 1):
        children.append(Child(f"ingest worker {number}", app.logger, _worker(desk, sock, config)))
    app.logger.info(
        "writing for %d ingest workers on %s",
        config["INGEST_PROCESSES"],
        config["INGEST_LISTEN"],
    )
    while True:
        signal.pause()


def _review(sock):
    def start(watch):
        fds = (sock.fileno(), watch)
        return _spawn(
            ["--only", "review", "--review-fd", str(fds[0]), "--parent-fd", str(watch)],
            fds,
            # glibc gives each of the review threads an arena of its own,
            # which keeps what pages used: 72 MB after the 10M benchmark's
            # pages, 57 MB with two arenas (and an export's peak 76 MB, 61 MB).
            {"MALLOC_ARENA_MAX": "2", **os.environ},
        )

    return start


def _worker(desk, sock, config):
    """Start a worker with a connection to ``desk`` for each of its threads,
    on ``sock`` the first time and on a new socket each time it is started
    again. The socket, listening before the worker starts, is handed to it
    alone: connections wait in its backlog while it starts, and once it has
    died the kernel sends it no more."""
    sockets = [sock]

    def start(watch):
        sock = sockets.pop() if sockets else listen(config, "INGEST_LISTEN", reuse_port=True)
        pairs = [handoff.pair() for _ in range(config["INGEST_THREADS"])]
        fds = [theirs.fileno() for _, theirs in pairs]
        try:
            process = _spawn(
                [
                    "--only",
                    "ingest",
                    "--ingest-fd",
                    str(sock.fileno()),
                    *(f"--writer-fd={fd}" for fd in fds),
                    "--parent-fd",
                    str(watch),
                ],
                (watch, sock.fileno(), *fds),
            )
        except BaseException:
            for own, _ in pairs:
                own.close()
            raise
        finally:
            sock.close()
            for _, theirs in pairs:
                theirs.close()
        for own, _ in pairs:
            desk.attach(own)
        return process

    return start


def _spawn(arguments, fds, env=None):
    # -P: the working directory is not put on sys.path, so the child runs
    # the same installed tim_audit as this process.
    return subprocess.Popen(  # noqa: S603 (this interpreter, fixed arguments)
        [sys.executable, "-P", "-m", "tim_audit", "serve", *arguments],
        pass_fds=fds,
        env=env,
    )


def listen(config, key, reuse_port=False):
    """A listening socket on the configured HOST:PORT (an IPv6 address in
    brackets, or a host name); with ``reuse_port``, one of several."""
    family, address = _address(config, key)
    try:
        return socket.create_server(address, family=family, backlog=1024, reuse_port=reuse_port)
    except OSError as exc:
        raise _refused(config, key, exc) from None


def _listen_apart(config, key, count):
    """``count`` listening sockets on HOST:PORT, one a worker. A socket
    bound first without SO_REUSEPORT, and never listening, refuses a port
    anyone holds, even with SO_REUSEPORT: another serve on it would split
    the callbacks between two logs."""
    family, address = _address(config, key)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # as create_server binds
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise _refused(config, key, exc) from None
    return [listen(config, key, reuse_port=True) for _ in range(count)]


def _refused(config, key, exc):
    return StartupError(f"cannot listen on {key} {config[key]}: {os.strerror(exc.errno)}")


def _address(config, key):
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
    return family, address


def _clash(first, second):
    """Both listeners on one port of one address (a wildcard is every one)."""
    (host, _, port), (other, _, other_port) = first.rpartition(":"), second.rpartition(":")
    wildcards = {"", "0.0.0.0", "[::]", "::"}  # noqa: S104 (compared, not bound)
    return port == other_port and (host == other or host in wildcards or other in wildcards)


def run(app, sock, threads, body_limit, name, warn=True):
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT, saying which
    server it is when it starts and when it stops."""
    if warn:
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


class Child:
    """A server in a child process, started again if it dies. ``start``
    gets the descriptor of a pipe the child watches (_stop_with_parent)
    and returns the Popen."""

    def __init__(self, name, logger, start):
        self.name = name
        self.logger = logger
        self.start = start
        # The child watches the read end; the write end is never written
        # and, not inheritable, closes only when this process ends.
        self._parent_watch, self._alive = os.pipe()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._process = start(self._parent_watch)
        threading.Thread(target=self._watch, name=f"tim-audit {name} watcher", daemon=True).start()

    def _watch(self):
        code = self._process.wait()
        while not self._stopping.wait(RESTART_DELAY):
            with self._lock:
                if self._stopping.is_set():
                    return
                self.logger.error("%s exited with %s; starting it again", self.name, code)
                try:
                    self._process = self.start(self._parent_watch)
                except (Exception, StartupError) as exc:  # no descriptors, memory or threads now
                    code = f"no start ({exc})"
                    continue
            code = self._process.wait()

    def terminate(self):
        with self._lock:
            self._stopping.set()
            process = self._process
        process.terminate()
        return process


def _stop(children):
    """SIGTERM to every child at once, then wait for them all within
    STOP_TIMEOUT together: under the unit's TimeoutStopSec, not that much
    a child."""
    processes = [child.terminate() for child in children]
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
