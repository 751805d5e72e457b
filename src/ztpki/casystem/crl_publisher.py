"""Publishing each CA's CRL to ``cas/NAME/crl.der``: after every change, and before nextUpdate.

The file is replaced atomically (a reader sees the old CRL or the new one, never a part) under
a lock file, so that `ztpki ca revoke` and a running `ca serve` never put an older CRL over a
newer one. The CRL number comes from the store (durable, increasing across restarts). When a
CRL is due is decided by ``pki.crl.crl_due``, a pure function; this module only reads the
clock it is given and moves bytes. At start-up the service publishes every CA whose CRL is
missing, old, or older than its newest revocation change (a service killed after a durable
revocation and before its CRL ends with the revocation on the next CRL).

Several instances of the CA system share one store. On one CA directory they publish one
file (the lock file orders them, the CRL number comes from the store): a revocation made
through any of them is on the CRL all serve as soon as that one published it. Each with a
CA directory of its own (another machine) looks every ``poll`` seconds (CRL_POLL, 5 s) at the
store's revocation_version, one small query per CA, and publishes when another instance
changed it: its CRL then lags a revocation by at most ``poll`` seconds plus one signing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ztpki.casystem.policy import IssuingPolicy
from ztpki.pki.authority import CertificateAuthority
from ztpki.pki.crl import build_crl, crl_due, wake_in
from ztpki.secretfiles import write_public_file
from ztpki.store.interfaces import IssuanceStore

log = logging.getLogger(__name__)

CRL_FILE = "crl.der"
# After a failed publication (a full disk), try again this soon rather than at nextUpdate.
RETRY_AFTER = timedelta(seconds=30)
# How often a running service looks for revocations another instance made (module doc).
CRL_POLL = 5.0

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CRLTarget:
    """One CA whose CRL is published: its signer, its policy and its CA directory."""

    authority: CertificateAuthority
    policy: IssuingPolicy
    ca_dir: Path

    @property
    def path(self) -> Path:
        return self.ca_dir / CRL_FILE

    @property
    def period(self) -> timedelta:
        return timedelta(hours=self.policy.crl_next_update_hours)


@contextlib.contextmanager
def _locked(ca_dir: Path) -> Iterator[None]:
    fd = os.open(ca_dir / "crl.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def publish_crl(
    target: CRLTarget, store: IssuanceStore, *, now: datetime
) -> x509.CertificateRevocationList:
    """Sign the CA's CRL as the store has it now and write it to ``cas/NAME/crl.der``."""
    name = target.authority.name
    with _locked(target.ca_dir):
        number = store.next_crl_number(name)
        crl = build_crl(
            target.authority,
            store.revocations(name),
            number=number,
            now=now,
            next_update=target.period,
        )
        write_public_file(target.path, crl.public_bytes(Encoding.DER))
    log.info(
        "published CRL number=%d ca=%s entries=%d next_update=%s",
        number,
        name,
        len(crl),
        crl.next_update_utc,
    )
    return crl


def read_crl(path: Path) -> x509.CertificateRevocationList | None:
    """The CRL at ``path``, or None when there is none or it does not parse (re-sign it)."""
    try:
        return x509.load_der_x509_crl(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("cannot read CRL %s (%s); signing a new one", path, exc)
        return None


def publish_if_due(target: CRLTarget, store: IssuanceStore, *, now: datetime) -> datetime:
    """Publish the CA's CRL when ``crl_due`` says so; returns when it is next due."""
    current = read_crl(target.path)
    due = crl_due(
        this_update=None if current is None else current.last_update_utc,
        next_update=None if current is None else current.next_update_utc,
        changed_at=store.revocation_changed_at(target.authority.name),
        now=now,
        period=target.period,
    )
    if due:
        current = publish_crl(target, store, now=now)
    next_update = current.next_update_utc if current is not None else None
    assert next_update is not None  # our CRLs always carry one
    return now + wake_in(next_update=next_update, now=now, period=target.period)


class CRLPublisher:
    """The running service's publisher: re-signs at once after changes, and on a timer."""

    def __init__(
        self,
        targets: dict[str, CRLTarget],
        store: IssuanceStore,
        *,
        clock: Clock = utc_now,
        poll: float = CRL_POLL,
    ) -> None:
        self.targets = targets
        self.store = store
        self.clock = clock
        self.poll = poll
        self._published: dict[str, int] = {}
        self._locks = {name: asyncio.Lock() for name in targets}
        self._wake = asyncio.Event()

    def publish_due(self) -> datetime:
        """Publish every CA whose CRL is due now; returns when the next one is due."""
        now = self.clock()
        soonest = now + timedelta(days=1)
        for name, target in self.targets.items():
            version = self.store.revocation_version(name)
            try:
                due_at = publish_if_due(target, self.store, now=now)
            except Exception:
                log.exception("could not publish the CRL of CA %s; retrying", name)
                due_at = now + RETRY_AFTER
            else:
                self._published[name] = max(self._published.get(name, 0), version)
            soonest = min(soonest, due_at)
        return soonest

    async def refresh(self, ca_name: str) -> None:
        """Publish a CRL that covers every change made before this call (coalesced: callers
        waiting behind one publication are covered by the next single one)."""
        target = self.targets.get(ca_name)
        if target is None:
            return
        wanted = self.store.revocation_version(ca_name)
        async with self._locks[ca_name]:
            if self._published.get(ca_name, -1) >= wanted:
                return
            version = self.store.revocation_version(ca_name)
            try:
                await asyncio.to_thread(publish_crl, target, self.store, now=self.clock())
            except Exception:
                # The revocation is durable already; the timer tries again soon.
                log.exception("could not publish the CRL of CA %s; retrying", ca_name)
                self._wake.set()
                return
            self._published[ca_name] = version

    def changed_elsewhere(self) -> list[str]:
        """CAs whose revoked set moved since this service last published their CRL (by
        another instance sharing the store, or `ztpki ca revoke`)."""
        return [
            name
            for name in self.targets
            if self.store.revocation_version(name) > self._published.get(name, -1)
        ]

    async def run(self) -> None:
        """The timer: publish what is due, sleep until the next is due or a retry is asked;
        meanwhile, every ``poll`` seconds, catch up with revocations made elsewhere."""
        while True:
            next_due = await asyncio.to_thread(self.publish_due)
            while True:
                # At least a second between rounds: a clock far off never makes this spin.
                until_due = (next_due - self.clock()).total_seconds()
                delay = max(1.0, min(self.poll, until_due))
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                if self._wake.is_set() or until_due <= self.poll:
                    break
                for name in await asyncio.to_thread(self.changed_elsewhere):
                    await self.catch_up(name)

    async def catch_up(self, ca_name: str) -> None:
        """Publish the CA's CRL unless the one on disk already covers its revoked set."""
        # Another instance on this CA directory may have published already: publish_if_due
        # re-signs only when the file on disk predates the change.
        target = self.targets[ca_name]
        version = self.store.revocation_version(ca_name)
        async with self._locks[ca_name]:
            try:
                await asyncio.to_thread(publish_if_due, target, self.store, now=self.clock())
            except Exception:
                log.exception("could not publish the CRL of CA %s; retrying", ca_name)
                return
            self._published[ca_name] = max(self._published.get(ca_name, 0), version)


__all__ = [
    "CRL_FILE",
    "CRL_POLL",
    "CRLPublisher",
    "CRLTarget",
    "publish_crl",
    "publish_if_due",
    "read_crl",
]
