"""A raw HTTP/1.1 connection for tests that must control the bytes and their timing: a request
head without its body, a body cut in two TCP writes, a head that stalls half-way."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Self
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class RawConnection:
    """One TCP connection to the API; ``send`` writes exactly what it is given, at once."""

    def __init__(self, api_url: str, *, timeout_s: float = 30.0) -> None:
        parts = urlsplit(api_url)
        self.host = parts.hostname or "127.0.0.1"
        self.sock = socket.create_connection((self.host, parts.port or 80), timeout=timeout_s)
        # Each send() becomes its own segment, so the server sees the writes as separate reads.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc) -> None:
        self.sock.close()

    def head(self, method: str, path: str, headers: dict[str, str] | list[tuple[str, str]] = ()) -> bytes:
        items = headers.items() if isinstance(headers, dict) else headers
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}", *(f"{name}: {value}" for name, value in items)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_response(self, *, timeout_s: float = 30.0) -> RawResponse:
        """The next response (a Content-Length body, or up to the connection's end)."""
        self.sock.settimeout(timeout_s)
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before a response head; got {self._buffer[:200]!r}")
            self._buffer += chunk
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "-1"))
        while length >= 0 and len(self._buffer) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self._buffer += chunk
        body, self._buffer = (self._buffer[:length], self._buffer[length:]) if length >= 0 else (self._buffer, b"")
        return RawResponse(int(status_line.split()[1]), headers, body)

    def closed_by_server(self, *, within_s: float) -> bool:
        """Whether the server ends the connection within ``within_s`` (what it sends first is read
        and dropped)."""
        deadline = time.monotonic() + within_s
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(65536):
                    return True
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
        return False
