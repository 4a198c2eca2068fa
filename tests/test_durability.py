"""Every callback answered OK was on the disk first.

A SIGKILL (test_faults.py) keeps the kernel's page cache, so it cannot tell
synchronous=FULL from OFF; the order of the ingest server's system calls
can. The server runs under strace, and for every callback answered 200 the
trace must show the WAL frames of the transaction holding it written, then
an fsync or fdatasync of the WAL begun after them and finished before the
answer began to be sent. The trace's line order is safe to judge by: a
thread stops at each traced call until strace has printed its entry line,
and strace prints the line where a call returns only once it has.
"""

import dataclasses
import http.client
import json
import os
import pathlib
import re
import signal
import sqlite3
import threading

from conftest import require
from tencent import group_body
from test_faults import OK, free_port, post, server_env, start_server

# Every call that could carry a WAL frame, a sync or an answer: a WAL
# write or an answer through any but pwrite64 and sendto fails the check.
TRACED = "pwrite64,pwritev,write,writev,sendto,sendmsg,recvfrom,fsync,fdatasync"
SYNCS = ("fsync", "fdatasync")
WAL_HEADER, FRAME_HEADER = 32, 24  # bytes (sqlite.org/fileformat.html, "WAL file format")

LINE = re.compile(r"(?P<pid>\d+) +\d\d:\d\d:\d\d\.\d{6} (?P<event>.*)")
NOTE = re.compile(
    r"\+\+\+ (exited with \d+|killed by SIG\w+( \(core dumped\))?) \+\+\+|--- SIG.* ---"
)
UNFINISHED = " <unfinished ...>"
RESUMED = re.compile(r"<\.\.\. (?P<name>\w+) resumed>(?P<rest>.*)")
# After the result, strace may name the error (" EPIPE (Broken pipe)"), give
# a number it has no name for (" (errno 18446744073709551615)", as for a
# call cut off while the process exits), or say it has none.
CALL = re.compile(
    r"(?P<name>\w+)\((?P<args>.*)\) += (?P<ret>-?\d+|\?)"
    r"( E\w+ \(.*\)| \(errno \d+\)| <unavailable>)?"
)
FD = re.compile(r"\d+<(?P<path>[^>]*)>")
DATA = re.compile(r', "(?P<hex>(?:\\x[0-9a-f]{2})*)"(?P<cut>\.\.\.)?')


@dataclasses.dataclass(frozen=True)
class Call:
    """One system call: the lines of the trace where it was entered and
    where it returned, the path behind its file descriptor, the bytes it
    carried and its numeric arguments after them."""

    name: str
    path: str
    data: bytes | None
    cut: bool
    numbers: tuple[str, ...]
    ret: int | None
    start: int
    end: int


def trace_calls(trace):
    """The calls in ``trace`` (strace -f -y -tt -xx), in the order they were
    entered. A line of any other shape fails the test: a check that skipped
    what it cannot read could pass on a trace it never understood."""
    pending, calls = {}, []
    for number, line in enumerate(trace.read_text("ascii").splitlines(), 1):
        match = LINE.fullmatch(line)
        assert match, f"line {number} of the trace is not 'pid time event': {line[:200]}"
        pid, text = match["pid"], match["event"]
        if NOTE.fullmatch(text):
            continue
        resumed = RESUMED.fullmatch(text)
        if resumed:
            name, begun, start = pending.pop(pid, (None, None, None))
            assert name == resumed["name"], f"line {number} resumes a call not begun: {line[:200]}"
            text = begun + resumed["rest"]
        elif text.endswith(UNFINISHED):
            assert pid not in pending, f"line {number}: a second call in one thread: {line[:200]}"
            pending[pid] = (text.partition("(")[0], text.removesuffix(UNFINISHED), number)
            continue
        else:
            start = number
        calls.append(parse_call(text, start, number))
    return sorted(calls, key=lambda call: call.start)


def parse_call(text, start, end):
    call = CALL.fullmatch(text)
    fd = call and FD.match(call["args"])
    assert fd, f"line {end} of the trace is not a call on a file descriptor: {text[:200]}"
    rest = call["args"][fd.end() :]
    data = DATA.match(rest)
    numbers = rest[data.end() if data else 0 :].split(", ")[1:]
    return Call(
        name=call["name"],
        path=decode(fd["path"]).decode(errors="replace"),
        data=decode(data["hex"]) if data else None,
        cut=bool(data and data["cut"]),
        numbers=tuple(numbers),
        ret=None if call["ret"] == "?" else int(call["ret"]),
        start=start,
        end=end,
    )


def decode(text):
    """strace -xx writes every byte of a string or a path as \\xNN; the
    names it makes up (socket:[…], pipe:[…]) are left as they are."""
    if re.fullmatch(r"(\\x[0-9a-f]{2})+", text):
        return bytes.fromhex(text.replace("\\x", ""))
    return text.encode()


@dataclasses.dataclass(eq=False)
class Transaction:
    pages: bytearray = dataclasses.field(default_factory=bytearray)
    end: int = 0  # the line where the write of its commit frame returned


def wal_transactions(calls, wal):
    """The transactions committed to the WAL, in the order written: each
    frame is a header then its page, and a commit frame's header holds the
    database's size after the commit (zero in any other frame)."""
    transactions, current, page_size, commit = [], Transaction(), None, False
    for call in calls:
        if call.path != wal or call.name in SYNCS:
            continue
        assert call.name == "pwrite64" and call.ret == len(call.data) and not call.cut, (
            f"line {call.start}: a write to the WAL the check does not model: {call}"
        )
        size, offset = len(call.data), int(call.numbers[1])
        if (offset, size) == (0, WAL_HEADER):
            page_size = int.from_bytes(call.data[8:12], "big")
            continue
        assert page_size, f"line {call.start}: a WAL frame before the WAL header"
        within = (offset - WAL_HEADER) % (FRAME_HEADER + page_size)
        if (within, size) == (0, FRAME_HEADER):
            commit = call.data[4:8] != bytes(4)
        elif (within, size) == (FRAME_HEADER, page_size):
            current.pages += call.data
            if commit:
                current.end = call.end
                transactions.append(current)
                current = Transaction()
        else:
            raise AssertionError(f"line {call.start}: {size} bytes at {offset} of the WAL")
    return transactions


def callback_answers(calls):
    """{GroupId: (status, line)} for each callback answered: the line where
    its answer began to be sent, the GroupId from the request it answers
    (what the same connection brought in since its last answer)."""
    received, answers = {}, {}
    for call in calls:
        if not call.path.startswith("socket:"):
            continue
        if call.name == "recvfrom":
            if call.ret and call.ret > 0:  # not EAGAIN
                assert not call.cut, f"line {call.end}: a request longer than strace -s"
                received[call.path] = received.get(call.path, b"") + call.data
            continue
        assert call.name == "sendto", f"line {call.start}: an answer sent by {call.name}"
        if not call.data.startswith(b"HTTP/1.1 "):
            continue  # the rest of an answer begun before
        head, _, body = received.pop(call.path).partition(b"\r\n\r\n")
        if head.startswith(b"GET /healthz "):
            continue  # start_server asking whether it is up
        assert head.startswith(b"POST /callback?"), f"line {call.start} answers {head[:60]!r}"
        group_id = json.loads(body)["GroupId"]
        assert group_id not in answers, f"line {call.start}: a second answer for {group_id}"
        answers[group_id] = (int(call.data[9:12]), call.start)
    return answers


def stop_traced(server):
    """End the server strace started, so that strace writes out the whole
    trace and exits (writing to a file, it holds off SIGTERM itself)."""
    (child,) = pathlib.Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    os.kill(int(child), signal.SIGTERM)
    server.wait(10)


def test_every_callback_answered_ok_had_its_wal_frames_synced_before_the_answer(tmp_path):
    strace = require("strace")
    database, port, trace = tmp_path / "audit.sqlite3", free_port(), tmp_path / "strace.txt"
    wrapper = (strace, "-f", "-y", "-tt", "-xx", "-s", "8192", "--seccomp-bpf")
    server = start_server(
        server_env(database, tmp_path), port, (*wrapper, "-e", f"trace={TRACED}", "-o", trace)
    )
    group_ids = [f"@TGS#durable{n:02d}" for n in range(64)]
    answered = {}

    def client(mine):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for group_id in mine:
            answered[group_id] = post(port, group_body(GroupId=group_id), conn)
        conn.close()

    try:
        clients = [threading.Thread(target=client, args=(group_ids[k::8],)) for k in range(8)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
    finally:
        stop_traced(server)
    assert answered == {group_id: (200, OK) for group_id in group_ids}
    conn = sqlite3.connect(database)
    stored = conn.execute("SELECT id, group_id FROM event ORDER BY id").fetchall()
    conn.close()
    assert [row_id for row_id, _ in stored] == list(range(1, 65))
    assert sorted(group_id for _, group_id in stored) == group_ids

    calls = trace_calls(trace)
    wal = os.path.realpath(database) + "-wal"
    answers = callback_answers(calls)
    assert answers.keys() == set(group_ids)
    transactions = wal_transactions(calls, wal)
    syncs = [(c.start, c.end) for c in calls if c.name in SYNCS and c.path == wal and c.ret == 0]
    carried, early = set(), []
    for group_id, (status, answer) in sorted(answers.items()):
        assert status == 200
        commit = next((t for t in transactions if group_id.encode() in t.pages), None)
        assert commit, f"{group_id} was answered 200 but its frames were never written to the WAL"
        carried.add(commit)
        if not any(commit.end < start and end < answer for start, end in syncs):
            early.append(
                f"{group_id} (commit frame written by line {commit.end}, answer at {answer})"
            )
    assert not early, (
        f"{len(early)} of {len(answers)} callbacks were answered 200 with no fsync or fdatasync"
        f" of the WAL between the commit frame holding them and the answer: {', '.join(early[:3])}"
    )
    # Group commit happened: answers went out while the next transaction
    # was being written, which is what the check must see through.
    assert len(carried) < len(group_ids)
