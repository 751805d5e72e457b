"""The device as a relying party: is the server it talks to revoked by its CA?

After the TLS layer verified the server's chain, the device checks the server certificate's
revocation when the certificate says where to ask: its CRL distribution points (http://,
fetched and cached, ``ztpki.revocation_source``), then its OCSP responders (RFC 6960 POST).
A revoked server certificate is always refused. A check that cannot be made (no answer, a
stale CRL, an issuer the device does not hold) is logged and the connection proceeds
(soft-fail, what browsers do), unless the policy requires the check (hard-fail:
``--require-revocation-check``). A certificate that names neither is not checked.

The check runs in the TLS socket's handshake (``RevocationCheckingSocket``), so every user of
the context gets it, ``wrap_socket`` callers and ``http.client`` alike.
"""

from __future__ import annotations

import http.client
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ztpki.errors import MalformedInput
from ztpki.pki.revocation_check import (
    RevocationStatus,
    RevocationVerdict,
    check_crl,
    check_ocsp_response,
    crl_urls,
    ocsp_request,
    ocsp_urls,
)
from ztpki.revocation_source import FETCH_TIMEOUT, CRLCache

log = logging.getLogger(__name__)

MAX_OCSP_RESPONSE = 64 * 1024
# OpenSSL's X509_V_ERR_CERT_REVOKED and X509_V_ERR_UNABLE_TO_GET_CRL, for TLS-minded callers.
_CERT_REVOKED = 23
_UNABLE_TO_CHECK = 3

# One cache per process: a device connects to few servers, and their CRLs are shared.
_CACHE = CRLCache()


class ServerRevocationError(ssl.SSLCertVerificationError):
    """The server's certificate is revoked, or its status could not be checked when the
    policy requires it. An ``ssl.SSLCertVerificationError``, so TLS code treats it as the
    verification failure it is."""

    def __init__(self, message: str, *, revoked: bool) -> None:
        super().__init__(message)
        self.verify_message = message
        self.verify_code = _CERT_REVOKED if revoked else _UNABLE_TO_CHECK
        self.revoked = revoked
        self.reason = message


@dataclass(frozen=True)
class RevocationPolicy:
    """How the device checks its servers' revocation."""

    require: bool = False  # True: a check that cannot be made refuses the server
    timeout: float = FETCH_TIMEOUT  # per CRL or OCSP request
    cache: CRLCache = field(default=_CACHE, compare=False, repr=False)


def _issuer_of(
    cert: x509.Certificate, candidates: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    for candidate in candidates:
        if candidate.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def server_verdict(
    cert: x509.Certificate,
    issuers: Sequence[x509.Certificate],
    policy: RevocationPolicy,
    *,
    now: datetime,
) -> RevocationVerdict | None:
    """The revocation verdict on a server certificate, or None when it names no CRL
    distribution point or OCSP responder (nothing to check)."""
    crls, responders = crl_urls(cert), ocsp_urls(cert)
    if not crls and not responders:
        return None
    issuer = _issuer_of(cert, issuers)
    if issuer is None:
        return RevocationVerdict(
            RevocationStatus.UNKNOWN,
            detail=f"the issuer {cert.issuer.rfc4514_string()} is not among the device's CAs",
        )
    details: list[str] = []
    for url in crls:
        crl = policy.cache.current(url, now=now)
        if crl is None:
            details.append(f"no CRL from {url}")
            continue
        verdict = check_crl(cert, issuer, crl, now=now)
        if verdict.status is not RevocationStatus.UNKNOWN:
            return verdict
        details.append(verdict.detail)
    for url in responders:
        try:
            answer = _ocsp_post(url, ocsp_request(cert, issuer), timeout=policy.timeout)
        except (OSError, http.client.HTTPException, MalformedInput) as exc:
            details.append(f"OCSP responder {url} did not answer: {exc}")
            continue
        verdict = check_ocsp_response(answer, cert, issuer, now=now)
        if verdict.status is not RevocationStatus.UNKNOWN:
            return verdict
        details.append(verdict.detail)
    return RevocationVerdict(RevocationStatus.UNKNOWN, detail="; ".join(details))


def _ocsp_post(url: str, request: bytes, *, timeout: float) -> bytes:
    parts = urlsplit(url)
    if not parts.hostname:
        raise MalformedInput(f"OCSP URL {url[:200]} has no host")
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        connection.request(
            "POST",
            parts.path or "/",
            body=request,
            headers={"Content-Type": "application/ocsp-request", "User-Agent": "ztpki-device"},
        )
        response = connection.getresponse()
        if response.status != 200:
            raise MalformedInput(f"OCSP responder {url[:200]} answered HTTP {response.status}")
        body = response.read(MAX_OCSP_RESPONSE + 1)
    finally:
        connection.close()
    if len(body) > MAX_OCSP_RESPONSE:
        raise MalformedInput(f"OCSP response from {url[:200]} is too large")
    return body


def check_server(
    der: bytes,
    issuers: Sequence[x509.Certificate],
    policy: RevocationPolicy,
    *,
    server: str,
    now: datetime | None = None,
) -> None:
    """ServerRevocationError if the server certificate is revoked, or if its status is
    unknown and the policy requires a check; an unknown status is logged otherwise."""
    cert = x509.load_der_x509_certificate(der)
    verdict = server_verdict(cert, issuers, policy, now=now or datetime.now(UTC))
    if verdict is None or verdict.status is RevocationStatus.GOOD:
        return
    if verdict.status is RevocationStatus.REVOKED:
        when = "" if verdict.revoked_at is None else f" on {verdict.revoked_at.isoformat()}"
        raise ServerRevocationError(
            f"the certificate of {server} (serial {cert.serial_number:x}) is revoked by its "
            f"CA{when}, reason {verdict.reason}",
            revoked=True,
        )
    if policy.require:
        raise ServerRevocationError(
            f"the revocation status of {server}'s certificate could not be checked "
            f"({verdict.detail}) and the check is required",
            revoked=False,
        )
    log.warning(
        "the revocation status of %s's certificate could not be checked (%s); connecting "
        "anyway (soft-fail; --require-revocation-check refuses instead)",
        server,
        verdict.detail,
    )


class RevocationCheckingSocket(ssl.SSLSocket):
    """An SSLSocket that checks the server's revocation once its handshake completed."""

    revocation_policy: RevocationPolicy
    revocation_issuers: tuple[x509.Certificate, ...]

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        der = self.getpeercert(binary_form=True)
        if der is None or self.server_side:
            return
        try:
            check_server(
                der,
                self.revocation_issuers,
                self.revocation_policy,
                server=self.server_hostname or "the server",
            )
        except ServerRevocationError:
            self.close()
            raise


def with_revocation_check(
    context: ssl.SSLContext, issuers: Sequence[x509.Certificate], policy: RevocationPolicy
) -> ssl.SSLContext:
    """``context``, its sockets checking the server's revocation after each handshake."""
    attributes: dict[str, Any] = {
        "revocation_policy": policy,
        "revocation_issuers": tuple(issuers),
    }
    context.sslsocket_class = type(
        "ConfiguredRevocationCheckingSocket", (RevocationCheckingSocket,), attributes
    )
    return context
