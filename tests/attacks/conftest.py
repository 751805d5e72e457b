"""Fixtures of the attack suite: the deployment under attack and the results table.

``deployment`` is built once per pytest process (once per xdist worker) and torn down at the
end of the session; its finalizer runs the two checks that must come after every other case:
the secret scan and the final consistency check (at most one live certificate per device).
``attack_report.record(...)`` adds a row to docs/security.md (see attack_report.py).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from tests.attacks.attack_deployment import Deployment, build
from tests.attacks.attack_report import (
    AttackReport,
    ProcessPart,
    finish_part,
    is_attack_test,
    run_directory,
)
from tests.attacks.attack_secrets import final_consistency, scan_for_secrets

_part_key = pytest.StashKey[ProcessPart]()
_CONFIG: list[pytest.Config] = []


def _part(config: pytest.Config) -> ProcessPart:
    if _part_key not in config.stash:
        worker = getattr(config, "workerinput", {}).get("workerid", "solo")
        config.stash[_part_key] = ProcessPart(worker=worker)
    return config.stash[_part_key]


def pytest_configure(config: pytest.Config) -> None:
    # Historic hook: this conftest, loaded during collection, still gets it.
    _CONFIG[:] = [config]
    config.addinivalue_line(
        "markers", "fuzz: long property tests; ZTPKI_FUZZ_EXAMPLES=N raises their example count"
    )


def pytest_deselected(items: list[pytest.Item]) -> None:
    if items:
        part = _part(items[0].config)
        part.deselected += sum(1 for item in items if is_attack_test(item.path))


def pytest_collection_finish(session: pytest.Session) -> None:
    part = _part(session.config)
    part.collected = [item.nodeid for item in session.items if is_attack_test(item.path)]
    part.selected_by_id = any(
        "::" in str(arg) and "attacks" in str(arg) for arg in session.config.args
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "test_attack_" in report.nodeid:
        _part(_CONFIG[0]).outcome(report.nodeid, report.outcome)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    part = _part(config)
    if not part.collected:
        return
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    cache = Path(str(config.rootpath)) / ".pytest_cache"
    written = finish_part(part, run_directory(cache), workers=workers)
    if written is not None and not hasattr(config, "workerinput"):
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"attack results written to {written}")


_call_failed = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_call_failed] = report.failed
    return report


@pytest.fixture
def attack_report(request: pytest.FixtureRequest) -> Iterator[AttackReport]:
    report = AttackReport(_part(request.config), request.node.nodeid)
    yield report
    if not request.node.stash.get(_call_failed, True):
        assert report.cases, f"{request.node.nodeid} recorded no attack case"


@pytest.fixture(scope="session")
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    root = Path(tempfile.mkdtemp(prefix="ztpki-attacks-"))
    deployed = build(root)
    try:
        yield deployed
    finally:
        session_report = AttackReport(_part(request.config), None)
        try:
            final_consistency(deployed, session_report)
        finally:
            deployed.stop()
            scan_for_secrets(deployed, session_report)
        if request.session.testsfailed == 0:
            shutil.rmtree(root, ignore_errors=True)
