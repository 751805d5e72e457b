"""The device's customer node as an installer gives it: its address and the node CA it pins.

The device verifies the node with the factory CA certificate(s) it got on the line. A node
whose server certificate comes from another CA is trusted only under a pin: the SHA-256
fingerprint of that CA (``--node-ca-fingerprint``) and, when the installer has it, the CA
certificate itself (``--node-ca FILE``). With the certificate the device needs nothing from the
node but its own certificate; with the fingerprint alone it must find the CA among the
certificates the node sends.

All of it is stored in the device configuration (``config.json``) in one atomic write, so an
address never pairs with another node's pin::

    node_url              https://HOST:PORT[/label]
    node_ca_fingerprint   sha256:HEX of the pinned node CA (absent: no pin)
    node_ca_certificate   PEM of that CA, when the installer gave it
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from ztpki.errors import ConfigurationError, MalformedInput
from ztpki.pki.chain import is_ca_certificate
from ztpki.pki.pem import (
    certificate_pem,
    fingerprint_sha256,
    load_certificates_pem,
    parse_sha256_fingerprint,
)

__all__ = [
    "CONFIRMED_KEY",
    "NODE_CA_CERT_KEY",
    "NODE_CA_KEY",
    "NODE_URL_KEY",
    "NodeAddress",
    "NodePin",
    "choose_pin",
    "configured_node",
    "load_node_ca",
    "node_changes",
    "parse_fingerprint",
]

NODE_URL_KEY = "node_url"
NODE_CA_KEY = "node_ca_fingerprint"
NODE_CA_CERT_KEY = "node_ca_certificate"
CONFIRMED_KEY = "confirmed"  # the node took the installed identity as the live one
# The enrollment protocol ("est", "cmp") the installed identity was obtained with: renew and
# agent use it unless told otherwise (--protocol).
PROTOCOL_KEY = "protocol"

EST_PREFIX = "/.well-known/est"
_LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class NodeAddress:
    """Where the customer node's EST service is: ``https://HOST[:PORT][/label]``.

    ``addresses``: where to connect instead of resolving ``host`` (a discovered node: the
    addresses its announcement or the site's DNS gave); the node is still verified for
    ``host``.
    """

    host: str
    port: int = 443
    label: str | None = None
    addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigurationError("the node address has no host")
        if not 0 < self.port < 65536:
            raise ConfigurationError(f"node port {self.port} is not 1-65535")
        if self.label is not None and not _LABEL.fullmatch(self.label):
            raise ConfigurationError(
                f"CA label {self.label[:64]!r} is not 1-64 characters of A-Z a-z 0-9 . _ -"
            )

    @classmethod
    def parse(cls, url: str) -> NodeAddress:
        """Read ``https://HOST:PORT[/label]``; ``/.well-known/est`` in the path is accepted."""
        shown = url[:200]
        try:
            parts = urlsplit(url.strip())
            port = parts.port or 443
        except ValueError as exc:
            raise ConfigurationError(f"node address {shown!r} is not a URL: {exc}") from None
        if parts.scheme != "https":
            raise ConfigurationError(
                f"node address {shown!r} must start with https:// (EST runs over TLS only)"
            )
        if not parts.hostname or parts.username or parts.password:
            raise ConfigurationError(f"node address {shown!r} needs a host and no user name")
        if parts.query or parts.fragment:
            raise ConfigurationError(f"node address {shown!r} must not hold '?' or '#'")
        path = parts.path.rstrip("/")
        if path.startswith(EST_PREFIX):
            path = path[len(EST_PREFIX) :]
        segments = [s for s in path.split("/") if s]
        if len(segments) > 1:
            raise ConfigurationError(
                f"node address {shown!r}: the path may only name one CA label, as in "
                "https://node.example:8443/fleet"
            )
        return cls(parts.hostname, port, segments[0] if segments else None)

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def url(self, operation: str) -> str:
        """The URL of one EST operation (``cacerts``, ``simpleenroll``, ...)."""
        label = f"/{self.label}" if self.label else ""
        return f"{self.base}{EST_PREFIX}{label}/{operation}"

    def __str__(self) -> str:
        return self.base + (f"/{self.label}" if self.label else "")


def parse_fingerprint(text: str) -> str:
    """A pinned node CA's SHA-256 fingerprint -> 64 lower-case hex digits (any usual form)."""
    try:
        return parse_sha256_fingerprint(text)
    except MalformedInput as exc:
        raise ConfigurationError(f"fingerprint {exc.message}") from None


@dataclass(frozen=True)
class NodePin:
    """The node CA the device trusts instead of the factory CA: its SHA-256 fingerprint (64
    lower-case hex digits) and, when the installer gave it, the CA certificate itself."""

    fingerprint: str
    certificate: x509.Certificate | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", parse_fingerprint(self.fingerprint))
        cert = self.certificate
        if cert is None:
            return
        if not is_ca_certificate(cert):
            raise ConfigurationError(
                f"the node CA certificate ({cert.subject.rfc4514_string()[:200]}) is not a CA "
                "certificate: give the CA that issued the node's server certificate"
            )
        actual = fingerprint_sha256(cert)
        if actual != self.fingerprint:
            raise ConfigurationError(
                f"the node CA certificate ({cert.subject.rfc4514_string()[:200]}) has the "
                f"fingerprint sha256:{actual}, not the pinned sha256:{self.fingerprint}: one "
                "of the two is not the node's CA; check both with the node's operator"
            )

    @classmethod
    def given(
        cls, *, fingerprint: str | None, certificate: x509.Certificate | None
    ) -> NodePin | None:
        """The pin an installer gave: the certificate's own fingerprint when only it is
        given; with both, they must agree (ConfigurationError otherwise)."""
        if certificate is not None:
            return cls(fingerprint or fingerprint_sha256(certificate), certificate)
        return cls(fingerprint) if fingerprint else None

    @property
    def shown(self) -> str:
        return f"sha256:{self.fingerprint}"

    def describe(self) -> str:
        if self.certificate is None:
            return f"the pinned CA {self.shown}"
        return f"the pinned CA {self.certificate.subject.rfc4514_string()} ({self.shown})"


def load_node_ca(data: bytes, source: str) -> x509.Certificate:
    """The one CA certificate of a ``--node-ca`` file (PEM)."""
    try:
        certs = load_certificates_pem(data)
    except MalformedInput:
        raise ConfigurationError(f"{source} holds no PEM certificate") from None
    if len(certs) != 1:
        raise ConfigurationError(
            f"{source} holds {len(certs)} certificates; give the one node CA certificate the "
            "device pins"
        )
    return certs[0]


def configured_node(config: Mapping[str, Any]) -> tuple[NodeAddress | None, NodePin | None]:
    """The node address and pin stored in a device configuration (ConfigurationError when a
    stored value is unusable, e.g. a CA certificate that does not match the pinned fingerprint)."""
    url = config.get(NODE_URL_KEY)
    address = NodeAddress.parse(url) if isinstance(url, str) and url else None
    fingerprint = config.get(NODE_CA_KEY)
    pem = config.get(NODE_CA_CERT_KEY)
    certificate = None
    if isinstance(pem, str) and pem:
        certificate = load_node_ca(pem.encode("ascii", "replace"), f"{NODE_CA_CERT_KEY} in config")
    if not (isinstance(fingerprint, str) and fingerprint):
        if certificate is not None:
            raise ConfigurationError(
                f"the configuration holds a node CA certificate without {NODE_CA_KEY}; run "
                "ztpki device set-node again"
            )
        return address, None
    return address, NodePin(fingerprint, certificate)


def choose_pin(given: NodePin | None, configured: NodePin | None) -> NodePin | None:
    """The pin to use: the one given now wins; a fingerprint given alone keeps the stored CA
    certificate when it is the same pin."""
    if given is None:
        return configured
    if (
        given.certificate is None
        and configured is not None
        and configured.fingerprint == given.fingerprint
    ):
        return configured
    return given


def node_changes(address: NodeAddress, pin: NodePin | None) -> dict[str, str | None]:
    """The configuration changes that state the whole node: address and pin (None removes)."""
    cert = pin.certificate if pin is not None else None
    return {
        NODE_URL_KEY: str(address),
        NODE_CA_KEY: pin.shown if pin is not None else None,
        NODE_CA_CERT_KEY: certificate_pem(cert).decode("ascii") if cert is not None else None,
    }
