"""Keys at rest and the files that hold them, and device certificates that state no purpose.

* symbolic links planted where ztpki writes a credential: at the file's own path (refused,
  with an error naming it), and at the temporary names earlier versions used (.NAME.PID.tmp,
  predictable: now never used, so nothing is written through them);
* the work factor of every key file the deployment wrote (CA keys, CA-client and manifest
  signer credentials, the node's server key), and an old-format credential still working;
* a genuine factory certificate without any extendedKeyUsage, for a listed device.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tests.attacks.attack_deployment import Deployment, now
from tests.attacks.attack_report import AttackReport
from tests.support.no_eku import certificate_without_eku
from tests.support.pbes2 import pbes2_parameters

from ztpki.casystem.client import CAClient
from ztpki.credentials import Credential
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.pbes2 import AT_REST_KDF_ROUNDS
from ztpki.pki.pem import fingerprint_sha256, load_certificate_der, serial_hex
from ztpki.protocol.enrollment import EnrollmentRequest
from ztpki.protocol.est import build_csr, encode_csr

pytestmark = pytest.mark.timeout(240)

CATEGORY = "keys"
CREDENTIAL_FILES = ("key.pem", "cert.pem", "ca.pem")


def _victims(root: Path) -> dict[Path, bytes]:
    """Files an attacker wants overwritten (or a secret copied into)."""
    victims = {}
    for name in CREDENTIAL_FILES:
        victim = root / f"victim-{name}"
        victim.write_bytes(b"precious content of " + name.encode())
        victims[victim] = victim.read_bytes()
    return victims


def _add_client(d: Deployment, name: str, out: Path) -> tuple[int, str]:
    result = d.cli(
        "ca",
        "add-client",
        "--dir",
        str(d.customer_dir),
        "--name",
        name,
        "--out",
        str(out),
        "--force",
        "--ca",
        "devices",
        system="customer",
        check=False,
    )
    return result.status, result.out + result.err


def _clients(d: Deployment) -> list[dict[str, object]]:
    out = d.cli("ca", "clients", "--dir", str(d.customer_dir), "--json", system="customer").out
    clients: list[dict[str, object]] = json.loads(out)
    return clients


def test_fail_symlink_planted_at_a_credential_file(
    deployment: Deployment, attack_report: AttackReport, tmp_path: Path
) -> None:
    d = deployment
    victims = _victims(tmp_path)
    out = tmp_path / "shared-out"
    out.mkdir()
    (out / "key.pem").symlink_to(tmp_path / "victim-key.pem")
    before, clients = d.snapshot(), _clients(d)
    name = f"planted-{secrets.token_hex(3)}"
    status, text = _add_client(d, name, out)
    assert status == 1, text
    assert "refusing to write" in text and "is a symbolic link" in text, text
    assert {v: v.read_bytes() for v in victims} == victims  # nothing written through it
    assert os.listdir(out) == ["key.pem"] and (out / "key.pem").is_symlink()
    assert _clients(d) == clients  # no CA-client registered
    checked = d.check_unchanged(before, unaudited_because="a CA-system command, not the node")
    # The terminal may wrap the message anywhere, inside the path too.
    found = re.search(r"refusing to write(.*?): it is a symbolic link([^;]*)", text, re.S)
    assert found and "".join(found.group(1).split()) == str(out / "key.pem"), text
    message = f"refusing to write DIR/key.pem: it is a symbolic link{found.group(2)}"
    message = " ".join(message.split())
    attack_report.record(
        case=f"{CATEGORY}/symlink-planted-at-a-credential-file",
        category=CATEGORY,
        attack=(
            "a local user plants a symbolic link at key.pem in a shared output directory; the "
            "operator runs `ztpki ca add-client --out DIR --force` there"
        ),
        observed=(
            f"exit 1: '{message}'; the link's target unchanged; no CA-client "
            f"registered (`ztpki ca clients` unchanged); {checked}; {d.serve_next_device()}"
        ),
        verdict="refused",
    )


def test_fail_symlinks_planted_at_predictable_temporary_names(
    deployment: Deployment, attack_report: AttackReport, tmp_path: Path
) -> None:
    d = deployment
    victims = _victims(tmp_path)
    out = tmp_path / "shared-out"
    out.mkdir()
    pid = os.getpid()  # the `ztpki` process: the command runs in this one
    planted = [out / f".{name}.{pid}.tmp" for name in CREDENTIAL_FILES]
    for link, name in zip(planted, CREDENTIAL_FILES, strict=True):
        link.symlink_to(tmp_path / f"victim-{name}")
    name = f"tmpnames-{secrets.token_hex(3)}"
    status, text = _add_client(d, name, out)
    assert status == 0, text
    assert {v: v.read_bytes() for v in victims} == victims  # no link was followed
    assert all(link.is_symlink() for link in planted)
    written = {p.name for p in out.iterdir() if not p.is_symlink()}
    assert written == set(CREDENTIAL_FILES), written
    assert (out / "key.pem").stat().st_mode & 0o077 == 0
    assert pbes2_parameters((out / "key.pem").read_bytes())[2] == AT_REST_KDF_ROUNDS
    credential = Credential.load(out, passphrase=d.passphrases["ZTPKI_CLIENT_PASSPHRASE"].encode())
    assert any(c["name"] == name for c in _clients(d))
    attack_report.record(
        case=f"{CATEGORY}/symlinks-planted-at-temporary-names",
        category=CATEGORY,
        attack=(
            "a local user plants symbolic links at the temporary names earlier versions wrote "
            "a credential through (.key.pem.PID.tmp and the others, PID the ztpki process); the "
            "operator runs `ztpki ca add-client --out DIR --force` there"
        ),
        observed=(
            "exit 0: the credential was written through fresh temporary files with "
            "unpredictable names (O_EXCL | O_NOFOLLOW) and renamed into place; none of the "
            "planted links was followed (their targets unchanged); key.pem 0600, encrypted, "
            f"loads ({credential.certificate.subject.rfc4514_string()}); "
            f"{d.serve_next_device()}"
        ),
        verdict="refused",
    )


def _key_files(d: Deployment) -> list[Path]:
    root = d.root
    files = [
        root / "cred-node" / "key.pem",
        root / "cred-line1" / "key.pem",
        root / "cred-customer" / "key.pem",
        root / "signer" / "key.pem",
        root / "server" / "key.pem",
        d.node_dir / "server" / "key.pem",
        d.node_dir / "ca-client" / "key.pem",
    ]
    files += sorted((root / "customer").glob("**/ca.key.pem"))
    files += sorted((root / "factory").glob("**/ca.key.pem"))
    return files


def test_contained_key_files_resist_offline_guessing(
    deployment: Deployment, attack_report: AttackReport, tmp_path: Path
) -> None:
    d = deployment
    files = _key_files(d)
    rounds = {str(p.relative_to(d.root)): pbes2_parameters(p.read_bytes())[2] for p in files}
    assert set(rounds.values()) == {AT_REST_KDF_ROUNDS}, rounds
    # A credential written the old way (cryptography's 2,048 rounds) still loads and works.
    old = tmp_path / "old-line1"
    old.mkdir()
    secret = d.passphrases["ZTPKI_CLIENT_PASSPHRASE"].encode()
    line1 = Credential.load(d.root / "cred-line1", passphrase=secret)
    for name in ("cert.pem", "ca.pem"):
        (old / name).write_bytes((d.root / "cred-line1" / name).read_bytes())
    (old / "key.pem").write_bytes(_old_format(line1, secret))
    assert pbes2_parameters((old / "key.pem").read_bytes())[2] == 2048
    credential = Credential.load(old, passphrase=secret)
    answer = _enroll_factory(d, credential)
    attack_report.record(
        case=f"{CATEGORY}/key-files-resist-offline-guessing",
        category=CATEGORY,
        attack=(
            "a copied key file (a CA-client credential, the most widely distributed key, or "
            "the node's server key) attacked offline by guessing its passphrase"
        ),
        observed=(
            f"all {len(files)} key files of the deployment (CA and service keys, the "
            "CA-client and manifest-signer credentials, the node's server key and its copy of "
            f"its credential) are PBES2 with PBKDF2-HMAC-SHA256 at {AT_REST_KDF_ROUNDS} "
            "iterations and AES-256-CBC, so each guess costs what it costs for a CA key "
            "(earlier versions wrote credentials and server keys at 2048); a credential "
            "written the old way still loads and its CA-client was served (the factory CA "
            f"system issued certificate {answer})"
        ),
        verdict="contained",
    )


def _old_format(credential: Credential, secret: bytes) -> bytes:
    return credential.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(secret),
    )


def _enroll_factory(d: Deployment, credential: Credential) -> str:
    client = CAClient(d.address("factory"), credential, pool_size=1)
    request = EnrollmentRequest(
        request_id=f"old-kdf-{secrets.token_hex(6)}", device_id=f"OLDKDF-{secrets.token_hex(3)}"
    )

    async def run() -> str:
        try:
            answer = await client.enroll(request)
        finally:
            await client.close()
        return serial_hex(load_certificate_der(answer.certificate_der))

    return asyncio.run(run())


def test_fail_device_certificate_without_eku(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device_id = f"ACME-NOEKU-{secrets.token_hex(3).upper()}"
    factory = d.authority("factory", "factory")
    key = generate_private_key(KeySpec.EC_P256)
    start = now()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, device_id),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, device_id),
        ]
    )
    cert = certificate_without_eku(
        subject=subject,
        public_key=key.public_key(),
        issuer=factory.certificate,
        issuer_key=factory.key,
        not_before=start - timedelta(minutes=1),
        not_after=start + timedelta(days=30),
    )
    # Listed with this very certificate's fingerprint: nothing but its EKU is wrong.
    d.cli(
        "node",
        "add",
        "--dir",
        str(d.node_dir),
        device_id,
        "--fingerprint",
        fingerprint_sha256(cert),
    )
    before = d.snapshot()
    obs = d.est(
        "simpleenroll",
        key=key,
        chain=[cert, *factory.chain[:-1]],
        body=encode_csr(build_csr(key, device_id=device_id)),
    )
    assert obs.status == 403, obs.summary()
    assert "has no extendedKeyUsage" in obs.text and "clientAuth" in obs.text, obs.text
    checked = d.check_unchanged(before, audited=[(device_id, "refused", "has no extendedKeyUsage")])
    served = d.serve_next_device()
    # ztpki's own factory and customer CAs put clientAuth in what they issue to devices.
    d.reserve(1)
    operational = next(u for u in d.used if u.device_id == d.served[-1]).certificate
    for own in (d.pool[0].certificate, operational):
        eku = own.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in eku, own.subject
    attack_report.record(
        case="identity/certificate-without-any-eku",
        category="identity",
        attack=(
            "simpleenroll with a certificate from the real factory CA for a listed device "
            "(its fingerprint listed by `ztpki node add`) that has no extendedKeyUsage at all, "
            "which TLS accepts as 'any purpose'"
        ),
        observed=(
            f"the TLS handshake passed and the node answered {obs.summary()}; {checked}; "
            f"{served} (its temporary and operational certificates, from ztpki's factory and "
            "customer CAs, both name clientAuth)"
        ),
        verdict="refused",
    )
