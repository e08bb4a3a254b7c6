"""Every server-side outbound HTTP request (webhook deliveries, media fetched by URL) goes through here.

A URL is resolved once, every address it resolves to is checked, and the connection is pinned to
those checked addresses, so a second DNS answer cannot swap in an internal one (DNS rebinding).
Redirects are never followed by httpx; ``follow_redirects=True`` follows them here, one checked hop
at a time. ``allow_private=True`` (``VLMQ_ALLOW_PRIVATE_NETWORKS``, refused in production) lifts the
address checks but never the scheme or URL checks.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import httpcore
import httpx

DEFAULT_TIMEOUT_S = 10.0
MAX_REDIRECTS = 5
DEFAULT_MAX_BYTES = 1024 * 1024  # what send() reads at most; stream() + iter_body() for larger bodies
READ_CHUNK_BYTES = 64 * 1024

RefusalReason = Literal[
    "bad_url", "bad_scheme", "private_address", "unresolvable", "too_many_redirects", "too_large"
]


class OutboundRefused(Exception):
    """The request was refused before (or while) reaching its target; ``reason`` is a stable code."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason: RefusalReason = reason


@dataclass(frozen=True)
class ResolvedTarget:
    """A checked URL and the addresses its connection is pinned to (in resolver order)."""

    url: httpx.URL
    host: str  # as httpcore sees it: IDNA-encoded, IPv6 without brackets
    port: int
    addresses: tuple[str, ...]


Resolver = Callable[[str, int], Sequence[str]]
UrlCheck = Callable[[str], ResolvedTarget]

# Names refused before any lookup: resolvers may answer them from /etc/hosts or a cloud's own DNS.
_INTERNAL_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "metadata", "metadata.goog",
     "metadata.google.internal", "instance-data", "instance-data.ec2.internal"}
)
_INTERNAL_SUFFIXES = (".localhost", ".internal")  # RFC 6761; ICANN's private-use TLD

# Checked before the ipaddress properties: these are either not covered by them in every Python
# version (CGNAT, 192.0.0.0/24, multicast is "global" on 3.11) or deserve a precise message.
_LABELLED_NETWORKS = [
    (ipaddress.ip_network(cidr), label)
    for cidr, label in (
        ("169.254.169.254/32", "cloud metadata"),  # AWS, GCP, Azure, OpenStack
        ("169.254.170.2/32", "cloud metadata"),  # AWS ECS task metadata
        ("100.100.100.200/32", "cloud metadata"),  # Alibaba
        ("192.0.0.192/32", "cloud metadata"),  # Oracle
        ("fd00:ec2::254/128", "cloud metadata"),  # AWS over IPv6
        ("0.0.0.0/8", "this-network"),  # 0.0.0.0 reaches the local host on Linux
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("198.18.0.0/15", "benchmarking"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # includes 255.255.255.255
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("ff00::/8", "multicast"),
    )
]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_PROPERTIES = ("is_loopback", "is_unspecified", "is_link_local", "is_multicast", "is_private", "is_reserved",
               "is_site_local")


def why_forbidden(address: str) -> str | None:
    """Why ``address`` must not be reached from the server, or None when it is a public address."""
    ip = ipaddress.ip_address(address)
    for network, label in _LABELLED_NETWORKS:
        if ip.version == network.version and ip in network:
            return label
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4-mapped or NAT64 address *is* the IPv4 address on the wire: judge that one alone.
        translated = ip.ipv4_mapped or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if translated is not None:
            why = why_forbidden(str(translated))
            return f"embeds {translated}: {why}" if why else None
        # 6to4 and Teredo are IPv6 addresses of their own, but must not tunnel to an internal IPv4.
        for embedded in (ip.sixtofour, *(ip.teredo or ())):
            if embedded is not None and (why := why_forbidden(str(embedded))):
                return f"embeds {embedded}: {why}"
    for name in _PROPERTIES:
        if getattr(ip, name, False):
            return name.removeprefix("is_").replace("_", "-")
    return None if ip.is_global else "not globally routable"


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in resolver order (IP literals resolve to themselves)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise OutboundRefused("unresolvable", f"{host} does not resolve: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url_form(url: str | httpx.URL, *, allow_private: bool) -> tuple[httpx.URL, str, int]:
    """Everything check_url() decides without DNS: the URL's form, its scheme, internal host names and
    literal addresses. Cheap enough for the API to refuse a bad URL at once; returns (url, host, port)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise OutboundRefused("bad_url", f"not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise OutboundRefused("bad_scheme", f"only http and https are allowed, not {parsed.scheme or 'none'!r}")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise OutboundRefused("bad_url", "the URL has no host")
    if parsed.userinfo:
        # Credentials in a URL end up in logs and delivery records; receivers take them as headers.
        raise OutboundRefused("bad_url", f"credentials in the URL are refused (host {host})")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not 1 <= port <= 65535:
        raise OutboundRefused("bad_url", f"port {port} of {host} is out of range")
    if not allow_private:
        name = host.lower().rstrip(".")
        if name in _INTERNAL_NAMES or name.endswith(_INTERNAL_SUFFIXES):
            raise OutboundRefused("private_address", f"{host} is an internal host name")
        if _is_ip_literal(host) and (why := why_forbidden(host)):
            raise OutboundRefused("private_address", f"refused {host}: {why}")
    return parsed, host, port


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_url(url: str | httpx.URL, *, allow_private: bool, resolve: Resolver = resolve_host) -> ResolvedTarget:
    """Parse, resolve and check ``url``; raise OutboundRefused unless every resolved address is allowed."""
    parsed, host, port = check_url_form(url, allow_private=allow_private)
    addresses = tuple(resolve(host, port))
    if not addresses:
        raise OutboundRefused("unresolvable", f"{host} resolves to no address")
    if not allow_private:
        # Any one bad record refuses the URL: with several records, which one is used is not ours to pick.
        for address in addresses:
            if why := why_forbidden(address):
                raise OutboundRefused("private_address", f"refused {host} at {address}: {why}")
    return ResolvedTarget(url=parsed, host=host, port=port, addresses=addresses)


class _Deadline:
    """One point in time (monotonic) by which a whole exchange must be over.

    httpx's timeouts bound each connect, read and write, so a peer that sends a byte every few
    seconds never trips them; every network operation here gets at most the time left instead.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds, self._at = seconds, time.monotonic() + seconds

    @contextmanager
    def bounding(self, timeout: float | None, timeout_error: type[Exception]) -> Iterator[float]:
        """Yields the timeout for one operation; a timeout the deadline caused says so."""
        left = self._at - time.monotonic()
        message = f"the exchange's {self.seconds:g} s deadline passed"
        if left <= 0:
            raise timeout_error(message)
        try:
            yield left if timeout is None else min(timeout, left)
        except timeout_error:
            if self._at - time.monotonic() <= 0.05:
                raise timeout_error(message) from None
            raise


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads, writes and TLS handshake all end by the deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._stream, self._deadline = stream, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with self._deadline.bounding(timeout, httpcore.ReadTimeout) as left:
            return self._stream.read(max_bytes, left)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # In slices: one write is one socket timeout, and a peer that reads slowly could stretch a
        # large buffer's sends past the deadline otherwise.
        for start in range(0, len(buffer), READ_CHUNK_BYTES):
            with self._deadline.bounding(timeout, httpcore.WriteTimeout) as left:
                self._stream.write(buffer[start:start + READ_CHUNK_BYTES], left)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        with self._deadline.bounding(timeout, httpcore.ConnectTimeout) as left:
            return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the target's checked addresses instead of resolving the host again.

    httpcore still uses the URL's host for TLS (SNI and certificate verification) and httpx for the
    Host header, so only the TCP destination changes.
    """

    def __init__(self, target: ResolvedTarget, deadline: _Deadline | None = None) -> None:
        self._target = target
        self._sockets = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if (host, port) != (self._target.host, self._target.port):
            raise httpcore.ConnectError(f"{host}:{port} is not the checked target {self._target.host}")
        failure: Exception | None = None
        for address in self._target.addresses:  # all checked; try them in resolver order
            try:
                if self._deadline is None:
                    return self._sockets.connect_tcp(address, port, timeout, local_address, socket_options)
                with self._deadline.bounding(timeout, httpcore.ConnectTimeout) as left:
                    connected = self._sockets.connect_tcp(address, port, left, local_address, socket_options)
                return _DeadlineStream(connected, self._deadline)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("outbound requests never use unix sockets")

    def sleep(self, seconds: float) -> None:
        self._sockets.sleep(seconds)


def pinned_client(target: ResolvedTarget, *, timeout: float = DEFAULT_TIMEOUT_S,
                  deadline: _Deadline | None = None) -> httpx.Client:
    """An httpx client whose connections go only to ``target``'s checked addresses; it never redirects.
    With ``deadline``, everything its connections do ends by then."""
    transport = httpx.HTTPTransport()
    # httpx offers no public way to give its transport a network backend; swap the pool it built,
    # and fail loudly rather than send unpinned if a future httpx stops keeping it in ``_pool``.
    if not isinstance(getattr(transport, "_pool", None), httpcore.ConnectionPool):
        raise TypeError("this httpx version keeps no httpcore.ConnectionPool in HTTPTransport._pool")
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(), network_backend=_PinnedBackend(target, deadline)
    )
    # trust_env=False: no proxy from the environment (it would be the one connected to) and no .netrc.
    return httpx.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)


def next_hop(response: httpx.Response, *, check: UrlCheck) -> ResolvedTarget:
    """The checked target of a redirect response; raises OutboundRefused before anything connects to it."""
    return check(str(response.url.join(response.headers["location"])))


def _origin(url: httpx.URL) -> tuple[str, bytes, int]:
    return url.scheme, url.raw_host, url.port or (443 if url.scheme == "https" else 80)


def _redirected_request(
    response: httpx.Response, target: ResolvedTarget, method: str, headers: httpx.Headers, content: bytes | None
) -> tuple[str, httpx.Headers, bytes | None]:
    """Method, headers and body of the next hop, as browsers and httpx do it."""
    headers = headers.copy()
    if (response.status_code == 303 and method != "HEAD") or (response.status_code in (301, 302) and method == "POST"):
        method, content = "GET", None
        for name in ("content-type", "content-length", "transfer-encoding"):
            headers.pop(name, None)
    if _origin(target.url) != _origin(response.url):
        for name in ("authorization", "cookie"):  # never hand credentials to another origin
            headers.pop(name, None)
    return method, headers, content


@contextmanager
def stream(
    method: str,
    url: str,
    *,
    allow_private: bool,
    follow_redirects: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    check: UrlCheck | None = None,
    deadline_s: float | None = None,
) -> Iterator[httpx.Response]:
    """Send a checked, pinned request and yield the response unread; read it with iter_body().

    follow_redirects=False (webhooks) yields a 3xx as it is. True (media) follows up to MAX_REDIRECTS
    hops, checking each one before connecting. ``check`` replaces check_url(…, allow_private=…).
    ``timeout`` applies to each connect, read and write, not to the whole exchange; ``deadline_s``
    bounds the whole exchange from this call on (every hop's connect, TLS, request, status line,
    headers and body reads; not the name lookups): past it, the operation under way raises
    httpx's timeout exception for it, saying that the deadline passed.
    """
    check = check or partial(check_url, allow_private=allow_private)
    deadline = _Deadline(deadline_s) if deadline_s is not None else None
    target = check(url)
    first_host = target.host
    request_headers = httpx.Headers(headers)
    for redirects in range(MAX_REDIRECTS + 1):
        with pinned_client(target, timeout=timeout, deadline=deadline) as client:
            request = client.build_request(method, target.url, headers=request_headers, content=content)
            response = client.send(request, stream=True)
            try:
                if not (follow_redirects and response.has_redirect_location):
                    yield response
                    return
            finally:
                response.close()
        if redirects == MAX_REDIRECTS:
            break
        target = next_hop(response, check=check)
        method, request_headers, content = _redirected_request(response, target, method, request_headers, content)
    raise OutboundRefused("too_many_redirects", f"{first_host} redirected more than {MAX_REDIRECTS} times")


def iter_body(response: httpx.Response, *, max_bytes: int | None) -> Iterator[bytes]:
    """The decoded body in chunks; OutboundRefused("too_large") as soon as it passes ``max_bytes``.

    The cap counts decoded bytes, so a compressed body cannot expand past it unnoticed.
    """
    declared = response.headers.get("content-length", "")
    if max_bytes is not None and declared.isdigit() and int(declared) > max_bytes:
        raise OutboundRefused("too_large", f"{response.url.host} declares {declared} bytes, over {max_bytes}")
    received = 0
    for chunk in response.iter_bytes(READ_CHUNK_BYTES):
        received += len(chunk)
        if max_bytes is not None and received > max_bytes:
            raise OutboundRefused("too_large", f"{response.url.host} sent more than {max_bytes} bytes")
        yield chunk


def send(
    method: str,
    url: str,
    *,
    allow_private: bool,
    follow_redirects: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    check: UrlCheck | None = None,
) -> httpx.Response:
    """stream() and read the body (at most ``max_bytes``, None: no cap) into a closed response.

    The returned response carries the decoded body, so Content-Encoding and Content-Length are dropped.
    """
    with stream(method, url, allow_private=allow_private, follow_redirects=follow_redirects, timeout=timeout,
                headers=headers, content=content, check=check) as response:
        body = b"".join(iter_body(response, max_bytes=max_bytes))
    decoded = ("content-encoding", "content-length")
    kept = [(name, value) for name, value in response.headers.multi_items() if name.lower() not in decoded]
    return httpx.Response(
        response.status_code,
        headers=kept,
        content=body,
        request=response.request,
        extensions={k: v for k, v in response.extensions.items() if k in ("http_version", "reason_phrase")},
    )
