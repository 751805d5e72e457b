"""The demo's revocation proof: `node block` makes the customer's relying party refuse the
device, `node unblock` has it greeted again.

The node puts the device's operational certificate on hold (certificateHold) at the customer
CA system, which publishes its new CRL; the customer service reads that CRL for every
connection. The demo waits for the CRL to change (the node sends the hold from its running
`node serve`), then asks the service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ztpki.demo.fleet import greet
from ztpki.demo.scenario import DemoEnvironment, DemoStepFailed
from ztpki.device.memory import DeviceMemory
from ztpki.errors import ZtpkiError
from ztpki.pki.revocation_check import load_crl

# How long the node may take to get a hold or its release onto the CA's CRL.
CRL_WAIT = 60.0


@dataclass(frozen=True)
class RevocationProof:
    device_id: str
    blocked_answer: str
    unblocked_answer: str

    @property
    def blocked_refused(self) -> bool:
        return self.blocked_answer.startswith("refused") and "certificateHold" in (
            self.blocked_answer
        )

    @property
    def greeted_again(self) -> bool:
        return self.unblocked_answer == f"hello {self.device_id}"

    @property
    def ok(self) -> bool:
        return self.blocked_refused and self.greeted_again


def _listed(crl_path: Path, serial: int) -> bool:
    try:
        crl = load_crl(crl_path.read_bytes())
    except (OSError, ZtpkiError):
        return False
    return crl.get_revoked_certificate_by_serial_number(serial) is not None


def _wait_for_crl(crl_path: Path, serial: int, *, listed: bool, what: str) -> None:
    # A poll of another process's output (its CRL file), with a deadline.
    deadline = time.monotonic() + CRL_WAIT
    while _listed(crl_path, serial) != listed:
        if time.monotonic() > deadline:
            raise DemoStepFailed(
                f"{what}: the customer CA's CRL {crl_path} did not change within "
                f"{CRL_WAIT:.0f} s (is `node serve` running and the CA system reachable?)"
            )
        time.sleep(0.1)


def prove_block(
    demo: DemoEnvironment,
    device: Path,
    *,
    port: int,
    anchors: list[x509.Certificate],
    crl_path: Path,
    say: Callable[[str], None],
) -> RevocationProof:
    """Block the device at the node, ask the service, unblock it, ask again."""
    memory = DeviceMemory.open(device)
    certificate = memory.identity().certificate
    assert certificate is not None
    node = str(demo.path("node"))
    for line in demo.run("node", "block", "--dir", node, memory.device_id).splitlines():
        say(line)  # through the demo's console, which wraps it to the terminal
    _wait_for_crl(crl_path, certificate.serial_number, listed=True, what="node block")
    blocked = greet(device, port, server_anchors=anchors)
    say(f"after node block, the customer service answers: {blocked}")
    for line in demo.run("node", "unblock", "--dir", node, memory.device_id).splitlines():
        say(line)  # through the demo's console, which wraps it to the terminal
    _wait_for_crl(crl_path, certificate.serial_number, listed=False, what="node unblock")
    unblocked = greet(device, port, server_anchors=anchors)
    say(f"after node unblock, the customer service answers: {unblocked}")
    return RevocationProof(memory.device_id, blocked, unblocked)
