"""TLS credentials on disk: an encrypted key, its certificate chain and a trust anchor.

A credential directory holds key.pem (encrypted PKCS#8, 0600), cert.pem (the certificate
followed by any intermediates) and ca.pem (the trust anchors for the peer). The CA system
writes one for each CA-client (`ztpki ca add-client`); the node keeps one as its server
identity. ssl contexts are built here so that every TLS edge uses the same settings.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from ztpki.errors import ConfigurationError, MalformedInput
from ztpki.pki.keys import PrivateKey, decode_pkcs8, encode_pkcs8_pem, keys_match
from ztpki.pki.pbes2 import AT_REST_KDF_ROUNDS
from ztpki.pki.pem import certificates_pem, load_certificates_pem
from ztpki.secretfiles import write_private_file, write_public_file
from ztpki.throttle import LogThrottle

KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
TRUST_FILE = "ca.pem"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credential:
    """A private key with its certificate chain, and the anchors that verify the peer."""

    key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]
    trust_anchors: tuple[x509.Certificate, ...]

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    def save(self, directory: Path, *, passphrase: bytes | None) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # A credential lives on disk for years and travels (to a factory line, a node): its
        # key gets the work factor of a CA key, not cryptography's 2,048 rounds.
        key_pem = encode_pkcs8_pem(self.key, passphrase=passphrase, kdf_rounds=AT_REST_KDF_ROUNDS)
        write_private_file(directory / KEY_FILE, key_pem)
        write_public_file(directory / CERT_FILE, certificates_pem(self.chain))
        write_public_file(directory / TRUST_FILE, certificates_pem(self.trust_anchors))

    @classmethod
    def load(
        cls, directory: Path, *, passphrase: bytes | None, passphrase_source: str | None = None
    ) -> Credential:
        """The credential in directory; passphrase_source names where the passphrase comes
        from (e.g. "--client-passphrase-file or ZTPKI_CLIENT_PASSPHRASE"), for the error."""
        try:
            key_bytes = (directory / KEY_FILE).read_bytes()
            chain = load_certificates_pem((directory / CERT_FILE).read_bytes())
            anchors = load_certificates_pem((directory / TRUST_FILE).read_bytes())
        except OSError as exc:
            raise ConfigurationError(
                f"credential directory {directory} is incomplete: {exc.strerror} ({exc.filename})"
            ) from None
        except MalformedInput as exc:
            raise ConfigurationError(f"credential directory {directory}: {exc.message}") from None
        try:
            key = decode_pkcs8(key_bytes, passphrase=passphrase)
        except MalformedInput:
            source = f" ({passphrase_source})" if passphrase_source else ""
            raise ConfigurationError(
                f"cannot open the key in {directory}: wrong or missing passphrase{source}"
            ) from None
        if not chain or not keys_match(key, chain[0].public_key()):
            # ssl would only say KEY_VALUES_MISMATCH, deep inside a service's start-up.
            raise ConfigurationError(
                f"credential directory {directory}: {KEY_FILE} does not belong to the first "
                f"certificate in {CERT_FILE}; write the key and certificate of one credential "
                "there (ztpki ca add-client --out DIR --force issues a new one)"
            )
        return cls(key=key, chain=tuple(chain), trust_anchors=tuple(anchors))


def load_identity(
    context: ssl.SSLContext, key: PrivateKey, chain: Sequence[x509.Certificate]
) -> None:
    """Make context present key and chain. On a context already serving, every handshake
    after the call presents the new identity; connections already open keep theirs."""
    # ssl loads keys only from files. Where the kernel offers anonymous in-memory files the
    # key goes there: it never reaches a disk (or a device's flash), and no passphrase has
    # to be derived twice per TLS context. Elsewhere: an encrypted temporary file.
    try:
        _load_identity_from_memory(context, key, chain)
    except _NoMemoryFiles:
        _load_identity_from_disk(context, key, chain)


class _NoMemoryFiles(Exception):
    pass


def _load_identity_from_memory(
    context: ssl.SSLContext, key: PrivateKey, chain: Sequence[x509.Certificate]
) -> None:
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None or not Path("/proc/self/fd").is_dir():
        raise _NoMemoryFiles
    descriptors: list[int] = []
    try:
        paths = []
        for name, data in (
            ("ztpki-cert", certificates_pem(chain)),
            ("ztpki-key", encode_pkcs8_pem(key, passphrase=None)),
        ):
            fd = memfd_create(name, os.MFD_CLOEXEC)
            descriptors.append(fd)
            os.write(fd, data)
            paths.append(f"/proc/self/fd/{fd}")
        context.load_cert_chain(paths[0], paths[1])
    except OSError as exc:
        raise _NoMemoryFiles from exc
    finally:
        for fd in descriptors:
            os.close(fd)


def _load_identity_from_disk(
    context: ssl.SSLContext, key: PrivateKey, chain: Sequence[x509.Certificate]
) -> None:
    # An encrypted copy under a one-time password in a private temporary directory, loaded
    # and deleted at once.
    import secrets

    password = secrets.token_hex(16).encode()
    with tempfile.TemporaryDirectory(prefix="ztpki-tls-") as tmp:
        key_path = Path(tmp) / "key.pem"
        cert_path = Path(tmp) / "cert.pem"
        write_private_file(key_path, encode_pkcs8_pem(key, passphrase=password))
        write_public_file(cert_path, certificates_pem(chain))
        context.load_cert_chain(cert_path, key_path, password=password)


def _trust(context: ssl.SSLContext, anchors: Sequence[x509.Certificate]) -> None:
    context.load_verify_locations(cadata=certificates_pem(anchors).decode("ascii"))


def handshake_refusal(exc: ssl.SSLError) -> str:
    """Why a TLS handshake failed, as a short phrase (no key material is ever in it)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"client certificate refused: {exc.verify_message}"
    reason = (exc.reason or type(exc).__name__).lower().replace("_", " ")
    if "alert" in reason:
        return f"the client ended it with {reason}"
    return reason


def handshake_reason(exc: ssl.SSLError) -> str:
    """Why a TLS handshake failed, as a metric label: OpenSSL's verification message or
    reason code, both from fixed lists, so a stranger cannot grow the set of series."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message).lower()
    return (getattr(exc, "reason", None) or type(exc).__name__).lower()


# A stranger can repeat a refused handshake at no cost: its log lines come at a bounded rate,
# one kind per phrase (OpenSSL's fixed reason strings, so the kinds are bounded too).
_REFUSALS_LOG = LogThrottle(log)

HandshakeRefused = Callable[[ssl.SSLError], None]


def log_handshake_refusal(exc: ssl.SSLError) -> None:
    """Log why a TLS handshake was refused, at a bounded rate per reason."""
    phrase = handshake_refusal(exc)
    _REFUSALS_LOG.info(phrase, "TLS handshake failed: %s", phrase)


def _reporting_sslobject(on_refusal: HandshakeRefused) -> type[ssl.SSLObject]:
    class _RefusalReportingSSLObject(ssl.SSLObject):
        # asyncio closes a connection whose handshake failed without logging why (and
        # without sending the alert): a device with an expired or foreign certificate would
        # be refused with no trace at the server. Every ztpki TLS server reports it here.
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                # A peer that hangs up mid-handshake (a TCP health check): not a refusal.
                log.debug("TLS handshake abandoned by the client")
                raise
            except ssl.SSLError as exc:
                on_refusal(exc)
                raise

    return _RefusalReportingSSLObject


def server_context(
    key: PrivateKey,
    chain: Sequence[x509.Certificate],
    *,
    client_anchors: Sequence[x509.Certificate] | None,
    require_client_cert: bool = True,
    on_refusal: HandshakeRefused = log_handshake_refusal,
) -> ssl.SSLContext:
    """TLS 1.2+ server context; verifies client certificates against client_anchors.

    A refused handshake (old protocol, client certificate that does not verify) goes to
    ``on_refusal``: by default logged with its reason, at a bounded rate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.sslobject_class = _reporting_sslobject(on_refusal)
    load_identity(context, key, chain)
    if client_anchors:
        _trust(context, client_anchors)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(
    *,
    key: PrivateKey | None,
    chain: Sequence[x509.Certificate],
    server_anchors: Sequence[x509.Certificate],
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """TLS 1.2+ client context presenting key/chain and verifying the server."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    _trust(context, server_anchors)
    if key is not None:
        load_identity(context, key, chain)
    return context
