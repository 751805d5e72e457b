"""Building blocks of the CA-system end-to-end tests: CA systems made with the real CLI,
served by the real `ztpki ca serve`, and checks an outside verifier would make.

Everything here talks to the service the way a peer would: the project's CAClient, raw
frames over a real TLS socket, the `openssl` command line and `ztpki ca ...` commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tests.support.rawtls import RawTLS
from tests.support.services import Service, run_ztpki, start

from ztpki.casystem.client import CAClient
from ztpki.cli import main as ztpki_main
from ztpki.credentials import Credential, client_context
from ztpki.pki.pem import certificates_pem, load_certificate_der, load_certificates_pem
from ztpki.protocol.enrollment import (
    EnrollmentAnswer,
    EnrollmentError,
    EnrollmentRequest,
    encode_request,
)
from ztpki.protocol.framing import encode_frame
from ztpki.store.interfaces import IssuanceStore
from ztpki.store.records import IssuedCertificate
from ztpki.store.sqlite import open_sqlite_ca_store

CA_PASSPHRASE = "ca-passphrase-for-tests"
CLIENT_PASSPHRASE = "client-passphrase-for-tests"
ENV = {"ZTPKI_CA_PASSPHRASE": CA_PASSPHRASE, "ZTPKI_CLIENT_PASSPHRASE": CLIENT_PASSPHRASE}
# Subject defaults of the factory CA's policy (set with `ca init --org ...`).
FACTORY_DEFAULTS = {"O": "Acme Devices", "OU": "Line 1", "L": "Lund", "C": "SE"}


def ztpki(*args: str, env: Mapping[str, str] | None = None, check: bool = True) -> Any:
    """One `ztpki` command in its own process, as an operator runs it."""
    return run_ztpki(*args, env={**ENV, **(env or {})}, check=check, timeout=120)


def cli_json(*args: str) -> Any:
    """A `ztpki ... --json` command run in-process (same code, no interpreter start-up).

    Only for commands that leave the store alone (see CASystemUnderTest.store).
    """
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = ztpki_main([*args, "--json"])
    assert status == 0, f"ztpki {' '.join(args)} --json exited {status}"
    return json.loads(out.getvalue())


@dataclass
class CASystemUnderTest:
    """One CA-system directory, its running service (once started) and its clients."""

    root: Path
    logs: Path
    service: Service | None = None
    credentials: dict[str, Path] = field(default_factory=dict)
    _store: IssuanceStore | None = field(default=None, repr=False)

    @property
    def address(self) -> tuple[str, int]:
        assert self.service is not None, "start the service first"
        return self.service.host, self.service.port

    def ca_pem(self, name: str) -> Path:
        return self.root / "cas" / name / "ca.pem"

    def ca_certificate(self, name: str) -> x509.Certificate:
        return load_certificates_pem(self.ca_pem(name).read_bytes())[0]

    def init_ca(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> None:
        ztpki("ca", "init", "--dir", str(self.root), "--name", name, *args, env=env)

    def add_client(self, name: str, *rights: str) -> Path:
        """Register a CA-client with ``rights`` (add-client options); every CA unless they
        name some with --ca."""
        out = self.root.parent / f"{self.root.name}-client-{name}"
        if "--ca" not in rights:
            every = sorted(p.name for p in (self.root / "cas").iterdir())
            rights = (*rights, *(arg for ca in every for arg in ("--ca", ca)))
        ztpki(
            "ca", "add-client", "--dir", str(self.root), "--name", name, "--out", str(out),
            *rights,
        )  # fmt: skip
        self.credentials[name] = out
        return out

    def credential(self, name: str) -> Credential:
        return Credential.load(self.credentials[name], passphrase=CLIENT_PASSPHRASE.encode())

    def start(self, *extra: str, env: Mapping[str, str] | None = None) -> Service:
        log = self.logs / f"{self.root.name}-serve-{os.urandom(3).hex()}.log"
        self.service = start(
            ["ca", "serve", "--dir", str(self.root), "--listen", "127.0.0.1:0", *extra],
            log_path=log,
            env={**ENV, **(env or {})},
        )
        return self.service

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    def issued(self, *filters: str) -> list[dict[str, Any]]:
        """`ztpki ca issued --json`, run as an operator would."""
        result = ztpki("ca", "issued", "--dir", str(self.root), "--json", *filters)
        records: list[dict[str, Any]] = json.loads(result.stdout)
        return records

    def clients(self) -> dict[str, dict[str, Any]]:
        """`ztpki ca list-clients --json` by name (the newest record of each name)."""
        result = ztpki("ca", "list-clients", "--dir", str(self.root), "--json")
        return {c["name"]: c for c in json.loads(result.stdout)}

    @property
    def store(self) -> IssuanceStore:
        # One store object per test process: every further open of the same file would
        # open and close a descriptor on it, which drops this process's SQLite locks.
        if self._store is None:
            self._store = open_sqlite_ca_store(self.root / "store.sqlite")
        return self._store

    def count(self) -> int:
        """How many certificates the store holds (what `ca issued` lists), read in-process."""
        return self.store.count()

    def records(self, *, device_id: str) -> list[IssuedCertificate]:
        return self.store.issued(device_id=device_id)

    def enroll(self, request: EnrollmentRequest, *, client: str = "line1") -> EnrollmentAnswer:
        return asyncio.run(enroll_all(self, [request], client=client))[0]  # type: ignore[return-value]


async def enroll_all(
    system: CASystemUnderTest,
    requests: list[EnrollmentRequest],
    *,
    client: str = "line1",
    pool_size: int = 4,
) -> list[EnrollmentAnswer | BaseException]:
    """Every request concurrently through one CAClient; errors are returned, not raised,
    except for a single request, whose error is raised."""
    ca_client = CAClient(system.address, system.credential(client), pool_size=pool_size)
    try:
        results = await asyncio.gather(
            *(ca_client.enroll(r) for r in requests), return_exceptions=len(requests) > 1
        )
    finally:
        await ca_client.close()
    return list(results)


# --- raw frames over a real TLS socket ---------------------------------------------------


class RawConnection(RawTLS):
    """A registered CA-client that sends arbitrary bytes as frames (a hostile client)."""

    def __init__(self, address: tuple[str, int], credential: Credential) -> None:
        context = client_context(
            key=credential.key, chain=credential.chain, server_anchors=credential.trust_anchors
        )
        super().__init__(address, context)

    def send_raw(self, data: bytes) -> None:
        self.send(data)

    def send_frame(self, payload: bytes) -> None:
        self.send(encode_frame(payload))

    def send_request(self, request: EnrollmentRequest) -> None:
        self.send_frame(encode_request(request))

    def read_answer(self) -> EnrollmentAnswer | EnrollmentError:
        return self.read_frame()


# --- what a verifier checks --------------------------------------------------------------


def write_pems(directory: Path, name: str, certs: list[x509.Certificate]) -> Path:
    path = directory / f"{name}.pem"
    path.write_bytes(certificates_pem(certs))
    return path


def openssl_verify(
    directory: Path,
    leaf: x509.Certificate,
    *,
    root: x509.Certificate,
    intermediates: list[x509.Certificate],
    purpose: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`openssl verify -x509_strict` of leaf against root, intermediates untrusted."""
    tag = format(leaf.serial_number, "x")[:12]
    root_pem = write_pems(directory, f"root-{tag}", [root])
    argv = ["openssl", "verify", "-x509_strict", "-CAfile", str(root_pem)]
    if intermediates:
        argv += ["-untrusted", str(write_pems(directory, f"chain-{tag}", intermediates))]
    if purpose:
        argv += ["-purpose", purpose]
    argv.append(str(write_pems(directory, f"leaf-{tag}", [leaf])))
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def name_values(name: x509.Name) -> dict[str, str]:
    labels = {
        NameOID.COMMON_NAME: "CN",
        NameOID.SERIAL_NUMBER: "serialNumber",
        NameOID.ORGANIZATION_NAME: "O",
        NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
        NameOID.LOCALITY_NAME: "L",
        NameOID.COUNTRY_NAME: "C",
        NameOID.EMAIL_ADDRESS: "email",
    }
    values = {}
    for attribute in name:
        assert attribute.oid in labels, f"unexpected subject attribute {attribute.oid}"
        values[labels[attribute.oid]] = str(attribute.value)
    return values


def check_end_entity(
    cert: x509.Certificate, issuer: x509.Certificate, *, device_id: str, server: bool = False
) -> None:
    """The RFC 5280 points every issued end-entity certificate must meet."""
    assert cert.version is x509.Version.v3
    assert cert.serial_number > 0 and cert.serial_number.bit_length() <= 159  # <= 20 octets
    cert.verify_directly_issued_by(issuer)
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.value.key_identifier == issuer_ski.value.digest
    assert not ski.critical and not aki.critical
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    expected = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    assert list(eku) == [expected]
    assert issuer.not_valid_before_utc <= cert.not_valid_before_utc
    assert cert.not_valid_after_utc <= issuer.not_valid_after_utc
    assert cert.not_valid_before_utc < cert.not_valid_after_utc
    subject = name_values(cert.subject)
    assert subject["CN"] == device_id and subject["serialNumber"] == device_id
    assert cert.issuer == issuer.subject


def leaf_of(answer: EnrollmentAnswer) -> x509.Certificate:
    return load_certificate_der(answer.certificate_der)


def chain_of(answer: EnrollmentAnswer) -> list[x509.Certificate]:
    return [load_certificate_der(der) for der in answer.ca_certificates_der]


def is_p256(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and (
        key.curve.name == "secp256r1"
    )


@contextlib.contextmanager
def stopped_afterwards(system: CASystemUnderTest) -> Iterator[CASystemUnderTest]:
    try:
        yield system
    finally:
        system.stop()
