"""`ztpki node` commands in-process: init, add-ca, policy, add, block, devices, audit.

No server runs here; the end-to-end tests run `ztpki node serve` itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import tomllib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from node_pki import NOW, PKI, leaf

from ztpki.cli import main
from ztpki.credentials import Credential
from ztpki.node.config import NodeConfig
from ztpki.node.runtime import load_material
from ztpki.pki.keys import KeySpec, encode_pkcs8_pem, generate_private_key
from ztpki.pki.pem import certificates_pem
from ztpki.pki.profiles import CertificateProfile

NODE_PASSPHRASE = "node-passphrase-1234"
CLIENT_PASSPHRASE = "client-passphrase-1234"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZTPKI_NODE_PASSPHRASE", NODE_PASSPHRASE)
    monkeypatch.setenv("ZTPKI_CLIENT_PASSPHRASE", CLIENT_PASSPHRASE)


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(list(args))
    return status, out.getvalue()


@pytest.fixture
def inputs(tmp_path: Path, env: None) -> Iterator[dict[str, Path]]:
    pki = PKI.create()
    files = {
        name: tmp_path / f"{name}.pem"
        for name in ("bundle", "chain", "server-cert", "server-key", "crl")
    }
    files["bundle"].write_bytes(certificates_pem(pki.bundle()))
    files["chain"].write_bytes(certificates_pem(pki.operational.chain))
    key, cert = leaf(pki.factory_root, "node", profile=CertificateProfile.SERVER)
    files["server-cert"].write_bytes(certificates_pem([cert]))
    files["server-key"].write_bytes(encode_pkcs8_pem(key, passphrase=None))  # re-encrypted by init
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.factory_ca.certificate.subject)
        .last_update(NOW)
        .next_update(NOW + timedelta(days=7))
        .sign(pki.factory_ca.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    files["crl"].write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    client_key = generate_private_key(KeySpec.EC_P256)
    _, client_cert = leaf(pki.factory_root, "node-client", profile=CertificateProfile.CLIENT)
    Credential(client_key, (client_cert,), (pki.customer_root.certificate,)).save(
        tmp_path / "cred", passphrase=CLIENT_PASSPHRASE.encode()
    )
    files["cred"] = tmp_path / "cred"
    files["node"] = tmp_path / "node"
    yield files


def init_args(files: dict[str, Path], *extra: str) -> list[str]:
    return [
        "node",
        "init",
        "--dir",
        str(files["node"]),
        "--ca",
        "127.0.0.1:7443",
        "--client-cred",
        str(files["cred"]),
        "--trust",
        str(files["bundle"]),
        "--server-cert",
        str(files["server-cert"]),
        "--server-key",
        str(files["server-key"]),
        "--customer-chain",
        str(files["chain"]),
        *extra,
    ]


def test_ok_init_makes_a_self_contained_directory(inputs: dict[str, Path]) -> None:
    status, out = run(
        *init_args(
            inputs,
            "--ca-name",
            "operational",
            "--validity-days",
            "90",
            "--country",
            "SE",
            "--crl",
            str(inputs["crl"]),
        )
    )
    assert status == 0, out
    node = inputs["node"]
    assert (node / "node.sqlite").exists()
    assert (node / "server" / "key.pem").stat().st_mode & 0o077 == 0
    assert b"ENCRYPTED" in (node / "server" / "key.pem").read_bytes()
    data = tomllib.loads((node / "node.toml").read_text())
    assert data["ca"]["default"] == {
        "chain": "ca/default.pem",
        "ca_name": "operational",
        "validity_days": 90,
        "country": "SE",
        "encrypt_key": False,
    }
    # Every file the node needs is inside the directory: the inputs can go away.
    for path in inputs.values():
        if path.is_file():
            path.unlink()
    material = load_material(
        NodeConfig.load(node),
        node_passphrase=NODE_PASSPHRASE.encode(),
        client_passphrase=CLIENT_PASSPHRASE.encode(),
    )
    assert material.credential is not None and list(material.labels) == ["default"]
    # Negative control: the wrong node passphrase does not open the server key.
    from ztpki.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="passphrase"):
        load_material(
            NodeConfig.load(node),
            node_passphrase=b"wrong-passphrase",
            client_passphrase=None,
            load_credential=False,
        )


def test_fail_init_twice(inputs: dict[str, Path]) -> None:
    assert run(*init_args(inputs))[0] == 0
    assert run(*init_args(inputs))[0] == 1


def test_fail_init_with_a_leaf_as_customer_chain(inputs: dict[str, Path]) -> None:
    status, _ = run(*init_args(inputs)[:-1], str(inputs["server-cert"]))
    assert status == 1
    assert not inputs["node"].exists()  # checked before anything is written


def test_ok_add_ca_and_policy(inputs: dict[str, Path]) -> None:
    assert run(*init_args(inputs))[0] == 0
    node = str(inputs["node"])
    assert (
        run(
            "node",
            "add-ca",
            "--dir",
            node,
            "--label",
            "meters",
            "--customer-chain",
            str(inputs["chain"]),
            "--key-algorithm",
            "ec-p384",
            "--encrypt-key",
        )[0]
        == 0
    )
    status, out = run("node", "policy", "--dir", node, "--json")
    assert status == 0
    rows = {r["label"]: r for r in json.loads(out)}
    assert rows["meters"]["key_algorithm"] == "ec-p384" and rows["meters"]["encrypt_key"] is True
    assert rows["default"]["default"] is True
    assert (
        run(
            "node",
            "add-ca",
            "--dir",
            node,
            "--label",
            "meters",
            "--customer-chain",
            str(inputs["chain"]),
        )[0]
        == 1
    )
    assert (
        run(
            "node",
            "add-ca",
            "--dir",
            node,
            "--label",
            "bad/label",
            "--customer-chain",
            str(inputs["chain"]),
        )[0]
        == 1
    )


def test_ok_register_commands_and_audit(inputs: dict[str, Path]) -> None:
    assert run(*init_args(inputs))[0] == 0
    node = str(inputs["node"])
    assert run("node", "add", "--dir", node, "dev-1", "--fingerprint", "AB:" * 31 + "AB")[0] == 0
    assert run("node", "add", "--dir", node, "dev-1")[0] == 1  # already listed
    assert run("node", "add", "--dir", node, "dev 2")[0] == 1  # not a device id
    assert run("node", "add", "--dir", node, "dev-3", "--fingerprint", "xyz")[0] == 1
    assert run("node", "block", "--dir", node, "dev-1")[0] == 0
    assert run("node", "block", "--dir", node, "dev-1")[0] == 1  # already blocked
    assert run("node", "block", "--dir", node, "nobody")[0] == 1
    status, out = run("node", "devices", "--dir", node, "--json", "--state", "blocked")
    devices = json.loads(out)
    assert [(d["device_id"], d["blocked_from"], d["temp_fingerprint"]) for d in devices] == [
        ("dev-1", "listed", "ab" * 32)
    ]
    assert run("node", "unblock", "--dir", node, "dev-1")[0] == 0
    status, out = run("node", "audit", "--dir", node, "--json", "--device", "dev-1")
    assert status == 0
    assert [e["decision"] for e in json.loads(out)] == ["listed", "blocked", "unblocked"]
    assert run("node", "audit", "--dir", node, "--verify")[0] == 0
    assert run("node", "devices", "--dir", node)[0] == 0


def test_fail_commands_outside_a_node_directory(tmp_path: Path, env: None) -> None:
    assert run("node", "devices", "--dir", str(tmp_path))[0] == 1
    assert run("node", "audit", "--dir", str(tmp_path), "--verify")[0] == 1
