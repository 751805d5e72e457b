"""Subprocess entry point for test_memory_crash: one write to a device memory, killed at a step.

usage: python memory_crash_writer.py OPERATION DEVICE_DIR STEP BUNDLE_PEM

OPERATION is identity, config or trust. BUNDLE_PEM holds the new identity: an encrypted
PKCS#8 key (passphrase BUNDLE_PASSPHRASE), the certificate, then CA certificates. When the
write reaches STEP the process sends itself SIGKILL, so nothing after the step runs, no
finally block, no buffered flush. Exit status 0 means the step was never reached.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from ztpki.device.memory import DeviceMemory, Phase
from ztpki.pki.keys import decode_pkcs8
from ztpki.pki.pem import load_certificates_pem

BUNDLE_PASSPHRASE = b"crash-test-bundle"
NEW_NODE_ADDRESS = "https://node.customer.test:8443"


def main(argv: list[str]) -> int:
    operation, device_dir, stop_at, bundle_path = argv

    def kill_at(step: str) -> None:
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGKILL)

    memory = DeviceMemory.open(Path(device_dir), _fault_hook=kill_at)
    bundle = Path(bundle_path).read_bytes()
    certs = load_certificates_pem(bundle)
    if operation == "identity":
        key = decode_pkcs8(bundle, passphrase=BUNDLE_PASSPHRASE)
        memory.replace_identity(
            phase=Phase.CUSTOMIZED,
            private_key=key,
            certificate=certs[0],
            ca_certificates=certs[1:],
        )
    elif operation == "config":
        memory.update_config(customer_node=NEW_NODE_ADDRESS)
    elif operation == "trust":
        memory.set_trust_anchors(certs[1:])
    else:
        print(f"unknown operation {operation!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
