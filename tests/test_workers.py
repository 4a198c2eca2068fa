"""INGEST_PROCESSES > 1: ingest workers on one socket, the serve process
their writer. A worker or the writer killed with callbacks in flight: every
200 is in the log, every 503 is not, and 200s resume. Real processes, real
sockets."""

import contextlib
import dataclasses
import http.client
import itertools
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from conftest import event, rejection
from tencent import group_body
from test_faults import (
    OK,
    ROOT,
    free_port,
    hang_first_commit,
    hold_lock,
    post,
    server_env,
    stored_group_ids,
    verify,
)
from test_serve import answering, children, get, serve_once
from tim_audit import StartupError, config, create_ingest_app, handoff, serve
from tim_audit.log.writer import StorageUncertain, StorageUnavailable


@pytest.mark.parametrize("value", [0, "2", 1.5])
def test_ingest_processes_must_be_a_whole_number_of_at_least_one(value):
    with pytest.raises(StartupError) as caught:
        create_ingest_app({"INGEST_PROCESSES": value})
    assert str(caught.value) == (
        "tim-audit cannot start: INGEST_PROCESSES must be a whole number of at least 1,"
        f" not {value!r}"
    )


def test_ingest_processes_is_one_a_usable_core_unless_set():
    assert create_ingest_app().config["INGEST_PROCESSES"] == config.usable_cores()
    assert create_ingest_app({"INGEST_PROCESSES": 1}).config["INGEST_PROCESSES"] == 1


@pytest.mark.parametrize(
    ("quotas", "cores"),
    [
        ({}, "affinity"),  # no cpu.max: the root cgroup, or no cpu controller
        ({"system.slice/tim-audit.service": "max 100000"}, "affinity"),
        ({"system.slice/tim-audit.service": "50000 100000"}, 1),  # CPUQuota=50%
        ({"system.slice": "100000 100000", "system.slice/tim-audit.service": "max 100000"}, 1),
        ({"system.slice/tim-audit.service": "not a quota"}, "affinity"),
        ({"system.slice/tim-audit.service": "100000 0"}, "affinity"),
    ],
)
def test_usable_cores_are_the_affinitys_under_the_tightest_cgroup_quota(tmp_path, quotas, cores):
    (tmp_path / "cgroup").write_text("0::/system.slice/tim-audit.service\n")
    root = tmp_path / "sys"
    (root / "system.slice/tim-audit.service").mkdir(parents=True)
    for group, quota in quotas.items():
        (root / group / "cpu.max").write_text(quota + "\n")
    expected = len(os.sched_getaffinity(0)) if cores == "affinity" else cores
    assert config.usable_cores(tmp_path / "cgroup", root) == expected


@pytest.mark.parametrize(
    "lines",
    [
        b"4:memory:/a\n1:cpu:/\n",  # cgroup v1
        b"0::/../outside\n",  # a cgroup outside this namespace's root
        b"0::/caf\xe9\n",  # not UTF-8
    ],
)
def test_usable_cores_without_a_cgroup_v2_of_ours_are_the_affinitys(tmp_path, lines):
    (tmp_path / "cgroup").write_bytes(lines)
    (tmp_path / "sys").mkdir()
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # beside the root: never read
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "cpu.max").write_text("50000 100000\n")
    cores = config.usable_cores(tmp_path / "cgroup", tmp_path / "sys")
    assert cores == len(os.sched_getaffinity(0))


# --- the hand-off, in one process ------------------------------------------------


class Stop:
    """A Remote's stop, counted here instead of signalling this process."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1


@pytest.fixture
def stop():
    return Stop()


@pytest.fixture
def desk(app, log):
    """The writer's side of the hand-off, for the app's own log."""
    desk = handoff.Desk(log, serve.ingest_body_limit(app.config))
    yield desk
    desk.close()


@pytest.fixture
def remote(desk, stop):
    """A worker's log, answered by the app's own writer through a Desk."""
    own, theirs = handoff.pair()
    desk.attach(own)
    yield handoff.Remote([theirs], stop=stop)
    close(theirs)
    assert stop.calls == 0


def close(sock):
    """Close a socket a thread may be reading: shut down first, which ends
    the read."""
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def test_an_entry_crosses_to_the_writer_as_it_was(remote, log, rows):
    odd = event(1, name="nul\0 and 周末 🏸", members=("a", "b\u00e9"), user_data="[1]")
    refused = dataclasses.replace(rejection(1), raw=None, content_length=None)
    assert remote.append(odd, time.monotonic()).outcome == "stored"
    assert remote.append(odd).outcome == "repeat"
    assert remote.append(refused).outcome == "quarantined"
    assert remote.append(rejection(2)).outcome == "quarantined"
    assert rows("SELECT name, member_count, raw FROM event") == [(odd.name, 2, odd.raw)]
    assert rows("SELECT raw FROM quarantine ORDER BY id") == [(None,), (rejection(2).raw,)]
    remote.open()
    assert (remote.stalled(), remote.failure) == (None, None)


def test_an_entry_the_writer_fails_on_is_an_error_and_the_next_one_is_stored(remote, log):
    with pytest.raises(RuntimeError, match="the writer failed on this entry"):
        remote.append(event(1, members=None))  # not something a worker would send
    assert remote.append(event(2)).outcome == "stored"
    assert remote.stalled() is None


def test_request_ids_wrap_at_32_bits_and_appends_go_on(remote, rows):
    remote._ids = itertools.count(2**32 - 2)
    for number in range(4):  # ids 2**32 - 2, 2**32 - 1, then 0 and 1
        assert remote.append(event(number)).outcome == "stored"
    assert len(rows("SELECT id FROM event")) == 4


def test_an_entry_whose_time_is_spent_is_not_sent_and_the_connection_stays(remote, rows):
    with pytest.raises(StorageUnavailable, match="no time was left"):
        remote.append(event(1), time.monotonic() - 1.5)
    assert rows("SELECT id FROM event") == []
    # Never sent: the writer has not seen it, so it is stored, not a repeat.
    assert remote.append(event(1)).outcome == "stored"


def test_a_writer_that_is_gone_before_the_entry_is_sent_means_not_stored_and_the_worker_stops(
    stop, caplog
):
    own, theirs = handoff.pair()
    remote = handoff.Remote([theirs], stop=stop)
    close(own)
    time.sleep(0.1)  # the worker sees the end of the connection
    with pytest.raises(StorageUnavailable):
        remote.append(event(1))
    assert stop.calls == 1
    assert remote.stopping
    with pytest.raises(StorageUnavailable):
        remote.open()
    with pytest.raises(StorageUnavailable):
        remote.append(event(2))
    assert stop.calls == 1
    assert [r.levelname for r in caplog.records if r.name == "tim_audit.handoff"] == ["ERROR"]


def test_a_writer_gone_after_the_entry_was_sent_means_it_may_be_stored_and_the_worker_stops(
    stop,
):
    own, theirs = handoff.pair()
    remote = handoff.Remote([theirs], stop=stop)

    def take_one_and_die():
        own.recv(1)
        close(own)

    threading.Thread(target=take_one_and_die).start()
    with pytest.raises(StorageUncertain):
        remote.append(event(1))
    assert stop.calls == 1
    theirs.close()


def test_a_writer_that_does_not_answer_in_time_means_it_may_be_stored(stop):
    own, theirs = handoff.pair()
    remote = handoff.Remote([theirs], stop=stop)
    started = time.monotonic()
    with pytest.raises(StorageUncertain):
        remote.append(event(1), started - 1.3)
    assert time.monotonic() - started < 0.3
    assert stop.calls == 0  # the connection is still in step
    close(own)
    theirs.close()


def test_an_entry_the_writer_cannot_take_in_time_is_not_stored_and_the_worker_stops(stop, caplog):
    own, theirs = handoff.pair()  # a writer that never reads
    remote = handoff.Remote([theirs], stop=stop)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        remote.append(event(1, raw=b"x" * 8_000_000), started - 1.3)
    assert time.monotonic() - started < 0.3
    assert theirs.fileno() == -1  # what it sent of the frame is never completed
    # The worker stops, to be started again with new connections, rather
    # than go on with fewer: once none were left it answered 503 for ever.
    assert stop.calls == 1
    [line] = [r.getMessage() for r in caplog.records if r.name == "tim_audit.handoff"]
    assert "stopping it" in line
    with pytest.raises(StorageUnavailable):
        remote.append(event(2))
    own.close()


def test_a_lost_connection_stops_the_worker_process_by_default():
    own, theirs = handoff.pair()
    remote = handoff.Remote([theirs])
    close(own)
    signalled = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: signalled.append(signum))
    try:
        with pytest.raises(StorageUnavailable):
            remote.append(event(1))
        deadline = time.monotonic() + 5
        while not signalled:
            assert time.monotonic() < deadline, "no SIGTERM came"
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert signalled == [signal.SIGTERM]


def test_the_writer_closes_a_connection_whose_frame_claims_too_much(log, stop, caplog):
    desk = handoff.Desk(log, max_body=1000)
    own, theirs = handoff.pair()
    desk.attach(own)
    remote = handoff.Remote([theirs], stop=stop)
    # A body the ingest server takes still crosses.
    assert remote.append(event(1, raw=b"x" * 1000)).outcome == "stored"
    theirs.sendall(handoff._HEAD.pack(handoff.frame_limit(1000) + 1, 7, handoff._EVENT))
    theirs.settimeout(5)
    assert theirs.recv(1) == b""  # closed, without reading what it claims
    [line] = [r.getMessage() for r in caplog.records if r.name == "tim_audit.handoff"]
    assert "over the limit" in line
    theirs.close()
    desk.close()


def test_an_error_reading_a_connection_ends_only_that_connection(desk, stop, caplog, monkeypatch):
    take = handoff._Connection.take

    def fails_once(connection, limit=None):
        if not getattr(fails_once, "failed", False):
            fails_once.failed = True
            raise RuntimeError("a reader's bug")
        return take(connection, limit)

    monkeypatch.setattr(handoff._Connection, "take", fails_once)
    broken, first = handoff.pair()
    desk.attach(broken)
    first.sendall(handoff._frame(1, handoff._STATE, b""))
    first.settimeout(5)
    assert first.recv(1) == b""  # that connection ended
    own, theirs = handoff.pair()
    desk.attach(own)
    assert handoff.Remote([theirs], stop=stop).append(event(1)).outcome == "stored"
    [record] = [r for r in caplog.records if r.name == "tim_audit.handoff"]
    assert record.exc_info is not None
    close(theirs)
    first.close()


def test_the_desk_keeps_nothing_of_an_answered_entry(desk, remote):
    """Its deadline timers outlive the answer by up to 1.45 s: they hold a
    ticket, not the entry, so the bodies of a busy second are not kept."""
    entry = event(1, raw=b"x" * 100_000)
    assert remote.append(entry).outcome == "stored"
    assert desk._waiting == {}
    assert [type(value) for timer in desk._timers for value in timer] == [float, int, type(None)]


def test_an_entry_locked_out_is_answered_not_stored_and_a_retry_is_stored(app, remote, rows):
    holder = hold_lock(app.config["DATABASE"])
    started = time.monotonic()
    try:
        with pytest.raises(StorageUnavailable):
            remote.append(event(1), started)
        assert time.monotonic() - started < 1.2
    finally:
        holder.communicate("done\n", timeout=10)
    assert rows("SELECT id FROM event") == []
    assert remote.append(event(1)).outcome == "stored"


def test_an_entry_queued_behind_a_hung_commit_is_given_up_at_its_deadline(
    log, desk, remote, stop, rows
):
    """The desk keeps each entry's deadline, as AuditLog.append does: one
    still waiting for the writer at its deadline is answered not stored
    then, and never is, though the writer takes the queue afterwards."""
    hang_first_commit(log, 2)
    errors = []

    def first_append():
        try:
            remote.append(event(1))
        except StorageUncertain as exc:
            errors.append(exc)

    first = threading.Thread(target=first_append)
    first.start()
    time.sleep(0.1)
    own, theirs = handoff.pair()
    desk.attach(own)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="timed out waiting for the database"):
        handoff.Remote([theirs], stop=stop).append(event(2), started)
    assert 1.0 <= time.monotonic() - started < 1.1
    first.join()
    assert len(errors) == 1  # sealed into the hung transaction: may be stored
    time.sleep(0.8)
    assert rows("SELECT group_id FROM event") == [(event(1).group_id,)]
    close(theirs)


def test_an_entry_whose_commit_hangs_is_answered_may_be_stored_at_the_bound(log, remote, rows):
    hang_first_commit(log, 2)
    started = time.monotonic()
    with pytest.raises(StorageUncertain, match="did not confirm the commit in time"):
        remote.append(event(1), started)
    assert 1.45 <= time.monotonic() - started < 1.5
    time.sleep(0.8)
    assert rows("SELECT group_id FROM event") == [(event(1).group_id,)]
    assert remote.append(event(1)).outcome == "repeat"


def test_the_desk_answers_other_connections_while_one_entry_waits_for_its_commit(
    log, desk, remote, stop
):
    hang_first_commit(log, 1)
    receipts = []
    waiting = threading.Thread(target=lambda: receipts.append(remote.append(event(1))))
    waiting.start()
    time.sleep(0.1)
    own, theirs = handoff.pair()
    desk.attach(own)
    other = handoff.Remote([theirs], stop=stop)
    started = time.monotonic()
    assert other.stalled() is None
    assert time.monotonic() - started < 0.1
    waiting.join()
    assert [receipt.outcome for receipt in receipts] == ["stored"]
    close(theirs)


def frames_within(sock, seconds):
    """Every frame that arrives on ``sock`` within ``seconds``, with when
    (time.monotonic())."""
    connection, frames = handoff._Connection(sock), []
    began = time.monotonic()
    while True:
        try:
            frame = connection.receive(deadline=began + seconds)
        except TimeoutError:
            return frames
        if frame is None:
            return frames
        frames.append((time.monotonic(), *frame))


def entry_frame(request_id, entry, started):
    return handoff._frame(request_id, *handoff._encode(entry, started))


def test_each_entry_is_answered_once_whatever_the_writer_does_after(log, desk, rows):
    """One entry sealed into a commit that hangs 2 s, one queued behind it:
    each gets one answer (may be stored at 1.45 s, not stored at 1.0 s),
    and nothing more when the writer finishes the one and drops the other."""
    hang_first_commit(log, 2)
    (first, a), (second, b) = handoff.pair(), handoff.pair()
    desk.attach(first)
    desk.attach(second)
    started = time.monotonic()
    a.sendall(entry_frame(1, event(1), started))
    time.sleep(0.1)
    b.sendall(entry_frame(2, event(2), started + 0.1))
    answers = {}
    readers = [
        threading.Thread(target=lambda s=sock: answers.update({s: frames_within(s, 3.5)}))
        for sock in (a, b)
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    [(at_a, id_a, kind_a, _)] = answers[a]
    [(at_b, id_b, kind_b, _)] = answers[b]
    assert (id_a, kind_a) == (1, handoff._UNCERTAIN) and 1.45 <= at_a - started < 1.5
    assert (id_b, kind_b) == (2, handoff._UNAVAILABLE) and 1.1 <= at_b - started < 1.2
    assert rows("SELECT group_id FROM event") == [(event(1).group_id,)]
    close(a)
    close(b)


@pytest.mark.parametrize("started", [float("nan"), float("inf"), 10.0**12, -(10.0**12)])
def test_a_start_time_from_nowhere_is_refused_and_the_desk_goes_on(desk, remote, started, rows):
    own, theirs = handoff.pair()
    desk.attach(own)
    theirs.sendall(entry_frame(9, event(1), started))
    [(_, request_id, kind, message)] = frames_within(theirs, 0.5)
    assert (request_id, kind) == (9, handoff._UNAVAILABLE)
    assert message == f"not stored: a request that started at {started!r}, not near now".encode()
    assert remote.append(event(2)).outcome == "stored"
    assert rows("SELECT group_id FROM event") == [(event(2).group_id,)]
    close(theirs)


def test_a_worker_that_sends_entries_ahead_of_their_answers_is_cut_off(log, desk, caplog):
    """A worker waits for each answer, so a third entry with two waiting
    means a worker out of step: its bodies would pile up in the writer's
    queue. Its connection is closed, and the worker restarts."""
    hang_first_commit(log, 1)
    own, theirs = handoff.pair()
    desk.attach(own)
    now = time.monotonic()
    theirs.sendall(b"".join(entry_frame(n, event(n), now) for n in (1, 2, 3, 4)))
    assert frames_within(theirs, 3) == []  # closed, unanswered
    [line] = [r.getMessage() for r in caplog.records if r.name == "tim_audit.handoff"]
    assert line == (
        "closed a connection from an ingest worker: an entry came with 3 unanswered before it"
    )
    theirs.close()


def test_a_connection_the_desk_cannot_watch_is_closed_so_its_worker_restarts(
    desk, remote, monkeypatch, caplog
):
    assert remote.stalled() is None  # its connection is watched already
    register = desk._selector.register

    def fails_once(*args):
        monkeypatch.setattr(desk._selector, "register", register)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(desk._selector, "register", fails_once)
    own, theirs = handoff.pair()
    desk.attach(own)
    theirs.settimeout(5)
    assert theirs.recv(1) == b""  # the worker sees its end, and stops
    assert remote.append(event(1)).outcome == "stored"  # the others go on
    [record] = [r for r in caplog.records if r.name == "tim_audit.handoff"]
    assert record.getMessage() == "the writer's desk failed on a _Connection"
    theirs.close()


def test_requests_for_metrics_during_a_read_share_that_read(log):
    """Scrapes of a hung disk do not pile up threads: one read at a time,
    and whoever asks while it is under way gets its answer."""
    reads = []

    def slow_metrics():
        reads.append(time.monotonic())
        time.sleep(0.5)
        return b"# metrics\n"

    desk = handoff.Desk(log, max_body=1000, metrics=slow_metrics)
    (one, a), (other, b) = handoff.pair(), handoff.pair()
    desk.attach(one)
    desk.attach(other)
    a.sendall(handoff._frame(1, handoff._METRICS, b""))
    time.sleep(0.2)
    b.sendall(handoff._frame(2, handoff._METRICS, b""))
    [(_, id_a, kind_a, text_a)] = frames_within(a, 2)
    [(_, id_b, kind_b, text_b)] = frames_within(b, 0.5)
    assert (id_a, kind_a, text_a) == (1, handoff._ANSWER, b"# metrics\n")
    assert (id_b, kind_b, text_b) == (2, handoff._ANSWER, b"# metrics\n")
    assert len(reads) == 1
    close(a)
    close(b)
    desk.close()


def test_metrics_that_find_no_thread_are_a_failure_and_the_next_request_reads_them(
    log, monkeypatch
):
    start = threading.Thread.start

    def fails_once(thread):
        monkeypatch.setattr(threading.Thread, "start", start)
        raise RuntimeError("can't start new thread")

    desk = handoff.Desk(log, max_body=1000, metrics=lambda: b"# metrics\n")
    own, theirs = handoff.pair()
    desk.attach(own)
    monkeypatch.setattr(threading.Thread, "start", fails_once)
    theirs.sendall(handoff._frame(1, handoff._METRICS, b""))
    assert [frame[1:] for frame in frames_within(theirs, 0.5)] == [
        (1, handoff._FAILED, b"can't start new thread")
    ]
    theirs.sendall(handoff._frame(2, handoff._METRICS, b""))
    assert [frame[1:] for frame in frames_within(theirs, 0.5)] == [
        (2, handoff._ANSWER, b"# metrics\n")
    ]
    close(theirs)
    desk.close()


def test_the_writer_closes_a_connection_that_reads_no_answers(log, stop, caplog):
    """A worker out of step that sends and never reads: its answers are not
    kept past the frame limit (1 MiB here)."""
    desk = handoff.Desk(log, max_body=0)
    own, theirs = handoff.pair()
    desk.attach(own)
    requests = handoff._frame(1, handoff._STATE, b"") * 80_000  # 3.5 MB of answers

    def send():
        with contextlib.suppress(OSError):  # closed while sending
            theirs.sendall(requests)

    sender = threading.Thread(target=send)
    sender.start()
    sender.join(10)
    theirs.settimeout(5)
    answered = 0
    while chunk := theirs.recv(65536):
        answered += len(chunk)
    assert answered < 44 * 80_000
    [line] = [r.getMessage() for r in caplog.records if r.name == "tim_audit.handoff"]
    assert line == "closed a connection from an ingest worker that reads no answers"
    theirs.close()
    desk.close()


# --- the workers, in processes of their own -----------------------------------------


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def workers(tmp_path):
    """Start ``tim-audit serve --only ingest`` with two workers; returns a
    function that (re)starts it: (process, port, environment)."""
    processes = []
    port = free_port()
    env = {
        **server_env(tmp_path / "audit.sqlite3", tmp_path),
        "TIM_AUDIT_INGEST_LISTEN": f"127.0.0.1:{port}",
        "TIM_AUDIT_INGEST_PROCESSES": "2",
        "PYTHONPATH": str(ROOT),
    }

    def start(**settings):
        with open(tmp_path / "serve.log", "ab") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "tim_audit", "serve", "--only", "ingest"],
                cwd=tmp_path,
                env={**env, **{f"TIM_AUDIT_{key}": value for key, value in settings.items()}},
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        processes.append(process)
        deadline = time.monotonic() + 30
        while not (answering(port) and len(children(process.pid)) == 2):
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        return process, port, env

    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()
            process.wait(10)


class Load:
    """Clients posting distinct callbacks on keep-alive connections, each
    opening a new connection when its own breaks; what each answer was."""

    def __init__(self, port, clients=6):
        self.port = port
        self.answers = {}  # GroupId -> (status, body)
        self.bodies = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._numbers = iter(range(10**6))
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self):
        conn, group_id = None, None
        while not self._stop.is_set():
            if group_id is None:
                with self._lock:
                    group_id = f"@TGS#load{next(self._numbers):05d}"
                    self.bodies[group_id] = group_body(GroupId=group_id)
            conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            answer = post(self.port, self.bodies[group_id], conn)
            if answer is None:  # no answer: send it again, as Tencent would
                conn.close()
                conn = None
                time.sleep(0.01)
                continue
            with self._lock:
                self.answers[group_id] = answer
            group_id = None
        if conn is not None:
            conn.close()

    def acknowledged(self):
        with self._lock:
            return {g for g, answer in self.answers.items() if answer == (200, OK)}

    def with_status(self, status):
        with self._lock:
            return {g for g, answer in self.answers.items() if answer[0] == status}

    def wait_for(self, count):
        deadline = time.monotonic() + 30
        while len(self.acknowledged()) < count:
            assert time.monotonic() < deadline, "callbacks were not acknowledged"
            time.sleep(0.005)

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join()


def test_workers_share_the_callbacks_and_each_is_in_the_log_once(workers, tmp_path):
    process, port, _ = workers()
    assert len(children(process.pid)) == 2
    for n in range(20):
        assert post(port, group_body(GroupId=f"@TGS#worker{n}")) == (200, OK)
    assert post(port, group_body(GroupId="@TGS#worker3")) == (200, OK)  # a repeat
    assert stored_group_ids(tmp_path / "audit.sqlite3") == {f"@TGS#worker{n}": 1 for n in range(20)}
    status, body = get(port, "/healthz")
    assert (status, json.loads(body)["events"]) == (200, 20)


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "SO_REUSEPORT"])
def test_an_ingest_port_in_use_stops_serve_with_one_line(tmp_path, reuse_port):
    """Even one held with SO_REUSEPORT, which the workers' sockets could
    join, splitting Tencent's callbacks between two logs."""
    with socket.create_server(("127.0.0.1", 0), reuse_port=reuse_port) as taken:
        port = taken.getsockname()[1]
        result = serve_once(tmp_path, INGEST_LISTEN=f"127.0.0.1:{port}", INGEST_PROCESSES="2")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"tim-audit cannot start: cannot listen on INGEST_LISTEN 127.0.0.1:{port}: Address already in use"
    ]


def test_a_callback_sent_while_the_workers_start_waits_for_them(tmp_path):
    """serve listens before its workers start: the first connection is
    answered, not refused, however long they take."""
    port = free_port()
    env = {
        **server_env(tmp_path / "audit.sqlite3", tmp_path),
        "TIM_AUDIT_INGEST_LISTEN": f"127.0.0.1:{port}",
        "TIM_AUDIT_INGEST_PROCESSES": "2",
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "serve.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "tim_audit", "serve", "--only", "ingest"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 30
        while "writing for 2 ingest workers" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "serve did not start its workers"
            time.sleep(0.005)
        assert post(port, group_body(GroupId="@TGS#early")) == (200, OK)
    finally:
        process.terminate()
        process.wait(10)
    assert stored_group_ids(tmp_path / "audit.sqlite3") == {"@TGS#early": 1}


def test_metrics_count_every_workers_callbacks_whichever_answers(workers):
    process, port, _ = workers(METRICS="true")
    for n in range(12):
        assert post(port, group_body(GroupId=f"@TGS#counted{n}")) == (200, OK)
    assert post(port, b"{oops")[0] == 400
    pages = {get(port, "/metrics")[1].decode() for _ in range(6)}
    for page in pages:
        assert 'tim_audit_callbacks_total{outcome="stored"} 12.0' in page.splitlines()
        assert 'tim_audit_callbacks_total{outcome="not_json"} 1.0' in page.splitlines()
        assert "tim_audit_events 12.0" in page.splitlines()


def test_a_worker_killed_mid_request_is_started_again_and_nothing_answered_is_lost(
    workers, tmp_path
):
    process, port, env = workers()
    load = Load(port)
    try:
        load.wait_for(30)
        killed = children(process.pid)[0]
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while killed in children(process.pid) or len(children(process.pid)) < 2:
            assert time.monotonic() < deadline, "the worker was not started again"
            time.sleep(0.05)
        resumed = len(load.acknowledged())
        load.wait_for(resumed + 30)
    finally:
        load.stop()
    assert process.poll() is None
    stored = stored_group_ids(tmp_path / "audit.sqlite3")
    assert load.acknowledged() <= set(stored)
    assert set(stored.values()) == {1}
    assert not load.with_status(503) & set(stored)
    # Whatever a killed worker did not answer, Tencent's retry stores once.
    for group_id in sorted(load.bodies):
        assert post(port, load.bodies[group_id]) == (200, OK)
    assert stored_group_ids(tmp_path / "audit.sqlite3") == dict.fromkeys(load.bodies, 1)
    assert verify(env)[0] == 0


def test_callbacks_go_to_the_live_worker_while_a_dead_one_is_started_again(workers):
    """The dead worker's socket died with it: a new connection meanwhile
    does not wait for its replacement."""
    process, port, _ = workers()
    killed = children(process.pid)[0]
    os.kill(killed, signal.SIGKILL)
    while killed in children(process.pid):  # reaped: its socket is closed
        time.sleep(0.005)
    for n in range(20):
        began = time.monotonic()
        assert post(port, group_body(GroupId=f"@TGS#meanwhile{n}")) == (200, OK)
        assert time.monotonic() - began < 0.5
    assert killed not in children(process.pid)


def test_the_writer_killed_with_callbacks_in_flight_loses_nothing_answered(workers, tmp_path):
    process, port, env = workers()
    database = tmp_path / "audit.sqlite3"
    pids = children(process.pid)
    load = Load(port)
    try:
        load.wait_for(40)
        process.send_signal(signal.SIGKILL)
        process.wait()
        # The workers stop with their writer, as the review server does.
        deadline = time.monotonic() + 10
        while not all(gone(pid) for pid in pids):
            assert time.monotonic() < deadline, "a worker outlived its writer"
            time.sleep(0.05)
        answered_then = dict(load.answers)
        stored = stored_group_ids(database)
        # The service manager starts it again; the clients get 200s again.
        workers()
        load.wait_for(len(load.acknowledged()) + 20)
    finally:
        load.stop()
    acknowledged = {g for g, a in answered_then.items() if a == (200, OK)}
    unavailable = {g for g, answer in answered_then.items() if answer[0] == 503}
    assert acknowledged <= set(stored)
    assert not unavailable & set(stored)
    assert set(stored_group_ids(database).values()) == {1}
    assert not load.with_status(503) & set(stored_group_ids(database))
    for group_id in sorted(load.bodies):
        assert post(port, load.bodies[group_id]) == (200, OK)
    assert stored_group_ids(database) == dict.fromkeys(load.bodies, 1)
    assert verify(env)[0] == 0


def test_a_database_locked_elsewhere_is_answered_503_by_the_workers_and_nothing_is_stored(
    workers, tmp_path
):
    """The lock held by another process past the callbacks' deadline: each
    worker answers 503 within 1.5 s, as one process would, /healthz says
    the database is not writable, and once the lock is let go the same
    callbacks are stored, once."""
    process, port, _ = workers()
    database = tmp_path / "audit.sqlite3"
    holder = hold_lock(str(database))
    answers = {}
    try:

        def one(n):
            group_id = f"@TGS#locked{n}"
            started = time.monotonic()
            answers[group_id] = (
                post(port, group_body(GroupId=group_id)),
                time.monotonic() - started,
            )

        threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        status, health = get(port, "/healthz")
    finally:
        holder.communicate("done\n", timeout=10)
    assert (status, json.loads(health)["status"]) == (503, "unavailable")
    assert len(answers) == 8
    for (status, answer), seconds in answers.values():
        assert (status, answer["ErrorCode"]) == (503, 60030)
        assert seconds < 1.5
    assert stored_group_ids(database) == {}
    for group_id in sorted(answers):
        assert post(port, group_body(GroupId=group_id)) == (200, OK)
    assert stored_group_ids(database) == dict.fromkeys(answers, 1)


@pytest.mark.parametrize(
    "failure", [OSError(24, "Too many open files"), RuntimeError("can't start new thread")]
)
def test_a_child_that_cannot_be_started_again_is_tried_again(monkeypatch, failure):
    """Out of descriptors or memory for a moment: the watcher keeps trying,
    rather than end and leave the worker dead for good."""
    monkeypatch.setattr(serve, "RESTART_DELAY", 0.01)
    starts = []

    def start(watch):
        starts.append(watch)
        if len(starts) == 2:
            raise failure
        code = "import time; time.sleep(60)" if len(starts) > 2 else ""  # the first exits
        return subprocess.Popen([sys.executable, "-c", code])

    child = serve.Child("a worker", logging.getLogger("test"), start)
    deadline = time.monotonic() + 10
    while len(starts) < 3:
        assert time.monotonic() < deadline, "the child was not started again"
        time.sleep(0.01)
    serve._stop([child])
    assert len(starts) == 3


def test_an_answer_that_trickles_in_is_waited_for_until_the_deadline_only():
    """Each piece of a frame restarts no clock: the deadline holds however
    many pieces come."""
    ours, theirs = handoff.pair()
    stop = threading.Event()

    def trickle():
        theirs.sendall(struct.pack("!IIB", 100, 1, 5))
        while not stop.wait(0.05):
            theirs.sendall(b"x")

    sender = threading.Thread(target=trickle)
    sender.start()
    began = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            handoff._Connection(ours).receive(deadline=began + 0.3)
        assert time.monotonic() - began < 0.45
    finally:
        stop.set()
        sender.join()
        ours.close()
        theirs.close()
