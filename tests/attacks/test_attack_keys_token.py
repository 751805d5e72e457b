"""Attacks on keys kept in PKCS#11 tokens (SoftHSM2) by devices and by CA-clients.

A device loaded with `ztpki factory load --token` keeps its keys in its token; a loading
station made with `ztpki ca add-client --pkcs11` keeps its TLS key in one. An attacker who
gets the device's memory directory or the station's credential directory, but not the token
(or not its PIN), tries to get the key out, to activate anyway, to point the memory at
another device's key, and to use EST, which needs a key file. After each case: nothing was
issued, the register and audit trail are unchanged, the token still holds its keys.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from tests.attacks.attack_deployment import Deployment
from tests.attacks.attack_report import AttackReport
from tests.support.services import run_ztpki
from tests.support.softhsm import USER_PIN, SoftHSM, softhsm

from ztpki.pki.pkcs11_uri import Pkcs11Uri

__all__ = ["softhsm"]

pytestmark = pytest.mark.timeout(240)

CATEGORY = "keys"
WRONG_PIN = "guess-4711-0000"


@dataclass(frozen=True)
class TokenDevice:
    device_id: str
    directory: Path
    label: str  # its token


def _ztpki(d: Deployment, hsm: SoftHSM, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """One `ztpki` command in its own process, reaching the SoftHSM tokens."""
    result = run_ztpki(*args, env={**d.env, **hsm.env, **(env or {})}, check=False, timeout=120)
    d.transcript.add(f"ztpki {' '.join(args[:2])}", result.stdout + result.stderr)
    return result


@pytest.fixture(scope="module")
def token_devices(deployment: Deployment, softhsm: SoftHSM) -> list[TokenDevice]:
    """Two listed devices, each with its temporary key in a token of its own."""
    d = deployment
    out = d.root / "token-devices"
    devices = []
    for n in range(2):  # the first for cases that change nothing, the second for the rest
        device_id = f"ACME-TOK-{n}-{os.urandom(3).hex()}"
        label = softhsm.new_token("dev")
        directory = out / device_id
        loaded = _ztpki(
            d, softhsm, "factory", "load", "--device", str(directory), "--device-id", device_id,
            "--token", f"pkcs11:token={label}", "--batch", "TOK", "--ca-name", "factory",
            *d.factory_client(d.services["factory"].address),
        )  # fmt: skip
        assert loaded.returncode == 0, loaded.stderr
        devices.append(TokenDevice(device_id, directory, label))
    manifest = d.root / "manifest-token.json"
    signed = _ztpki(
        d, softhsm, "factory", "sign-manifest", "--devices", str(out),
        "--signer", str(d.root / "signer"), "--out", str(manifest),
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    d.cli("node", "import", "--dir", str(d.node_dir), str(manifest))
    return devices


def _activate(d: Deployment, hsm: SoftHSM, directory: Path, *extra: str, **kw):  # type: ignore[no-untyped-def]
    node = f"https://{d.node.host}:{d.node.port}"
    return _ztpki(d, hsm, "device", "activate", "--device", str(directory), "--node", node,
                  *extra, **kw)  # fmt: skip


def _said(result) -> str:  # type: ignore[no-untyped-def]
    return " ".join((result.stdout + result.stderr).split())


def _private_labels(hsm: SoftHSM, label: str) -> list[str]:
    listing = hsm.private_keys(label)
    return [line.split(":", 1)[1].strip() for line in listing.splitlines() if "label:" in line]


def test_fail_token_device_key_export_and_read_out(
    deployment: Deployment,
    softhsm: SoftHSM,
    token_devices: list[TokenDevice],
    tmp_path: Path,
    attack_report: AttackReport,
) -> None:
    d, device = deployment, token_devices[0]
    before = d.snapshot()
    exported = _ztpki(
        d, softhsm, "device", "export", "--device", str(device.directory),
        "--out", str(tmp_path / "x"),
    )  # fmt: skip
    assert exported.returncode != 0
    assert "never leaves it" in _said(exported), _said(exported)
    assert not (tmp_path / "x" / "key.pem").exists()
    memory_files = [p for p in device.directory.rglob("*") if p.is_file()]
    assert not any(b"PRIVATE KEY" in p.read_bytes() for p in memory_files)
    [key_label] = _private_labels(softhsm, device.label)
    with softhsm.session(device.label) as session:
        key = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=key_label)
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[pkcs11.Attribute.VALUE]
        wrapping = session.generate_key(pkcs11.KeyType.AES, 256, store=False)
        with pytest.raises(pkcs11.exceptions.PKCS11Error):
            wrapping.wrap_key(key)
    attack_report.record(
        case="keys/token-device-key-out",
        category=CATEGORY,
        attack="`device export` of a device whose key is in its token; reading the memory "
        "directory's files; with the PIN, reading the key object's value or wrapping it",
        observed="export refused ('never leaves it'), no key.pem written; no memory file "
        "holds key material (the key is a URI); CKR_ATTRIBUTE_SENSITIVE and wrapping "
        "refused by the token; " + d.check_unchanged(before, unaudited_because="local"),
        verdict="refused",
    )


def test_fail_token_device_wrong_pin_or_est_sends_nothing(
    deployment: Deployment,
    softhsm: SoftHSM,
    token_devices: list[TokenDevice],
    attack_report: AttackReport,
) -> None:
    d, device = deployment, token_devices[0]
    identity = (device.directory / "identity.json").read_bytes()
    before = d.snapshot()
    guessed = _activate(
        d, softhsm, device.directory, "--protocol", "cmp", "--key-on-device",
        env={"ZTPKI_PKCS11_PIN": WRONG_PIN},
    )  # fmt: skip
    assert guessed.returncode != 0
    assert "the PIN for token" in _said(guessed), _said(guessed)
    assert WRONG_PIN not in guessed.stdout + guessed.stderr
    # EST only when asked for: a token device's default is CMP (`device activate` alone works).
    est = _activate(d, softhsm, device.directory, "--protocol", "est", "--key-on-device")
    assert est.returncode != 0
    assert "--protocol cmp" in _said(est), _said(est)
    assert (device.directory / "identity.json").read_bytes() == identity
    attack_report.record(
        case="keys/token-device-wrong-pin-or-est",
        category=CATEGORY,
        attack="`device activate` of a token device with a guessed PIN; and `--protocol est`, "
        "whose TLS client authentication would need the key in a file",
        observed="both refused before a request is sent: 'the PIN for token ... is wrong' (the "
        "PIN not echoed), and 'enrolls over CMP'; device memory unchanged; "
        + d.check_unchanged(before, unaudited_because="nothing reached the node"),
        verdict="refused",
    )


def test_fail_stolen_memory_without_its_token(
    deployment: Deployment,
    softhsm: SoftHSM,
    token_devices: list[TokenDevice],
    tmp_path: Path,
    attack_report: AttackReport,
) -> None:
    d, device = deployment, token_devices[0]
    stolen = tmp_path / "stolen"
    shutil.copytree(device.directory, stolen)
    before = d.snapshot()
    where = softhsm.token_dir(device.label)
    away = softhsm.root / f"away-{device.label}"  # out of SoftHSM's token directory
    os.rename(where, away)
    try:
        without = _activate(d, softhsm, stolen, "--protocol", "cmp", "--key-on-device")
        # The thief's own token under the same label: the URI finds a token, not the key.
        softhsm_label_twin(softhsm, device.label)
        twin = _activate(d, softhsm, stolen, "--protocol", "cmp", "--key-on-device")
    finally:
        shutil.rmtree(softhsm.token_dir(device.label), ignore_errors=True)
        os.rename(away, where)
    without_said = _refused(without, "the key in the token")
    twin_said = _refused(twin, "the key in the token")
    assert _private_labels(softhsm, device.label)  # the real token still holds its key
    attack_report.record(
        case="keys/token-device-memory-stolen",
        category=CATEGORY,
        attack="a copy of a token device's memory directory activated without the device's "
        "token, and with the thief's own token carrying the same label",
        observed=f"refused before a request is sent (without: {without_said}; look-alike "
        f"token: {twin_said}); " + d.check_unchanged(before, unaudited_because="local"),
        verdict="refused",
    )


def softhsm_label_twin(hsm: SoftHSM, label: str) -> None:
    """A new, empty token with exactly ``label`` (the thief's own)."""
    from ztpki.demo.softhsm import init_token

    init_token(hsm.conf, label, pin=USER_PIN, so_pin="twin-so-pin-1")


def _refused(result, phrase: str) -> str:  # type: ignore[no-untyped-def]
    """``phrase``, checked to be in what a refused command said (for the results table)."""
    assert result.returncode != 0
    assert phrase in _said(result), _said(result)
    return f"'{phrase}'"


def test_fail_memory_pointed_at_another_devices_key(
    deployment: Deployment,
    softhsm: SoftHSM,
    token_devices: list[TokenDevice],
    attack_report: AttackReport,
) -> None:
    d, victim, other = deployment, token_devices[1], token_devices[0]
    path = victim.directory / "identity.json"
    original = path.read_text()
    record = json.loads(original)
    theirs = json.loads((other.directory / "identity.json").read_text())["private_key"]
    before = d.snapshot()
    try:
        path.write_text(json.dumps({**record, "private_key": theirs}))
        swapped = _activate(d, softhsm, victim.directory, "--protocol", "cmp", "--key-on-device")
    finally:
        path.write_text(original)
    swapped_said = _refused(swapped, "does not match the certificate")

    # In the device's own token: a key of the attacker's under the label and id of the
    # device's key, so that a lookup by the stored URI finds it.
    uri = Pkcs11Uri.parse(record["private_key"].strip())
    assert uri.object is not None and uri.id is not None
    planted = softhsm.pkcs11_tool(
        "--token-label", victim.label, "--login", "--pin", USER_PIN, "--keypairgen",
        "--key-type", "EC:prime256v1", "--label", uri.object, "--id", uri.id.hex(),
    )  # fmt: skip
    assert planted.returncode == 0, planted.stderr
    shadowed = _activate(d, softhsm, victim.directory, "--protocol", "cmp", "--key-on-device")
    shadowed_said = _refused(shadowed, "objects match")
    assert path.read_text() == original
    attack_report.record(
        case="keys/token-device-key-swapped",
        category=CATEGORY,
        attack="the device memory's key URI edited to name another device's key object; and "
        "a key of the attacker's generated in the device's token under the label and id of "
        "the device's key",
        observed=f"refused before a request is sent (edited URI: {swapped_said}; planted "
        f"twin: {shadowed_said}); " + d.check_unchanged(before, unaudited_because="local"),
        verdict="refused",
    )


def test_fail_station_credential_without_its_token_or_redirected(
    deployment: Deployment,
    softhsm: SoftHSM,
    tmp_path: Path,
    attack_report: AttackReport,
) -> None:
    d = deployment
    label = softhsm.new_token("station")
    creds = {}
    for name in ("a", "b"):
        creds[name] = tmp_path / f"station-{name}"
        made = _ztpki(
            d, softhsm, "ca", "add-client", "--dir", str(d.factory_dir),
            "--name", f"tokline-{name}-{os.urandom(3).hex()}", "--ca", "factory",
            "--out", str(creds[name]), "--pkcs11", f"pkcs11:token={label};object=station-{name}",
            env=d.ca_env("factory"),
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
    copied = tmp_path / "copied"
    shutil.copytree(creds["a"], copied)
    before = d.snapshot()

    def load(credential: Path) -> Any:
        device_id = f"ACME-TOKST-{os.urandom(3).hex()}"
        return _ztpki(
            d, softhsm, "factory", "load", "--device", str(tmp_path / device_id),
            "--device-id", device_id, "--ca", d.services["factory"].address,
            "--client-cred", str(credential), "--ca-name", "factory",
        )  # fmt: skip

    where = softhsm.token_dir(label)
    away = softhsm.root / f"away-{label}"
    os.rename(where, away)
    try:
        without = load(copied)
    finally:
        os.rename(away, where)
    without_said = _refused(without, "is not reachable")
    (copied / "key.toml").write_text((creds["b"] / "key.toml").read_text())
    redirected = load(copied)
    redirected_said = _refused(redirected, "does not belong to the first certificate")
    attack_report.record(
        case="keys/token-station-credential",
        category=CATEGORY,
        attack="a copy of a loading station's credential (key in a token) used without the "
        "token; and its key.toml pointed at another station's key in the same token",
        observed=f"refused before connecting (without the token: {without_said}; "
        f"redirected: {redirected_said}); "
        + d.check_unchanged(before, unaudited_because="nothing reached a CA system"),
        verdict="refused",
    )
