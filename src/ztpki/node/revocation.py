"""The running node sends the revocations its register queued to the customer CA system.

Orders are written by whoever changes the register (an enrollment superseding a certificate,
`ztpki node block|unblock|retire` in another process) in the same transaction as the change;
``RevocationSender`` takes the due ones in the order they were made, sends each as an XML
revocation request, and records the outcome with its audit entry: done ("revoked",
"released"), refused for good by the CA system ("revocation-refused", left for the operator),
or not reachable ("revocation-deferred": tried again after a backoff that doubles up to
``[revocation] retry_max_seconds``). A CA system that cannot be reached never blocks an
enrollment: sending runs beside the EST service, and an order waits until it goes through.

Only the holder of the register's sender lease sends (one process across every node machine
sharing the register: each machine's worker 0 competes for it). It renews the lease at every
look and before every order, and closes an order under the lease's fencing token, so a sender
that lost the lease (stuck past ``[revocation] sender_lease_seconds``, taken over) changes
nothing; a sender that stops lets it go, and another takes it at its next look.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ztpki.errors import Unavailable, ZtpkiError
from ztpki.eventloop import cancel_tasks
from ztpki.node.ca_client import SecondCAClient
from ztpki.node.lease_holder import holder_gone, new_token
from ztpki.node.register import AsyncRegister
from ztpki.node.revocation_policy import RevocationPolicy
from ztpki.protocol.revocation import RevocationRequest
from ztpki.store.records import AuditRecord, RevocationReason
from ztpki.store.revocation_records import QueuedRevocation, RevocationAction
from ztpki.store.sqlite_revocation_queue import AUDIT_ENDPOINT

log = logging.getLogger(__name__)

# Orders taken from the queue per look; the rest wait for the next look (at once).
BATCH = 32


def _utcnow() -> datetime:
    return datetime.now(UTC)


def backoff(attempts: int, *, cap: float) -> float:
    """Seconds before the next try of an order that failed ``attempts`` times (1 s, 2 s, ...)."""
    return float(min(cap, 2.0 ** max(0, attempts - 1)))


def request_for(order: QueuedRevocation) -> RevocationRequest:
    release = order.action is RevocationAction.RELEASE
    return RevocationRequest(
        request_id=f"node-revoke-{order.seq}-{secrets.token_hex(6)}",
        ca=order.ca_name,
        serial=order.serial,
        device_id=None,
        reason=RevocationReason(order.reason),
        release_hold=release,
    )


class RevocationSender:
    """Drains the register's revocation queue while the node runs."""

    def __init__(
        self,
        register: AsyncRegister,
        ca_client: SecondCAClient,
        policy: RevocationPolicy,
        *,
        clock: Callable[[], datetime] = _utcnow,
        holder: str | None = None,
    ) -> None:
        self._register = register
        self._ca_client = ca_client
        self._policy = policy
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Unique per sender (a restarted worker on the same pid is another holder), readable
        # in the register (which machine and process sends), and ending in a token that names
        # this process, so that its replacement on this machine can tell it is gone.
        self.holder = holder or f"{socket.gethostname()} pid {os.getpid()} {new_token()}"
        self.lease: int | None = None  # the fencing token while this sender holds the lease

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="node-revocations")

    def wake(self) -> None:
        """Look at the queue now (an order was just written by this process)."""
        self._wake.set()

    async def close(self) -> None:
        await cancel_tasks(self._task)
        self._task = None
        if self.lease is not None:  # let another machine's sender take over at once
            lease, self.lease = self.lease, None
            try:
                await self._register.release_sender_lease(lease, now=self._clock())
            except ZtpkiError as exc:  # it expires by itself
                log.warning("revocation sender lease not released: %s", exc.message)

    async def hold(self) -> int | None:
        """Take or renew the sender lease; its token, or None while another process holds it."""
        now = self._clock()
        until = now + timedelta(seconds=self._policy.sender_lease)
        token = await self._register.take_sender_lease(self.holder, now=now, until=until)
        if token is None:
            # A worker killed -9 leaves its lease to run out (up to sender_lease_seconds) unless
            # its replacement on the same machine sees that it is gone and takes over now.
            lease = await self._register.sender_lease()
            if lease is not None and holder_gone(lease.holder.rpartition(" ")[2]):
                token = await self._register.take_sender_lease(
                    self.holder, now=now, until=until, take_over=lease.holder
                )
                if token is not None:
                    log.warning(
                        "revocation sender lease taken over from %s, which no longer runs",
                        lease.holder,
                    )
        if token != self.lease:
            if token is None:
                log.warning("revocation sender lease lost: another node process sends now")
            else:
                log.info("revocation sender lease taken (token %d): this process sends", token)
        self.lease = token
        return token

    async def _run(self) -> None:
        while True:
            try:
                await self.drain()
            except ZtpkiError as exc:  # the register itself failed: look again later
                log.warning("revocation queue not read: %s", exc.message)
            except Exception:  # a bug must not end the sending for the node's lifetime
                log.exception("revocation queue: unexpected error; looking again later")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._policy.poll_seconds):
                    await self._wake.wait()
            self._wake.clear()

    async def drain(self) -> int:
        """Send every due order, in order; how many were sent (done or refused)."""
        sent = 0
        while True:
            if await self.hold() is None:
                return sent  # another process sends
            due = await self._register.due_revocations(now=self._clock(), limit=BATCH)
            if not due:
                return sent
            for order in due:
                # Renewed before each order: the exchange (at most [limits] ca_timeout, shorter
                # than the lease) ends before another process may take the lease over.
                lease = await self.hold()
                if lease is None:
                    return sent
                if not await self._send(order, lease):
                    return sent  # the CA system is unreachable: the others would fail too
                sent += 1

    async def _send(self, order: QueuedRevocation, lease: int) -> bool:
        """True when the CA system answered (done or refused); False when it was unreachable."""
        try:
            answer = await self._ca_client.revoke(request_for(order))
        except Unavailable as exc:
            now = self._clock()
            wait = backoff(order.attempts + 1, cap=self._policy.retry_max_seconds)
            log.warning(
                "revocation of %s (device %s) deferred %.0f s: %s",
                order.serial,
                order.device_id,
                wait,
                exc.message,
            )
            await self._register.revocation_failed(
                order.seq,
                lease=lease,
                error=exc.message,
                retry_at=now + timedelta(seconds=wait),
                audit=self._audit(
                    order,
                    "revocation-deferred",
                    f"attempt {order.attempts + 1} failed, next in {wait:.0f} s: {exc.message}",
                    now=now,
                ),
            )
            return False
        except ZtpkiError as exc:
            now = self._clock()
            log.error(
                "the customer CA system refused the %s of %s (device %s): %s",
                order.action.value,
                order.serial,
                order.device_id,
                exc.message,
            )
            await self._close(order, lease, "revocation-refused", exc.message, refused=True)
            return True
        if order.action is RevocationAction.RELEASE:
            decision = "released"
            reason = (
                "hold released at the CA system"
                if answer.released
                else "the certificate was not on hold at the CA system"
            )
        else:
            decision = "revoked"
            reason = (
                f"revoked at the CA system ({answer.reason.value}) at "
                f"{answer.revoked_at.isoformat(timespec='seconds')}"
            )
        log.info("%s serial=%s device=%s: %s", decision, order.serial, order.device_id, reason)
        await self._close(order, lease, decision, reason, refused=False)
        return True

    async def _close(
        self, order: QueuedRevocation, lease: int, decision: str, reason: str, *, refused: bool
    ) -> None:
        """Record the CA system's answer, under the lease the order was sent under."""
        now = self._clock()
        closed = await self._register.revocation_done(
            order.seq,
            lease=lease,
            now=now,
            refused=reason if refused else None,
            audit=self._audit(order, decision, reason, now=now),
        )
        if not closed:  # the register kept the order open for the lease's new holder
            log.warning(
                "revocation of %s (device %s) not recorded: this process lost the sender "
                "lease while sending it",
                order.serial,
                order.device_id,
            )

    @staticmethod
    def _audit(
        order: QueuedRevocation, decision: str, reason: str, *, now: datetime
    ) -> AuditRecord:
        return AuditRecord(
            at=now,
            endpoint=AUDIT_ENDPOINT,
            decision=decision,
            reason=reason,
            device_id=order.device_id,
            serial=order.serial,
        )
