"""The device in the field, end to end: real CA systems, a real node, the real CLI.

Covers both key modes, agent mode with an address written while it runs, refusal, renewal,
and the before/after test of the new identity (a customer service and the node itself).
"""

from __future__ import annotations

import asyncio
import os
import selectors
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.e2e.device_fixtures import (
    ENV,
    NODE_PASSPHRASE,
    World,
    take_device,
    tls_service,
    world,
    ztpki,
)

from ztpki.demo.processes import ztpki_argv
from ztpki.device import Agent, AgentEvent, DeviceMemory, Phase
from ztpki.device.communication import NodeAddress
from ztpki.pki.keys import decode_pkcs8
from ztpki.pki.pem import fingerprint_sha256, load_certificates_pem
from ztpki.protocol.est import build_csr, encode_csr

__all__ = ["world"]  # the session fixture, shared with the other device modules

STEPS = ["load", "connect", "cacerts", "request", "verify", "replace", "confirm"]


def activate(
    world: World, device_id: str, *extra: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return ztpki(  # type: ignore[no-any-return]
        "device", "activate", "--device", str(world.device(device_id)),
        "--node", world.node_url, *extra, check=check,
    )  # fmt: skip


def steps_of(output: str) -> list[str]:
    return [line[1 : line.index("]")] for line in output.splitlines() if line.startswith("[")]


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def phase(world: World, device_id: str) -> Phase:
    return DeviceMemory.open(world.device(device_id)).phase


@pytest.mark.parametrize(
    ("extra", "origin"),
    [([], "the customer CA generated the key"), (["--key-on-device"], "generated in the device")],
    ids=["ok-serverkeygen", "ok-simpleenroll"],
)
def test_activate_customizes_the_device(world: World, extra: list[str], origin: str) -> None:
    device_id = take_device(world)
    assert world.show(device_id)["phase"] == "temporary"
    assert world.register()[device_id]["state"] == "listed"

    result = activate(world, device_id, *extra)

    assert steps_of(result.stdout) == STEPS
    assert origin in result.stdout
    shown = world.show(device_id)
    assert shown["phase"] == "customized" and shown["config"]["confirmed"] is True
    assert shown["certificate"]["issuer"] == "CN=devices,O=Customer"
    assert [c["subject"] for c in shown["ca_certificates"]] == [
        "CN=devices,O=Customer",
        "CN=root,O=Customer",
    ]
    assert world.register()[device_id]["state"] == "customized"
    assert world.active(device_id) == [shown["certificate"]["serial"]]
    # Running it again asks the node for nothing.
    again = activate(world, device_id)
    assert "already customized" in again.stdout
    assert world.active(device_id) == [shown["certificate"]["serial"]]


def _curl_simpleenroll(world: World, creds: Path, device_id: str, work: Path) -> int:
    """POST /simpleenroll with curl, authenticated by the exported identity in ``creds``."""
    key = decode_pkcs8((creds / "key.pem").read_bytes(), passphrase=None)
    (work / "csr.b64").write_bytes(encode_csr(build_csr(key, device_id=device_id)))
    result = subprocess.run(
        [
            "curl", "-sS", "-o", str(work / "answer"), "-w", "%{http_code}",
            "--cacert", str(creds / "trust.pem"),
            "--cert", str(creds / "cert.pem"), "--key", str(creds / "key.pem"),
            "-H", "Content-Type: application/pkcs10",
            "-H", "Content-Transfer-Encoding: base64",
            "--data-binary", f"@{work / 'csr.b64'}",
            f"{world.node_url}/.well-known/est/simpleenroll",
        ],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return int(result.stdout)


def test_new_identity_is_accepted_where_the_temporary_one_is_not(
    world: World, tmp_path: Path
) -> None:
    device_id = take_device(world)
    device = str(world.device(device_id))
    temp = tmp_path / "temp"
    ztpki("device", "export", "--device", device, "--out", str(temp), "--insecure-no-passphrase")
    service_dir = world.path("service-cert")
    key = decode_pkcs8((service_dir / "key.pem").read_bytes(), passphrase=NODE_PASSPHRASE.encode())
    chain = load_certificates_pem((service_dir / "cert.pem").read_bytes())
    customer_root = world.path("C", "cas", "root", "ca.pem")
    anchors = load_certificates_pem(customer_root.read_bytes())

    with tls_service(key, chain, anchors) as url:
        before = ztpki(
            "device", "connect", "--device", device, "--trust", str(customer_root), url,
            check=False,
        )  # fmt: skip
        assert before.returncode == 1
        assert "does not accept the device's certificate" in flat(before.stderr)
        # The node takes the temporary certificate while the device is not customized
        # (curl standing in for any EST client; the device never sees this answer) ...
        assert _curl_simpleenroll(world, temp, device_id, tmp_path) == 200
        activate(world, device_id)
        after = ztpki("device", "connect", "--device", device, url)
        assert after.stdout == f"200 OK\nhello {device_id}\n"

    # ... and refuses the very same request once the device is customized.
    assert _curl_simpleenroll(world, temp, device_id, tmp_path) == 403
    assert "already customized" in (tmp_path / "answer").read_text()
    assert len(world.active(device_id)) == 1


def _read_line(process: subprocess.Popen[str], timeout: float = 60) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=timeout), "the agent printed nothing"
    return process.stdout.readline()


def test_agent_customizes_as_soon_as_an_address_is_written(world: World) -> None:
    device_id = take_device(world)
    device = str(world.device(device_id))
    # --no-mdns --no-dns-sd: it waits for set-node; no discovery outside a namespace.
    waiting = ["--poll-interval", "0.05", "--no-mdns", "--no-dns-sd"]
    agent = subprocess.Popen(
        ztpki_argv("device", "agent", "--device", device, "--once", *waiting),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV},
    )
    try:
        first = _read_line(agent)
        assert first.startswith("[wait] waiting for a customer-node address")
        assert world.register()[device_id]["state"] == "listed"  # nothing without an address
        ztpki("device", "set-node", "--device", device, world.node_url)
        out, err = agent.communicate(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, err
    assert steps_of(out)[-2:] == ["confirm", "done"]
    assert phase(world, device_id) is Phase.CUSTOMIZED
    assert world.register()[device_id]["state"] == "customized"


def test_fail_agent_stops_when_the_node_refuses(world: World) -> None:
    device_id = take_device(world)
    ztpki("node", "block", "--dir", str(world.path("N")), device_id)
    result = ztpki(
        "device", "agent", "--device", str(world.device(device_id)), "--node", world.node_url,
        "--once", check=False,
    )  # fmt: skip
    assert result.returncode == 3
    assert f"device {device_id} is blocked in the customer register" in flat(result.stderr)
    once = activate(world, device_id, check=False)
    assert once.returncode == 3
    message = flat(once.stderr)
    assert "step request failed: node refused serverkeygen (403)" in message
    assert "What to do: the customer blocked this device on the node" in message
    assert "ztpki node unblock --dir NODE_DIR DEVICE_ID" in message
    assert phase(world, device_id) is Phase.TEMPORARY
    assert world.active(device_id) == []


def test_renew_replaces_the_operational_identity(world: World) -> None:
    device_id = take_device(world)
    activate(world, device_id)
    first = world.show(device_id)["certificate"]["serial"]
    result = ztpki("device", "renew", "--device", str(world.device(device_id)))
    assert steps_of(result.stdout) == STEPS
    second = world.show(device_id)["certificate"]["serial"]
    assert second != first
    assert world.active(device_id) == [second]
    assert {r["serial"]: r["status"] for r in world.issued(device_id)}[first] != "active"


class ShiftedClock:
    """The device's clock moved forward; the agent does not wait for real time."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    async def sleep(self, seconds: float) -> None:
        raise AssertionError(f"the agent should not wait here ({seconds} s)")


def test_agent_renews_once_two_thirds_of_the_validity_passed(world: World) -> None:
    device_id = take_device(world)
    activate(world, device_id)
    memory = DeviceMemory.open(world.device(device_id))
    cert = memory.identity().certificate
    assert cert is not None
    start, life = cert.not_valid_before_utc, cert.not_valid_after_utc - cert.not_valid_before_utc

    early = Agent(memory, clock=ShiftedClock(start + life * 0.6), timeout=20)
    assert asyncio.run(early.run(once=True)) is None  # control: not due, nothing asked
    assert world.active(device_id) == [format(cert.serial_number, "x")]

    due = Agent(memory, clock=ShiftedClock(start + life * 0.7), timeout=20)
    result = asyncio.run(due.run(once=True))
    assert result is not None and result.action == "renewed"
    assert world.active(device_id) == [result.serial]
    assert NodeAddress.parse(memory.config()["node_url"]) == NodeAddress.parse(world.node_url)
    assert result.not_after - datetime.now(result.not_after.tzinfo) > timedelta(days=300)


class OperatorClock:
    """Time moves only when the agent sleeps; the first sleep is when the operator acts."""

    def __init__(self, act: Callable[[], None]) -> None:
        self.at = datetime.now(UTC)
        self.sleeps: list[float] = []
        self._act = act

    def now(self) -> datetime:
        return self.at

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.at += timedelta(seconds=seconds)
        if len(self.sleeps) == 1:
            await asyncio.to_thread(self._act)
        assert len(self.sleeps) < 1000, "the agent did not pick up the corrected configuration"


@pytest.mark.parametrize("fault", ["wrong-label", "stale-pin"])
def test_ok_agent_keeps_trying_until_the_operator_fixes_the_configuration(
    world: World, fault: str
) -> None:
    """A 404 (no such EST label) or a node that does not verify under a stale pin is not a
    refusal: the agent retries slowly, and goes on as soon as set-node corrects the device."""
    device_id = take_device(world)
    device = str(world.device(device_id))
    if fault == "wrong-label":
        ztpki("device", "set-node", "--device", device, f"{world.node_url}/no-such-label")
        expected = "(404)"
    else:
        root = load_certificates_pem(world.path("C", "cas", "root", "ca.pem").read_bytes())
        stale = f"sha256:{fingerprint_sha256(root[0])}"
        ztpki("device", "set-node", "--device", device, world.node_url,
              "--node-ca-fingerprint", stale)  # fmt: skip
        expected = "set-node"
    events: list[AgentEvent] = []
    clock = OperatorClock(lambda: ztpki("device", "set-node", "--device", device, world.node_url))
    memory = DeviceMemory.open(world.device(device_id))
    agent = Agent(memory, clock=clock, report=events.append, jitter=lambda: 0.0, timeout=20)

    result = asyncio.run(agent.run(once=True))

    assert result is not None and result.action == "activated"
    retries = [e.message for e in events if e.kind == "retry"]
    assert retries and expected in retries[0] and "needs attention" in retries[0]
    assert "configuration changed" in retries[-1]
    assert not any(e.kind == "stop" for e in events)
    assert world.active(device_id) == [result.serial]


def test_fail_agent_poll_interval_of_zero_is_a_usage_error(world: World) -> None:
    device_id = take_device(world)
    result = ztpki(
        "device", "agent", "--device", str(world.device(device_id)), "--once",
        "--poll-interval", "0", check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--poll-interval" in result.stderr
    assert world.register()[device_id]["state"] == "listed"


@pytest.mark.parametrize("extra", [[], ["--json"]], ids=["text", "json"])
def test_fail_unknown_label_is_reported_not_a_crash(world: World, extra: list[str]) -> None:
    """The node's 404 for an unknown CA label: the remedy names https://HOST:PORT[/label],
    which must be printed as it is (rich markup would take [/label] for a closing tag)."""
    device_id = take_device(world)
    result = ztpki(
        "device", "activate", "--device", str(world.device(device_id)),
        "--node", f"{world.node_url}/nolabel", *extra, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    message = flat(result.stderr)
    assert "Traceback" not in result.stderr and "MarkupError" not in result.stderr
    assert "(404)" in message and "https://HOST:PORT[/label]" in message
    if extra:  # --json prints nothing but the result
        assert result.stdout == ""
    assert phase(world, device_id) is Phase.TEMPORARY


@pytest.mark.parametrize(
    "extra",
    [
        ["--node", "http://127.0.0.1:28443"],
        ["--node", "127.0.0.1:28443"],
        ["--node-ca-fingerprint", "1234"],
        ["--key-algorithm", "foo"],
        ["--key-algorithm", "ec-p256"],
    ],
    ids=["http", "no-scheme", "short-pin", "bad-algorithm", "algorithm-without-key-on-device"],
)
def test_fail_unparsable_option_is_a_usage_error(world: World, extra: list[str]) -> None:
    device_id = take_device(world)
    result = ztpki("device", "activate", "--device", str(world.device(device_id)), *extra,
                   check=False)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Usage: ztpki device activate" in result.stderr
    assert phase(world, device_id) is Phase.TEMPORARY
