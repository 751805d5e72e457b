"""Concurrency and faults: a burst of simultaneous enrollments for one device, the customer CA
system and the node killed with SIGKILL in the middle of their work, and a full disk while a
device replaces its identity.

Afterwards every device involved holds exactly one live certificate at the customer CA, the
one its register entry and (once customized) its memory hold; no state is lost, and the
services serve the next device.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import shutil
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.attacks.attack_deployment import (
    NODE_LIMITS,
    Deployment,
    DeviceUnderTest,
    wait_until,
)
from tests.attacks.attack_report import AttackReport
from tests.attacks.attack_wire import Observed, https_context

from ztpki.device.activation import ActivatingClient, ActivationError, KeyMode
from ztpki.device.communication import NodeAddress
from ztpki.device.memory import DeviceMemory, Phase
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.pem import serial_hex
from ztpki.protocol.est import build_csr, decode_certs_only, decode_serverkeygen, encode_csr

pytestmark = pytest.mark.timeout(240)

CATEGORY = "faults"
BURST = 200


# --- a burst of simultaneous requests -----------------------------------------------------------


async def _read_answer(reader: asyncio.StreamReader) -> Observed:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ssl.SSLError, OSError) as exc:
        return Observed(None, f"{type(exc).__name__}")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    body = await reader.readexactly(int(headers.get("Content-Length", "0")))
    text = body.decode("utf-8", "replace") if int(lines[0].split()[1]) != 200 else ""
    return Observed(int(lines[0].split()[1]), text, headers, body)


def burst(
    d: Deployment, device: DeviceUnderTest, operation: str, bodies: list[bytes]
) -> list[Observed]:
    """Open one TLS connection per body first, then send every request at once."""
    context = https_context(key=device.key, chain=[device.certificate], anchors=d.node_anchors)
    host, port = d.node_address

    async def run() -> list[Observed]:
        slots = asyncio.Semaphore(64)

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            async with slots:
                return await asyncio.open_connection(host, port, ssl=context, server_hostname=host)

        connections = await asyncio.gather(*(connect() for _ in bodies))
        for (_, writer), body in zip(connections, bodies, strict=True):
            writer.write(
                (
                    f"POST /.well-known/est/{operation} HTTP/1.1\r\nHost: {host}\r\n"
                    "Content-Type: application/pkcs10\r\nContent-Transfer-Encoding: base64\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
        answers = await asyncio.gather(*(_read_answer(reader) for reader, _ in connections))
        for _, writer in connections:
            writer.close()
        return list(answers)

    answers = asyncio.run(run())
    for answer in answers:
        if answer.status != 200:
            d.transcript.add(f"burst {operation}", answer.summary())
    return answers


def _certificate_of(answer: Observed, operation: str) -> str:
    if operation == "simpleenroll":
        return serial_hex(decode_certs_only(answer.body)[0])

    return serial_hex(
        decode_serverkeygen(answer.headers["Content-Type"], answer.body).certificates[0]
    )


@pytest.mark.parametrize(
    ("operation", "same_key"),
    [
        pytest.param("simpleenroll", True, id="ok-simpleenroll-one-csr"),
        pytest.param("serverkeygen", False, id="ok-serverkeygen"),
    ],
)
def test_survived_simultaneous_enrollments(
    deployment: Deployment, attack_report: AttackReport, operation: str, same_key: bool
) -> None:
    d = deployment
    device = d.take_device()
    before = d.snapshot()
    if same_key:
        one = encode_csr(
            build_csr(generate_private_key(KeySpec.EC_P256), device_id=device.device_id)
        )
        bodies = [one] * BURST
    else:
        bodies = [encode_csr(build_csr(device.key, device_id=device.device_id))] * BURST
    answers = burst(d, device, operation, bodies)
    statuses = Counter(a.status for a in answers)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] >= 1, statuses
    assert all(a.headers.get("Retry-After") for a in answers if a.status == 503)
    handed_out = {_certificate_of(a, operation) for a in answers if a.status == 200}
    live = d.live_serials("customer", device.device_id)
    row = d.device_row(device.device_id)
    assert row is not None and row[0] == "issued", row
    assert live == [row[1]], (live, row)
    assert row[1] in handed_out
    after = d.snapshot()
    issued = after.customer_issued - before.customer_issued
    decisions = Counter(a.decision for a in d.audit_since(before.audit_seq))
    assert decisions["issued"] == issued and decisions["deferred"] == statuses[503], decisions
    if same_key:
        # One key: the first request is issued, every later one gets the same certificate.
        assert issued == 1 and handed_out == set(live), (issued, handed_out)
        outcome = (
            "every request answered 200 with the same certificate or 503 with Retry-After "
            "(issuance in progress); exactly one certificate issued"
        )
    else:
        assert issued == len(handed_out), (issued, handed_out)
        outcome = (
            "every request answered 200 or 503 with Retry-After; each 200 issued a new key "
            "and certificate that superseded the previous one"
        )
    # The device itself then customizes normally and ends with one live certificate.
    result = d.activate(device)
    assert d.live_serials("customer", device.device_id) == [result.serial]
    attack_report.record(
        case=f"{CATEGORY}/simultaneous-{operation}",
        category=CATEGORY,
        attack=(
            f"{BURST} {operation} requests for one device, each on its own TLS connection, "
            "sent at the same instant"
            + (" (one CSR, as a device retrying a lost answer)" if same_key else "")
        ),
        observed=(
            f"{outcome}; exactly one live certificate at the customer CA, the one the register "
            "holds; every issuance and deferral audited; the device then customized with one "
            f"live certificate; {d.serve_next_device()}"
        ),
        verdict="survived",
    )


# --- the customer CA system killed mid-request ---------------------------------------------


def _in_background(call: Callable[[], Observed]) -> tuple[threading.Thread, list[Observed]]:
    out: list[Observed] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


def test_survived_ca_system_killed_mid_request(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    csr = encode_csr(build_csr(generate_private_key(KeySpec.EC_P256), device_id=device.device_id))

    def enroll() -> Observed:
        return d.est("simpleenroll", key=device.key, chain=[device.certificate], body=csr)

    before = d.snapshot()
    d.pause("customer")  # holds the request inside the CA system
    try:
        thread, result = _in_background(enroll)
        assert wait_until(lambda: d.device_row(device.device_id)[0] == "issuing", timeout=5)  # type: ignore[index]
        port = d.kill("customer")
    finally:
        d.resume("customer")
    thread.join(timeout=30)
    in_flight = result[0]
    while_down = enroll()
    assert in_flight.status == 503 and in_flight.headers.get("Retry-After"), in_flight.summary()
    # The socket error after "cannot reach" (reset, refused) depends on timing; the rest not.
    assert "cannot reach CA system" in in_flight.text, in_flight.text
    assert while_down.status == 503 and while_down.headers.get("Retry-After"), while_down.summary()
    checked = d.check_unchanged(
        before,
        audited=[(device.device_id, "deferred", ""), (device.device_id, "deferred", "")],
    )
    d.serve_ca("customer", port=port)
    issued = d.issued_by_operator("customer")
    assert [r for r in issued if r["device_id"] == device.device_id] == []
    result_after = d.activate(device)
    assert d.live_serials("customer", device.device_id) == [result_after.serial]
    attack_report.record(
        case=f"{CATEGORY}/ca-system-killed-mid-request",
        category=CATEGORY,
        attack=(
            "the customer CA system SIGKILLed while it holds a device's request (stopped "
            "first, so the kill lands mid-request), then restarted on its port"
        ),
        observed=(
            "the device in flight got HTTP 503 with Retry-After: 'cannot reach CA system "
            "HOST:PORT: (the socket error)'; a retry while the CA system was "
            f"down got HTTP {while_down.status} with Retry-After; {checked}; after the restart "
            "the device's retry customized it with exactly one live certificate; "
            + d.serve_next_device()
        ),
        verdict="survived",
    )


# --- the node killed mid-transaction ---------------------------------------------------------


def _activate_with_retries(d: Deployment, device: DeviceUnderTest, *, deadline: float) -> str:
    """What a device's agent does: retry after the advised delay until customized."""
    node = NodeAddress.parse(f"https://{d.node.host}:{d.node.port}")
    while True:
        client = ActivatingClient(device.memory(), node, key_mode=KeyMode.SIMPLEENROLL, timeout=30)
        try:
            return asyncio.run(client.activate()).serial
        except ActivationError as exc:
            if not exc.retryable or time.monotonic() > deadline:
                raise
            time.sleep(min(exc.retry_after or 1, 2))  # the device's retry pacing


def test_survived_node_killed_mid_transaction(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    devices = [d.take_device() for _ in range(10)]
    ids = {device.device_id for device in devices}
    before = d.snapshot()
    csrs = {
        device.device_id: encode_csr(
            build_csr(generate_private_key(KeySpec.EC_P256), device_id=device.device_id)
        )
        for device in devices
    }
    d.pause("customer")  # every issuance stays in flight until the node is gone
    try:
        threads = [
            _in_background(
                lambda device=device: d.est(  # type: ignore[misc]
                    "simpleenroll",
                    key=device.key,
                    chain=[device.certificate],
                    body=csrs[device.device_id],
                )
            )[0]
            for device in devices
        ]
        in_flight = wait_until(
            lambda: all(d.device_row(i)[0] == "issuing" for i in ids),  # type: ignore[index]
            timeout=NODE_LIMITS["ca_timeout"] * 0.8,
        )
        port = d.kill("node")
    finally:
        d.resume("customer")
    for thread in threads:
        thread.join(timeout=30)
    stuck = [i for i in ids if d.device_row(i)[0] == "issuing"]  # type: ignore[index]
    assert in_flight and len(stuck) == len(ids), (in_flight, stuck)
    others = {k: v for k, v in before.register.items() if k not in ids}
    d.serve_node(port=port)
    early = d.est(
        "simpleenroll",
        key=devices[0].key,
        chain=[devices[0].certificate],
        body=csrs[devices[0].device_id],
    )
    # The dead node's leases name it (this machine, its pid and start time): the restarted
    # node takes them over at once instead of answering "in progress" until they expire.
    assert early.status == 200, early.summary()
    deadline = time.monotonic() + NODE_LIMITS["lease_seconds"] + 30
    serials = {
        device.device_id: _activate_with_retries(d, device, deadline=deadline) for device in devices
    }
    after = d.snapshot()
    for device in devices:
        assert device.memory().phase is Phase.CUSTOMIZED
        assert d.live_serials("customer", device.device_id) == [serials[device.device_id]]
        assert after.register[device.device_id][:2] == ("customized", serials[device.device_id])
    assert {k: v for k, v in after.register.items() if k in others} == others
    records = [r for r in d.issued_by_operator("customer") if r["device_id"] in ids]
    for device_id in ids:
        statuses = Counter(r["status"] for r in records if r["device_id"] == device_id)
        # What the dead node obtained is superseded, and revoked by the node that took over.
        assert statuses["active"] == 1, statuses
        assert set(statuses) <= {"active", "superseded", "revoked"}, statuses
    lost = len(records) - len(ids)  # issued by the CA system for requests of the dead node
    took_over = [a for a in d.audit_since(before.audit_seq) if "lease expired" in a.reason]
    assert {a.device_id for a in took_over} == ids, took_over
    assert d.audit_verifies()
    attack_report.record(
        case=f"{CATEGORY}/node-killed-mid-transaction",
        category=CATEGORY,
        attack=(
            "the node SIGKILLed while 10 devices' enrollments are in flight (all 10 in state "
            "issuing, their requests inside the CA system), then restarted on its port"
        ),
        observed=(
            f"right after the restart a retry got HTTP {early.status} with its certificate: the "
            "dead node's leases "
            "name it, so the restarted node took them over at once, without waiting for them "
            "to expire (audited 'took over an issuance whose lease expired or whose holder was "
            "killed'); whatever the CA system had issued for the dead "
            "node's requests was superseded, never left live; all 10 devices customized, each "
            "with exactly one live "
            "certificate matching register and memory; the other devices' entries unchanged; "
            f"the audit chain verifies; {d.serve_next_device()}"
        ),
        verdict="survived",
    )
    d.transcript.add("node kill", f"certificates issued for the dead node's requests: {lost}")


# --- a full disk while the device replaces its identity -----------------------------------


@contextlib.contextmanager
def _small_disk(parent: Path) -> Iterator[Path | None]:
    """A 64 KiB tmpfs (a real full disk), or None where mounting is not permitted."""
    mount = parent / "tiny-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        mount.rmdir()
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        with contextlib.suppress(OSError):
            mount.rmdir()


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 512)
    return filler


def _activate_memory(d: Deployment, memory: DeviceMemory) -> Any:
    node = NodeAddress.parse(f"https://{d.node.host}:{d.node.port}")
    client = ActivatingClient(memory, node, key_mode=KeyMode.SIMPLEENROLL, timeout=30)
    return asyncio.run(client.activate())


def _refused_on_full_disk(
    d: Deployment, device: DeviceUnderTest, memory: DeviceMemory, working: Path, temp_serial: str
) -> str:
    """Activation fails with ENOSPC; the device keeps its temporary identity whole, and the
    node holds at most the one certificate it issued (if the request went out at all)."""
    with pytest.raises(ActivationError) as refused:
        _activate_memory(d, memory)
    error = refused.value
    d.transcript.add("full disk", error.message)
    step = error.step.value
    assert step in ("request", "replace") and "No space left" in error.message, error.message
    kept = DeviceMemory.open(working).identity()
    assert kept.phase is Phase.TEMPORARY and serial_hex(kept.certificate) == temp_serial  # type: ignore[arg-type]
    assert not list(working.glob("*.tmp")), "a half-written file was left behind"
    row = d.device_row(device.device_id)
    live = d.live_serials("customer", device.device_id)
    if step == "request":  # the device could not keep its new key, so it sent nothing
        assert row is not None and row[0] == "listed" and live == [], (row, live)
        held = "nothing was sent or issued"
    else:
        assert row is not None and row[0] == "issued" and live == [row[1]], (row, live)
        held = "the node held the issued, unconfirmed certificate as the only live one"
    found = re.search(r"cannot write [^;]+; the previous content is unchanged", error.message)
    assert found, error.message
    return f"failed at step {step}: '{found.group()}'; {held}"


def test_survived_full_disk_during_identity_replacement(
    deployment: Deployment, attack_report: AttackReport, tmp_path: Path
) -> None:
    d = deployment
    device = d.take_device()
    temp_serial = serial_hex(device.certificate)
    observed = []
    with _small_disk(tmp_path) as disk:
        if disk is not None:
            working = disk / device.device_id
            shutil.copytree(device.path, working)
            filler = _fill(disk)
            outcome = _refused_on_full_disk(
                d, device, DeviceMemory.open(working), working, temp_serial
            )
            observed.append(f"on a 64 KiB tmpfs filled to the last byte, activation {outcome}")
            filler.unlink()
        else:
            working = device.path
            observed.append("(a tmpfs cannot be mounted here: only the injected ENOSPC ran)")

        def identity_write_fails(step: str) -> None:
            # ENOSPC exactly when the new identity file is written, after everything else was.
            if step == "tmp-open" and any(working.glob("identity.json.*.tmp")):
                raise OSError(errno.ENOSPC, "No space left on device")

        memory = DeviceMemory.open(working, _fault_hook=identity_write_fails)
        outcome = _refused_on_full_disk(d, device, memory, working, temp_serial)
        assert outcome.startswith("failed at step replace")
        observed.append(f"with ENOSPC injected on the identity file itself, activation {outcome}")
        undelivered = d.device_row(device.device_id)[1]  # type: ignore[index]
        # Space is back: the device retries.
        result = _activate_memory(d, DeviceMemory.open(working))
        if disk is not None:
            shutil.rmtree(device.path)
            shutil.copytree(working, device.path)
    assert device.memory().phase is Phase.CUSTOMIZED
    assert d.live_serials("customer", device.device_id) == [result.serial]
    assert d.device_row(device.device_id)[:2] == ("customized", result.serial)  # type: ignore[index]
    retry = (
        "the node delivered the same certificate again (the device had kept the key it sent)"
        if result.serial == undelivered
        else "the node issued anew, superseding the undelivered certificate"
    )
    attack_report.record(
        case=f"{CATEGORY}/full-disk-during-identity-replacement",
        category=CATEGORY,
        attack=(
            "the device's disk is full while it customizes: when it stores its new key, and "
            "when it replaces its temporary identity with the answer it received"
        ),
        observed=(
            "; ".join(observed)
            + "; each time the device kept its temporary identity whole and left no partial "
            f"file; with space back the device retried and {retry}: customized with exactly "
            "one live certificate, the one register and memory hold; " + d.serve_next_device()
        ),
        verdict="survived",
    )
