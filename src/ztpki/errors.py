"""The one exception tree of ztpki.

Every error carries a machine-readable ``code`` (the XML protocol's error codes and the
EST adapter's table key) and a message a person can act on. Messages never contain key
material, passphrases or device secrets. Adapters map classes to wire status in exactly
one table each (``casystem.service`` for XML, ``node.http`` for HTTP).
"""

from __future__ import annotations

import os
import socket


class ZtpkiError(Exception):
    """Root of every error ztpki raises on purpose."""

    code = "internal"
    # The HTTP status of the peer's refusal this error reports, when a peer refused: a 4xx
    # is the peer's final word on that request, where a network error leaves it open.
    refused_with: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedInput(ZtpkiError):
    """Bytes that do not parse: bad XML, base64, DER, PEM, CSR signature."""

    code = "malformed"


class UnsupportedParameter(ZtpkiError):
    """A well-formed request asking for something policy does not allow."""

    code = "unsupported-parameter"


class UnknownCA(ZtpkiError):
    """A request names a CA the CA system does not hold."""

    code = "unknown-ca"


class NotAuthenticated(ZtpkiError):
    """No client certificate, or one that does not chain to a trusted anchor."""

    code = "not-authenticated"


class NotAuthorized(ZtpkiError):
    """Authenticated, but the register or policy refuses this request."""

    code = "not-authorized"


class UnknownCertificate(ZtpkiError):
    """A revocation names a certificate (serial, or a device's live one) the CA never issued."""

    code = "unknown-certificate"


class PayloadTooLarge(ZtpkiError):
    """A body or frame larger than the configured limit."""

    code = "too-large"


class Unavailable(ZtpkiError):
    """A dependency (the CA system, the database) cannot answer now; retry later."""

    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigurationError(ZtpkiError):
    """A missing or inconsistent file, directory, passphrase or setting."""

    code = "configuration"


class ListenFailed(ConfigurationError):
    """The OS refused a listening socket (port in use, address not local...)."""

    def __init__(self, host: str, port: int, exc: OSError) -> None:
        # asyncio's create_server wraps the OS error in its own words; the OS's reason is
        # what the operator needs ("address already in use").
        if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
            reason = os.strerror(exc.errno)
        else:
            reason = exc.strerror or str(exc)
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(f"cannot listen on {where}: {reason[:1].lower()}{reason[1:]}")


class StorageError(ZtpkiError):
    """The database refused or failed an operation."""

    code = "internal"


class DeviceMemoryError(ZtpkiError):
    """The device memory (93) is corrupt, unreadable or cannot be written."""

    code = "device-memory"


class VerificationFailed(ZtpkiError):
    """A signature, chain or answer does not verify."""

    code = "verification-failed"
