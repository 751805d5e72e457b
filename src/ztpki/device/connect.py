"""Using the device's identity for its own secure connections, once customization is done.

``operational_ssl_context(memory)`` is the API a device application calls: an
``ssl.SSLContext`` for TLS clients that presents the operational key and certificate and
trusts the customer CA certificates the device received with them::

    from ztpki.device import DeviceMemory, operational_ssl_context

    context = operational_ssl_context(DeviceMemory.open(path))
    with socket.create_connection((host, 443)) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            ...

The context is built from the memory at the time of the call; after a renewal, build a new
one. :func:`connect` makes one HTTPS GET with it (``ztpki device connect``).
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509

from ztpki.credentials import client_context
from ztpki.device.memory import DeviceMemory, Phase
from ztpki.device.server_revocation import (
    RevocationPolicy,
    ServerRevocationError,
    with_revocation_check,
)
from ztpki.errors import (
    ConfigurationError,
    DeviceMemoryError,
    NotAuthenticated,
    PayloadTooLarge,
    Unavailable,
    VerificationFailed,
    ZtpkiError,
)
from ztpki.pki.keys import PrivateKey

SOFT_FAIL = RevocationPolicy()

__all__ = [
    "HTTPSResponse",
    "RevocationPolicy",
    "ServerRevocationError",
    "connect",
    "identity_ssl_context",
    "operational_ssl_context",
    "tls_client_context",
]

MAX_RESPONSE = 1024 * 1024


def tls_client_context(
    *,
    key: PrivateKey | None,
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
) -> ssl.SSLContext:
    """A TLS client context presenting ``key``/``chain`` and trusting exactly ``anchors``.

    An anchor may be an intermediate CA (a factory sub-CA, a pinned node CA): it is trusted
    as given, without the chain above it. Host names are checked.
    """
    if not anchors:
        raise ConfigurationError("no CA certificate is available to verify the server")
    context = client_context(key=key, chain=chain, server_anchors=anchors, check_hostname=True)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def identity_ssl_context(
    memory: DeviceMemory,
    *,
    server_anchors: Sequence[x509.Certificate] = (),
    revocation: RevocationPolicy | None = SOFT_FAIL,
) -> ssl.SSLContext:
    """A TLS client context with the device's current identity, whatever its phase.

    The server is verified with ``server_anchors`` plus the CA certificates stored with the
    identity (the customer CA certificates once customized), and its certificate's
    revocation is checked when it names a CRL distribution point or an OCSP responder
    (``revocation``: soft-fail by default, ``RevocationPolicy(require=True)`` hard-fails,
    None checks nothing; a revoked server is always refused).
    """
    identity = memory.identity()
    if identity.private_key is None or identity.certificate is None:
        raise DeviceMemoryError(
            f"device {memory.device_id} has no identity yet; manufacture and customize it first"
        )
    anchors = [*server_anchors, *identity.ca_certificates]
    if not anchors:
        raise ConfigurationError(
            "no CA certificate to verify the server with: customize the device first, or "
            "give the server's CA certificate"
        )
    chain = [identity.certificate, *(c for c in identity.ca_certificates if c.subject != c.issuer)]
    context = tls_client_context(key=identity.private_key, chain=chain, anchors=anchors)
    if revocation is not None:
        with_revocation_check(context, anchors, revocation)
    return context


def operational_ssl_context(
    memory: DeviceMemory,
    *,
    server_anchors: Sequence[x509.Certificate] = (),
    revocation: RevocationPolicy | None = SOFT_FAIL,
) -> ssl.SSLContext:
    """The TLS client context of the operational identity, trusting the customer CA.

    A server whose certificate its CA revoked is refused (``ServerRevocationError``, an
    ``ssl.SSLCertVerificationError``); see ``identity_ssl_context`` for ``revocation``.
    Raises ``DeviceMemoryError`` while the device still has its temporary identity.
    """
    if memory.phase is not Phase.CUSTOMIZED:
        raise DeviceMemoryError(
            f"device {memory.device_id} is {memory.phase}, not customized: it has no "
            "operational identity yet (run ztpki device activate)"
        )
    return identity_ssl_context(memory, server_anchors=server_anchors, revocation=revocation)


@dataclass(frozen=True)
class HTTPSResponse:
    status: int
    reason: str
    body: bytes


def connect(
    url: str,
    context: ssl.SSLContext,
    *,
    timeout: float = 30.0,
    max_body: int = MAX_RESPONSE,
) -> HTTPSResponse:
    """One HTTPS GET of ``url`` over ``context``; the body is read up to ``max_body`` bytes."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigurationError(f"{url[:200]!r} is not an https:// URL with a host")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = http.client.HTTPSConnection(
        parts.hostname, parts.port or 443, context=context, timeout=timeout
    )
    try:
        connection.request("GET", path, headers={"User-Agent": "ztpki-device"})
        response = connection.getresponse()
        body = response.read(max_body + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise _connection_error(exc, url) from None
    finally:
        connection.close()
    if len(body) > max_body:
        raise PayloadTooLarge(f"the answer from {url[:200]} is larger than {max_body} bytes")
    return HTTPSResponse(response.status, response.reason, body)


class ServerRefused(VerificationFailed):
    """The server's certificate is revoked (or its status unknown where a check is required)."""


def _connection_error(exc: BaseException, url: str) -> ZtpkiError:
    shown = url[:200]
    if isinstance(exc, ServerRevocationError):
        return ServerRefused(f"refused the server at {shown}: {exc.verify_message}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return VerificationFailed(
            f"the server at {shown} presented a certificate the device cannot verify: "
            f"{exc.verify_message}"
        )
    if isinstance(exc, ssl.SSLError) and "ALERT" in (exc.reason or "").upper():
        return NotAuthenticated(
            f"the server at {shown} refused the device's certificate ({exc.reason})"
        )
    if isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError | ssl.SSLEOFError):
        # TLS 1.3 checks the client certificate after the client finished its handshake,
        # and many servers then just close: silence right after the handshake means this.
        return NotAuthenticated(
            f"the server at {shown} closed the connection without an answer right after the "
            "TLS handshake: it most likely does not accept the device's certificate"
        )
    if isinstance(exc, socket.timeout | TimeoutError):
        return Unavailable(f"the server at {shown} did not answer in time")
    detail = str(exc) or exc.__class__.__name__
    return Unavailable(f"cannot reach {shown}: {detail[:200]}")
