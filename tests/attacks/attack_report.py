"""The attack suite's results table: every case records what it sent and what it observed, and
the run writes docs/security.md from those records.

Works with and without pytest-xdist. Each process (an xdist worker, or pytest alone) keeps its
records and the outcome of each attack test it ran, and at session end writes them as one JSON
part file into a directory shared by the run (named by xdist's test-run uid). The process that
writes the last part (counted under a file lock) merges the parts and writes the document, but
only when the run was complete: every test in tests/attacks collected, none deselected, each
one run. A partial run (one file, ``-k``, ``-m fuzz``, ``-x`` stopping early) leaves the
committed document alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ATTACKS_DIR = Path(__file__).resolve().parent
DOC_PATH = ATTACKS_DIR.parent.parent / "docs" / "security.md"
RUN_ENV = "PYTEST_XDIST_TESTRUNUID"
PREVIEW_ENV = "ZTPKI_ATTACK_PREVIEW"  # also write the table of a partial run to this file

VERDICTS = ("refused", "contained", "survived", "robust", "clean")


@dataclass(frozen=True)
class AttackRecord:
    """One row of the results table."""

    case: str  # stable id, e.g. "identity/expired-temporary-certificate"
    category: str
    attack: str  # what was sent
    observed: str  # what came back, and what the checks after it found
    verdict: str  # the expected defence that was observed (one of VERDICTS)
    nodeid: str | None = None  # the test that recorded it (None: a session-level check)
    passed: bool | None = None  # for session-level checks only; tests take their outcome


# What differs from run to run (which device a case drew, serials, ports) would make the
# generated page change on every run; these become placeholders.
_UNSTABLE = (
    (re.compile(r"\b(ACME-B\d+)-\d{4,}\b"), r"\1-NNNN"),
    (re.compile(r"\b[0-9a-f]{24,64}\b"), "<hex>"),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:PORT"),
    (re.compile(r"/\S*/ztpki-attacks-[A-Za-z0-9_]+"), "DIR"),
    # A test's own tmp_path, to the end of the path (names under it may carry hashes too).
    (re.compile(r"/\S*?/pytest-of-[^/\s]+/pytest-\d+/[^\s():,;]*"), "DIR"),
    (re.compile(r"\b(rogue|ctl|during-[a-z]+)-\d+\b"), r"\1-N"),
    # Names a case makes fresh each run (clients, devices, directories), times and sizes.
    (re.compile(r"\b(ent-\d+|node-y|legacy|tmpnames|planted)-[0-9a-f]{6,8}\b"), r"\1-N"),
    (re.compile(r"\bACME-([A-Z]+)-\d+-[0-9a-f]{6}\b"), r"ACME-\1-N"),
    (re.compile(r"\bACME-NOEKU-[0-9A-F]{6}\b"), "ACME-NOEKU-N"),
    (re.compile(r"\battacks-[A-Za-z0-9_]{8}\b"), "DIR"),
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\+00:00)?"), "TIME"),
    (re.compile(r"\b\d+ bytes on the hop\b"), "N bytes on the hop"),
    # Request ids and CA-client names the failover cases draw fresh each run.
    (re.compile(r"\bline-[0-9a-f]{12}\b"), "line-N"),
    (re.compile(r"\bACME-[0-9a-f]{8}\b"), "ACME-N"),
    # Which worker of a refused `node serve --workers` exits first is the kernel's choice.
    (re.compile(r"\bworker \d+ exited\b"), "worker N exited"),
    # A server that hangs up on a refused client: the client reads EOF during TLS or an empty
    # HTTP answer, depending on timing.
    (
        re.compile(
            r"SSLEOFError: EOF occurred in violation of protocol|"
            r"RemoteDisconnected: Remote end closed connection without response"
        ),
        "connection closed without an answer",
    ),
)


def clean_text(text: str, limit: int = 400) -> str:
    """One line for a Markdown table cell: no pipes, no newlines, no OpenSSL source lines."""
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", text)
    for pattern, replacement in _UNSTABLE:
        text = pattern.sub(replacement, text)
    text = re.sub(r"\s+", " ", text).strip().replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class ProcessPart:
    """What one pytest process contributes to the merged table."""

    worker: str
    collected: list[str] = field(default_factory=list)  # attack test node ids
    deselected: int = 0
    selected_by_id: bool = False  # a node id (path::name) was given on the command line
    outcomes: dict[str, str] = field(default_factory=dict)  # node id -> passed/failed/skipped
    records: list[dict[str, Any]] = field(default_factory=list)

    def outcome(self, nodeid: str, outcome: str) -> None:
        """Fold one phase's outcome in: a failed setup, call or teardown fails the test."""
        current = self.outcomes.get(nodeid)
        if current == "failed":
            return
        if outcome in ("failed", "skipped"):
            self.outcomes[nodeid] = outcome
        elif current is None:
            self.outcomes[nodeid] = "passed"


class AttackReport:
    """The fixture tests record their observations with."""

    def __init__(self, part: ProcessPart, nodeid: str | None) -> None:
        self._part = part
        self._nodeid = nodeid
        self.cases: list[str] = []

    def record(
        self,
        *,
        case: str,
        category: str,
        attack: str,
        observed: str,
        verdict: str,
        passed: bool | None = None,
    ) -> None:
        assert verdict in VERDICTS, verdict
        assert case.startswith(category + "/"), case
        record = AttackRecord(
            case=case,
            category=category,
            attack=attack,
            observed=observed,
            verdict=verdict,
            nodeid=self._nodeid,
            passed=passed,
        )
        self._part.records.append(asdict(record))
        self.cases.append(case)


def is_attack_test(path: Path) -> bool:
    try:
        path.resolve().relative_to(ATTACKS_DIR)
    except ValueError:
        return False
    return path.name.startswith("test_attack_")


def attack_files() -> list[str]:
    return sorted(p.name for p in ATTACKS_DIR.glob("test_attack_*.py"))


def run_directory(cache_root: Path) -> Path:
    run = os.environ.get(RUN_ENV) or f"solo-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return cache_root / "ztpki-attacks" / run


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def finish_part(part: ProcessPart, directory: Path, *, workers: int) -> Path | None:
    """Store this process's part; the last of ``workers`` parts writes the document.

    Returns the document's path when this call wrote it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        (directory / f"{part.worker}.part.json").write_text(json.dumps(asdict(part)))
        parts = [ProcessPart(**json.loads(p.read_text())) for p in directory.glob("*.part.json")]
        if len(parts) < workers:
            return None
        written = write_document(parts)
    shutil.rmtree(directory, ignore_errors=True)
    return written


def _complete(parts: list[ProcessPart]) -> bool:
    collected = set(parts[0].collected)
    if not collected or any(set(p.collected) != collected for p in parts):
        return False
    if any(p.deselected or p.selected_by_id for p in parts):
        return False
    files = {nodeid.split("::", 1)[0].rsplit("/", 1)[-1] for nodeid in collected}
    if files != set(attack_files()):
        return False
    ran = {n for p in parts for n in p.outcomes}
    return collected <= ran


def merge(parts: list[ProcessPart]) -> list[tuple[AttackRecord, str]]:
    """Rows (record, result) sorted by category then case; one row per case id."""
    outcomes: dict[str, str] = {}
    for part in parts:
        outcomes.update(part.outcomes)
    by_case: dict[str, tuple[AttackRecord, str]] = {}
    recorded: set[str] = set()
    for part in parts:
        for raw in part.records:
            record = AttackRecord(**raw)
            if record.nodeid is not None:
                recorded.add(record.nodeid)
                outcome = outcomes.get(record.nodeid, "failed")
                result = {"passed": "pass", "skipped": "skipped"}.get(outcome, "FAIL")
            else:
                result = "pass" if record.passed else "FAIL"
            previous = by_case.get(record.case)
            # The same session-level check runs once per process: a failure anywhere wins.
            if previous is None or (previous[1] == "pass" and result != "pass"):
                by_case[record.case] = (record, result)
    for nodeid, outcome in outcomes.items():
        if nodeid not in recorded and outcome != "passed":
            name = nodeid.split("::", 1)[-1]
            record = AttackRecord(
                case=f"unrecorded/{name}",
                category="unrecorded",
                attack=nodeid,
                observed="the test ended before it recorded an observation",
                verdict="-",
                nodeid=nodeid,
            )
            by_case[record.case] = (record, "FAIL" if outcome == "failed" else outcome)
    return sorted(by_case.values(), key=lambda row: (row[0].category, row[0].case))


INTRO = """\
# Security: what happens when ztpki is attacked

This page is generated by the attack suite in `tests/attacks/`; do not edit it by hand. Each
row is one test that attacks the running services on loopback, exactly as deployed: a factory
CA system, a customer CA system and a customer node, each `ztpki ... serve` in its own process
with real TLS, and devices made by `ztpki factory manufacture` and customized by the device's
activating client. After every hostile request the test checks the answer (HTTP status, XML
error code, or for a refused TLS handshake the reason the service logged), that nothing was
issued (the CA systems' records), that the node's register and hash-chained audit trail hold
exactly what they should, and that the service still serves the next legitimate device (a
fresh device customizing itself end to end, or a CA-client request answered).

Regenerate it with `make test` or `.venv/bin/pytest tests/attacks` (under a minute on two
cores with `-n 2`). A partial run (one file, `-k`, `-m fuzz`) leaves this page unchanged.
`make fuzz` runs the fuzz cases with many more examples. Device ids, serials, ports and paths
that differ from run to run are shown as placeholders (`ACME-B1-NNNN`, `<hex>`, `PORT`, `DIR`).

Verdicts: **refused** - the attack got a clear error and changed nothing; **contained** - the
service bounded the attack (closed the connection, limited the resource) and served a
legitimate device meanwhile; **survived** - a crash, race or fault lost no state and left at
most one live certificate per device; **robust** - fuzzing raised only the parser's typed
errors; **clean** - no secret leaked.
"""


def render(rows: Iterable[tuple[AttackRecord, str]]) -> str:
    rows = list(rows)
    passed = sum(1 for _, result in rows if result == "pass")
    lines = [
        INTRO,
        f"Result of the last complete run: **{passed} of {len(rows)} cases pass**.",
        "",
        "| case | category | attack | observed | verdict | result |",
        "|---|---|---|---|---|---|",
    ]
    for record, result in rows:
        cells = (
            f"`{record.case}`",
            record.category,
            clean_text(record.attack),
            clean_text(record.observed, 1000),
            record.verdict,
            result,
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_document(parts: list[ProcessPart]) -> Path | None:
    preview = os.environ.get(PREVIEW_ENV)
    if preview and parts:
        Path(preview).write_text(render(merge(parts)))
    if not parts or not _complete(parts):
        return None
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    text = render(merge(parts))
    if not DOC_PATH.exists() or DOC_PATH.read_text() != text:
        DOC_PATH.write_text(text)
    return DOC_PATH
