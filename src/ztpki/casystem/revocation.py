"""Revocation asked for over the XML protocol: who may revoke what, and the store's answer.

A CA-client may revoke (or release the hold of) a certificate only when its entitlement names
the CA and the certificate's device id, and it obtained that certificate itself (as for a
reissue: one recorded before clients were may be revoked by any entitled client). Every
refusal is NotEntitled (recorded by the service with the other refusals); a serial the CA
never issued is UnknownCertificate, asked only after the CA check so that a client learns
nothing of CAs it may not use. Blocking (the store waits for its fsync): run in a thread.
"""

from __future__ import annotations

from datetime import datetime

from ztpki.casystem.entitlement import NotEntitled, device_id_allowed
from ztpki.casystem.issuer import CASystem
from ztpki.errors import UnknownCertificate
from ztpki.protocol.revocation import RevocationAnswer, RevocationRequest
from ztpki.store.interfaces import IssuanceStore
from ztpki.store.records import ClientRecord, IssuedCertificate, RevocationReason


def ca_name_of(request: RevocationRequest, system: CASystem) -> str:
    return request.ca or system.default_ca


def target_of(
    request: RevocationRequest, *, client: ClientRecord, system: CASystem, store: IssuanceStore
) -> IssuedCertificate:
    """The certificate ``request`` names, when ``client`` may revoke it; else a typed error."""
    entitlement = client.entitlement
    if entitlement is None:
        raise NotEntitled(
            f"CA-client {client.name} has no entitlement yet; the operator gives it one "
            "with `ztpki ca set-client`"
        )
    ca_name = ca_name_of(request, system)
    if ca_name not in entitlement.cas:
        raise NotEntitled(f"CA-client {client.name} may not use CA {ca_name!r}")
    ca_name = system.resolve(ca_name).authority.name
    if request.device_id is not None:
        if not device_id_allowed(entitlement.device_ids, request.device_id):
            raise NotEntitled(
                f"CA-client {client.name} may not name device id {request.device_id!r}"
            )
        certificate = store.active_certificate(ca_name, request.device_id)
        if certificate is None:
            certificate = _already_revoked(request, request.device_id, ca_name, client, store)
    else:
        serial = str(request.serial)
        certificate = store.certificate(ca_name, serial)
        if certificate is None:
            raise UnknownCertificate(f"CA {ca_name} issued no certificate with serial {serial}")
    if not device_id_allowed(entitlement.device_ids, certificate.device_id):
        raise NotEntitled(
            f"CA-client {client.name} may not revoke certificate {certificate.serial}: "
            "its device id is outside the client's entitlement"
        )
    if certificate.client is not None and certificate.client != client.name:
        # Never says which client obtained it: one CA-client learns nothing of the others.
        raise NotEntitled(
            f"CA-client {client.name} may not revoke certificate {certificate.serial}: "
            "another CA-client obtained it"
        )
    return certificate


def _already_revoked(
    request: RevocationRequest,
    device_id: str,
    ca_name: str,
    client: ClientRecord,
    store: IssuanceStore,
) -> IssuedCertificate:
    """The device's newest certificate from ``client`` when a repeat of ``request`` is moot.

    A repeated revocation by device id (a recall run again) finds no live certificate: the
    first run revoked it. When this client's newest certificate of the CA is already revoked
    as asked (for good, or on hold for a hold), ``apply`` answers that record, as a repeat by
    serial does; otherwise the device holds nothing to revoke.
    """
    own = [
        c
        for c in store.issued(ca_name=ca_name, device_id=device_id)
        if c.client is None or c.client == client.name
    ]
    standing = store.revocation(ca_name, own[-1].serial) if own else None
    hold_asked = request.reason is RevocationReason.CERTIFICATE_HOLD
    if standing is None or request.release_hold or (standing.on_hold and not hold_asked):
        raise UnknownCertificate(f"device {device_id} holds no live certificate of CA {ca_name}")
    return own[-1]


def revoke_for_client(
    request: RevocationRequest,
    *,
    client: ClientRecord,
    system: CASystem,
    store: IssuanceStore,
    now: datetime,
) -> RevocationAnswer:
    """Check, then revoke or release: the answer once the store made the change durable."""
    certificate = target_of(request, client=client, system=system, store=store)
    return apply(request, certificate, store=store, now=now)


def apply(
    request: RevocationRequest,
    certificate: IssuedCertificate,
    *,
    store: IssuanceStore,
    now: datetime,
) -> RevocationAnswer:
    ca_name, serial = certificate.ca_name, certificate.serial
    if request.release_hold:
        if store.release_hold(ca_name, serial, at=now):
            return _released(request, serial, now)
        standing = store.revocation(ca_name, serial)
        if standing is None:  # not on the list (a repeated release): it is good
            return _released(request, serial, now)
        return RevocationAnswer(
            request_id=request.request_id,
            serial=serial,
            revoked_at=standing.revoked_at,
            reason=standing.reason,
            released=False,
        )
    record = store.revoke(
        ca_name,
        serial,
        reason=request.reason,
        at=now,
        invalidity_date=request.invalidity_date,
    )
    return RevocationAnswer(
        request_id=request.request_id,
        serial=serial,
        revoked_at=record.revoked_at,
        reason=record.reason,
    )


def _released(request: RevocationRequest, serial: str, now: datetime) -> RevocationAnswer:
    return RevocationAnswer(
        request_id=request.request_id,
        serial=serial,
        revoked_at=now,
        reason=RevocationReason.CERTIFICATE_HOLD,
        released=True,
    )


__all__ = ["apply", "ca_name_of", "revoke_for_client", "target_of"]
