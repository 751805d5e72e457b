"""CMP polling (RFC 9483 section 4.4) through the customer node: while the customer CA system
is stopped, an ir (or a p10cr) is answered ``waiting`` and the device polls (pollReq ->
pollRep) until the CA system is back, then gets its ip (cp) and confirms it as usual -- one
certificate, exactly once.

Real processes on loopback over TLS: `openssl cmp` (which polls on its own when answered
``waiting``) and ztpki's codec for the requests openssl cannot be made to send (a pollReq for
an unknown transaction, a wrong certReqId, another device's signature).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from node_fixtures import TEST_LIMITS, Device, NodeWorld, build_world
from test_node_cmp import SUBJECT, new_key, post, unchanged
from tests.attacks.attack_deployment import wait_until
from tests.support.cmp_messages import (
    cert_conf,
    ir_body,
    refusal,
    request_header,
    signed,
)
from tests.support.shell import sh

from ztpki.device.cmp_activation import trust_for
from ztpki.device.cmp_client import CMPClient
from ztpki.device.cmp_transaction import Credentials
from ztpki.pki.pem import load_certificates_pem
from ztpki.protocol.cmp import (
    BodyType,
    CertRepBody,
    FailInfo,
    Header,
    PKIMessage,
    PKIStatus,
    PollRepBody,
    PollReqBody,
    certificate_hash,
)

# The node advises checkAfter = retry_after when its CA system is unavailable: 1 s keeps the
# test short (openssl waits checkAfter between polls).
# cmp_wait_seconds: a request the stopped (SIGSTOP) CA system does not answer within 4 s is
# answered 'waiting', well before ca_timeout (10 s) ends the issuance.
LIMITS = {**TEST_LIMITS, "retry_after": 1, "cmp_wait_seconds": 4.0}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:
    w = build_world(tmp_path_factory.mktemp("node-cmp-poll"), limits=LIMITS)
    try:
        yield w
    finally:
        w.stop()


@contextlib.contextmanager
def customer_ca_stopped(world: NodeWorld) -> Iterator[None]:
    world.customer.stop()
    try:
        yield
    finally:
        world.restart_customer()


def cmp_rows(world: NodeWorld, device_id: str) -> list[tuple[str, str | None]]:
    """(state, waiting_since) of the device's CMP transactions, from the node's register."""
    query = "SELECT state, waiting_since FROM cmp_transaction WHERE device_id = ?"
    path = world.node_dir / "node.sqlite"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute(query, (device_id,)).fetchall()


# ------------------------------------------------------------------ openssl cmp polls


@pytest.mark.parametrize(("cmd", "answer"), [("ir", "IP"), ("p10cr", "CP")])
def test_ok_openssl_polls_until_the_ca_system_is_back(
    world: NodeWorld, cmd: str, answer: str
) -> None:
    (device,) = world.make_devices(1)
    cwd = world.root / f"poll-{device.device_id}"
    cwd.mkdir()
    new_key(cwd)
    subject = SUBJECT.format(id=device.device_id)
    if cmd == "p10cr":  # the key request is a PKCS#10 CSR (RFC 9483 section 4.1.4)
        request = ["-csr", "p10.csr"]
        sh(f"openssl req -new -key new.key -subj '{subject}' -out p10.csr", cwd)
    else:
        request = ["-newkey", "new.key", "-subject", subject]
    anchor = str(world.factory_anchor)
    command = ["openssl", "cmp", "-server", world.node.address, "-path", ".well-known/cmp",
               "-tls_used", "-tls_trusted", anchor, "-trusted", anchor, "-cmd", cmd,
               "-cert", str(device.cert_path), "-key", str(device.key_path), *request,
               "-certout", "new.pem", "-verbosity", "7", "-total_timeout", "120"]  # fmt: skip
    with customer_ca_stopped(world):
        openssl = subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert openssl.stdout is not None
        seen: list[str] = []
        # openssl's own log says when it was answered 'waiting' and polled: the CA system is
        # started only after the node answered a pollReq with pollRep.
        for line in openssl.stdout:
            seen.append(line)
            if "received POLLREP" in line:
                break
        else:
            pytest.fail("openssl ended without polling:\n" + "".join(seen))
        assert cmp_rows(world, device.device_id) == [
            ("open", cmp_rows(world, device.device_id)[0][1])
        ]
        assert cmp_rows(world, device.device_id)[0][1] is not None  # the register knows
        assert world.issued(device.device_id) == []  # nothing issued while waiting
    rest, _ = openssl.communicate(timeout=120)
    log = "".join(seen) + rest
    assert openssl.returncode == 0, log
    assert f"received {answer}" in log and "received PKICONF" in log, log
    certificate = load_certificates_pem((cwd / "new.pem").read_bytes())[0]
    assert world.state(device.device_id) == "customized"
    (issued,) = world.issued(device.device_id)  # exactly one certificate
    assert int(issued["serial"], 16) == certificate.serial_number
    assert [state for state, _ in cmp_rows(world, device.device_id)] == ["confirmed"]


# ------------------------------------------------------------------ ztpki's codec polls


def waiting_ir(world: NodeWorld, device: Device) -> Header:
    """The header of an ir answered 'waiting' (the CA system is stopped)."""
    header = request_header(device.certificate)
    answer = post(world, signed(device.key, device.certificate, header, ir_body(device.device_id)))
    assert isinstance(answer.body, CertRepBody) and answer.body.type is BodyType.IP
    (response,) = answer.body.responses
    assert response.status.status is PKIStatus.WAITING and response.certificate_der is None
    assert response.cert_req_id == 0
    return header


def poll_req(header: Header, *cert_req_ids: int) -> tuple[Header, PollReqBody]:
    follow = replace(header, sender_nonce=b"p" * 16, message_time=datetime.now(UTC))
    return follow, PollReqBody(cert_req_ids)


def poll_until_answered(
    world: NodeWorld, device: Device, header: Header
) -> tuple[Header, PKIMessage]:
    """pollReq until the node answers something else than pollRep (a loaded machine may make
    the first issuance after the CA system's restart outlast cmp_wait_seconds)."""
    for _ in range(10):
        follow, body = poll_req(header, 0)
        answer = post(world, signed(device.key, device.certificate, follow, body))
        if not isinstance(answer.body, PollRepBody):
            return follow, answer
    pytest.fail("the node kept answering pollRep with its CA system running")


def test_ok_pollreq_gets_pollrep_then_the_certificate(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    with customer_ca_stopped(world):
        header = waiting_ir(world, device)
        follow, body = poll_req(header, 0)
        answer = post(world, signed(device.key, device.certificate, follow, body))
        assert isinstance(answer.body, PollRepBody), answer.body
        (entry,) = answer.body.entries
        assert entry.cert_req_id == 0 and entry.check_after >= 1
        unchanged(world, device)
    follow, answer = poll_until_answered(world, device, header)
    assert isinstance(answer.body, CertRepBody) and answer.body.type is BodyType.IP
    (response,) = answer.body.responses
    assert response.status.status is PKIStatus.ACCEPTED and response.certificate_der
    assert world.state(device.device_id) == "issued"
    # certConf as usual, on the same transaction.
    certificate = x509.load_der_x509_certificate(response.certificate_der)
    confirm_header, confirm = cert_conf(follow, answer, certificate_hash(certificate))
    done = post(world, signed(device.key, device.certificate, confirm_header, confirm))
    assert done.body.type is BodyType.PKI_CONF, done.body
    assert world.state(device.device_id) == "customized"
    assert len(world.issued(device.device_id)) == 1
    # The transaction is over: another pollReq is refused, and changes nothing.
    follow, body = poll_req(header, 0)
    fail, text = refusal(post(world, signed(device.key, device.certificate, follow, body)))
    assert fail == {FailInfo.BAD_REQUEST} and "nothing to poll for" in text
    assert world.state(device.device_id) == "customized"
    assert len(world.issued(device.device_id)) == 1


def test_fail_pollreq_for_an_unknown_transaction(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    follow, body = poll_req(request_header(device.certificate), 0)
    fail, text = refusal(post(world, signed(device.key, device.certificate, follow, body)))
    assert fail == {FailInfo.BAD_REQUEST} and "no CMP transaction" in text
    unchanged(world, device)
    assert cmp_rows(world, device.device_id) == []


def test_fail_pollreq_with_a_wrong_cert_req_id_or_signer(world: NodeWorld) -> None:
    device, other = world.make_devices(2)
    with customer_ca_stopped(world):
        header = waiting_ir(world, device)
        before = cmp_rows(world, device.device_id)
        follow, body = poll_req(header, 7)
        fail, text = refusal(post(world, signed(device.key, device.certificate, follow, body)))
        assert fail == {FailInfo.BAD_CERT_ID} and "certReqId 0" in text
        # Another device polling for this transaction: not its request.
        follow, body = poll_req(replace(header, sender=other.certificate.subject), 0)
        fail, text = refusal(post(world, signed(other.key, other.certificate, follow, body)))
        assert fail == {FailInfo.NOT_AUTHORIZED} and "another certificate" in text
        assert cmp_rows(world, device.device_id) == before  # still waiting, unchanged
        unchanged(world, device)
        unchanged(world, other)


# ------------------------------------------------------------------ ztpki's own client polls


def test_ok_ztpki_client_polls_until_the_ca_system_is_back(world: NodeWorld) -> None:
    """device/cmp_client.py waits checkAfter between polls: its wait starts the CA system
    again once the node has answered a pollRep (no sleep: the client's own hook)."""
    (device,) = world.make_devices(1)
    anchors = load_certificates_pem(world.factory_anchor.read_bytes())
    waits: list[float] = []

    async def wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:  # the first pollRep came: the node is waiting for its CA system
            assert cmp_rows(world, device.device_id)[0][1] is not None
            await asyncio.to_thread(world.restart_customer)

    async def run() -> x509.Certificate:
        client = CMPClient(
            f"https://{world.node.address}/.well-known/cmp",
            Credentials(device.key, device.certificate),  # type: ignore[arg-type]
            trust_for(anchors),
            context=world.context(),
            wait=wait,
        )
        async with client:
            key = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, device.device_id)])
            enrollment = await client.enroll(BodyType.IR, key, subject=subject)
            await client.confirm(enrollment)
            assert client.polls >= 2
            return enrollment.certificate

    world.customer.stop()
    certificate = asyncio.run(run())
    assert waits[:2] == [0, 1]  # the node's checkAfter is its retry_after
    assert world.state(device.device_id) == "customized"
    (issued,) = world.issued(device.device_id)
    assert int(issued["serial"], 16) == certificate.serial_number
    assert [state for state, _ in cmp_rows(world, device.device_id)] == ["confirmed"]


def test_ok_slow_ca_system_issues_in_the_background(world: NodeWorld) -> None:
    """The CA system is stopped mid-issuance (SIGSTOP): the ir is answered 'waiting' after
    cmp_wait_seconds while the issuance goes on; once the CA system continues, it lands in
    the register and the pollReq is answered with that same certificate, issued once."""
    (device,) = world.make_devices(1)
    os.kill(world.customer.pid, signal.SIGSTOP)
    try:
        header = waiting_ir(world, device)
        assert world.state(device.device_id) == "issuing"  # the lease is held meanwhile
    finally:
        os.kill(world.customer.pid, signal.SIGCONT)
    assert wait_until(lambda: world.state(device.device_id) == "issued", timeout=30)
    _, answer = poll_until_answered(world, device, header)
    assert isinstance(answer.body, CertRepBody) and answer.body.type is BodyType.IP
    (response,) = answer.body.responses
    assert response.certificate_der is not None
    certificate = x509.load_der_x509_certificate(response.certificate_der)
    (issued,) = world.issued(device.device_id)  # the background issuance's, not a second
    assert int(issued["serial"], 16) == certificate.serial_number
    decisions = [e["decision"] for e in world.audit(device.device_id)]
    assert decisions.count("issued") == 1 and "redelivered" in decisions
