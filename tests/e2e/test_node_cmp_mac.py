"""CMP with MAC-based protection (RFC 9483 section 4.1.5) through the customer node: a device
with no factory certificate enrolls with the shared secret the operator set for it, where the
label's policy allows it (``cmp_mac_protection``, here label ``meters`` only).

Real processes on loopback over TLS: `openssl cmp -secret pass:... -ref DEVICE` as the device
(no TLS client certificate, no -cert/-key), and ztpki's codec for what openssl cannot be made
to send (another device's secret, a huge iteration count, a short salt).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from node_fixtures import MANUFACTURER, NodeWorld, build_world, cli, ztpki
from test_node_cmp import new_key
from tests.support.cmp_messages import ir_body, refusal
from tests.support.shell import sh

from ztpki.pki.pem import load_certificates_pem, serial_hex
from ztpki.protocol.cmp import (
    CMP_CONTENT_TYPE,
    BodyType,
    CertRepBody,
    FailInfo,
    Header,
    PKIMessage,
    decode_message,
    encode_message,
)
from ztpki.protocol.cmp.mac import (
    MacParameters,
    MacScheme,
    decode_mac_algorithm,
    encode_mac_algorithm,
    mac_message,
    verify_mac,
)
from ztpki.protocol.cmp.mac import MacPolicy as _Policy

MAC_PATH = ".well-known/cmp/p/meters"
PBM = MacParameters(MacScheme.PASSWORD_BASED_MAC, os.urandom(16), 500, hashes.SHA256, hashes.SHA256)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:
    settings = {"ca": {"meters": {"cmp_mac_protection": True}}}
    w = build_world(tmp_path_factory.mktemp("node-cmp-mac"), settings=settings)
    try:
        yield w
    finally:
        w.stop()


_count = iter(range(1000))


def mac_device(world: NodeWorld, *, secret: bytes | None = None) -> tuple[str, bytes]:
    """A device listed by hand (no factory certificate) and, unless secret is b"", the shared
    secret set for it with `ztpki node set-cmp-secret` (a 0600 file)."""
    device_id = f"mac-{next(_count):03d}"
    cli("node", "add", "--dir", str(world.node_dir), device_id, "--manufacturer", MANUFACTURER)
    value = secret if secret is not None else os.urandom(12).hex().encode()
    if value:
        path = world.root / f"{device_id}.secret"
        path.write_bytes(value + b"\n")
        path.chmod(0o600)
        args = ("node", "set-cmp-secret", "--dir", str(world.node_dir), device_id)
        cli(*args, "--secret-file", str(path))
    return device_id, value


def openssl_mac(
    world: NodeWorld, cwd: Path, device_id: str, secret: bytes, *args: str, path: str = MAC_PATH
) -> tuple[int, str]:
    """`openssl cmp` with -secret and -ref (its defaults: PasswordBasedMac, HMAC-SHA1);
    secret b"": the secret file mac_device wrote (-secret file:, as the README shows)."""
    source = f"pass:{secret.decode()}" if secret else f"file:{world.root / device_id}.secret"
    command = ["openssl", "cmp", "-server", world.node.address, "-path", path, "-tls_used",
               "-tls_trusted", str(world.factory_anchor), "-cmd", "ir",
               # The node's refusals are signed with its key (never MAC'd with a secret the
               # request did not prove): -trusted lets openssl read them.
               "-trusted", str(world.factory_anchor),
               "-secret", source, "-ref", device_id,
               "-newkey", new_key(cwd), "-subject", f"/CN={device_id}/serialNumber={device_id}",
               "-certout", "new.pem", *args]  # fmt: skip
    result = sh(shlex.join(command), cwd, check=False)
    return result.returncode, result.stdout + result.stderr


def workdir(world: NodeWorld, device_id: str) -> Path:
    cwd = world.root / device_id
    cwd.mkdir()
    return cwd


def post_mac(
    world: NodeWorld,
    device_id: str,
    secret: bytes,
    params: MacParameters = PBM,
    *,
    names: str | None = None,
) -> PKIMessage:
    """A MAC-protected ir from ztpki's codec (senderKID device_id, template naming names)."""
    header = Header(
        sender=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, device_id)]),
        recipient=x509.Name([]), transaction_id=os.urandom(16), sender_nonce=os.urandom(16),
        message_time=datetime.now(UTC), sender_kid=device_id.encode(),
    )  # fmt: skip
    if params.iterations <= 100_000:
        body = mac_message(header, ir_body(names or device_id), params, secret)
    else:
        # Naming a huge count costs the sender nothing: a random tag, never computed.
        forged = replace(header, protection_alg=encode_mac_algorithm(params))
        body = encode_message(forged, ir_body(device_id), protection=os.urandom(32))
    response = world.request(
        "POST", f"https://{world.node.address}/{MAC_PATH}", body=body,
        headers={"Content-Type": CMP_CONTENT_TYPE},
    )  # fmt: skip
    assert response.status == 200, response.text
    return decode_message(response.body)


def nothing_changed(world: NodeWorld, device_id: str, audit_before: int | None = None) -> None:
    assert world.state(device_id) == "listed"
    assert world.issued(device_id) == []
    if audit_before is not None:
        assert len(world.audit(device_id)) == audit_before


# ------------------------------------------------------------------ openssl enrolls


def test_ok_openssl_enrolls_with_the_shared_secret(world: NodeWorld) -> None:
    device_id, secret = mac_device(world)
    cwd = workdir(world, device_id)
    code, log = openssl_mac(world, cwd, device_id, secret)
    assert code == 0, log
    certificate = load_certificates_pem((cwd / "new.pem").read_bytes())[0]
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert [n.value for n in names] == [device_id]
    # certConf moved the device to customized; exactly one certificate, from label meters.
    assert world.state(device_id) == "customized"
    (issued,) = world.issued(device_id)
    assert issued["serial"] == serial_hex(certificate) and issued["ca"] == "meters"
    decisions = [(e["endpoint"], e["decision"]) for e in world.audit(device_id)]
    assert ("cli/set-cmp-secret", "cmp-secret-set") in decisions
    assert ("cmp/meters/ir", "issued") in decisions
    assert ("cmp/meters/certConf", "confirmed") in decisions
    # The secret is never written to the node's log nor shown in the audit trail.
    assert secret not in (world.root / "node.log").read_bytes()
    assert secret.decode() not in str(world.audit(device_id))
    # The secret from its file, as the README shows (openssl reads its first line).
    other, _ = mac_device(world)
    code, log = openssl_mac(world, workdir(world, other), other, b"")
    assert code == 0 and world.state(other) == "customized", log


@pytest.mark.parametrize("scheme", list(MacScheme))
def test_ok_the_answer_is_protected_with_the_same_secret(
    world: NodeWorld, scheme: MacScheme
) -> None:
    device_id, secret = mac_device(world)
    # PBMAC1 (PBKDF2 + HMAC) is RFC 9481's other scheme; OpenSSL 3.0 sends only PBM.
    sent = PBM if scheme is MacScheme.PASSWORD_BASED_MAC else replace(
        PBM, scheme=scheme, iterations=2000, key_length=32
    )  # fmt: skip
    answer = post_mac(world, device_id, secret, sent)
    assert isinstance(answer.body, CertRepBody) and answer.body.type is BodyType.IP
    assert answer.body.responses[0].certificate_der is not None
    assert answer.header.protection_alg is not None
    params = decode_mac_algorithm(answer.header.protection_alg)
    assert params.scheme is scheme and params.salt != sent.salt
    assert answer.header.sender_kid == device_id.encode()
    verify_mac(answer, params, secret, _Policy())  # raises unless the node knew the secret


# ------------------------------------------------------------------ refusals: nothing changes


def test_fail_where_the_label_does_not_allow_it(world: NodeWorld) -> None:
    device_id, secret = mac_device(world)
    code, log = openssl_mac(
        world, workdir(world, device_id), device_id, secret, path=".well-known/cmp"
    )
    assert code != 0 and "MAC-based protection is not enabled for label" in log, log
    assert "badMessageCheck" in log, log
    nothing_changed(world, device_id)
    # Nor can the operator bind a secret to that label.
    secret_file = str(world.root / f"{device_id}.secret")
    refused = ztpki("node", "set-cmp-secret", "--dir", str(world.node_dir), device_id,
                    "--secret-file", secret_file, "--label", "default", check=False)  # fmt: skip
    assert refused.returncode != 0, refused
    assert "does not accept MAC-based protection" in refused.stderr, refused.stderr


def test_fail_wrong_missing_or_another_devices_secret(world: NodeWorld) -> None:
    device_id, secret = mac_device(world)
    before = len(world.audit(device_id))
    code, log = openssl_mac(world, workdir(world, device_id), device_id, b"not-the-secret-at-all")
    assert code != 0 and "badMessageCheck" in log and "does not verify" in log, log
    nothing_changed(world, device_id, before)
    # No secret set: the same answer (which devices have one is not told).
    bare, _ = mac_device(world, secret=b"")
    fail, text = refusal(post_mac(world, bare, secret))
    assert fail == {FailInfo.BAD_MESSAGE_CHECK} and "does not verify" in text
    nothing_changed(world, bare)
    # senderKID names this device, the MAC is made with another device's secret.
    other, other_secret = mac_device(world)
    fail, _ = refusal(post_mac(world, device_id, other_secret))
    assert fail == {FailInfo.BAD_MESSAGE_CHECK}
    # The other device's own secret, naming this device in the template: authenticated as
    # the other device, refused (subject mismatch) and audited for it.
    fail, text = refusal(post_mac(world, other, other_secret, names=device_id))
    assert fail == {FailInfo.NOT_AUTHORIZED} and "subject mismatch" in text, text
    nothing_changed(world, device_id, before)
    nothing_changed(world, other)
    assert any(e["decision"] == "refused" for e in world.audit(other))


@pytest.mark.parametrize(
    ("iterations", "salt", "why"),
    [
        (10_000_000, 16, "iteration count 10000000"),
        (10, 16, "iteration count 10"),
        (500, 4, "salt has 4 bytes"),
    ],
)
def test_fail_parameters_outside_the_policy(
    world: NodeWorld, iterations: int, salt: int, why: str
) -> None:
    device_id, secret = mac_device(world)
    params = replace(PBM, iterations=iterations, salt=os.urandom(salt))
    fail, text = refusal(post_mac(world, device_id, secret, params))
    assert fail == {FailInfo.BAD_ALG} and why in text, text
    nothing_changed(world, device_id)


def test_fail_blocked_device_audited(world: NodeWorld) -> None:
    device_id, secret = mac_device(world)
    cli("node", "block", "--dir", str(world.node_dir), device_id)
    fail, text = refusal(post_mac(world, device_id, secret))
    assert fail == {FailInfo.NOT_AUTHORIZED} and "blocked" in text, text
    assert world.state(device_id) == "blocked" and world.issued(device_id) == []
    assert world.audit(device_id)[-1]["decision"] == "refused"


def test_fail_with_a_tls_client_certificate_or_for_kur(world: NodeWorld) -> None:
    device_id, secret = mac_device(world)
    (holder,) = world.make_devices(1)
    code, log = openssl_mac(
        world, workdir(world, device_id), device_id, secret,
        "-tls_cert", str(holder.cert_path), "-tls_key", str(holder.key_path),
    )  # fmt: skip
    assert code != 0 and "presented a TLS client certificate" in log, log
    code, log = openssl_mac(
        world, world.root / device_id, device_id, secret, "-cmd", "kur",
        "-oldcert", str(holder.cert_path),
    )  # fmt: skip
    assert code != 0 and "must be signed with the device's certificate" in log, log
    nothing_changed(world, device_id)
