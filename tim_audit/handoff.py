"""The hand-off between ingest workers and the one writer, when
INGEST_PROCESSES > 1.

Each worker process does a callback's HTTP, signature, parsing and
marshmallow work, then sends the validated entry to the writer over one of
the socketpairs the serve process made for it (one for each of its request
threads), and waits for the receipt. The writer is the serve process's own
AuditLog: its group commit, its answers and their deadlines are unchanged,
so a worker answers exactly what a single process would, plus what a lost
writer means: an entry that was never sent whole is "not stored"
(StorageUnavailable), one sent without an answer may be (StorageUncertain;
Tencent's retry is then a repeat).

A frame is its length, a request id and a kind, then for an entry a JSON
header (when the request started, the entry's fields but its body) and the
body's bytes as they are. JSON, not pickle: the writer decodes data, never
code. CLOCK_MONOTONIC is one clock for every process, so a request's start
carries its time budget across.
"""

import dataclasses
import itertools
import json
import logging
import queue
import os
import signal
import socket
import struct
import threading
import time

from .log.records import Event, Receipt, Rejection
from .log.writer import ANSWER_BOUND, StorageUncertain, StorageUnavailable

logger = logging.getLogger(__name__)

_HEAD = struct.Struct("!IIB")  # length of what follows the id and kind, request id, kind
_EVENT, _REJECTION, _STATE, _METRICS = 1, 2, 3, 4  # requests
_ANSWER, _UNAVAILABLE, _UNCERTAIN, _FAILED = 5, 6, 7, 8  # answers
_CLASSES = {_EVENT: Event, _REJECTION: Rejection}
_FIELDS = {  # what the JSON header carries: all but the body
    kind: [f.name for f in dataclasses.fields(c) if f.name != "raw"] for kind, c in _CLASSES.items()
}
# A worker waits for its answer this much past the writer's own bound: the
# time a receipt takes to cross, on a machine that is busy.
CROSSING = 0.03  # seconds
_IDS = 2**32  # request ids wrap here: they are packed in 4 bytes
# Room in a frame for the JSON header beyond the body: the request line and
# headers waitress accepts (256 KiB), and JSON's escapes.
_HEADER_ROOM = 1024 * 1024


def frame_limit(max_body):
    """The largest frame payload a worker sends for a body of at most
    ``max_body`` bytes: the body, and a header whose strings come from it,
    each byte of which JSON escapes into at most 3 (é is \\u00e9)."""
    return 4 * max_body + _HEADER_ROOM


class FrameTooLarge(ValueError):
    """A frame claims more than the reader takes: the connection is not
    one a worker of ours speaks on, or it is out of step."""


class _Connection:
    """One end of a socketpair, carrying one request at a time, and its
    frames; a frame read in one recv when it fits, as nearly all do."""

    def __init__(self, sock):
        self.sock = sock
        self._buffer = bytearray()

    def send(self, request_id, kind, payload):
        self.sock.sendall(_frame(request_id, kind, payload))

    def send_until(self, request_id, kind, payload, deadline):
        """Send what of the frame fits before ``deadline`` (which has not
        passed): how many bytes that was, of how many. Whether any went
        decides what a request that could not be sent whole may answer.
        OSError when the other end is gone."""
        frame = memoryview(_frame(request_id, kind, payload))
        sent = 0
        while sent < len(frame):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # A timeout, however long, keeps the socket non-blocking: no
            # system call to switch modes on each request.
            self.sock.settimeout(left)
            try:
                sent += self.sock.send(frame[sent:])
            except TimeoutError:
                break
        return sent, len(frame)

    def receive(self, limit=None, deadline=None):
        """(request id, kind, payload), or None once the other end is gone.
        TimeoutError when ``deadline`` (time.monotonic()) passes first, however
        many pieces the frame comes in; FrameTooLarge when a frame claims
        more than ``limit`` bytes."""
        while True:
            if len(self._buffer) >= _HEAD.size:
                length, request_id, kind = _HEAD.unpack_from(self._buffer)
                if limit is not None and length > limit:
                    raise FrameTooLarge(f"a frame of {length} bytes, over the limit of {limit}")
                end = _HEAD.size + length
                if len(self._buffer) >= end:
                    payload = bytes(self._buffer[_HEAD.size : end])
                    del self._buffer[:end]
                    return request_id, kind, payload
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise
            except OSError:
                return None
            if not chunk:
                return None
            self._buffer += chunk


def _frame(request_id, kind, payload):
    return _HEAD.pack(len(payload), request_id, kind) + payload


def _encode(entry, started):
    kind = _EVENT if isinstance(entry, Event) else _REJECTION
    values = [getattr(entry, name) for name in _FIELDS[kind]]
    header = json.dumps([started, entry.raw is not None, values]).encode()
    return kind, struct.pack("!I", len(header)) + header + (entry.raw or b"")


def _decode(kind, payload):
    (size,) = struct.unpack_from("!I", payload)
    started, has_raw, values = json.loads(payload[4 : 4 + size])
    fields = dict(zip(_FIELDS[kind], values, strict=True))
    if kind == _EVENT:
        fields["members"] = tuple(fields["members"])
    raw = payload[4 + size :] if has_raw else None
    return _CLASSES[kind](**fields, raw=raw), started


def _stop_this_process():
    """SIGTERM to this process: the ingest server's handler (serve.run)
    makes waitress stop, its threads finishing the requests they have, and
    the serve process starts the worker again, with new connections."""
    os.kill(os.getpid(), signal.SIGTERM)


class Remote:
    """What a worker's ingest app has as its log: AuditLog's append, open,
    stalled and failure, answered by the writer. One connection for each
    request thread, so that a request is sent and answered on the thread
    that makes it, with no thread between.

    A connection that is lost (cut mid-frame, or ended by the writer) is
    never replaced in this process: ``stop`` is called, once, so that the
    worker exits and is started again with new ones, rather than answer
    503 for ever on fewer connections, or none."""

    def __init__(self, socks, stop=_stop_this_process):
        self._free = queue.SimpleQueue()
        for sock in socks:
            self._free.put(_Connection(sock))
        self._ids = itertools.count(1)
        self._stop = stop
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def append(self, entry, started=None):
        started = time.monotonic() if started is None else started
        kind, payload = _encode(entry, started)
        kind, payload = self._ask(kind, payload, started + ANSWER_BOUND + CROSSING)
        if kind == _ANSWER:
            return Receipt(*json.loads(payload))
        message = payload.decode()
        if kind == _UNAVAILABLE:
            raise StorageUnavailable(message)
        if kind == _UNCERTAIN:
            raise StorageUncertain(message)
        raise RuntimeError(f"the writer failed on this entry: {message}")

    def open(self):
        """Nothing to open here: the writer opened the log before any
        worker started. Refuses, as AuditLog.open does, once this worker
        is stopping."""
        if self._stopping.is_set():
            raise StorageUnavailable("the writer is not running")

    @property
    def stopping(self):
        """Whether this worker lost a connection and is stopping for it."""
        return self._stopping.is_set()

    def stalled(self):
        return self._state()["stalled"]

    @property
    def failure(self):
        return self._state()["failure"]

    def metrics(self):
        """The writer's /metrics: every worker's counts, and its witnesses'."""
        kind, payload = self._ask(_METRICS, b"", time.monotonic() + ANSWER_BOUND)
        if kind != _ANSWER:
            raise RuntimeError(f"the writer has no metrics: {payload.decode()}")
        return payload

    def _state(self):
        try:
            kind, payload = self._ask(_STATE, b"", time.monotonic() + ANSWER_BOUND)
        except (StorageUnavailable, StorageUncertain) as exc:
            return {"stalled": str(exc), "failure": None}
        if kind != _ANSWER:
            return {"stalled": f"the writer cannot say: {payload.decode()}", "failure": None}
        return json.loads(payload)

    def _lost(self, connection, why):
        """Give up ``connection`` (its next frame could not be read as one)
        and stop this worker, once."""
        connection.sock.close()
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
        logger.error("an ingest worker %s; stopping it, to be started again", why)
        self._stop()

    def _ask(self, kind, payload, deadline):
        """Send a request and wait for its answer until ``deadline``."""
        if self._stopping.is_set():
            raise StorageUnavailable("the writer is not running")
        request_id = next(self._ids) % _IDS
        try:
            connection = self._free.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise StorageUnavailable("no connection to the writer is free") from None
        try:
            if deadline <= time.monotonic():
                # Nothing is sent, so nothing can be stored.
                raise StorageUnavailable("no time was left to hand the entry to the writer")
            try:
                sent, whole = connection.send_until(request_id, kind, payload, deadline)
            except OSError:
                # A frame cut short is never read as an entry: not stored.
                self._lost(connection, "lost its connection to the writer")
                connection = None
                raise StorageUnavailable("the writer is not taking entries") from None
            if sent < whole:
                if sent:  # the next frame would follow a part of this one
                    self._lost(connection, "sent part of a frame to the writer in time")
                    connection = None
                raise StorageUnavailable("the writer did not take the entry in time")
            while True:
                try:
                    frame = connection.receive(deadline=deadline)
                except TimeoutError:
                    # Its answer comes later, and the next request on this
                    # connection passes over it.
                    raise StorageUncertain("the writer did not answer in time") from None
                if frame is None:
                    self._lost(connection, "lost its connection to the writer")
                    connection = None
                    raise StorageUncertain("the writer stopped before it answered")
                answered, kind, payload = frame
                if answered == request_id:
                    return kind, payload
        finally:
            if connection is not None:
                self._free.put(connection)


class Desk:
    """The writer's side: a thread for each worker thread's connection,
    which waits in AuditLog.append as that request thread would.
    ``max_body`` is the largest body a worker takes (serve's
    ingest_body_limit); a frame larger than a body that size makes is
    refused, lest a connection out of step make this process read a length
    it claims into memory."""

    def __init__(self, log, max_body, metrics=None):
        self.log = log
        self.metrics = metrics  # the text of /metrics, when METRICS is on
        self.limit = frame_limit(max_body)

    def attach(self, sock):
        """Answer the requests on ``sock`` until the worker is gone."""
        threading.Thread(
            target=self._serve, args=(sock,), name="tim-audit desk", daemon=True
        ).start()

    def _serve(self, sock):
        """Answer one connection's requests. Whatever ends it ends only it:
        its worker then stops, and is started again (Remote)."""
        connection = _Connection(sock)
        with sock:
            try:
                while (frame := connection.receive(self.limit)) is not None:
                    request_id, kind, payload = frame
                    try:
                        connection.send(request_id, *self._answer(kind, payload))
                    except OSError:
                        return  # the worker is gone; its requests died with it
            except FrameTooLarge as exc:
                logger.error("closed a connection from an ingest worker: %s", exc)
            except Exception:
                logger.exception("closed a connection from an ingest worker after an error")

    def _answer(self, kind, payload):
        """(kind, payload) of the answer. Whatever fails here is answered
        as such: a connection that ended would stop its worker's appends."""
        try:
            if kind == _STATE:
                state = {"stalled": self.log.stalled(), "failure": self.log.failure}
                return _ANSWER, json.dumps(state).encode()
            if kind == _METRICS:
                return _ANSWER, self.metrics()
            entry, started = _decode(kind, payload)
            receipt = self.log.append(entry, started)
        except StorageUnavailable as exc:
            return _UNAVAILABLE, str(exc).encode()
        except StorageUncertain as exc:
            return _UNCERTAIN, str(exc).encode()
        except Exception as exc:
            logger.exception("the writer failed on a request from a worker")
            return _FAILED, str(exc).encode()
        return _ANSWER, json.dumps([receipt.outcome, receipt.id, receipt.hash]).encode()


def pair():
    """A connected pair: the writer's end and a worker's (serve passes it
    to the worker with pass_fds, which makes it inheritable there)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
