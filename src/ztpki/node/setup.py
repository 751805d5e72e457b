"""Creating a node directory, adding EST labels, and getting the node's server certificate.

``init_node`` copies every input file into the node directory (keys stay encrypted), so the
directory alone runs the node. ``request_server_cert`` enrolls the node's TLS server
certificate from the MANUFACTURER's CA system (a CA with the server profile): devices then
verify the node with the trust anchor they received at the factory, which is the two-way
authentication the patent asks for.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ztpki.casystem.client import CAClient, parse_address
from ztpki.casystem.failover import parse_addresses
from ztpki.casystem.token_keys import KEY_FILE as TOKEN_KEY_FILE
from ztpki.casystem.wire import LiveCertificateExists
from ztpki.credentials import CERT_FILE, KEY_FILE, TRUST_FILE, Credential
from ztpki.errors import ConfigurationError, MalformedInput
from ztpki.node.config import (
    DB_FILE,
    DEFAULT_LABEL,
    NODE_FILE,
    CALabel,
    IssuingParameters,
    Limits,
    NodeConfig,
    check_label,
)
from ztpki.node.factory_crls import check_static_crls
from ztpki.node.manufacturers import (
    LoadedManufacturer,
    ManufacturerConfig,
    check_distinct_trust,
)
from ztpki.node.material import crl_warnings, load_manufacturers, read_certificates, read_crl
from ztpki.node.proxy_setup import ProxySettings, prepare_proxy
from ztpki.pki.chain import is_ca_certificate
from ztpki.pki.keys import (
    KeySpec,
    PrivateKey,
    decode_pkcs8,
    encode_pkcs8_pem,
    generate_private_key,
    keys_match,
)
from ztpki.pki.pbes2 import AT_REST_KDF_ROUNDS
from ztpki.pki.pem import certificates_pem, fingerprint_sha256, load_certificate_der
from ztpki.pki.rollover import is_self_signed
from ztpki.protocol.enrollment import EnrollmentParameters, EnrollmentRequest
from ztpki.protocol.est import build_csr
from ztpki.secretfiles import write_private_file, write_public_file
from ztpki.store.database_url import check_database_url, record_database_url
from ztpki.store.sqlite import open_node_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InitResult:
    config: NodeConfig
    warnings: list[str] = field(default_factory=list)


def _copy_certificates(source: Path, target: Path, what: str) -> list[x509.Certificate]:
    certs = read_certificates(source, what)
    write_public_file(target, certificates_pem(certs))
    return certs


def _load_key_for_copy(path: Path, passphrase: bytes | None) -> PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the server key {path}: {exc.strerror}") from None
    for attempt in (passphrase, None):
        try:
            return decode_pkcs8(data, passphrase=attempt)
        except MalformedInput:
            continue
    raise ConfigurationError(
        f"cannot open the server key {path}: wrong passphrase (ZTPKI_NODE_PASSPHRASE or "
        "--passphrase-file) or not a PKCS#8 key"
    )


def _server_key_pem(key: PrivateKey, passphrase: bytes | None) -> bytes:
    # The node's TLS key stays on disk as long as its certificate: a CA key's work factor.
    return encode_pkcs8_pem(key, passphrase=passphrase, kdf_rounds=AT_REST_KDF_ROUNDS)


def _server_warnings(
    directory: Path,
    chain: Sequence[x509.Certificate],
    bundles: Sequence[Sequence[x509.Certificate]],
    served: Sequence[x509.Certificate],
) -> list[str]:
    """What would make devices refuse the node: no serverAuth, no chain to a factory bundle,
    and then (devices must pin the node's CA) a chain that leaves out the CA to pin.

    ``served`` are the certificates the node serves at cacerts: a device pinning by
    fingerprint finds the node's CA there too.
    """
    warnings = []
    try:
        eku = chain[0].extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
            warnings.append(
                "the server certificate lacks EKU serverAuth: TLS clients will refuse it"
            )
    except x509.ExtensionNotFound:
        pass
    trusted = {c.subject for bundle in bundles for c in bundle}
    if any(c.issuer in trusted for c in chain):
        return warnings
    warnings.append(
        "the server certificate does not chain to a configured factory trust bundle: devices "
        "cannot verify the node with their factory trust anchor; installers must pin the "
        "node's CA on each device (ztpki device set-node --node-ca FILE; see docs/node.md)"
    )
    leaf = chain[0]
    if leaf.issuer != leaf.subject and not any(
        c.subject == leaf.issuer for c in [*chain[1:], *served]
    ):
        issuer = leaf.issuer.rfc4514_string()
        served_file = directory / "server" / "cert.pem"
        warnings.append(
            f"the server certificate file holds the node's certificate without the CA "
            f"certificate that issued it ({issuer}), so the node will not send that CA: a "
            "device given only its fingerprint (--node-ca-fingerprint) cannot find it and "
            f"refuses the node. Append the CA certificate (PEM) to {served_file} "
            "and restart the node, or have installers give each device the CA certificate "
            "itself (ztpki device set-node --node-ca FILE)"
        )
    return warnings


def init_node(
    directory: Path,
    *,
    ca_system: str | Sequence[str],
    client_credential: Path,
    manufacturer: ManufacturerConfig,
    server_cert: Path,
    server_key: Path,
    node_passphrase: bytes | None,
    customer_chain: Path,
    label: str = DEFAULT_LABEL,
    ca_name: str | None = None,
    parameters: IssuingParameters | None = None,
    crls: Sequence[Path] = (),
    limits: Limits | None = None,
    proxy: ProxySettings | None = None,
    allow_no_eku: bool = False,
    database: str | None = None,
) -> InitResult:
    """Create a node directory from the operator's files; refuses an existing node.

    ``database``: a PostgreSQL URL for the register (created there when missing, or shared
    with the other nodes using it); the directory's SQLite file otherwise.
    """
    if (directory / NODE_FILE).exists():
        raise ConfigurationError(
            f"{directory}: a node directory exists already ({NODE_FILE}); edit it instead"
        )
    addresses = (ca_system,) if isinstance(ca_system, str) else tuple(ca_system)
    parse_addresses(addresses)
    check_label(label)
    if database is not None:
        check_database_url(database)
    prepared_proxy = prepare_proxy(proxy or ProxySettings())
    bundle = read_certificates(manufacturer.trust, f"trust bundle of {manufacturer.name}")
    bundles = [bundle]
    chain = read_certificates(customer_chain, "customer CA chain")
    if not is_ca_certificate(chain[0]):
        raise ConfigurationError(
            f"{customer_chain} must start with the issuing CA certificate (`ztpki ca export`)"
        )
    server_chain = read_certificates(server_cert, "server certificate")
    key = _load_key_for_copy(server_key, node_passphrase)
    if not keys_match(key, server_chain[0].public_key()):
        raise ConfigurationError(
            "--server-key does not belong to the first certificate of --server-cert"
        )
    credential = _read_credential(client_credential)
    # A CRL must come from a factory CA of these bundles (checked as the node will check it).
    check_static_crls([read_crl(p) for p in crls], [c for b in bundles for c in b])
    # Everything checked: now write.
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    trust_relative = Path("trust") / f"01-{manufacturer.trust.stem}.pem"
    write_public_file(directory / trust_relative, certificates_pem(bundle))
    ca_relative = Path("ca") / f"{label}.pem"
    write_public_file(directory / ca_relative, certificates_pem(chain))
    write_public_file(directory / "server" / "cert.pem", certificates_pem(server_chain))
    write_private_file(directory / "server" / "key.pem", _server_key_pem(key, node_passphrase))
    _write_credential(credential, directory / "ca-client")
    prepared_proxy.write(directory)
    crl_paths = []
    for index, path in enumerate(crls, start=1):
        relative = Path("crl") / f"{index:02d}-{path.name}"
        write_public_file(directory / relative, path.read_bytes())
        crl_paths.append(relative)
    config = NodeConfig(
        directory=directory,
        ca_system=addresses,
        ca_client=Path("ca-client"),
        server_cert=Path("server/cert.pem"),
        server_key=Path("server/key.pem"),
        manufacturers=(replace(manufacturer, trust=trust_relative),),
        crls=tuple(crl_paths),
        labels=(
            CALabel(
                label,
                ca_relative,
                ca_name,
                parameters or IssuingParameters(),
                allow_no_eku=allow_no_eku,
            ),
        ),
        default_label=label,
        limits=limits or Limits(),
        proxy=prepared_proxy.config,
    )
    if database is not None:
        open_node_store(database).close()  # reachable, and its schema is current
        record_database_url(directory, database, DB_FILE)
    open_node_store(config.database).close()
    config.save()
    warnings = _server_warnings(directory, server_chain, bundles, chain)
    return InitResult(config, [*warnings, *crl_warnings(config)])


# (the key's file name, its bytes), the certificate chain, the trust anchors
_Credential = tuple[tuple[str, bytes], list[x509.Certificate], list[x509.Certificate]]


def _read_credential(source: Path) -> _Credential:
    """The CA-client credential's files, checked but not decrypted (the key stays encrypted).
    A key in a token is its key.toml (URI and module), copied as it is."""
    name = TOKEN_KEY_FILE if (source / TOKEN_KEY_FILE).exists() else KEY_FILE
    try:
        key = (name, (source / name).read_bytes())
    except OSError as exc:
        raise ConfigurationError(
            f"{source} is not a CA-client credential (`ztpki ca add-client`): {exc.strerror}"
        ) from None
    certs = read_certificates(source / CERT_FILE, "CA-client certificate")
    anchors = read_certificates(source / TRUST_FILE, "CA-client trust anchor")
    return key, certs, anchors


def _write_credential(credential: _Credential, target: Path) -> None:
    (key_name, key), certs, anchors = credential
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private_file(target / key_name, key)
    write_public_file(target / CERT_FILE, certificates_pem(certs))
    write_public_file(target / TRUST_FILE, certificates_pem(anchors))


def add_label(
    directory: Path,
    *,
    label: str,
    customer_chain: Path,
    ca_name: str | None,
    parameters: IssuingParameters,
    allow_no_eku: bool = False,
) -> NodeConfig:
    """Serve one more CA of the customer CA system under /.well-known/est/<label>/."""
    config = NodeConfig.load(directory)
    check_label(label)
    if any(ca.label == label for ca in config.labels):
        raise ConfigurationError(f"EST label {label} exists already; edit node.toml to change it")
    chain = read_certificates(customer_chain, "customer CA chain")
    if not is_ca_certificate(chain[0]):
        raise ConfigurationError(f"{customer_chain} must start with the issuing CA certificate")
    relative = Path("ca") / f"{label}.pem"
    write_public_file(directory / relative, certificates_pem(chain))
    updated = config.with_label(
        CALabel(label, relative, ca_name, parameters, allow_no_eku=allow_no_eku)
    )
    updated.save()
    return updated


def update_label_chain(directory: Path, *, label: str, customer_chain: Path) -> Path:
    """Replace an EST label's CA chain, e.g. with the one `ztpki ca export` writes after the
    customer's root rolled its key over (the chain, then the new root and its link
    certificates). Every root the label served stays in it: devices that still trust an old
    root must keep finding it, to be answered with the rollover (CMP genm rootCaCert, EST
    cacerts). Restart `node serve` to apply."""
    config = NodeConfig.load(directory)
    found = [ca for ca in config.labels if ca.label == label]
    if not found:
        known = ", ".join(ca.label for ca in config.labels) or "none"
        raise ConfigurationError(f"no EST label {label} in {directory} (known: {known})")
    path = config.path(found[0].chain)
    chain = read_certificates(customer_chain, "customer CA chain")
    if not is_ca_certificate(chain[0]):
        raise ConfigurationError(f"{customer_chain} must start with the issuing CA certificate")
    served = read_certificates(path, f"CA chain of EST label {label}")
    dropped = [c for c in served if is_self_signed(c) and c not in chain]
    if dropped:
        raise ConfigurationError(
            f"{customer_chain} leaves out the root {dropped[0].subject.rfc4514_string()} that "
            f"label {label} serves now: devices trusting it could no longer follow a rollover. "
            "Export the chain again with `ztpki ca export` (after `ca rollover` it carries "
            "the old root and the link certificates), or add another CA with `node add-ca`"
        )
    write_public_file(path, certificates_pem(chain))
    return path


def set_ca_systems(directory: Path, addresses: Sequence[str]) -> NodeConfig:
    """Point the node at the CA system's instance(s), in order of preference (restart
    `node serve` to apply)."""
    config = NodeConfig.load(directory, migrating=True)
    parse_addresses(addresses)
    updated = config.with_ca_systems(tuple(addresses))
    updated.save()
    return updated


def add_manufacturer(directory: Path, manufacturer: ManufacturerConfig) -> NodeConfig:
    """Declare one more manufacturer (restart `node serve` to trust its devices).

    On a node.toml of an older ztpki this is the migration: a bundle given here whose
    certificates are those of a bare [node] trust bundle replaces it.
    """
    config = NodeConfig.load(directory, migrating=True)
    if any(m.name == manufacturer.name for m in config.manufacturers):
        raise ConfigurationError(
            f"manufacturer {manufacturer.name} exists already; edit node.toml to change it"
        )
    bundle = read_certificates(manufacturer.trust, f"trust bundle of {manufacturer.name}")
    replaced = tuple(
        p
        for p in config.legacy_trust
        if set(read_certificates(config.path(p), "factory trust bundle")) == set(bundle)
    )
    index = len(config.manufacturers) + len(config.legacy_trust) + 1
    relative = Path("trust") / f"{index:02d}-{manufacturer.trust.stem}.pem"
    while (directory / relative).exists():
        index += 1
        relative = Path("trust") / f"{index:02d}-{manufacturer.trust.stem}.pem"
    declared = replace(manufacturer, trust=relative)
    updated = config.with_manufacturer(declared, replaces_legacy=replaced)  # checks overlaps
    check_distinct_trust([*load_manufacturers(config), LoadedManufacturer(declared, tuple(bundle))])
    write_public_file(directory / relative, certificates_pem(bundle))
    updated.save()
    return updated


@dataclass(frozen=True)
class ServerCertificate:
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    anchor_fingerprint: str  # SHA-256 of the top of the chain: what installers can pin


async def request_server_cert(
    *,
    ca_address: str,
    credential: Credential,
    ca_name: str | None,
    name: str,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    out: Path,
    node_passphrase: bytes | None,
    key_spec: KeySpec = KeySpec.EC_P256,
    reissue: bool = False,
) -> ServerCertificate:
    """Enroll the node's server certificate over the XML protocol; the key never leaves here."""
    for address in ip_addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigurationError(f"--ip {address!r} is not an IP address") from None
    if not dns_names and not ip_addresses:
        raise ConfigurationError("give the node's names: --dns NAME and/or --ip ADDRESS")
    key = generate_private_key(key_spec)
    from cryptography.hazmat.primitives import serialization

    csr = build_csr(key, device_id=name).public_bytes(serialization.Encoding.DER)
    request = EnrollmentRequest(
        request_id=f"node-server-{secrets.token_hex(8)}",
        device_id=name,
        ca=ca_name,
        parameters=EnrollmentParameters(
            dns_names=tuple(dns_names), ip_addresses=tuple(ip_addresses)
        ),
        csr_der=csr,
        reissue=reissue,
    )
    client = CAClient(parse_address(ca_address), credential, pool_size=1)
    try:
        answer = await client.enroll(request)
    except LiveCertificateExists as exc:
        raise LiveCertificateExists(
            f"{name} already holds a live server certificate (the CA system says: "
            f"{exc.message}); to replace it, run this `ztpki node request-server-cert` "
            "command again with --reissue: the CA system then supersedes the live one"
        ) from None
    finally:
        await client.close()
    certificate = load_certificate_der(answer.certificate_der)
    chain = tuple(load_certificate_der(der) for der in answer.ca_certificates_der)
    write_private_file(out / "key.pem", _server_key_pem(key, node_passphrase))
    write_public_file(out / "cert.pem", certificates_pem([certificate, *chain]))
    top = chain[-1] if chain else certificate
    write_public_file(out / "ca.pem", certificates_pem([top]))
    return ServerCertificate(certificate, chain, fingerprint_sha256(top))
