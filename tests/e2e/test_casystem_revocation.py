"""Revocation over the XML protocol against a real `ztpki ca serve`, checked with openssl.

One CA system per module, made with the CLI: root, customer (the default CA). Its clients:
node1 and node2 (customer, any device id), narrow (customer, ids N-* only). Every revocation
is followed by the published `cas/customer/crl.der` and `openssl verify -crl_check`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from tests.e2e.casystem_fixtures import (
    CASystemUnderTest,
    enroll_all,
    leaf_of,
    stopped_afterwards,
    write_pems,
    ztpki,
)

from ztpki.casystem.client import CAClient
from ztpki.casystem.faults import FAULT_ENV
from ztpki.errors import Unavailable, UnknownCertificate
from ztpki.pki.pem import serial_hex
from ztpki.protocol.enrollment import EnrollmentRequest
from ztpki.protocol.revocation import RevocationAnswer, RevocationRequest
from ztpki.store.records import RevocationReason

pytestmark = pytest.mark.timeout(300)
_ids = itertools.count()

LINKS = (
    'crl_url = "http://127.0.0.1:8080/crl/linked.crl"\nocsp_url = "http://127.0.0.1:8080/ocsp"\n'
)
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
    plant.init_ca("linked", "--parent", "root")
    policy = plant.root / "cas" / "linked" / "policy.toml"
    policy.write_text(
        policy.read_text(encoding="utf-8").replace("\n[revocation]\n", "\n[revocation]\n" + LINKS),
        encoding="utf-8",
    )
    plant.add_client("node1", "--ca", "customer", "--ca", "linked")
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


def test_ok_revoke_by_device_id_again_answers_the_first_record(system: CASystemUnderTest) -> None:
    # A recall run twice asks by device id: the first run left no live certificate.
    leaf = enroll(system, "dev-twice")
    first = revoke(system, RevocationRequest(rid(), None, None, "dev-twice", KEY_COMPROMISE))
    again = revoke(system, RevocationRequest(rid(), None, None, "dev-twice", HOLD))
    assert (again.serial, again.revoked_at, again.reason) == (
        serial_hex(leaf),
        first.revoked_at,
        KEY_COMPROMISE,
    )
    # Another CA-client learns nothing of it: for node2 the device holds no live certificate.
    with pytest.raises(UnknownCertificate, match="holds no live certificate"):
        revoke(
            system,
            RevocationRequest(rid(), None, None, "dev-twice", KEY_COMPROMISE),
            client="node2",
        )


def test_ok_policy_urls_become_cdp_and_aia(system: CASystemUnderTest) -> None:
    request = EnrollmentRequest(rid(), "dev-linked", ca="linked")
    leaf = leaf_of(system.enroll(request, client="node1"))
    cdp = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [p.full_name for p in cdp] == [
        [x509.UniformResourceIdentifier("http://127.0.0.1:8080/crl/linked.crl")]
    ]
    aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(a.access_method, a.access_location.value) for a in aia] == [
        (x509.oid.AuthorityInformationAccessOID.OCSP, "http://127.0.0.1:8080/ocsp")
    ]
    # The negative control: a CA whose policy names no URL issues neither extension.
    plain = enroll(system, "dev-unlinked")
    for kind in (x509.CRLDistributionPoints, x509.AuthorityInformationAccess):
        with pytest.raises(x509.ExtensionNotFound):
            plain.extensions.get_extension_for_class(kind)


def test_ok_cli_revoke_status_and_release_while_serving(system: CASystemUnderTest) -> None:
    leaf = enroll(system, "dev-cli")
    serial = serial_hex(leaf)
    root = str(system.root)

    def status() -> dict[str, object]:
        result = ztpki("ca", "status", "--dir", root, "--name", "customer", "--serial", serial,
                       "--json")  # fmt: skip
        data: dict[str, object] = json.loads(result.stdout)
        return data

    assert status()["status"] == "good"
    ztpki("ca", "revoke", "--dir", root, "--name", "customer", "--device-id", "dev-cli",
          "--reason", "certificateHold", "--invalidity-date", "2026-01-02T03:04:05Z")  # fmt: skip
    held = status()
    assert held["status"] == "revoked" and held["reason"] == "certificateHold"
    assert held["invalidity_date"] == "2026-01-02T03:04:05+00:00"
    entry = published_crl(system).get_revoked_certificate_by_serial_number(leaf.serial_number)
    assert entry is not None
    ztpki("ca", "release-hold", "--dir", root, "--name", "customer", "--serial", serial.upper())
    assert status()["status"] == "good"
    assert (
        published_crl(system).get_revoked_certificate_by_serial_number(leaf.serial_number) is None
    )
    # Releasing what is not held is refused with the reason, and changes nothing.
    again = ztpki("ca", "release-hold", "--dir", root, "--name", "customer", "--serial", serial,
                  check=False)  # fmt: skip
    assert again.returncode != 0 and "not on hold: it is not revoked" in again.stderr
    unknown = ztpki("ca", "status", "--dir", root, "--name", "customer", "--serial", "abc123",
                    "--json")  # fmt: skip
    assert json.loads(unknown.stdout)["status"] == "unknown"


def test_ok_200_parallel_revocations_all_durable_and_listed(
    system: CASystemUnderTest, tmp_path: Path
) -> None:
    requests = [EnrollmentRequest(rid(), f"bulk-{n:03d}") for n in range(200)]
    answers = asyncio.run(enroll_all(system, requests, client="node2", pool_size=8))
    serials = [serial_hex(leaf_of(a)) for a in answers if not isinstance(a, BaseException)]
    assert len(serials) == 200
    revocations = [
        RevocationRequest(rid(), None, serial, None, RevocationReason.CESSATION_OF_OPERATION)
        for serial in serials
    ]
    results = asyncio.run(_revoke_all(system, revocations, "node2"))
    assert all(isinstance(r, RevocationAnswer) for r in results), [
        r for r in results if isinstance(r, BaseException)
    ][:3]
    recorded = {r.serial for r in system.store.revocations("customer")}
    assert set(serials) <= recorded
    crl = published_crl(system)
    listed = {format(entry.serial_number, "x") for entry in crl}
    assert set(serials) <= listed
    # openssl agrees: the CRL verifies against its CA and lists every serial.
    crl_pem = tmp_path / "bulk.crl.pem"
    ztpki("ca", "crl", "--dir", str(system.root), "--name", "customer", "--out", str(crl_pem),
          "--pem")  # fmt: skip
    ca_pem = write_pems(tmp_path, "customer", [system.ca_certificate("customer")])
    shown = subprocess.run(
        ["openssl", "crl", "-in", str(crl_pem), "-CAfile", str(ca_pem), "-noout", "-text"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "verify OK" in shown.stderr + shown.stdout
    shown_serials = {int(h, 16) for h in re.findall(r"Serial Number: ([0-9A-F]+)", shown.stdout)}
    assert {int(serial, 16) for serial in serials} <= shown_serials


def test_ok_kill_between_record_and_crl_ends_on_the_next_crl(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base = tmp_path_factory.mktemp("crash")
    (base / "logs").mkdir()
    plant = CASystemUnderTest(base / "plant", base / "logs")
    plant.init_ca("customer")
    plant.add_client("node1", "--ca", "customer")
    with stopped_afterwards(plant):
        plant.start(env={FAULT_ENV: "after-revocation-record"})
        leaf = enroll(plant, "dev-crash")
        before = published_crl(plant)
        with pytest.raises(Unavailable):
            revoke(plant, RevocationRequest(rid(), None, serial_hex(leaf), None, KEY_COMPROMISE))
        assert plant.service is not None
        assert plant.service.process.wait(timeout=30) == -signal.SIGKILL
        # Durable, and not yet on the CRL: the window a crash can hit.
        assert [r.serial for r in plant.store.revocations("customer")] == [serial_hex(leaf)]
        assert (
            published_crl(plant).get_revoked_certificate_by_serial_number(leaf.serial_number)
            is None
        )
        plant.service = None
        plant.start()  # listening only once the CRLs are caught up
        after = published_crl(plant)
        assert after.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None
        number = x509.CRLNumber
        assert (
            after.extensions.get_extension_for_class(number).value.crl_number
            > before.extensions.get_extension_for_class(number).value.crl_number
        )


def test_ok_sigkill_during_a_burst_loses_no_acknowledged_revocation(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """SIGKILL from outside while 100 revocations are in flight: every acknowledged one is
    durable, and every durable one is on the CRL the restarted service publishes."""
    base = tmp_path_factory.mktemp("burst")
    (base / "logs").mkdir()
    plant = CASystemUnderTest(base / "plant", base / "logs")
    plant.init_ca("customer")
    plant.add_client("node1", "--ca", "customer")
    with stopped_afterwards(plant):
        plant.start()
        requests = [EnrollmentRequest(rid(), f"burst-{n:03d}") for n in range(100)]
        answers = asyncio.run(enroll_all(plant, requests, client="node1", pool_size=8))
        serials = [serial_hex(leaf_of(a)) for a in answers if not isinstance(a, BaseException)]
        assert len(serials) == 100
        service = plant.service
        assert service is not None

        async def burst() -> list[RevocationAnswer | BaseException]:
            client = CAClient(plant.address, plant.credential("node1"), pool_size=16)
            reason = RevocationReason.AFFILIATION_CHANGED
            tasks = [
                asyncio.create_task(client.revoke(RevocationRequest(rid(), None, s, None, reason)))
                for s in serials
            ]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                os.kill(service.pid, signal.SIGKILL)
                return list(await asyncio.gather(*tasks, return_exceptions=True))
            finally:
                await client.close()

        results = asyncio.run(burst())
        assert service.process.wait(timeout=30) == -signal.SIGKILL
        acknowledged = {r.serial for r in results if isinstance(r, RevocationAnswer)}
        assert acknowledged  # the kill came after the first answer
        assert all(isinstance(r, RevocationAnswer | Unavailable) for r in results), results
        durable = {r.serial for r in plant.store.revocations("customer")}
        assert acknowledged <= durable
        plant.service = None
        plant.start()
        listed = {format(e.serial_number, "x") for e in published_crl(plant)}
        assert durable <= listed
