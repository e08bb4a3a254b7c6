"""A lean HTTP/1.1 load generator (keep-alive connections on asyncio), so that on a small machine
the client's own cost does not hide the server's."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlparse


async def _connection_loop(host: str, port: int, request: bytes, count: int, expect: int, statuses: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for _ in range(count):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            if status != expect:
                statuses.append(status)
    finally:
        writer.close()


def post_json_rate(url: str, body: bytes, headers: dict[str, str], *, requests: int, connections: int, expect: int) -> float:
    """Requests per second for ``requests`` identical POSTs over ``connections`` keep-alive sockets."""
    parsed = urlparse(url)
    lines = [f"POST {parsed.path} HTTP/1.1", f"Host: {parsed.netloc}", "Content-Type: application/json",
             f"Content-Length: {len(body)}"] + [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    per_connection = requests // connections
    failures: list[int] = []

    async def run() -> None:
        await asyncio.gather(
            *(_connection_loop(parsed.hostname, parsed.port, request, per_connection, expect, failures)
              for _ in range(connections))
        )

    started = time.perf_counter()
    asyncio.run(run())
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, statuses {sorted(set(failures))}")
    return per_connection * connections / elapsed
