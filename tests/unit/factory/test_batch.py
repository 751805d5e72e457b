"""Production batches with one outside CA-client, against an in-memory CA."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
from pathlib import Path

import pytest
from device_snapshot import snapshot
from factory_pki import NOW, factory_pki
from fake_ca import FakeCA, issue_answer, swap_certificate

from ztpki.device import DeviceMemory, Phase
from ztpki.device import memory as memory_module
from ztpki.errors import ConfigurationError, NotAuthorized, Unavailable
from ztpki.factory.answer import accept_answer
from ztpki.factory.batch import (
    LOCK,
    STAGING,
    BatchReport,
    Manufacturer,
    Outcome,
    ProductionBatch,
    device_ids,
)
from ztpki.factory.configuration import CAClientConfig
from ztpki.factory.shipping import build_manifest, collect_entries
from ztpki.pki.pem import fingerprint_sha256
from ztpki.protocol.enrollment import EnrollmentRequest

PKI = factory_pki()
IDS = device_ids("ACME-{batch}-{n:03d}", count=12, batch="B1")


def production(out: Path, ids=IDS, **kw) -> ProductionBatch:
    kw.setdefault("trust", PKI.anchors)
    return ProductionBatch(
        out=out,
        device_ids=tuple(ids),
        ca=CAClientConfig("127.0.0.1:7443", out.parent / "cred"),
        model="M1",
        batch="B1",
        clock=lambda: NOW,
        **kw,
    )


def run(batch: ProductionBatch, ca: FakeCA, concurrency: int = 4) -> BatchReport:
    seen = []
    report = asyncio.run(
        Manufacturer(batch, ca, concurrency=concurrency, on_result=seen.append).run()  # type: ignore[arg-type]
    )
    assert sorted(r.device_id for r in seen) == sorted(batch.device_ids)
    return report


def outcomes(report: BatchReport) -> dict[str, Outcome]:
    return {r.device_id: r.outcome for r in report.results}


def test_ok_batch_then_rerun_skips(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ca = FakeCA(PKI)
    report = run(production(out), ca)
    assert set(outcomes(report).values()) == {Outcome.MADE}
    assert report.rate > 0
    for device_id in IDS:
        memory = DeviceMemory.open(out / device_id)
        identity = memory.identity()
        assert identity.phase is Phase.TEMPORARY
        assert memory.device_id == device_id
        assert memory.trust_anchors() == list(PKI.anchors)
        assert memory.config()["batch"] == "B1"
    assert list((out / STAGING).iterdir()) == []
    before = snapshot(out)
    again = run(production(out), ca)
    assert set(outcomes(again).values()) == {Outcome.SKIPPED}
    assert len(ca.requests) == len(IDS)  # nothing new asked of the CA
    assert snapshot(out) == before


def test_ok_reissue_replaces_every_identity(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ca = FakeCA(PKI)
    run(production(out, IDS[:3]), ca)
    old = {d: DeviceMemory.open(out / d).identity().certificate for d in IDS[:3]}
    report = run(production(out, IDS[:3], reissue=True), ca)
    assert set(outcomes(report).values()) == {Outcome.MADE}
    assert all(r.reissue for r in ca.requests[3:])
    for d in IDS[:3]:
        identity = DeviceMemory.open(out / d).identity()
        assert identity.certificate != old[d] and identity.generation == 2


def test_failed_device_then_retried_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    bad = IDS[4]
    ca = FakeCA(PKI, fail={bad: Unavailable("connection to CA system reset")})
    report = run(production(out), ca)
    failed = report.of(Outcome.FAILED)
    assert [r.device_id for r in failed] == [bad]
    assert failed[0].detail == f"device {bad}: connection to CA system reset"
    assert not (out / bad).exists()
    assert len(report.of(Outcome.MADE)) == len(IDS) - 1
    del ca.fail[bad]
    retry = run(production(out, [bad]), ca)
    assert outcomes(retry) == {bad: Outcome.MADE}


def test_ca_refuses_second_live_certificate(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ca = FakeCA(PKI, live={IDS[0]: "earlier"})
    report = run(production(out, IDS[:2]), ca)
    assert outcomes(report) == {IDS[0]: Outcome.FAILED, IDS[1]: Outcome.MADE}
    assert "already holds live certificate" in report.of(Outcome.FAILED)[0].detail
    assert not (out / IDS[0]).exists()


def test_fail_answer_for_another_device_is_not_stored(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ca = FakeCA(PKI, tamper=swap_certificate(PKI, name="EVIL-1"))
    report = run(production(out, IDS[:2]), ca)
    assert set(outcomes(report).values()) == {Outcome.FAILED}
    assert all("names 'EVIL-1'" in r.detail for r in report.results)
    assert sorted(p.name for p in out.iterdir()) == sorted([STAGING, LOCK])
    assert list((out / STAGING).iterdir()) == []


def test_fail_corrupt_or_foreign_directories_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    DeviceMemory.create(out / IDS[0], device_id=IDS[0])
    (out / IDS[0] / "identity.json").write_text("garbage")
    (out / IDS[1]).mkdir()
    (out / IDS[1] / "notes.txt").write_text("not a device")
    DeviceMemory.create(out / IDS[2], device_id="SOMEONE-ELSE")
    before = snapshot(out)
    ca = FakeCA(PKI)
    report = run(production(out, IDS[:3]), ca)
    details = {r.device_id: r.detail for r in report.of(Outcome.FAILED)}
    assert "identity.json is not valid JSON" in details[IDS[0]]
    assert "not a device memory" in details[IDS[1]]
    assert "holds device SOMEONE-ELSE" in details[IDS[2]]
    assert ca.requests == []
    after = snapshot(out)
    assert {k: v for k, v in after.items() if not k.startswith(".")} == {
        k: v for k, v in before.items() if not k.startswith(".")
    }


def test_ok_existing_blank_device_is_filled(tmp_path: Path) -> None:
    out = tmp_path / "out"
    DeviceMemory.create(out / IDS[0], device_id=IDS[0])
    report = run(production(out, IDS[:1]), FakeCA(PKI))
    assert outcomes(report) == {IDS[0]: Outcome.MADE}
    assert DeviceMemory.open(out / IDS[0]).phase is Phase.TEMPORARY


def test_fail_full_disk_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    real = memory_module.write_atomic

    def full_disk(target: Path, data: bytes, **kw) -> None:
        if target.name == "identity.json" and b"ENCRYPTED PRIVATE KEY" in data:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(target, data, **kw)

    monkeypatch.setattr(memory_module, "write_atomic", full_disk)
    report = run(production(out, IDS[:2]), FakeCA(PKI))
    assert all("No space left on device" in r.detail for r in report.results)
    assert all(r.detail.startswith(f"device {r.device_id}: ") for r in report.results)
    assert not any((out / d).exists() for d in IDS[:2])
    assert list((out / STAGING).iterdir()) == []


def test_interrupted_run_is_finished_not_repeated(tmp_path: Path) -> None:
    """A staged device with a complete identity (crash before the rename) gets published."""
    out = tmp_path / "out"
    staged = out / STAGING / f"{IDS[0]}.deadbeef"
    memory = DeviceMemory.create(staged, device_id=IDS[0])
    request = EnrollmentRequest(request_id="r0", device_id=IDS[0])
    accepted = accept_answer(
        issue_answer(PKI.factory, request), device_id=IDS[0], anchors=PKI.anchors, now=NOW
    )
    memory.replace_identity(
        phase=Phase.TEMPORARY,
        private_key=accepted.private_key,
        certificate=accepted.certificate,
        ca_certificates=accepted.ca_certificates,
    )
    DeviceMemory.create(out / STAGING / f"{IDS[1]}.cafe", device_id=IDS[1])  # still blank
    ca = FakeCA(PKI)
    report = run(production(out, IDS[:2]), ca)
    assert outcomes(report) == {IDS[0]: Outcome.SKIPPED, IDS[1]: Outcome.MADE}
    assert [r.device_id for r in ca.requests] == [IDS[1]]
    published = DeviceMemory.open(out / IDS[0]).identity().certificate
    assert fingerprint_sha256(published) == fingerprint_sha256(accepted.certificate)
    assert list((out / STAGING).iterdir()) == []


def test_one_run_per_output_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ConfigurationError, match="another `factory manufacture` run"):
            run(production(out, IDS[:1]), FakeCA(PKI))
    finally:
        os.close(fd)
    assert outcomes(run(production(out, IDS[:1]), FakeCA(PKI))) == {IDS[0]: Outcome.MADE}


def test_fail_duplicate_ids_in_batch(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="twice"):
        production(tmp_path, ["A", "A"])


def test_manifest_from_batch(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ca = FakeCA(PKI, fail={IDS[1]: NotAuthorized("no")})
    run(production(out, IDS[:4]), ca)
    DeviceMemory.create(out / "BLANK-1", device_id="BLANK-1")
    entries, skipped = collect_entries(out, batch="B1")
    assert [e.device_id for e in entries] == [IDS[0], IDS[2], IDS[3]]
    assert [s.path.name for s in skipped] == ["BLANK-1"]
    for entry in entries:
        cert = DeviceMemory.open(out / entry.device_id).identity().certificate
        assert entry.temp_fingerprint == fingerprint_sha256(cert)
        assert entry.model == "M1" and entry.batch == "B1" and entry.manufactured_at == NOW
    assert collect_entries(out, batch="B2")[0] == []
    manifest = build_manifest(
        reversed(entries), manufacturer="Acme", batch="B1", order=None, now=NOW
    )
    assert manifest.device_ids() == (IDS[0], IDS[2], IDS[3])
