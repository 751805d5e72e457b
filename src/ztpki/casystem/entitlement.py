"""Which CAs and names each CA-client may ask for (invariant 6: trust by entitlement).

Being registered lets a CA-client connect; its entitlement says what it may then ask:

- ``cas``: the CAs it may use. None unless named, the default CA included.
- ``device_ids``: fnmatch-style patterns, case-sensitive like the ids: ``*`` stands for any
  run of characters, ``?`` for one (``ACME-*``; ``*`` alone: any device id).
- ``dns_names`` (server-profile CAs): a name matches itself, case-insensitively; a pattern
  ``*.node.example.com`` matches exactly one more label in front (``a.node.example.com``, not
  ``node.example.com`` nor ``a.b.node.example.com``), as a TLS wildcard does (RFC 6125).
- ``ip_ranges`` (server-profile CAs): CIDR ranges; a bare address is that one address.

Pure functions: the issuer's plan calls ``authorize`` on every request, the CLI builds and
changes entitlements with ``build_entitlement`` and ``change_entitlement``.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Sequence
from enum import StrEnum

from ztpki.errors import ConfigurationError, NotAuthorized
from ztpki.store.records import ClientEntitlement

_DEVICE_ID_PATTERN = re.compile(r"[A-Za-z0-9._*?\-]{1,64}")
_LABEL = r"[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# A wildcard stands in front of at least two labels: `*.com` would be everybody's.
_DNS_WILDCARD = re.compile(rf"\*\.({_LABEL}(?:\.{_LABEL})+)")
ANY_DEVICE = "*"


class NotEntitled(NotAuthorized):
    """A registered CA-client asked for something its entitlement or the CA's policy rules
    do not give it. The message names what was refused, never what else exists."""


class ChangeMode(StrEnum):
    """How `ztpki ca set-client` applies the lists it is given."""

    REPLACE = "replace"  # each list given replaces that list; lists not given stay
    ADD = "add"
    REMOVE = "remove"


def check_device_id_pattern(pattern: str) -> str:
    if not _DEVICE_ID_PATTERN.fullmatch(pattern):
        raise ConfigurationError(
            f"device-id pattern {pattern[:64]!r} must be 1-64 characters of A-Z a-z 0-9 . _ - "
            "and the wildcards * and ?"
        )
    return pattern


def check_dns_pattern(pattern: str) -> str:
    name = pattern.lower().rstrip(".")
    if len(name) > 253 or not (_DNS_NAME.fullmatch(name) or _DNS_WILDCARD.fullmatch(name)):
        raise ConfigurationError(
            f"DNS pattern {pattern[:64]!r} must be a host name (node1.example.com) or a "
            "wildcard for one label in front of at least two (*.node.example.com)"
        )
    return name


def check_ip_range(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError:
        raise ConfigurationError(
            f"IP range {text[:64]!r} is not an address or a CIDR range with no host bits set "
            "(such as 192.0.2.10, 10.1.0.0/16 or 2001:db8::/48)"
        ) from None


def check_client_ip_range(text: str) -> str:
    """An IP range a CA-client may be entitled to: never every address (/0), as no DNS
    pattern may be a bare ``*``."""
    network = check_ip_range(text)
    if network.endswith("/0"):
        raise ConfigurationError(
            f"IP range {text[:64]!r} would let the CA-client ask for any address; name the "
            "addresses or ranges its servers use (such as 192.0.2.10 or 10.1.0.0/16)"
        )
    return network


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def build_entitlement(
    *,
    cas: Sequence[str] = (),
    device_ids: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ip_ranges: Sequence[str] = (),
) -> ClientEntitlement:
    """A checked entitlement; no device-id pattern means any device id (``*``)."""
    return ClientEntitlement(
        cas=_unique(cas),
        device_ids=_unique(check_device_id_pattern(p) for p in device_ids) or (ANY_DEVICE,),
        dns_names=_unique(check_dns_pattern(p) for p in dns_names),
        ip_ranges=_unique(check_client_ip_range(r) for r in ip_ranges),
    )


def change_entitlement(
    current: ClientEntitlement | None,
    change: ClientEntitlement,
    *,
    given: frozenset[str],
    mode: ChangeMode,
) -> ClientEntitlement:
    """``current`` with the lists named in ``given`` (field names) replaced, added to or
    removed from by ``change``'s. A client without one starts from nothing (no CA)."""
    base = current or ClientEntitlement()
    fields: dict[str, tuple[str, ...]] = {}
    for name in ("cas", "device_ids", "dns_names", "ip_ranges"):
        old: tuple[str, ...] = getattr(base, name)
        new: tuple[str, ...] = getattr(change, name)
        if name not in given:
            fields[name] = old
        elif mode is ChangeMode.REPLACE:
            fields[name] = new
        elif mode is ChangeMode.ADD:
            fields[name] = _unique((*old, *new))
        else:
            fields[name] = tuple(v for v in old if v not in new)
    return ClientEntitlement(**fields)


def device_id_allowed(patterns: Iterable[str], device_id: str) -> bool:
    return any(fnmatch.fnmatchcase(device_id, p) for p in patterns)


def dns_name_allowed(patterns: Iterable[str], name: str) -> bool:
    name = name.lower().rstrip(".")
    for pattern in patterns:
        if pattern.startswith("*."):
            label, _, rest = name.partition(".")
            if label and rest == pattern[2:]:
                return True
        elif name == pattern:
            return True
    return False


def ip_allowed(ranges: Iterable[str], address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(r) for r in ranges)


def authorize(
    client: str,
    entitlement: ClientEntitlement,
    *,
    ca_name: str,
    device_id: str,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> None:
    """Raise NotEntitled naming the first thing ``client`` may not ask for."""
    if ca_name not in entitlement.cas:
        raise NotEntitled(f"CA-client {client} may not use CA {ca_name!r}")
    if not device_id_allowed(entitlement.device_ids, device_id):
        raise NotEntitled(f"CA-client {client} may not name device id {device_id!r}")
    for name in dns_names:
        if not dns_name_allowed(entitlement.dns_names, name):
            raise NotEntitled(f"CA-client {client} may not ask for DNS name {name!r}")
    for address in ip_addresses:
        if not ip_allowed(entitlement.ip_ranges, address):
            raise NotEntitled(f"CA-client {client} may not ask for IP address {address!r}")


__all__ = [
    "ANY_DEVICE",
    "ChangeMode",
    "NotEntitled",
    "authorize",
    "build_entitlement",
    "change_entitlement",
    "check_client_ip_range",
    "check_device_id_pattern",
    "check_dns_pattern",
    "check_ip_range",
    "device_id_allowed",
    "dns_name_allowed",
    "ip_allowed",
]
