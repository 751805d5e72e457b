"""`ztpki doctor` against a running deployment (factory and customer CA systems, node), and
against copies of its directories broken the ways operators break them."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from node_fixtures import MANUFACTURER, NodeWorld, build_world, cli, ztpki


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:
    w = build_world(tmp_path_factory.mktemp("doctor"))
    try:
        yield w
    finally:
        w.stop()


def doctor(*args: str) -> tuple[int, list[dict[str, Any]]]:
    done: subprocess.CompletedProcess[str] = ztpki("doctor", "--json", *args, check=False)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def only(findings: list[dict[str, Any]], check: str, severity: str) -> list[dict[str, Any]]:
    return [f for f in findings if f["check"] == check and f["severity"] == severity]


def node_copy(world: NodeWorld, tmp_path: Path) -> Path:
    copy = tmp_path / "node"
    shutil.copytree(world.node_dir, copy)
    return copy


def test_a_healthy_deployment_has_no_errors(world: NodeWorld) -> None:
    status, findings = doctor(
        "--node-dir", str(world.node_dir), "--ca-dir", str(world.customer_dir)
    )
    assert status == 0, [f for f in findings if f["severity"] == "error"]
    assert not [f for f in findings if f["severity"] == "error"]
    (reach,) = only(findings, "reachability", "ok")
    assert reach["subject"] == f"CA system {world.customer.address}"
    assert "TLS identity verified" in reach["message"]
    schemas = only(findings, "schema", "ok")
    assert {("customer_node" in f["message"], "ca_system" in f["message"]) for f in schemas} == {
        (True, False),
        (False, True),
    }
    assert len(only(findings, "permissions", "ok")) >= 3  # server key, CA-client key, CA keys
    # The test node pins no manifest signer and configures no factory CRL: both are named.
    assert [f["subject"] for f in only(findings, "manifest signers", "warning")] == [
        f"manufacturer {MANUFACTURER}"
    ]
    assert f"manufacturer {MANUFACTURER}" in [
        f["subject"] for f in only(findings, "crl", "warning")
    ]
    # The running customer CA system published each CA's CRL, and it is current.
    assert {f["subject"].split(" (")[0] for f in only(findings, "crl", "ok")} >= {
        "CRL of CA operational",
        "CRL of CA meters",
    }


def test_the_text_report_names_each_problem_and_its_fix(world: NodeWorld) -> None:
    done = ztpki("doctor", "--node-dir", str(world.node_dir), check=False)
    assert done.returncode == 0
    assert "warning manufacturer Acme Devices: no manifest signer is pinned" in done.stdout
    assert "fix: pin its signers" in done.stdout
    assert done.stdout.splitlines()[-1].endswith("warning(s), 0 error(s)")


def test_expiring_certificates_are_warned_of_and_strict_fails_on_them(world: NodeWorld) -> None:
    args = ("--node-dir", str(world.node_dir), "--warn-days", "36500", "--offline")
    status, findings = doctor(*args)
    assert status == 0
    (server,) = [
        f for f in only(findings, "expiry", "warning") if "server certificate" in f["subject"]
    ]
    assert "expires in" in server["message"]
    assert "request-server-cert --reissue" in server["fix"]
    assert str(world.node_dir / "server") in server["fix"]
    strict_status, _ = doctor(*args, "--strict")
    assert strict_status == 1


def test_offline_contacts_no_ca_system(world: NodeWorld) -> None:
    _, findings = doctor("--node-dir", str(world.node_dir), "--offline")
    assert not [f for f in findings if f["check"] == "reachability"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_or_foreign_ca_system_is_an_error(world: NodeWorld, tmp_path: Path) -> None:
    copy = node_copy(world, tmp_path)
    dead = f"127.0.0.1:{_closed_port()}"
    # The factory CA system answers TLS, but not with the customer CA system's identity.
    cli("node", "set-ca-system", "--dir", str(copy), "--ca", dead, "--ca", world.factory.address)
    status, findings = doctor("--node-dir", str(copy))
    assert status == 1
    errors = {f["subject"]: f for f in only(findings, "reachability", "error")}
    assert set(errors) == {f"CA system {dead}", f"CA system {world.factory.address}"}
    assert "unreachable" in errors[f"CA system {dead}"]["message"]
    assert f"set-ca-system --dir {copy}" in errors[f"CA system {dead}"]["fix"]
    assert "not one the CA-client trusts" in errors[f"CA system {world.factory.address}"]["message"]


def test_a_readable_key_file_is_an_error_with_its_fix(world: NodeWorld, tmp_path: Path) -> None:
    copy = node_copy(world, tmp_path)
    key = copy / "server" / "key.pem"
    key.chmod(0o644)
    status, findings = doctor("--node-dir", str(copy), "--offline")
    assert status == 1
    (bad,) = only(findings, "permissions", "error")
    assert bad["subject"] == f"the node's server key {key}"
    assert bad["fix"] == f"chmod 600 {key}"


def test_an_outdated_register_names_the_migrate_command(world: NodeWorld, tmp_path: Path) -> None:
    import sqlite3

    copy = node_copy(world, tmp_path)
    with sqlite3.connect(copy / "node.sqlite") as conn:
        conn.execute("UPDATE schema_version SET version = version - 1")
    before = (copy / "node.sqlite").read_bytes()
    status, findings = doctor("--node-dir", str(copy), "--offline")
    assert status == 1
    (bad,) = only(findings, "schema", "error")
    assert f"ztpki node migrate --dir {copy}" in bad["fix"]
    assert (copy / "node.sqlite").read_bytes() == before, "the doctor changed the register"


def _stale_crl() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stale")])
    now = datetime.now(UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name)
        .last_update(now - timedelta(days=3))
        .next_update(now - timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.DER)


def test_a_stale_ca_crl_is_an_error(world: NodeWorld, tmp_path: Path) -> None:
    copy = tmp_path / "customer"
    shutil.copytree(world.customer_dir, copy)
    (copy / "cas" / "meters" / "crl.der").write_bytes(_stale_crl())
    status, findings = doctor("--ca-dir", str(copy))
    assert status == 1
    (stale,) = only(findings, "crl", "error")
    assert stale["subject"].startswith("CRL of CA meters")
    assert f"ztpki ca serve --dir {copy}" in stale["fix"]


def test_a_ca_system_without_a_ca_and_a_missing_dir_are_refused(tmp_path: Path) -> None:
    status, findings = doctor("--ca-dir", str(tmp_path))
    assert status == 1
    assert findings[0]["message"] == "holds no CA"
    assert f"ztpki ca init --dir {tmp_path}" in findings[0]["fix"]
    done = ztpki("doctor", check=False)
    assert done.returncode == 2 and "give --node-dir DIR and/or --ca-dir DIR" in done.stderr
