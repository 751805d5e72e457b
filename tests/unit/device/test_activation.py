"""The activating client (33) and communication means (35) against an in-process EST node."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from tests.unit.device.fake_node import FakeNode, Pki, make_root, make_sub, serving

from ztpki.device import ActivatingClient, ActivationError, DeviceMemory, KeyMode, Phase, Step
from ztpki.device.activation import FaultInjector
from ztpki.device.communication import NodeAddress
from ztpki.device.customer_node import NodePin
from ztpki.errors import (
    MalformedInput,
    NotAuthorized,
    Unavailable,
    VerificationFailed,
)
from ztpki.pki.keys import keys_match
from ztpki.pki.pem import fingerprint_sha256, serial_hex

T = TypeVar("T")
STEPS = [s.value for s in Step]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after the fault point runs."""


def run(func: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await func()

    return asyncio.run(main())


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture
def memory(pki: Pki, tmp_path: Path) -> DeviceMemory:
    return pki.manufacture(tmp_path / "dev", "ACME-0001")


def client(memory: DeviceMemory, node: FakeNode, **kwargs: object) -> ActivatingClient:
    return ActivatingClient(memory, NodeAddress.parse(node.url), timeout=10, **kwargs)  # type: ignore[arg-type]


def temp_serial(memory: DeviceMemory) -> str:
    cert = memory.identity().certificate
    assert cert is not None
    return serial_hex(cert)


@pytest.mark.parametrize(
    "mode",
    [KeyMode.SERVERKEYGEN, KeyMode.SIMPLEENROLL],
    ids=["ok-serverkeygen", "ok-simpleenroll"],
)
def test_activation_customizes_and_confirms(pki: Pki, memory: DeviceMemory, mode: KeyMode) -> None:
    seen: list[str] = []
    temp = memory.identity()

    async def scenario() -> None:
        async with serving(pki) as node:
            activating = client(memory, node, key_mode=mode, report=lambda e: seen.append(e.step))
            result = await activating.activate()
            assert result.action == "activated"
            reg = node.registers["ACME-0001"]
            assert reg.state == "customized" and reg.live == {result.serial}
            ops = [c[0] for c in node.calls]
            assert ops == ["cacerts", mode.value, "csrattrs"]
            assert node.calls[-1][2] == result.serial  # confirmed by the NEW certificate

    run(scenario)
    identity = memory.identity()
    assert identity.phase is Phase.CUSTOMIZED
    assert identity.certificate is not None and identity.private_key is not None
    assert identity.certificate.issuer == pki.customer.certificate.subject
    assert keys_match(identity.private_key, identity.certificate.public_key())
    assert not keys_match(identity.private_key, temp.certificate.public_key())  # type: ignore[union-attr]
    assert {fingerprint_sha256(c) for c in identity.ca_certificates} == {
        fingerprint_sha256(pki.customer.certificate),
        fingerprint_sha256(pki.customer_root.certificate),
    }
    assert memory.config()["confirmed"] is True
    assert memory.config()["node_url"].startswith("https://127.0.0.1:")
    assert [s for s in STEPS if s in seen] == STEPS
    assert seen.index("replace") < seen.index("confirm")


def test_ok_confirms_with_cacerts_where_the_node_has_no_csr_attributes(
    pki: Pki, memory: DeviceMemory
) -> None:
    """RFC 7030 4.5.2: 404 to csrattrs means "no attributes"; an EST server answering so is
    not refusing the certificate, and the device confirms with cacerts instead."""
    seen: list[str] = []

    async def scenario() -> None:
        async with serving(pki) as node:
            node.csrattrs_status = 404
            activating = client(memory, node, report=lambda e: seen.append(e.message))
            result = await activating.activate()
            assert [c[0] for c in node.calls][-2:] == ["csrattrs", "cacerts"]
            assert node.calls[-1][2] == result.serial
            assert node.registers["ACME-0001"].state == "customized"

    run(scenario)
    assert memory.config()["confirmed"] is True
    assert any("confirmed with cacerts instead" in m for m in seen)


@pytest.mark.parametrize("status", [403, 500])
def test_fail_csrattrs_refusal_other_than_404_is_not_confirmation(
    pki: Pki, memory: DeviceMemory, status: int
) -> None:
    async def scenario() -> None:
        async with serving(pki) as node:
            node.csrattrs_status = status
            with pytest.raises(ActivationError, match="step confirm failed"):
                await client(memory, node).activate()
            assert [c[0] for c in node.calls][-1] == "csrattrs"  # no fallback to cacerts

    run(scenario)
    assert memory.phase is Phase.CUSTOMIZED
    assert memory.config()["confirmed"] is False


def test_ok_temporary_certificate_refused_after_customization(
    pki: Pki, memory: DeviceMemory, tmp_path: Path
) -> None:
    """A copy of the temporary identity (e.g. a cloned device) gets 403 after customization."""
    clone = DeviceMemory.create(tmp_path / "clone", device_id="ACME-0001")
    temp = memory.identity()
    assert temp.private_key is not None and temp.certificate is not None
    clone.replace_identity(
        phase=Phase.TEMPORARY,
        private_key=temp.private_key,
        certificate=temp.certificate,
        ca_certificates=temp.ca_certificates,
    )
    clone.set_trust_anchors(memory.trust_anchors())

    async def scenario() -> None:
        async with serving(pki) as node:
            await client(memory, node).activate()
            with pytest.raises(ActivationError) as info:
                await client(clone, node).activate()
            assert info.value.step is Step.REQUEST and info.value.refused
            assert "temporary certificate is retired" in info.value.message

    run(scenario)
    assert clone.phase is Phase.TEMPORARY


def test_ok_rerun_after_customization_does_nothing(pki: Pki, memory: DeviceMemory) -> None:
    async def scenario() -> None:
        async with serving(pki) as node:
            first = await client(memory, node).activate()
            again = await client(memory, node).activate()
            assert again.action == "unchanged" and again.serial == first.serial
            assert [c[0] for c in node.calls].count("serverkeygen") == 1

    run(scenario)


def test_ok_customized_but_unconfirmed_only_confirms(pki: Pki, memory: DeviceMemory) -> None:
    async def scenario() -> None:
        async with serving(pki) as node:
            with pytest.raises(Killed):
                await client(
                    memory, node, fault=FaultInjector("after-replace", kill=_kill)
                ).activate()
            assert memory.phase is Phase.CUSTOMIZED and memory.config()["confirmed"] is False
            assert node.registers["ACME-0001"].state == "issued"
            result = await client(memory, node).activate()
            assert result.action == "confirmed"
            assert node.registers["ACME-0001"].state == "customized"
            assert [c[0] for c in node.calls].count("serverkeygen") == 1

    run(scenario)


def _kill() -> None:
    raise Killed


@pytest.mark.parametrize(
    "point", ["before-request", "after-answer", "mid-replace", "after-replace"]
)
def test_ok_killed_at_any_point_then_rerun_ends_with_one_live_certificate(
    pki: Pki, tmp_path: Path, point: str
) -> None:
    fault = FaultInjector(point, kill=_kill)
    memory = DeviceMemory.open(
        pki.manufacture(tmp_path / "dev", "ACME-0001").path, _fault_hook=fault.memory_hook
    )
    temp = temp_serial(memory)

    async def scenario() -> None:
        async with serving(pki) as node:
            with pytest.raises(Killed):
                await client(memory, node, fault=fault).activate()
            expected = Phase.CUSTOMIZED if point == "after-replace" else Phase.TEMPORARY
            reopened = DeviceMemory.open(memory.path)
            assert reopened.phase is expected
            if expected is Phase.TEMPORARY:
                assert temp_serial(reopened) == temp  # the old identity, whole
            result = await client(reopened, node).activate()
            reg = node.registers["ACME-0001"]
            assert reg.state == "customized" and reg.live == {result.serial}
            assert temp_serial(reopened) == result.serial

    run(scenario)


def test_fail_blocked_device_names_step_cause_and_remedy(pki: Pki, memory: DeviceMemory) -> None:
    before = temp_serial(memory)

    async def scenario() -> None:
        async with serving(pki) as node:
            node.register("ACME-0001").state = "blocked"
            with pytest.raises(ActivationError) as info:
                await client(memory, node).activate()
            error = info.value
            assert error.step is Step.REQUEST
            assert isinstance(error.cause, NotAuthorized)
            assert error.refused and error.exit_code == 3 and not error.retryable
            assert "device ACME-0001 is blocked in the customer register" in error.message
            assert "ztpki node" in error.remedy

    run(scenario)
    assert memory.phase is Phase.TEMPORARY and temp_serial(memory) == before


def test_fail_busy_node_is_retryable_with_retry_after(pki: Pki, memory: DeviceMemory) -> None:
    async def scenario() -> None:
        async with serving(pki) as node:
            node.queued.append((503, {"Retry-After": "17"}, b"CA system unavailable"))
            with pytest.raises(ActivationError) as info:
                await client(memory, node).activate()
            assert isinstance(info.value.cause, Unavailable)
            assert info.value.retryable and info.value.retry_after == 17
            assert info.value.exit_code == 4
            result = await client(memory, node).activate()  # control: next try works
            assert result.action == "activated"

    run(scenario)


def test_fail_node_down_is_retryable(pki: Pki, memory: DeviceMemory) -> None:
    async def scenario() -> int:
        async with serving(pki) as node:
            port = node.port
        return port

    port = run(scenario)
    activating = ActivatingClient(memory, NodeAddress("127.0.0.1", port), timeout=5)
    with pytest.raises(ActivationError) as info:
        run(activating.activate)
    assert info.value.step is Step.CONNECT and info.value.retryable


@pytest.mark.parametrize(
    ("tamper", "step", "cause"),
    [
        pytest.param(tamper, step, cause, id=f"fail-{tamper}")
        for tamper, step, cause in [
            ("wrong-chain", Step.VERIFY, VerificationFailed),
            ("other-key", Step.VERIFY, VerificationFailed),
            ("other-device", Step.VERIFY, VerificationFailed),
            ("expired", Step.VERIFY, VerificationFailed),
            ("server-profile", Step.VERIFY, VerificationFailed),
            ("garbage", Step.REQUEST, MalformedInput),
        ]
    ],
)
@pytest.mark.parametrize("mode", list(KeyMode), ids=str)
def test_fail_bad_answer_keeps_temporary_identity(
    pki: Pki, memory: DeviceMemory, tamper: str, step: Step, cause: type, mode: KeyMode
) -> None:
    before = temp_serial(memory)

    async def scenario() -> None:
        async with serving(pki) as node:
            node.tamper = tamper
            with pytest.raises(ActivationError) as info:
                await client(memory, node, key_mode=mode).activate()
            assert info.value.step is step and isinstance(info.value.cause, cause)
            assert "unchanged" in info.value.remedy
            assert memory.phase is Phase.TEMPORARY and temp_serial(memory) == before
            node.tamper = None  # control: the same device, an honest answer
            assert (await client(memory, node, key_mode=mode).activate()).action == "activated"

    run(scenario)
    assert memory.phase is Phase.CUSTOMIZED


@pytest.mark.parametrize("sub_ca", [False, True], ids=["root-issued", "sub-ca-issued"])
def test_fail_node_not_verifiable_with_factory_ca(
    pki: Pki, memory: DeviceMemory, sub_ca: bool
) -> None:
    """The node's CA is only in the chain the node presents in TLS, not in its cacerts."""
    stranger = make_root("Stranger Server CA")
    server_ca = make_sub(stranger, "Stranger Node CA") if sub_ca else stranger

    async def scenario() -> None:
        async with serving(pki, server_ca=server_ca) as node:
            with pytest.raises(ActivationError) as info:
                await client(memory, node).activate()
            assert info.value.step is Step.CONNECT
            assert isinstance(info.value.cause, VerificationFailed)
            assert "--node-ca-fingerprint" in info.value.remedy
            assert node.calls == []  # nothing was sent to the unverified node
            wrong = fingerprint_sha256(pki.rogue.certificate)
            with pytest.raises(ActivationError) as pinned_wrong:
                await client(memory, node, pin=NodePin(wrong)).activate()
            assert pinned_wrong.value.step is Step.CONNECT
            # Control: pinning the node's real CA makes it acceptable.
            good = fingerprint_sha256(stranger.certificate)
            result = await client(memory, node, pin=NodePin(good)).activate()
            assert result.action == "activated"

    run(scenario)
    assert memory.config()["node_ca_fingerprint"].startswith("sha256:")


def test_fail_blank_device(tmp_path: Path, pki: Pki) -> None:
    blank = DeviceMemory.create(tmp_path / "blank", device_id="ACME-0009")
    activating = ActivatingClient(blank, NodeAddress("127.0.0.1", 9), timeout=1)
    with pytest.raises(ActivationError) as info:
        run(activating.activate)
    assert info.value.step is Step.LOAD and "manufacture" in info.value.remedy


def test_renewal_replaces_operational_identity(pki: Pki, memory: DeviceMemory) -> None:
    async def scenario() -> None:
        async with serving(pki) as node:
            first = await client(memory, node, key_mode=KeyMode.SIMPLEENROLL).activate()
            renewed = await client(memory, node).renew()
            assert renewed.action == "renewed" and renewed.serial != first.serial
            assert node.calls[-2][0] == "simplereenroll" and node.calls[-2][2] == first.serial
            assert node.registers["ACME-0001"].live == {renewed.serial}

    run(scenario)
    assert memory.phase is Phase.CUSTOMIZED and memory.config()["confirmed"] is True


def test_fail_renewal_of_temporary_device(pki: Pki, memory: DeviceMemory) -> None:
    activating = ActivatingClient(memory, NodeAddress("127.0.0.1", 9), timeout=1)
    with pytest.raises(ActivationError) as info:
        run(activating.renew)
    assert info.value.step is Step.LOAD and "activate" in info.value.remedy
