"""Talking to a CA system's revocation publisher as a relying party would: its HTTP address,
OCSP requests built with cryptography, plain HTTP exchanges, and `openssl ocsp`."""

from __future__ import annotations

import http.client
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509 import ocsp

from ztpki.demo.processes import ServiceProcess

_HTTP_READY = re.compile(r"^http listening on (\S+):(\d+)$", re.MULTILINE)


def http_address(service: ServiceProcess) -> tuple[str, int]:
    """Where `ca serve --http-listen` serves (its stderr line before `listening on`)."""
    found = _HTTP_READY.search(service.log())
    assert found, f"no `http listening on` line in {service.log_path}"
    return found.group(1), int(found.group(2))


def request_der(
    leaf: x509.Certificate,
    issuer: x509.Certificate,
    *,
    nonce: bytes | None = None,
    algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def verify_signed_by(response: ocsp.OCSPResponse, certificate: x509.Certificate) -> None:
    """Raises InvalidSignature unless ``certificate``'s key signed ``response``."""
    public = certificate.public_key()
    data, signature = response.tbs_response_bytes, response.signature
    if isinstance(public, ec.EllipticCurvePublicKey):
        assert response.signature_hash_algorithm is not None
        public.verify(signature, data, ec.ECDSA(response.signature_hash_algorithm))
    elif isinstance(public, rsa.RSAPublicKey):
        assert response.signature_hash_algorithm is not None
        public.verify(signature, data, padding.PKCS1v15(), response.signature_hash_algorithm)
    else:
        assert isinstance(public, ed25519.Ed25519PublicKey)
        public.verify(signature, data)


@dataclass(frozen=True)
class HTTPAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def ocsp(self) -> ocsp.OCSPResponse:
        assert self.status == 200, (self.status, self.body[:200])
        assert self.headers.get("content-type") == "application/ocsp-response", self.headers
        return ocsp.load_der_ocsp_response(self.body)


def exchange(
    address: tuple[str, int],
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> HTTPAnswer:
    connection = http.client.HTTPConnection(*address, timeout=30)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        answer = response.read()
        found = {k.lower(): v for k, v in response.getheaders()}
        return HTTPAnswer(response.status, found, answer)
    finally:
        connection.close()


def post_ocsp(address: tuple[str, int], der: bytes) -> HTTPAnswer:
    return exchange(address, "POST", "/ocsp", der, {"Content-Type": "application/ocsp-request"})


def write_pem(path: Path, *certificates: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates))
    return path


def openssl_ocsp(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`openssl ocsp ARGS`; its verdicts go to stdout, verification notes to stderr."""
    return subprocess.run(
        ["openssl", "ocsp", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=60,
    )
