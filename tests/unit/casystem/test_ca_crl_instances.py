"""Several CA-system instances on one store: a revocation through one reaches the CRL of the
others, whether they share the CA directory (one file) or each has its own (another machine)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_ca_crl_publisher import T0, Clock, authority, issue, number, store, target  # noqa: F401

from ztpki.casystem.crl_publisher import CRLPublisher, read_crl
from ztpki.pki.authority import CertificateAuthority
from ztpki.store import RevocationReason, SQLiteIssuanceStore


def revoked_serials(path: Path) -> set[str]:
    crl = read_crl(path)
    assert crl is not None
    return {format(entry.serial_number, "x") for entry in crl}


def test_ok_own_directory_catches_up_with_a_revocation_made_elsewhere(
    authority: CertificateAuthority,  # noqa: F811
    store: SQLiteIssuanceStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    clock = Clock()
    a = CRLPublisher({"customer": target(authority, a_dir)}, store, clock=clock)
    b = CRLPublisher({"customer": target(authority, b_dir)}, store, clock=clock)
    issue(store, "a0")
    a.publish_due()
    b.publish_due()
    assert b.changed_elsewhere() == []  # negative control: nothing changed yet
    clock.now = T0.replace(second=T0.second + 2)
    store.revoke("customer", "a0", reason=RevocationReason.KEY_COMPROMISE, at=clock.now)
    asyncio.run(a.refresh("customer"))
    assert revoked_serials(a_dir / "crl.der") == {"a0"}
    assert revoked_serials(b_dir / "crl.der") == set()  # B has not looked yet
    assert b.changed_elsewhere() == ["customer"]
    asyncio.run(b.catch_up("customer"))
    assert revoked_serials(b_dir / "crl.der") == {"a0"}
    assert b.changed_elsewhere() == []


def test_ok_shared_directory_is_not_signed_twice(
    authority: CertificateAuthority,  # noqa: F811
    store: SQLiteIssuanceStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    clock = Clock()
    a = CRLPublisher({"customer": target(authority, tmp_path)}, store, clock=clock)
    b = CRLPublisher({"customer": target(authority, tmp_path)}, store, clock=clock)
    issue(store, "b0")
    a.publish_due()
    b.publish_due()
    clock.now = T0.replace(second=T0.second + 2)
    store.revoke("customer", "b0", reason=RevocationReason.SUPERSEDED, at=clock.now)
    clock.now = T0.replace(second=T0.second + 3)
    asyncio.run(a.refresh("customer"))
    published = number(read_crl(tmp_path / "crl.der"))
    assert revoked_serials(tmp_path / "crl.der") == {"b0"}
    assert b.changed_elsewhere() == ["customer"]
    asyncio.run(b.catch_up("customer"))  # the file already covers it: left as it is
    assert number(read_crl(tmp_path / "crl.der")) == published
    assert b.changed_elsewhere() == []
