"""Several CA-system instances on one store: a revocation through one reaches the CRL of the
others, whether they share the CA directory (one file) or each has its own (another machine)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from test_ca_crl_publisher import T0, Clock, authority, issue, number, store, target  # noqa: F401

from ztpki.casystem.crl_publisher import CRLPublisher, read_crl
from ztpki.pki.authority import CertificateAuthority
from ztpki.store import RevocationReason, SQLiteIssuanceStore


def revoked_serials(path: Path) -> set[str]:
    crl = read_crl(path)
    assert crl is not None
    return {format(entry.serial_number, "x") for entry in crl}


def two_instances(
    authority: CertificateAuthority,  # noqa: F811
    store: SQLiteIssuanceStore,  # noqa: F811
    a_dir: Path,
    b_dir: Path,
    serial: str,
) -> CRLPublisher:
    """Publishers A and B on one store, each with its CRL published; ``serial`` is then
    revoked (two seconds later) through A, which publishes. Returns B."""
    clock = Clock()
    a = CRLPublisher({"customer": target(authority, a_dir)}, store, clock=clock)
    b = CRLPublisher({"customer": target(authority, b_dir)}, store, clock=clock)
    issue(store, serial)
    a.publish_due()
    b.publish_due()
    assert b.changed_elsewhere() == []  # negative control: nothing changed yet
    clock.now = T0.replace(second=T0.second + 2)
    store.revoke("customer", serial, reason=RevocationReason.KEY_COMPROMISE, at=clock.now)
    clock.now = T0.replace(second=T0.second + 3)
    asyncio.run(a.refresh("customer"))
    assert revoked_serials(a_dir / "crl.der") == {serial}
    return b


def test_ok_own_directory_catches_up_with_a_revocation_made_elsewhere(
    authority: CertificateAuthority,  # noqa: F811
    store: SQLiteIssuanceStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    b = two_instances(authority, store, a_dir, b_dir, "a0")
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
    b = two_instances(authority, store, tmp_path, tmp_path, "b0")
    published = number(read_crl(tmp_path / "crl.der"))
    assert b.changed_elsewhere() == ["customer"]
    asyncio.run(b.catch_up("customer"))  # the file already covers it: left as it is
    assert number(read_crl(tmp_path / "crl.der")) == published
    assert b.changed_elsewhere() == []


def test_ok_running_timer_polls_for_changes_elsewhere(
    authority: CertificateAuthority,  # noqa: F811
    store: SQLiteIssuanceStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    """B's timer is running, its CRL a day from due; A revokes and publishes on its own
    directory. B's CRL lists the revocation within B's poll, without anyone telling B."""
    import time

    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    clock = Clock()
    a = CRLPublisher({"customer": target(authority, a_dir)}, store, clock=clock)
    b = CRLPublisher({"customer": target(authority, b_dir)}, store, clock=clock, poll=1.0)
    issue(store, "c0")

    async def until(predicate: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(0.05)  # polling an observable file, not a timing guess
        return False

    async def scenario() -> None:
        timer = asyncio.create_task(b.run())
        try:
            assert await until(lambda: (b_dir / "crl.der").exists())  # its first round
            clock.now = T0.replace(second=T0.second + 2)
            store.revoke("customer", "c0", reason=RevocationReason.KEY_COMPROMISE, at=clock.now)
            await a.refresh("customer")
            assert revoked_serials(a_dir / "crl.der") == {"c0"}
            assert await until(lambda: revoked_serials(b_dir / "crl.der") == {"c0"})
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer

    asyncio.run(scenario())
