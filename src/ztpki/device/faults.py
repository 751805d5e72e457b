"""Test-only fault injection: the device process kills itself at a chosen point.

``ZTPKI_DEVICE_FAULT`` set to one of :data:`FAULT_POINTS` makes ``ztpki device activate``,
``renew`` and ``agent`` SIGKILL themselves there, as a power cut or crash would:

    before-request  TLS to the node is up, the enrollment request not yet sent
    after-answer    the node issued and answered; the device has not looked at the answer
    mid-replace     inside the identity write: new file written, not yet renamed into place
    after-replace   the new identity is stored; the node has not seen it yet (unconfirmed)
    after-confirm   the node confirmed; the replaced keys are not destroyed yet (token device)

Unset (always, outside tests), nothing happens.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

from ztpki.errors import ConfigurationError

__all__ = ["FAULT_ENV", "FAULT_POINTS", "FaultInjector"]

logger = logging.getLogger(__name__)

FAULT_ENV = "ZTPKI_DEVICE_FAULT"
FAULT_POINTS = (
    "before-request",
    "after-answer",
    "mid-replace",
    "after-replace",
    "after-confirm",
)


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class FaultInjector:
    """Test only: kill this process at one named point, as a power cut or crash would.

    ``at(point)`` kills when ``point`` is the chosen one; for ``mid-replace`` it arms
    :meth:`memory_hook` instead, which the device memory calls for each step of a file write
    (open the memory with ``_fault_hook=injector.memory_hook``).
    """

    def __init__(self, point: str, *, kill: Callable[[], None] = _sigkill) -> None:
        if point not in FAULT_POINTS:
            raise ConfigurationError(
                f"{FAULT_ENV}={point[:40]!r} is not one of: {', '.join(FAULT_POINTS)}"
            )
        self.point = point
        self._kill = kill
        self._armed = False

    @classmethod
    def from_env(cls) -> FaultInjector | None:
        point = os.environ.get(FAULT_ENV)
        return cls(point) if point else None

    def at(self, point: str) -> None:
        if point != self.point:
            return
        if point == "mid-replace":
            self._armed = True
            return
        logger.warning("fault injection: killing the device process at %s", point)
        self._kill()

    def memory_hook(self, step: str) -> None:
        if self._armed and step == "tmp-written":
            logger.warning("fault injection: killing the device process in the middle of a write")
            self._kill()
