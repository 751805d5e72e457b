"""Test-only fault injection: the CA-system process kills itself at a chosen point.

``ZTPKI_CA_FAULT`` set to one of :data:`FAULT_POINTS` makes `ztpki ca serve` SIGKILL itself
there, as a power cut or crash would:

    after-revocation-record  a revocation is durable in the store; its CRL is not signed yet
    after-issuance-record    a certificate is durable in the store; its answer is not sent

Unset (always, outside tests), nothing happens.
"""

from __future__ import annotations

import os
import signal

from ztpki.errors import ConfigurationError

FAULT_ENV = "ZTPKI_CA_FAULT"
FAULT_POINTS = ("after-revocation-record", "after-issuance-record")


def chosen_fault() -> str | None:
    point = os.environ.get(FAULT_ENV)
    if point and point not in FAULT_POINTS:
        raise ConfigurationError(
            f"{FAULT_ENV}={point[:40]!r} is not one of: {', '.join(FAULT_POINTS)}"
        )
    return point or None


def crash_at(point: str, chosen: str | None) -> None:
    if chosen == point:
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["FAULT_ENV", "FAULT_POINTS", "chosen_fault", "crash_at"]
