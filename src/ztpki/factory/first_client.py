"""The device's first CA-client (3): on the loading station's signal it requests the
temporary identity from the factory CA system and stores it (patent Fig. 3, B43-B46).

It reads everything it needs from the device memory (the loading station put it there),
checks the answer with `accept_answer`, and switches the memory to the new identity in one
atomic step. On any error the identity is what it was and the error names the device.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from ztpki.casystem.client import CAClient
from ztpki.credentials import Credential
from ztpki.device.key_store import key_token, new_device_key, retire_unused_keys
from ztpki.device.memory import DeviceMemory, Phase
from ztpki.device.request import KEY_ALGORITHM_KEY
from ztpki.errors import ConfigurationError, Unavailable, ZtpkiError
from ztpki.factory.answer import AcceptedIdentity, accept_answer
from ztpki.factory.configuration import REQUEST_SIGNAL, CAClientConfig
from ztpki.pki.keys import KeySpec, public_key_der
from ztpki.protocol.enrollment import EnrollmentAnswer, EnrollmentRequest

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


_ERRORS = ZtpkiError.__module__


def name_device(device_id: str, exc: ZtpkiError) -> ZtpkiError:
    """The same kind of error with a message that starts by naming the device."""
    prefix = f"device {device_id}"
    if exc.message.startswith((f"{prefix}:", f"{prefix} ")):
        return exc
    message = f"{prefix}: {exc.message}"
    if isinstance(exc, Unavailable):
        return Unavailable(message, retry_after=exc.retry_after)
    # Subclasses elsewhere (AlreadyIssued, ...) have other constructors: use the public class.
    public: type[ZtpkiError] = next(
        c for c in type(exc).__mro__ if issubclass(c, ZtpkiError) and c.__module__ == _ERRORS
    )
    return public(message)


class FirstCAClient:
    """The CA-client inside a device; `respond` is its reaction to the request signal."""

    def __init__(
        self,
        memory: DeviceMemory,
        *,
        client_passphrase: bytes | None,
        client: CAClient | None = None,
        clock: Callable[[], datetime] = _utcnow,
        station_token: str | None = None,
    ) -> None:
        self._memory = memory
        self._station_token = station_token  # --keygen station: the key is made there
        self._client_passphrase = client_passphrase
        self._client = client
        self._clock = clock

    @property
    def device_id(self) -> str:
        return self._memory.device_id

    def signalled(self) -> bool:
        return isinstance(self._memory.config().get(REQUEST_SIGNAL), str)

    async def respond(self, *, reissue: bool = False) -> AcceptedIdentity:
        """Request, verify and store the temporary identity the signal asks for."""
        try:
            return await self._respond(reissue=reissue)
        except ZtpkiError as exc:
            raise name_device(self.device_id, exc) from None

    async def _respond(self, *, reissue: bool) -> AcceptedIdentity:
        config = self._memory.config()
        signal = config.get(REQUEST_SIGNAL)
        if not isinstance(signal, str):
            raise ConfigurationError("the loading station has not signalled a request")
        phase = self._memory.phase
        if phase is Phase.CUSTOMIZED:
            raise ConfigurationError("the device is customized; the factory does not replace it")
        if phase is Phase.TEMPORARY and not reissue:
            raise ConfigurationError(
                "the device already holds a temporary identity; reissue to replace it"
            )
        ca_config = CAClientConfig.from_config(config, device=self.device_id)
        anchors = self._memory.trust_anchors()
        # A device with a token: the temporary key is made in it (a new object, before the
        # request), and the CA certifies its public key; this CA-client is the POPO check.
        key = None
        if key_token(self._memory) is not None:
            spec = KeySpec.parse(str(config.get(KEY_ALGORITHM_KEY, KeySpec.EC_P256.value)))
            key = await asyncio.to_thread(
                new_device_key, self._memory, spec, station_token=self._station_token
            )
        request = EnrollmentRequest(
            request_id=signal,
            device_id=self.device_id,
            ca=ca_config.ca_name,
            parameters=ca_config.request_parameters(),
            reissue=reissue,
            public_key_der=None if key is None else public_key_der(key.public_key()),
        )
        answer = await self._enroll(ca_config, request)
        accepted = accept_answer(
            answer,
            device_id=self.device_id,
            anchors=anchors or None,
            now=self._clock(),
            device_key=key,
        )
        self._store(accepted, had_anchors=bool(anchors))
        # Stored: a key object an earlier (reissued or failed) load made is no longer named.
        await asyncio.to_thread(retire_unused_keys, self._memory)
        return accepted

    async def _enroll(self, config: CAClientConfig, request: EnrollmentRequest) -> EnrollmentAnswer:
        if self._client is not None:
            return await self._client.enroll(request)
        credential = Credential.load(config.credential, passphrase=self._client_passphrase)
        client = CAClient(config.address, credential, pool_size=1)
        try:
            return await client.enroll(request)
        finally:
            await client.close()

    def _store(self, accepted: AcceptedIdentity, *, had_anchors: bool) -> None:
        # Trust anchors first (the identity switch is the commit point); undone on failure.
        if not had_anchors:
            self._memory.set_trust_anchors(accepted.trust_anchors)
        try:
            identity = self._memory.replace_identity(
                phase=Phase.TEMPORARY,
                private_key=accepted.private_key,
                certificate=accepted.certificate,
                ca_certificates=accepted.ca_certificates,
            )
        except BaseException:
            if not had_anchors:
                try:
                    self._memory.set_trust_anchors([])
                except ZtpkiError as exc:
                    log.error("device %s: cannot undo trust anchors: %s", self.device_id, exc)
            raise
        try:
            self._memory.update_config(**{REQUEST_SIGNAL: None})
        except ZtpkiError as exc:
            # The identity is stored and whole; a stale signal only repeats a refused request.
            log.warning("device %s: request signal not cleared: %s", self.device_id, exc)
        log.info(
            "device %s: temporary identity %d stored (serial %x)",
            self.device_id,
            identity.generation,
            accepted.certificate.serial_number,
        )
