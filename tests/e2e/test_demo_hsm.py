"""`ztpki demo --hsm`: the whole flow with every CA key of the factory and the customer in
SoftHSM2 tokens; no CA key file is ever written, and the devices end up customized by a
customer CA whose signatures come from its token."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography import x509
from tests.support.services import run_ztpki

from ztpki.pki.pem import load_certificates_pem


def test_ok_demo_with_ca_keys_in_softhsm(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    workdir = tmp_path / "work"
    result = run_ztpki(
        "demo", "--hsm", "--devices", "3", "--workdir", str(workdir), "--json", str(summary_path)
    )
    assert "demo passed" in result.stdout
    summary = json.loads(summary_path.read_text())
    assert summary["failed"] == 0 and summary["customized"] == 3
    assert summary["proof"]["ok"] is True
    for system in ("factory-ca", "customer-ca"):
        cas = sorted((workdir / system / "cas").iterdir())
        assert cas
        for ca in cas:
            assert not (ca / "ca.key.pem").exists(), ca
            recorded = (ca / "key.toml").read_text()
            assert f'pkcs11 = "pkcs11:token={system};object={ca.name};id=' in recorded
            # Its CRL, signed in the token, verifies with the CA certificate.
            certificate = load_certificates_pem((ca / "ca.pem").read_bytes())[0]
            crl = x509.load_der_x509_crl((ca / "crl.der").read_bytes())
            assert crl.is_signature_valid(certificate.public_key())  # type: ignore[arg-type]
    pin = (workdir / "secrets" / "ztpki_pkcs11_pin.txt").read_text().strip()
    logs = "".join(p.read_text(errors="replace") for p in (workdir / "logs").iterdir())
    assert pin not in logs + result.stdout + result.stderr
