"""Fetching CRLs (revocation_source): http only, bounded in size and time, cached and refreshed."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.support.revocation_pki import NOW, RevocationCA

from ztpki.errors import ConfigurationError, PayloadTooLarge, Unavailable
from ztpki.revocation_source import CRLCache, fetch_crl_bytes

CA = RevocationCA.create()


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        status = 200 if self.path == "/crl/ca.crl" else 404
        self.send_response(status)
        self.send_header("Content-Type", "application/pkix-crl")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_ok_fetch_over_http(server: str) -> None:
    _Handler.body = CA.crl([7]).public_bytes(serialization.Encoding.DER)
    assert fetch_crl_bytes(f"{server}/crl/ca.crl") == _Handler.body


def test_fail_http_error_status_is_unavailable(server: str) -> None:
    with pytest.raises(Unavailable, match="HTTP 404"):
        fetch_crl_bytes(f"{server}/nothing-here")


def test_fail_body_over_the_limit(server: str) -> None:
    _Handler.body = b"x" * 2048
    with pytest.raises(PayloadTooLarge):
        fetch_crl_bytes(f"{server}/crl/ca.crl", max_bytes=1024)


def test_fail_silent_server_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts (in the backlog), never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/crl/ca.crl"
        with pytest.raises(Unavailable, match="cannot fetch"):
            fetch_crl_bytes(url, timeout=0.2)


@pytest.mark.parametrize("location", ["https://ca.example/a.crl", "ldap://ca.example/a", "http://"])
def test_fail_other_schemes_are_refused(location: str) -> None:
    with pytest.raises(ConfigurationError, match="only http://"):
        fetch_crl_bytes(location)


def test_ok_file_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "ca.crl"
    path.write_bytes(b"crl bytes")
    assert fetch_crl_bytes(str(path)) == b"crl bytes"
    with pytest.raises(Unavailable, match="cannot read"):
        fetch_crl_bytes(str(tmp_path / "absent.crl"))


def test_ok_cache_fetches_when_due_and_keeps_the_crl_on_failure() -> None:
    served: list[bytes | None] = [CA.crl([], number=1).public_bytes(serialization.Encoding.DER)]
    asked: list[str] = []

    def fetch(location: str) -> bytes:
        asked.append(location)
        if served[0] is None:
            raise Unavailable("down")
        return served[0]

    cache = CRLCache(refresh=timedelta(minutes=10), fetch=fetch)
    first = cache.current("x", now=NOW)
    assert first is not None and len(asked) == 1
    assert cache.current("x", now=NOW + timedelta(minutes=9)) is first and len(asked) == 1
    served[0] = None
    assert cache.current("x", now=NOW + timedelta(minutes=10)) is first  # failed: kept
    assert len(asked) == 2
    # Near its nextUpdate (here 23 h on) a CRL is due whatever the interval.
    hourly = CRLCache(refresh=timedelta(days=7), fetch=fetch)
    served[0] = CA.crl([], number=2).public_bytes(serialization.Encoding.DER)
    hourly.current("x", now=NOW)
    assert not hourly.due("x", NOW + timedelta(hours=22))
    assert hourly.due("x", NOW + timedelta(hours=23) - timedelta(minutes=4))
