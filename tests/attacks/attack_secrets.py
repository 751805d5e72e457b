"""The two checks that close the session, after every attack has run against the deployment.

* final consistency: each device holds at most one live certificate at the customer CA, and
  device memory, register and CA agree on every customized device's certificate;
* secret scan: no private key, passphrase or device secret in any service log, answer or error
  text of the whole run (the serverkeygen answers, which carry a key on purpose, are not kept).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from tests.attacks.attack_deployment import Deployment

from ztpki.device.memory import Phase
from ztpki.pki.keys import KeySpec, PrivateKey, encode_pkcs8, generate_private_key
from ztpki.pki.pem import serial_hex

PEM_PRIVATE = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
SEC1_PREFIXES = (b"MHcCAQEEI", b"MIGkAgEBBDA")  # EC P-256 / P-384 "EC PRIVATE KEY" DER


class Recorder(Protocol):
    def record(
        self,
        *,
        case: str,
        category: str,
        attack: str,
        observed: str,
        verdict: str,
        passed: bool | None = None,
    ) -> None: ...


def final_consistency(d: Deployment, report: Recorder) -> None:
    problems: list[str] = []
    try:
        issued = d.issued_by_operator("customer")
        live = Counter(r["device_id"] for r in issued if r["status"] == "active")
        serials = {r["device_id"]: r["serial"] for r in issued if r["status"] == "active"}
        problems += [f"{device} has {n} live certificates" for device, n in live.items() if n > 1]
        register = d.register()
        problems += [
            f"{dev} left in state issuing" for dev, row in register.items() if row[0] == "issuing"
        ]
        for device in d.used:
            memory = device.memory()
            if memory.phase is not Phase.CUSTOMIZED:
                continue
            cert = device.certificate
            row = register.get(device.device_id)
            if row is None or row[0] not in ("customized", "issued"):
                problems.append(f"{device.device_id} is customized but the register says {row}")
            elif row[1] != serial_hex(cert) or serials.get(device.device_id) != serial_hex(cert):
                problems.append(
                    f"{device.device_id}: device holds {serial_hex(cert)}, register "
                    f"{row[1]}, live at the CA {serials.get(device.device_id)}"
                )
        if not d.audit_verifies():
            problems.append("the audit hash chain does not verify")
    except Exception as exc:  # recorded as a failed check, then raised below
        problems.append(f"the check itself failed: {exc!r}")
    report.record(
        case="faults/final-consistency",
        category="faults",
        attack="after every other case of the run (crashes, races, refusals, full disk)",
        observed=(
            "each device holds at most one live certificate at the customer CA (`ztpki ca "
            "issued --json`); every customized device's memory, register and CA agree on its "
            "serial; no device is left in state issuing; the audit hash chain verifies"
            if not problems
            else "; ".join(problems)
        ),
        verdict="survived",
        passed=not problems,
    )
    assert not problems, problems


def secret_values(d: Deployment) -> dict[str, bytes]:
    """Every secret of the deployment, by a name that is safe to print."""
    found = {f"passphrase {k}": v.encode() for k, v in d.passphrases.items()}
    for device in [*d.used, *d.pool]:
        secret_file = device.path / "secret"
        if secret_file.exists():
            found[f"device secret of {device.device_id}"] = secret_file.read_bytes()
    return found


def private_keys(d: Deployment) -> dict[str, PrivateKey]:
    keys: dict[str, PrivateKey] = {}
    for system, names in (
        ("factory", ("froot", "factory", "nodes", "manifests")),
        ("customer", ("croot", "devices")),
    ):
        for name in names:
            keys[f"CA key {system}/{name}"] = d.authority(system, name).key
    for device in [*d.used, *d.pool]:
        with contextlib.suppress(Exception):
            identity = device.identity()
            if identity.private_key is not None:
                keys[f"key of {device.device_id}"] = identity.private_key
    for cred in ("cred-line1", "cred-customer", "cred-node"):
        keys[f"CA-client key {cred}"] = d.credential(cred).key
    return keys


def _encodings(value: bytes) -> set[bytes]:
    forms = {value, value.hex().encode(), value.hex().upper().encode()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(value)
        forms |= {text, text.rstrip(b"=")}
    return {f for f in forms if len(f) >= 12}


def _key_needles(key: PrivateKey) -> set[bytes]:
    der = encode_pkcs8(key, passphrase=None)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    lines = {line for line in pem.splitlines() if len(line) >= 40 and b"-----" not in line}
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        raw = key.private_numbers().private_value.to_bytes(size, "big")
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    elif isinstance(key, rsa.RSAPrivateKey):
        d = key.private_numbers().d
        raw = d.to_bytes((d.bit_length() + 7) // 8, "big")
    else:
        raw = der
    return lines | {base64.b64encode(der)} | _encodings(raw)


def _prefix_needles() -> set[bytes]:
    """The fixed start of each kind of plain PKCS#8 key, in base64 and hex."""
    needles = set(SEC1_PREFIXES)
    for spec in (KeySpec.EC_P256, KeySpec.EC_P384, KeySpec.ED25519):
        der = encode_pkcs8(generate_private_key(spec), passphrase=None)
        prefix = der[:15]  # header and algorithm: the same for every key of the kind
        needles |= {base64.b64encode(prefix)[:20], prefix.hex().encode()}
    return needles


def _sources(d: Deployment) -> list[Path]:
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == d.logs:
            handler.close()
            logging.getLogger().removeHandler(handler)
    return sorted(p for p in d.logs.rglob("*") if p.is_file())


def scan_for_secrets(d: Deployment, report: Recorder) -> None:
    needles: dict[bytes, str] = {}
    for name, value in secret_values(d).items():
        for form in _encodings(value):
            needles[form] = name
    with contextlib.suppress(Exception):
        for name, key in private_keys(d).items():
            for form in _key_needles(key):
                needles[form] = name
    for form in _prefix_needles():
        needles[form] = "a plain private-key prefix"
    found: list[str] = []
    sources = _sources(d)
    for path in sources:
        data = path.read_bytes()
        if PEM_PRIVATE.search(data):
            found.append(f"a PEM private key header in {path.name}")
        for needle, name in needles.items():
            if needle in data:
                found.append(f"{name} in {path.name}")
    report.record(
        case="secrets/no-secret-in-logs-or-answers",
        category="secrets",
        attack=(
            "after the whole suite: every service log (factory CA, customer CA, node, across "
            "restarts), every answer and error text the attacks received, every CLI output and "
            "this process's own log"
        ),
        observed=(
            "searched for PEM private-key headers, plain PKCS#8/SEC1 key prefixes (base64, "
            "hex), each CA, CA-client and device key (PEM lines, raw scalar in hex and "
            "base64), each passphrase and each device secret (raw, hex, base64): none found"
            if not found
            else "FOUND: " + "; ".join(sorted(set(found))[:20])
        ),
        verdict="clean",
        passed=not found and bool(sources),
    )
    assert sources, "the secret scan found no log to search"
    assert not found, sorted(set(found))
