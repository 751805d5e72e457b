"""Pre-signed OCSP answers on disk, one file per issued certificate, for a static web server.

Large CAs do not run their responder for every query: the answer to a request without a
nonce is the same for everyone until the status changes, so it is signed ahead of time and
served as a file (RFC 5019 section 6 "pre-produced responses"). ``ztpki ca serve
--ocsp-dir DIR`` keeps, per CA, ``DIR/NAME/`` filled with them (outside the CA's own
directory, which holds its key and stays 0700); nginx serves those files for
``GET /ocsp/<base64>`` and passes everything else (POST, nonces, SHA-256 CertIDs, a
certificate without a file) to the responder (README "OCSP and HTTP").

Which request: the one RFC 5019 2.1.1 prescribes and openssl, NSS, Go and Windows send by
default, a single SHA-1 CertID and no extensions. Its DER is a function of the CertID
(cryptography encodes it byte for byte as ``openssl ocsp -no_nonce -reqout`` does), so the
GET path a client sends is known in advance.

File names: the GET path segment is the base64 of that DER, URL-escaped. nginx decodes the
escapes and merges runs of ``/`` in ``$uri``, so the file lives at that decoded, merged path:
every ``/`` of the base64 is a directory level (base64 has no ``.``, so no ``..``), and a
path ending in ``/`` names the file ``_`` inside it (``_`` is not a base64 character, so it
names nothing else). Two CertIDs whose names collide (one a directory prefix of the other;
merged slashes) get no file and are answered by the responder: a miss, never a wrong answer.

When a file is signed again: its certificate's status changed (the CA's revocation_version
moved, by this service or by ``ztpki ca revoke`` in another process), or half its validity
has passed. New certificates get theirs at the next sweep after they are recorded; an
expired certificate's file is removed, so the responder answers for it.

Cost: each sweep reads the store's count and each CA's revocation_version (two small
queries a second); a changed count re-reads the CA's certificate list, and a start signs
every file again (its delegated responder is new), yielding to the event loop every
100 signatures. Fine for the tens of thousands of certificates measured; a CA with millions
would want an "issued since" query and a start that keeps files still valid.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ztpki.casystem.ocsp_responder import OCSPResponder, refresh_time, status_of
from ztpki.pki.ocsp import CertID, StatusAnswer, StatusRequest
from ztpki.pki.ocsp_der import public_key_bits
from ztpki.secretfiles import write_public_file
from ztpki.store.records import IssuedCertificate, Revocation

log = logging.getLogger(__name__)

PRESIGN_CHECK_EVERY = 1.0  # seconds between looks at the store (two cheap queries)
_YIELD_EVERY = 100  # signatures between returns to the event loop while catching up
_NAME_MAX = 255
_SLASHES = re.compile("/+")


class PresignSource(Protocol):
    """What the pre-signer reads of the issuance store (IssuanceStore satisfies it)."""

    def issued(self, *, ca_name: str | None = None) -> list[IssuedCertificate]: ...

    def revocations(self, ca_name: str) -> list[Revocation]: ...

    def revocation_version(self, ca_name: str) -> int: ...

    def count(self) -> int: ...


def sha1_request(cert_id: CertID) -> bytes:
    """The DER of the RFC 5019 request for ``cert_id``: one CertID, no nonce."""
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        cert_id.issuer_name_hash,
        cert_id.issuer_key_hash,
        cert_id.serial_number,
        hashes.SHA1(),  # noqa: S303 - names the issuer, signs nothing (RFC 5019 2.1.1)
    )
    return builder.build().public_bytes(serialization.Encoding.DER)


def file_name(request: bytes) -> PurePosixPath | None:
    """Where, under ``DIR/NAME/``, the answer to the GET of ``request`` lives (nginx's
    decoded, slash-merged ``$uri`` after ``/ocsp/``); None when no file can hold it."""
    name = _SLASHES.sub("/", base64.b64encode(request).decode("ascii"))
    if name.endswith("/"):
        name += "_"
    path = PurePosixPath(name)
    if any(len(part) > _NAME_MAX for part in path.parts):
        return None
    return path


@dataclass(frozen=True)
class Presigned:
    """What a file on disk says, and when it is to be signed again."""

    status: StatusAnswer
    refresh_at: datetime


def resign_due(held: Presigned | None, status: StatusAnswer, now: datetime) -> bool:
    """Sign again when there is no file, it says another status, or half its life is gone."""
    return held is None or held.status != status or now >= held.refresh_at


@dataclass(frozen=True)
class _Target:
    ca_name: str
    serial: str
    not_after: datetime
    request: StatusRequest
    path: Path


class PresignedResponses:
    """Keeps ``cas/NAME/ocsp/`` of every CA in step with the issuance store."""

    def __init__(
        self,
        responder: OCSPResponder,
        source: PresignSource,
        issuers: Mapping[str, x509.Certificate],
        directories: Mapping[str, Path],
    ) -> None:
        self._responder = responder
        self._source = source
        self._issuers = dict(issuers)
        # The CertID's issuer hashes, once per CA (not once per certificate: a sweep over
        # 10,000 certificates would otherwise read each CA's key 10,000 times).
        self._issuer_hashes = {
            name: (_sha1(issuer.subject.public_bytes()), _sha1(public_key_bits(issuer)))
            for name, issuer in issuers.items()
        }
        self._directories = dict(directories)
        self._count = -1
        self._targets: dict[str, dict[str, _Target]] = {n: {} for n in issuers}
        self._versions: dict[str, int] = {}
        self._revoked: dict[str, dict[str, Revocation]] = {n: {} for n in issuers}
        self._held: dict[tuple[str, str], Presigned] = {}
        self._next_refresh: datetime | None = None
        self._names: dict[Path, str] = {}  # file -> serial, to refuse colliding names

    def held(self, ca_name: str, serial: str) -> Presigned | None:
        return self._held.get((ca_name, serial))

    def due(self, now: datetime) -> list[tuple[_Target, StatusAnswer]]:
        """Every file to (re)write now, and the status it is to say; removes expired ones."""
        changed = self._reload_certificates()
        for ca_name in self._issuers:
            # The version is read before the list: a change landing in between is seen by
            # the next sweep (never missed).
            version = self._source.revocation_version(ca_name)
            if self._versions.get(ca_name) != version:
                self._revoked[ca_name] = {r.serial: r for r in self._source.revocations(ca_name)}
                self._versions[ca_name] = version
                changed = True
        if not changed and (self._next_refresh is None or now < self._next_refresh):
            return []
        work = []
        for ca_name, targets in self._targets.items():
            revoked = self._revoked[ca_name]
            for serial, target in list(targets.items()):
                if target.not_after <= now:
                    self._forget(target)
                    continue
                status = status_of(revoked.get(serial))
                if resign_due(self._held.get((ca_name, serial)), status, now):
                    work.append((target, status))
        self._next_refresh = min((h.refresh_at for h in self._held.values()), default=None)
        return work

    def write(self, target: _Target, status: StatusAnswer, now: datetime) -> None:
        answer = self._responder.sign(target.ca_name, target.request, status, now=now)
        try:
            write_public_file(target.path, answer.body)
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            # Another certificate's name is a directory prefix of this one (or the reverse):
            # no file, so nginx passes the query on to the responder.
            log.info("no pre-signed OCSP file for %s/%s: %s", target.ca_name, target.serial, exc)
            self._targets[target.ca_name].pop(target.serial, None)
            return
        assert answer.this_update is not None
        # nginx derives Last-Modified, and Expires with `expires modified +<validity>`, from
        # the file's time: thisUpdate (RFC 5019 6.2).
        stamp = answer.this_update.timestamp()
        os.utime(target.path, (stamp, stamp))
        held = Presigned(status, refresh_time(answer))
        self._held[(target.ca_name, target.serial)] = held
        if self._next_refresh is None or held.refresh_at < self._next_refresh:
            self._next_refresh = held.refresh_at

    def sweep(self, now: datetime) -> int:
        """Write every file due now; how many were written."""
        work = self.due(now)
        for target, status in work:
            self.write(target, status, now)
        return len(work)

    async def run(
        self, clock: Callable[[], datetime], *, every: float = PRESIGN_CHECK_EVERY
    ) -> None:
        """Sweep forever; a first sweep over many certificates yields to the event loop."""
        while True:
            try:
                work = self.due(clock())
                for n, (target, status) in enumerate(work, 1):
                    self.write(target, status, clock())
                    if n % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)
            except Exception:
                # The files already written stay valid; the next sweep tries again.
                log.exception("pre-signing OCSP answers failed; retrying in %.0f s", every)
            await asyncio.sleep(every)

    def _reload_certificates(self) -> bool:
        count = self._source.count()
        if count == self._count:
            return False
        self._count = count
        for ca_name, targets in self._targets.items():
            for record in self._source.issued(ca_name=ca_name):
                if record.serial not in targets:
                    target = self._target(ca_name, record)
                    if target is not None:
                        targets[record.serial] = target
        return True

    def _target(self, ca_name: str, record: IssuedCertificate) -> _Target | None:
        name_hash, key_hash = self._issuer_hashes[ca_name]
        cert_id = CertID("sha1", name_hash, key_hash, int(record.serial, 16))
        name = file_name(sha1_request(cert_id))
        if name is None:
            return None
        path = self._directories[ca_name].joinpath(name)
        if self._names.setdefault(path, record.serial) != record.serial:
            return None  # two CertIDs, one merged name: the responder answers both
        return _Target(ca_name, record.serial, record.not_after, StatusRequest(cert_id), path)

    def _forget(self, target: _Target) -> None:
        self._targets[target.ca_name].pop(target.serial, None)
        self._held.pop((target.ca_name, target.serial), None)
        target.path.unlink(missing_ok=True)


def _sha1(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA1())  # noqa: S303 - the CertID hash of RFC 5019
    digest.update(data)
    return digest.finalize()


__all__ = [
    "PRESIGN_CHECK_EVERY",
    "PresignSource",
    "Presigned",
    "PresignedResponses",
    "file_name",
    "resign_due",
    "sha1_request",
]
