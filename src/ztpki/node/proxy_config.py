"""The ``[proxy]`` table of node.toml: which TLS-terminating proxies may speak for a device.

A proxy is believed because of who it is, never only because of where it connects from
(architecture invariant 6). On a TCP proxy listener the proxy proves who it is with a TLS
client certificate that chains to ``ca`` (a CA file, or the proxy's own certificate), and
optionally is one of the pinned ``fingerprints``; its address must also be in ``trusted``,
as a second fence. On a Unix-socket proxy listener the socket's owner and mode (0660, group
``socket_group``) admit only the proxy's user; the kernel checks them at connect.

Trusted address ranges are kept narrow: /0 is refused always, and a prefix shorter than /24
(IPv4) or /48 (IPv6) only with ``allow_wide_range = true``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ztpki.errors import ConfigurationError, MalformedInput
from ztpki.pki.pem import parse_sha256_fingerprint

DEFAULT_PROXY_HEADER = "X-SSL-Client-Cert"
SOCKET_MODE = 0o660  # the node's user and the proxy's group; nobody else
WIDE_PREFIX = {4: 24, 6: 48}  # prefixes shorter than these need allow_wide_range
WIDE_OPTION = "--allow-wide-proxy-range"
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_GROUP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}|[0-9]{1,10}")
_KEYS = {"trusted", "header", "allow_wide_range", "ca", "fingerprints", "socket_group"}
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyValueError(ConfigurationError):
    """A proxy setting that is not a valid value (the CLI reports it as a usage error)."""


class ProxyRangeRefused(ProxyValueError):
    """A trusted proxy range that would let far more hosts than the proxies speak for devices."""

    code = "proxy-range-refused"


def parse_network(text: str, *, allow_wide: bool = False) -> Network:
    """One proxy address (a host) or CIDR block; host bits set in a CIDR are refused, and so
    are /0 always and wide blocks unless allow_wide."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        raise ProxyValueError(
            f"trusted proxy {text[:64]!r} is not an IP address or CIDR block (e.g. 10.1.0.0/24)"
        ) from None
    check_width(network, allow_wide=allow_wide)
    return network


def check_width(network: Network, *, allow_wide: bool) -> None:
    if network.prefixlen == 0:
        raise ProxyRangeRefused(
            f"trusted proxy {network} is every address: name the proxies' own addresses or "
            "their subnet instead"
        )
    narrowest = WIDE_PREFIX[network.version]
    if network.prefixlen < narrowest and not allow_wide:
        raise ProxyRangeRefused(
            f"trusted proxy {network} is wider than /{narrowest}: every host in it could speak "
            f"for devices; name the proxies' addresses, or give {WIDE_OPTION} "
            "(allow_wide_range = true under [proxy]) if only proxies you run live there"
        )


def parse_pin(text: str) -> str:
    try:
        return parse_sha256_fingerprint(text)
    except MalformedInput as exc:
        raise ProxyValueError(f"proxy fingerprint: {exc.message}") from None


@dataclass(frozen=True)
class ProxyConfig:
    """Who may tell the node a client's certificate, and in which header. The default trusts
    no proxy: a proxy listener cannot start."""

    trusted: tuple[Network, ...] = ()
    header: str = DEFAULT_PROXY_HEADER
    allow_wide_range: bool = False
    # PEM file (relative to the node directory): the CA(s) that issue the proxies' TLS client
    # certificates, or the proxies' own certificates.
    ca: Path | None = None
    fingerprints: tuple[str, ...] = ()  # SHA-256 hex of the only proxy certificates accepted
    socket_group: str | None = None  # group of a Unix-socket listener (default: the node's)

    def __post_init__(self) -> None:
        if not _HEADER_NAME.fullmatch(self.header):
            raise ProxyValueError(
                f"[proxy] header {self.header[:64]!r} must be 1-64 characters of A-Z a-z 0-9 -"
            )
        for network in self.trusted:
            check_width(network, allow_wide=self.allow_wide_range)
        if self.fingerprints and self.ca is None:
            # The TLS layer verifies the proxy's chain before the node sees a fingerprint.
            raise ProxyValueError(
                "[proxy] fingerprints need ca = FILE: the proxy's certificate itself or the CA "
                "that issued it (--proxy-ca)"
            )
        if self.socket_group is not None and not _GROUP_NAME.fullmatch(self.socket_group):
            raise ProxyValueError(
                f"[proxy] socket_group {self.socket_group[:64]!r} is not a group name or number"
            )

    def trusts(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)

    def to_toml(self) -> dict[str, Any]:
        table: dict[str, Any] = {"trusted": [str(n) for n in self.trusted], "header": self.header}
        if self.allow_wide_range:
            table["allow_wide_range"] = True
        if self.ca is not None:
            table["ca"] = str(self.ca)
        if self.fingerprints:
            table["fingerprints"] = [f"sha256:{f}" for f in self.fingerprints]
        if self.socket_group is not None:
            table["socket_group"] = self.socket_group
        return table

    @classmethod
    def from_toml(cls, table: dict[str, Any]) -> ProxyConfig:
        unknown = set(table) - _KEYS
        if unknown:
            raise ConfigurationError(f"[proxy] has unknown setting {sorted(unknown)[0]!r}")
        trusted = table.get("trusted", [])
        pins = table.get("fingerprints", [])
        if not isinstance(trusted, list) or not isinstance(pins, list):
            raise ConfigurationError(
                '[proxy] trusted and fingerprints must be lists, e.g. ["10.1.0.0/24"]'
            )
        allow_wide = table.get("allow_wide_range", False)
        if not isinstance(allow_wide, bool):
            raise ConfigurationError("[proxy] allow_wide_range must be true or false")
        ca = table.get("ca")
        group = table.get("socket_group")
        return cls(
            trusted=tuple(parse_network(str(t), allow_wide=allow_wide) for t in trusted),
            header=str(table.get("header", DEFAULT_PROXY_HEADER)),
            allow_wide_range=allow_wide,
            ca=None if ca is None else Path(str(ca)),
            fingerprints=tuple(parse_pin(str(p)) for p in pins),
            socket_group=None if group is None else str(group),
        )
