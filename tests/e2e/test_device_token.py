"""A device whose keys live in a PKCS#11 token (SoftHSM, a fresh token per device): loaded
with `ztpki factory load --token`, customized with a plain `ztpki device activate` (CMP, the
new key made in the token), every signature made in the token, the identity swap crash-safe."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from tests.e2e.device_fixtures import World, world, ztpki
from tests.support.softhsm import USER_PIN, SoftHSM, softhsm

from ztpki.device import DeviceMemory, Phase
from ztpki.pki.keys import keys_match

__all__ = ["softhsm", "world"]


@pytest.fixture(autouse=True)
def _token_env(softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process reads the device memories too: it reaches the tokens as `ztpki` does."""
    for name, value in softhsm.env.items():
        monkeypatch.setenv(name, value)


def _run(hsm: SoftHSM, *args: str, fault: str | None = None, check: bool = True):  # type: ignore[no-untyped-def]
    env = {**hsm.env, **({"ZTPKI_DEVICE_FAULT": fault} if fault else {})}
    return ztpki(*args, env=env, check=check)


def load_token_device(
    world: World, hsm: SoftHSM, *extra: str, listed: bool = True
) -> tuple[str, Path, str]:
    """A device loaded with its temporary key in a fresh token, listed at node N (unless
    ``listed`` is false: then no manifest names it)."""
    device_id = f"tok-{os.urandom(4).hex()}"
    label = hsm.new_token("dev")
    devices = world.path("token-devices", device_id)
    directory = devices / device_id
    _run(
        hsm, "factory", "load", "--device", str(directory), "--device-id", device_id,
        "--token", f"pkcs11:token={label}", "--batch", "TOK",
        "--ca", world.services["F"].address, "--client-cred", str(world.path("F-line1")),
        "--ca-name", "devices", "--trust", str(world.path("factory-trust.pem")), *extra,
    )  # fmt: skip
    if not listed:
        return device_id, directory, label
    manifest = devices.parent / f"{device_id}.json"
    _run(
        hsm, "factory", "sign-manifest", "--devices", str(devices),
        "--signer", str(world.path("signer")), "--out", str(manifest),
    )  # fmt: skip
    ztpki("node", "import", "--dir", str(world.path("N")), str(manifest))
    return device_id, directory, label


def activate(world: World, hsm: SoftHSM, directory: Path, *extra: str, **kw: object):  # type: ignore[no-untyped-def]
    return _run(
        hsm, "device", "activate", "--device", str(directory), "--node", world.node_url,
        *extra, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def device_keys(hsm: SoftHSM, label: str) -> list[str]:
    """The labels of the private key objects in the token."""
    listing = hsm.private_keys(label)
    return [line.split(":", 1)[1].strip() for line in listing.splitlines() if "label:" in line]


def no_key_file(directory: Path) -> bool:
    return not any(b"PRIVATE KEY" in p.read_bytes() for p in directory.rglob("*") if p.is_file())


def test_ok_token_device_customizes_over_cmp_with_its_keys_in_the_token(
    world: World, softhsm: SoftHSM
) -> None:
    device_id, directory, label = load_token_device(world, softhsm)
    memory = DeviceMemory.open(directory)
    temporary = memory.identity()
    assert temporary.phase is Phase.TEMPORARY
    assert repr(temporary.private_key).startswith("TokenDeviceKey('pkcs11:")
    assert no_key_file(directory)
    assert len(device_keys(softhsm, label)) == 1
    listing = softhsm.private_keys(label)
    assert "sensitive" in listing and "never extractable" in listing

    # `device activate` as for any device: a token device speaks CMP and makes its new key
    # in the token without being told.
    result = activate(world, softhsm, directory)

    assert "certConf accepted (pkiConf)" in " ".join(result.stdout.split())
    memory = DeviceMemory.open(directory)
    operational = memory.identity()
    assert operational.phase is Phase.CUSTOMIZED and memory.config()["confirmed"] is True
    assert operational.certificate is not None and operational.private_key is not None
    assert keys_match(operational.private_key, operational.certificate.public_key())
    assert repr(operational.private_key) != repr(temporary.private_key)
    # The temporary key object is destroyed once the node confirmed; one key remains.
    assert len(device_keys(softhsm, label)) == 1
    assert no_key_file(directory)
    assert world.register()[device_id]["state"] == "customized"
    assert world.active(device_id) == [format(operational.certificate.serial_number, "x")]

    # Renewal over CMP: kur signed in the token, a new object, the old one retired.
    _run(softhsm, "device", "renew", "--device", str(directory))  # CMP, as it customized
    renewed = DeviceMemory.open(directory).identity()
    assert renewed.certificate is not None
    assert renewed.certificate.serial_number != operational.certificate.serial_number
    assert len(device_keys(softhsm, label)) == 1
    assert world.active(device_id) == [format(renewed.certificate.serial_number, "x")]


def test_fail_token_device_over_est_and_export_are_refused_and_nothing_changes(
    world: World, softhsm: SoftHSM, tmp_path: Path
) -> None:
    device_id, directory, label = load_token_device(world, softhsm)
    before = (directory / "identity.json").read_bytes()
    keys_before = device_keys(softhsm, label)

    est = activate(world, softhsm, directory, "--protocol", "est", "--key-on-device", check=False)

    assert est.returncode != 0
    said = " ".join(est.stderr.split())
    assert "PKCS#11 token" in said and "--protocol cmp" in said, said
    exported = _run(
        softhsm, "device", "export", "--device", str(directory), "--out", str(tmp_path / "x"),
        check=False,
    )  # fmt: skip
    assert exported.returncode != 0
    assert "never leaves it" in " ".join(exported.stderr.split())
    assert not (tmp_path / "x" / "key.pem").exists()
    assert (directory / "identity.json").read_bytes() == before
    assert world.register()[device_id]["state"] == "listed"
    assert world.active(device_id) == []
    assert device_keys(softhsm, label) == keys_before
    assert not (directory / "pending-key.pem").exists()


def test_fail_token_device_not_in_the_register_is_refused_over_cmp_and_nothing_is_issued(
    world: World, softhsm: SoftHSM
) -> None:
    """Without a TLS client certificate the CMP signer is the identity: it is held to the
    same checks (factory chain, register), so an unlisted device gets nothing."""
    device_id, directory, label = load_token_device(world, softhsm, listed=False)
    before = (directory / "identity.json").read_bytes()

    refused = activate(
        world, softhsm, directory, "--protocol", "cmp", "--key-on-device", check=False
    )

    assert refused.returncode != 0
    assert (directory / "identity.json").read_bytes() == before
    assert device_id not in world.register()
    assert world.issued(device_id) == []
    assert world.audit(device_id)  # the refusal is recorded
    # Its request's key stays pending in the token (a retry asks for the same key), nothing else.
    assert len(device_keys(softhsm, label)) <= 2


@pytest.mark.parametrize(
    "point", ["before-request", "after-answer", "mid-replace", "after-replace", "after-confirm"]
)
def test_ok_token_device_killed_at_each_point_keeps_one_usable_identity(
    world: World, softhsm: SoftHSM, point: str
) -> None:
    device_id, directory, label = load_token_device(world, softhsm)
    mode = ("--protocol", "cmp", "--key-on-device")

    killed = activate(world, softhsm, directory, *mode, fault=point, check=False)

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # One usable identity: the key the memory names is in the token and matches.
    identity = DeviceMemory.open(directory).identity()
    assert identity.private_key is not None and identity.certificate is not None
    assert keys_match(identity.private_key, identity.certificate.public_key())
    assert no_key_file(directory)

    again = activate(world, softhsm, directory, *mode)

    memory = DeviceMemory.open(directory)
    final = memory.identity()
    assert final.phase is Phase.CUSTOMIZED and memory.config()["confirmed"] is True, again.stdout
    assert final.certificate is not None
    assert world.active(device_id) == [format(final.certificate.serial_number, "x")]
    assert world.register()[device_id]["state"] == "customized"
    if point == "after-confirm":
        # Killed before retiring: the next run only confirms again, and then retires.
        assert "[request]" not in again.stdout
    assert len(device_keys(softhsm, label)) == 1


def test_ok_keygen_station_wraps_the_key_from_the_station_token_into_the_device_token(
    world: World, softhsm: SoftHSM
) -> None:
    station = softhsm.new_token("station")
    device_id, directory, label = load_token_device(
        world, softhsm, "--keygen", "station", "--station-token", f"pkcs11:token={station}"
    )

    # The key is in the device token, sensitive and never extractable there; the station
    # token keeps nothing (every object it made was a session object, destroyed).
    assert len(device_keys(softhsm, label)) == 1
    access = next(line for line in softhsm.private_keys(label).splitlines() if "Access:" in line)
    # Sensitive and not extractable in the device's token; not "never extractable": PKCS#11
    # says so of an unwrapped key, which was extractable (by wrapping) in the station.
    assert "sensitive" in access and "extractable" not in access, access
    everything = softhsm.pkcs11_tool("--token-label", station, "--login", "--pin", USER_PIN, "-O")
    assert "Object" not in everything.stdout, everything.stdout
    assert no_key_file(directory)
    temporary = DeviceMemory.open(directory).identity()
    assert temporary.private_key is not None and temporary.certificate is not None
    assert keys_match(temporary.private_key, temporary.certificate.public_key())

    activate(world, softhsm, directory, "--protocol", "cmp", "--key-on-device")

    assert DeviceMemory.open(directory).phase is Phase.CUSTOMIZED
    assert world.register()[device_id]["state"] == "customized"


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--token", "pkcs11:token={label};object=k"], "leave out object="),
        (["--token", "pkcs11:token={label}", "--keygen", "station"], "go together"),
        (["--keygen", "device"], "needs --token URI"),
        (["--token", "pkcs11:token={label}", "--keygen", "station",
          "--station-token", "pkcs11:token={label}"], "another token"),
    ],
)  # fmt: skip
def test_fail_factory_load_with_inconsistent_token_options_is_refused(
    world: World, softhsm: SoftHSM, tmp_path: Path, options: list[str], said: str
) -> None:
    label = softhsm.new_token("dev")
    result = _run(
        softhsm, "factory", "load", "--device", str(tmp_path / "d"), "--device-id", "tok-x",
        *[o.format(label=label) for o in options],
        "--ca", world.services["F"].address, "--client-cred", str(world.path("F-line1")),
        check=False,
    )  # fmt: skip
    assert result.returncode != 0 and said in " ".join(result.stderr.split()), result.stderr
    assert not (tmp_path / "d").exists()
    assert device_keys(softhsm, label) == []
