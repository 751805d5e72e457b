"""The loading station and the device's first CA-client, against an in-memory CA.

Every failure must name the device and leave its directory exactly as it was.
"""

from __future__ import annotations

import asyncio
import errno
import json
from pathlib import Path

import pytest
from device_snapshot import snapshot
from factory_pki import NOW, factory_pki, root_ca, sub_ca
from fake_ca import FakeCA, foreign_key, issue_answer, swap_certificate

from ztpki.device import DeviceMemory, Phase
from ztpki.device import memory as memory_module
from ztpki.errors import (
    ConfigurationError,
    DeviceMemoryError,
    NotAuthorized,
    Unavailable,
    VerificationFailed,
)
from ztpki.factory.configuration import REQUEST_SIGNAL, CAClientConfig
from ztpki.factory.first_client import FirstCAClient, name_device
from ztpki.factory.station import LoadingStation
from ztpki.pki.keys import KeySpec
from ztpki.pki.names import device_id_of

PKI = factory_pki()


def station(ca: FakeCA, tmp_path: Path, **kw) -> LoadingStation:
    kw.setdefault("trust", PKI.anchors)
    return LoadingStation(
        ca=CAClientConfig("127.0.0.1:7443", tmp_path / "cred", None, kw.pop("params", ())),
        client=ca,  # type: ignore[arg-type]
        clock=lambda: NOW,
        **kw,
    )


def load(st: LoadingStation, path: Path, device_id: str = "ACME-1", **kw):
    return asyncio.run(st.load(path, device_id, **kw))


def test_ok_load_blank_device(tmp_path: Path) -> None:
    ca = FakeCA(PKI)
    accepted = load(
        station(ca, tmp_path, model="M1", batch="B1", params=("key=ec-p384",)), tmp_path / "d"
    )
    memory = DeviceMemory.open(tmp_path / "d")
    identity = memory.identity()
    assert identity.phase is Phase.TEMPORARY
    assert identity.certificate == accepted.certificate
    assert device_id_of(identity.certificate) == "ACME-1"
    assert identity.ca_certificates == PKI.factory.chain
    assert memory.trust_anchors() == list(PKI.anchors)
    config = memory.config()
    assert REQUEST_SIGNAL not in config  # the device consumed the signal
    assert config["model"] == "M1" and config["batch"] == "B1"
    assert config["ca_address"] == "127.0.0.1:7443"
    assert config["request_parameters"] == ["key=ec-p384"]
    request = ca.requests[0]
    assert request.device_id == "ACME-1" and request.parameters.key_algorithm is KeySpec.EC_P384
    assert not request.reissue


def test_ok_trust_taken_from_answer_root(tmp_path: Path) -> None:
    load(station(FakeCA(PKI), tmp_path, trust=()), tmp_path / "d")
    assert DeviceMemory.open(tmp_path / "d").trust_anchors() == [PKI.root.certificate]


def test_ok_existing_blank_device_keeps_its_secret(tmp_path: Path) -> None:
    DeviceMemory.create(tmp_path / "d", device_id="ACME-1")
    secret = (tmp_path / "d" / "secret").read_bytes()
    load(station(FakeCA(PKI), tmp_path), tmp_path / "d")
    assert (tmp_path / "d" / "secret").read_bytes() == secret
    assert DeviceMemory.open(tmp_path / "d").phase is Phase.TEMPORARY


def test_second_load_refused_unless_reissue(tmp_path: Path) -> None:
    ca = FakeCA(PKI)
    st = station(ca, tmp_path)
    first = load(st, tmp_path / "d")
    before = snapshot(tmp_path / "d")
    with pytest.raises(ConfigurationError, match=r"^device ACME-1: .*already holds a temporary"):
        load(st, tmp_path / "d")
    assert snapshot(tmp_path / "d") == before
    assert len(ca.requests) == 1  # refused locally, nothing asked of the CA
    second = load(st, tmp_path / "d", reissue=True)
    assert ca.requests[-1].reissue
    assert second.certificate != first.certificate
    assert DeviceMemory.open(tmp_path / "d").identity().generation == 2


# --- failures leave the device exactly as it was -------------------------------------------------


@pytest.mark.parametrize(
    ("make_ca", "error", "match"),
    [
        pytest.param(
            lambda: FakeCA(PKI, fail={"ACME-1": Unavailable("cannot reach CA system 127.0.0.1:1")}),
            Unavailable,
            "cannot reach",
            id="fail-unreachable-ca",
        ),
        pytest.param(
            lambda: FakeCA(PKI, fail={"ACME-1": NotAuthorized("CA system refused: not allowed")}),
            NotAuthorized,
            "not allowed",
            id="fail-refusing-ca",
        ),
        pytest.param(
            lambda: FakeCA(PKI, tamper=swap_certificate(PKI, name="ACME-2")),
            VerificationFailed,
            "names 'ACME-2'",
            id="fail-answer-for-another-device",
        ),
        pytest.param(
            lambda: FakeCA(PKI, tamper=foreign_key),
            VerificationFailed,
            "does not match",
            id="fail-answer-key-mismatch",
        ),
        pytest.param(
            lambda: FakeCA(
                PKI,
                tamper=lambda a, r: issue_answer(sub_ca(root_ca("Rogue"), "Rogue CA"), r),
            ),
            VerificationFailed,
            "does not chain",
            id="fail-answer-from-untrusted-ca",
        ),
    ],
)
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "existing"])
def test_fail_leaves_device_as_it_was(
    tmp_path: Path, make_ca, error: type[Exception], match: str, existing: bool
) -> None:
    path = tmp_path / "d"
    if existing:
        memory = DeviceMemory.create(path, device_id="ACME-1")
        memory.update_config(installer="kept", ca_address="10.0.0.1:1")
    before = snapshot(path)
    with pytest.raises(error, match=rf"^device ACME-1: .*{match}"):
        load(station(make_ca(), tmp_path), path)
    assert snapshot(path) == before


def test_fail_existing_empty_directory_stays_empty(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o700)
    ca = FakeCA(PKI, fail={"ACME-1": Unavailable("down")})
    with pytest.raises(Unavailable):
        load(station(ca, tmp_path), tmp_path / "d")
    assert list((tmp_path / "d").iterdir()) == []


def test_fail_full_disk_while_storing_identity(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "d"
    DeviceMemory.create(path, device_id="ACME-1")
    before = snapshot(path)
    real = memory_module.write_atomic

    def full_disk(target: Path, data: bytes, **kw) -> None:
        if target.name == "identity.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(target, data, **kw)

    monkeypatch.setattr(memory_module, "write_atomic", full_disk)
    with pytest.raises(DeviceMemoryError, match=r"^device ACME-1: .*No space left on device"):
        load(station(FakeCA(PKI), tmp_path), path)
    monkeypatch.undo()
    assert snapshot(path) == before
    assert DeviceMemory.open(path).phase is Phase.BLANK


def test_fail_corrupt_device_directory(tmp_path: Path) -> None:
    path = tmp_path / "d"
    DeviceMemory.create(path, device_id="ACME-1")
    (path / "config.json").write_bytes(b"{not json")
    before = snapshot(path)
    ca = FakeCA(PKI)
    with pytest.raises(DeviceMemoryError, match=r"^device ACME-1: .*config.json is not valid JSON"):
        load(station(ca, tmp_path), path)
    assert snapshot(path) == before
    assert ca.requests == []


def test_fail_directory_of_another_device(tmp_path: Path) -> None:
    DeviceMemory.create(tmp_path / "d", device_id="OTHER-9")
    before = snapshot(tmp_path / "d")
    with pytest.raises(ConfigurationError, match="holds device OTHER-9"):
        load(station(FakeCA(PKI), tmp_path), tmp_path / "d")
    assert snapshot(tmp_path / "d") == before


def test_fail_invalid_device_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="device id"):
        load(station(FakeCA(PKI), tmp_path), tmp_path / "d", device_id="bad id")
    assert not (tmp_path / "d").exists()


# --- the first CA-client on its own -------------------------------------------------------------


def test_first_client_needs_the_signal(tmp_path: Path) -> None:
    memory = DeviceMemory.create(tmp_path / "d", device_id="ACME-1")
    client = FirstCAClient(memory, client_passphrase=None, client=FakeCA(PKI), clock=lambda: NOW)
    assert not client.signalled()
    with pytest.raises(ConfigurationError, match="not signalled"):
        asyncio.run(client.respond())
    memory.update_config(request_signal="sig1")
    with pytest.raises(ConfigurationError, match="no CA-client configuration"):
        asyncio.run(client.respond())
    memory.update_config(**CAClientConfig("127.0.0.1:1", tmp_path).to_config())
    assert client.signalled()
    accepted = asyncio.run(client.respond())
    assert accepted.device_id == "ACME-1"
    assert memory.phase is Phase.TEMPORARY and not client.signalled()


def test_name_device_keeps_the_error_kind() -> None:
    from ztpki.store.records import AlreadyIssued

    named = name_device("D1", AlreadyIssued(ca_name="factory", device_id="D2", serial="ab"))
    assert type(named) is NotAuthorized and named.message.startswith("device D1: device D2 already")
    own = AlreadyIssued(ca_name="factory", device_id="D1", serial="ab")
    assert name_device("D1", own) is own  # already names the device
    assert name_device("D10", own).message.startswith("device D10: device D1 ")
    unavailable = name_device("D1", Unavailable("down", retry_after=9))
    assert isinstance(unavailable, Unavailable) and unavailable.retry_after == 9
    same = name_device("D1", ConfigurationError("device D1: x"))
    assert same.message == "device D1: x"


def test_config_file_is_json(tmp_path: Path) -> None:
    load(station(FakeCA(PKI), tmp_path), tmp_path / "d")
    assert json.loads((tmp_path / "d" / "config.json").read_text())["ca_address"]
