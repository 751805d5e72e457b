"""The CA-system service: the receiving (81) and answering (83) means over TLS-protected TCP.

One asyncio loop serves many connections; each carries framed XML requests and answers in
turn. RSA key generation runs in a process pool, durable records in the recorder's thread,
so neither stalls other connections. Only CA-clients registered in the store (and not
removed) get past the handshake check, and each request must then fit that client's
entitlement; a request refused as not authorized is recorded in the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ztpki.casystem.connections import ConnectionLimits, FramedTLSServer, Reply
from ztpki.casystem.crl_publisher import CRLPublisher
from ztpki.casystem.entitlement import NotEntitled
from ztpki.casystem.faults import chosen_fault, crash_at
from ztpki.casystem.issuer import CASystem, IssuancePlan
from ztpki.casystem.metrics import CASystemMetrics
from ztpki.casystem.recorder import IssuanceRecorder
from ztpki.casystem.revocation import ca_name_of, revoke_for_client
from ztpki.casystem.server_identity import ServerIdentity, keep_renewed
from ztpki.casystem.wire import error_answer
from ztpki.credentials import handshake_reason, log_handshake_refusal
from ztpki.errors import NotAuthorized, PayloadTooLarge, Unavailable, ZtpkiError
from ztpki.eventloop import cancel_tasks
from ztpki.logs import bind, log_fields
from ztpki.pki.keys import KeySpec, PrivateKey, decode_pkcs8, encode_pkcs8, generate_private_key
from ztpki.pki.pem import serial_hex
from ztpki.pki.signer import signs_quickly
from ztpki.prometheus import database_figures
from ztpki.protocol.enrollment import (
    EnrollmentAnswer,
    EnrollmentError,
    EnrollmentRequest,
    encode_answer,
    request_id_of,
)
from ztpki.protocol.framing import encode_frame
from ztpki.protocol.revocation import (
    RevocationAnswer,
    RevocationRequest,
    decode_client_message,
    encode_revocation_answer,
)
from ztpki.store.interfaces import IssuanceStore
from ztpki.store.records import (
    AlreadyIssued,
    AnsweredRequest,
    ClientRecord,
    RefusedRequest,
    RequestAnswered,
    SupersedeRefused,
)
from ztpki.throttle import LogThrottle

log = logging.getLogger(__name__)
# A removed CA-client can reconnect at no cost: its refusals are logged at a bounded rate.
_UNREGISTERED_LOG = LogThrottle(log)
# How long the encrypted key of an answer is kept for a retry of its request (a CA-client
# retries within its own lease, two minutes for the node), and how often older ones go.
KEEP_ANSWER_KEYS = timedelta(hours=1)
FORGET_KEYS_EVERY = 300.0


@dataclass(frozen=True)
class ServiceLimits(ConnectionLimits):
    # How stale a kept-alive connection's registration check may get before a request
    # re-reads it: `ca remove-client` reaches open connections within this time.
    client_recheck: float = 0.25


def _generate_pkcs8(spec: str) -> bytes:
    # Runs in a worker process: return plain PKCS#8 over the pool's pipe (memory, not disk).
    return encode_pkcs8(generate_private_key(KeySpec(spec)), passphrase=None)


Answer = EnrollmentAnswer | RevocationAnswer | EnrollmentError


def answer_frame(answer: Answer) -> bytes:
    # Answers are built here from checked dataclasses: no second schema check on the way out.
    if isinstance(answer, RevocationAnswer):
        return encode_frame(encode_revocation_answer(answer))
    return encode_frame(encode_answer(answer, validate=False))


@dataclass
class _Outcome:
    """What /metrics says of one request: its kind once decoded, and how it ended."""

    kind: str = "undecoded"
    result: str = "answered"


class CASystemService:
    def __init__(
        self,
        system: CASystem,
        store: IssuanceStore,
        ssl_context: ssl.SSLContext,
        *,
        limits: ServiceLimits | None = None,
        key_pool: Executor | None = None,
        identity: ServerIdentity | None = None,
        crls: CRLPublisher | None = None,
    ) -> None:
        """``identity``, when given, owns ssl_context's server certificate: the running
        service renews it before it expires. ``crls``, when given, publishes each CA's CRL
        after every revocation change and before its nextUpdate."""
        self.system = system
        self.store = store
        self.ssl_context = ssl_context
        self.limits = limits or ServiceLimits()
        self.identity = identity
        self.renewal: asyncio.Task[None] | None = None
        self.crls = crls
        self.crl_timer: asyncio.Task[None] | None = None
        self._fault = chosen_fault()
        self._key_pool = key_pool
        self._recorder = IssuanceRecorder(store)
        self._server: FramedTLSServer | None = None
        self._forgetting: asyncio.Task[None] | None = None
        self.metrics = CASystemMetrics(database_figures(store))

    async def start(self, host: str, port: int) -> tuple[str, int]:
        if self.crls is not None:
            # Before the first request: a revocation recorded by a service that died before
            # its CRL went out is published now (publish_due sees the CRL is older).
            await asyncio.to_thread(self.crls.publish_due)
            self.crl_timer = asyncio.create_task(self.crls.run())
        self._recorder.start()
        self._forgetting = asyncio.create_task(self._forget_answer_keys())
        self._server = FramedTLSServer(
            self.ssl_context, self._session_for, self.limits, on_refusal=self._handshake_refused
        )
        bound = self._server.listen(host, port)
        if self.identity is not None:
            self.renewal = asyncio.create_task(keep_renewed(self.identity))
        return bound

    def _handshake_refused(self, exc: ssl.SSLError) -> None:
        self.metrics.count_handshake_failure(handshake_reason(exc))
        log_handshake_refusal(exc)

    @property
    def connection_count(self) -> int:
        return 0 if self._server is None else self._server.connection_count

    async def _forget_answer_keys(self) -> None:
        """Drop the kept keys no retry can ask for any more; every instance does, harmlessly."""
        while True:
            try:
                before = datetime.now(UTC) - KEEP_ANSWER_KEYS
                await asyncio.to_thread(self.store.forget_answer_keys, answered_before=before)
            except ZtpkiError as exc:  # kept a little longer; the next round tries again
                log.warning("could not drop kept answer keys: %s", exc.message)
            await asyncio.sleep(FORGET_KEYS_EVERY)

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.wait_closed()

    async def close(self) -> None:
        await cancel_tasks(self.renewal, self.crl_timer, self._forgetting)
        if self._server is not None:
            self._server.close()
        await self._recorder.stop()
        if isinstance(self._key_pool, ProcessPoolExecutor):
            self._key_pool.shutdown(cancel_futures=True)

    def registered_client(self, tls: ssl.SSLSocket) -> ClientRecord | None:
        """The active registered CA-client (with its entitlement) that presented this
        certificate."""
        der = tls.getpeercert(binary_form=True)
        if not der:
            return None
        record = self.store.client_by_fingerprint(hashlib.sha256(der).hexdigest())
        return record if record is not None and record.status == "active" else None

    def _session_for(self, tls: ssl.SSLSocket) -> _ClientSession | Reply:
        client = self.registered_client(tls)
        if client is None:
            peer = _peer_of(tls)
            _UNREGISTERED_LOG.warning(
                "unregistered",
                "refused connection from %s: client certificate not registered",
                peer,
            )
            return Reply(answer_frame(error_answer(None, _unregistered())), close=True)
        return _ClientSession(self, tls, client)

    async def handle(self, payload: bytes, *, client: ClientRecord) -> Answer:
        """One request frame in, one answer out; every failure becomes a typed error answer."""
        started = time.perf_counter()
        self.metrics.in_flight += 1
        outcome = _Outcome()
        try:
            with log_fields(client=client.name):
                answer = await self._handle(payload, client=client, outcome=outcome)
        finally:
            self.metrics.in_flight -= 1
        if isinstance(answer, EnrollmentError):
            outcome.result = f"refused-{answer.code.value}"
        self.metrics.observe_request(outcome.kind, outcome.result, time.perf_counter() - started)
        return answer

    async def _handle(self, payload: bytes, *, client: ClientRecord, outcome: _Outcome) -> Answer:
        request: EnrollmentRequest | RevocationRequest | None = None
        answer: Answer
        try:
            request = decode_client_message(payload)
            outcome.kind = "revoke" if isinstance(request, RevocationRequest) else "enroll"
            bind(request_id=request.request_id, device_id=request.device_id)
            if isinstance(request, RevocationRequest):
                answer = await self.revoke(request, client=client)
            else:
                answer = await self.enroll(request, client=client)
        except ZtpkiError as exc:
            request_id = request.request_id if request else request_id_of(payload)
            # A registered client asking beyond its rights is a security event, not noise.
            denied = isinstance(exc, NotAuthorized) and not isinstance(exc, AlreadyIssued)
            log.log(
                logging.WARNING if denied else logging.INFO,
                "refused request %s from %s: %s %s",
                request_id,
                client.name,
                exc.code,
                exc.message,
            )
            if denied:
                await self._record_refusal(client.name, request, request_id, exc)
            return error_answer(request_id, exc)
        except Exception:
            request_id = request.request_id if request else None
            log.exception("internal error on request %s from %s", request_id, client.name)
            return error_answer(request_id, ZtpkiError("internal"))
        return answer

    async def _record_refusal(
        self,
        client: str,
        request: EnrollmentRequest | RevocationRequest | None,
        request_id: str | None,
        exc: ZtpkiError,
    ) -> None:
        refusal = RefusedRequest(
            at=datetime.now(UTC),
            client=client,
            request_id=request_id or "unknown",
            device_id=request.device_id if request else None,
            ca_name=(request.ca or self.system.default_ca) if request else None,
            reason=exc.message,
        )
        try:
            # Off the loop: the write waits for the database lock and an fsync.
            await asyncio.to_thread(self.store.record_refusal, refusal)
        except ZtpkiError as failure:  # the refusal stands; only its record is missing
            log.error("could not record refusal of request %s: %s", request_id, failure.message)

    async def enroll(self, request: EnrollmentRequest, *, client: ClientRecord) -> EnrollmentAnswer:
        now = datetime.now(UTC)
        if client.entitlement is None:
            raise NotEntitled(
                f"CA-client {client.name} has no entitlement yet; the operator gives it one "
                "with `ztpki ca set-client`"
            )
        plan = self.system.plan(
            request, now=now, client=client.name, entitlement=client.entitlement
        )
        # A request sent again (its answer lost, or a failover from another instance that
        # recorded it and died before answering) is answered from its record, never issued
        # twice: the record refuses a second certificate for its id (RequestAnswered below),
        # so the common case costs no read here; only RSA looks first, see just below.
        private_key: PrivateKey | None = None
        if plan.csr_public_key is not None:
            public_key = plan.csr_public_key
        else:
            if plan.key_spec.is_rsa:
                # Refuse before 50 ms of RSA generation rather than at the record: a
                # repeated request must not be able to keep the key pool busy.
                recorded = self.store.answered_request(client.name, request.request_id)
                if recorded is not None:
                    return self._answer_again(plan, recorded)
                self._refuse_if_live(plan)
            private_key = await self._generate(plan.key_spec)
            public_key = private_key.public_key()
        if signs_quickly(plan.ca.authority.key):
            certificate = self.system.sign(plan, public_key)
        else:
            # A token that answers in its own time (a network HSM, a card: milliseconds, or
            # not known yet): off the loop, on one of the pool's sessions, so other
            # connections go on meanwhile. A quick one (SoftHSM) signs on the loop: the hop
            # to a thread and back cost more CPU than its signature (benchmarks/README.md).
            certificate = await asyncio.to_thread(self.system.sign, plan, public_key)
        answer = self.system.answer(plan, certificate, private_key)
        kept_key = answer.private_key_der if answer.private_key_encrypted else None
        record = self.system.record_of(plan, certificate, now=now, answer_key_der=kept_key)
        try:
            superseded = await self._recorder.record(record, supersede=request.reissue)
        except RequestAnswered:
            # The same request, recorded meanwhile by another instance (or connection):
            # the database kept the first; this certificate was never recorded nor sent.
            recorded = self.store.answered_request(client.name, request.request_id)
            if recorded is None:  # the first record was rolled back: a storage fault
                raise Unavailable("the CA system's store changed under it; try again") from None
            return self._answer_again(plan, recorded)
        log.info(
            "issued serial=%s device=%s ca=%s request=%s%s",
            serial_hex(certificate),
            request.device_id,
            plan.ca.authority.name,
            request.request_id,
            f" superseding {','.join(superseded)}" if superseded else "",
            extra={"serial": serial_hex(certificate), "ca": plan.ca.authority.name},
        )
        self.metrics.count_issued(plan.ca.authority.name)
        crash_at("after-issuance-record", self._fault)
        return answer

    def _answer_again(self, plan: IssuancePlan, recorded: AnsweredRequest) -> EnrollmentAnswer:
        answer = self.system.answer_again(plan, recorded)
        log.info(
            "answered again serial=%s device=%s ca=%s request=%s",
            recorded.certificate.serial,
            plan.request.device_id,
            recorded.certificate.ca_name,
            plan.request.request_id,
            extra={"serial": recorded.certificate.serial, "ca": recorded.certificate.ca_name},
        )
        return answer

    async def revoke(self, request: RevocationRequest, *, client: ClientRecord) -> RevocationAnswer:
        """Revoke or release once the entitlement allows it; answered when durable and (as
        far as the disk allows) on the published CRL."""
        answer = await asyncio.to_thread(
            revoke_for_client,
            request,
            client=client,
            system=self.system,
            store=self.store,
            now=datetime.now(UTC),
        )
        ca_name = self.system.resolve(ca_name_of(request, self.system)).authority.name
        log.info(
            "%s serial=%s ca=%s reason=%s request=%s client=%s",
            "released" if answer.released else "revoked",
            answer.serial,
            ca_name,
            answer.reason.value,
            request.request_id,
            client.name,
            extra={"serial": answer.serial, "ca": ca_name},
        )
        if answer.released:
            self.metrics.count_released(ca_name)
        else:
            self.metrics.count_revoked(ca_name, answer.reason.value)
        crash_at("after-revocation-record", self._fault)
        if self.crls is not None:
            await self.crls.refresh(ca_name)
        return answer

    def _refuse_if_live(self, plan: IssuancePlan) -> None:
        """What the record would refuse, checked early (the record still decides)."""
        live = self.store.active_certificate(plan.ca.authority.name, plan.request.device_id)
        if live is None:
            return
        if live.client is not None and live.client != plan.client:
            raise SupersedeRefused(
                client=plan.client or "unknown", ca_name=live.ca_name, device_id=live.device_id
            )
        if not plan.request.reissue:
            raise AlreadyIssued(ca_name=live.ca_name, device_id=live.device_id, serial=live.serial)

    async def _generate(self, spec: KeySpec) -> PrivateKey:
        if not spec.is_rsa:
            return generate_private_key(spec)  # microseconds: not worth a hop
        if self._key_pool is None:
            return await asyncio.to_thread(generate_private_key, spec)
        der = await asyncio.get_running_loop().run_in_executor(
            self._key_pool, _generate_pkcs8, spec.value
        )
        return decode_pkcs8(der, passphrase=None, self_generated=True)


class _ClientSession:
    """One registered CA-client's connection: each frame becomes one answer, in order."""

    def __init__(self, service: CASystemService, tls: ssl.SSLSocket, client: ClientRecord) -> None:
        self._service = service
        self._tls = tls
        self._client = client
        self._checked = time.monotonic()

    def frame(self, payload: bytes) -> Reply | asyncio.Future[Reply]:
        service = self._service
        if time.monotonic() - self._checked > service.limits.client_recheck:
            # A kept-alive connection must not outlive `ca remove-client` nor keep an
            # entitlement `ca set-client` changed; checking at most every client_recheck
            # seconds keeps the store read off most requests.
            current = service.registered_client(self._tls)
            if current is None:
                log.warning("closing connection of client %s: it was removed", self._client.name)
                refusal = error_answer(request_id_of(payload), _unregistered())
                return Reply(answer_frame(refusal), close=True)
            self._client = current
            self._checked = time.monotonic()
        return asyncio.ensure_future(self._reply(payload))

    async def _reply(self, payload: bytes) -> Reply:
        return Reply(answer_frame(await self._service.handle(payload, client=self._client)))

    def too_large(self, error: PayloadTooLarge) -> Reply:
        log.warning("closing connection of client %s: %s", self._client.name, error.message)
        return Reply(answer_frame(error_answer(None, error)), close=True)


def _peer_of(tls: ssl.SSLSocket) -> str:
    try:
        host, port = tls.getpeername()[:2]
    except OSError:
        return "a client that already left"
    return f"{host}:{port}"


def _unregistered() -> ZtpkiError:
    from ztpki.errors import NotAuthorized

    return NotAuthorized(
        "this CA-client certificate is not registered with the CA system (or was removed); "
        "ask the operator for a credential from `ztpki ca add-client`"
    )


__all__ = ["CASystemService", "ServiceLimits"]
