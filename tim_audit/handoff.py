"""The hand-off between ingest workers and the one writer, when
INGEST_PROCESSES > 1.

Each worker process does a callback's HTTP, signature, parsing and
marshmallow work, then sends the validated entry to the writer over a
socketpair the serve process made for it, and waits for the receipt. The
writer is the serve process's own AuditLog: its group commit, its answers
and their deadlines are unchanged, so a worker answers exactly what a
single process would, plus what a lost writer means: an entry that was
never sent is "not stored" (StorageUnavailable), one sent without an answer
may be (StorageUncertain; Tencent's retry is then a repeat).

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
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .log.records import Event, Receipt, Rejection
from .log.writer import ANSWER_BOUND, StorageUncertain, StorageUnavailable

logger = logging.getLogger(__name__)

_HEAD = struct.Struct("!IIB")  # length of what follows the id and kind, request id, kind
_EVENT, _REJECTION, _STATE = 1, 2, 3  # requests
_RECEIPT, _UNAVAILABLE, _UNCERTAIN, _FAILED = 4, 5, 6, 7  # answers
_CLASSES = {_EVENT: Event, _REJECTION: Rejection}
_FIELDS = {kind: [f.name for f in dataclasses.fields(c)][:-1] for kind, c in _CLASSES.items()}
# A worker waits for its answer this much past the writer's own bound: the
# time a receipt takes to cross, on a machine that is busy.
CROSSING = 0.03  # seconds


def _frame(request_id, kind, payload):
    return _HEAD.pack(len(payload), request_id, kind) + payload


def _read(sock):
    """(request id, kind, payload), or None once the other end is gone."""
    head = _exactly(sock, _HEAD.size)
    if head is None:
        return None
    length, request_id, kind = _HEAD.unpack(head)
    payload = _exactly(sock, length)
    return None if payload is None else (request_id, kind, payload)


def _exactly(sock, size):
    data = bytearray()
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return bytes(data)


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


class Remote:
    """What a worker's ingest app has as its log: AuditLog's append, open,
    stalled and failure, answered by the writer."""

    def __init__(self, sock):
        self._sock = sock
        self._lock = threading.Lock()  # guards _pending and _gone
        self._send = threading.Lock()
        self._pending = {}
        self._ids = itertools.count(1)
        self._gone = False
        threading.Thread(target=self._receive, name="tim-audit receipts", daemon=True).start()

    def append(self, entry, started=None):
        started = time.monotonic() if started is None else started
        kind, payload = _encode(entry, started)
        kind, payload = self._ask(kind, payload, started + ANSWER_BOUND + CROSSING)
        if kind == _RECEIPT:
            return Receipt(*json.loads(payload))
        message = payload.decode()
        if kind == _UNAVAILABLE:
            raise StorageUnavailable(message)
        if kind == _UNCERTAIN:
            raise StorageUncertain(message)
        raise RuntimeError(f"the writer failed on this entry: {message}")

    def open(self):
        """Nothing to open here: the writer opened the log before any
        worker started. Refuses, as AuditLog.open does, once it is gone."""
        with self._lock:
            if self._gone:
                raise StorageUnavailable("the writer is not running")

    def stalled(self):
        return self._state()["stalled"]

    @property
    def failure(self):
        return self._state()["failure"]

    def _state(self):
        try:
            _, payload = self._ask(_STATE, b"", time.monotonic() + ANSWER_BOUND)
        except (StorageUnavailable, StorageUncertain) as exc:
            return {"stalled": str(exc), "failure": None}
        return json.loads(payload)

    def _ask(self, kind, payload, deadline):
        """Send a request and wait for its answer until ``deadline``."""
        answer = _Answer()
        with self._lock:
            if self._gone:
                raise StorageUnavailable("the writer is not running")
            request_id = next(self._ids)
            self._pending[request_id] = answer
        try:
            with self._send:
                self._sock.sendall(_frame(request_id, kind, payload))
        except OSError:
            # A frame cut short is never read as an entry: not stored.
            self._lose()
            raise StorageUnavailable("the writer is not running") from None
        if not answer.done.wait(max(0.0, deadline - time.monotonic())):
            with self._lock:
                self._pending.pop(request_id, None)
            raise StorageUncertain("the writer did not answer in time")
        if answer.kind is None:
            raise StorageUncertain("the writer stopped before it answered")
        return answer.kind, answer.payload

    def _receive(self):
        while (frame := _read(self._sock)) is not None:
            request_id, kind, payload = frame
            with self._lock:
                answer = self._pending.pop(request_id, None)
            if answer is not None:
                answer.kind, answer.payload = kind, payload
                answer.done.set()
        self._lose()

    def _lose(self):
        with self._lock:
            self._gone = True
            pending, self._pending = self._pending, {}
        for answer in pending.values():
            answer.done.set()  # kind None: sent, never answered


class _Answer:
    __slots__ = ("done", "kind", "payload")

    def __init__(self):
        self.done = threading.Event()
        self.kind = self.payload = None


class Desk:
    """The writer's side: one reader thread a worker, and a pool with a
    thread for every request the workers can have open at once, each
    waiting in AuditLog.append as a request thread would."""

    def __init__(self, log, threads):
        self.log = log
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tim-audit desk")

    def attach(self, sock):
        """Answer the worker at the other end of ``sock`` until it is gone."""
        threading.Thread(
            target=self._serve, args=(sock,), name="tim-audit desk reader", daemon=True
        ).start()

    def _serve(self, sock):
        send = threading.Lock()
        with sock:
            while (frame := _read(sock)) is not None:
                request_id, kind, payload = frame
                if kind == _STATE:
                    state = {"stalled": self.log.stalled(), "failure": self.log.failure}
                    self._reply(sock, send, request_id, _RECEIPT, json.dumps(state).encode())
                else:
                    self._pool.submit(self._append, sock, send, request_id, kind, payload)

    def _append(self, sock, send, request_id, kind, payload):
        try:
            entry, started = _decode(kind, payload)
            receipt = self.log.append(entry, started)
        except StorageUnavailable as exc:
            answer = _UNAVAILABLE, str(exc).encode()
        except StorageUncertain as exc:
            answer = _UNCERTAIN, str(exc).encode()
        except Exception as exc:
            logger.exception("the writer failed on an entry from a worker")
            answer = _FAILED, str(exc).encode()
        else:
            answer = _RECEIPT, json.dumps(dataclasses.astuple(receipt)).encode()
        self._reply(sock, send, request_id, *answer)

    @staticmethod
    def _reply(sock, send, request_id, kind, payload):
        try:
            with send:
                sock.sendall(_frame(request_id, kind, payload))
        except OSError:
            pass  # the worker is gone; its requests die with it


def pair():
    """A connected pair: the writer's end and a worker's (inheritable) end."""
    desk, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    worker.set_inheritable(True)
    return desk, worker
