"""The manifest read in pieces (``manifest_stream``): what only a reader in passes can meet.

Every case of test_manifest.py runs through this reader as well (its ``verify`` compares
both readers); here: a file that changes between the passes, limits a reader in pieces
must keep by itself, and the entries coming one by one, each checked as it comes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from factory_pki import NOW, FactoryPKI, factory_pki, leaf

from ztpki.errors import MalformedInput, VerificationFailed
from ztpki.pki.device_ids import DeviceIdNamespace
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol import manifest_stream
from ztpki.protocol.manifest import (
    Manifest,
    ManifestEntry,
    ManufacturerTrust,
    new_manifest_id,
    sign_manifest,
)
from ztpki.protocol.manifest_stream import check_manifest_file, manifest_file_entries

PKI: FactoryPKI = factory_pki()
KEY, CHAIN = leaf(PKI.manifests, "line1-signer", CertificateProfile.MANIFEST_SIGNER)
TRUST = ManufacturerTrust("Acme", PKI.anchors, DeviceIdNamespace.parse(["ACME-*"]))


def manifest(*ids: str) -> Manifest:
    entries = tuple(
        ManifestEntry(i, f"{n:064x}", "M1", None, NOW - timedelta(minutes=n))
        for n, i in enumerate(ids)
    )
    return Manifest(new_manifest_id(), "Acme", "B1", None, NOW, entries)


def reader(*files: bytes, piece: int = 1000) -> manifest_stream.ReadFile:
    """Each call reads the next of ``files`` (the last one again and again)."""
    calls = iter(files)
    current = [files[0]]

    def read() -> Iterator[bytes]:
        data = next(calls, current[0])
        current[0] = data
        return (data[i : i + piece] for i in range(0, len(data), piece))

    return read


IDS = [f"ACME-{n:04d}" for n in range(50)]
DATA = sign_manifest(manifest(*IDS), key=KEY, chain=CHAIN)


@pytest.mark.parametrize("piece", [1, 3, 4, 5, 64, 1 << 20], ids=lambda p: f"ok-pieces-of-{p}")
def test_ok_entries_in_file_order_whatever_the_pieces(piece: int) -> None:
    read = reader(DATA, piece=piece)
    checked = check_manifest_file(read, manufacturers=[TRUST], now=NOW)
    assert (checked.device_count, checked.manifest.manufacturer) == (len(IDS), "Acme")
    assert checked.manifest.entries == ()  # they stream through the second pass
    assert [e.device_id for e in manifest_file_entries(read, checked)] == IDS


def test_fail_file_replaced_after_the_check_is_refused_after_its_last_entry() -> None:
    other = sign_manifest(manifest(*IDS[:3]), key=KEY, chain=CHAIN)  # genuine, but not the one
    read = reader(DATA, DATA, other)
    checked = check_manifest_file(read, manufacturers=[TRUST], now=NOW)
    streamed = manifest_file_entries(read, checked)
    got = [next(streamed).device_id for _ in range(3)]
    assert got == IDS[:3]
    with pytest.raises(MalformedInput, match="changed while it was read"):
        next(streamed)  # a consumer storing all or nothing keeps none of the three


def test_fail_file_replaced_during_the_check() -> None:
    forged = DATA.replace(b'"payload":"', b'"payload":"e', 1)
    with pytest.raises(MalformedInput, match="changed while it was read"):
        check_manifest_file(reader(DATA, forged), manufacturers=[TRUST], now=NOW)
    # Negative control: the same file twice verifies.
    check_manifest_file(reader(DATA, DATA), manufacturers=[TRUST], now=NOW)


def test_fail_late_id_outside_the_namespace_is_refused_as_it_comes() -> None:
    data = sign_manifest(manifest(*IDS, "GLX-1"), key=KEY, chain=CHAIN)
    read = reader(data)
    checked = check_manifest_file(read, manufacturers=[TRUST], now=NOW)
    streamed = manifest_file_entries(read, checked)
    assert [next(streamed).device_id for _ in IDS] == IDS
    with pytest.raises(VerificationFailed, match="GLX-1 outside manufacturer Acme's namespace"):
        next(streamed)


def test_fail_more_entries_than_a_manifest_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_stream, "MAX_ENTRIES", len(IDS) - 1)
    with pytest.raises(MalformedInput, match=f"more than {len(IDS) - 1} devices"):
        check_manifest_file(reader(DATA), manufacturers=[TRUST], now=NOW)


def test_fail_value_longer_than_the_reader_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_stream, "_MAX_VALUE_CHARS", 100)
    with pytest.raises(MalformedInput, match="longer than 100 characters"):
        check_manifest_file(reader(DATA, piece=7), manufacturers=[TRUST], now=NOW)


def test_fail_file_larger_than_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_stream, "MAX_MANIFEST_FILE_BYTES", len(DATA) - 1)
    with pytest.raises(MalformedInput, match="larger than"):
        check_manifest_file(reader(DATA), manufacturers=[TRUST], now=NOW)
