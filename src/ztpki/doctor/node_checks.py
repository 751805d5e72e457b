"""The doctor's checks of a customer node's directory (``ztpki doctor --node-dir``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from ztpki.casystem.client import parse_address
from ztpki.casystem.token_keys import KEY_FILE as TOKEN_KEY_FILE
from ztpki.credentials import CERT_FILE, KEY_FILE, TRUST_FILE
from ztpki.doctor.certificates import certificate_lifetime, crl_freshness
from ztpki.doctor.files import secret_file
from ztpki.doctor.findings import Finding, error, ok, warning
from ztpki.doctor.reachability import probe_ca_system
from ztpki.doctor.schema import schema_state
from ztpki.errors import ConfigurationError, ZtpkiError
from ztpki.node.config import NodeConfig
from ztpki.node.material import factory_revocation, load_manufacturers, read_certificates
from ztpki.revocation_source import fetch_crl_bytes, is_url
from ztpki.store.database_url import DATABASE_URL_FILE
from ztpki.store.sqlite_register_schema import SCHEMA_COMPONENT, SCHEMA_VERSION


def check_node(
    directory: Path, *, now: datetime, warn_before: timedelta, network: bool
) -> list[Finding]:
    try:
        config = NodeConfig.load(directory, migrating=True)
    except ZtpkiError as exc:
        return [error("configuration", str(directory), exc.message, "correct node.toml")]
    findings = [_declared(config)]
    findings.append(
        schema_state(
            config.database,
            SCHEMA_COMPONENT,
            SCHEMA_VERSION,
            migrate=f"ztpki node migrate --dir {directory}",
            create=f"ztpki node migrate --dir {directory} (or `ztpki node init` for a new node)",
        )
    )
    findings += _secret_files(config)
    findings += _server_and_client(config, now=now, warn_before=warn_before)
    findings += _customer_cas(config, now=now, warn_before=warn_before)
    findings += _manufacturers(config, now=now, warn_before=warn_before, network=network)
    if network:
        findings += _ca_systems(config)
    return findings


def _declared(config: NodeConfig) -> Finding:
    try:
        config.check_manufacturers_declared()
    except ConfigurationError as exc:
        return error("manufacturers", str(config.directory), exc.message, "see the message")
    return ok("manufacturers", str(config.directory), f"{len(config.manufacturers)} declared")


def _secret_files(config: NodeConfig) -> list[Finding]:
    client = config.path(config.ca_client)
    files = [(config.path(config.server_key), "the node's server key")]
    if not (client / TOKEN_KEY_FILE).exists():  # a key in a token leaves no secret on disk
        files.append((client / KEY_FILE, "the CA-client key"))
    url = config.directory / DATABASE_URL_FILE
    if url.exists():
        files.append((url, "the database URL"))
    return [secret_file(path, what=what) for path, what in files]


def _certificates(path: Path, what: str) -> list[x509.Certificate] | Finding:
    try:
        return read_certificates(path, what)
    except ConfigurationError as exc:
        return error("files", f"{what} {path}", exc.message, "restore the file")


def _server_and_client(
    config: NodeConfig, *, now: datetime, warn_before: timedelta
) -> list[Finding]:
    findings: list[Finding] = []
    server = _certificates(config.path(config.server_cert), "server certificate")
    if isinstance(server, Finding):
        findings.append(server)
    else:
        findings.append(
            certificate_lifetime(
                server[0],
                what="the node's server certificate",
                fix="ztpki node request-server-cert --reissue --force --out "
                f"{config.path(config.server_cert).parent} --ca HOST:PORT --client-cred DIR "
                "--ca-name NAME --dns NAME (from the manufacturer's CA system), then restart "
                "`ztpki node serve`",
                now=now,
                warn_before=warn_before,
            )
        )
    client = _certificates(config.path(config.ca_client) / CERT_FILE, "CA-client certificate")
    if isinstance(client, Finding):
        findings.append(client)
    else:
        findings.append(
            certificate_lifetime(
                client[0],
                what="the node's CA-client certificate",
                fix=f"at the customer CA system: ztpki ca add-client ... --out "
                f"{config.path(config.ca_client)} --force",
                now=now,
                warn_before=warn_before,
            )
        )
    return findings


def _customer_cas(config: NodeConfig, *, now: datetime, warn_before: timedelta) -> list[Finding]:
    findings: list[Finding] = []
    for label in config.labels:
        chain = _certificates(config.path(label.chain), f"CA chain of EST label {label.label}")
        if isinstance(chain, Finding):
            findings.append(chain)
            continue
        findings += [
            certificate_lifetime(
                cert,
                what=f"customer CA of EST label {label.label}",
                fix="create its successor at the customer CA system (ztpki ca init) and point "
                f"a label at it (ztpki node add-ca --dir {config.directory})",
                now=now,
                warn_before=warn_before,
            )
            for cert in chain
        ]
    return findings


def _manufacturers(
    config: NodeConfig, *, now: datetime, warn_before: timedelta, network: bool
) -> list[Finding]:
    try:
        makers = load_manufacturers(config)
    except ConfigurationError as exc:
        return [error("manufacturers", str(config.directory), exc.message, "see the message")]
    findings: list[Finding] = []
    for maker in makers:
        fix = (
            f"ask {maker.name} for its new trust bundle and declare it again "
            f"(ztpki node add-manufacturer --dir {config.directory} "
            f"--manufacturer {maker.name} ...)"
        )
        findings += [
            certificate_lifetime(
                cert,
                what=f"factory trust of {maker.name}",
                fix=fix,
                now=now,
                warn_before=warn_before,
            )
            for cert in maker.bundle
        ]
        if not maker.config.manifest_signers:
            findings.append(
                warning(
                    "manifest signers",
                    f"manufacturer {maker.name}",
                    "no manifest signer is pinned: any documentSigning certificate under its "
                    "trust bundle may list its devices",
                    "pin its signers: ztpki node add-manufacturer ... "
                    "--manifest-signer-fingerprint SHA256",
                )
            )
    revocation = factory_revocation(config, makers)
    for name in revocation.unconfigured():
        findings.append(
            warning(
                "crl",
                f"manufacturer {name}",
                "no factory CRL is configured: recalls reach the node only through the "
                "distribution points its certificates name",
                "ztpki node add-manufacturer ... --crl-url URL",
            )
        )
    findings += _factory_crls(config, makers=[m.name for m in makers], now=now, network=network)
    return findings


def _factory_crls(
    config: NodeConfig, *, makers: list[str], now: datetime, network: bool
) -> list[Finding]:
    locations = [(str(config.path(p)), "factory CRL file") for p in config.crls]
    for maker in config.manufacturers:
        locations += [
            (str(config.path(Path(c))) if not is_url(c) else c, f"factory CRL of {maker.name}")
            for c in maker.crl
        ]
    findings: list[Finding] = []
    for location, what in locations:
        if is_url(location) and not network:
            continue
        fix = "ask the manufacturer why its CA system no longer re-signs it"
        try:
            data = fetch_crl_bytes(location)
            crl = (
                x509.load_pem_x509_crl(data)
                if data.lstrip().startswith(b"-----BEGIN")
                else x509.load_der_x509_crl(data)
            )
        except ZtpkiError as exc:
            findings.append(error("crl", f"{what} {location}", exc.message, fix))
            continue
        except ValueError:
            findings.append(error("crl", f"{what} {location}", "is not a CRL", fix))
            continue
        findings.append(crl_freshness(crl, what=f"{what} {location}", fix=fix, now=now))
    return findings


def _ca_systems(config: NodeConfig) -> list[Finding]:
    anchors = _certificates(config.path(config.ca_client) / TRUST_FILE, "CA-client trust")
    if isinstance(anchors, Finding):
        return [anchors]
    set_command = f"ztpki node set-ca-system --dir {config.directory} --ca HOST:PORT"
    return [
        probe_ca_system(parse_address(address), anchors, set_command=set_command)
        for address in config.ca_systems
    ]
