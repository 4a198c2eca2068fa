"""What carries each new checkpoint off the box (a witness, a timestamp
authority): one thread each, started and stopped with the notary
(notary.py), woken after a checkpoint commits, on a connection of its
own, never on a callback's path. A round that fails for any reason is
counted, logged and retried with backoff; the thread never dies of it.

Each request to the outside is bounded: TIMEOUT seconds in all, MAX_ANSWER
bytes read, no redirects and no proxies from the environment.
"""

import http.client
import logging
import sqlite3
import threading
import time
import urllib.error
import urllib.request

from . import db

logger = logging.getLogger(__name__)

TIMEOUT = 10.0  # seconds for one request, connection and answer included
MAX_ANSWER = 64 * 1024  # bytes read of an answer
FIRST_RETRY, LAST_RETRY = 1.0, 300.0  # seconds: the backoff doubles between them
BUSY_TIMEOUT = 5.0  # seconds a publisher's write waits for the writer's transaction


class Refused(Exception):
    """The other side did not do what was asked: why, as it said or as we found."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None  # a 3xx is answered as it is: an error


_OPENER = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))


def post(url, body, headers=None):
    """POST ``body``; (status, content type as sent, answer) once the whole
    answer, at most MAX_ANSWER bytes, came within TIMEOUT seconds."""
    deadline = time.monotonic() + TIMEOUT
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})  # noqa: S310 (http(s), checked in config)
    try:
        response = _OPENER.open(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        response = exc
    with response:
        chunks, size = [], 0
        while size < MAX_ANSWER:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no whole answer from {url} within {TIMEOUT:.0f} s")
            chunk = response.read1(MAX_ANSWER - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return response.status, response.headers.get("Content-Type"), b"".join(chunks)


class Publisher:
    """A thread that runs ``publish(conn)`` after each notify(), and again
    with backoff after a failure, until close()."""

    what = "publisher"  # for the log lines

    def __init__(self, path):
        self.path = path
        self.failures = 0  # in a row; with the last one's reason in .error
        self.error = None
        self._wake = threading.Event()
        self._stopping = None
        self._thread = None

    def publish(self, conn):
        raise NotImplementedError

    def start(self):
        """Start the thread. Each has a stop event of its own, so one that
        close() gave up waiting for (a request in flight) stops too."""
        if self._thread is not None:
            self._thread.join(TIMEOUT + 1)
        self._stopping = threading.Event()
        self._wake.set()  # catch up on what was signed while none ran
        self._thread = threading.Thread(
            target=self._run, args=(self._stopping,), name=f"tim-audit {self.what}", daemon=True
        )
        self._thread.start()

    def notify(self):
        self._wake.set()

    def stop(self):
        """Ask the thread to stop, without waiting: the notary asks them all
        at once, then waits for each in close()."""
        if self._thread is not None:
            self._stopping.set()
            self._wake.set()

    def close(self):
        if self._thread is None:
            return
        self.stop()
        self._thread.join(TIMEOUT + 1)
        if not self._thread.is_alive():
            self._thread = None  # else start() waits for it once more

    def _run(self, stopping):
        conn = None
        while True:
            self._wake.wait()
            if stopping.is_set():
                break
            self._wake.clear()
            try:
                conn = conn or db.connect(self.path, timeout=BUSY_TIMEOUT)
                self.publish(conn)
                self.failures, self.error = 0, None
            except Exception as exc:
                self.failures += 1
                self.error = f"{type(exc).__name__}: {exc}" if _unexpected(exc) else str(exc)
                delay = min(LAST_RETRY, FIRST_RETRY * 2 ** (self.failures - 1))
                logger.warning(
                    "%s: %s (%d in a row; next try in %.0f s)",
                    self.what,
                    self.error,
                    self.failures,
                    delay,
                    exc_info=_unexpected(exc),
                )
                if stopping.wait(delay):
                    break
                self._wake.set()
        if conn is not None:
            conn.close()


def _unexpected(exc):
    """Not one of the ways the other side or the network fails: our bug."""
    return not isinstance(exc, (Refused, OSError, http.client.HTTPException, sqlite3.Error))
