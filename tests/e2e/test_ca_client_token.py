"""A CA-client whose TLS key lives in a PKCS#11 token (SoftHSM): `ztpki ca add-client
--pkcs11` makes the key there, the loading station (`ztpki factory load`) and the node's
CA-clients (`ztpki node request-server-cert`, a `node serve` customizing a device) connect
with it over mTLS, and a wrong PIN or a token that is away stops the command before
anything is issued."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.device_fixtures import World, take_device, world, ztpki, ztpki_json
from tests.support.softhsm import USER_PIN, SoftHSM, softhsm

from ztpki.device import DeviceMemory

__all__ = ["softhsm", "world"]


@pytest.fixture(scope="module")
def station(world: World, softhsm: SoftHSM) -> tuple[Path, str]:
    """A CA-client credential of the factory CA system with its key in a fresh token."""
    label = softhsm.new_token("station")
    out = world.path(f"station-{label}")
    result = ztpki(
        "ca", "add-client", "--dir", str(world.path("F")), "--name", f"line-{label}",
        "--ca", "devices", "--ca", "servers", "--ip", "127.0.0.1", "--out", str(out),
        "--pkcs11", f"pkcs11:token={label};object=station",
        env=softhsm.env,
    )  # fmt: skip
    assert f"its key in the token pkcs11:token={label}" in result.stdout
    return out, label


def _load(world: World, env: dict[str, str], credential: Path, device_id: str) -> Any:
    return ztpki(
        "factory", "load", "--device", str(world.path("tok-station", device_id)),
        "--device-id", device_id, "--ca", world.services["F"].address,
        "--client-cred", str(credential), "--ca-name", "devices",
        "--trust", str(world.path("factory-trust.pem")),
        env=env, check=False,
    )  # fmt: skip


def _issued(world: World, device_id: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = ztpki_json(
        "ca", "issued", "--dir", str(world.path("F")), "--device", device_id
    )
    return records


def test_ok_station_with_its_key_in_a_token_loads_devices_and_a_node_enrolls(
    world: World, softhsm: SoftHSM, station: tuple[Path, str]
) -> None:
    credential, label = station
    device_id = f"TOKST-{os.urandom(3).hex()}"
    loaded = _load(world, softhsm.env, credential, device_id)
    assert loaded.returncode == 0, loaded.stderr
    memory = DeviceMemory.open(world.path("tok-station", device_id))
    assert memory.phase.value == "temporary", memory.phase
    assert [r["status"] for r in _issued(world, device_id)] == ["active"]

    # The node side: a CA-client of the same kind asks the servers CA for a TLS certificate.
    out = world.path(f"node-cert-{label}")
    ztpki(
        "node", "request-server-cert", "--ca", world.services["F"].address,
        "--client-cred", str(credential), "--ca-name", "servers", "--name", f"node-{label}",
        "--ip", "127.0.0.1",
        "--out", str(out),
        env=softhsm.env,
    )  # fmt: skip
    assert (out / "cert.pem").exists()

    # The key never left the token: sensitive, never extractable, and no file holds a key.
    listing = softhsm.private_keys(label)
    assert "label:      station" in listing
    assert "sensitive, always sensitive, never extractable, local" in listing
    files = {p.name: p.read_bytes() for p in credential.iterdir()}
    assert sorted(files) == ["ca.pem", "cert.pem", "key.toml"]
    assert not any(b"PRIVATE KEY" in data for data in files.values())
    assert USER_PIN.encode() not in files["key.toml"]


def test_fail_wrong_pin_or_token_away_issues_nothing_and_says_why(
    world: World, softhsm: SoftHSM, station: tuple[Path, str]
) -> None:
    credential, label = station
    device_id = f"TOKST-{os.urandom(3).hex()}"
    wrong = _load(
        world, {**softhsm.env, "ZTPKI_PKCS11_PIN": "not-the-pin-4711"}, credential, device_id
    )
    assert wrong.returncode != 0
    assert f"the PIN for token '{label}' is wrong" in wrong.stderr
    assert "not-the-pin-4711" not in wrong.stderr + wrong.stdout

    where = softhsm.token_dir(label)
    away = softhsm.root / f"away-{label}"  # out of SoftHSM's token directory: unplugged
    os.rename(where, away)
    try:
        gone = _load(world, softhsm.env, credential, device_id)
    finally:
        os.rename(away, where)
    assert gone.returncode != 0
    assert "the token holding the key of credential" in gone.stderr, gone.stderr
    assert _issued(world, device_id) == []
    assert not world.path("tok-station", device_id).exists()


def test_ok_node_whose_ca_client_key_is_in_a_token_customizes_a_device(
    world: World, softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in softhsm.env.items():  # `node serve` inherits them
        monkeypatch.setenv(name, value)
    label = softhsm.new_token("node")
    credential = world.path(f"C-node-{label}")
    ztpki(
        "ca", "add-client", "--dir", str(world.path("C")), "--name", f"node-{label}",
        "--ca", "devices", "--out", str(credential),
        "--pkcs11", f"pkcs11:token={label};object=node",
    )  # fmt: skip
    node = f"NT-{label}"
    ztpki(
        "node", "init", "--dir", str(world.path(node)), "--ca", world.services["C"].address,
        "--client-cred", str(credential), "--manufacturer", "Acme", "--device-ids", "*",
        "--trust", str(world.path("factory-trust.pem")),
        "--server-cert", str(world.path("node-cert", "cert.pem")),
        "--server-key", str(world.path("node-cert", "key.pem")),
        "--customer-chain", str(world.path("customer-chain.pem")),
    )  # fmt: skip
    assert not (world.path(node, "ca-client", "key.pem")).exists()
    assert (world.path(node, "ca-client", "key.toml")).exists()
    doctor = ztpki("doctor", "--node-dir", str(world.path(node)), "--offline", "--json")
    assert "ca-client" not in " ".join(
        f["subject"] for f in json.loads(doctor.stdout) if f["severity"] == "error"
    )
    assert world.manifest is not None
    ztpki("node", "import", "--dir", str(world.path(node)), str(world.manifest))
    service = world.start(
        node, "node", "serve", "--dir", str(world.path(node)), "--listen", "127.0.0.1:0"
    )
    try:
        device_id = take_device(world)
        ztpki(
            "device", "activate", "--device", str(world.device(device_id)),
            "--node", f"https://{service.address}",
        )  # fmt: skip
    finally:
        world.stop(node)
    assert len(world.active(device_id)) == 1  # the customer CA issued, over the token's TLS
