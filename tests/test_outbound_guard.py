"""The outbound guard against real resolvers and real local servers: what it refuses, and how it connects."""

from __future__ import annotations

import datetime
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from shared.net import (
    MAX_REDIRECTS,
    OutboundRefused,
    ResolvedTarget,
    check_url,
    check_url_form,
    iter_body,
    send,
    stream,
)
from shared.net.outbound import pinned_client

Respond = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class LocalServer:
    port: int
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, Host header
    server_names: list[str | None] = field(default_factory=list)  # TLS SNI, when serving TLS

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def serve() -> Iterator[Callable[..., LocalServer]]:
    """Start HTTP(S) servers on 127.0.0.1 that record every request they answer."""
    servers: list[ThreadingHTTPServer] = []

    def start(respond: Respond, *, tls: ssl.SSLContext | None = None) -> LocalServer:
        record = LocalServer(port=0)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                record.requests.append((self.command, self.path, self.headers.get("Host", "")))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                respond(self)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        if tls is not None:
            tls.sni_callback = lambda _socket, name, _context: record.server_names.append(name)
            httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
        record.port = httpd.server_address[1]
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
        return record

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def reply(status: int = 200, body: bytes = b"ok", headers: dict[str, str] | None = None) -> Respond:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return respond


def endless_body(handler: BaseHTTPRequestHandler) -> None:
    # HTTP/1.0 without Content-Length: the body ends only when the connection does.
    handler.send_response(200)
    handler.end_headers()
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            handler.wfile.write(b"x" * 65536)
    except OSError:
        pass  # the client hung up, as it should


INTERNAL_URLS = [
    # loopback, in every spelling getaddrinfo (inet_aton) accepts
    "http://127.0.0.1/",
    "http://127.0.0.2:8080/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0x7f.1/",
    "http://017700000001/",
    "http://127.1/",
    "https://127.0.0.1:8443/",
    "http://[::1]/",
    # IPv4-mapped and IPv4-compatible IPv6
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::127.0.0.1]/",
    "http://[::ffff:0:7f00:1]/",
    # unspecified
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    # cloud metadata
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.170.2/v2/credentials",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/",
    "http://192.0.0.192/",
    # private, CGNAT, unique-local, link-local, site-local
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://[fd00::1]/",
    "http://[fe80::1]/",
    "http://169.254.1.1/",
    "http://[fec0::1]/",
    # multicast, broadcast, reserved, special-purpose
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://192.0.0.1/",
    "http://198.18.0.1/",
    "http://192.0.2.1/",
    "http://[100::1]/",
    # NAT64, 6to4 and Teredo around an internal IPv4
    "http://[64:ff9b::7f00:1]/",
    "http://[64:ff9b::a00:1]/",
    "http://[64:ff9b:1::a00:1]/",
    "http://[2002:7f00:1::]/",
    "http://[2002:a9fe:a9fe::]/",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
    # names refused before any lookup
    "http://localhost/",
    "http://LOCALHOST./",
    "http://api.localhost/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata/",
]


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_given_an_internal_address_form_when_checked_then_it_is_refused_as_private(url):
    # given a URL naming an internal host in one of its many spellings
    # when it is checked with the real resolver and private networks disallowed
    with pytest.raises(OutboundRefused) as refused:
        check_url(url, allow_private=False)

    # then it is refused as a private address
    assert refused.value.reason == "private_address"


@pytest.mark.parametrize(
    ("url", "refused_without_dns"),
    [
        ("http://169.254.169.254/latest/", True),
        ("http://[::ffff:10.0.0.1]/", True),
        ("http://metadata.google.internal/", True),
        ("http://127.0.0.1:8080/", True),
        ("https://images.example.com/cat.png", False),  # a name: only the worker's lookup can tell
        ("http://2130706433/", False),  # a numeric form the resolver turns into loopback at fetch time
    ],
)
def test_given_a_url_when_its_form_is_checked_then_literal_and_named_internal_hosts_are_refused_without_dns(
    url, refused_without_dns
):
    # given a resolver that must not be used: check_url_form never resolves
    # when only the URL's form is checked (what the API does before accepting a media URL)
    if refused_without_dns:
        with pytest.raises(OutboundRefused) as refused:
            check_url_form(url, allow_private=False)
        # then internal hosts are refused at once
        assert refused.value.reason == "private_address"
    else:
        parsed, host, port = check_url_form(url, allow_private=False)
        assert (str(parsed), port) == (url, 443 if url.startswith("https") else 80) and host


def test_given_decimal_octal_and_short_forms_when_resolved_then_they_are_loopback_and_named_in_the_refusal():
    for url in ("http://2130706433/", "http://017700000001/", "http://0x7f.1/", "http://127.1/"):
        # given a numeric host form the resolver reads with inet_aton semantics
        # when checked
        with pytest.raises(OutboundRefused) as refused:
            check_url(url, allow_private=False)

        # then the message names the host and the address it really is
        host = httpx.URL(url).host
        assert f"refused {host} at 127.0.0.1: loopback" == str(refused.value)


def test_given_a_dotted_octal_host_when_checked_then_it_is_refused_as_a_bad_url():
    # given a dotted form with a leading zero, which httpx will not parse as IPv4 or a name
    # when checked, then it is refused before any lookup
    with pytest.raises(OutboundRefused) as refused:
        check_url("http://0177.0.0.1/", allow_private=False)
    assert refused.value.reason == "bad_url"


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.215.14/",
        "https://1.1.1.1:8443/path?q=1",
        "http://[2606:4700::1111]/",
        "http://[::ffff:93.184.215.14]/",
        "http://[64:ff9b::5db8:d70e]/",
        "http://[2002:5db8:d70e::1]/",
    ],
)
def test_given_a_public_address_when_checked_then_it_is_accepted_without_connecting(url):
    # given a public IP literal (no DNS, no internet needed)
    # when checked
    target = check_url(url, allow_private=False)

    # then the target is pinned to that very address
    assert target.addresses == (httpx.URL(url).host,)
    assert target.url == httpx.URL(url)


def test_given_a_name_with_a_public_and_a_private_record_when_checked_then_it_is_refused():
    # given a resolver answering with two records, one of them internal (a DNS trick)
    def two_records(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.7"]

    # when checked
    with pytest.raises(OutboundRefused) as refused:
        check_url("https://hooks.example.com/", allow_private=False, resolve=two_records)

    # then the internal record refuses the whole URL
    assert refused.value.reason == "private_address"
    assert "10.0.0.7" in str(refused.value)


@pytest.mark.parametrize("allow_private", [False, True])
@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://93.184.215.14/", "gopher://127.0.0.1:6379/_INFO", "ws://93.184.215.14/"]
)
def test_given_a_non_http_scheme_when_checked_then_it_is_refused_even_with_private_networks_allowed(url, allow_private):
    with pytest.raises(OutboundRefused) as refused:
        check_url(url, allow_private=allow_private)
    assert refused.value.reason == "bad_scheme"


def test_given_credentials_in_the_url_when_checked_then_it_is_refused_without_echoing_them():
    with pytest.raises(OutboundRefused) as refused:
        check_url("https://user:s3cret@93.184.215.14/", allow_private=False)
    assert refused.value.reason == "bad_url"
    assert "s3cret" not in str(refused.value)


def test_given_an_unresolvable_name_when_checked_then_it_is_refused_as_unresolvable():
    with pytest.raises(OutboundRefused) as refused:
        check_url("http://vlmq-nowhere.invalid/", allow_private=False)
    assert refused.value.reason == "unresolvable"


def test_given_a_local_server_when_fetched_without_private_networks_then_nothing_connects(serve):
    # given a server on 127.0.0.1
    server = serve(reply())

    # when fetched with private networks disallowed
    with pytest.raises(OutboundRefused):
        send("GET", server.url, allow_private=False)

    # then it never saw a request
    assert server.requests == []


def test_given_private_networks_allowed_when_fetching_localhost_then_the_host_header_is_the_original_host(serve):
    # given a server on 127.0.0.1, named by "localhost"
    server = serve(reply(body=b"hello"))

    # when fetched with private networks allowed
    response = send("GET", f"http://localhost:{server.port}/media.jpg", allow_private=True)

    # then the pinned connection reached it and the Host header kept the name
    assert response.status_code == 200 and response.content == b"hello"
    assert server.requests == [("GET", "/media.jpg", f"localhost:{server.port}")]


def test_given_a_target_pinned_to_an_address_when_sent_then_the_name_is_never_resolved_again(serve):
    # given a name no resolver knows, pinned by hand to the server's address
    server = serve(reply())
    target = ResolvedTarget(
        url=httpx.URL(f"http://vlmq-pinned.invalid:{server.port}/x"),
        host="vlmq-pinned.invalid",
        port=server.port,
        addresses=("127.0.0.1",),
    )

    # when sent through a pinned client
    with pinned_client(target) as client:
        response = client.get(target.url)

    # then the connection went to the pinned address, with the name in the Host header
    assert response.status_code == 200
    assert server.requests == [("GET", "/x", f"vlmq-pinned.invalid:{server.port}")]


def test_given_a_pinned_client_when_asked_for_another_origin_then_it_refuses_to_connect(serve):
    # given a client pinned to one origin
    server = serve(reply())
    target = check_url(server.url, allow_private=True)

    # when asked for another host on the same port
    with pinned_client(target) as client, pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.2:{server.port}/")

    # then nothing was sent anywhere
    assert server.requests == []


def _certificate_authority(tmp_path: Path, server_name: str) -> tuple[Path, ssl.SSLContext]:
    """A CA file for clients and a server context with a leaf certificate for ``server_name``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool):  # type: ignore[no-untyped-def]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("vlmq test CA", ca_key, "vlmq test CA", ca_key, ca=True)
    leaf_cert = certificate(server_name, leaf_key, "vlmq test CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (tmp_path / "leaf.pem").write_bytes(leaf_cert.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    return tmp_path / "ca.pem", server_context


def test_given_https_pinned_to_an_address_when_sent_then_sni_and_certificate_use_the_original_name(
    serve, tmp_path, monkeypatch
):
    # given a TLS server with a certificate for a name, and that CA trusted (SSL_CERT_FILE, as httpx reads it)
    ca_file, server_context = _certificate_authority(tmp_path, "hooks.vlmq.test")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    server = serve(reply(body=b"secure"), tls=server_context)
    target = ResolvedTarget(
        url=httpx.URL(f"https://hooks.vlmq.test:{server.port}/"),
        host="hooks.vlmq.test",
        port=server.port,
        addresses=("127.0.0.1",),
    )

    # when sent through a client pinned to 127.0.0.1
    with pinned_client(target) as client:
        response = client.get(target.url)

    # then TLS named the original host (SNI) and its certificate verified against it
    assert response.content == b"secure"
    assert server.server_names == ["hooks.vlmq.test"]
    assert server.requests == [("GET", "/", f"hooks.vlmq.test:{server.port}")]


def test_given_https_pinned_to_an_address_serving_another_names_certificate_then_verification_fails(
    serve, tmp_path, monkeypatch
):
    # given a TLS server whose certificate is for another name
    ca_file, server_context = _certificate_authority(tmp_path, "someone-else.vlmq.test")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    server = serve(reply(), tls=server_context)
    target = ResolvedTarget(
        url=httpx.URL(f"https://hooks.vlmq.test:{server.port}/"),
        host="hooks.vlmq.test",
        port=server.port,
        addresses=("127.0.0.1",),
    )

    # when sent through a client pinned to its address, then the certificate is refused
    with pinned_client(target) as client, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get(target.url)
    assert server.requests == []


def test_given_a_redirect_to_an_internal_address_when_following_then_it_is_refused_before_connecting(serve):
    # given a first server allowed to be reached, redirecting to a second, internal one
    internal = serve(reply(body=b"secret"))
    first = serve(reply(302, b"", {"Location": f"{internal.url}/latest/meta-data/"}))

    def only_first_server_allowed(url: str) -> ResolvedTarget:
        return check_url(url, allow_private=httpx.URL(url).port == first.port)

    # when fetched following redirects, with every hop checked
    with pytest.raises(OutboundRefused) as refused:
        send("GET", first.url, allow_private=False, follow_redirects=True, check=only_first_server_allowed)

    # then the second hop is refused and nothing ever connected to it
    assert refused.value.reason == "private_address"
    assert len(first.requests) == 1
    assert internal.requests == []


def test_given_allowed_redirects_when_following_then_the_final_response_is_returned(serve):
    # given a redirect (303 after a POST) to a second server
    final = serve(reply(body=b"final"))
    first = serve(reply(303, b"", {"Location": f"http://localhost:{final.port}/final"}))

    # when followed
    response = send("POST", first.url, allow_private=True, follow_redirects=True, content=b"{}")

    # then the second server answered a GET with its own Host header
    assert response.status_code == 200 and response.content == b"final"
    assert final.requests == [("GET", "/final", f"localhost:{final.port}")]


def test_given_a_redirect_loop_when_following_then_it_stops_after_the_hop_limit(serve):
    # given a server that always redirects to itself
    loop = serve(reply(302, b"", {"Location": "/again"}))

    # when followed
    with pytest.raises(OutboundRefused) as refused:
        send("GET", loop.url, allow_private=True, follow_redirects=True)

    # then it gave up after MAX_REDIRECTS hops
    assert refused.value.reason == "too_many_redirects"
    assert len(loop.requests) == MAX_REDIRECTS + 1


def test_given_webhook_mode_when_the_receiver_redirects_then_the_3xx_is_returned_as_is(serve):
    # given a receiver answering 302 to elsewhere
    elsewhere = serve(reply())
    receiver = serve(reply(302, b"", {"Location": elsewhere.url}))

    # when a delivery is POSTed without following redirects
    response = send("POST", receiver.url, allow_private=True, follow_redirects=False, content=b'{"type":"x"}')

    # then the 302 comes back and nothing followed it
    assert response.status_code == 302
    assert response.headers["location"] == elsewhere.url
    assert elsewhere.requests == []


def test_given_an_endless_body_when_read_with_a_cap_then_it_is_refused_as_too_large(serve):
    # given a server that streams without end
    server = serve(endless_body)

    # when read with a 256 KiB cap
    started = time.monotonic()
    with pytest.raises(OutboundRefused) as refused:
        send("GET", server.url, allow_private=True, max_bytes=256 * 1024)

    # then reading stopped at the cap instead of waiting for the end
    assert refused.value.reason == "too_large"
    assert time.monotonic() - started < 10


def test_given_a_declared_length_over_the_cap_when_streamed_then_it_is_refused_before_reading(serve):
    # given a server declaring a body larger than the cap
    server = serve(reply(body=b"x" * 2048))

    # when streamed with a 1 KiB cap
    with stream("GET", server.url, allow_private=True) as response, pytest.raises(OutboundRefused) as refused:
        next(iter_body(response, max_bytes=1024))

    # then the declared length alone refused it
    assert refused.value.reason == "too_large"
    assert "2048" in str(refused.value)
