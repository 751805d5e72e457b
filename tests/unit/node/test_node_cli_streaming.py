"""`ztpki node import`, `node devices` and `node audit` on registers larger than a page.

The import reads a signed manifest in passes and lists its devices all or nothing: a bad
signature, a bad row near the end or a repeated id leaves the register as it was (the refusal
audited). The listings stream from the store page by page; their output must be the whole
register in device id (or seq) order, each row once, whatever the page boundaries.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from node_pki import NOW, PKI, leaf
from test_node_cli import env, init_args, inputs, run  # noqa: F401 (its fixtures, reused)

from ztpki.cli.node_register import TABLE_PAGE
from ztpki.node.operations import open_register
from ztpki.pki.keys import encode_pkcs8_pem
from ztpki.pki.pem import certificates_pem
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.jws import b64url_decode, b64url_encode, compact_json, sign_jws
from ztpki.protocol.manifest import (
    MANIFEST_TYPE,
    Manifest,
    ManifestEntry,
    manifest_document,
    new_manifest_id,
)
from ztpki.store.records import AuditRecord

# More than a table page, and more than a store page (1000): boundaries are crossed.
COUNT = 1203
MANUFACTURER = "Acme Devices"


def ids(count: int = COUNT) -> list[str]:
    return [f"ACME-{n:05d}" for n in range(count)]


def document(device_ids: list[str]) -> dict[str, Any]:
    entries = tuple(ManifestEntry(i, f"{n:064x}", "M1", None, NOW) for n, i in enumerate(ids()))
    doc = manifest_document(Manifest(new_manifest_id(), MANUFACTURER, "B1", None, NOW, entries))
    by_id = {e["device_id"]: e for e in doc["devices"]}
    doc["devices"] = [by_id.get(i, dict(doc["devices"][0], device_id=i)) for i in device_ids]
    return doc


def signed(pki: PKI, doc: dict[str, Any]) -> bytes:
    """``doc`` signed by a manifest signer under the node's factory bundle, as it stands:
    no check of ours runs before signing, so a bad row is signed too."""
    key, cert = leaf(pki.factory_ca, "line1 signer", profile=CertificateProfile.MANIFEST_SIGNER)
    return sign_jws(
        compact_json(doc), key=key, chain=[cert, pki.factory_ca.certificate], typ=MANIFEST_TYPE
    )


@pytest.fixture
def node(inputs: dict[str, Path]) -> tuple[str, PKI]:  # noqa: F811
    """An initialised node whose manufacturer's bundle is of a PKI this module holds."""
    pki = PKI.create()
    inputs["bundle"].write_bytes(certificates_pem(pki.bundle()))
    key, cert = leaf(pki.factory_root, "node", profile=CertificateProfile.SERVER)
    inputs["server-cert"].write_bytes(certificates_pem([cert]))
    inputs["server-key"].write_bytes(encode_pkcs8_pem(key, passphrase=None))
    assert run(*init_args(inputs))[0] == 0
    return str(inputs["node"]), pki


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def listed(node_dir: str) -> list[dict[str, Any]]:
    status, out = run("node", "devices", "--dir", node_dir, "--json")
    assert status == 0
    devices: list[dict[str, Any]] = json.loads(out)
    return devices


def audit(node_dir: str) -> list[dict[str, Any]]:
    status, out = run("node", "audit", "--dir", node_dir, "--json")
    assert status == 0
    entries: list[dict[str, Any]] = json.loads(out)
    return entries


# --- the import: all or nothing ------------------------------------------------------------


def test_ok_import_then_streamed_listing_in_order(node: tuple[str, PKI], tmp_path: Path) -> None:
    node_dir, pki = node
    shuffled = ids()[::-1]  # the file's order is not the register's
    status, out = run("node", "import", "--dir", node_dir,
                      str(write(tmp_path, "m.json", signed(pki, document(shuffled)))))  # fmt: skip
    assert status == 0 and f"listed {COUNT} device(s); 0 already listed" in out, out

    devices = listed(node_dir)
    assert [d["device_id"] for d in devices] == ids()
    assert {d["state"] for d in devices} == {"listed"}
    assert devices == listed(node_dir)  # stable from one run to the next
    by_state = run("node", "devices", "--dir", node_dir, "--json", "--state", "listed")[1]
    assert json.loads(by_state) == devices
    none = run("node", "devices", "--dir", node_dir, "--json", "--state", "issued")[1]
    assert json.loads(none) == []

    status, table = run("node", "devices", "--dir", node_dir, "--state", "listed")
    assert status == 0 and table.rstrip().endswith(f"{COUNT} device(s)")
    assert re.findall(r"ACME-\d{5}", table) == ids()  # each once, in order, across pages
    assert table.count("┏") == -(-COUNT // TABLE_PAGE)  # a table per page


def refusal_leaves_nothing(node_dir: str, path: Path, match: str) -> None:
    """Import ``path``: refused with ``match``; nothing listed, only the refusal audited."""
    before = audit(node_dir)
    status, _ = run("node", "import", "--dir", node_dir, str(path))
    assert status == 1
    assert listed(node_dir) == []
    with open_register(Path(node_dir)) as store:
        assert store.manifests() == []
    after = audit(node_dir)
    assert after[: len(before)] == before
    (refusal,) = after[len(before) :]
    assert refusal["decision"] == "refused" and re.search(match, refusal["reason"]), refusal


def test_fail_altered_signature_imports_nothing(node: tuple[str, PKI], tmp_path: Path) -> None:
    node_dir, pki = node
    data = signed(pki, document(ids()))
    # The last device's fingerprint changed after signing (base64url of the payload edited).
    outer = json.loads(data)
    payload = json.loads(b64url_decode(outer["payload"], "payload"))
    payload["devices"][-1]["temp_fingerprint"] = "f" * 64
    outer["payload"] = b64url_encode(compact_json(payload))
    forged = compact_json(outer) + b"\n"
    refusal_leaves_nothing(node_dir, write(tmp_path, "forged.json", forged), "signature")
    # Negative control: the file as signed imports.
    assert run("node", "import", "--dir", node_dir, str(write(tmp_path, "ok.json", data)))[0] == 0
    assert len(listed(node_dir)) == COUNT


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        pytest.param(
            lambda doc: doc["devices"][-1].update(temp_fingerprint="not-hex"),
            "fingerprint of ACME-01202",
            id="fail-bad-fingerprint-in-the-last-row",
        ),
        pytest.param(
            lambda doc: doc["devices"].append(dict(doc["devices"][3])),
            "ACME-00003 appears twice",
            id="fail-id-repeated-in-the-last-row",
        ),
        pytest.param(
            lambda doc: doc["devices"][-1].update(unknown="x"),
            "unknown member 'unknown'",
            id="fail-unknown-member-in-the-last-row",
        ),
    ],
)
def test_fail_bad_late_row_imports_nothing(
    node: tuple[str, PKI], tmp_path: Path, edit: Any, match: str
) -> None:
    node_dir, pki = node
    doc = document(ids())
    edit(doc)
    refusal_leaves_nothing(node_dir, write(tmp_path, "late.json", signed(pki, doc)), match)


# --- the audit trail, streamed -------------------------------------------------------------


def test_ok_audit_listing_and_verification_stream(node: tuple[str, PKI]) -> None:
    node_dir, _ = node
    with open_register(Path(node_dir)) as store:
        store.append_many(
            [
                AuditRecord(
                    at=NOW, endpoint="cli/test", decision="noted", reason=str(n),
                    device_id=f"ACME-{n % 7:05d}",
                )
                for n in range(COUNT)
            ]
        )  # fmt: skip
    entries = audit(node_dir)
    assert [e["seq"] for e in entries] == list(range(1, COUNT + 1))
    assert [e["reason"] for e in entries] == [str(n) for n in range(COUNT)]
    newest = json.loads(run("node", "audit", "--dir", node_dir, "--json", "--limit", "1001")[1])
    assert newest == entries[-1001:]
    one = json.loads(run("node", "audit", "--dir", node_dir, "--json", "--device", "ACME-00003")[1])
    assert one == [e for e in entries if e["device_id"] == "ACME-00003"]

    status, table = run("node", "audit", "--dir", node_dir)
    assert status == 0 and re.findall(r"ACME-\d{5}", table) == [e["device_id"] for e in entries]

    status, out = run("node", "audit", "--dir", node_dir, "--verify")
    assert status == 0
    assert re.search(
        rf"audit trail OK: {COUNT} entries verified in [\d.]+ s, [\d,]+ entries/s", out
    )


def test_fail_negative_limit(node: tuple[str, PKI]) -> None:
    node_dir, _ = node
    assert run("node", "audit", "--dir", node_dir, "--limit", "-1")[0] == 1
