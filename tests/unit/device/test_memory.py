"""The device memory (93): layout, modes, encryption at rest, validation on load, config, export."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from tests.support.pem_markers import ENCRYPTED_KEY_HEADER, PLAIN_KEY_HEADER

from ztpki.device import (
    DeviceMemory,
    EnvSecretProvider,
    FileSecretProvider,
    Identity,
    Phase,
    SecretProvider,
)
from ztpki.errors import ConfigurationError, DeviceMemoryError
from ztpki.pki.keys import PrivateKey, encode_pkcs8_pem, keys_match
from ztpki.pki.pem import certificate_pem, fingerprint_sha256, load_certificates_pem


def issue(cn: str, *, key: PrivateKey | None = None) -> tuple[PrivateKey, x509.Certificate]:
    """A key (fresh P-256 unless given) and a self-signed certificate for it."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )
    return key, cert


def fingerprints(certs: Any) -> list[str]:
    return [fingerprint_sha256(c) for c in certs]


def tmp_names(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A permissive umask, so the modes the memory sets are proven not to come from it."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def device_dir(tmp_path: Path) -> Path:
    return tmp_path / "device"


@pytest.fixture
def memory(device_dir: Path) -> DeviceMemory:
    return DeviceMemory.create(device_dir, device_id="SN-0001")


@pytest.fixture
def temporary(memory: DeviceMemory) -> tuple[PrivateKey, x509.Certificate, x509.Certificate]:
    key, cert = issue("SN-0001")
    _, ca = issue("factory CA")
    memory.replace_identity(
        phase=Phase.TEMPORARY, private_key=key, certificate=cert, ca_certificates=[ca]
    )
    return key, cert, ca


# -- create and open ----------------------------------------------------------------------


@pytest.mark.usefixtures("open_umask")
def test_ok_create_makes_a_blank_device_with_private_modes(device_dir: Path) -> None:
    memory = DeviceMemory.create(device_dir, device_id="SN-0001")
    assert memory.path == device_dir
    assert memory.device_id == "SN-0001"
    assert memory.phase is Phase.BLANK
    assert memory.identity() == Identity(Phase.BLANK, 0)
    assert memory.config() == {}
    assert memory.trust_anchors() == []
    assert stat.S_IMODE(device_dir.stat().st_mode) == 0o700
    names = sorted(p.name for p in device_dir.iterdir())
    assert names == ["config.json", "device.json", "identity.json", "lock", "secret", "trust.pem"]
    for path in device_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert len((device_dir / "secret").read_bytes()) == 32


@pytest.mark.usefixtures("open_umask")
def test_ok_files_written_later_are_0600(
    memory: DeviceMemory, temporary: Any, device_dir: Path
) -> None:
    memory.update_config(customer_node="https://node.test")
    memory.set_trust_anchors([temporary[2]])
    for path in device_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_ok_create_in_an_existing_empty_directory_tightens_its_mode(device_dir: Path) -> None:
    device_dir.mkdir(mode=0o755)
    os.chmod(device_dir, 0o755)
    DeviceMemory.create(device_dir, device_id="SN-0001")
    assert stat.S_IMODE(device_dir.stat().st_mode) == 0o700


def test_fail_create_refuses_a_non_empty_directory(device_dir: Path) -> None:
    device_dir.mkdir()
    (device_dir / "something").write_text("x")
    with pytest.raises(DeviceMemoryError, match="not an empty directory") as caught:
        DeviceMemory.create(device_dir, device_id="SN-0001")
    assert str(device_dir) in str(caught.value)
    assert sorted(p.name for p in device_dir.iterdir()) == ["something"]


def test_fail_create_refuses_an_existing_device(memory: DeviceMemory, device_dir: Path) -> None:
    with pytest.raises(DeviceMemoryError):
        DeviceMemory.create(device_dir, device_id="SN-0002")
    assert DeviceMemory.open(device_dir).device_id == "SN-0001"


def test_fail_create_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DeviceMemoryError):
        DeviceMemory.create(tmp_path / "file", device_id="SN-0001")


@pytest.mark.parametrize(
    ("device_id", "error"),
    [
        pytest.param("", ValueError, id="fail-empty"),
        pytest.param("SN\n1", ValueError, id="fail-newline"),
        pytest.param("x" * 257, ValueError, id="fail-too-long"),
        pytest.param(17, TypeError, id="fail-not-str"),
    ],
)
def test_fail_create_checks_the_device_id(device_dir: Path, device_id: Any, error: type) -> None:
    with pytest.raises(error):
        DeviceMemory.create(device_dir, device_id=device_id)
    assert not device_dir.exists()


def test_ok_open_finds_the_device(memory: DeviceMemory, device_dir: Path) -> None:
    opened = DeviceMemory.open(device_dir)
    assert opened.device_id == "SN-0001"
    assert "SN-0001" in repr(opened)
    assert opened.identity() == Identity(Phase.BLANK, 0)


def _empty_dir(path: Path) -> None:
    path.mkdir(mode=0o700)


def _file(path: Path) -> None:
    path.write_text("x")


def _bad_device_json(path: Path) -> None:
    DeviceMemory.create(path, device_id="SN-0001")
    (path / "device.json").write_text('{"format": 1}')


def _corrupt_device_json(path: Path) -> None:
    DeviceMemory.create(path, device_id="SN-0001")
    (path / "device.json").write_text("{")


def _open_to_others(path: Path) -> None:
    DeviceMemory.create(path, device_id="SN-0001")
    os.chmod(path, 0o755)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda p: None, "No such file", id="fail-missing"),
        pytest.param(_file, "not a directory", id="fail-file"),
        pytest.param(_empty_dir, "device.json is missing", id="fail-empty-dir"),
        pytest.param(_bad_device_json, "not a format 1 device record", id="fail-no-device-id"),
        pytest.param(_corrupt_device_json, "not valid JSON", id="fail-corrupt-device-json"),
        pytest.param(_open_to_others, "chmod 700", id="fail-mode-0755"),
    ],
)
def test_fail_open_refuses_what_is_not_a_device(
    device_dir: Path, make: Callable[[Path], None], reason: str
) -> None:
    make(device_dir)
    with pytest.raises(DeviceMemoryError, match=reason) as caught:
        DeviceMemory.open(device_dir)
    assert str(device_dir) in str(caught.value)


def test_ok_open_removes_stale_temporary_files(
    memory: DeviceMemory, temporary: Any, device_dir: Path
) -> None:
    (device_dir / "identity.json.7.tmp").write_bytes(b'{"half a')
    (device_dir / "config.json.tmp").write_bytes(b"")
    DeviceMemory.open(device_dir).identity()
    assert tmp_names(device_dir) == []
    # Control: a file that is not a temporary is left alone.
    assert (device_dir / "identity.json").exists()


# -- identity -----------------------------------------------------------------------------


def test_ok_replace_identity_goes_blank_temporary_customized(
    memory: DeviceMemory, device_dir: Path
) -> None:
    temp_key, temp_cert = issue("SN-0001")
    _, factory_ca = issue("factory CA")
    first = memory.replace_identity(
        phase=Phase.TEMPORARY,
        private_key=temp_key,
        certificate=temp_cert,
        ca_certificates=[factory_ca],
    )
    assert (first.phase, first.generation) == (Phase.TEMPORARY, 1)
    assert memory.phase is Phase.TEMPORARY

    key, cert = issue("SN-0001 operational")
    _, root = issue("customer root")
    _, sub = issue("customer issuing CA")
    second = memory.replace_identity(
        phase=Phase.CUSTOMIZED, private_key=key, certificate=cert, ca_certificates=(sub, root)
    )
    assert (second.phase, second.generation) == (Phase.CUSTOMIZED, 2)

    loaded = DeviceMemory.open(device_dir).identity()
    assert (loaded.phase, loaded.generation) == (Phase.CUSTOMIZED, 2)
    assert loaded.certificate == cert
    assert fingerprints(loaded.ca_certificates) == fingerprints([sub, root])
    assert loaded.private_key is not None
    assert keys_match(loaded.private_key, cert.public_key())
    assert loaded.certificate == second.certificate


@pytest.mark.parametrize(
    "make_key",
    [
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="ok-ec-p384"),
        pytest.param(ed25519.Ed25519PrivateKey.generate, id="ok-ed25519"),
    ],
)
def test_ok_other_key_types_round_trip(
    memory: DeviceMemory, make_key: Callable[[], PrivateKey]
) -> None:
    key, cert = issue("SN-0001", key=make_key())
    memory.replace_identity(
        phase=Phase.TEMPORARY, private_key=key, certificate=cert, ca_certificates=[]
    )
    loaded = memory.identity()
    assert loaded.private_key is not None
    assert keys_match(loaded.private_key, cert.public_key())
    assert loaded.ca_certificates == ()


def test_ok_key_on_disk_is_encrypted_pkcs8(
    memory: DeviceMemory, temporary: Any, device_dir: Path
) -> None:
    on_disk = (device_dir / "identity.json").read_text()
    assert "BEGIN ENCRYPTED PRIVATE KEY" in on_disk
    assert "BEGIN PRIVATE KEY" not in on_disk
    pem = json.loads(on_disk)["private_key"].encode()
    with pytest.raises(TypeError, match="encrypted"):
        serialization.load_pem_private_key(pem, password=None)
    # Control: the device secret opens it, and it is the key that was stored.
    secret = (device_dir / "secret").read_bytes()
    stored = serialization.load_pem_private_key(pem, password=secret)
    assert keys_match(stored, temporary[1].public_key())  # type: ignore[arg-type]


def test_ok_identity_repr_hides_the_key(memory: DeviceMemory, temporary: Any) -> None:
    text = repr(memory.identity())
    assert "private_key" not in text
    assert "temporary" in text


def test_fail_replace_with_a_key_of_another_certificate(
    memory: DeviceMemory, temporary: Any
) -> None:
    other_key, _ = issue("other")
    _, cert = issue("SN-0001 operational")
    with pytest.raises(DeviceMemoryError, match="does not belong") as caught:
        memory.replace_identity(
            phase=Phase.CUSTOMIZED, private_key=other_key, certificate=cert, ca_certificates=[]
        )
    assert str(memory.path) in str(caught.value)
    assert memory.identity().certificate == temporary[1]
    assert memory.identity().generation == 1


def test_fail_replace_never_goes_back_from_customized(memory: DeviceMemory, temporary: Any) -> None:
    key, cert = issue("SN-0001 operational")
    memory.replace_identity(
        phase=Phase.CUSTOMIZED, private_key=key, certificate=cert, ca_certificates=[]
    )
    # Control: renewal within the same phase is allowed.
    renewed_key, renewed = issue("SN-0001 renewed")
    memory.replace_identity(
        phase=Phase.CUSTOMIZED, private_key=renewed_key, certificate=renewed, ca_certificates=[]
    )
    assert memory.identity().generation == 3
    temp_key, temp_cert = issue("SN-0001 again")
    with pytest.raises(DeviceMemoryError, match="back to a temporary"):
        memory.replace_identity(
            phase=Phase.TEMPORARY, private_key=temp_key, certificate=temp_cert, ca_certificates=[]
        )
    assert memory.identity().certificate == renewed


def test_fail_replace_with_blank(memory: DeviceMemory) -> None:
    key, cert = issue("SN-0001")
    with pytest.raises(ValueError, match="blank"):
        memory.replace_identity(
            phase=Phase.BLANK, private_key=key, certificate=cert, ca_certificates=[]
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"phase": Phase.BLANK, "generation": -1}, id="fail-negative-generation"),
        pytest.param({"phase": Phase.TEMPORARY, "generation": 1}, id="fail-temporary-no-key"),
        pytest.param({"phase": "elder", "generation": 1}, id="fail-unknown-phase"),
        pytest.param({"phase": Phase.BLANK, "generation": True}, id="fail-bool-generation"),
    ],
)
def test_fail_identity_value_is_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError)):
        Identity(**kwargs)


# -- validation on load ---------------------------------------------------------------------


def _edit(field: str, value: Any) -> Callable[[dict[str, Any], DeviceMemory], None]:
    def edit(record: dict[str, Any], _memory: DeviceMemory) -> None:
        if value is KeyError:
            del record[field]
        else:
            record[field] = value

    return edit


def _key_of_another_pair(record: dict[str, Any], memory: DeviceMemory) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    secret = FileSecretProvider(memory.path / "secret").secret()
    record["private_key"] = encode_pkcs8_pem(other, passphrase=secret).decode()


def _blank_with_key(record: dict[str, Any], _memory: DeviceMemory) -> None:
    record["phase"] = "blank"


def _two_certificates(record: dict[str, Any], _memory: DeviceMemory) -> None:
    record["certificate"] = record["certificate"] + record["ca_certificates"]


def _clear_key(record: dict[str, Any], memory: DeviceMemory) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    record["private_key"] = encode_pkcs8_pem(other, passphrase=None).decode()


GARBAGE_PEM = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        pytest.param(_edit("phase", "elder"), "invalid phase", id="fail-unknown-phase"),
        pytest.param(_edit("generation", -1), "invalid generation", id="fail-negative-gen"),
        pytest.param(_edit("generation", "1"), "invalid generation", id="fail-string-gen"),
        pytest.param(_edit("format", 2), "not format 1", id="fail-future-format"),
        pytest.param(_edit("certificate", KeyError), "lacks the field", id="fail-no-cert-field"),
        pytest.param(_edit("phase", KeyError), "lacks the field", id="fail-no-phase-field"),
        pytest.param(_edit("private_key", None), "lacks a key", id="fail-temporary-no-key"),
        pytest.param(_edit("private_key", 5), "invalid private_key", id="fail-key-not-text"),
        pytest.param(_edit("certificate", GARBAGE_PEM), "not valid PEM", id="fail-cert-garbage"),
        pytest.param(_edit("certificate", "junk"), "not valid PEM", id="fail-cert-not-pem"),
        pytest.param(_edit("ca_certificates", GARBAGE_PEM), "not valid PEM", id="fail-ca-garbage"),
        pytest.param(_edit("private_key", "junk"), "does not decrypt", id="fail-key-garbage"),
        pytest.param(_clear_key, "does not decrypt", id="fail-key-in-clear"),
        pytest.param(_key_of_another_pair, "does not match", id="fail-key-mismatch"),
        pytest.param(_blank_with_key, "blank identity holds", id="fail-blank-with-key"),
        pytest.param(_two_certificates, "one certificate", id="fail-two-certificates"),
    ],
)
def test_fail_corrupt_identity_is_refused_naming_the_device(
    memory: DeviceMemory,
    temporary: Any,
    device_dir: Path,
    edit: Callable[[dict[str, Any], DeviceMemory], None],
    reason: str,
) -> None:
    path = device_dir / "identity.json"
    record = json.loads(path.read_text())
    edit(record, memory)
    path.write_text(json.dumps(record))
    with pytest.raises(DeviceMemoryError, match=reason) as caught:
        DeviceMemory.open(device_dir).identity()
    assert str(device_dir) in str(caught.value)
    assert "PRIVATE KEY" not in str(caught.value)


def test_ok_untouched_identity_loads(
    memory: DeviceMemory, temporary: Any, device_dir: Path
) -> None:
    """Control for the corruption cases: the same JSON rewritten unchanged still loads."""
    path = device_dir / "identity.json"
    path.write_text(json.dumps(json.loads(path.read_text())))
    assert DeviceMemory.open(device_dir).identity().certificate == temporary[1]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"{", id="fail-truncated"),
        pytest.param(b"", id="fail-empty"),
        pytest.param(b"[]", id="fail-not-object"),
        pytest.param(b"\xff\xfe", id="fail-not-utf8"),
    ],
)
def test_fail_unparsable_identity_file(
    memory: DeviceMemory, device_dir: Path, content: bytes
) -> None:
    (device_dir / "identity.json").write_bytes(content)
    with pytest.raises(DeviceMemoryError) as caught:
        memory.identity()
    assert str(device_dir) in str(caught.value)
    with pytest.raises(DeviceMemoryError):
        _ = memory.phase


def test_fail_missing_identity_file(memory: DeviceMemory, device_dir: Path) -> None:
    (device_dir / "identity.json").unlink()
    with pytest.raises(DeviceMemoryError, match=r"cannot read identity\.json"):
        memory.identity()


# -- secrets --------------------------------------------------------------------------------


def test_fail_wrong_secret_does_not_leak(
    memory: DeviceMemory, temporary: Any, device_dir: Path
) -> None:
    right = (device_dir / "secret").read_bytes()
    wrong = os.urandom(32)
    (device_dir / "secret").write_bytes(wrong)
    with pytest.raises(DeviceMemoryError, match="does not decrypt") as caught:
        DeviceMemory.open(device_dir).identity()
    message = str(caught.value)
    assert str(device_dir) in message
    for secret in (right, wrong):
        assert secret.hex() not in message
        assert repr(secret)[2:-1] not in message
    # Control: the right secret opens it again.
    (device_dir / "secret").write_bytes(right)
    assert DeviceMemory.open(device_dir).identity().certificate == temporary[1]


def test_ok_env_secret_provider(
    tmp_path: Path, device_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZTPKI_TEST_SECRET", "correct horse battery staple")
    provider = EnvSecretProvider("ZTPKI_TEST_SECRET")
    assert isinstance(provider, SecretProvider)
    memory = DeviceMemory.create(device_dir, device_id="SN-0001", secrets=provider)
    assert not (device_dir / "secret").exists()
    key, cert = issue("SN-0001")
    memory.replace_identity(
        phase=Phase.TEMPORARY, private_key=key, certificate=cert, ca_certificates=[]
    )
    assert DeviceMemory.open(device_dir, secrets=provider).identity().certificate == cert

    monkeypatch.setenv("ZTPKI_TEST_SECRET", "incorrect horse battery staple")
    with pytest.raises(DeviceMemoryError, match="does not decrypt") as caught:
        DeviceMemory.open(device_dir, secrets=provider).identity()
    assert "horse" not in str(caught.value)

    monkeypatch.delenv("ZTPKI_TEST_SECRET")
    with pytest.raises(DeviceMemoryError, match="ZTPKI_TEST_SECRET holding the secret is unset"):
        DeviceMemory.open(device_dir, secrets=provider).identity()


def test_ok_secret_file_outside_the_device(tmp_path: Path, device_dir: Path) -> None:
    outside = tmp_path / "root-only"
    outside.mkdir(mode=0o700)
    provider = FileSecretProvider(outside / "device.secret")
    memory = DeviceMemory.create(device_dir, device_id="SN-0001", secrets=provider)
    assert not (device_dir / "secret").exists()
    assert len((outside / "device.secret").read_bytes()) == 32
    assert stat.S_IMODE((outside / "device.secret").stat().st_mode) == 0o600
    key, cert = issue("SN-0001")
    memory.replace_identity(
        phase=Phase.TEMPORARY, private_key=key, certificate=cert, ca_certificates=[]
    )
    assert DeviceMemory.open(device_dir, secrets=provider).identity().certificate == cert
    # Negative control: without the provider the device's default secret file is missing.
    with pytest.raises(DeviceMemoryError, match=r"secret file .* is missing"):
        DeviceMemory.open(device_dir).identity()


def test_fail_secret_file_readable_by_others(
    memory: DeviceMemory, temporary: Any, device_dir: Path
) -> None:
    os.chmod(device_dir / "secret", 0o644)
    with pytest.raises(DeviceMemoryError, match="chmod 600"):
        memory.identity()


def test_fail_secret_file_too_short(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"short")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigurationError, match="fewer than 16 bytes"):
        FileSecretProvider(path).secret()


def test_fail_secret_file_is_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    FileSecretProvider(target).generate()
    (tmp_path / "link").symlink_to(target)
    assert len(FileSecretProvider(target).secret()) == 32  # control
    with pytest.raises(ConfigurationError, match="cannot read"):
        FileSecretProvider(tmp_path / "link").secret()


def test_fail_secret_is_never_overwritten(tmp_path: Path) -> None:
    provider = FileSecretProvider(tmp_path / "secret")
    provider.generate()
    first = provider.secret()
    with pytest.raises(ConfigurationError, match="never overwritten"):
        provider.generate()
    assert provider.secret() == first


def test_fail_env_secret_too_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZTPKI_TEST_SECRET", "short")
    with pytest.raises(ConfigurationError, match="fewer than 16 bytes"):
        EnvSecretProvider("ZTPKI_TEST_SECRET").secret()


# -- configuration ------------------------------------------------------------------------


def test_ok_update_config_sets_and_deletes(memory: DeviceMemory, device_dir: Path) -> None:
    result = memory.update_config(
        factory_ca="ca.factory.test:7001",
        ca_client_credential="/etc/ztpki/ca-client.pem",
        key_algorithm="ec-p256",
        validity_days=30,
        encrypt_key=True,
        names=("a", "b"),
    )
    assert result["names"] == ["a", "b"]
    assert memory.update_config(customer_node="https://node.test:8443", validity_days=None) == {
        "factory_ca": "ca.factory.test:7001",
        "ca_client_credential": "/etc/ztpki/ca-client.pem",
        "key_algorithm": "ec-p256",
        "encrypt_key": True,
        "names": ["a", "b"],
        "customer_node": "https://node.test:8443",
    }
    reopened = DeviceMemory.open(device_dir).config()
    assert "validity_days" not in reopened
    assert reopened["customer_node"] == "https://node.test:8443"
    assert memory.update_config(missing=None) == reopened  # deleting an absent key is a no-op


@pytest.mark.parametrize(
    ("value", "error"),
    [
        pytest.param({"nested": 1}, TypeError, id="fail-dict"),
        pytest.param(b"bytes", TypeError, id="fail-bytes"),
        pytest.param([["nested"]], TypeError, id="fail-nested-list"),
        pytest.param(float("nan"), ValueError, id="fail-nan"),
        pytest.param(Path("/x"), TypeError, id="fail-path"),
    ],
)
def test_fail_config_values_must_be_simple(memory: DeviceMemory, value: Any, error: type) -> None:
    memory.update_config(kept="yes")
    with pytest.raises(error):
        memory.update_config(kept="changed", bad=value)
    assert memory.config() == {"kept": "yes"}


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"{", id="fail-truncated"),
        pytest.param(b'["a"]', id="fail-not-object"),
        pytest.param(b'{"a": {"b": 1}}', id="fail-nested"),
    ],
)
def test_fail_corrupt_config(memory: DeviceMemory, device_dir: Path, content: bytes) -> None:
    (device_dir / "config.json").write_bytes(content)
    with pytest.raises(DeviceMemoryError, match=r"config\.json") as caught:
        memory.config()
    assert str(device_dir) in str(caught.value)
    with pytest.raises(DeviceMemoryError):
        memory.update_config(a="b")


def test_ok_concurrent_config_updates_are_not_lost(memory: DeviceMemory, device_dir: Path) -> None:
    """Writers in separate threads, each with its own DeviceMemory, take turns on the lock."""
    workers = 6
    rounds = 8
    start = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            mine = DeviceMemory.open(device_dir)
            start.wait()
            for r in range(rounds):
                mine.update_config(**{f"w{n}_{r}": r})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(memory.config()) == workers * rounds


# -- trust anchors --------------------------------------------------------------------------


def test_ok_trust_anchors_round_trip(memory: DeviceMemory, device_dir: Path) -> None:
    _, ca1 = issue("factory CA 1")
    _, ca2 = issue("factory CA 2")
    memory.set_trust_anchors([ca1, ca2])
    assert fingerprints(DeviceMemory.open(device_dir).trust_anchors()) == fingerprints([ca1, ca2])
    memory.set_trust_anchors([])
    assert memory.trust_anchors() == []


def test_fail_trust_anchor_must_be_a_certificate(memory: DeviceMemory) -> None:
    _, ca = issue("factory CA")
    with pytest.raises(TypeError):
        memory.set_trust_anchors([ca, certificate_pem(ca)])  # type: ignore[list-item]
    assert memory.trust_anchors() == []


def test_fail_corrupt_trust_anchors(memory: DeviceMemory, device_dir: Path) -> None:
    (device_dir / "trust.pem").write_text(GARBAGE_PEM)
    with pytest.raises(DeviceMemoryError, match=r"trust\.pem") as caught:
        memory.trust_anchors()
    assert str(device_dir) in str(caught.value)


# -- export ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("open_umask")
def test_ok_export_pem_for_openssl_and_curl(
    memory: DeviceMemory, temporary: Any, tmp_path: Path
) -> None:
    _, cert, ca = temporary
    memory.set_trust_anchors([ca])
    out = tmp_path / "export" / "SN-0001"
    paths = memory.export_pem(out)
    assert set(paths) == {"key", "cert", "chain", "trust"}
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for path in paths.values():
        assert path.parent == out
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pem = paths["key"].read_bytes()
    assert pem.startswith(PLAIN_KEY_HEADER)
    exported = serialization.load_pem_private_key(pem, password=None)
    assert keys_match(exported, cert.public_key())  # type: ignore[arg-type]
    assert load_certificates_pem(paths["cert"].read_bytes()) == [cert]
    assert fingerprints(load_certificates_pem(paths["chain"].read_bytes())) == fingerprints([ca])
    assert fingerprints(load_certificates_pem(paths["trust"].read_bytes())) == fingerprints([ca])


def test_ok_export_pem_with_a_passphrase(
    memory: DeviceMemory, temporary: Any, tmp_path: Path
) -> None:
    paths = memory.export_pem(tmp_path / "out", passphrase=b"operator passphrase")
    pem = paths["key"].read_bytes()
    assert pem.startswith(ENCRYPTED_KEY_HEADER)
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(pem, password=None)


def test_fail_export_of_a_blank_device(memory: DeviceMemory, tmp_path: Path) -> None:
    with pytest.raises(DeviceMemoryError, match="no identity yet") as caught:
        memory.export_pem(tmp_path / "out")
    assert str(memory.path) in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_ok_pending_key_is_kept_encrypted_until_cleared(memory: DeviceMemory) -> None:
    assert memory.pending_key() is None
    key, _ = issue("pending")
    memory.save_pending_key(key, made_with="01ab")
    stored = (memory.path / "pending-key.pem").read_bytes()
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in stored
    assert oct((memory.path / "pending-key.pem").stat().st_mode & 0o777) == "0o600"
    loaded = DeviceMemory.open(memory.path).pending_key()
    assert loaded is not None and keys_match(loaded, key.public_key())
    memory.clear_pending_key()
    assert memory.pending_key() is None


def test_fail_corrupt_pending_key_names_the_file(memory: DeviceMemory) -> None:
    (memory.path / "pending-key.pem").write_bytes(b"garbage")
    with pytest.raises(DeviceMemoryError, match=r"pending-key\.pem"):
        memory.pending_key()
