"""TLS contexts from in-memory credentials: the key is loaded without touching a disk where
the kernel has anonymous memory files, and through an encrypted temporary file elsewhere."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from tests.support.pem_markers import ENCRYPTED_KEY_HEADER

from ztpki import credentials
from ztpki.credentials import client_context, server_context
from ztpki.errors import ConfigurationError
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, PrivateKey, generate_private_key
from ztpki.pki.profiles import CertificateProfile

NOW = datetime.now(UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pki() -> tuple[
    x509.Certificate, tuple[PrivateKey, x509.Certificate], tuple[PrivateKey, x509.Certificate]
]:
    ca_key = generate_private_key(KeySpec.EC_P256)
    ca_cert = create_self_signed_ca(ca_key, _name("ca"), now=NOW, validity=timedelta(days=2))
    ca = CertificateAuthority(name="ca", key=ca_key, certificate=ca_cert)

    def issue(profile: CertificateProfile) -> tuple[PrivateKey, x509.Certificate]:
        key = generate_private_key(KeySpec.EC_P256)
        grant = IssuanceGrant(
            subject=_name(profile.value),
            profile=profile,
            not_before=NOW - timedelta(minutes=1),
            not_after=NOW + timedelta(days=1),
            ip_addresses=("127.0.0.1",) if profile is CertificateProfile.SERVER else (),
        )
        return key, ca.issue(key.public_key(), grant)

    return ca_cert, issue(CertificateProfile.SERVER), issue(CertificateProfile.DEVICE)


def _mutual_handshake() -> str:
    """Both contexts built from memory, one real mutual-TLS handshake; the client's CN."""
    anchor, (server_key, server_cert), (client_key, client_cert) = _pki()
    server = server_context(server_key, [server_cert], client_anchors=[anchor])
    client = client_context(key=client_key, chain=[client_cert], server_anchors=[anchor])
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with server.wrap_socket(conn, server_side=True) as tls:
            peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
            seen.append(str(peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value))
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with (
        socket.create_connection(listener.getsockname(), timeout=10) as plain,
        client.wrap_socket(plain, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.recv(2) == b"ok"
    thread.join(10)
    listener.close()
    return seen[0]


@pytest.fixture
def key_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What the credentials module writes to private files, in a temporary directory of its own."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    written: list[bytes] = []
    original = credentials.write_private_file

    def recording(path: Path, data: bytes) -> None:
        written.append(data)
        original(path, data)

    monkeypatch.setattr(credentials, "write_private_file", recording)
    return written


def test_ok_key_loaded_from_memory_never_touches_a_disk(
    key_files: list[bytes], tmp_path: Path
) -> None:
    assert _mutual_handshake() == "device"
    assert key_files == []
    assert list(tmp_path.iterdir()) == []


def test_ok_without_memory_files_an_encrypted_temporary_file_serves(
    key_files: list[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "memfd_create")
    assert _mutual_handshake() == "device"
    # The fallback wrote each key encrypted (server and client), and removed it again.
    assert len(key_files) == 2
    assert all(data.startswith(ENCRYPTED_KEY_HEADER) for data in key_files)
    assert list(tmp_path.iterdir()) == []


def test_fail_mismatched_key_is_refused_by_either_path(monkeypatch: pytest.MonkeyPatch) -> None:
    anchor, (server_key, _), (_, client_cert) = _pki()
    with pytest.raises(ssl.SSLError):
        server_context(server_key, [client_cert], client_anchors=[anchor])
    monkeypatch.delattr(os, "memfd_create")
    with pytest.raises(ssl.SSLError):
        server_context(server_key, [client_cert], client_anchors=[anchor])


def test_fail_credential_whose_key_is_not_the_certificates(tmp_path: Path) -> None:
    anchor, (server_key, server_cert), (client_key, _) = _pki()
    credentials.Credential(key=client_key, chain=(server_cert,), trust_anchors=(anchor,)).save(
        tmp_path / "cred", passphrase=None
    )
    with pytest.raises(ConfigurationError) as caught:
        credentials.Credential.load(tmp_path / "cred", passphrase=None)
    assert "key.pem does not belong to the first certificate in cert.pem" in caught.value.message
    assert str(tmp_path / "cred") in caught.value.message
    good = credentials.Credential(key=server_key, chain=(server_cert,), trust_anchors=(anchor,))
    good.save(tmp_path / "good", passphrase=None)
    assert credentials.Credential.load(tmp_path / "good", passphrase=None).chain == (server_cert,)
