"""The second CA-client's time budget: one CA-system instance gets ca_timeout; with several,
one may take all of it before the transport fails over, so the exchange gets twice that."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from ztpki.errors import Unavailable
from ztpki.node.ca_client import SecondCAClient
from ztpki.protocol.enrollment import EnrollmentAnswer, EnrollmentRequest
from ztpki.protocol.revocation import RevocationAnswer, RevocationRequest
from ztpki.store.records import RevocationReason

TIMEOUT = 1.0
HANG = 1.5 * TIMEOUT  # over one ca_timeout, well under two
REQUEST = RevocationRequest(
    request_id="rv-1", ca=None, serial="0a", device_id=None, reason=RevocationReason.SUPERSEDED
)


class FailingOver:
    """A transport whose first instance hangs for ``HANG`` (then fails over, as
    FailoverCAClient does) and whose second answers at once."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def revoke(self, request: RevocationRequest) -> RevocationAnswer:
        self.sent.append(request.request_id)
        await asyncio.sleep(HANG)  # the hung instance, until the transport gives up on it
        self.sent.append(request.request_id)  # the same request, to the next instance
        return RevocationAnswer(
            request.request_id, "0a", datetime.now(UTC), RevocationReason.SUPERSEDED
        )

    async def enroll(self, request: EnrollmentRequest) -> EnrollmentAnswer:
        raise AssertionError("not used")

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(("failover", "answered"), [(True, True), (False, False)],
                         ids=["ok-several-instances", "fail-one-instance"])  # fmt: skip
def test_exchange_budget(failover: bool, answered: bool) -> None:
    transport = FailingOver()
    client = SecondCAClient(transport, timeout=TIMEOUT, failover=failover)
    if answered:
        answer = asyncio.run(client.revoke(REQUEST))
        assert answer.request_id == "rv-1" and transport.sent == ["rv-1", "rv-1"]
    else:
        with pytest.raises(Unavailable, match="did not answer"):
            asyncio.run(client.revoke(REQUEST))
        assert transport.sent == ["rv-1"]
