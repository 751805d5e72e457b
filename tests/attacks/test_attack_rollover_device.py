"""Attacks on a device following a root CA key update by itself (device/cmp_activation.py):
a hostile node answers the genm rootCaCert a renewal sends with a tampered newWithOld.

ztpki's own node never serves such an update (it finds a rollover only by signature,
pki.rollover.find_update), so the attacker here is a node whose key was stolen: a TLS and CMP
server on loopback with a certificate that chains to the device's factory anchor, signing
its own answers. The device is the real `ztpki device renew` in its own process, with a
memory customized under a customer root; the check is that its memory is byte for byte
what it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from tests.attacks.attack_report import AttackReport
from tests.support.services import run_ztpki

from ztpki.credentials import server_context
from ztpki.device import DeviceMemory, Phase
from ztpki.device.customer_node import CONFIRMED_KEY, PROTOCOL_KEY
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, PrivateKey, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.profiles import CertificateProfile
from ztpki.pki.rollover import update_root_key
from ztpki.protocol.cmp import (
    BodyType,
    ErrorBody,
    FailInfo,
    GenMsgBody,
    Header,
    InfoTypeAndValue,
    StatusInfo,
    decode_message,
    sign_message,
)
from ztpki.protocol.cmp.root_update import (
    ID_IT_ROOT_CA_KEY_UPDATE,
    RootUpdateValue,
    encode_root_update,
)

pytestmark = pytest.mark.timeout(120)

CATEGORY = "rollover-device"
NOW = datetime.now(UTC)
DAY = timedelta(days=1)


def _ca(name: str) -> CertificateAuthority:
    key = generate_private_key(KeySpec.EC_P256)
    subject = build_subject(name, SubjectFields(organization="Customer"), serial_number=None)
    certificate = create_self_signed_ca(key, subject, now=NOW - DAY, validity=timedelta(days=90))
    return CertificateAuthority(name=name, key=key, certificate=certificate)


def _issue(
    ca: CertificateAuthority,
    key: PrivateKey,
    name: str,
    profile: CertificateProfile,
    ip_addresses: tuple[str, ...] = (),
) -> x509.Certificate:
    grant = IssuanceGrant(
        subject=build_subject(name, SubjectFields(), serial_number=name),
        profile=profile, not_before=NOW - DAY, not_after=NOW + 30 * DAY,
        ip_addresses=ip_addresses,
    )  # fmt: skip
    return ca.issue(key.public_key(), grant)


def _kept(memory: DeviceMemory) -> dict[str, bytes]:
    """What the device memory holds (its lock files aside)."""
    return {
        p.name: p.read_bytes()
        for p in memory.path.iterdir()
        if p.is_file() and not p.name.endswith("lock")
    }


@dataclass(frozen=True)
class HostileNode:
    """A CMP server with a node certificate the device's factory anchor vouches for."""

    key: PrivateKey
    certificate: x509.Certificate
    forged: bytes  # the RootCaKeyUpdateValue it answers genm rootCaCert with

    def answer(self, request: bytes) -> bytes:
        asked = decode_message(request)
        header = Header(
            sender=self.certificate.subject, recipient=asked.header.sender,
            transaction_id=asked.header.transaction_id, sender_nonce=os.urandom(16),
            pvno=asked.header.pvno, recip_nonce=asked.header.sender_nonce, message_time=NOW,
        )  # fmt: skip
        body: object
        if asked.body.type is BodyType.GENM:
            item = InfoTypeAndValue(ID_IT_ROOT_CA_KEY_UPDATE, self.forged)
            body = GenMsgBody(BodyType.GENP, (item,))
        else:  # the renewal that follows: refused, so nothing is issued either
            body = ErrorBody(StatusInfo.rejection(FailInfo.BAD_REQUEST, "no"))
        der = self.certificate.public_bytes(Encoding.DER)
        return sign_message(header, body, self.key, extra_certs=(der,))  # type: ignore[arg-type]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, OSError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            answer = self.answer(await reader.readexactly(length))
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/pkixcmp\r\nConnection: close\r\n"
                + f"Content-Length: {len(answer)}\r\n\r\n".encode() + answer
            )  # fmt: skip
            await writer.drain()
        writer.close()


@contextlib.contextmanager
def running(node: HostileNode, client_anchor: x509.Certificate) -> Iterator[int]:
    context = server_context(node.key, [node.certificate], client_anchors=[client_anchor])
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> asyncio.Server:
        return await asyncio.start_server(node.serve, "127.0.0.1", 0, ssl=context)

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)


def test_fail_tampered_new_with_old_at_renewal(tmp_path: Path, attack_report: AttackReport) -> None:
    factory, customer = _ca("factory-anchor"), _ca("croot")
    # The device: customized (over CMP) under the customer root, factory anchor for the node.
    device_key = generate_private_key(KeySpec.EC_P256)
    device_cert = _issue(customer, device_key, "dev-follow-1", CertificateProfile.DEVICE)
    memory = DeviceMemory.create(tmp_path / "device", device_id="dev-follow-1")
    memory.set_trust_anchors([factory.certificate])
    memory.replace_identity(
        phase=Phase.CUSTOMIZED,
        private_key=device_key,
        certificate=device_cert,
        ca_certificates=[customer.certificate],
    )
    memory.update_config(**{CONFIRMED_KEY: True, PROTOCOL_KEY: "cmp"})
    # The forgery: a real-looking rollover of the customer root's name to the attacker's key,
    # its newWithOld signed by a look-alike root, not by the root the device trusts.
    look_alike = _ca("croot")
    forged = update_root_key(
        look_alike.key, look_alike.certificate, generate_private_key(KeySpec.EC_P256),
        now=NOW, validity=timedelta(days=365),
    )  # fmt: skip
    ders = [c.public_bytes(Encoding.DER) for c in (forged.new_with_new, *forged.links)]
    value = encode_root_update(RootUpdateValue(*ders))
    node_key = generate_private_key(KeySpec.EC_P256)
    node_cert = _issue(factory, node_key, "stolen-node", CertificateProfile.SERVER,
                       ip_addresses=("127.0.0.1",))  # fmt: skip
    before = _kept(memory)
    with running(HostileNode(node_key, node_cert, value), customer.certificate) as port:
        result = run_ztpki(
            "device", "renew", "--device", str(memory.path), "--node", f"https://127.0.0.1:{port}",
            check=False,
        )  # fmt: skip
    said = " ".join((result.stdout + result.stderr).split())
    assert "refused the node's root CA update" in said, said
    assert "newWithOld is not signed by the root the device trusts" in said, said
    assert result.returncode != 0  # and the kur the hostile node refused issued nothing
    assert _kept(memory) == before  # no pending key left either
    assert DeviceMemory.open(memory.path).identity().ca_certificates == (customer.certificate,)
    attack_report.record(
        case=f"{CATEGORY}/tampered-new-with-old", category=CATEGORY,
        attack="a node whose key was stolen answers the genm rootCaCert of a device's renewal "
        "with a root update to the attacker's key: newWithNew, and a newWithOld signed by a "
        "look-alike root bearing the customer root's name",
        observed="`ztpki device renew` refuses the update (logged: newWithOld is not signed by "
        "the root the device trusts) and goes on with its kur; the device memory (identity, "
        "CA certificates, configuration) is byte for byte unchanged and the device still "
        "trusts only its customer root",
        verdict="refused",
    )  # fmt: skip
