"""The customer node's configuration: one TOML file, ``node.toml``, in the node directory.

Layout of a node directory (``ztpki node init`` copies every input file into it, so the
directory alone is enough to run the node)::

    DIR/node.toml             this configuration
    DIR/node.sqlite           access-control register and audit trail
    DIR/trust/NN-*.pem        factory trust bundles (one per manufacturer)
    DIR/ca/<label>.pem        chain of the customer CA behind each EST label, issuing CA first
    DIR/server/cert.pem       the node's TLS server certificate (+ intermediates)
    DIR/server/key.pem        its key, encrypted (ZTPKI_NODE_PASSPHRASE)
    DIR/ca-client/            the second CA-client's credential (ZTPKI_CLIENT_PASSPHRASE)
    DIR/crl/*.pem             optional CRLs of the factory CAs

An optional ``[proxy]`` table names the TLS-terminating proxies (addresses or CIDRs) whose
client-certificate header the node's plain-HTTP proxy listener believes.

Relative paths in node.toml are relative to DIR.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from ztpki.errors import ConfigurationError, UnsupportedParameter
from ztpki.pki.keys import KeySpec
from ztpki.pki.names import SubjectFields
from ztpki.protocol.enrollment import EnrollmentParameters
from ztpki.secretfiles import write_public_file

NODE_FILE = "node.toml"
DB_FILE = "node.sqlite"
LABEL_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
DEFAULT_LABEL = "default"


def check_label(label: str) -> str:
    if not LABEL_PATTERN.fullmatch(label):
        raise ConfigurationError(
            f"EST label {label[:64]!r} must be 1-64 characters of A-Z a-z 0-9 . _ -"
        )
    return label


@dataclass(frozen=True)
class IssuingParameters:
    """What the node asks the customer CA system for; None means the CA system's default."""

    key_algorithm: KeySpec | None = None
    validity_days: int | None = None
    organization: str | None = None
    organizational_unit: str | None = None
    locality: str | None = None
    country: str | None = None
    email: str | None = None
    # Ask the CA system to encrypt the generated key (serverkeygen) under a one-time
    # passphrase, so it crosses the CA-system hop encrypted; the node decrypts it in memory
    # and hands plain PKCS#8 to the device inside TLS (RFC 7030 section 4.4.2).
    encrypt_key: bool = False

    def __post_init__(self) -> None:
        if self.validity_days is not None and self.validity_days <= 0:
            raise ConfigurationError("validity_days must be positive")
        try:
            SubjectFields(country=self.country)
            self.enrollment_parameters(encrypt_passphrase=None)
        except (UnsupportedParameter, ValueError, TypeError) as exc:
            raise ConfigurationError(f"issuing parameters are invalid: {exc}") from None

    def enrollment_parameters(self, *, encrypt_passphrase: bytes | None) -> EnrollmentParameters:
        return EnrollmentParameters(
            key_algorithm=self.key_algorithm,
            validity_days=self.validity_days,
            organization=self.organization,
            organizational_unit=self.organizational_unit,
            locality=self.locality,
            country=self.country,
            email=self.email,
            encrypt_private_key=encrypt_passphrase,
            include_ca_certificates=True,
        )

    def to_toml(self) -> dict[str, Any]:
        table: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            table[f.name] = value.value if isinstance(value, KeySpec) else value
        return table

    @classmethod
    def from_toml(cls, table: dict[str, Any]) -> IssuingParameters:
        key = table.get("key_algorithm")
        days = table.get("validity_days")
        return cls(
            key_algorithm=None if key is None else KeySpec.parse(str(key)),
            validity_days=None if days is None else int(days),
            organization=_optional_str(table, "organization"),
            organizational_unit=_optional_str(table, "organizational_unit"),
            locality=_optional_str(table, "locality"),
            country=_optional_str(table, "country"),
            email=_optional_str(table, "email"),
            encrypt_key=bool(table.get("encrypt_key", False)),
        )


def _optional_str(table: dict[str, Any], name: str) -> str | None:
    value = table.get(name)
    return None if value is None else str(value)


@dataclass(frozen=True)
class CALabel:
    """One EST label: which CA of the customer CA system issues under it, and how."""

    label: str
    chain: Path
    ca_name: str | None = None
    parameters: IssuingParameters = field(default_factory=IssuingParameters)
    # Accept device certificates with no extendedKeyUsage at all (some makers' birth
    # certificates have none); by default the node requires clientAuth in it.
    allow_no_eku: bool = False

    def to_toml(self) -> dict[str, Any]:
        table: dict[str, Any] = {"chain": str(self.chain)}
        if self.ca_name:
            table["ca_name"] = self.ca_name
        table["allow_no_eku"] = self.allow_no_eku
        table.update(self.parameters.to_toml())
        return table

    @classmethod
    def from_toml(cls, label: str, table: dict[str, Any]) -> CALabel:
        if "chain" not in table:
            raise ConfigurationError(f"[ca.{label}] needs chain = FILE (the CA's PEM chain)")
        own = ("chain", "ca_name", "allow_no_eku")
        params = {k: v for k, v in table.items() if k not in own}
        allow_no_eku = table.get("allow_no_eku", False)
        if not isinstance(allow_no_eku, bool):
            raise ConfigurationError(f"[ca.{label}] allow_no_eku must be true or false")
        return cls(
            label=check_label(label),
            chain=Path(str(table["chain"])),
            ca_name=_optional_str(table, "ca_name"),
            parameters=IssuingParameters.from_toml(params),
            allow_no_eku=allow_no_eku,
        )


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one slow or hostile client from holding the node."""

    max_body: int = 64 * 1024  # bytes of a request body (413 above)
    keepalive_timeout: float = 15.0  # idle connection, and a request's headers, must come by then
    handshake_timeout: float = 10.0  # TLS handshake
    body_timeout: float = 15.0  # to receive a whole request body
    lingering_time: float = 2.0  # after refusing a body unread, drain it this long, then close
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 64
    ca_timeout: float = 30.0  # one CA-system exchange, queueing for a connection included
    ca_pool_size: int = 4
    lease_seconds: float = 120.0  # an issuance lease; must outlast ca_timeout (twice, retries)
    retry_after: int = 5  # seconds advised to devices when the CA system is unavailable

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ConfigurationError(f"[limits] {f.name} must be positive")
        if self.lease_seconds < 2 * self.ca_timeout + 10:
            raise ConfigurationError(
                "[limits] lease_seconds must be at least twice ca_timeout plus 10 s, so that "
                "an issuance in flight (which may retry the CA system once) keeps its lease"
            )

    def to_toml(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_toml(cls, table: dict[str, Any]) -> Limits:
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(table) - set(known)
        if unknown:
            raise ConfigurationError(f"[limits] has unknown setting {sorted(unknown)[0]!r}")
        defaults = cls()
        values = {name: type(getattr(defaults, name))(value) for name, value in table.items()}
        return cls(**values)


DEFAULT_PROXY_HEADER = "X-SSL-Client-Cert"
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> Network:
    """One proxy address (a host) or CIDR block; host bits set in a CIDR are refused."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        raise ConfigurationError(
            f"trusted proxy {text[:64]!r} is not an IP address or CIDR block (e.g. 10.0.0.0/8)"
        ) from None


@dataclass(frozen=True)
class ProxyConfig:
    """Which TLS-terminating proxies may tell the node the client's certificate, and in which
    header. No trusted proxy (the default): the header is never believed."""

    trusted: tuple[Network, ...] = ()
    header: str = DEFAULT_PROXY_HEADER

    def __post_init__(self) -> None:
        if not _HEADER_NAME.fullmatch(self.header):
            raise ConfigurationError(
                f"[proxy] header {self.header[:64]!r} must be 1-64 characters of A-Z a-z 0-9 -"
            )

    def trusts(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)

    def to_toml(self) -> dict[str, Any]:
        return {"trusted": [str(n) for n in self.trusted], "header": self.header}

    @classmethod
    def from_toml(cls, table: dict[str, Any]) -> ProxyConfig:
        unknown = set(table) - {"trusted", "header"}
        if unknown:
            raise ConfigurationError(f"[proxy] has unknown setting {sorted(unknown)[0]!r}")
        trusted = table.get("trusted", [])
        if not isinstance(trusted, list):
            raise ConfigurationError('[proxy] trusted must be a list, e.g. ["10.0.0.0/8"]')
        return cls(
            trusted=tuple(parse_network(str(t)) for t in trusted),
            header=str(table.get("header", DEFAULT_PROXY_HEADER)),
        )


@dataclass(frozen=True)
class NodeConfig:
    """Everything `ztpki node serve` needs, as written in DIR/node.toml."""

    directory: Path
    ca_system: str
    ca_client: Path
    server_cert: Path
    server_key: Path
    trust: tuple[Path, ...]
    labels: tuple[CALabel, ...]
    default_label: str = DEFAULT_LABEL
    crls: tuple[Path, ...] = ()
    limits: Limits = field(default_factory=Limits)
    metrics: bool = True
    proxy: ProxyConfig = field(default_factory=ProxyConfig)

    def __post_init__(self) -> None:
        names = [ca.label for ca in self.labels]
        if len(set(names)) != len(names):
            raise ConfigurationError("node.toml names one EST label twice")
        if not self.trust:
            raise ConfigurationError("node.toml lists no factory trust bundle (trust = [...])")
        if self.labels and self.default_label not in names:
            raise ConfigurationError(
                f"default_label {self.default_label!r} has no [ca.{self.default_label}] table"
            )

    def path(self, relative: Path) -> Path:
        return relative if relative.is_absolute() else self.directory / relative

    @property
    def database(self) -> Path:
        return self.directory / DB_FILE

    def label(self, name: str | None) -> CALabel:
        wanted = name or self.default_label
        for ca in self.labels:
            if ca.label == wanted:
                return ca
        from ztpki.errors import UnknownCA

        known = ", ".join(ca.label for ca in self.labels) or "none"
        raise UnknownCA(f"this node has no EST label {wanted[:64]!r}; labels: {known}")

    def with_label(self, ca: CALabel) -> NodeConfig:
        from dataclasses import replace

        return replace(self, labels=(*self.labels, ca))

    def to_toml(self) -> dict[str, Any]:
        return {
            "node": {
                "ca_system": self.ca_system,
                "ca_client": str(self.ca_client),
                "server_cert": str(self.server_cert),
                "server_key": str(self.server_key),
                "trust": [str(p) for p in self.trust],
                "crl": [str(p) for p in self.crls],
                "default_label": self.default_label,
                "metrics": self.metrics,
            },
            "limits": self.limits.to_toml(),
            "proxy": self.proxy.to_toml(),
            "ca": {ca.label: ca.to_toml() for ca in self.labels},
        }

    def save(self) -> None:
        header = (
            "# ztpki customer node. Edit and restart `ztpki node serve` to apply.\n"
            "# [ca.<label>]: one table per EST label (/.well-known/est/<label>/...);\n"
            "# default_label is served at /.well-known/est/ as well.\n"
            "# [proxy] trusted: addresses/CIDRs of TLS-terminating proxies whose client\n"
            "# certificate header the proxy listener (`node serve --proxy-listen`) believes.\n"
        )
        write_public_file(
            self.directory / NODE_FILE, (header + tomli_w.dumps(self.to_toml())).encode()
        )

    @classmethod
    def load(cls, directory: Path) -> NodeConfig:
        path = directory / NODE_FILE
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigurationError(
                f"{directory} is not a node directory (no {NODE_FILE}); run `ztpki node init`"
            ) from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"cannot read {path}: {exc}") from None
        try:
            return cls._from_toml(directory, data)
        except (KeyError, TypeError, ValueError, UnsupportedParameter) as exc:
            raise ConfigurationError(f"{path} is invalid: {exc}") from None

    @classmethod
    def _from_toml(cls, directory: Path, data: dict[str, Any]) -> NodeConfig:
        node = data.get("node")
        if not isinstance(node, dict):
            raise ConfigurationError(f"{directory / NODE_FILE} has no [node] table")
        for required in ("ca_system", "ca_client", "server_cert", "server_key", "trust"):
            if required not in node:
                raise ConfigurationError(f"[node] in {directory / NODE_FILE} needs {required}")
        labels = tuple(
            CALabel.from_toml(str(label), table) for label, table in data.get("ca", {}).items()
        )
        return cls(
            directory=directory,
            ca_system=str(node["ca_system"]),
            ca_client=Path(str(node["ca_client"])),
            server_cert=Path(str(node["server_cert"])),
            server_key=Path(str(node["server_key"])),
            trust=tuple(Path(str(p)) for p in node["trust"]),
            crls=tuple(Path(str(p)) for p in node.get("crl", [])),
            default_label=str(node.get("default_label", DEFAULT_LABEL)),
            limits=Limits.from_toml(data.get("limits", {})),
            metrics=bool(node.get("metrics", True)),
            proxy=ProxyConfig.from_toml(data.get("proxy", {})),
            labels=labels,
        )
