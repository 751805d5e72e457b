"""Attacks on a CA system's receiving means: hostile XML and frames from a registered CA-client,
strangers without a registered credential, old TLS, slow and idle connections.

The target is the factory CA system of the deployment (`ztpki ca serve`), reached over real TLS
with the loading station's CA-client credential. After each case: the answer, nothing issued,
and a legitimate CA-client request still served.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from tests.attacks.attack_deployment import Deployment
from tests.attacks.attack_report import AttackReport
from tests.attacks.attack_wire import RawTLS, legacy_tls_context, tls_handshake

from ztpki.casystem.service import ServiceLimits
from ztpki.credentials import Credential, client_context
from ztpki.pki.authority import create_self_signed_ca
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.protocol.enrollment import EnrollmentAnswer, EnrollmentError, ErrorCode
from ztpki.protocol.est import build_csr
from ztpki.protocol.framing import MAX_FRAME_SIZE, encode_frame

pytestmark = pytest.mark.timeout(240)

NS = "urn:ztpki:enrollment:1"
# The service's own bounds: a frame's body must arrive within read_timeout once its header
# did; an idle connection lives idle_timeout; at most max_connections are served at once.
LIMITS = ServiceLimits()
READ_TIMEOUT = LIMITS.read_timeout


def _request(inner: str = "<DeviceId>attack-1</DeviceId>", *, prolog: str = "") -> bytes:
    return (
        f"<?xml version='1.0' encoding='UTF-8'?>{prolog}"
        f'<EnrollmentRequest xmlns="{NS}" id="atk">{inner}</EnrollmentRequest>'
    ).encode()


def _billion_laughs() -> bytes:
    entities = '<!ENTITY l0 "lol">' + "".join(
        f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10)
    )
    return _request(
        "<DeviceId>&l9;</DeviceId>", prolog=f"<!DOCTYPE EnrollmentRequest [{entities}]>"
    )


def _deep_nesting(depth: int = 50_000) -> bytes:
    return _request("<DeviceId>x</DeviceId>" + "<P>" * depth + "</P>" * depth)


def _bad_csr_signature() -> bytes:

    csr = build_csr(generate_private_key(KeySpec.EC_P256), device_id="attack-1")
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature value
    csr_b64 = base64.b64encode(bytes(der)).decode()
    return _request(f"<DeviceId>attack-1</DeviceId><CSR>{csr_b64}</CSR>")


HOSTILE_XML = [
    pytest.param(
        "xml-billion-laughs",
        "an entity expansion bomb (10^9 'lol' from nine nested entities in an internal DTD)",
        _billion_laughs(),
        id="fail-billion-laughs",
    ),
    pytest.param(
        "xml-external-entity",
        "an external entity reading /etc/passwd into DeviceId",
        _request(
            "<DeviceId>&x;</DeviceId>",
            prolog='<!DOCTYPE EnrollmentRequest [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
        ),
        id="fail-external-entity",
    ),
    pytest.param(
        "xml-external-dtd",
        "a DOCTYPE naming an external DTD on the network",
        _request(prolog='<!DOCTYPE EnrollmentRequest SYSTEM "http://127.0.0.1:9/evil.dtd">'),
        id="fail-external-dtd",
    ),
    pytest.param(
        "xml-parameter-entity",
        "a parameter entity pulling an external DTD fragment",
        _request(
            prolog='<!DOCTYPE EnrollmentRequest [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
        ),
        id="fail-parameter-entity",
    ),
    pytest.param(
        "xml-deep-nesting",
        "50,000 nested elements inside the request",
        _deep_nesting(),
        id="fail-deep-nesting",
    ),
    pytest.param(
        "xml-xinclude",
        "an XInclude of /etc/passwd",
        _request(
            '<DeviceId>attack-1</DeviceId><xi:include xmlns:xi="http://www.w3.org/2001/XInclude"'
            ' href="file:///etc/passwd" parse="text"/>'
        ),
        id="fail-xinclude",
    ),
    pytest.param(
        "xml-processing-instruction",
        "a processing instruction inside the document",
        _request('<?xml-stylesheet href="x"?><DeviceId>attack-1</DeviceId>'),
        id="fail-processing-instruction",
    ),
    pytest.param(
        "xml-foreign-encoding",
        "a UTF-7 encoding declaration (the classic filter bypass)",
        b"<?xml version='1.0' encoding='UTF-7'?>"
        + _request().split(b"?>", 1)[1].replace(b"attack-1", b"+ADw-x+AD4-"),
        id="fail-foreign-encoding",
    ),
    pytest.param(
        "xml-malformed-base64-csr",
        "a CSR element that is not base64",
        _request("<DeviceId>attack-1</DeviceId><CSR>!!!not*base64!!!</CSR>"),
        id="fail-malformed-base64",
    ),
    pytest.param(
        "xml-malformed-der-csr",
        "a CSR element holding base64 of bytes that are not DER",
        _request(
            "<DeviceId>attack-1</DeviceId><CSR>"
            + base64.b64encode(b"\x30\x82\xff\xff garbage").decode()
            + "</CSR>"
        ),
        id="fail-malformed-der",
    ),
    pytest.param(
        "xml-csr-bad-signature",
        "a CSR whose signature does not verify",
        _bad_csr_signature(),
        id="fail-csr-signature",
    ),
    pytest.param(
        "xml-not-xml",
        "a frame of random binary bytes",
        bytes(range(256)) * 4,
        id="fail-not-xml",
    ),
]


def _connect(d: Deployment, credential: Credential | None = None) -> RawTLS:
    cred = credential or d.credential("cred-line1")
    context = client_context(
        key=cred.key, chain=list(cred.chain), server_anchors=list(cred.trust_anchors)
    )
    return RawTLS(d.address("factory"), context)


def _control(d: Deployment, before: int) -> str:
    """Nothing was issued by the attack; then a legitimate request is served (one issued)."""
    assert d.issued_count("factory") == before, "the CA system issued a certificate"
    answer = d.enroll_factory(f"ctl-{time.monotonic_ns()}")
    assert isinstance(answer, EnrollmentAnswer)
    assert d.issued_count("factory") == before + 1
    return "nothing issued; next legitimate CA-client request served"


def _error(answer: EnrollmentAnswer | EnrollmentError) -> tuple[EnrollmentError, str]:
    assert isinstance(answer, EnrollmentError), "the CA system answered with a certificate"
    return answer, f"XML error {answer.code.value}: {answer.message}"


@pytest.mark.parametrize(("case", "attack", "payload"), HOSTILE_XML)
def test_fail_hostile_xml(
    deployment: Deployment, attack_report: AttackReport, case: str, attack: str, payload: bytes
) -> None:
    before = deployment.issued_count("factory")
    started = time.monotonic()
    with _connect(deployment) as conn:
        conn.send(encode_frame(payload))
        answer, text = _error(conn.read_frame())
        deployment.transcript.add(f"ca {case}", text)
        assert answer.code is ErrorCode.MALFORMED, text
        assert "root:" not in answer.message, "file content leaked into the answer"
        # The connection stays usable: a well-formed request on it is answered.
        conn.send(encode_frame(_request("<DeviceId>@bad@</DeviceId>")))
        assert isinstance(conn.read_frame(), EnrollmentError)
    assert time.monotonic() - started < 10, "the hostile document took the parser too long"
    attack_report.record(
        case=f"protocol/ca-{case}",
        category="protocol",
        attack=f"CA system: {attack}",
        observed=f"{text}; connection kept for the next frame; " + _control(deployment, before),
        verdict="refused",
    )


@pytest.mark.parametrize(
    ("case", "header", "attack"),
    [
        pytest.param(
            "frame-announces-4-gib",
            (0xFFFFFFFF).to_bytes(4, "big"),
            "a frame header announcing 4 GiB - 1",
            id="fail-4gib",
        ),
        pytest.param(
            "frame-one-over-limit",
            (MAX_FRAME_SIZE + 1).to_bytes(4, "big"),
            f"a frame header announcing {MAX_FRAME_SIZE + 1} bytes (the limit plus one)",
            id="fail-limit-plus-one",
        ),
    ],
)
def test_fail_oversized_frame(
    deployment: Deployment, attack_report: AttackReport, case: str, header: bytes, attack: str
) -> None:
    before = deployment.issued_count("factory")
    with _connect(deployment) as conn:
        conn.send(header)  # and no body: the service must not wait for it
        answer, text = _error(conn.read_frame())
        assert answer.code is ErrorCode.MALFORMED and "exceeds the limit" in answer.message
        closed = conn.closed_within(5)
        assert closed is not None, "the service kept a connection whose framing is lost"
    attack_report.record(
        case=f"protocol/ca-{case}",
        category="protocol",
        attack=f"CA system: {attack}",
        observed=f"{text}; connection closed at once; " + _control(deployment, before),
        verdict="refused",
    )


def test_fail_empty_and_truncated_frames(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    before = deployment.issued_count("factory")
    with _connect(deployment) as conn:
        conn.send(encode_frame(b""))
        _, text = _error(conn.read_frame())
        assert "empty" in text
    with _connect(deployment) as conn:
        conn.send((1000).to_bytes(4, "big") + b"<Enroll")  # then hang up mid-frame
    attack_report.record(
        case="protocol/ca-empty-and-truncated-frames",
        category="protocol",
        attack="CA system: a zero-length frame; a frame cut off after 7 of 1,000 bytes",
        observed=f"{text}; the truncated frame was dropped with its connection; "
        + _control(deployment, before),
        verdict="refused",
    )


def test_fail_unregistered_ca_client(deployment: Deployment, attack_report: AttackReport) -> None:
    """A credential the CA system issued, then removed: TLS passes, the registry refuses."""
    d = deployment
    name = f"rogue-{time.monotonic_ns() % 10**9}"
    out = d.root / f"cred-{name}"
    d.cli(
        "ca",
        "add-client",
        "--dir",
        str(d.factory_dir),
        "--name",
        name,
        "--out",
        str(out),
        "--ca",
        "factory",
        system="factory",
    )
    d.cli("ca", "remove-client", "--dir", str(d.factory_dir), "--name", name, system="factory")
    removed = d.credential(out.name)
    before = d.issued_count("factory")
    with _connect(d, removed) as conn:
        answer, text = _error(conn.read_frame())  # refused before any request is read
        assert answer.code is ErrorCode.NOT_AUTHORIZED and "not registered" in answer.message
        assert conn.closed_within(5) is not None
    attack_report.record(
        case="protocol/ca-unregistered-ca-client",
        category="protocol",
        attack="CA system: a CA-client whose credential was removed (`ztpki ca remove-client`)",
        observed=f"{text}; connection closed; " + _control(d, before),
        verdict="refused",
    )


def test_fail_stranger_ca_client(deployment: Deployment, attack_report: AttackReport) -> None:
    """A client certificate from a CA the service does not know, and no certificate at all."""
    d = deployment
    key = generate_private_key(KeySpec.EC_P256)
    rogue_ca = create_self_signed_ca(
        key,
        build_subject("Rogue CA", SubjectFields(), serial_number=None),
        now=datetime.now(UTC),
        validity=timedelta(days=1),
    )
    anchors = list(d.credential("cred-line1").trust_anchors)
    before = d.issued_count("factory")
    mark = d.log_mark("factory")
    stranger = tls_handshake(
        d.address("factory"),
        client_context(key=key, chain=[rogue_ca], server_anchors=anchors),
    )
    assert stranger is not None
    stranger_logged = d.tls_refusal(mark)
    assert "self-signed certificate" in stranger_logged, stranger_logged
    mark = d.log_mark("factory")
    anonymous = tls_handshake(
        d.address("factory"), client_context(key=None, chain=[], server_anchors=anchors)
    )
    assert anonymous is not None
    anonymous_logged = d.tls_refusal(mark)
    assert "certificate" in anonymous_logged, anonymous_logged
    d.transcript.add("ca stranger", f"{stranger}\n{anonymous}")
    attack_report.record(
        case="protocol/ca-stranger-ca-client",
        category="protocol",
        attack="CA system: a client certificate from an unknown CA; a client with no certificate",
        observed=(
            "TLS handshake refused, connection closed with no answer; the CA system logged "
            f"'TLS handshake failed: {stranger_logged}' and, without a certificate, "
            f"'{anonymous_logged}'; " + _control(d, before)
        ),
        verdict="refused",
    )


def test_fail_legacy_tls(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    before = d.issued_count("factory")
    mark = d.log_mark("factory")
    refused = tls_handshake(d.address("factory"), legacy_tls_context([]))
    assert refused is not None, "the CA system completed a TLS 1.0/1.1 handshake"
    logged = d.tls_refusal(mark)
    assert "unsupported protocol" in logged, logged
    d.transcript.add("ca legacy tls", refused)
    attack_report.record(
        case="protocol/ca-tls-1.0-1.1",
        category="protocol",
        attack="CA system: a client offering only TLS 1.0 and TLS 1.1",
        observed=f"TLS handshake refused, no session; the CA system logged 'TLS handshake "
        f"failed: {logged}'; " + _control(d, before),
        verdict="refused",
    )


def test_contained_slow_client(deployment: Deployment, attack_report: AttackReport) -> None:
    """A frame body sent one byte at a time is cut off after the read timeout, while a
    legitimate CA-client is served during the attack."""
    d = deployment
    before = d.issued_count("factory")
    payload = _request()
    stop = threading.Event()
    with _connect(d) as slow:
        slow.send(len(payload).to_bytes(4, "big"))
        started = time.monotonic()

        def trickle() -> None:
            for byte in payload:
                if stop.is_set():
                    return
                with contextlib.suppress(OSError):
                    slow.send(bytes([byte]))
                stop.wait(0.5)

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        served = d.enroll_factory(f"during-slow-{time.monotonic_ns()}")
        assert isinstance(served, EnrollmentAnswer)
        during = time.monotonic() - started
        closed = slow.closed_within(READ_TIMEOUT + 10)
        stop.set()
        sender.join(timeout=5)
    assert closed is not None, "the slow client was never disconnected"
    lasted = time.monotonic() - started
    assert READ_TIMEOUT - 1 <= lasted <= READ_TIMEOUT + 10, lasted
    assert during < READ_TIMEOUT
    assert d.issued_count("factory") == before + 1  # only the legitimate request
    attack_report.record(
        case="protocol/ca-slow-client",
        category="protocol",
        attack="CA system: a frame header, then the body one byte every 0.5 s",
        observed=(
            f"connection closed by the service after its {READ_TIMEOUT:.0f} s read timeout "
            "(within the bound); a legitimate CA-client was served during the attack; "
            "nothing issued for the slow client"
        ),
        verdict="contained",
    )


@contextlib.contextmanager
def _held_connections(d: Deployment, count: int) -> Iterator[list[RawTLS]]:
    cred = d.credential("cred-line1")
    context = client_context(
        key=cred.key, chain=list(cred.chain), server_anchors=list(cred.trust_anchors)
    )
    held: list[RawTLS] = []
    try:
        for _ in range(count):
            held.append(RawTLS(d.address("factory"), context))
        yield held
    finally:
        for conn in held:
            conn.close()


def test_contained_many_idle_connections(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    before = d.issued_count("factory")
    with _held_connections(d, 300) as held:
        assert len(held) == 300
        served = d.enroll_factory(f"during-flood-{time.monotonic_ns()}")
        assert isinstance(served, EnrollmentAnswer)
        # The held connections are still open (idle timeout 120 s): the service holds them
        # without starving others.
        assert held[0].closed_within(0.2) is None
    assert d.issued_count("factory") == before + 1
    attack_report.record(
        case="protocol/ca-many-idle-connections",
        category="protocol",
        attack="CA system: 300 TLS connections of a registered CA-client opened and held idle",
        observed=(
            f"all 300 accepted and held (idle timeout {LIMITS.idle_timeout:.0f} s, at most "
            f"{LIMITS.max_connections} connections); a legitimate CA-client request was served "
            "while they were held; nothing else issued"
        ),
        verdict="contained",
    )
