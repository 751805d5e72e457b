"""The node refuses temporary certificates its manufacturer revoked, after fetching the CRL.

A whole deployment on loopback (tests.e2e.node_fixtures): the manufacturer revokes with
`ztpki ca revoke` at its factory CA system (which writes `cas/factory/crl.der`), or recalls a
production batch with `ztpki factory recall`; the node is configured with that CRL
(`[manufacturer.NAME] crl`), is told to fetch it again with SIGHUP, and the test waits for
the log line that says it did (no sleeps).
"""

from __future__ import annotations

import json
import os
import signal
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import tomli_w
from cryptography import x509
from cryptography.x509.oid import NameOID
from tests.attacks.attack_deployment import wait_until
from tests.e2e.node_fixtures import (
    ENV,
    MANUFACTURER,
    NodeWorld,
    build_world,
    start,
    ztpki,
)
from tests.support.ocsp import http_address
from tests.support.services import child_pids

from ztpki.device.memory import DEVICE_FILE, DeviceMemory, Phase
from ztpki.pki.authority import create_self_signed_ca
from ztpki.pki.pem import serial_hex
from ztpki.pki.revocation_check import crl_urls, load_crl

pytestmark = pytest.mark.timeout(300)

REFRESHED = "factory CRLs refreshed on request"


def factory_crl(world: NodeWorld) -> Path:
    return world.factory_dir / "cas" / "factory" / "crl.der"


def configure_crl(world: NodeWorld, **settings: object) -> None:
    """Set the manufacturer's CRL settings in node.toml and restart the node."""
    path = world.node_dir / "node.toml"
    data = tomllib.loads(path.read_text())
    data["manufacturer"][MANUFACTURER].update(settings)
    path.write_text(tomli_w.dumps(data))
    world.node.stop()
    world.node = start(
        ["node", "serve", "--dir", str(world.node_dir), "--listen", "127.0.0.1:0"],
        log_path=world.root / f"node-{os.urandom(3).hex()}.log",
        env=ENV,
    )
    world.services.append(world.node)


def refresh(world: NodeWorld) -> None:
    """SIGHUP the node and wait until it logged that it fetched its CRLs again (each of its
    workers: the next request may reach any of them)."""
    seen = world.node.log().count(REFRESHED)
    workers = max(1, len(child_pids(world.node.pid)))
    os.kill(world.node.pid, signal.SIGHUP)
    assert wait_until(lambda: world.node.log().count(REFRESHED) >= seen + workers, timeout=30), (
        world.node.log()
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:
    built = build_world(tmp_path_factory.mktemp("factory-revocation"))
    try:
        configure_crl(built, crl=[str(factory_crl(built))])
        yield built
    finally:
        built.stop()


def test_fail_revoked_temporary_certificate_is_refused_403_and_audited(world: NodeWorld) -> None:
    stolen, honest = world.make_devices(2)
    assert "factory CRL of" in world.node.log()  # fetched at start
    ztpki(
        "ca",
        "revoke",
        "--dir",
        str(world.factory_dir),
        "--name",
        "factory",
        "--serial",
        serial_hex(stolen.certificate),
        "--reason",
        "keyCompromise",
    )
    refresh(world)
    answer = world.post_csr(stolen, "simpleenroll", stolen.csr())
    assert answer.status == 403, answer.text
    assert "revoked by its factory CA" in answer.text and "keyCompromise" in answer.text
    audit = world.audit(stolen.device_id)
    assert audit[-1]["decision"] == "refused"
    assert "revoked by its factory CA" in audit[-1]["reason"]
    assert world.state(stolen.device_id) == "listed"
    assert world.issued(stolen.device_id) == []
    # Negative control: the other device of the same factory CA is served.
    ok = world.post_csr(honest, "simpleenroll", honest.csr())
    assert ok.status == 200, ok.text
    assert world.state(honest.device_id) == "issued"


def test_fail_factory_recall_of_a_batch(world: NodeWorld, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    line = ["--ca", world.factory.address, "--client-cred", str(world.root / "cred-line1")]
    ztpki("factory", "manufacture", *line, "--batch", "B7", "--count", "2", "--out", str(batch))
    ztpki("factory", "manufacture", *line, "--batch", "B8", "--count", "1", "--out", str(batch))
    args = ["factory", "recall", *line, "--batch", "B7", "--devices", str(batch)]
    # Another CA-client (the customer's, for node certificates) may not revoke them.
    intruder = ztpki(
        "factory",
        "recall",
        "--ca",
        world.factory.address,
        "--client-cred",
        str(world.root / "cred-customer"),
        "--batch",
        "B7",
        "--devices",
        str(batch),
        check=False,
    )
    assert intruder.returncode != 0
    assert "FAILED" in intruder.stdout and "not revoked" in intruder.stderr
    before = load_crl(factory_crl(world).read_bytes())
    result = ztpki(*args, "--reason", "cessationOfOperation", "--json")
    revoked = json.loads(result.stdout)
    assert len(revoked) == 2 and all(r["revoked"] for r in revoked)
    assert {r["reason"] for r in revoked} == {"cessationOfOperation"}
    crl = load_crl(factory_crl(world).read_bytes())
    listed = {format(entry.serial_number, "x") for entry in crl}
    assert {r["serial"] for r in revoked} <= listed
    assert len(crl) == len(before) + 2  # B8's device is not on it
    # Again: idempotent, the first revocation stands.
    again = json.loads(ztpki(*args, "--reason", "keyCompromise", "--json").stdout)
    assert [r["revoked_at"] for r in again] == [r["revoked_at"] for r in revoked]
    assert {r["reason"] for r in again} == {"cessationOfOperation"}


def customize(device_dir: Path) -> None:
    """Stand-in for the customer's enrollment: the directory keeps only its customer identity."""
    memory = DeviceMemory.open(device_dir)
    key = memory.identity().private_key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, memory.device_id)])
    now = datetime.now(UTC)
    cert = create_self_signed_ca(key, name, now=now, validity=timedelta(days=1))
    memory.replace_identity(
        phase=Phase.CUSTOMIZED, private_key=key, certificate=cert, ca_certificates=[cert]
    )


def test_fail_factory_recall_of_customized_devices_is_idempotent(
    world: NodeWorld, tmp_path: Path
) -> None:
    # A customized directory no longer holds the temporary certificate: the recall asks by
    # device id, and a second run must answer the first revocation, not "no live certificate".
    batch = tmp_path / "batch"
    line = ["--ca", world.factory.address, "--client-cred", str(world.root / "cred-line1")]
    ztpki("factory", "manufacture", *line, "--batch", "C1", "--count", "2", "--out", str(batch))
    for device_dir in batch.iterdir():
        if (device_dir / DEVICE_FILE).exists():
            customize(device_dir)
    args = ["factory", "recall", *line, "--batch", "C1", "--devices", str(batch), "--json"]
    first = ztpki(*args, check=False)
    assert first.returncode == 0, first.stderr
    revoked = json.loads(first.stdout)
    assert len(revoked) == 2 and all(r["revoked"] for r in revoked)
    again = ztpki(*args, "--reason", "keyCompromise", check=False)
    assert again.returncode == 0, again.stderr
    repeated = json.loads(again.stdout)
    assert [(r["serial"], r["revoked_at"], r["reason"]) for r in repeated] == [
        (r["serial"], r["revoked_at"], r["reason"]) for r in revoked
    ]


def test_fail_revoked_via_the_distribution_point_the_certificate_names(world: NodeWorld) -> None:
    # The factory CA names its CRL in the temporary certificates it issues, served by its own
    # `ca serve --http-listen`; the node is configured with no CRL at all and learns the URL.
    port = world.factory.port
    world.factory.stop()
    probe = start(
        ["ca", "serve", "--dir", str(world.factory_dir), "--listen", f"127.0.0.1:{port}",
         "--http-listen", "127.0.0.1:0", "--key-workers", "1"],
        log_path=world.root / f"factory-{os.urandom(3).hex()}.log",
        env=ENV,
    )  # fmt: skip
    host, http_port = http_address(probe)
    probe.stop()
    policy = world.factory_dir / "cas" / "factory" / "policy.toml"
    url = f"http://{host}:{http_port}/crl/factory.crl"
    policy.write_text(
        policy.read_text().replace("\n[revocation]\n", f'\n[revocation]\ncrl_url = "{url}"\n')
    )
    world.factory = start(
        ["ca", "serve", "--dir", str(world.factory_dir), "--listen", f"127.0.0.1:{port}",
         "--http-listen", f"{host}:{http_port}", "--key-workers", "1"],
        log_path=world.root / f"factory-{os.urandom(3).hex()}.log",
        env=ENV,
    )  # fmt: skip
    world.services.append(world.factory)
    configure_crl(world, crl=[])
    stolen, honest = world.make_devices(2)
    assert crl_urls(stolen.certificate) == (url,)
    ztpki(
        "ca", "revoke", "--dir", str(world.factory_dir), "--name", "factory",
        "--serial", serial_hex(stolen.certificate), "--reason", "keyCompromise",
    )  # fmt: skip
    ok = world.post_csr(honest, "simpleenroll", honest.csr())  # learns the URL, fetches it
    assert ok.status == 200, ok.text
    assert f"CRL distribution point {url} learned from device {honest.device_id}" in (
        world.node.log()
    )
    refused = world.post_csr(stolen, "simpleenroll", stolen.csr())
    assert refused.status == 403 and "revoked by its factory CA" in refused.text, refused.text
    assert world.audit(stolen.device_id)[-1]["decision"] == "refused"
    assert world.issued(stolen.device_id) == []
