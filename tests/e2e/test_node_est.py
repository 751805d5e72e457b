"""EST through the customer node with standard clients: curl + openssl, and a Python client.

Real processes on loopback: factory CA system, customer CA system, `ztpki node serve`.
"""

from __future__ import annotations

import base64
import datetime
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from node_fixtures import NodeWorld, build_world, write_identity
from tests.support.shell import sh

from ztpki.credentials import load_identity
from ztpki.pki.keys import KeySpec, decode_pkcs8, generate_private_key, keys_match
from ztpki.pki.names import device_id_of
from ztpki.pki.pem import load_certificates_pem, serial_hex
from ztpki.protocol.est import decode_certs_only, decode_csrattrs, decode_serverkeygen

# docs/node.md's way of splitting a serverkeygen answer, with the standard library alone.
SPLIT = r"""mkdir -p out
python3 - "$CT" skg.body out <<'EOF'
import email, sys
from pathlib import Path
content_type, body, out = sys.argv[1:]
head = f"Content-Type: {content_type}\n\n".encode()  # the boundary is in it
answer = email.message_from_bytes(head + Path(body).read_bytes())
for part in answer.get_payload():  # each part's base64 transfer encoding is undone
    name = "key.der" if part.get_content_type() == "application/pkcs8" else "cert.p7.der"
    Path(out, name).write_bytes(part.get_payload(decode=True))
EOF
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:
    w = build_world(tmp_path_factory.mktemp("node-est"))
    try:
        yield w
    finally:
        w.stop()


def curl_prelude(world: NodeWorld) -> str:
    return f"EST={world.est}\nCA={world.factory_anchor}\nb64d() {{ tr -d '\\r\\n' | base64 -d; }}\n"


# ------------------------------------------------------------------------------ curl + openssl


def test_ok_curl_simpleenroll(world: NodeWorld, tmp_path: Path) -> None:
    (device,) = world.make_devices(1)
    script = (
        curl_prelude(world)
        + f"""
curl -sS --fail-with-body --cacert "$CA" -o cacerts.b64 "$EST/cacerts"
b64d < cacerts.b64 | openssl pkcs7 -inform DER -print_certs -out cacerts.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out new.key
SUBJ="/CN={device.device_id}/serialNumber={device.device_id}"
openssl req -new -key new.key -subj "$SUBJ" -outform DER | base64 -w 64 > csr.b64
curl -sS --fail-with-body --cacert "$CA" --cert {device.cert_path} --key {device.key_path} \
  -H 'Content-Type: application/pkcs10' -H 'Content-Transfer-Encoding: base64' \
  --data-binary @csr.b64 -o cert.p7.b64 "$EST/simpleenroll"
b64d < cert.p7.b64 | openssl pkcs7 -inform DER -print_certs -out new.pem
openssl verify -purpose sslclient -CAfile cacerts.pem new.pem
"""
    )
    result = sh(script, tmp_path)
    assert "new.pem: OK" in result.stdout
    assert world.state(device.device_id) == "issued"
    issued = load_certificates_pem((tmp_path / "new.pem").read_bytes())[0]
    assert [r["serial"] for r in world.active(device.device_id)] == [serial_hex(issued)]
    # Negative control: the operational certificate does not verify against the factory root.
    control = sh(f"openssl verify -CAfile {world.factory_anchor} new.pem", tmp_path, check=False)
    assert control.returncode != 0

    # The device confirms with its new identity (here: curl GET cacerts): customized.
    sh(
        curl_prelude(world)
        + 'curl -sS --fail-with-body --cacert "$CA" --cert new.pem --key new.key '
        '-o /dev/null "$EST/cacerts"',
        tmp_path,
    )
    assert world.state(device.device_id) == "customized"

    # Renewal with the operational certificate: simplereenroll supersedes it.
    renew = (
        curl_prelude(world)
        + f"""
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out renew.key
openssl req -new -key renew.key -subj "/CN={device.device_id}/serialNumber={device.device_id}" \
  -outform DER | base64 -w 64 > renew-csr.b64
curl -sS --fail-with-body --cacert "$CA" --cert new.pem --key new.key \
  -H 'Content-Type: application/pkcs10' --data-binary @renew-csr.b64 -o renewed.p7.b64 \
  "$EST/simplereenroll"
b64d < renewed.p7.b64 | openssl pkcs7 -inform DER -print_certs -out renewed.pem
openssl verify -purpose sslclient -CAfile cacerts.pem renewed.pem
"""
    )
    sh(renew, tmp_path)
    renewed = load_certificates_pem((tmp_path / "renewed.pem").read_bytes())[0]
    assert [r["serial"] for r in world.active(device.device_id)] == [serial_hex(renewed)]


def test_ok_curl_serverkeygen(world: NodeWorld, tmp_path: Path) -> None:
    (device,) = world.make_devices(1)
    script = (
        curl_prelude(world)
        + f"""
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out throwaway.key
openssl req -new -key throwaway.key -subj "/CN={device.device_id}/serialNumber={device.device_id}" \
  -outform DER | base64 -w 64 > csr.b64
CT=$(curl -sS --fail-with-body --cacert "$CA" --cert {device.cert_path} --key {device.key_path} \
  -H 'Content-Type: application/pkcs10' --data-binary @csr.b64 \
  -o skg.body -w '%{{content_type}}' "$EST/serverkeygen")
{SPLIT}openssl pkey -inform DER -in out/key.der -noout
openssl pkcs7 -inform DER -in out/cert.p7.der -print_certs -out out/cert.pem
openssl pkey -inform DER -in out/key.der -pubout -out out/key.pub
openssl x509 -in out/cert.pem -pubkey -noout > out/cert.pub
cmp out/key.pub out/cert.pub
openssl pkey -in throwaway.key -pubout -out throwaway.pub
! cmp -s throwaway.pub out/cert.pub
"""
    )
    sh(script, tmp_path)
    cert = load_certificates_pem((tmp_path / "out" / "cert.pem").read_bytes())[0]
    assert (
        cert.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)[0].value == device.device_id
    )
    assert world.state(device.device_id) == "issued"


# ------------------------------------------------------------------------------ Python client


def test_ok_python_enroll_confirm_renew(world: NodeWorld, tmp_path: Path) -> None:
    (device,) = world.make_devices(1)
    new_key = generate_private_key(KeySpec.EC_P256)
    answer = world.post_csr(device, "simpleenroll", device.csr(new_key))
    assert answer.status == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/pkcs7-mime")
    (operational,) = decode_certs_only(answer.body)
    assert keys_match(new_key, operational.public_key())

    # Confirmation: the first request with the operational certificate (csrattrs here).
    op_context = world.context(operational, new_key)
    attrs = world.request("GET", world.url("csrattrs"), context=op_context)
    assert attrs.status == 200, attrs.text
    assert world.state(device.device_id) == "customized"
    assert [e["decision"] for e in world.audit(device.device_id)][-2:] == ["issued", "confirmed"]

    # From now on the temporary certificate is dead.
    refused = world.post_csr(device, "simpleenroll", device.csr(new_key))
    assert refused.status == 403 and "already customized" in refused.text

    # Renewal with the operational certificate supersedes it: never two live.
    renewal_key = generate_private_key(KeySpec.EC_P256)
    renewal_csr = device.csr(renewal_key)
    renewed = world.post_csr(device, "simplereenroll", renewal_csr, context=op_context)
    assert renewed.status == 200, renewed.text
    (renewed_cert,) = decode_certs_only(renewed.body)
    active = world.active(device.device_id)
    assert [r["serial"] for r in active] == [serial_hex(renewed_cert)]
    assert world.state(device.device_id) == "customized"

    # The renewal answer "lost": the same CSR from the old certificate gets the same answer...
    again = world.post_csr(device, "simplereenroll", renewal_csr, context=op_context)
    assert again.status == 200, again.text
    assert decode_certs_only(again.body) == [renewed_cert]
    # ...but the superseded certificate cannot renew anything else (negative control).
    other = world.post_csr(device, "simplereenroll", device.csr(), context=op_context)
    assert other.status == 403 and "superseded" in other.text
    assert len(world.active(device.device_id)) == 1


def test_ok_device_id_with_underscore_enrolls_and_confirms(world: NodeWorld) -> None:
    # `_` is allowed in a device id: its serialNumber is a UTF8String in both the temporary
    # and the operational certificate, and in the CSR; the node matches them as text.
    (device,) = world.make_devices(1, prefix="meter_7")
    assert device_id_of(device.certificate) == device.device_id
    new_key = generate_private_key(KeySpec.EC_P256)
    # Control first: a CSR naming the id with `-` for `_` is another device, refused.
    lookalike = device.device_id.replace("_", "-")
    refused = world.post_csr(device, "simpleenroll", device.csr(new_key, device_id=lookalike))
    assert refused.status == 403, refused.text
    answer = world.post_csr(device, "simpleenroll", device.csr(new_key))
    assert answer.status == 200, answer.text
    (operational,) = decode_certs_only(answer.body)
    assert device_id_of(operational) == device.device_id
    assert keys_match(new_key, operational.public_key())
    op_context = world.context(operational, new_key)
    assert world.request("GET", world.url("csrattrs"), context=op_context).status == 200
    assert world.state(device.device_id) == "customized"
    assert [r["serial"] for r in world.active(device.device_id)] == [serial_hex(operational)]


def test_ok_python_serverkeygen(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    answer = world.post_csr(device, "serverkeygen", device.csr())
    assert answer.status == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    parsed = decode_serverkeygen(answer.headers["Content-Type"], answer.body)
    key = decode_pkcs8(parsed.private_key_der, passphrase=None)
    certificate = parsed.certificates[0]
    assert keys_match(key, certificate.public_key())
    chain = decode_certs_only(world.request("GET", world.url("cacerts")).body)
    certificate.verify_directly_issued_by(chain[0])
    # The new identity works as a TLS client certificate and confirms the device.
    cert_path, key_path = write_identity(world.root / "skg" / device.device_id, key, [certificate])
    assert (
        world.request("GET", world.url("cacerts"), context=world.context(certificate, key)).status
        == 200
    )
    assert world.state(device.device_id) == "customized"
    assert cert_path.exists() and key_path.stat().st_mode & 0o077 == 0


def test_ok_label_selects_ca(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    attrs = world.request(
        "GET", world.url("csrattrs", "meters"), context=world.device_context(device)
    )
    assert attrs.status == 200
    # The label asks for EC P-384: ecdsa-with-SHA384 and an id-ecPublicKey attribute.
    assert {"2.5.4.5", "1.2.840.10045.4.3.3", "1.2.840.10045.2.1"} <= set(
        decode_csrattrs(attrs.body)
    )
    answer = world.post_csr(device, "serverkeygen", device.csr(), label="meters")
    assert answer.status == 200, answer.text
    parsed = decode_serverkeygen(answer.headers["Content-Type"], answer.body)
    key = decode_pkcs8(parsed.private_key_der, passphrase=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    meters = decode_certs_only(world.request("GET", world.url("cacerts", "meters")).body)
    parsed.certificates[0].verify_directly_issued_by(meters[0])
    # Negative control: a retry under another label would leave two live certificates.
    other = world.post_csr(device, "serverkeygen", device.csr())
    assert other.status == 403 and "label meters" in other.text


def test_ok_metrics(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    assert world.post_csr(device, "simpleenroll", device.csr()).status == 200
    metrics = world.request("GET", f"https://{world.node.address}/metrics")
    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    assert 'ztpki_node_requests_total{endpoint="simpleenroll",outcome="issued"}' in text
    assert 'ztpki_node_enrollment_seconds_bucket{endpoint="simpleenroll",le="+Inf"}' in text
    assert 'ztpki_node_devices{state="issued"}' in text
    # The register's database work: the issuance above committed at least twice.
    commits = re.search(r'^ztpki_database_commits_total\{engine="sqlite",kind="write"\} ([0-9.]+)$',
                        text, re.M)  # fmt: skip
    assert commits is not None and float(commits.group(1)) >= 2
    assert re.search(r'^ztpki_database_round_trips_total\{engine="sqlite"\} [1-9]', text, re.M)


def _series(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_ok_metrics_count_issuance_latency_handshakes_and_queues(world: NodeWorld) -> None:
    def scrape() -> str:
        answer = world.request("GET", f"https://{world.node.address}/metrics")
        assert answer.status == 200
        return answer.text

    issued = 'ztpki_node_certificates_issued_total{label="default"}'
    latency = 'ztpki_node_request_duration_seconds_count{endpoint="simpleenroll"}'
    before = scrape()
    (device,) = world.make_devices(1)
    (stranger,) = world.make_devices(1, listed=False)
    assert world.post_csr(device, "simpleenroll", device.csr()).status == 200
    assert world.post_csr(stranger, "simpleenroll", stranger.csr()).status == 403
    # A client certificate from a CA the node does not know: refused in the TLS layer.
    foreign = generate_private_key(KeySpec.EC_P256)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "foreign")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(foreign.public_key()).serial_number(7)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(foreign, hashes.SHA256())
    )  # fmt: skip
    context = world.context()
    load_identity(context, foreign, [cert])
    with pytest.raises((ssl.SSLError, OSError, aiohttp.ClientError)):
        world.request("GET", world.url("cacerts"), context=context)
    after = scrape()
    assert _series(after, issued) == _series(before, issued) + 1
    assert _series(after, latency) == _series(before, latency) + 2  # refusals are timed too
    # OpenSSL's own verification message is the reason: a fixed set, not the peer's text.
    refused = 'ztpki_node_tls_handshake_failures_total{reason="self-signed certificate"}'
    assert _series(after, refused) >= _series(before, refused) + 1  # the client may retry
    assert _series(after, "ztpki_node_requests_in_flight") >= 1  # the scrape itself
    assert re.search(r'^ztpki_node_revocation_queue\{status="pending"\} [0-9.]+$', after, re.M)
    assert stranger.device_id not in after


def test_ok_node_serves_on_uvloop(world: NodeWorld) -> None:
    # Every other test here runs against this node, so they all run on uvloop's TLS transport;
    # the node's in-process tests (tests/unit/node) run on the standard loop.
    assert "on the uvloop event loop" in world.node.log()


def test_fail_slow_client_is_disconnected(world: NodeWorld) -> None:
    """A client that never finishes its request head is cut off after keepalive_timeout."""
    context = world.context()

    def connect() -> ssl.SSLSocket:
        raw = socket.create_connection((world.node.host, world.node.port), timeout=10)
        return context.wrap_socket(raw, server_hostname=world.node.host)

    with connect() as slow:
        slow.sendall(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert slow.recv(1024) == b""  # the server closed the connection
        assert time.monotonic() - started < 10
    # Negative control: the same request, completed, is answered.
    with connect() as quick:
        quick.sendall(
            b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert quick.recv(1024).startswith(b"HTTP/1.1 200")


def test_ok_base64_bodies_have_short_lf_lines(world: NodeWorld) -> None:
    body = world.request("GET", world.url("cacerts")).body
    lines = body.split(b"\n")
    assert all(len(line) <= 64 and b"\r" not in line for line in lines)
    base64.b64decode(b"".join(lines), validate=True)
