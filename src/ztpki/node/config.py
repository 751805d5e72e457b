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

Each ``[manufacturer.NAME]`` table is one manufacturer the customer buys from (NAME as its
manifests name it): its trust bundle, the device ids it may list (``device_ids``, patterns like
``ACME-*``; no two manufacturers' namespaces overlap) and, optionally, the fingerprints of the
manifest signers it signs with (``manifest_signers``; without them, any documentSigning
certificate under its bundle). A node.toml of an older ztpki lists bare
bundles in ``[node] trust``: it loads only for ``ztpki node add-manufacturer``, which turns
them into manufacturers one by one.

``ca_system`` is the customer CA system's address, HOST:PORT, or a list of the addresses of
several instances of it that share one store (tried in that order, failing over to the next
when one is down; ztpki.casystem.failover).

An optional ``[proxy]`` table says which TLS-terminating proxies may tell the node a client's
certificate (ztpki.node.proxy_config).

Relative paths in node.toml are relative to DIR.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from ztpki.errors import ConfigurationError, UnsupportedParameter
from ztpki.node.console.settings import ConsoleConfig
from ztpki.node.manufacturers import ManufacturerConfig, check_manufacturers
from ztpki.node.proxy_config import ProxyConfig
from ztpki.node.revocation_policy import RevocationPolicy as RevocationPolicy  # re-exported
from ztpki.pki.keys import KeySpec
from ztpki.pki.names import SubjectFields
from ztpki.protocol.enrollment import EnrollmentParameters
from ztpki.secretfiles import write_public_file
from ztpki.store.database_url import directory_database

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
    # and hands plain PKCS#8 to the device inside TLS (RFC 7030 section 4.4.2). The node now
    # always does (ca_client: a retried request gets its key back only so); the setting is
    # kept so that node.toml files that have it still load.
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


def _addresses(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigurationError(
        'ca_system must be "HOST:PORT" or a non-empty list of them, in order of preference'
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
    # Seconds a renewed device's previous certificate stays valid after the device first uses
    # the new one (None: the node-wide [revocation] superseded_grace_seconds).
    superseded_grace_seconds: float | None = None
    # CMP: grant implicitConfirm (RFC 9483 section 4.1.1) to a request asking for it: the
    # certificate counts as confirmed when sent, no certConf. Off: every delivery is confirmed.
    cmp_implicit_confirm: bool = False
    # CMP: accept MAC-based protection (RFC 9483 section 4.1.5) from a device the operator set
    # a shared secret for (`ztpki node set-cmp-secret`). Off: only signed messages.
    cmp_mac_protection: bool = False

    def __post_init__(self) -> None:
        if self.superseded_grace_seconds is not None and not self.superseded_grace_seconds >= 0:
            raise ConfigurationError(
                f"[ca.{self.label}] superseded_grace_seconds must be 0 or more"
            )

    def to_toml(self) -> dict[str, Any]:
        table: dict[str, Any] = {"chain": str(self.chain)}
        if self.ca_name:
            table["ca_name"] = self.ca_name
        table["allow_no_eku"] = self.allow_no_eku
        if self.superseded_grace_seconds is not None:
            table["superseded_grace_seconds"] = self.superseded_grace_seconds
        if self.cmp_implicit_confirm:
            table["cmp_implicit_confirm"] = True
        if self.cmp_mac_protection:
            table["cmp_mac_protection"] = True
        table.update(self.parameters.to_toml())
        return table

    @classmethod
    def from_toml(cls, label: str, table: dict[str, Any]) -> CALabel:
        if "chain" not in table:
            raise ConfigurationError(f"[ca.{label}] needs chain = FILE (the CA's PEM chain)")
        own = (
            "chain",
            "ca_name",
            "allow_no_eku",
            "superseded_grace_seconds",
            "cmp_implicit_confirm",
            "cmp_mac_protection",
        )
        params = {k: v for k, v in table.items() if k not in own}
        allow_no_eku = table.get("allow_no_eku", False)
        if not isinstance(allow_no_eku, bool):
            raise ConfigurationError(f"[ca.{label}] allow_no_eku must be true or false")
        implicit = table.get("cmp_implicit_confirm", False)
        if not isinstance(implicit, bool):
            raise ConfigurationError(f"[ca.{label}] cmp_implicit_confirm must be true or false")
        mac = table.get("cmp_mac_protection", False)
        if not isinstance(mac, bool):
            raise ConfigurationError(f"[ca.{label}] cmp_mac_protection must be true or false")
        grace = table.get("superseded_grace_seconds")
        return cls(
            label=check_label(label),
            chain=Path(str(table["chain"])),
            ca_name=_optional_str(table, "ca_name"),
            parameters=IssuingParameters.from_toml(params),
            allow_no_eku=allow_no_eku,
            superseded_grace_seconds=None if grace is None else float(grace),
            cmp_implicit_confirm=implicit,
            cmp_mac_protection=mac,
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
    # A CMP request whose issuance takes longer is answered ``waiting`` (RFC 9483 4.4): the
    # device polls while the issuance goes on.
    cmp_wait_seconds: float = 10.0

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


@dataclass(frozen=True)
class NodeConfig:
    """Everything `ztpki node serve` needs, as written in DIR/node.toml."""

    directory: Path
    # HOST:PORT, or the addresses of several instances of the CA system in order of
    # preference; always a tuple once built.
    ca_system: str | tuple[str, ...]
    ca_client: Path
    server_cert: Path
    server_key: Path
    manufacturers: tuple[ManufacturerConfig, ...]
    labels: tuple[CALabel, ...]
    default_label: str = DEFAULT_LABEL
    crls: tuple[Path, ...] = ()
    limits: Limits = field(default_factory=Limits)
    metrics: bool = True
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    revocation: RevocationPolicy = field(default_factory=RevocationPolicy)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    # Bare trust bundles of an older node.toml, still to be declared as manufacturers.
    legacy_trust: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        from ztpki.casystem.failover import parse_addresses

        if isinstance(self.ca_system, str):
            object.__setattr__(self, "ca_system", (self.ca_system,))
        object.__setattr__(self, "ca_system", tuple(str(a) for a in self.ca_system))
        parse_addresses(self.ca_systems)
        names = [ca.label for ca in self.labels]
        if len(set(names)) != len(names):
            raise ConfigurationError("node.toml names one EST label twice")
        check_manufacturers(self.manufacturers)
        if self.labels and self.default_label not in names:
            raise ConfigurationError(
                f"default_label {self.default_label!r} has no [ca.{self.default_label}] table"
            )
        if self.revocation.sender_lease <= self.limits.ca_timeout:
            # A sender's lease, renewed before each order, must outlast the order's exchange.
            raise ConfigurationError(
                "[revocation] sender_lease_seconds must be longer than [limits] ca_timeout "
                f"({self.limits.ca_timeout:g} s): a revocation is sent within its sender's lease"
            )

    @property
    def ca_systems(self) -> tuple[str, ...]:
        """The CA system's addresses, in the order they are tried."""
        assert isinstance(self.ca_system, tuple)  # __post_init__ made it one
        return self.ca_system

    def with_ca_systems(self, addresses: tuple[str, ...]) -> NodeConfig:
        from dataclasses import replace

        return replace(self, ca_system=addresses)

    def path(self, relative: Path) -> Path:
        return relative if relative.is_absolute() else self.directory / relative

    @property
    def database(self) -> Path | str:
        """The register: the URL of database.url (PostgreSQL), else node.sqlite."""
        return directory_database(self.directory, DB_FILE)

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

    def manufacturer(self, name: str) -> ManufacturerConfig:
        for maker in self.manufacturers:
            if maker.name == name:
                return maker
        known = ", ".join(repr(m.name) for m in self.manufacturers) or "none"
        raise ConfigurationError(
            f"{name[:128]!r} is not a manufacturer of this node (configured: {known}); "
            "declare it with `ztpki node add-manufacturer`"
        )

    def with_manufacturer(
        self, maker: ManufacturerConfig, *, replaces_legacy: tuple[Path, ...] = ()
    ) -> NodeConfig:
        from dataclasses import replace

        legacy = tuple(p for p in self.legacy_trust if p not in replaces_legacy)
        return replace(self, manufacturers=(*self.manufacturers, maker), legacy_trust=legacy)

    def check_manufacturers_declared(self) -> None:
        """ConfigurationError, naming the command that fixes it, unless every trust bundle
        belongs to a declared manufacturer and there is at least one."""
        if not self.legacy_trust:
            if not self.manufacturers:
                raise ConfigurationError(
                    f"{self.directory / NODE_FILE} declares no manufacturer: declare the "
                    f"ones the customer buys from with `ztpki node add-manufacturer --dir "
                    f"{self.directory} --manufacturer NAME --trust FILE --device-ids 'PATTERN'`"
                )
            return
        files = ", ".join(str(self.path(p)) for p in self.legacy_trust)
        raise ConfigurationError(
            f"{self.directory / NODE_FILE} lists factory trust bundles without a manufacturer "
            f"([node] trust: {files}); any of them could list any device. Declare each as a "
            f"manufacturer: `ztpki node add-manufacturer --dir {self.directory} --manufacturer "
            "NAME --trust FILE --device-ids 'PATTERN'` (NAME as its manifests name it, PATTERN "
            "its device ids, e.g. 'ACME-*'); see docs/node.md"
        )

    def to_toml(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "node": {
                # One address stays a string: the form every ztpki reads.
                "ca_system": (
                    self.ca_systems[0] if len(self.ca_systems) == 1 else list(self.ca_systems)
                ),
                "ca_client": str(self.ca_client),
                "server_cert": str(self.server_cert),
                "server_key": str(self.server_key),
                "crl": [str(p) for p in self.crls],
                "default_label": self.default_label,
                "metrics": self.metrics,
            },
            "manufacturer": {m.name: m.to_toml() for m in self.manufacturers},
            "limits": self.limits.to_toml(),
            "proxy": self.proxy.to_toml(),
            "revocation": self.revocation.to_toml(),
            "ca": {ca.label: ca.to_toml() for ca in self.labels},
        }
        if self.console != ConsoleConfig():
            document["console"] = self.console.to_toml()
        if self.legacy_trust:
            document["node"]["trust"] = [str(p) for p in self.legacy_trust]
        return document

    def save(self) -> None:
        header = (
            "# ztpki customer node. Edit and restart `ztpki node serve` to apply.\n"
            "# [manufacturer.NAME]: trust bundle, device_ids it may list, and optionally the\n"
            "# manifest_signers (SHA-256 fingerprints) whose manifests count.\n"
            "# [ca.<label>]: one table per EST label (/.well-known/est/<label>/...);\n"
            "# default_label is served at /.well-known/est/ as well.\n"
            "# [proxy]: the TLS-terminating proxies the proxy listener (`node serve\n"
            "# --proxy-listen`) believes; change it with `ztpki node set-proxy`.\n"
            "# [revocation]: the grace of a renewal's previous certificate, and how the\n"
            "# running node sends queued revocations (docs/node.md, Automatic revocation).\n"
        )
        write_public_file(
            self.directory / NODE_FILE, (header + tomli_w.dumps(self.to_toml())).encode()
        )

    @classmethod
    def load(cls, directory: Path, *, migrating: bool = False) -> NodeConfig:
        """The node's configuration. One of an older ztpki with bare trust bundles, or one
        without manufacturers, is refused with the command that fixes it, unless
        ``migrating`` (that command itself, and the commands that only read the register)."""
        config = cls._read(directory)
        if not migrating:
            config.check_manufacturers_declared()
        return config

    @classmethod
    def _read(cls, directory: Path) -> NodeConfig:
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
        for required in ("ca_system", "ca_client", "server_cert", "server_key"):
            if required not in node:
                raise ConfigurationError(f"[node] in {directory / NODE_FILE} needs {required}")
        labels = tuple(
            CALabel.from_toml(str(label), table) for label, table in data.get("ca", {}).items()
        )
        return cls(
            directory=directory,
            ca_system=_addresses(node["ca_system"]),
            ca_client=Path(str(node["ca_client"])),
            server_cert=Path(str(node["server_cert"])),
            server_key=Path(str(node["server_key"])),
            manufacturers=tuple(
                ManufacturerConfig.from_toml(str(name), table)
                for name, table in data.get("manufacturer", {}).items()
            ),
            legacy_trust=tuple(Path(str(p)) for p in node.get("trust", [])),
            crls=tuple(Path(str(p)) for p in node.get("crl", [])),
            default_label=str(node.get("default_label", DEFAULT_LABEL)),
            limits=Limits.from_toml(data.get("limits", {})),
            metrics=bool(node.get("metrics", True)),
            proxy=ProxyConfig.from_toml(data.get("proxy", {})),
            revocation=RevocationPolicy.from_toml(data.get("revocation", {})),
            console=ConsoleConfig.from_toml(data.get("console", {})),
            labels=labels,
        )
