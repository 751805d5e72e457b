"""Crash safety of the device memory: a writer killed at every step, and writes that fail.

Each crash case runs a real writer process (memory_crash_writer.py) that sends itself SIGKILL
at one named step of the atomic write; the test then reopens the memory and requires the
complete old state before the rename and the complete new state from the rename on.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import ztpki
from ztpki.device import atomic
from ztpki.device.memory import DeviceMemory, Identity, Phase
from ztpki.errors import DeviceMemoryError
from ztpki.pki.keys import PrivateKey, encode_pkcs8_pem, keys_match
from ztpki.pki.pem import certificates_pem, fingerprint_sha256

WRITER = Path(__file__).with_name("memory_crash_writer.py")
SRC = Path(ztpki.__file__).resolve().parent.parent
BUNDLE_PASSPHRASE = b"crash-test-bundle"  # same as memory_crash_writer.BUNDLE_PASSPHRASE
NEW_NODE_ADDRESS = "https://node.customer.test:8443"
OLD_NODE_ADDRESS = "https://node.factory.test:8443"


def issue(cn: str) -> tuple[PrivateKey, x509.Certificate]:
    """A fresh P-256 key and a self-signed certificate for it."""
    key = ec.generate_private_key(ec.SECP256R1())
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
        .sign(key, hashes.SHA256())
    )
    return key, cert


class Scene:
    """A device with a temporary identity, a config and trust anchors, and a new identity."""

    def __init__(self, root: Path) -> None:
        self.device_dir = root / "device"
        self.old_key, self.old_cert = issue("device-1 temporary")
        _, self.old_ca = issue("factory CA")
        self.new_key, self.new_cert = issue("device-1 customized")
        _, self.new_ca = issue("customer CA")
        memory = DeviceMemory.create(self.device_dir, device_id="device-1")
        memory.replace_identity(
            phase=Phase.TEMPORARY,
            private_key=self.old_key,
            certificate=self.old_cert,
            ca_certificates=[self.old_ca],
        )
        memory.update_config(customer_node=OLD_NODE_ADDRESS, factory_ca="ca.factory.test:7001")
        memory.set_trust_anchors([self.old_ca])
        self.bundle = root / "bundle.pem"
        self.bundle.write_bytes(
            encode_pkcs8_pem(self.new_key, passphrase=BUNDLE_PASSPHRASE)
            + certificates_pem([self.new_cert, self.new_ca])
        )

    def run_writer(self, operation: str, step: str) -> subprocess.CompletedProcess[bytes]:
        env = dict(os.environ, PYTHONPATH=str(SRC))
        args = [sys.executable, str(WRITER), operation, str(self.device_dir), step]
        return subprocess.run(
            [*args, str(self.bundle)], env=env, capture_output=True, timeout=120, check=False
        )

    def assert_identity(self, identity: Identity, *, new: bool) -> None:
        assert identity.private_key is not None and identity.certificate is not None
        assert keys_match(identity.private_key, identity.certificate.public_key())
        cert, ca = (self.new_cert, self.new_ca) if new else (self.old_cert, self.old_ca)
        expected = (Phase.CUSTOMIZED, 2) if new else (Phase.TEMPORARY, 1)
        assert (identity.phase, identity.generation) == expected
        assert fingerprint_sha256(identity.certificate) == fingerprint_sha256(cert)
        assert [fingerprint_sha256(c) for c in identity.ca_certificates] == [fingerprint_sha256(ca)]


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    return Scene(tmp_path)


def _check_identity(scene: Scene, memory: DeviceMemory, *, new: bool) -> None:
    scene.assert_identity(memory.identity(), new=new)


def _check_config(scene: Scene, memory: DeviceMemory, *, new: bool) -> None:
    assert memory.config() == {
        "customer_node": NEW_NODE_ADDRESS if new else OLD_NODE_ADDRESS,
        "factory_ca": "ca.factory.test:7001",
    }


def _check_trust(scene: Scene, memory: DeviceMemory, *, new: bool) -> None:
    expected = scene.new_ca if new else scene.old_ca
    assert [fingerprint_sha256(c) for c in memory.trust_anchors()] == [fingerprint_sha256(expected)]


CHECKS: dict[str, Callable[..., None]] = {
    "identity": _check_identity,
    "config": _check_config,
    "trust": _check_trust,
}
NEW_FROM = atomic.STEPS.index("renamed")


@pytest.mark.parametrize("operation", sorted(CHECKS))
@pytest.mark.parametrize(
    "step",
    [
        pytest.param(step, id=f"{'ok-new' if i >= NEW_FROM else 'ok-old'}-killed-at-{step}")
        for i, step in enumerate(atomic.STEPS)
    ],
)
def test_writer_killed_at_every_step_leaves_old_or_new_whole(
    scene: Scene, operation: str, step: str
) -> None:
    result = scene.run_writer(operation, step)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()

    memory = DeviceMemory.open(scene.device_dir)
    new = atomic.STEPS.index(step) >= NEW_FROM
    CHECKS[operation](scene, memory, new=new)
    # The other two parts of the memory are untouched whatever was being written.
    for other, check in CHECKS.items():
        if other != operation:
            check(scene, memory, new=False)
    assert not [p.name for p in scene.device_dir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("operation", sorted(CHECKS))
def test_writer_not_killed_completes(scene: Scene, operation: str) -> None:
    """Control: the same writer without a kill produces the new state and exits 0."""
    result = scene.run_writer(operation, "no-such-step")
    assert result.returncode == 0, result.stderr.decode()
    CHECKS[operation](scene, DeviceMemory.open(scene.device_dir), new=True)


def test_killed_before_rename_leaves_a_stale_file_that_open_removes(scene: Scene) -> None:
    result = scene.run_writer("identity", "tmp-fsynced")
    assert result.returncode == -signal.SIGKILL
    assert (scene.device_dir / "identity.json.2.tmp").exists()
    DeviceMemory.open(scene.device_dir)
    assert not (scene.device_dir / "identity.json.2.tmp").exists()


# -- writes that fail -------------------------------------------------------------------


def _raise(err: int) -> Callable[..., Any]:
    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError(err, os.strerror(err))

    return fail


def _replace(scene: Scene, memory: DeviceMemory) -> None:
    memory.replace_identity(
        phase=Phase.CUSTOMIZED,
        private_key=scene.new_key,
        certificate=scene.new_cert,
        ca_certificates=[scene.new_ca],
    )


WRITES: dict[str, Callable[[Scene, DeviceMemory], object]] = {
    "identity": _replace,
    "config": lambda scene, memory: memory.update_config(customer_node=NEW_NODE_ADDRESS),
    "trust": lambda scene, memory: memory.set_trust_anchors([scene.new_ca]),
}


@pytest.mark.parametrize("operation", sorted(WRITES))
@pytest.mark.parametrize(
    ("call", "err"),
    [
        pytest.param("write", errno.ENOSPC, id="fail-disk-full"),
        pytest.param("fsync", errno.EIO, id="fail-fsync-eio"),
        pytest.param("replace", errno.EROFS, id="fail-rename-erofs"),
        pytest.param("open", errno.EDQUOT, id="fail-open-quota"),
    ],
)
def test_failed_write_keeps_old_state_and_names_the_device(
    scene: Scene, monkeypatch: pytest.MonkeyPatch, operation: str, call: str, err: int
) -> None:
    memory = DeviceMemory.open(scene.device_dir)
    real_open = os.open

    def open_failing_for_tmp(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(".tmp"):
            raise OSError(err, os.strerror(err))
        return real_open(path, flags, *args, **kwargs)

    with monkeypatch.context() as patch:
        failing = open_failing_for_tmp if call == "open" else _raise(err)
        patch.setattr(os, call, failing)
        with pytest.raises(DeviceMemoryError) as caught:
            WRITES[operation](scene, memory)

    message = str(caught.value)
    assert str(scene.device_dir) in message
    assert os.strerror(err) in message
    assert "previous content is unchanged" in message
    reopened = DeviceMemory.open(scene.device_dir)
    for check in CHECKS.values():
        check(scene, reopened, new=False)
    assert not [p.name for p in scene.device_dir.iterdir() if p.name.endswith(".tmp")]

    # Control: once the disk works again the same write succeeds.
    WRITES[operation](scene, memory)
    CHECKS[operation](scene, DeviceMemory.open(scene.device_dir), new=True)


def test_failed_directory_fsync_reports_that_the_new_state_may_not_be_durable(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = DeviceMemory.open(scene.device_dir)
    monkeypatch.setattr(atomic, "fsync_dir", _raise(errno.EIO))
    with pytest.raises(DeviceMemoryError, match="could not be made durable") as caught:
        _replace(scene, memory)
    assert str(scene.device_dir) in str(caught.value)
    monkeypatch.undo()
    scene.assert_identity(DeviceMemory.open(scene.device_dir).identity(), new=True)


def test_key_mismatch_is_refused_before_anything_is_written(scene: Scene) -> None:
    memory = DeviceMemory.open(scene.device_dir)
    before = sorted(p.name for p in scene.device_dir.iterdir())
    with pytest.raises(DeviceMemoryError, match="does not belong to the certificate"):
        memory.replace_identity(
            phase=Phase.CUSTOMIZED,
            private_key=scene.old_key,
            certificate=scene.new_cert,
            ca_certificates=[scene.new_ca],
        )
    assert sorted(p.name for p in scene.device_dir.iterdir()) == before
    scene.assert_identity(memory.identity(), new=False)
