"""`ztpki node` commands in-process: init, add-ca, policy, add, block, devices, audit.

No server runs here; the end-to-end tests run `ztpki node serve` itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from node_pki import NOW, PKI, leaf
from tests.support.pbes2 import pbes2_parameters

from ztpki.cli import main
from ztpki.credentials import Credential
from ztpki.node.config import NodeConfig
from ztpki.node.runtime import load_material
from ztpki.pki.keys import decode_pkcs8, encode_pkcs8_pem
from ztpki.pki.pbes2 import AT_REST_KDF_ROUNDS
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
    client_key, client_cert = leaf(
        pki.factory_root, "node-client", profile=CertificateProfile.CLIENT
    )
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
        "--manufacturer",
        "Acme Devices",
        "--device-ids",
        "*",
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
        "allow_no_eku": False,
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


def test_fail_init_twice(inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(*init_args(inputs))[0] == 0
    capsys.readouterr()
    assert run(*init_args(inputs))[0] == 1
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert f"{inputs['node']}: a node directory exists already (node.toml)" in err


def test_fail_init_with_a_leaf_as_customer_chain(inputs: dict[str, Path]) -> None:
    status, _ = run(*init_args(inputs)[:-1], str(inputs["server-cert"]))
    assert status == 1
    assert not inputs["node"].exists()  # checked before anything is written


def test_ok_allow_no_eku_per_label_and_shown_by_policy(inputs: dict[str, Path]) -> None:
    assert run(*init_args(inputs, "--allow-no-eku"))[0] == 0
    node = str(inputs["node"])
    add = ["node", "add-ca", "--dir", node, "--customer-chain", str(inputs["chain"])]
    assert run(*add, "--label", "strict")[0] == 0
    assert run(*add, "--label", "legacy", "--allow-no-eku")[0] == 0
    status, out = run("node", "policy", "--dir", node, "--json")
    assert status == 0
    rows = {r["label"]: r["allow_no_eku"] for r in json.loads(out)}
    assert rows == {"default": True, "strict": False, "legacy": True}
    config = NodeConfig.load(inputs["node"])
    assert {ca.label: ca.allow_no_eku for ca in config.labels} == rows
    status, out = run("node", "policy", "--dir", node)
    assert "allow_no_eku = True" in out and "allow_no_eku = False" in out


def test_fail_allow_no_eku_must_be_a_boolean(inputs: dict[str, Path]) -> None:
    assert run(*init_args(inputs))[0] == 0
    path = inputs["node"] / "node.toml"
    path.write_text(path.read_text().replace("allow_no_eku = false", 'allow_no_eku = "yes"'))
    status, _ = run("node", "policy", "--dir", str(inputs["node"]))
    assert status == 1


def test_ok_cmp_implicit_confirm_per_label_and_shown_by_policy(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(*init_args(inputs))[0] == 0
    node = str(inputs["node"])
    status, out = run("node", "policy", "--dir", node, "--json")
    assert [r["cmp_implicit_confirm"] for r in json.loads(out)] == [False]  # off by default
    assert [r["cmp_mac_protection"] for r in json.loads(out)] == [False]
    path = inputs["node"] / "node.toml"
    text = path.read_text()
    both = "allow_no_eku = false\ncmp_implicit_confirm = true\ncmp_mac_protection = true"
    path.write_text(text.replace("allow_no_eku = false", both))
    status, out = run("node", "policy", "--dir", node)
    assert status == 0 and "cmp_implicit_confirm = True" in out
    assert "cmp_mac_protection = True" in out
    assert NodeConfig.load(inputs["node"]).labels[0].cmp_implicit_confirm
    assert NodeConfig.load(inputs["node"]).labels[0].cmp_mac_protection
    path.write_text(
        text.replace("allow_no_eku = false", "allow_no_eku = false\ncmp_mac_protection = 1")
    )
    capsys.readouterr()
    assert run("node", "policy", "--dir", node)[0] == 1
    assert "cmp_mac_protection must be true or false" in " ".join(capsys.readouterr().err.split())
    path.write_text(
        text.replace("allow_no_eku = false", "allow_no_eku = false\ncmp_implicit_confirm = 1")
    )
    capsys.readouterr()
    assert run("node", "policy", "--dir", node)[0] == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "cmp_implicit_confirm must be true or false" in err


def test_ok_server_key_is_written_with_the_work_factor_of_ca_keys(
    inputs: dict[str, Path],
) -> None:
    # The input key is in the old format (cryptography's 2,048 rounds): it still loads.
    old = encode_pkcs8_pem(
        decode_pkcs8(inputs["server-key"].read_bytes(), passphrase=None),
        passphrase=NODE_PASSPHRASE.encode(),
    )
    assert pbes2_parameters(old)[2] == 2048
    inputs["server-key"].write_bytes(old)
    assert run(*init_args(inputs))[0] == 0
    written = (inputs["node"] / "server" / "key.pem").read_bytes()
    assert pbes2_parameters(written)[2] == AT_REST_KDF_ROUNDS
    copied = (inputs["node"] / "ca-client" / "key.pem").read_bytes()
    assert pbes2_parameters(copied)[2] == AT_REST_KDF_ROUNDS  # as `ca add-client` wrote it
    config = NodeConfig.load(inputs["node"])
    material = load_material(
        config,
        node_passphrase=NODE_PASSPHRASE.encode(),
        client_passphrase=CLIENT_PASSPHRASE.encode(),
    )
    assert material.credential is not None


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
    assert run("node", "add", "--dir", node, "dev-1", "--fingerprint", "cd" * 32)[0] == 1  # listed
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


def test_ok_retire_is_final_and_refuses_a_hold_reason(inputs: dict[str, Path]) -> None:
    assert run(*init_args(inputs))[0] == 0
    node = str(inputs["node"])
    assert run("node", "add", "--dir", node, "dev-1", "--fingerprint", "ab" * 32)[0] == 0
    before = run("node", "audit", "--dir", node, "--json")[1]
    hold = run("node", "retire", "--dir", node, "dev-1", "--reason", "certificateHold")
    assert hold[0] == 2  # a usage error: not among the choices
    assert run("node", "retire", "--dir", node, "dev-1")[0] == 2  # --reason is required
    assert run("node", "audit", "--dir", node, "--json")[1] == before  # nothing changed
    status, out = run("node", "retire", "--dir", node, "dev-1", "--reason", "keyCompromise")
    assert status == 0 and "no certificate of it to revoke" in out
    assert run("node", "retire", "--dir", node, "dev-1", "--reason", "keyCompromise")[0] == 1
    assert run("node", "block", "--dir", node, "dev-1")[0] == 1
    assert run("node", "unblock", "--dir", node, "dev-1")[0] == 1
    assert run("node", "retire", "--dir", node, "nobody", "--reason", "keyCompromise")[0] == 1
    status, out = run("node", "devices", "--dir", node, "--json", "--state", "retired")
    (device,) = json.loads(out)
    assert (device["device_id"], device["revocations"]) == ("dev-1", [])
    status, out = run("node", "audit", "--dir", node, "--json", "--device", "dev-1")
    assert [e["decision"] for e in json.loads(out)] == ["listed", "retired"]


def test_fail_commands_outside_a_node_directory(tmp_path: Path, env: None) -> None:
    assert run("node", "devices", "--dir", str(tmp_path))[0] == 1
    assert run("node", "audit", "--dir", str(tmp_path), "--verify")[0] == 1


# ------------------------------------------------------------------ usability


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param("sha256:" + "AB" * 32, id="ok-sha256-prefix-upper-case"),
        pytest.param("SHA256:" + ":".join(["ab"] * 32), id="ok-prefix-and-colons"),
        pytest.param("ab" * 32, id="ok-bare-hex"),
        pytest.param(
            "sha256 Fingerprint=" + ":".join(["AB"] * 32), id="ok-openssl-x509-fingerprint-output"
        ),
    ],
)
def test_ok_add_fingerprint_spellings(inputs: dict[str, Path], spelling: str) -> None:
    """What `openssl x509 -fingerprint` and the device print is accepted as it is."""
    assert run(*init_args(inputs))[0] == 0
    node = str(inputs["node"])
    assert run("node", "add", "--dir", node, "dev-1", "--fingerprint", spelling)[0] == 0
    out = run("node", "devices", "--dir", node, "--json")[1]
    assert [d["temp_fingerprint"] for d in json.loads(out)] == ["ab" * 32]


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param("sha256:" + "ab" * 31, id="fail-too-short"),
        pytest.param("sha1:" + "ab" * 32, id="fail-other-prefix"),
        pytest.param("xy" * 32, id="fail-not-hex"),
    ],
)
def test_fail_add_bad_fingerprint_names_the_option(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture[str], spelling: str
) -> None:
    assert run(*init_args(inputs))[0] == 0
    capsys.readouterr()
    node = str(inputs["node"])
    assert run("node", "add", "--dir", node, "dev-1", "--fingerprint", spelling)[0] == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "--fingerprint" in err and "sha256:" in err and "temp_fingerprint" not in err
    assert json.loads(run("node", "devices", "--dir", node, "--json")[1]) == []


def test_fail_serve_with_a_wrong_client_passphrase_names_where_it_comes_from(
    inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(*init_args(inputs))[0] == 0
    capsys.readouterr()
    monkeypatch.setenv("ZTPKI_CLIENT_PASSPHRASE", "not-the-client-passphrase")
    monkeypatch.setenv("ZTPKI_EVENT_LOOP", "asyncio")
    status, out = run("node", "serve", "--dir", str(inputs["node"]), "--listen", "127.0.0.1:0")
    assert status == 1 and "listening" not in out
    err = " ".join(capsys.readouterr().err.split())
    assert "wrong or missing passphrase" in err
    assert "ZTPKI_CLIENT_PASSPHRASE" in err and "--client-passphrase-file" in err
    assert "not-the-client-passphrase" not in err


def ztpki_process(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztpki", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_fail_serve_on_a_port_in_use_is_one_line_not_a_traceback(
    inputs: dict[str, Path],
) -> None:
    assert run(*init_args(inputs))[0] == 0
    env = {"ZTPKI_NODE_PASSPHRASE": NODE_PASSPHRASE, "ZTPKI_CLIENT_PASSPHRASE": CLIENT_PASSPHRASE}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = ztpki_process(
            "node", "serve", "--dir", str(inputs["node"]), "--listen", f"127.0.0.1:{port}", env=env
        )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    err = " ".join(result.stderr.split())
    assert f"error: cannot listen on 127.0.0.1:{port}: address already in use" in err
    assert "listening on" not in result.stdout


def test_ok_devices_table_never_cuts_a_device_id_in_80_columns(inputs: dict[str, Path]) -> None:
    assert run(*init_args(inputs))[0] == 0
    node = str(inputs["node"])
    ids = ["ACME-B1-000001", "ACME-B1-000002-with-a-long-suffix"]
    for device_id in ids:
        assert (
            run("node", "add", "--dir", node, device_id, "--manufacturer", "Acme Devices")[0] == 0
        )
    result = ztpki_process("node", "devices", "--dir", node, env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    for device_id in ids:
        assert device_id in result.stdout
