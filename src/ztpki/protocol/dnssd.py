"""DNS-SD (RFC 6763) for ztpki: the service types, the TXT record and SRV ordering (RFC 2782).

A customer node announces its EST service as ``_ztpki-est._tcp`` and its CMP service as
``_ztpki-cmp._tcp`` (on the local link by mDNS, or in the site's DNS as SRV and TXT
records); ztpki devices look for EST. The TXT record carries, as RFC 6763
section 6 key=value strings::

    txtvers=1
    path=/.well-known/est[/label]     where the service is on that host and port
                                      (CMP: /.well-known/cmp[/p/label])
    ca=sha256:HEX                     the CA the node's certificate chains to: a hint only

A device never trusts a node because of its TXT record: it verifies the node with its own
anchors (factory CA or pinned CA). The ``ca`` hint only lets a device try first the nodes
whose announced CA it already trusts. Adding a service is one line of :data:`SERVICES`.

Sans-I/O: bytes and strings in, typed values out; randomness comes in as a function.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ztpki.errors import MalformedInput
from ztpki.pki.pem import parse_sha256_fingerprint

__all__ = [
    "EST_PATH",
    "SERVICES",
    "SERVICE_TYPES",
    "TXT_VERSION",
    "ServiceKind",
    "ServiceRecord",
    "decode_txt",
    "encode_txt",
    "order_records",
    "service_name",
]

TXT_VERSION = "1"
EST_PATH = "/.well-known/est"


@dataclass(frozen=True)
class ServiceKind:
    """One service a node announces: its DNS-SD type, its default path, and the prefix the
    path of a CA label goes under (``label_prefix/LABEL``)."""

    service_type: str
    path: str
    label_prefix: str

    def label_path(self, label: str | None) -> str:
        return f"{self.label_prefix}/{label}" if label else self.path


# The services a node announces, by kind; a new protocol is one line here.
SERVICES: Mapping[str, ServiceKind] = {
    "est": ServiceKind("_ztpki-est._tcp", EST_PATH, EST_PATH),
    "cmp": ServiceKind("_ztpki-cmp._tcp", "/.well-known/cmp", "/.well-known/cmp/p"),
}
SERVICE_TYPES: Mapping[str, str] = {kind: s.service_type for kind, s in SERVICES.items()}
_LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HOST = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*"
)
MAX_TXT_VALUE = 255  # one TXT string holds at most 255 octets (RFC 6763 section 6.1)


def service_name(kind: str, domain: str) -> str:
    """``_ztpki-est._tcp.DOMAIN.``: the name the SRV and TXT records of ``kind`` live at."""
    try:
        service = SERVICE_TYPES[kind]
    except KeyError:
        known = ", ".join(sorted(SERVICE_TYPES))
        raise ValueError(f"unknown service kind {kind!r} (known: {known})") from None
    domain = domain.strip().strip(".")
    return f"{service}.{domain}." if domain else f"{service}."


def _check_host(target: str) -> str:
    host = target.rstrip(".").lower()
    if not _HOST.fullmatch(host):
        raise MalformedInput(f"SRV target {target[:80]!r} is not a host name")
    return host


@dataclass(frozen=True)
class ServiceRecord:
    """One announced node: where it is (``target`` host name, ``port``, and the addresses
    the announcement or the DNS gave for the target), its RFC 2782 ``priority`` and
    ``weight``, the EST ``label`` of its path, and the ``ca_hint`` (64 hex digits or None)."""

    instance: str
    target: str
    port: int
    priority: int = 0
    weight: int = 0
    label: str | None = None
    ca_hint: str | None = None
    addresses: tuple[str, ...] = ()
    source: str = "dns"

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", _check_host(self.target))
        if not 0 < self.port < 65536:
            raise MalformedInput(f"service {self.instance[:80]!r}: port {self.port} is not 1-65535")
        for name, value in (("priority", self.priority), ("weight", self.weight)):
            if not 0 <= value < 65536:
                raise MalformedInput(
                    f"service {self.instance[:80]!r}: {name} {value} is not 0-65535"
                )


def encode_txt(
    *, label: str | None, ca_fingerprint: str | None, kind: str = "est"
) -> dict[str, str]:
    """The TXT key/value pairs of a node's announcement (no ``ca`` without a fingerprint)."""
    if label is not None and not _LABEL.fullmatch(label):
        raise ValueError(f"CA label {label[:64]!r} is not 1-64 characters of A-Z a-z 0-9 . _ -")
    pairs = {"txtvers": TXT_VERSION, "path": SERVICES[kind].label_path(label)}
    if ca_fingerprint is not None:
        pairs["ca"] = f"sha256:{parse_sha256_fingerprint(ca_fingerprint)}"
    return pairs


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def decode_txt(
    pairs: Mapping[bytes, bytes | None] | Mapping[str, str | None],
    *,
    kind: str = "est",
) -> tuple[str | None, str | None]:
    """(CA label or None, CA hint or None) from the TXT key/value pairs of an announcement.

    A path other than the service's (``/.well-known/est[/label]`` for EST,
    ``/.well-known/cmp[/p/label]`` for CMP), or a later ``txtvers``, is refused
    (MalformedInput: the device skips the record); an unreadable ``ca`` is only dropped,
    since the hint decides nothing.
    """
    values: dict[str, str | None] = {}
    for key, value in pairs.items():
        name = _text(key)
        if name is not None:
            # RFC 6763 section 6.4: keys are case-insensitive; the first one counts.
            values.setdefault(name.lower(), _text(value))
    version = values.get("txtvers")
    if version is not None and version != TXT_VERSION:
        raise MalformedInput(f"TXT txtvers={version[:10]!r} is not {TXT_VERSION}")
    service = SERVICES[kind]
    path = (values.get("path") or service.path).rstrip("/")
    if path == service.path:
        rest = ""
    elif path.startswith(service.label_prefix + "/"):
        rest = path[len(service.label_prefix) + 1 :]
        if not _LABEL.fullmatch(rest):
            raise MalformedInput(f"TXT path {path[:80]!r} does not end in one CA label")
    else:
        raise MalformedInput(f"TXT path {path[:80]!r} is not under {service.path}")
    hint = values.get("ca")
    try:
        ca = parse_sha256_fingerprint(hint) if hint else None
    except MalformedInput:
        ca = None
    return rest or None, ca


def order_records(
    records: Iterable[ServiceRecord],
    *,
    random: Callable[[], float],
    trusted_hints: Sequence[str] = (),
) -> list[ServiceRecord]:
    """The order to try ``records`` in: RFC 2782 (lowest priority first; within one priority
    a weighted random draw, ``random`` returning a float in [0, 1)).

    Among records of one priority, those whose ``ca_hint`` is in ``trusted_hints`` go first
    (a hint may only change which of equals is tried first, never skip one).
    """
    by_priority: dict[int, list[ServiceRecord]] = {}
    for record in records:
        by_priority.setdefault(record.priority, []).append(record)
    ordered: list[ServiceRecord] = []
    hinted = set(trusted_hints)
    for priority in sorted(by_priority):
        group = by_priority[priority]
        ordered += _weighted([r for r in group if r.ca_hint in hinted], random)
        ordered += _weighted([r for r in group if r.ca_hint not in hinted], random)
    return ordered


def _weighted(group: list[ServiceRecord], random: Callable[[], float]) -> list[ServiceRecord]:
    """RFC 2782's selection: zero weights first, then draw by running sums of the weights."""
    remaining = sorted(group, key=lambda r: r.weight != 0)
    ordered: list[ServiceRecord] = []
    while remaining:
        total = sum(r.weight for r in remaining)
        pick = min(int(random() * (total + 1)), total)
        running = 0
        for index, record in enumerate(remaining):
            running += record.weight
            if running >= pick:
                ordered.append(remaining.pop(index))
                break
    return ordered
