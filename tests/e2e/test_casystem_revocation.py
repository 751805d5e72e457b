"""Revocation over the XML protocol against a real `ztpki ca serve`, checked with openssl.

One CA system per module, made with the CLI: root, customer (the default CA). Its clients:
node1 and node2 (customer, any device id), narrow (customer, ids N-* only). Every revocation
is followed by the published `cas/customer/crl.der` and `openssl verify -crl_check`.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from tests.e2e.casystem_fixtures import (
    CASystemUnderTest,
    leaf_of,
    stopped_afterwards,
    write_pems,
    ztpki,
)

from ztpki.casystem.client import CAClient
from ztpki.pki.pem import serial_hex
from ztpki.protocol.enrollment import EnrollmentRequest
from ztpki.protocol.revocation import RevocationAnswer, RevocationRequest
from ztpki.store.records import RevocationReason

pytestmark = pytest.mark.timeout(300)
_ids = itertools.count()

KEY_COMPROMISE = RevocationReason.KEY_COMPROMISE
HOLD = RevocationReason.CERTIFICATE_HOLD


def rid() -> str:
    return f"v{next(_ids)}"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CASystemUnderTest]:
    base = tmp_path_factory.mktemp("revocation")
    (base / "logs").mkdir()
    plant = CASystemUnderTest(base / "plant", base / "logs")
    plant.init_ca("root")
    plant.init_ca("customer", "--parent", "root", "--default")
    plant.add_client("node1", "--ca", "customer")
    plant.add_client("node2", "--ca", "customer")
    with stopped_afterwards(plant):
        plant.start()
        yield plant


def enroll(system: CASystemUnderTest, device: str, *, client: str = "node1") -> x509.Certificate:
    return leaf_of(system.enroll(EnrollmentRequest(rid(), device), client=client))


async def _revoke_all(
    system: CASystemUnderTest, requests: list[RevocationRequest], client: str
) -> list[RevocationAnswer | BaseException]:
    ca_client = CAClient(system.address, system.credential(client), pool_size=8)
    try:
        return list(
            await asyncio.gather(
                *(ca_client.revoke(r) for r in requests), return_exceptions=len(requests) > 1
            )
        )
    finally:
        await ca_client.close()


def revoke(
    system: CASystemUnderTest, request: RevocationRequest, *, client: str = "node1"
) -> RevocationAnswer:
    answer = asyncio.run(_revoke_all(system, [request], client))[0]
    assert isinstance(answer, RevocationAnswer)
    return answer


def published_crl(system: CASystemUnderTest) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl((system.root / "cas" / "customer" / "crl.der").read_bytes())


def crl_check(system: CASystemUnderTest, leaf: x509.Certificate, work: Path) -> str:
    """`openssl verify -crl_check_all` of ``leaf`` with the CRLs `ztpki ca crl` writes."""
    tag = serial_hex(leaf)[:12]
    crls = work / f"crls-{tag}.pem"
    parts = []
    for name in ("root", "customer"):
        out = work / f"{name}-{tag}.crl.pem"
        ztpki("ca", "crl", "--dir", str(system.root), "--name", name, "--out", str(out), "--pem")
        parts.append(out.read_bytes())
    crls.write_bytes(b"".join(parts))
    argv = [
        "openssl", "verify", "-x509_strict", "-crl_check_all", "-CRLfile", str(crls),
        "-CAfile", str(write_pems(work, f"root-{tag}", [system.ca_certificate("root")])),
        "-untrusted", str(write_pems(work, f"sub-{tag}", [system.ca_certificate("customer")])),
        str(write_pems(work, f"leaf-{tag}", [leaf])),
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


def test_ok_revoke_by_serial_lands_on_the_crl(system: CASystemUnderTest, tmp_path: Path) -> None:
    leaf = enroll(system, "dev-serial")
    good = enroll(system, "dev-good")
    answer = revoke(
        system,
        RevocationRequest(rid(), None, serial_hex(leaf), None, KEY_COMPROMISE),
    )
    assert answer.serial == serial_hex(leaf) and answer.reason is KEY_COMPROMISE
    entry = published_crl(system).get_revoked_certificate_by_serial_number(leaf.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.key_compromise
    )
    assert "certificate revoked" in crl_check(system, leaf, tmp_path)
    assert crl_check(system, good, tmp_path).strip().endswith("OK")  # the negative control


def test_ok_revoke_by_device_id_hold_and_release(system: CASystemUnderTest) -> None:
    leaf = enroll(system, "dev-hold")
    held = revoke(system, RevocationRequest(rid(), "customer", None, "dev-hold", HOLD))
    assert held.serial == serial_hex(leaf) and held.reason is HOLD and not held.released
    assert published_crl(system).get_revoked_certificate_by_serial_number(leaf.serial_number)
    released = revoke(
        system, RevocationRequest(rid(), None, serial_hex(leaf), None, HOLD, release_hold=True)
    )
    assert released.released
    crl = published_crl(system)
    assert crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is None
    # Released twice: still good, still released (a retried unblock must not fail).
    again = revoke(
        system, RevocationRequest(rid(), None, serial_hex(leaf), None, HOLD, release_hold=True)
    )
    assert again.released
