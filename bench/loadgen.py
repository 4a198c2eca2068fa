"""A small HTTP/1.1 load generator for the benchmarks.

It runs in the benchmark's own process, apart from the servers it measures,
and keeps ``connections`` keep-alive connections busy, one request in flight
on each, recording every answer's status, body and latency.
"""

import asyncio
import json
import time
from urllib.parse import urlencode

from tim_audit.ingest.signature import sign

SDKAPPID = "1400000001"
TOKEN = "bench-token"
COMMAND = "Group.CallbackAfterCreateGroup"
OK = {"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0}
NAMES = [
    "周末羽毛球 🏸",
    "사내 공지",
    "Project Atlas",
    "家族",
    "Ops on-call",
    "Ωμάδα",
    "設計レビュー",
]


def post_request(path, body, host="127.0.0.1"):
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def get_request(path, host="127.0.0.1"):
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode("ascii")


async def _read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:  # chunked
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        body = bytes(body)
    return status, body


async def _drive(host, port, requests, connections):
    results = [None] * len(requests)
    next_index = 0

    async def connection():
        nonlocal next_index
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while next_index < len(requests):
                index = next_index
                next_index += 1
                started = time.perf_counter()
                writer.write(requests[index])
                status, body = await _read_response(reader)
                results[index] = (status, body, time.perf_counter() - started)
        finally:
            writer.close()
            await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return results, time.perf_counter() - started


def run(host, port, requests, connections=8):
    """Send every request; returns ([(status, body, seconds)], wall seconds)."""
    return asyncio.run(_drive(host, port, requests, connections))


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def callbacks(first, count, rng):
    """Distinct create-group callbacks, signed now (the window is 60 s)."""
    now = str(int(time.time()))
    query = urlencode(
        {
            "SdkAppid": SDKAPPID,
            "CallbackCommand": COMMAND,
            "contenttype": "json",
            "ClientIP": "203.0.113.7",
            "OptPlatform": "Android",
            "RequestTime": now,
            "Sign": sign(TOKEN, now),
        }
    )
    requests = []
    for number in range(first, first + count):
        members = [
            {"Member_Account": f"user{rng.randrange(50000)}"} for _ in range(rng.randint(0, 6))
        ]
        body = {
            "CallbackCommand": COMMAND,
            "GroupId": f"@TGS#bench{number:09d}",
            "Operator_Account": "administrator",
            "Owner_Account": members[0]["Member_Account"] if members else "",
            "Type": rng.choice(["Public", "Private", "ChatRoom", "AVChatRoom", "Community"]),
            "Name": f"{rng.choice(NAMES)} {number}",
            "MemberList": members,
            "EventTime": 1700000000000 + number,
        }
        requests.append(
            post_request(f"/callback?{query}", json.dumps(body, ensure_ascii=False).encode("utf-8"))
        )
    return requests


def measure(port, requests, connections, expect_ok):
    results, wall = run("127.0.0.1", port, requests, connections)
    latencies = [seconds for _, _, seconds in results]
    good = [r for r in results if r[0] == 200 and (not expect_ok or json.loads(r[1]) == OK)]
    return {
        "rate": len(results) / wall,
        "p50": percentile(latencies, 0.50) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "errors": len(results) - len(good),
        "acknowledged": len(good),
    }
