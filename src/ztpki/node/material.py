"""Load a node directory: every file read, every key decrypted, checked against each other
(``NodeMaterial``), before anything listens. ztpki.node.runtime runs what this loads.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from cryptography import x509

from ztpki.credentials import (
    Credential,
    HandshakeRefused,
    log_handshake_refusal,
    server_context,
)
from ztpki.errors import ConfigurationError, MalformedInput
from ztpki.node.authentication import AuthenticationModule, CustomerCA, FactoryTrust
from ztpki.node.config import NodeConfig
from ztpki.node.enrollment import LoadedLabel
from ztpki.node.factory_crls import (
    FactoryRevocation,
    no_crl_warning,
    resolve,
    static_locations,
)
from ztpki.node.manufacturers import LoadedManufacturer, check_distinct_trust
from ztpki.pki.keys import PrivateKey, decode_pkcs8, keys_match
from ztpki.pki.pem import load_certificates_pem

log = logging.getLogger(__name__)


def read_certificates(path: Path, what: str) -> list[x509.Certificate]:
    try:
        return load_certificates_pem(path.read_bytes())
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc.strerror}") from None
    except MalformedInput:
        raise ConfigurationError(f"{what} {path} holds no valid PEM certificate") from None


def read_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read CRL {path}: {exc.strerror}") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise ConfigurationError(f"{path} is not a PEM or DER CRL") from None


CLIENT_KEY_OPTIONS = "--client-passphrase-file or ZTPKI_CLIENT_PASSPHRASE"


def read_server_key(path: Path, *, passphrase: bytes | None) -> PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the node's server key {path}: {exc.strerror}"
        ) from None
    try:
        return decode_pkcs8(data, passphrase=passphrase)
    except MalformedInput:
        raise ConfigurationError(
            f"cannot open the node's server key {path}: wrong or missing passphrase "
            "(--passphrase-file or ZTPKI_NODE_PASSPHRASE)"
        ) from None


@dataclass(frozen=True)
class NodeMaterial:
    """The node's configuration with every file loaded and every key decrypted."""

    config: NodeConfig
    authentication: AuthenticationModule
    labels: dict[str, LoadedLabel]
    server_key: PrivateKey = field(repr=False)
    server_chain: tuple[x509.Certificate, ...]
    credential: Credential | None = field(repr=False)
    factory_crls: FactoryRevocation | None = field(default=None, repr=False)

    def ssl_context(self, *, on_refusal: HandshakeRefused | None = None) -> ssl.SSLContext:
        """``on_refusal``: told of each handshake the TLS layer refuses (default: logged)."""
        context = server_context(
            self.server_key,
            self.server_chain,
            client_anchors=self.authentication.tls_trust_store(),
            require_client_cert=False,
            on_refusal=on_refusal or log_handshake_refusal,
        )
        if self.authentication.partial_chain:
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        # No TLS 1.3 session tickets: devices open a fresh connection per identity and never
        # resume, so the tickets cost about 0.3 ms of server CPU per handshake for nothing
        # (and a resumed session would skip the client chain check of a full handshake).
        context.num_tickets = 0
        return context


def load_manufacturers(config: NodeConfig) -> list[LoadedManufacturer]:
    loaded = [
        LoadedManufacturer(
            maker,
            tuple(
                read_certificates(
                    config.path(maker.trust), f"trust bundle of manufacturer {maker.name}"
                )
            ),
        )
        for maker in config.manufacturers
    ]
    check_distinct_trust(loaded)  # also a node.toml edited by hand
    return loaded


def factory_trust(makers: list[LoadedManufacturer]) -> FactoryTrust:
    return FactoryTrust.from_manufacturers([(m.name, m.bundle) for m in makers])


def load_labels(config: NodeConfig) -> dict[str, LoadedLabel]:
    return {
        ca.label: LoadedLabel(
            ca, tuple(read_certificates(config.path(ca.chain), f"CA chain of EST label {ca.label}"))
        )
        for ca in config.labels
    }


def load_material(
    config: NodeConfig,
    *,
    node_passphrase: bytes | None,
    client_passphrase: bytes | None,
    load_credential: bool = True,
) -> NodeMaterial:
    if not config.labels:
        raise ConfigurationError(
            "node.toml has no [ca.<label>] table: the node has no CA to issue from"
        )
    labels = load_labels(config)
    makers = load_manufacturers(config)
    authentication = AuthenticationModule(
        factory_trust(makers),
        [CustomerCA(name, loaded.chain) for name, loaded in labels.items()],
    )
    factory_crls = factory_revocation(config, makers)
    key = read_server_key(config.path(config.server_key), passphrase=node_passphrase)
    chain = tuple(read_certificates(config.path(config.server_cert), "server certificate"))
    if not keys_match(key, chain[0].public_key()):
        raise ConfigurationError("the node's server key does not match its server certificate")
    credential = None
    if load_credential:
        credential = Credential.load(
            config.path(config.ca_client),
            passphrase=client_passphrase,
            passphrase_source=CLIENT_KEY_OPTIONS,
        )
    return NodeMaterial(config, authentication, labels, key, chain, credential, factory_crls)


def factory_revocation(config: NodeConfig, makers: list[LoadedManufacturer]) -> FactoryRevocation:
    """The factory CRLs the node checks temporary certificates against (not fetched yet)."""
    bundles = [(m.name, m.bundle) for m in makers]
    files = [(str(config.path(p)), read_crl(config.path(p))) for p in config.crls]
    static = static_locations(files, bundles)
    return FactoryRevocation(
        bundles,
        locations={
            m.name: [*(resolve(config.directory, c) for c in m.config.crl), *static[m.name]]
            for m in makers
        },
        refresh={m.name: timedelta(minutes=m.config.crl_refresh_minutes) for m in makers},
        fail_open={m.name: m.config.fail_open for m in makers},
    )


def crl_warnings(config: NodeConfig, only: str | None = None) -> list[str]:
    """One warning per manufacturer (or only that one) whose recalls the node would hear of
    only through its certificates' distribution points."""
    unconfigured = factory_revocation(config, load_manufacturers(config)).unconfigured()
    return [no_crl_warning(name) for name in unconfigured if only in (None, name)]
