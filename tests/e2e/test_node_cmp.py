"""CMP (RFC 9483) through the customer node with `openssl cmp` (OpenSSL 3.0) as the device.

Real processes on loopback: factory CA system, customer CA system, `ztpki node serve`, over
TLS. The device's temporary certificate and key protect its ir; the node answers signed with
its TLS server certificate, which openssl verifies against the factory root. Requests openssl
cannot make (a wrong signature, a replayed transaction, a wrong certHash) are forged with
ztpki's own codec and posted over the same TLS.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from node_fixtures import Device, NodeWorld, build_world, cli
from tests.support.cmp_messages import cert_conf, ir_body, refusal, request_header, signed
from tests.support.shell import sh

from ztpki.pki.pem import load_certificates_pem, serial_hex
from ztpki.protocol.cmp import (
    CMP_CONTENT_TYPE,
    BodyType,
    CertRepBody,
    FailInfo,
    Header,
    PKIMessage,
    certificate_hash,
    decode_message,
    protection_certificate,
    verify_protection,
)
from ztpki.protocol.est import decode_certs_only

SUBJECT = "/CN={id}/serialNumber={id}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:
    w = build_world(tmp_path_factory.mktemp("node-cmp"))
    try:
        yield w
    finally:
        w.stop()


def openssl_cmp(
    world: NodeWorld, cwd: Path, *args: str, path: str = ".well-known/cmp", ok: bool = True
) -> str:
    """`openssl cmp` against the node over TLS, trusting the factory root for the TLS server
    certificate and for the node's CMP signature alike; its output. ok: it must succeed, else
    it must fail."""
    anchor = str(world.factory_anchor)
    command = ["openssl", "cmp", "-server", world.node.address, "-path", path, "-tls_used",
               "-tls_trusted", anchor, "-trusted", anchor, *args]  # fmt: skip
    result = sh(shlex.join(command), cwd, check=ok)
    assert (result.returncode == 0) == ok, result
    return result.stdout + result.stderr


def openssl_cmp_refused(world: NodeWorld, cwd: Path, *args: str) -> str:
    return openssl_cmp(world, cwd, *args, ok=False)


def new_key(cwd: Path, name: str = "new.key") -> str:
    sh(f"openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {name}", cwd)
    return name


def ir_args(device: Device, *extra: str) -> list[str]:
    return ["-cmd", "ir", "-cert", str(device.cert_path), "-key", str(device.key_path),
            "-newkey", "new.key", "-subject", SUBJECT.format(id=device.device_id),
            "-certout", "new.pem", *extra]  # fmt: skip


def enroll_ir(world: NodeWorld, device: Device, cwd: Path, *extra: str) -> x509.Certificate:
    new_key(cwd)
    log = openssl_cmp(world, cwd, *ir_args(device, *extra))
    assert "received IP" in log and "received PKICONF" in log, log
    return load_certificates_pem((cwd / "new.pem").read_bytes())[0]


def unchanged(world: NodeWorld, device: Device, *, state: str = "listed") -> None:
    assert world.state(device.device_id) == state
    if state == "listed":
        assert world.issued(device.device_id) == []


# ------------------------------------------------------------------ ztpki's codec as a device


def post(world: NodeWorld, body: bytes, *, path: str = "/.well-known/cmp") -> PKIMessage:
    response = world.request(
        "POST", f"https://{world.node.address}{path}", body=body,
        headers={"Content-Type": CMP_CONTENT_TYPE},
    )  # fmt: skip
    assert response.status == 200, response.text
    assert response.headers["Content-Type"] == CMP_CONTENT_TYPE
    answer = decode_message(response.body)
    verify_protection(answer, protection_certificate(answer))  # the node signs every answer
    return answer


def device_ir(
    device: Device, *, transaction_id: bytes | None = None, signing_key: object = None
) -> tuple[bytes, Header]:
    """An ir like openssl's, signed with the device's temporary key (or signing_key)."""
    header = request_header(device.certificate)
    if transaction_id is not None:
        header = replace(header, transaction_id=transaction_id)
    key = signing_key if signing_key is not None else device.key
    return signed(key, device.certificate, header, ir_body(device.device_id)), header


# ------------------------------------------------------------------ openssl: the happy paths


def test_ok_openssl_ir_and_certconf_customize_the_device(world: NodeWorld, tmp_path: Path) -> None:
    (device,) = world.make_devices(1)
    issued = enroll_ir(world, device, tmp_path)
    assert issued.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)[0].value == (
        device.device_id
    )
    assert world.state(device.device_id) == "customized"
    assert [r["serial"] for r in world.active(device.device_id)] == [serial_hex(issued)]
    entries = world.audit(device.device_id)
    assert [e["decision"] for e in entries][-2:] == ["issued", "confirmed"]
    assert all(e["endpoint"] == "cmp/default/" + kind for e, kind in
               zip(entries[-2:], ["ir", "certConf"], strict=True))  # fmt: skip

    # Customized over CMP: its temporary certificate is refused by EST and by CMP alike.
    refused = world.post_csr(device, "simpleenroll", device.csr())
    assert refused.status == 403 and "already customized" in refused.text
    new_key(tmp_path, "again.key")
    log = openssl_cmp_refused(world, tmp_path, *ir_args(device)[:-2], "-certout", "again.pem")
    assert "notAuthorized" in log and "already customized" in log, log
    assert [r["serial"] for r in world.active(device.device_id)] == [serial_hex(issued)]


def test_ok_openssl_kur_renews_with_the_operational_certificate_over_its_own_tls(
    world: NodeWorld, tmp_path: Path
) -> None:
    (device,) = world.make_devices(1)
    first = enroll_ir(world, device, tmp_path)
    new_key(tmp_path, "renewed.key")
    # The kur is protected by the operational certificate, which is also the TLS client's.
    log = openssl_cmp(world, tmp_path, "-cmd", "kur", "-cert", "new.pem", "-key", "new.key",
                      "-tls_cert", "new.pem", "-tls_key", "new.key", "-newkey", "renewed.key",
                      "-certout", "renewed.pem")  # fmt: skip
    assert "received KUP" in log and "received PKICONF" in log, log
    renewed = load_certificates_pem((tmp_path / "renewed.pem").read_bytes())[0]
    assert renewed.serial_number != first.serial_number
    assert world.state(device.device_id) == "customized"
    assert world.register()[device.device_id]["serial"] == serial_hex(renewed)
    decisions = [e["decision"] for e in world.audit(device.device_id)]
    assert decisions.count("issued") == 2 and "renewal-confirmed" in decisions


def test_ok_openssl_cr_and_p10cr_with_the_temporary_certificate(
    world: NodeWorld, tmp_path: Path
) -> None:
    cr_device, p10_device = world.make_devices(2)
    new_key(tmp_path)
    log = openssl_cmp(world, tmp_path, "-cmd", "cr", "-cert", str(cr_device.cert_path),
                      "-key", str(cr_device.key_path), "-newkey", "new.key", "-subject",
                      SUBJECT.format(id=cr_device.device_id), "-certout", "cr.pem")  # fmt: skip
    assert "received CP" in log and "received PKICONF" in log, log
    assert world.state(cr_device.device_id) == "customized"

    subject = SUBJECT.format(id=p10_device.device_id)
    sh(f"openssl req -new -key new.key -subj '{subject}' -out p10.csr", tmp_path)
    log = openssl_cmp(world, tmp_path, "-cmd", "p10cr", "-cert", str(p10_device.cert_path),
                      "-key", str(p10_device.key_path), "-csr", "p10.csr",
                      "-certout", "p10.pem")  # fmt: skip
    assert "received CP" in log and "received PKICONF" in log, log
    issued = load_certificates_pem((tmp_path / "p10.pem").read_bytes())[0]
    assert world.state(p10_device.device_id) == "customized"
    assert world.register()[p10_device.device_id]["serial"] == serial_hex(issued)


def test_ok_label_path_issues_from_that_labels_ca(world: NodeWorld, tmp_path: Path) -> None:
    (device,) = world.make_devices(1)
    new_key(tmp_path)
    log = openssl_cmp(world, tmp_path, *ir_args(device), path=".well-known/cmp/p/meters")
    assert "received PKICONF" in log, log
    issued = load_certificates_pem((tmp_path / "new.pem").read_bytes())[0]
    meters = load_certificates_pem((world.root / "meters-chain.pem").read_bytes())[0]
    assert issued.issuer == meters.subject
    assert [e["endpoint"] for e in world.audit(device.device_id)][-1] == "cmp/meters/certConf"


def test_ok_implicit_confirm_is_not_granted_without_the_labels_policy(
    world: NodeWorld, tmp_path: Path
) -> None:
    (device,) = world.make_devices(1)
    new_key(tmp_path)
    log = openssl_cmp(world, tmp_path, *ir_args(device, "-implicit_confirm"))
    # The node did not grant it: openssl confirms explicitly, and only that customizes.
    assert "received PKICONF" in log, log
    assert world.state(device.device_id) == "customized"
    assert [e["decision"] for e in world.audit(device.device_id)][-1] == "confirmed"


def test_ok_certconf_never_sent_is_an_answer_never_received(
    world: NodeWorld, tmp_path: Path
) -> None:
    (device,) = world.make_devices(1)
    new_key(tmp_path)
    log = openssl_cmp(world, tmp_path, *ir_args(device, "-disable_confirm"))
    assert "received IP" in log and "PKICONF" not in log, log
    lost = load_certificates_pem((tmp_path / "new.pem").read_bytes())[0]
    assert world.state(device.device_id) == "issued"  # never confirmed
    # The same key again: the certificate is sent again (EST's redelivery), then confirmed.
    log = openssl_cmp(world, tmp_path, *ir_args(device)[:-1], "again.pem")
    again = load_certificates_pem((tmp_path / "again.pem").read_bytes())[0]
    assert again.serial_number == lost.serial_number
    assert world.state(device.device_id) == "customized"
    assert "redelivered" in [e["decision"] for e in world.audit(device.device_id)]


def test_ok_unconfirmed_certificate_is_superseded_by_a_new_key(
    world: NodeWorld, tmp_path: Path
) -> None:
    (device,) = world.make_devices(1)
    new_key(tmp_path)
    openssl_cmp(world, tmp_path, *ir_args(device, "-disable_confirm"))
    lost = load_certificates_pem((tmp_path / "new.pem").read_bytes())[0]
    new_key(tmp_path)  # another key: the unconfirmed certificate is superseded, never two
    openssl_cmp(world, tmp_path, *ir_args(device)[:-1], "second.pem")
    second = load_certificates_pem((tmp_path / "second.pem").read_bytes())[0]
    assert second.serial_number != lost.serial_number
    assert world.state(device.device_id) == "customized"
    assert [r["serial"] for r in world.active(device.device_id)] == [serial_hex(second)]


# ------------------------------------------------------------------ refusals, nothing changed


def test_fail_blocked_device_is_refused_not_authorized(world: NodeWorld, tmp_path: Path) -> None:
    (device,) = world.make_devices(1)
    cli("node", "block", "--dir", str(world.node_dir), device.device_id)
    new_key(tmp_path)
    log = openssl_cmp_refused(world, tmp_path, *ir_args(device))
    assert "notAuthorized" in log and "blocked" in log, log
    assert world.state(device.device_id) == "blocked"
    assert world.issued(device.device_id) == []
    assert [e["decision"] for e in world.audit(device.device_id)][-1] == "refused"


def test_fail_certificate_of_an_unknown_factory(world: NodeWorld, tmp_path: Path) -> None:
    (device,) = world.make_devices(1)
    audit = world.audit(device.device_id)
    # A look-alike: the same device id, from a CA the node was never given.
    sh(f"""openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\
  -keyout fake-ca.key -out fake-ca.pem -subj /CN=froot -days 2
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout fake.key \\
  -subj "/CN={device.device_id}/serialNumber={device.device_id}" -out fake.csr
openssl x509 -req -in fake.csr -CA fake-ca.pem -CAkey fake-ca.key -days 2 -out fake.pem""",
       tmp_path)  # fmt: skip
    new_key(tmp_path)
    log = openssl_cmp_refused(world, tmp_path, "-cmd", "ir", "-cert", "fake.pem",
                              "-key", "fake.key", "-newkey", "new.key", "-subject",
                              SUBJECT.format(id=device.device_id), "-certout", "x.pem")  # fmt: skip
    assert "signerNotTrusted" in log, log
    unchanged(world, device)
    assert world.audit(device.device_id) == audit  # a stranger: nothing audited


def test_fail_wrong_protection_changes_nothing(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    other = ec.generate_private_key(ec.SECP256R1())
    body, _ = device_ir(device, signing_key=other)
    fail, text = refusal(post(world, body))
    assert fail == {FailInfo.BAD_MESSAGE_CHECK} and "does not verify" in text
    unchanged(world, device)


def test_fail_replayed_transaction_id(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    body, header = device_ir(device)
    ip = post(world, body)
    assert isinstance(ip.body, CertRepBody) and ip.body.type is BodyType.IP
    issued = world.register()[device.device_id]["serial"]
    # The same bytes again (a replay), and a new ir under the same transactionID.
    for again in (body, device_ir(device, transaction_id=header.transaction_id)[0]):
        fail, text = refusal(post(world, again))
        assert fail == {FailInfo.TRANSACTION_ID_IN_USE}, text
    assert world.state(device.device_id) == "issued"
    assert world.register()[device.device_id]["serial"] == issued
    assert len(world.issued(device.device_id)) == 1


def test_fail_certconf_with_a_wrong_hash_confirms_nothing(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    body, header = device_ir(device)
    ip = post(world, body)
    assert isinstance(ip.body, CertRepBody)
    certificate = x509.load_der_x509_certificate(ip.body.responses[0].certificate_der or b"")
    follow, conf = cert_conf(header, ip, b"\x00" * 32)
    fail, text = refusal(post(world, signed(device.key, device.certificate, follow, conf)))
    assert fail == {FailInfo.BAD_CERT_ID} and "nothing confirmed" in text
    assert world.state(device.device_id) == "issued"
    assert [e["decision"] for e in world.audit(device.device_id)][-1] == "refused"
    # The right hash then confirms.
    follow, conf = cert_conf(header, ip, certificate_hash(certificate))
    done = post(world, signed(device.key, device.certificate, follow, conf))
    assert done.body.type is BodyType.PKI_CONF
    assert world.state(device.device_id) == "customized"


def test_fail_cmp_signer_other_than_the_tls_client(world: NodeWorld, tmp_path: Path) -> None:
    device, other = world.make_devices(2)
    new_key(tmp_path)
    log = openssl_cmp_refused(world, tmp_path, *ir_args(device), "-tls_cert",
                              str(other.cert_path), "-tls_key", str(other.key_path))  # fmt: skip
    assert "notAuthorized" in log and "TLS client certificate" in log, log
    unchanged(world, device)
    unchanged(world, other)


def test_fail_est_customized_device_is_refused_cmp_ir(world: NodeWorld, tmp_path: Path) -> None:
    (device,) = world.make_devices(1)
    key = ec.generate_private_key(ec.SECP256R1())
    answer = world.post_csr(device, "simpleenroll", device.csr(key))
    assert answer.status == 200
    (operational,) = decode_certs_only(answer.body)
    serial = world.register()[device.device_id]["serial"]
    # Its first EST request with the operational certificate confirms it.
    world.request("GET", world.url("cacerts"), context=world.context(operational, key))
    assert world.state(device.device_id) == "customized"
    new_key(tmp_path)
    log = openssl_cmp_refused(world, tmp_path, *ir_args(device))
    assert "already customized" in log, log
    assert world.register()[device.device_id]["serial"] == serial


# ------------------------------------------------------------------ HTTP


def test_fail_bad_http_is_answered_in_http(world: NodeWorld) -> None:
    url = f"https://{world.node.address}/.well-known/cmp"
    body, _ = device_ir(world.make_devices(1)[0])
    wrong_type = world.request("POST", url, body=body, headers={"Content-Type": "text/plain"})
    assert wrong_type.status == 415
    assert world.request("GET", url).status == 405
    too_large = world.request(
        "POST", url, body=b"\x30" * (70 * 1024), headers={"Content-Type": CMP_CONTENT_TYPE}
    )
    assert too_large.status == 413
    unknown = world.request(
        "POST", url + "/p/nowhere", body=body, headers={"Content-Type": CMP_CONTENT_TYPE}
    )
    assert unknown.status == 404
    garbage = post(world, b"\x30\x03\x02\x01\x02")
    fail, _ = refusal(garbage)
    assert fail == {FailInfo.BAD_DATA_FORMAT}
