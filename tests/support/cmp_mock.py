"""OpenSSL's own CMP server (`openssl cmp -port 0`, the mock server of OpenSSL 3.0) as the
peer of ztpki's CMP client: a third-party implementation of RFC 4210/9483 on loopback."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime.now(UTC).replace(microsecond=0)
_ACCEPT = re.compile(rb"ACCEPT \S*:(\d+)")


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class MockPKI:
    """A root CA, the server's signing identity, and a device's (temporary) identity."""

    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    server_key: ec.EllipticCurvePrivateKey
    server: x509.Certificate
    device_key: ec.EllipticCurvePrivateKey
    device: x509.Certificate

    @classmethod
    def create(cls) -> MockPKI:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(name("mock CMP CA"))
            .issuer_name(name("mock CMP CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        pki = cls(ca_key, ca, ca_key, ca, ca_key, ca)
        server_key = ec.generate_private_key(ec.SECP256R1())
        device_key = ec.generate_private_key(ec.SECP256R1())
        return cls(
            ca_key,
            ca,
            server_key,
            pki.issue(server_key, "mock CMP server"),
            device_key,
            pki.issue(device_key, "device-0001"),
        )

    def issue(self, key: ec.EllipticCurvePrivateKey, cn: str) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(hours=1))
            .not_valid_after(NOW + timedelta(days=7))
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(self.ca_key, hashes.SHA256())
        )


def _pem(path: Path, *items: x509.Certificate | ec.EllipticCurvePrivateKey) -> str:
    data = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            data += item.public_bytes(serialization.Encoding.PEM)
        else:
            data += item.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
    path.write_bytes(data)
    return str(path)


@contextmanager
def mock_server(
    tmp_path: Path,
    pki: MockPKI,
    *,
    response: x509.Certificate,
    options: Sequence[str] = (),
) -> Iterator[str]:
    """The URL of a running `openssl cmp` mock server that answers with ``response``."""
    args = [
        "openssl",
        "cmp",
        "-port",
        "0",
        "-srv_cert",
        _pem(tmp_path / "srv.crt", pki.server),
        "-srv_key",
        _pem(tmp_path / "srv.key", pki.server_key),
        "-srv_trusted",
        _pem(tmp_path / "ca.crt", pki.ca),
        "-rsp_cert",
        _pem(tmp_path / "rsp.crt", response),
        "-rsp_capubs",
        str(tmp_path / "ca.crt"),
        *options,
    ]
    # OpenSSL prints the ACCEPT line on stdout, its diagnostics on stderr: both are read.
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert process.stdout is not None
        port = None
        for line in process.stdout:  # readiness: the line naming the port it listens on
            found = _ACCEPT.search(line)
            if found:
                port = int(found.group(1))
                break
        assert port is not None, "openssl cmp did not start its mock server"
        yield f"http://127.0.0.1:{port}/pkix/"
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
