"""A small HTTP/1.1 load generator for the benchmarks.

It runs in the benchmark's own process, apart from the servers it measures,
and keeps ``connections`` keep-alive connections busy, one request in flight
on each, recording every answer's status, body and latency.
"""

import asyncio
import time


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
