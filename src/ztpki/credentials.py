"""TLS credentials on disk: an encrypted key, its certificate chain and a trust anchor.

A credential directory holds key.pem (encrypted PKCS#8, 0600), cert.pem (the certificate
followed by any intermediates) and ca.pem (the trust anchors for the peer). A CA-client
whose key lives in a PKCS#11 token has key.toml (the key's URI and module, no PIN) instead
of key.pem; its handshakes are signed in the token (tokens.tls). The CA system
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
from typing import TYPE_CHECKING, TypeAlias

from cryptography import x509

from ztpki.errors import ConfigurationError, MalformedInput
from ztpki.pki.keys import PrivateKey, decode_pkcs8, encode_pkcs8_pem, keys_match
from ztpki.pki.pbes2 import AT_REST_KDF_ROUNDS
from ztpki.pki.pem import certificates_pem, load_certificates_pem
from ztpki.pki.signer import FILE_KEYS
from ztpki.secretfiles import write_private_file, write_public_file
from ztpki.throttle import LogThrottle

if TYPE_CHECKING:  # the PKCS#11 binding loads only for a credential whose key is in a token
    from ztpki.tokens import TokenKey

CredentialKey: TypeAlias = "PrivateKey | TokenKey"

KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
TRUST_FILE = "ca.pem"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credential:
    """A private key with its certificate chain, and the anchors that verify the peer."""

    key: CredentialKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]
    trust_anchors: tuple[x509.Certificate, ...]

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def file_key(self) -> PrivateKey:
        """The key, for the uses that need it in this process (signing manifests, serving
        TLS); ConfigurationError when it is in a token."""
        if isinstance(self.key, FILE_KEYS):
            return self.key
        raise ConfigurationError(
            f"this credential's key is in a PKCS#11 token ({self.key.location}); only a "
            "CA-client's TLS connection can use a token key: give a credential with key.pem"
        )

    def save(self, directory: Path, *, passphrase: bytes | None) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The key first: a refusal to write it (a link planted at key.pem) leaves no
        # certificate files behind.
        if isinstance(self.key, FILE_KEYS):
            # A credential lives on disk for years and travels (to a factory line, a node):
            # its key gets the work factor of a CA key, not cryptography's 2,048 rounds.
            key_pem = encode_pkcs8_pem(
                self.key, passphrase=passphrase, kdf_rounds=AT_REST_KDF_ROUNDS
            )
            write_private_file(directory / KEY_FILE, key_pem)
        else:
            from ztpki.casystem.token_keys import record_token_key

            record_token_key(directory, self.key)
        write_public_file(directory / CERT_FILE, certificates_pem(self.chain))
        write_public_file(directory / TRUST_FILE, certificates_pem(self.trust_anchors))

    @classmethod
    def load(
        cls, directory: Path, *, passphrase: bytes | None, passphrase_source: str | None = None
    ) -> Credential:
        """The credential in directory; passphrase_source names where the passphrase comes
        from (e.g. "--client-passphrase-file or ZTPKI_CLIENT_PASSPHRASE"), for the error.
        A key in a token is reached with ZTPKI_PKCS11_MODULE (else the recorded module) and
        ZTPKI_PKCS11_PIN (or the URI's pin-source file); the passphrase is not used."""
        from ztpki.casystem.token_keys import KEY_FILE as TOKEN_KEY_FILE

        in_token = (directory / TOKEN_KEY_FILE).exists()
        try:
            key_bytes = b"" if in_token else (directory / KEY_FILE).read_bytes()
            chain = load_certificates_pem((directory / CERT_FILE).read_bytes())
            anchors = load_certificates_pem((directory / TRUST_FILE).read_bytes())
        except OSError as exc:
            raise ConfigurationError(
                f"credential directory {directory} is incomplete: {exc.strerror} ({exc.filename})"
            ) from None
        except MalformedInput as exc:
            raise ConfigurationError(f"credential directory {directory}: {exc.message}") from None
        key: CredentialKey
        if in_token:
            key = _token_key(directory)
        else:
            try:
                key = decode_pkcs8(key_bytes, passphrase=passphrase)
            except MalformedInput:
                source = f" ({passphrase_source})" if passphrase_source else ""
                raise ConfigurationError(
                    f"cannot open the key in {directory}: wrong or missing passphrase{source}"
                ) from None
        if not chain or not keys_match(key, chain[0].public_key()):
            # ssl would only say KEY_VALUES_MISMATCH, deep inside a service's start-up.
            where = TOKEN_KEY_FILE if in_token else KEY_FILE
            raise ConfigurationError(
                f"credential directory {directory}: {where} does not belong to the first "
                f"certificate in {CERT_FILE}; write the key and certificate of one credential "
                "there (ztpki ca add-client --out DIR --force issues a new one)"
            )
        return cls(key=key, chain=tuple(chain), trust_anchors=tuple(anchors))


def _token_key(directory: Path) -> TokenKey:
    """The token key a credential's key.toml names, its token reached and the key found (a
    wrong PIN or a missing token fails here, before any connection)."""
    from ztpki.casystem.token_keys import TokenOptions, load_token_key
    from ztpki.tokens import TokenUnavailable

    try:
        key = load_token_key(directory, TokenOptions(pool_size=2))
    except TokenUnavailable as exc:
        raise ConfigurationError(
            f"the token holding the key of credential {directory} is not reachable: {exc.message}"
        ) from None
    assert key is not None
    return key


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
    key: CredentialKey | None,
    chain: Sequence[x509.Certificate],
    server_anchors: Sequence[x509.Certificate],
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """TLS 1.2+ client context presenting key/chain and verifying the server."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    _trust(context, server_anchors)
    if isinstance(key, FILE_KEYS):
        load_identity(context, key, chain)
    elif key is not None:
        from ztpki.tokens.tls import use_token_key

        use_token_key(context, key, chain)
    return context
