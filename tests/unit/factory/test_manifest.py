"""The signed shipping manifest: JWS codec, signer chain, strict parsing, CSV view."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography import x509
from factory_pki import NOW, FactoryPKI, factory_pki, leaf, root_ca
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztpki.errors import ConfigurationError, MalformedInput, VerificationFailed
from ztpki.factory.signer import verify_own_manifest
from ztpki.pki.device_ids import EVERY_DEVICE_ID
from ztpki.pki.keys import KeySpec, PrivateKey
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.jws import _sign
from ztpki.protocol.manifest import (
    MANIFEST_TYPE,
    Manifest,
    ManifestEntry,
    ManufacturerTrust,
    manifest_csv,
    new_manifest_id,
    sign_manifest,
)
from ztpki.protocol.manifest_stream import check_manifest_file, manifest_file_entries

PKI: FactoryPKI = factory_pki()
SIGNER_KEY, SIGNER_CHAIN = leaf(PKI.manifests, "line1-signer", CertificateProfile.MANIFEST_SIGNER)


def entry(n: int, **kw: Any) -> ManifestEntry:
    fields: dict[str, Any] = {
        "device_id": f"ACME-B1-{n:06d}",
        "temp_fingerprint": f"{n:064x}",
        "model": "M1",
        "batch": "B1",
        "manufactured_at": NOW - timedelta(minutes=n),
    }
    fields.update(kw)
    return ManifestEntry(**fields)


def manifest(count: int = 3, **kw: Any) -> Manifest:
    fields: dict[str, Any] = {
        "manifest_id": new_manifest_id(),
        "manufacturer": "ACME Devices",
        "batch": "B1",
        "order": "PO-17",
        "issued_at": NOW,
        "entries": tuple(entry(n) for n in range(count)),
    }
    fields.update(kw)
    return Manifest(**fields)


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def container(protected: str, payload: str, signature: str) -> bytes:
    return compact({"payload": payload, "protected": protected, "signature": signature}) + b"\n"


def forge(
    header: dict[str, Any],
    payload: bytes,
    *,
    key: PrivateKey = SIGNER_KEY,
    alg: str = "ES256",
) -> bytes:
    """A manifest file with any header and payload, correctly signed by key."""
    protected = b64u(compact(header))
    body = b64u(payload)
    signature = _sign(key, alg, f"{protected}.{body}".encode())
    return container(protected, body, b64u(signature))


def header(chain: tuple[x509.Certificate, ...] = SIGNER_CHAIN, **kw: Any) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization

    h: dict[str, Any] = {
        "alg": "ES256",
        "typ": MANIFEST_TYPE,
        "x5c": [
            base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain
        ],
    }
    h.update(kw)
    return h


def parts(data: bytes) -> dict[str, str]:
    return json.loads(data)


def verify(data: bytes, **kw: Any) -> Manifest:
    """The manifest as the factory verifies it whole; the node's reader in pieces
    (``manifest_stream``) must come to the same result or the same kind of refusal."""
    anchors = kw.pop("anchors", PKI.anchors)
    now = kw.pop("now", NOW)
    try:
        whole = verify_own_manifest(data, anchors=anchors, now=now).manifest
    except (MalformedInput, VerificationFailed) as exc:
        with pytest.raises(type(exc)):
            verify_in_pieces(data, anchors=anchors, now=now)
        raise
    assert verify_in_pieces(data, anchors=anchors, now=now) == whole
    return whole


def verify_in_pieces(
    data: bytes, *, anchors: tuple[x509.Certificate, ...], now: datetime, piece: int = 13
) -> Manifest:
    """Both passes of the streaming reader over ``data`` cut into ``piece``-byte pieces."""

    def read() -> Iterator[bytes]:
        return (data[i : i + piece] for i in range(0, len(data), piece))

    trust = ManufacturerTrust(None, tuple(anchors), EVERY_DEVICE_ID)
    checked = check_manifest_file(read, manufacturers=[trust], now=now)
    entries = tuple(manifest_file_entries(read, checked))
    assert len(entries) == checked.device_count
    try:
        return replace(checked.manifest, entries=entries)
    except ValueError as exc:  # a repeated id: the register's staging refuses it
        raise MalformedInput(str(exc)) from None


# --- positive cases with their controls --------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [KeySpec.EC_P256, KeySpec.EC_P384, KeySpec.ED25519, KeySpec.RSA_2048],
    ids=["ok-es256", "ok-es384", "ok-eddsa", "ok-rs256"],
)
def test_round_trip_every_alg(spec: KeySpec) -> None:
    key, chain = leaf(
        PKI.manifests, f"signer-{spec}", CertificateProfile.MANIFEST_SIGNER, spec=spec
    )
    m = manifest()
    data = sign_manifest(m, key=key, chain=chain)
    verified = verify_own_manifest(data, anchors=PKI.anchors, now=NOW)
    assert verified.manifest == m
    assert verified.signer == chain[0]
    assert verified.chain[-1] == PKI.root.certificate
    alg = json.loads(unb64u(parts(data)["protected"]))["alg"]
    assert (
        alg
        == {"ec-p256": "ES256", "ec-p384": "ES384", "ed25519": "EdDSA", "rsa-2048": "RS256"}[spec]
    )


def test_ok_signer_chain_without_intermediates_in_x5c_fails_without_the_ca() -> None:
    # Only the leaf in x5c: the anchors must then hold the issuing CA itself.
    data = sign_manifest(manifest(), key=SIGNER_KEY, chain=SIGNER_CHAIN[:1])
    with pytest.raises(VerificationFailed):
        verify(data)
    assert verify(data, anchors=(PKI.manifests.certificate,)).entries


def test_ok_file_is_flattened_jws_json() -> None:
    data = sign_manifest(manifest(), key=SIGNER_KEY, chain=SIGNER_CHAIN)
    outer = parts(data)
    assert set(outer) == {"protected", "payload", "signature"}
    assert data.endswith(b"}\n")
    h = json.loads(unb64u(outer["protected"]))
    assert h["typ"] == MANIFEST_TYPE and len(h["x5c"]) == 3
    payload = json.loads(unb64u(outer["payload"]))
    assert payload["devices"][0]["device_id"] == "ACME-B1-000000"
    assert payload["issued_at"] == "2025-06-01T12:00:00Z"


def test_ok_times_normalised_to_utc() -> None:
    local = timezone(timedelta(hours=2))
    m = manifest(issued_at=datetime(2025, 6, 1, 14, 0, 0, 123456, tzinfo=local))
    got = verify(sign_manifest(m, key=SIGNER_KEY, chain=SIGNER_CHAIN))
    assert got.issued_at == m.issued_at and got.issued_at.tzinfo == UTC


def test_ok_empty_manifest() -> None:
    m = manifest(count=0, batch=None, order=None)
    assert verify(sign_manifest(m, key=SIGNER_KEY, chain=SIGNER_CHAIN)) == m


# --- tampering and wrong signers ---------------------------------------------------------------


def _tampered(edit: Any) -> bytes:
    data = sign_manifest(manifest(), key=SIGNER_KEY, chain=SIGNER_CHAIN)
    outer = parts(data)
    payload = json.loads(unb64u(outer["payload"]))
    edit(payload)
    return container(outer["protected"], b64u(compact(payload)), outer["signature"])


def test_fail_edited_fingerprint() -> None:
    def edit(p: dict[str, Any]) -> None:
        p["devices"][1]["temp_fingerprint"] = "f" * 64

    with pytest.raises(VerificationFailed, match="signature"):
        verify(_tampered(edit))


def test_fail_added_device() -> None:
    def edit(p: dict[str, Any]) -> None:
        p["devices"].append(dict(p["devices"][0], device_id="EVIL-1"))

    with pytest.raises(VerificationFailed, match="signature"):
        verify(_tampered(edit))


def test_fail_unchanged_payload_control() -> None:
    assert len(verify(_tampered(lambda p: None)).entries) == 3


def test_fail_signer_without_document_signing_eku() -> None:
    key, chain = leaf(PKI.factory, "not-a-signer", CertificateProfile.DEVICE)
    data = sign_manifest(manifest(), key=key, chain=chain)
    with pytest.raises(VerificationFailed, match="signer certificate does not verify"):
        verify(data)


def test_fail_untrusted_ca() -> None:
    other = root_ca("Other Root")
    key, chain = leaf(other, "rogue-signer", CertificateProfile.MANIFEST_SIGNER)
    data = sign_manifest(manifest(), key=key, chain=chain)
    with pytest.raises(VerificationFailed):
        verify(data)
    assert verify(data, anchors=(other.certificate,)).entries  # control


def test_fail_expired_signer() -> None:
    data = sign_manifest(manifest(), key=SIGNER_KEY, chain=SIGNER_CHAIN)
    with pytest.raises(VerificationFailed):
        verify(data, now=NOW + timedelta(days=400))


def test_fail_no_anchors() -> None:
    data = sign_manifest(manifest(), key=SIGNER_KEY, chain=SIGNER_CHAIN)
    with pytest.raises(VerificationFailed, match="trust anchor"):
        verify(data, anchors=())


def test_fail_chain_swapped_for_another_signer() -> None:
    # A valid signer certificate in x5c does not help a signature made with a different key.
    other_key, _ = leaf(PKI.manifests, "other", CertificateProfile.MANIFEST_SIGNER)
    data = forge(header(), compact({"version": 1}), key=other_key)
    with pytest.raises(VerificationFailed, match="signature"):
        verify(data)


def test_fail_alg_does_not_match_key() -> None:
    data = forge(header(alg="ES384"), b"{}")
    with pytest.raises(VerificationFailed, match="does not match"):
        verify(data)


# --- malformed input ---------------------------------------------------------------------------

GOOD = sign_manifest(manifest(), key=SIGNER_KEY, chain=SIGNER_CHAIN)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param(GOOD.replace(b"\n", b""), "exactly", id="fail-newline-removed"),
        pytest.param(GOOD.replace(b",", b", ", 1), "exactly", id="fail-whitespace"),
        pytest.param(b"\xff" + GOOD, "UTF-8 JSON", id="fail-not-utf8"),
        pytest.param(b"[]", "not a JSON object", id="fail-array"),
        pytest.param(b"", "JSON", id="fail-empty"),
        pytest.param(b'{"payload":NaN}', "NaN", id="fail-nan"),
        pytest.param(b'{"a":1,"a":2}', "twice", id="fail-duplicate-member"),
        pytest.param(b"[" * 100000 + b"]" * 100000, "JSON", id="fail-deep-nesting"),
        pytest.param(
            container("e30", "e30", "AA")[:-1] + b" ", "exactly|header", id="fail-trailing-space"
        ),
    ],
)
def test_fail_malformed_container(data: bytes, match: str) -> None:
    with pytest.raises(MalformedInput, match=match):
        verify(data)


def test_fail_extra_member_unprotected_header() -> None:
    outer = parts(GOOD)
    outer["header"] = {"kid": "x"}
    with pytest.raises(MalformedInput, match="unknown member 'header'"):
        verify(compact(outer) + b"\n")


def test_fail_padded_base64url() -> None:
    outer = parts(GOOD)
    padded = outer["signature"] + "=" * (-len(outer["signature"]) % 4)
    assert padded != outer["signature"]
    with pytest.raises(MalformedInput, match="base64url"):
        verify(container(outer["protected"], outer["payload"], padded))


def test_fail_non_canonical_base64url() -> None:
    outer = parts(GOOD)
    sig = outer["signature"]  # 64 bytes -> 86 chars: the last char carries 2 unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    bumped = sig[:-1] + alphabet[alphabet.index(sig[-1]) ^ 1]
    with pytest.raises(MalformedInput, match="canonical"):
        verify(container(outer["protected"], outer["payload"], bumped))


def test_fail_oversize() -> None:
    from ztpki.protocol import manifest as module

    with pytest.raises(MalformedInput, match="larger"):
        verify(b" " * (module.MAX_MANIFEST_BYTES + 1))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        pytest.param({"alg": "none"}, "'none'", id="fail-alg-none"),
        pytest.param({"alg": "NONE"}, "'none'", id="fail-alg-none-upper"),
        pytest.param({"alg": "HS256"}, "not supported", id="fail-alg-hmac"),
        pytest.param({"alg": 5}, "not a string", id="fail-alg-type"),
        pytest.param({"crit": ["exp"]}, "crit", id="fail-crit"),
        pytest.param({"jku": "https://evil.example/"}, "unknown member", id="fail-jku"),
        pytest.param({"typ": "JWT"}, "typ", id="fail-typ"),
        pytest.param({"x5c": []}, "x5c", id="fail-x5c-empty"),
        pytest.param({"x5c": "MIIB"}, "x5c", id="fail-x5c-string"),
        pytest.param({"x5c": ["not base64!"]}, "base64", id="fail-x5c-base64"),
        pytest.param({"x5c": ["AAAA"]}, "DER", id="fail-x5c-der"),
        pytest.param({"x5c": ["QUJD" * 2] * 9}, "x5c", id="fail-x5c-too-long"),
    ],
)
def test_fail_bad_header(edit: dict[str, Any], match: str) -> None:
    with pytest.raises(MalformedInput, match=match):
        verify(forge(header(**edit), compact({})))


def test_fail_missing_alg() -> None:
    h = header()
    del h["alg"]
    with pytest.raises(MalformedInput, match="lacks member 'alg'"):
        verify(forge(h, compact({})))


def _payload(**kw: Any) -> bytes:
    base = json.loads(unb64u(parts(GOOD)["payload"]))
    base.update(kw)
    return compact(base)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        pytest.param(_payload(version=2), "version", id="fail-version"),
        pytest.param(_payload(version=True), "version", id="fail-version-bool"),
        pytest.param(_payload(extra=1), "unknown member", id="fail-unknown-member"),
        pytest.param(_payload(devices={}), "not a list", id="fail-devices-object"),
        pytest.param(_payload(devices=[1]), "entry", id="fail-entry-type"),
        pytest.param(_payload(issued_at="2025-06-01 12:00"), "UTC time", id="fail-time-format"),
        pytest.param(
            _payload(issued_at="2025-13-01T12:00:00Z"), "valid date", id="fail-time-value"
        ),
        pytest.param(_payload(manufacturer=""), "manufacturer", id="fail-empty-manufacturer"),
        pytest.param(_payload(batch=7), "batch", id="fail-batch-type"),
        pytest.param(_payload(manifest_id="a b"), "manifest id", id="fail-manifest-id"),
        pytest.param(b"[]", "object", id="fail-payload-array"),
        pytest.param(b"\xff", "UTF-8", id="fail-payload-utf8"),
    ],
)
def test_fail_bad_payload_even_when_signed(payload: bytes, match: str) -> None:
    with pytest.raises(MalformedInput, match=match):
        verify(forge(header(), payload))


def test_fail_duplicate_device_in_signed_payload() -> None:
    base = json.loads(unb64u(parts(GOOD)["payload"]))
    base["devices"].append(base["devices"][0])
    with pytest.raises(MalformedInput, match="twice"):
        verify(forge(header(), compact(base)))


def test_fail_bad_fingerprint_in_signed_payload() -> None:
    base = json.loads(unb64u(parts(GOOD)["payload"]))
    base["devices"][0]["temp_fingerprint"] = "AB" * 32
    with pytest.raises(MalformedInput, match="hex"):
        verify(forge(header(), compact(base)))


# --- building and signing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        pytest.param({"device_id": "bad id"}, ValueError, id="fail-device-id"),
        pytest.param({"temp_fingerprint": "ab"}, ValueError, id="fail-fingerprint-short"),
        pytest.param({"temp_fingerprint": "A" * 64}, ValueError, id="fail-fingerprint-upper"),
        pytest.param({"manufactured_at": datetime(2025, 1, 1)}, ValueError, id="fail-naive-time"),
        pytest.param({"manufactured_at": "2025-01-01"}, TypeError, id="fail-time-type"),
        pytest.param({"model": "a\nb"}, ValueError, id="fail-model-control"),
        pytest.param({"model": "x" * 129}, ValueError, id="fail-model-long"),
    ],
)
def test_entry_validation(kw: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        entry(1, **kw)


def test_manifest_refuses_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="twice"):
        manifest(entries=(entry(1), entry(1)))
    assert manifest(entries=(entry(1), entry(2))).device_ids() == (
        "ACME-B1-000001",
        "ACME-B1-000002",
    )


def test_sign_refuses_key_not_matching_chain() -> None:
    other_key, _ = leaf(PKI.manifests, "other", CertificateProfile.MANIFEST_SIGNER)
    with pytest.raises(ConfigurationError, match="does not match"):
        sign_manifest(manifest(), key=other_key, chain=SIGNER_CHAIN)
    with pytest.raises(ConfigurationError, match="chain"):
        sign_manifest(manifest(), key=SIGNER_KEY, chain=())


# --- CSV ---------------------------------------------------------------------------------------


def test_csv_view() -> None:
    m = manifest(count=2)
    lines = manifest_csv(m).splitlines()
    assert lines[0] == "device_id,temp_fingerprint_sha256,model,batch,manufactured_at"
    assert lines[1] == f"ACME-B1-000000,{0:064x},M1,B1,2025-06-01T12:00:00Z"
    assert len(lines) == 3


def test_csv_neutralises_formulas() -> None:
    m = manifest(entries=(entry(1, model="=HYPERLINK(1)", device_id="-1"), entry(2, model="M,2")))
    lines = manifest_csv(m).splitlines()
    assert lines[1].startswith("'-1,") and ",'=HYPERLINK(1)," in lines[1]
    assert ',"M,2",' in lines[2]  # control: ordinary text is only quoted


# --- property tests ----------------------------------------------------------------------------

_ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
_text = st.text(
    st.characters(
        blacklist_categories=("Cs",), blacklist_characters="".join(map(chr, range(32))) + "\x7f"
    ),
    min_size=1,
    max_size=128,
)
_instants = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
)
_entries = st.builds(
    ManifestEntry,
    device_id=_ids,
    temp_fingerprint=st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    model=st.none() | _text,
    batch=st.none() | _text,
    manufactured_at=_instants,
)
_manifests = st.builds(
    Manifest,
    manifest_id=_ids,
    manufacturer=_text,
    batch=st.none() | _text,
    order=st.none() | _text,
    issued_at=_instants,
    entries=st.lists(_entries, max_size=5, unique_by=lambda e: e.device_id).map(tuple),
)


@settings(max_examples=60, deadline=None)
@given(_manifests)
def test_property_round_trip(m: Manifest) -> None:
    assert verify(sign_manifest(m, key=SIGNER_KEY, chain=SIGNER_CHAIN)) == m


@pytest.mark.fuzz
@settings(
    max_examples=int(os.environ.get("ZTPKI_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.data())
def test_property_mutation_never_verifies(data: st.DataObject) -> None:
    original = bytearray(GOOD)
    kind = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
    pos = data.draw(st.integers(0, len(original) - 1))
    if kind == "flip":
        original[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "set":
        original[pos] = data.draw(st.integers(0, 255).filter(lambda b: b != GOOD[pos]))
    elif kind == "insert":
        original.insert(pos, data.draw(st.integers(0, 255)))
    elif kind == "delete":
        del original[pos]
    else:
        del original[pos:]
    mutated = bytes(original)
    assert mutated != GOOD
    with pytest.raises((MalformedInput, VerificationFailed)):
        verify(mutated)


def test_replace_is_frozen_dataclass() -> None:
    m = manifest()
    assert replace(m, order=None).order is None
    with pytest.raises(AttributeError):
        m.order = "x"  # type: ignore[misc]
