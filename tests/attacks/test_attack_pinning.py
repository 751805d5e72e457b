"""Pinning attacks on the device: a rogue node under a pinned node CA, and a node whose
server chain leaves out the CA devices pin.

The rogue node is an HTTPS server on loopback that records every request (and whether the
device presented its certificate): it answers what a node would, with a certificate for
127.0.0.1 from a CA of the attacker's. Every case then checks that the device kept its
temporary identity, that the real node and both CA systems changed nothing, and that the
legitimate path still works.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from tests.attacks.attack_deployment import MANUFACTURER, Deployment, DeviceUnderTest, now
from tests.attacks.attack_report import AttackReport
from tests.support.services import running
from tests.support.threaded_server import threaded_tls_server

from ztpki.credentials import server_context
from ztpki.device.customer_node import NodeAddress, NodePin
from ztpki.device.node_trust import probe_pinned_anchor
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, PrivateKey, encode_pkcs8_pem, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pem import certificate_pem, certificates_pem, fingerprint_sha256, serial_hex
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.est import CERTS_ONLY_TYPE, encode_certs_only

pytestmark = pytest.mark.timeout(240)

CATEGORY = "pinning"


def _ca(subject: x509.Name) -> CertificateAuthority:
    key = generate_private_key(KeySpec.EC_P256)
    cert = create_self_signed_ca(key, subject, now=now(), validity=timedelta(days=30))
    return CertificateAuthority(subject.rfc4514_string(), key, cert)


def _server_leaf(ca: CertificateAuthority) -> tuple[PrivateKey, x509.Certificate]:
    key = generate_private_key(KeySpec.EC_P256)
    grant = IssuanceGrant(
        subject=build_subject("node.customer.example", SubjectFields(), serial_number=None),
        profile=CertificateProfile.SERVER,
        not_before=now() - timedelta(minutes=1),
        not_after=now() + timedelta(days=7),
        ip_addresses=("127.0.0.1",),
    )
    return key, ca.issue(key.public_key(), grant)


# --- a rogue node ---------------------------------------------------------------------------


@dataclass
class RogueNode:
    url: str
    requests: list[tuple[str, bool]] = field(default_factory=list)  # (request line, client cert)

    def summary(self) -> str:
        if not self.requests:
            return "the rogue node received no HTTP request"
        shown = "; ".join(
            f"{line} ({'with' if cert else 'without'} a client certificate)"
            for line, cert in self.requests
        )
        return f"the rogue node received only: {shown}"


@contextlib.contextmanager
def rogue_node(
    key: PrivateKey,
    chain: Sequence[x509.Certificate],
    cacerts: Sequence[x509.Certificate],
    client_anchors: Sequence[x509.Certificate],
) -> Iterator[RogueNode]:
    """An HTTPS server presenting ``chain`` that asks for (but does not require) a client
    certificate, answers cacerts with ``cacerts`` and anything else with 200 and junk."""
    context = server_context(key, chain, client_anchors=client_anchors, require_client_cert=False)
    rogue = RogueNode("")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ssl.SSLError, ConnectionError):
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            presented = bool(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
            rogue.requests.append((line, presented))
            body = encode_certs_only(cacerts) if "/cacerts" in line else b"junk"
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: {CERTS_ONLY_TYPE}\r\n"
                f"Content-Transfer-Encoding: base64\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        writer.close()

    with threaded_tls_server(answer, context) as port:
        rogue.url = f"https://127.0.0.1:{port}"
        yield rogue


def _node_ca_file(d: Deployment) -> tuple[Path, x509.Certificate]:
    """The CA of the real node's server certificate, as the customer gives it to installers."""
    path = d.factory_dir / "cas" / "nodes" / "ca.pem"
    return path, d.certificates(str(path.relative_to(d.root)))[0]


def _activate(d: Deployment, device: DeviceUnderTest, url: str, *pin: str) -> tuple[int, str]:
    result = d.cli("device", "activate", "--device", str(device.path), "--node", url, *pin,
                   check=False)  # fmt: skip
    return result.status, " ".join((result.out + result.err).split())


# --- a rogue node under a pinned node CA certificate -----------------------------------------


@pytest.mark.parametrize(
    ("variant", "attack"),
    [
        pytest.param(
            "leaf-from-another-ca",
            "a rogue node at the device's node address presents a certificate for 127.0.0.1 "
            "from a CA of its own, alone in TLS (its CA served at cacerts), to a device given "
            "the real node CA certificate (`ztpki device activate --node-ca FILE`)",
            id="fail-leaf-from-another-ca",
        ),
        pytest.param(
            "impersonated-ca-name",
            "a rogue node presents a chain whose CA and root carry exactly the names of the "
            "pinned node CA and its root (and serves them at cacerts), to a device given the "
            "real node CA certificate (`--node-ca FILE`)",
            id="fail-impersonated-ca-name",
        ),
    ],
)
def test_fail_rogue_node_under_pinned_ca(
    deployment: Deployment, attack_report: AttackReport, variant: str, attack: str
) -> None:
    d = deployment
    device = d.take_device()
    ca_file, real_ca = _node_ca_file(d)
    if variant == "leaf-from-another-ca":
        rogue_ca = _ca(build_subject("Rogue Node CA", SubjectFields(), serial_number=None))
        key, leaf = _server_leaf(rogue_ca)
        chain, cacerts = [leaf], [rogue_ca.certificate]
    else:
        fake_root = _ca(real_ca.issuer)
        grant = IssuanceGrant(
            subject=real_ca.subject,
            profile=CertificateProfile.CA,
            not_before=now() - timedelta(minutes=1),
            not_after=now() + timedelta(days=7),
            path_length=0,
        )
        fake_key = generate_private_key(KeySpec.EC_P256)
        fake = CertificateAuthority(
            "fake", fake_key, fake_root.issue(fake_key.public_key(), grant), fake_root.chain
        )
        key, leaf = _server_leaf(fake)
        chain = cacerts = [leaf, fake.certificate, fake_root.certificate]
    temporary = serial_hex(device.certificate)
    before = d.snapshot()

    with rogue_node(key, chain, cacerts, d.node_anchors) as rogue:
        status, said = _activate(d, device, rogue.url, "--node-ca", str(ca_file))

    assert status == 1, said
    assert "step connect failed" in said
    assert "the pin is stale" in said
    refusal = said[said.index("step connect") : said.index(". What to do")]
    assert f"sha256:{fingerprint_sha256(real_ca)}" in refusal, refusal
    assert "does not match the pin: its certificate chains to" in refusal
    assert all(not cert for _, cert in rogue.requests), rogue.requests
    assert all(line.startswith("GET ") and "/cacerts" in line for line, _ in rogue.requests)
    assert device.memory().phase.value == "temporary"
    assert serial_hex(device.certificate) == temporary
    checked = d.check_unchanged(before, unaudited_because="the device never reached the node")
    # Control: the same device and pin file against the real node.
    status, done = _activate(d, device, f"https://{d.node.address}", "--node-ca", str(ca_file))
    assert status == 0, done
    assert d.live_serials("customer", device.device_id) == [serial_hex(device.certificate)]
    attack_report.record(
        case=f"{CATEGORY}/rogue-node-{variant}",
        category=CATEGORY,
        attack=attack,
        observed=(
            f"the device refused the node: '{refusal}', and named the stale pin as the cause; "
            f"{rogue.summary()}; the device kept its temporary identity; {checked}; the same "
            "device with the same --node-ca FILE customized itself at the real node"
        ),
        verdict="refused",
    )


# --- a node whose server chain leaves out the CA devices pin -----------------------------------


def _node_init(d: Deployment, directory: Path, cert: Path, key: Path) -> str:
    init = ["--dir", str(directory), "--ca", d.services["customer"].address]
    init += [
        "--client-cred",
        str(d.root / "cred-node"),
        "--manufacturer",
        MANUFACTURER,
        "--device-ids",
        "ACME-*",
        "--trust",
        str(d.root / "factory-bundle.pem"),
    ]
    init += ["--customer-chain", str(d.root / "customer-chain.pem")]
    result = d.cli("node", "init", *init, "--server-cert", str(cert), "--server-key", str(key))
    return " ".join((result.out + result.err).split())


def test_fail_leaf_only_node_chain(deployment: Deployment, attack_report: AttackReport) -> None:
    """The customer's own CA (outside the factory's) issued the node's certificate, and the
    file given to `node init` holds the leaf alone: init warns; a device pinning the CA by
    fingerprint is refused with what is missing; with --node-ca FILE it verifies the node."""
    d = deployment
    device = d.take_device()
    own_ca = _ca(build_subject("Customer IT CA", SubjectFields(organization="Customer Ltd"),
                               serial_number=None))  # fmt: skip
    key, leaf = _server_leaf(own_ca)
    work = d.root / f"leaf-only-{serial_hex(leaf)[:8]}"
    work.mkdir()
    passphrase = d.passphrases["ZTPKI_NODE_PASSPHRASE"].encode()
    (work / "key.pem").write_bytes(encode_pkcs8_pem(key, passphrase=passphrase))
    (work / "leaf.pem").write_bytes(certificate_pem(leaf))
    (work / "chain.pem").write_bytes(certificates_pem([leaf, own_ca.certificate]))
    (work / "own-ca.pem").write_bytes(certificate_pem(own_ca.certificate))
    fingerprint = f"sha256:{fingerprint_sha256(own_ca.certificate)}"

    warned = _node_init(d, work / "node", work / "leaf.pem", work / "key.pem")
    whole = _node_init(d, work / "control", work / "chain.pem", work / "key.pem")

    missing = "without the CA certificate that issued it (CN=Customer IT CA,O=Customer Ltd)"
    assert missing in warned and "--node-ca FILE" in warned
    assert "without the CA certificate" not in whole  # control: the whole chain
    before = d.snapshot()
    log = d.logs / f"leaf-only-node-{serial_hex(leaf)[:8]}.log"
    with running(["node", "serve", "--dir", str(work / "node"), "--listen", "127.0.0.1:0"],
                 log_path=log, env=d.env) as node:  # fmt: skip
        url = f"https://{node.address}"
        status, said = _activate(d, device, url, "--node-ca-fingerprint", fingerprint)
        # Control: the CA certificate itself verifies the node over the same TLS.
        pin = NodePin.given(fingerprint=fingerprint, certificate=own_ca.certificate)
        assert pin is not None
        verified = asyncio.run(
            probe_pinned_anchor(NodeAddress.parse(url), pin, now=now(), timeout=30)
        )
    assert status == 1, said
    assert f"did not send the pinned CA {fingerprint}" in said
    assert "ends at its own certificate, issued by CN=Customer IT CA" in said
    assert "--node-ca FILE" in said and "stale" not in said
    assert verified == own_ca.certificate
    assert device.memory().phase.value == "temporary"
    checked = d.check_unchanged(before, unaudited_because="the device never reached a node")
    attack_report.record(
        case=f"{CATEGORY}/leaf-only-node-chain",
        category=CATEGORY,
        attack=(
            "`ztpki node init` with a server certificate from the customer's own CA (outside "
            "the factory's) given as the leaf alone; a device that pins that CA by fingerprint "
            "only (`--node-ca-fingerprint`)"
        ),
        observed=(
            f"node init warned: '{warned[warned.index('the server certificate file') :][:230]}…' "
            "(not given the whole chain); the device refused the node: "
            f"'{said[said.index('step') : said.index('. What to do')]}', and told to give it "
            "the CA certificate (--node-ca FILE); "
            f"{checked}; given the CA certificate (--node-ca FILE) the device verified the "
            f"same node; {d.serve_next_device()}"
        ),
        verdict="refused",
    )
