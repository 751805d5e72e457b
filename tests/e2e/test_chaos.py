"""Chaos end to end: 200 devices customize through nginx -> 2 node workers -> 2 CA-system
instances on PostgreSQL while, at 25 %, 50 % and 75 % of the fleet customized, a node worker
is killed (SIGKILL), a CA-system instance is killed (SIGKILL), and PostgreSQL is restarted
with an immediate shutdown. The harness (chaos_fixtures) is benchmarks/chaos.py's as well.

What must hold afterwards, read from both databases with SQL: every device customized in the
register; exactly one active certificate per device in the CA store, the one the register
names; every other certificate of the fleet known to the node (its revocation queue or
audit trail); no serial twice; the audit chain verifies; the supervisor replaced its worker;
and the devices saw only retryable failures, each retried to success.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from chaos_fixtures import FAULTS, RETRYABLE_KINDS, build, check, customize_fleet, report
from tests.support.nginx import NGINX

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make system-deps)")

DEVICES = 200
CONCURRENCY = 24


def test_ok_fleet_survives_worker_ca_and_database_deaths(tmp_path: Path) -> None:
    chaos = build(tmp_path, DEVICES)
    try:
        run = asyncio.run(customize_fleet(chaos, concurrency=CONCURRENCY))
        checks = check(chaos)
    finally:
        if os.environ.get("ZTPKI_CHAOS_KEEP") is None:
            chaos.stop()
    print(report(run, checks))
    assert [f.name for f in run.faults] == [name for _, name in FAULTS]
    assert run.fatal == [], run.fatal
    assert run.customized == DEVICES
    assert set(run.failures) <= RETRYABLE_KINDS, run.failures
    assert checks.failures() == []
    assert checks.other_certificates == checks.other_known
