"""Every refusal of the customer node: the right status and reason, and no state change.

Each case reads the register before and after (straight from the node's database), and the
module ends with the operator's view of the same (`ztpki node devices --json` in a process).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from node_fixtures import Device, NodeWorld, Response, build_world, cli, ztpki

from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.pem import serial_hex
from ztpki.protocol.est import CSR_TYPE, build_csr, decode_certs_only


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:
    w = build_world(tmp_path_factory.mktemp("node-refusals"))
    try:
        yield w
    finally:
        w.stop()


def unchanged(world: NodeWorld, action: Callable[[], Response]) -> Response:
    before = world.register()
    answer = action()
    assert world.register() == before, "a refused request changed the register"
    return answer


def refused_entries(world: NodeWorld, device_id: str) -> list[dict[str, str]]:
    return [e for e in world.audit(device_id) if e["decision"] == "refused"]


# ----------------------------------------------------------------------------- 403: register


def test_fail_unknown_device(world: NodeWorld) -> None:
    (device,) = world.make_devices(1, listed=False)
    answer = unchanged(world, lambda: world.post_csr(device, "simpleenroll", device.csr()))
    assert answer.status == 403
    assert "not in the customer register" in answer.text
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert refused_entries(world, device.device_id)[-1]["client_fingerprint"] == device.fingerprint


def test_fail_blocked(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    cli("node", "block", "--dir", str(world.node_dir), device.device_id)
    answer = unchanged(world, lambda: world.post_csr(device, "serverkeygen", device.csr()))
    assert answer.status == 403 and "blocked" in answer.text
    # Negative control: unblocked, the same request is served.
    cli("node", "unblock", "--dir", str(world.node_dir), device.device_id)
    assert world.post_csr(device, "serverkeygen", device.csr()).status == 200


def test_fail_fingerprint_mismatch(world: NodeWorld) -> None:
    impostor, genuine = world.make_devices(2, listed=False)
    # The register expects genuine's certificate under impostor's id.
    cli(
        "node",
        "add",
        "--dir",
        str(world.node_dir),
        impostor.device_id,
        "--fingerprint",
        genuine.fingerprint,
    )
    answer = unchanged(world, lambda: world.post_csr(impostor, "simpleenroll", impostor.csr()))
    assert answer.status == 403 and "fingerprint mismatch" in answer.text
    assert world.active(impostor.device_id) == []


def test_ok_manifest_import_lists_devices_with_fingerprints(world: NodeWorld) -> None:
    devices = world.make_devices(2, listed=False)
    manifest = world.sign_manifest([(d.device_id, d.fingerprint) for d in devices])
    result = ztpki("node", "import", "--dir", str(world.node_dir), str(manifest))
    assert "listed 2 device(s)" in result.stdout
    assert all(world.state(d.device_id) == "listed" for d in devices)
    assert world.post_csr(devices[0], "simpleenroll", devices[0].csr()).status == 200
    # Importing the same manifest again changes nothing.
    assert (
        "imported before"
        in ztpki("node", "import", "--dir", str(world.node_dir), str(manifest)).stdout
    )


def test_fail_manifest_fingerprint_mismatch(world: NodeWorld) -> None:
    """The manifest lists the device with another temporary certificate: a clone, or a swap."""
    device, other = world.make_devices(2, listed=False)
    manifest = world.sign_manifest([(device.device_id, other.fingerprint)])
    ztpki("node", "import", "--dir", str(world.node_dir), str(manifest))
    answer = unchanged(world, lambda: world.post_csr(device, "simpleenroll", device.csr()))
    assert answer.status == 403 and "fingerprint mismatch" in answer.text


def test_fail_tampered_manifest_is_not_imported(world: NodeWorld) -> None:
    (device,) = world.make_devices(1, listed=False)
    manifest = world.sign_manifest([(device.device_id, device.fingerprint)])
    data = json.loads(manifest.read_text())
    payload = json.loads(
        base64.urlsafe_b64decode(data["payload"] + "=" * (-len(data["payload"]) % 4))
    )
    payload["devices"][0]["device_id"] = "dev-evil"
    data["payload"] = (
        base64.urlsafe_b64encode(
            json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    tampered = manifest.with_name("tampered.json")
    tampered.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n")
    before = world.register()
    result = ztpki("node", "import", "--dir", str(world.node_dir), str(tampered), check=False)
    assert result.returncode != 0 and "signature" in result.stderr
    assert world.register() == before


def test_fail_already_customized(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    key = generate_private_key(KeySpec.EC_P256)
    (operational,) = decode_certs_only(world.post_csr(device, "simpleenroll", device.csr(key)).body)
    assert (
        world.request("GET", world.url("cacerts"), context=world.context(operational, key)).status
        == 200
    )
    assert world.state(device.device_id) == "customized"
    for operation in ("simpleenroll", "serverkeygen"):
        answer = unchanged(world, lambda op=operation: world.post_csr(device, op, device.csr()))
        assert answer.status == 403 and "already customized" in answer.text
    csrattrs = unchanged(
        world,
        lambda: world.request("GET", world.url("csrattrs"), context=world.device_context(device)),
    )
    assert csrattrs.status == 403
    assert len(world.active(device.device_id)) == 1


def test_fail_subject_mismatch(world: NodeWorld) -> None:
    mine, other = world.make_devices(2)
    answer = unchanged(
        world, lambda: world.post_csr(mine, "simpleenroll", mine.csr(device_id=other.device_id))
    )
    assert answer.status == 403 and "subject mismatch" in answer.text
    assert world.active(mine.device_id) == [] and world.active(other.device_id) == []


def test_fail_superseded_operational_certificate(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    first_key = generate_private_key(KeySpec.EC_P256)
    (first,) = decode_certs_only(world.post_csr(device, "simpleenroll", device.csr(first_key)).body)
    # Retry with another key while unconfirmed: issued anew, the first one superseded.
    assert world.post_csr(device, "simpleenroll", device.csr()).status == 200
    stale = world.context(first, first_key)
    answer = unchanged(world, lambda: world.request("GET", world.url("csrattrs"), context=stale))
    assert answer.status == 403 and "superseded" in answer.text
    assert world.state(device.device_id) == "issued"  # the stale certificate confirmed nothing


def test_fail_temporary_certificate_cannot_reenroll(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    answer = unchanged(world, lambda: world.post_csr(device, "simplereenroll", device.csr()))
    assert answer.status == 403 and "simplereenroll" in answer.text


# ----------------------------------------------------------------------------- 401, 404


def test_fail_no_client_certificate(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    for operation in ("simpleenroll", "serverkeygen", "simplereenroll"):
        answer = unchanged(
            world,
            lambda op=operation: world.post_csr(device, op, device.csr(), context=world.context()),
        )
        assert answer.status == 401, answer.text
    assert world.request("GET", world.url("csrattrs")).status == 401
    # Negative control: cacerts needs no client certificate (RFC 7030 section 4.1.1).
    assert world.request("GET", world.url("cacerts")).status == 200


def test_fail_untrusted_client_certificate_is_refused_in_the_handshake(world: NodeWorld) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "selfmade")])
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    before = world.register()
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
        world.request("GET", world.url("csrattrs"), context=world.context(cert, key))
    assert world.register() == before


def test_fail_unknown_label(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    answer = unchanged(
        world, lambda: world.post_csr(device, "simpleenroll", device.csr(), label="nosuch")
    )
    assert answer.status == 404 and "no EST label" in answer.text


# ----------------------------------------------------------------------------- 400, 413, 415


def post_raw(
    world: NodeWorld, device: Device, body: bytes, content_type: str = CSR_TYPE
) -> Response:
    return world.request(
        "POST",
        world.url("simpleenroll"),
        context=world.device_context(device),
        body=body,
        headers={"Content-Type": content_type},
    )


def test_fail_malformed_base64(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    answer = unchanged(world, lambda: post_raw(world, device, b"this is not base64!"))
    assert answer.status == 400 and "base64" in answer.text
    assert refused_entries(world, device.device_id)[-1]["endpoint"] == "est/default/simpleenroll"


def test_fail_csr_signature(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    csr = build_csr(generate_private_key(KeySpec.EC_P256), device_id=device.device_id)
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    answer = unchanged(world, lambda: post_raw(world, device, base64.encodebytes(bytes(der))))
    assert answer.status == 400 and "signature" in answer.text


def test_fail_not_a_csr(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    answer = unchanged(
        world, lambda: post_raw(world, device, base64.b64encode(b"\x30\x03\x02\x01\x00"))
    )
    assert answer.status == 400


def test_fail_wrong_media_type(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    answer = unchanged(
        world, lambda: post_raw(world, device, device.csr(), "application/x-www-form-urlencoded")
    )
    assert answer.status == 415 and "application/pkcs10" in answer.text


def test_fail_body_too_large(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    answer = unchanged(world, lambda: post_raw(world, device, b"A" * (64 * 1024 + 4)))
    assert answer.status == 413


def test_fail_chunked_body_too_large(world: NodeWorld) -> None:
    """Without Content-Length the limit is enforced while reading."""
    (device,) = world.make_devices(1)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"A" * 4096

    async def send() -> Response:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                world.url("simpleenroll"),
                data=chunks(),
                headers={"Content-Type": CSR_TYPE},
                ssl=world.device_context(device),
            ) as answer,
        ):
            return Response(answer.status, dict(answer.headers), await answer.read())

    answer = unchanged(world, lambda: asyncio.run(send()))
    assert answer.status == 413


def test_ok_devices_cli_agrees(world: NodeWorld) -> None:
    """The operator's view: `ztpki node devices --json` (own process) matches the register."""
    listed = json.loads(ztpki("node", "devices", "--dir", str(world.node_dir), "--json").stdout)
    register = world.register()
    assert {d["device_id"]: d["state"] for d in listed} == {
        k: v["state"] for k, v in register.items()
    }
    assert all(v["lease"] is None for v in register.values())
    issued = json.loads(
        ztpki("node", "devices", "--dir", str(world.node_dir), "--state", "issued", "--json").stdout
    )
    assert {d["state"] for d in issued} <= {"issued"}


# ----------------------------------------------------- operator: request-server-cert again


def test_ok_request_server_cert_names_the_node_by_its_address(world: NodeWorld) -> None:
    """Without --name the node is named by its first --dns (else --ip), not a name that every
    customer of the manufacturer would share (and the second would be refused)."""
    out = world.root / "server-by-ip"
    args = [
        *("node", "request-server-cert", "--ca", world.factory.address),
        *("--client-cred", str(world.root / "cred-customer"), "--ca-name", "nodes"),
    ]
    done = ztpki(*args, "--ip", "127.0.0.1", "--out", str(out))
    assert "server certificate for 127.0.0.1 in" in done.stdout, done.stdout
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "127.0.0.1"
    # `ca issued` on a pipe (80 columns) folds the serial that `ca revoke --serial` takes.
    table = ztpki("ca", "issued", "--dir", str(world.factory_dir), "--ca", "nodes").stdout
    cells = "".join(line.split("│")[1].strip() for line in table.splitlines() if "│" in line)
    assert serial_hex(cert) in cells, table


def test_ok_request_server_cert_again_needs_force_and_reissue(world: NodeWorld) -> None:
    """The second request for the same name: the existing --out is kept unless --force, the
    CA system's refusal names --reissue, and --reissue supersedes. The pin is printed in the
    form the device's --node-ca-fingerprint takes (sha256:HEX)."""
    out, other = world.root / "server-again", world.root / "server-again-2"
    args = [
        *("node", "request-server-cert", "--ca", world.factory.address),
        *("--client-cred", str(world.root / "cred-customer"), "--ca-name", "nodes"),
        *("--name", "customer-node-again", "--ip", "127.0.0.1"),
    ]
    first = ztpki(*args, "--out", str(out))
    pin = re.search(r"\(for pinning.*\): (\S+)", " ".join(first.stdout.split()))
    assert pin is not None and re.fullmatch(r"sha256:[0-9a-f]{64}", pin.group(1)), first.stdout
    key = (out / "key.pem").read_bytes()

    again = ztpki(*args, "--out", str(out), check=False)
    assert again.returncode == 1 and "--force" in again.stderr and "Traceback" not in again.stderr
    assert (out / "key.pem").read_bytes() == key  # not overwritten

    refused = ztpki(*args, "--out", str(other), check=False)
    err = " ".join(refused.stderr.split())
    assert refused.returncode == 1 and "--reissue" in err and "request-server-cert" in err, err
    assert not other.exists()

    ztpki(*args, "--out", str(out), "--force", "--reissue")
    assert (out / "key.pem").read_bytes() != key


def test_fail_request_server_cert_for_a_name_another_client_holds(world: NodeWorld) -> None:
    """A second customer asking for a name the first holds learns neither its serial nor
    that --reissue would help: the name is taken, ask for another (with or without
    --reissue); nothing is issued."""
    cli(
        *("ca", "add-client", "--dir", str(world.factory_dir), "--name", "customer-y"),
        *("--out", str(world.root / "cred-customer-y"), "--ca", "nodes"),
        *("--dns", "localhost", "--ip", "127.0.0.1"),
    )
    name = ["--ca-name", "nodes", "--name", "customer-node-taken", "--ip", "127.0.0.1"]
    first = world.root / "server-taken"
    ztpki(
        *("node", "request-server-cert", "--ca", world.factory.address),
        *("--client-cred", str(world.root / "cred-customer"), *name, "--out", str(first)),
    )
    held = x509.load_pem_x509_certificate((first / "cert.pem").read_bytes())
    serial = format(held.serial_number, "x")
    issued = ["ca", "issued", "--dir", str(world.factory_dir), "--device", "customer-node-taken"]
    before = json.loads(ztpki(*issued, "--json").stdout)
    for extra in ([], ["--reissue"]):
        out = world.root / f"server-taken-y{len(extra)}"
        refused = ztpki(
            *("node", "request-server-cert", "--ca", world.factory.address),
            *("--client-cred", str(world.root / "cred-customer-y"), *name, "--out", str(out)),
            *extra,
            check=False,
        )
        err = " ".join(refused.stderr.split())
        assert refused.returncode == 1, err
        assert "customer-node-taken is taken by another CA-client" in err, err
        assert "another --name" in err, err
        assert serial not in err and "customer-x" not in err and "--reissue" not in err, err
        assert not out.exists()
    assert json.loads(ztpki(*issued, "--json").stdout) == before
