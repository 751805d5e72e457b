"""The storage interfaces services depend on; SQLite implements them now, PostgreSQL can later.

Every method is one transaction. Conditional changes return whether they happened instead of
raising, so the caller reads the row again to learn why not. Times are always passed in.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Protocol

from ztpki.errors import ZtpkiError
from ztpki.store.cmp_secrets import CmpSecretStore
from ztpki.store.cmp_transactions import CmpTransactionStore
from ztpki.store.records import (
    AnsweredRequest,
    AuditEntry,
    AuditRecord,
    AuditVerification,
    CertificateStatus,
    ClientEntitlement,
    ClientRecord,
    DeviceState,
    ImportResult,
    IssuedCertificate,
    ManifestRecord,
    NewDevice,
    RefusedRequest,
    RegisteredDevice,
    Revocation,
    RevocationReason,
)
from ztpki.store.revocation_records import (
    QueuedRevocation,
    QueueStatus,
    RevocationOrder,
    SenderLease,
)


class StagedBatch(Protocol):
    """Issuances written in an open transaction: ``results`` as record_issuances gives."""

    results: list[list[str] | ZtpkiError]

    def commit(self) -> None:
        """Make the batch durable; on failure nothing of it is kept (StorageError)."""
        ...


class IssuanceStore(Protocol):
    """The CA system's record of every certificate it issued, and its registered CA-clients."""

    def record_issuance(self, cert: IssuedCertificate, *, supersede: bool) -> list[str]:
        """Record ``cert`` (status ACTIVE) as the device's one live certificate at its CA.

        A live certificate already recorded for (ca_name, device_id) raises AlreadyIssued
        unless ``supersede``, which marks it SUPERSEDED; returns the superseded serials.
        SupersedeRefused (with or without ``supersede``) when that certificate was obtained
        by another client than ``cert.client`` (one recorded without a client may be
        superseded by any): that client must not learn its serial.
        DuplicateSerial when the CA already recorded this serial.
        """
        ...

    def record_issuances(
        self, certs: Sequence[tuple[IssuedCertificate, bool]]
    ) -> list[list[str] | ZtpkiError]:
        """Many ``record_issuance(cert, supersede=flag)`` in one transaction (one fsync).

        Items apply in order; one that fails yields its error in its slot and the others commit.
        """
        ...

    def stage_issuances(
        self, certs: Sequence[tuple[IssuedCertificate, bool]], *, wait: bool = True
    ) -> StagedBatch:
        """``record_issuances`` without its commit: the caller commits (on any thread).

        ``wait=False`` is for a caller that must not block (an event loop): when another
        writer holds the database, Unavailable at once instead of waiting for it.
        """
        ...

    def issued(
        self,
        *,
        ca_name: str | None = None,
        device_id: str | None = None,
        status: CertificateStatus | None = None,
    ) -> list[IssuedCertificate]:
        """Recorded certificates matching every given filter, ordered by issued_at, serial."""
        ...

    def active_certificate(self, ca_name: str, device_id: str) -> IssuedCertificate | None: ...

    def answered_request(self, client: str, request_id: str) -> AnsweredRequest | None:
        """The certificate recorded for ``client``'s request ``request_id`` (with the request's
        digest and the answer's encrypted key), whatever its status; None when none was.

        A record whose ``request_digest`` is set also takes (client, request_id): recording
        a second one raises RequestAnswered and writes nothing, whichever CA-system
        instance (process, machine) sharing the store records it.
        """
        ...

    def forget_answer_keys(self, *, answered_before: datetime) -> int:
        """Drop the kept (encrypted) keys of requests answered before then: no retry of
        theirs can come any more. Returns how many were dropped."""
        ...

    def set_status(self, ca_name: str, serial: str, status: CertificateStatus) -> bool:
        """Move an ACTIVE certificate to SUPERSEDED or REVOKED; False when it was not ACTIVE."""
        ...

    def count(self) -> int: ...

    def certificate(self, ca_name: str, serial: str) -> IssuedCertificate | None:
        """The certificate ``serial`` (lower-case hex) of CA ``ca_name``, whatever its status."""
        ...

    def revoke(
        self,
        ca_name: str,
        serial: str,
        *,
        reason: RevocationReason,
        at: datetime,
        invalidity_date: datetime | None = None,
    ) -> Revocation:
        """Put the certificate on the CA's revocation list; durable before it returns.

        Idempotent: a certificate already revoked keeps (and returns) its first record,
        except that one on hold (certificateHold) is revoked for good with another reason.
        A revocation for good marks the certificate REVOKED (its device then holds no live
        certificate at this CA); a hold leaves its status as it was. UnknownCertificate when
        the CA never recorded ``serial``.
        """
        ...

    def release_hold(self, ca_name: str, serial: str, *, at: datetime) -> bool:
        """Lift a certificateHold (the certificate leaves the list); False when not on hold."""
        ...

    def revocation(self, ca_name: str, serial: str) -> Revocation | None: ...

    def revocations(self, ca_name: str) -> list[Revocation]:
        """What the CA's CRL lists now, ordered by serial."""
        ...

    def revocation_version(self, ca_name: str) -> int:
        """Grows on every change of the CA's revoked set (0: never changed)."""
        ...

    def revocation_changed_at(self, ca_name: str) -> datetime | None:
        """When the CA's revoked set last changed (None: never), to decide a CRL re-signing."""
        ...

    def next_crl_number(self, ca_name: str) -> int:
        """A new CRL number for the CA: durable, strictly increasing across restarts."""
        ...

    def add_client(
        self,
        name: str,
        *,
        serial: str,
        fingerprint: str,
        not_after: datetime,
        now: datetime,
        entitlement: ClientEntitlement,
    ) -> None:
        """Register a CA-client with what it may ask for; DuplicateClient when the name is
        active or the cert known."""
        ...

    def set_entitlement(self, name: str, entitlement: ClientEntitlement) -> bool:
        """Replace the entitlement of the active CA-client ``name``; False when none is."""
        ...

    def record_refusal(self, refusal: RefusedRequest) -> None:
        """Keep a request refused as not authorized."""
        ...

    def refusals(self, *, limit: int | None = None) -> list[RefusedRequest]:
        """Refused requests, oldest first; with ``limit``, only the newest ``limit``."""
        ...

    def remove_client(self, name: str, *, now: datetime) -> bool:
        """Revoke the active CA-client ``name`` (kept as history); False when none is active."""
        ...

    def client_by_fingerprint(self, fingerprint: str) -> ClientRecord | None:
        """The CA-client holding this certificate, active or revoked (the caller checks)."""
        ...

    def clients(self) -> list[ClientRecord]:
        """Every CA-client ever added, removed ones included, oldest first."""
        ...


class RegisterStore(Protocol):
    """The customer node's access-control register of valid device identities.

    Every changing method takes ``audit``: when given, that record is appended to the audit
    trail in the same transaction if and only if the change is made, so the trail and the
    register never disagree. A refused change appends nothing; the caller records the refusal
    with ``AuditLog.append`` once it knows why.
    """

    def import_devices(
        self,
        devices: Iterable[NewDevice],
        *,
        manifest: ManifestRecord,
        audit: AuditRecord | None = None,
    ) -> ImportResult:
        """List the devices not yet listed; never change a listed one. All or nothing: when
        ``devices`` raises (a bad entry, a file that changed) or repeats an id
        (DuplicateDevice), nothing is listed. ``devices`` may be a stream of a million: it is
        consumed once, in bounded memory (on SQLite without holding the register's write
        lock; on PostgreSQL inside the one write transaction). A manifest_id seen before
        from the same manufacturer is a no-op (already_imported, ``manifest.device_count``
        unchanged, ``devices`` not read); manifest ids of different manufacturers never
        clash."""
        ...

    def add_device(
        self, device: NewDevice, *, now: datetime, audit: AuditRecord | None = None
    ) -> None:
        """List one device by hand; DuplicateDevice when it is already listed."""
        ...

    def get(self, device_id: str) -> RegisteredDevice | None: ...

    def devices(
        self, *, state: DeviceState | None = None, page: int = 1000
    ) -> Iterator[RegisteredDevice]:
        """Devices ordered by device_id, optionally only those in ``state``, read ``page``
        rows at a time as the iterator is consumed (bounded memory, no long transaction).
        Each device comes at most once; one that changes meanwhile shows as its page read it."""
        ...

    def counts(self) -> dict[DeviceState, int]:
        """Number of devices in each state (every state present, zero included)."""
        ...

    def begin_issuance(
        self,
        device_id: str,
        *,
        allowed_from: Collection[DeviceState],
        token: str,
        label: str,
        now: datetime,
        lease_seconds: float,
        audit: AuditRecord | None = None,
        take_over: str | None = None,
    ) -> RegisteredDevice | None:
        """Move the device to ISSUING under a lease held by ``token``, for EST ``label``.

        Allowed when its state is in ``allowed_from`` (resting states only), or when it is
        ISSUING under a lease that expired before ``now``, or that is still held by
        ``take_over`` (a token whose holder the caller knows is dead), and the state that
        issuance started from is in ``allowed_from`` (a crashed node's work is taken over; its
        previous_state is kept). The device remembers ``label`` (``issuance_label``) across
        completion, abort and takeover; until it is customized, an issuance under another label
        is not allowed.
        Returns the row as it was before the change, or None when not allowed.
        """
        ...

    def complete_issuance(
        self,
        device_id: str,
        *,
        token: str,
        new_state: DeviceState,
        serial: str,
        spki: str,
        certificate_der: bytes,
        chain_der: Sequence[bytes],
        now: datetime,
        audit: AuditRecord | None = None,
        revocations: Sequence[RevocationOrder] = (),
        renewed_from: str | None = None,
    ) -> bool:
        """ISSUING -> ``new_state`` (ISSUED or CUSTOMIZED) with the new certificate, only while
        ``token`` still holds the lease; clears the lease. ``revocations`` (the certificates
        it supersedes) are queued with it; ``renewed_from``: a renewal's previous certificate,
        whose WAITING revocation confirm_renewal makes due."""
        ...

    def abort_issuance(
        self, device_id: str, *, token: str, now: datetime, audit: AuditRecord | None = None
    ) -> bool:
        """ISSUING -> the state it came from, only while ``token`` still holds the lease."""
        ...

    def confirm(
        self, device_id: str, *, serial: str, now: datetime, audit: AuditRecord | None = None
    ) -> bool:
        """ISSUED -> CUSTOMIZED, only when ``serial`` is the certificate last issued to it."""
        ...

    def confirm_renewal(
        self,
        device_id: str,
        *,
        serial: str,
        now: datetime,
        due_at: datetime,
        audit: AuditRecord | None = None,
    ) -> bool:
        """First use of the renewed certificate ``serial``: the device's WAITING revocations
        become due at ``due_at``; False when no renewal of that certificate awaits it."""
        ...

    # block, unblock and retire: with ``revocations`` (a list, maybe empty) the change is made
    # only while the device's issued_serial is ``issued_serial`` (the row the orders were
    # decided on), and the orders are queued with it, the device's WAITING ones made due.

    def block(
        self,
        device_id: str,
        *,
        now: datetime,
        audit: AuditRecord | None = None,
        revocations: Sequence[RevocationOrder] | None = None,
        issued_serial: str | None = None,
    ) -> bool:
        """Any state but BLOCKED or RETIRED -> BLOCKED; an issuance in flight loses its lease."""
        ...

    def unblock(
        self,
        device_id: str,
        *,
        now: datetime,
        audit: AuditRecord | None = None,
        revocations: Sequence[RevocationOrder] | None = None,
        issued_serial: str | None = None,
    ) -> bool:
        """BLOCKED -> the resting state it was blocked from."""
        ...

    def retire(
        self,
        device_id: str,
        *,
        now: datetime,
        audit: AuditRecord | None = None,
        revocations: Sequence[RevocationOrder] | None = None,
        issued_serial: str | None = None,
    ) -> bool:
        """Any state but RETIRED -> RETIRED (final); an issuance in flight loses its lease."""
        ...

    def queue_revocations(
        self, orders: Sequence[RevocationOrder], *, now: datetime, audit: AuditRecord | None = None
    ) -> None:
        """Queue orders no state change causes (a certificate issued but discarded)."""
        ...

    def revocations(
        self,
        *,
        device_id: str | None = None,
        open_only: bool = False,
        statuses: Collection[QueueStatus] | None = None,
    ) -> list[QueuedRevocation]:
        """Queued orders, oldest first; optionally one device's, only WAITING/PENDING, or only
        those in ``statuses`` (the finished DONE ones grow with the fleet: leave them out)."""
        ...

    def due_revocations(self, *, now: datetime, limit: int = 32) -> list[QueuedRevocation]:
        """PENDING orders due by ``now`` with no earlier open order on the same certificate."""
        ...

    def open_revocation_counts(self) -> dict[str, int]:
        """The open orders by status: ``waiting`` and ``pending`` (both always present)."""
        ...

    def revocation_done(
        self,
        seq: int,
        *,
        lease: int,
        now: datetime,
        refused: str | None = None,
        audit: AuditRecord | None = None,
    ) -> bool:
        """PENDING -> DONE (or REFUSED, with the CA system's words), only while ``lease`` is
        the sender lease's current token: a sender that lost the lease changes nothing."""
        ...

    def revocation_failed(
        self,
        seq: int,
        *,
        lease: int,
        error: str,
        retry_at: datetime,
        audit: AuditRecord | None = None,
    ) -> bool:
        """Count a failed attempt of a PENDING order; it is due again at ``retry_at``. Only
        while ``lease`` is the sender lease's current token."""
        ...

    # One process at a time, of every node machine and worker sharing the register, sends its
    # revocation orders: the holder of the sender lease.
    def take_sender_lease(
        self, holder: str, *, now: datetime, until: datetime, take_over: str | None = None
    ) -> int | None:
        """Hold the lease until ``until``: taken (a new fencing token) when free, expired by
        ``now``, or held by ``take_over`` (a holder the caller knows is dead); renewed (the
        same token) when ``holder`` holds it; None while another does."""
        ...

    def release_sender_lease(self, token: int, *, now: datetime) -> bool:
        """Let the lease held under ``token`` expire at ``now``, for another to take."""
        ...

    def sender_lease(self) -> SenderLease | None:
        """The lease as it stands (maybe expired); None before any sender took it."""
        ...

    def manifests(self) -> list[ManifestRecord]:
        """Imported manifests, oldest import first."""
        ...


class AuditLog(Protocol):
    """The tamper-evident audit trail: one hash chain, appended by any number of processes."""

    def append(
        self,
        *,
        at: datetime,
        device_id: str | None,
        client_fingerprint: str | None,
        endpoint: str,
        decision: str,
        reason: str,
        serial: str | None,
    ) -> AuditEntry: ...

    def append_many(self, records: Sequence[AuditRecord]) -> list[AuditEntry]:
        """Append in order in one transaction (one fsync for the lot)."""
        ...

    def entries(
        self, *, device_id: str | None = None, limit: int | None = None, page: int = 1000
    ) -> Iterator[AuditEntry]:
        """Entries in seq order; with ``limit``, only the newest ``limit`` of them (as of the
        call). Read ``page`` entries at a time as the iterator is consumed."""
        ...

    def verify(self) -> AuditVerification:
        """Check the whole chain in one consistent read, streamed (it may be millions long)."""
        ...

    def counts_by_decision(self) -> dict[str, int]: ...


class NodeStore(RegisterStore, AuditLog, CmpTransactionStore, CmpSecretStore, Protocol):
    """What the customer node keeps in one database: its register and its audit trail."""
