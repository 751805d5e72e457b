"""Pre-signed OCSP answers (`ca serve --ocsp-dir`) served by a real nginx, asked with curl.

The GET request is `openssl ocsp -reqout` (SHA-1 CertID, no nonce) in base64, as RFC 5019
clients send it; `openssl ocsp -respin` verifies what came back. nginx runs on loopback with
the configuration the README gives (ztpki.casystem.ocsp_nginx). A static answer is told from
a proxied one by `Accept-Ranges: bytes`, which only nginx's file handler sends.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import ocsp
from tests.attacks.attack_deployment import wait_until
from tests.e2e.casystem_fixtures import CASystemUnderTest, ztpki
from tests.e2e.test_ocsp_http import Publisher
from tests.support.nginx import NGINX, listening_socket, start_nginx, stop_nginx, write_nginx_conf
from tests.support.ocsp import http_address, openssl_ocsp
from tests.unit.casystem.test_ca_ocsp_presign import shapes

from ztpki.casystem.ocsp_presign import file_name, sha1_request
from ztpki.pki.pem import serial_hex

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make test installs it)"),
]
WAIT = 60.0


@dataclass
class Served:
    publisher: Publisher
    nginx: tuple[str, int]
    ocsp_dir: Path

    def request(self, leaf: x509.Certificate, *extra: str) -> bytes:
        out = self.publisher.work / f"req-{serial_hex(leaf)[:16]}.der"
        done = openssl_ocsp(
            "-issuer", self.publisher.ca_pem(), "-cert", self.publisher.pem(leaf),
            "-reqout", out, *extra,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return out.read_bytes()

    def get(self, der: bytes, *, escape: bool = True) -> tuple[dict[str, str], Path]:
        """curl GET /ocsp/<base64>, URL-escaped or as it is (both occur in the field); the
        response headers and body file."""
        path = base64.b64encode(der).decode()
        if escape:
            path = urllib.parse.quote(path, safe="")
        body = self.publisher.work / f"resp-{os.urandom(4).hex()}.der"
        done = subprocess.run(
            ["curl", "-sS", "--path-as-is", "-D", "-", "-o", str(body),
             f"http://{self.nginx[0]}:{self.nginx[1]}/ocsp/{path}"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        lines = done.stdout.splitlines()
        assert lines[0].split()[1] == "200", done.stdout
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                key = name.strip().lower()  # repeated headers are one list (RFC 9110 5.3)
                headers[key] = ", ".join(filter(None, [headers.get(key), value.strip()]))
        return headers, body

    def verdict(self, leaf: x509.Certificate, body: Path, *, nonce: bytes | None = None) -> str:
        """`openssl ocsp -respin`: verified under the CA; with ``nonce`` (the request's DER),
        -reqin makes openssl check that the answer echoes its nonce."""
        extra: list[str | Path] = [
            "-issuer",
            self.publisher.ca_pem(),
            "-cert",
            self.publisher.pem(leaf),
        ]
        if nonce is not None:
            request = self.publisher.work / f"reqin-{os.urandom(4).hex()}.der"
            request.write_bytes(nonce)
            extra = ["-reqin", request]
        done = openssl_ocsp("-respin", body, "-CAfile", self.publisher.ca_pem(), *extra)
        return done.stdout + done.stderr

    def file_of(self, der: bytes) -> Path:
        name = file_name(der)
        assert name is not None
        return self.ocsp_dir / "factory" / name


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("ocsp-presigned")
    logs = base / "logs"
    logs.mkdir()
    system = CASystemUnderTest(base / "system", logs)
    system.init_ca("factory", "--default")
    system.add_client("line1")
    # nginx's worker (nobody, as root) reads the files: pytest's tmp is 0700 to others.
    ocsp_dir = Path(tempfile.mkdtemp(prefix="ztpki-ocsp-"))
    ocsp_dir.chmod(0o755)
    service = system.start(
        "--http-listen", "127.0.0.1:0", "--ocsp-dir", str(ocsp_dir), "--key-workers", "1"
    )
    nginx = None
    try:
        http = http_address(service)
        sock = listening_socket()
        port = sock.getsockname()[1]
        # The configuration the operator prints with `ztpki ca ocsp-nginx`.
        server = ztpki(
            "ca", "ocsp-nginx", "--dir", str(system.root), "--ocsp-dir", str(ocsp_dir),
            "--responder", f"{http[0]}:{http[1]}", "--listen", f"127.0.0.1:{port}",
        ).stdout  # fmt: skip
        assert "expires modified +24h;" in server and "/factory/$1 @ztpki" in server
        nginx = start_nginx(write_nginx_conf(base / "nginx", server), [sock])
        yield Served(Publisher(system, http, base), ("127.0.0.1", port), ocsp_dir)
    finally:
        if nginx is not None:
            stop_nginx(nginx)
        system.stop()
        subprocess.run(["rm", "-rf", str(ocsp_dir)], check=False)


def test_ok_presigned_good_then_resigned_revoked_after_ca_revoke(served: Served) -> None:
    (leaf, other) = served.publisher.issue(2)
    der = served.request(leaf, "-no_nonce")
    path = served.file_of(der)
    assert wait_until(path.exists, timeout=WAIT), f"no pre-signed file {path}"
    headers, body = served.get(der)
    assert headers.get("accept-ranges") == "bytes", headers  # nginx's file, not the proxy
    assert headers["content-type"] == "application/ocsp-response"
    assert "max-age=" in headers["cache-control"] and "expires" in headers, headers
    assert "last-modified" in headers and "etag" in headers
    answer = served.verdict(leaf, body)
    assert "Response verify OK" in answer and ": good" in answer, answer
    before = path.stat().st_ino
    ztpki("ca", "revoke", "--dir", str(served.publisher.system.root), "--name", "factory",
          "--serial", serial_hex(leaf), "--reason", "keyCompromise")  # fmt: skip
    # The file is replaced by rename: a new inode once the service has signed again.
    assert wait_until(lambda: path.stat().st_ino != before, timeout=WAIT)
    headers, body = served.get(der)
    assert headers.get("accept-ranges") == "bytes", headers
    answer = served.verdict(leaf, body)
    assert "Response verify OK" in answer and ": revoked" in answer, answer
    assert "Reason: keyCompromise" in answer
    # Negative control: the certificate beside it is still good, from its own file.
    other_der = served.request(other, "-no_nonce")
    assert wait_until(served.file_of(other_der).exists, timeout=WAIT)
    _, body = served.get(other_der)
    assert ": good" in served.verdict(other, body)


def test_ok_nonce_request_falls_through_and_echoes_the_nonce(served: Served) -> None:
    (leaf,) = served.publisher.issue()
    der = served.request(leaf, "-nonce")
    assert not served.file_of(der).exists()  # no file can hold a nonce answer
    headers, body = served.get(der)
    assert "accept-ranges" not in headers and headers["cache-control"] == "no-store", headers
    answer = served.verdict(leaf, body, nonce=der)
    assert "Response verify OK" in answer, answer
    assert "nonce" not in answer.lower(), answer  # "Nonce Verify error" / "no nonce" otherwise
    (status,) = ocsp.load_der_ocsp_response(body.read_bytes()).responses
    assert status.certificate_status is ocsp.OCSPCertStatus.GOOD
    # Negative control: the same answer checked against another nonce is refused.
    other = served.request(leaf, "-nonce")
    assert "Nonce Verify error" in served.verdict(leaf, body, nonce=other)


def test_ok_miss_falls_through_to_the_responder(served: Served) -> None:
    """A certificate whose file is gone (or not written yet) is answered by ztpki."""
    (leaf,) = served.publisher.issue()
    der = served.request(leaf, "-no_nonce")
    path = served.file_of(der)
    assert wait_until(path.exists, timeout=WAIT)
    path.unlink()
    headers, body = served.get(der)
    assert "accept-ranges" not in headers, headers  # the proxy answered
    answer = served.verdict(leaf, body)
    assert "Response verify OK" in answer and ": good" in answer, answer


def test_fail_post_through_nginx_reaches_the_responder(served: Served) -> None:
    """`openssl ocsp -url` POSTs: nginx passes it on; a bad body is malformedRequest."""
    (leaf,) = served.publisher.issue()
    url = f"http://{served.nginx[0]}:{served.nginx[1]}/ocsp"
    done = openssl_ocsp(
        "-issuer", served.publisher.ca_pem(), "-cert", served.publisher.pem(leaf),
        "-url", url, "-CAfile", served.publisher.ca_pem(),
    )  # fmt: skip
    assert "Response verify OK" in done.stderr + done.stdout and ": good" in done.stdout
    with socket.create_connection(served.nginx, timeout=30) as conn:
        conn.sendall(
            b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
            b"Content-Length: 3\r\nConnection: close\r\n\r\nabc"
        )
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\x30\x03\x0a\x01\x01")


def test_ok_written_files_are_world_readable_not_the_ca_directory(served: Served) -> None:
    (leaf,) = served.publisher.issue()
    path = served.file_of(served.request(leaf, "-no_nonce"))
    assert wait_until(path.exists, timeout=WAIT)
    assert path.stat().st_mode & 0o777 == 0o644
    ca_dir = served.publisher.system.root / "cas" / "factory"
    assert ca_dir.stat().st_mode & 0o077 == 0


def test_ok_nginx_finds_every_base64_shape_escaped_or_not(served: Served) -> None:
    """A '/' in the base64 is a directory level, a run of them one level, a trailing one the
    file "_": nginx finds each file from the escaped and the raw GET path alike."""
    for shape, cert_id in shapes().items():
        der = sha1_request(cert_id)
        path = served.file_of(der)
        path.parent.mkdir(parents=True, exist_ok=True)
        marker = f"presigned {shape}".encode()
        path.write_bytes(marker)
        for escape in (True, False):
            headers, body = served.get(der, escape=escape)
            assert headers.get("accept-ranges") == "bytes", (shape, escape, headers)
            assert body.read_bytes() == marker, (shape, escape)
        path.unlink()
        # Negative control: without the file, the responder answers (a foreign issuer).
        headers, body = served.get(der)
        assert "accept-ranges" not in headers
        assert body.read_bytes() == b"\x30\x03\x0a\x01\x06"  # unauthorized


@pytest.mark.parametrize(
    "path",
    [
        "/ocsp/secret.txt",  # a name with a "." is never a file name here
        "/ocsp/..%2Fsecret.txt",
        "/ocsp/%2E%2E/%2E%2E/system/cas/factory/ca.key.pem",
        "/ocsp/factory%2F..%2F..%2Fsecret.txt",
    ],
)
def test_fail_paths_outside_the_answers_serve_no_file(served: Served, path: str) -> None:
    """Only base64 paths reach the files; anything else is the responder's (or nginx's 404),
    and no other file of the directory, nor the CA's key, is ever sent."""
    secret = served.ocsp_dir / "secret.txt"
    secret.write_bytes(b"not an OCSP answer")
    try:
        with socket.create_connection(served.nginx, timeout=30) as conn:
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
    finally:
        secret.unlink()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"accept-ranges" not in head.lower(), reply[:300]
    assert b"not an OCSP answer" not in body and b"PRIVATE KEY" not in body
    status = head.split(b" ", 2)[1]
    # The responder's malformedRequest, the 404 of a path nginx normalised out of /ocsp/, or
    # nginx's 400 for one climbing above its root.
    assert body == b"\x30\x03\x0a\x01\x01" or status in {b"400", b"404"}, reply[:300]
