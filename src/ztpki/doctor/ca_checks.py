"""The doctor's checks of a CA system's directory (``ztpki doctor --ca-dir``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from ztpki.casystem.crl_publisher import CRL_FILE
from ztpki.casystem.directory import SERVICE_CA, CASystemDirectory
from ztpki.doctor.certificates import certificate_lifetime, crl_freshness
from ztpki.doctor.files import secret_file
from ztpki.doctor.findings import Finding, error, warning
from ztpki.doctor.schema import schema_state
from ztpki.errors import ZtpkiError
from ztpki.pki.pem import load_certificates_pem
from ztpki.store.database_url import DATABASE_URL_FILE
from ztpki.store.sqlite_ca import SCHEMA_COMPONENT, SCHEMA_VERSION


def check_ca_system(directory: Path, *, now: datetime, warn_before: timedelta) -> list[Finding]:
    system = CASystemDirectory(directory)
    names = system.ca_names()
    if not names:
        return [
            error(
                "configuration",
                str(directory),
                "holds no CA",
                f"create one: ztpki ca init --dir {directory} --name NAME",
            )
        ]
    findings = [
        schema_state(
            system.store_location,
            SCHEMA_COMPONENT,
            SCHEMA_VERSION,
            migrate=f"ztpki ca migrate --dir {directory}",
            create=f"ztpki ca migrate --dir {directory}",
        )
    ]
    findings += [secret_file(path, what="CA key") for path in system.key_paths()]
    url = directory / DATABASE_URL_FILE
    if url.exists():
        findings.append(secret_file(url, what="the database URL"))
    for name in names:
        findings += _ca(system, name, now=now, warn_before=warn_before)
    service = directory / SERVICE_CA / "ca.pem"
    if service.exists():
        findings += _lifetimes(
            service,
            what="the service CA (TLS and CA-client credentials)",
            fix="create a new CA-system directory and register its CA-clients again",
            now=now,
            warn_before=warn_before,
        )
    return findings


def _ca(
    system: CASystemDirectory, name: str, *, now: datetime, warn_before: timedelta
) -> list[Finding]:
    d = system.root
    successor = (
        f"create its successor (ztpki ca init --dir {d} --name NEW ...) and move the node's "
        "labels to it before this one expires"
    )
    findings = _lifetimes(
        system.ca_dir(name) / "ca.pem",
        what=f"CA {name}",
        fix=successor,
        now=now,
        warn_before=warn_before,
    )
    chain = system.ca_dir(name) / "chain.pem"
    if chain.exists() and chain.read_bytes().strip():
        findings += _lifetimes(
            chain, what=f"parent of CA {name}", fix=successor, now=now, warn_before=warn_before
        )
    crl_path = system.ca_dir(name) / CRL_FILE
    fix = (
        f"start `ztpki ca serve --dir {d}` (it re-signs every CRL before nextUpdate), or "
        f"`ztpki ca crl --dir {d} --name {name} --out FILE` and publish that"
    )
    if not crl_path.exists():
        findings.append(warning("crl", f"CA {name}", f"no CRL published yet ({crl_path})", fix))
        return findings
    try:
        crl = x509.load_der_x509_crl(crl_path.read_bytes())
    except (OSError, ValueError):
        findings.append(error("crl", f"CA {name} {crl_path}", "is not a readable DER CRL", fix))
        return findings
    findings.append(crl_freshness(crl, what=f"CRL of CA {name}", fix=fix, now=now))
    return findings


def _lifetimes(
    path: Path, *, what: str, fix: str, now: datetime, warn_before: timedelta
) -> list[Finding]:
    try:
        certs = load_certificates_pem(path.read_bytes())
    except (OSError, ZtpkiError):
        return [error("files", f"{what} {path}", "holds no readable certificate", "restore it")]
    return [
        certificate_lifetime(cert, what=what, fix=fix, now=now, warn_before=warn_before)
        for cert in certs
    ]
