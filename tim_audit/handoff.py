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

import collections
import contextlib
import dataclasses
import heapq
import itertools
import json
import logging
import os
import queue
import selectors
import signal
import socket
import struct
import threading
import time

from .log.records import Event, Receipt, Rejection
from .log.writer import ANSWER_BOUND, TIMED_OUT, StorageUncertain, StorageUnavailable

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
# Entries a connection may have waiting at the desk. A worker sends the next
# only once the last is answered or given up on (at ANSWER_BOUND + CROSSING,
# when the desk has answered it too): one, two when the desk's answer is
# late, and one more to spare. More is a worker out of step, whose bodies
# would pile up in the writer's queue; its connection is closed.
_IN_FLIGHT = 3
# A request's start, as the worker says, must lie this near the desk's own
# clock (the same CLOCK_MONOTONIC): a time from nowhere would set the desk's
# timers, and its wait in select, by it.
_STARTED_WITHIN = (-10.0, 1.0)  # seconds from now


def frame_limit(max_body):
    """The largest frame payload a worker sends for a body of at most
    ``max_body`` bytes: the body, and a header whose strings come from it,
    each byte of which JSON escapes into at most 3 (é is \\u00e9)."""
    return 4 * max_body + _HEADER_ROOM


class FrameTooLarge(ValueError):
    """A frame claims more than the reader takes: the connection is not
    one a worker of ours speaks on, or it is out of step."""


class OutOfStep(ValueError):
    """A worker sent entries faster than the desk answers them."""


_NOTHING = object()  # posted only to wake the desk
_Metrics = collections.namedtuple("_Metrics", "kind payload")  # a read's answer


class _Connection:
    """One end of a socketpair, carrying one request at a time, and its
    frames; a frame read in one recv when it fits, as nearly all do."""

    def __init__(self, sock):
        self.sock = sock
        self._buffer = bytearray()
        self.out = bytearray()  # what the desk has yet to send on it
        self.in_flight = 0  # its entries the desk has not answered yet

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
        while (frame := self.take(limit)) is None:
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
        return frame

    def read_ready(self):
        """Take what the socket has, without waiting for more: False once
        the other end is gone."""
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        self._buffer += chunk
        return bool(chunk)

    def take(self, limit=None):
        """The next whole frame of what was received, or None."""
        if len(self._buffer) < _HEAD.size:
            return None
        length, request_id, kind = _HEAD.unpack_from(self._buffer)
        if limit is not None and length > limit:
            raise FrameTooLarge(f"a frame of {length} bytes, over the limit of {limit}")
        end = _HEAD.size + length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[_HEAD.size : end])
        del self._buffer[:end]
        return request_id, kind, payload


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
    """The writer's side: one thread that reads every worker connection,
    queues each entry with AuditLog.submit, and sends each answer when the
    writer finishes the entry, or when its time runs out, deciding exactly
    as AuditLog.append would. One thread for all, not one waiting on each
    connection: a thread woken for each callback cost this process more
    CPU than the writing (bench/costs.py).

    ``max_body`` is the largest body a worker takes (serve's
    ingest_body_limit); a frame larger than a body that size makes is
    refused, lest a connection out of step make this process read a length
    it claims into memory. Whatever ends a connection ends only it: its
    worker then stops, and is started again (Remote)."""

    def __init__(self, log, max_body, metrics=None):
        self.log = log
        self.metrics = metrics  # the text of /metrics, when METRICS is on
        self.limit = frame_limit(max_body)
        self._selector = selectors.DefaultSelector()
        self._bell, self._ringer = socket.socketpair()
        self._bell.setblocking(False)
        self._ringer.setblocking(False)
        self._selector.register(self._bell, selectors.EVENT_READ)
        self._posted = queue.SimpleQueue()  # connections, finished tickets, answers
        self._rung = False
        # Each entry's ticket: (job, connection, request id) until it is
        # answered. The timers hold tickets, not jobs, so that an answered
        # entry's body is let go at once, not at its deadline.
        self._waiting = {}
        self._timers = []  # heap of (when, ticket, the answer it gets then)
        self._tickets = itertools.count()
        self._metrics_asked = {}  # connection: request id, while a read is under way
        self._thread = threading.Thread(target=self._run, name="tim-audit desk", daemon=True)
        self._thread.start()

    def attach(self, sock):
        """Answer the requests on ``sock`` until the worker is gone."""
        self._post(_Connection(sock))

    def close(self):
        """Stop answering and close every connection: for tests."""
        self._post(None)
        self._thread.join()

    def _post(self, item):
        """Hand ``item`` to the desk's thread, from any thread, with at
        most one wake-up waiting for however many items."""
        self._posted.put(item)
        if not self._rung:
            self._rung = True
            # Never raises: the writer's thread calls this, and must go on.
            # BlockingIOError: wake-ups are waiting already; any other
            # OSError: the desk is closed.
            with contextlib.suppress(OSError):
                self._ringer.send(b"\0")

    def _run(self):
        while True:
            try:
                if not self._turn():
                    break
            except Exception:  # a bug here must not leave every worker unanswered
                logger.exception("the writer's desk failed; it goes on")
                # What was posted waits for the next turn, which must come
                # even if nothing else rings; and a failure that repeats
                # must not spin.
                self._rung = False
                self._post(_NOTHING)
                time.sleep(0.01)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()
        self._selector.close()
        self._ringer.close()

    def _turn(self):
        """Wait for a frame, a posted item or the next deadline, and act on
        each. False once close() asked the desk to stop."""
        timeout = None
        if self._timers:
            timeout = max(0.0, self._timers[0][0] - time.monotonic())
        for key, events in self._selector.select(timeout):
            connection = key.data
            if connection is None:
                with contextlib.suppress(BlockingIOError):
                    while self._bell.recv(4096):
                        pass
                continue
            if events & selectors.EVENT_READ:
                self._read(connection)
            if events & selectors.EVENT_WRITE and connection.sock.fileno() != -1:
                self._flush(connection)
        if not self._take_posted():
            return False
        self._expire()
        return True

    def _take_posted(self):
        """Attach new connections, send finished jobs' answers. False once
        close() asked the desk to stop."""
        self._rung = False
        while True:
            try:
                item = self._posted.get_nowait()
            except queue.Empty:
                return True
            if item is None:
                return False
            try:
                self._take(item)
            except Exception:
                logger.exception("the writer's desk failed on a %s", type(item).__name__)
                if isinstance(item, _Connection):
                    # Unanswered, its worker would wait on it for ever:
                    # closed, the worker stops and is started again.
                    item.sock.close()

    def _take(self, item):
        if isinstance(item, _Connection):
            item.sock.setblocking(False)
            self._selector.register(item.sock, selectors.EVENT_READ, item)
        elif isinstance(item, int):  # the ticket of a finished job
            if (waiting := self._waiting.pop(item, None)) is not None:
                job, *asked = waiting
                self._reply(*asked, *_answer(job))
        elif isinstance(item, _Metrics):
            self._answer_metrics(item)

    def _read(self, connection):
        if not connection.read_ready():
            self._close(connection)
            return
        try:
            while connection.sock.fileno() != -1 and (frame := connection.take(self.limit)):
                self._ask(connection, *frame)
        except (FrameTooLarge, OutOfStep) as exc:
            logger.error("closed a connection from an ingest worker: %s", exc)
            self._close(connection)
        except Exception:
            logger.exception("closed a connection from an ingest worker after an error")
            self._close(connection)

    def _ask(self, connection, request_id, kind, payload):
        """Answer a request now, or once the writer or the clock does."""
        if kind == _STATE:
            state = {"stalled": self.log.stalled(), "failure": self.log.failure}
            self._send(connection, request_id, _ANSWER, json.dumps(state).encode())
            return
        if kind == _METRICS:
            self._ask_metrics(connection, request_id)
            return
        if connection.in_flight >= _IN_FLIGHT:
            self._expire()  # an answer due may not have gone yet
            if connection.in_flight >= _IN_FLIGHT:
                raise OutOfStep(f"an entry came with {connection.in_flight} unanswered before it")
        try:
            entry, started = _decode(kind, payload)
        except Exception as exc:
            logger.exception("could not read an entry from a worker")
            self._send(connection, request_id, _FAILED, str(exc).encode())
            return
        if not _STARTED_WITHIN[0] <= started - time.monotonic() <= _STARTED_WITHIN[1]:
            message = f"not stored: a request that started at {started!r}, not near now"
            logger.error("refused an entry from an ingest worker, %s", message)
            self._send(connection, request_id, _UNAVAILABLE, message.encode())
            return
        ticket = next(self._tickets)
        try:
            job = self.log.submit(entry, started, lambda job: self._post(ticket))
        except StorageUnavailable as exc:
            self._send(connection, request_id, _UNAVAILABLE, str(exc).encode())
            return
        except Exception as exc:
            logger.exception("the writer failed on a request from a worker")
            self._send(connection, request_id, _FAILED, str(exc).encode())
            return
        self._waiting[ticket] = (job, connection, request_id)
        connection.in_flight += 1
        heapq.heappush(self._timers, (job.deadline, ticket, None))

    def _expire(self):
        """At a job's deadline, cancel it if no transaction holds it (not
        stored); if one does, wait for it until ANSWER_BOUND (may be)."""
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, ticket, answer = heapq.heappop(self._timers)
            if ticket not in self._waiting:
                continue  # answered
            job, *asked = self._waiting[ticket]
            if job.finished:
                continue  # its answer is posted
            if answer is not None:
                del self._waiting[ticket]
                self._reply(*asked, *answer)
            elif self.log.give_up(job):
                del self._waiting[ticket]
                self._reply(*asked, _UNAVAILABLE, TIMED_OUT.encode())
            else:
                uncertain = b"the database did not confirm the commit in time"
                heapq.heappush(
                    self._timers, (job.started + ANSWER_BOUND, ticket, (_UNCERTAIN, uncertain))
                )

    def _ask_metrics(self, connection, request_id):
        """Read the metrics on a thread of its own, so that a slow read
        holds up no entry, and one at a time: every request that comes
        meanwhile gets that read's answer, so that scrapes of a hung disk do
        not pile up threads. A connection's later request takes the place
        of its earlier one, whose worker has moved on."""
        reading = bool(self._metrics_asked)
        self._metrics_asked[connection] = request_id
        if reading:
            return
        try:
            threading.Thread(target=self._measure, name="tim-audit metrics", daemon=True).start()
        except RuntimeError as exc:  # no thread to be had now
            self._answer_metrics(_Metrics(_FAILED, str(exc).encode()))

    def _measure(self):
        try:
            answer = _Metrics(_ANSWER, self.metrics())
        except Exception as exc:
            logger.exception("the writer has no metrics for a worker")
            answer = _Metrics(_FAILED, str(exc).encode())
        self._post(answer)

    def _answer_metrics(self, answer):
        asked, self._metrics_asked = self._metrics_asked, {}
        for connection, request_id in asked.items():
            self._send(connection, request_id, *answer)

    def _reply(self, connection, request_id, kind, payload):
        """Send the answer to one of ``connection``'s entries."""
        connection.in_flight -= 1
        self._send(connection, request_id, kind, payload)

    def _send(self, connection, request_id, kind, payload):
        """Send an answer without waiting: what the socket does not take
        now is sent when it can (_flush)."""
        if connection.sock.fileno() == -1:
            return  # the worker is gone; its requests died with it
        frame = _frame(request_id, kind, payload)
        if connection.out:
            connection.out += frame
        else:
            try:
                sent = connection.sock.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._close(connection)
                return
            if sent == len(frame):
                return
            connection.out += frame[sent:]
            self._selector.modify(
                connection.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, connection
            )
        if len(connection.out) > self.limit:
            logger.error("closed a connection from an ingest worker that reads no answers")
            self._close(connection)

    def _flush(self, connection):
        try:
            sent = connection.sock.send(connection.out)
        except BlockingIOError:
            return
        except OSError:
            self._close(connection)
            return
        del connection.out[:sent]
        if not connection.out:
            self._selector.modify(connection.sock, selectors.EVENT_READ, connection)

    def _close(self, connection):
        if connection.sock.fileno() != -1:
            self._selector.unregister(connection.sock)
            connection.sock.close()


def _answer(job):
    """The answer to a finished job: what AuditLog.append returns or
    raises, as a frame's kind and payload."""
    if job.error is None:
        receipt = job.receipt
        return _ANSWER, json.dumps([receipt.outcome, receipt.id, receipt.hash]).encode()
    if isinstance(job.error, StorageUnavailable):
        return _UNAVAILABLE, str(job.error).encode()
    if isinstance(job.error, StorageUncertain):
        return _UNCERTAIN, str(job.error).encode()
    logger.error("the writer failed on a request from a worker", exc_info=job.error)
    return _FAILED, str(job.error).encode()


def pair():
    """A connected pair: the writer's end and a worker's (serve passes it
    to the worker with pass_fds, which makes it inheritable there)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
