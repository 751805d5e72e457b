"""What the deployment's stores say, read in place: the node's register and hash-chained
audit trail, and each CA system's record of issued certificates.

Every query opens a fresh read-only SQLite connection, so it never sees a stale view of a file
another process (a service, maybe restarted) writes.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ztpki.store.sqlite import open_sqlite_node_store


@dataclass(frozen=True)
class Snapshot:
    """The state an attack must not change."""

    register: dict[str, tuple[Any, ...]]
    audit_seq: int
    customer_issued: int
    factory_issued: int


@dataclass(frozen=True)
class AuditLine:
    seq: int
    device_id: str | None
    endpoint: str
    decision: str
    reason: str
    serial: str | None


class StateView:
    """The read side of the deployment (a base of Deployment)."""

    root: Path
    served: list[str]  # devices customized as positive controls

    @property
    def node_dir(self) -> Path:
        return self.root / "node"

    def _query(self, database: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        # A fresh read-only connection per query: never a stale view of another process's file.
        uri = f"file:{database}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
            return db.execute(sql, params).fetchall()

    def register(self) -> dict[str, tuple[Any, ...]]:
        rows = self._query(
            self.node_dir / "node.sqlite",
            "SELECT device_id, state, issued_serial, blocked_from FROM device",
        )
        return {r[0]: tuple(r[1:]) for r in rows}

    def device_row(self, device_id: str) -> tuple[Any, ...] | None:
        return self.register().get(device_id)

    def audit_since(self, seq: int) -> list[AuditLine]:
        rows = self._query(
            self.node_dir / "node.sqlite",
            "SELECT seq, device_id, endpoint, decision, reason, serial FROM audit_entry "
            "WHERE seq > ? ORDER BY seq",
            (seq,),
        )
        return [AuditLine(*row) for row in rows]

    def audit_verifies(self) -> bool:
        with contextlib.closing(open_sqlite_node_store(self.node_dir / "node.sqlite")) as store:
            return store.verify().ok

    def issued_count(self, system: str) -> int:
        rows = self._query(
            self.root / system / "store.sqlite", "SELECT count(*) FROM issued_certificate"
        )
        return int(rows[0][0])

    def live_serials(self, system: str, device_id: str) -> list[str]:
        rows = self._query(
            self.root / system / "store.sqlite",
            "SELECT serial FROM issued_certificate WHERE device_id = ? AND status = 'active'",
            (device_id,),
        )
        return [r[0] for r in rows]

    def snapshot(self) -> Snapshot:
        seq = self._query(self.node_dir / "node.sqlite", "SELECT max(seq) FROM audit_entry")
        return Snapshot(
            register=self.register(),
            audit_seq=int(seq[0][0] or 0),
            customer_issued=self.issued_count("customer"),
            factory_issued=self.issued_count("factory"),
        )

    def check_unchanged(
        self,
        before: Snapshot,
        *,
        audited: Sequence[tuple[str | None, str, str]] = (),
        unaudited_because: str = "",
    ) -> str:
        """Assert an attack changed nothing; audited lists the (device, decision, reason part)
        entries the audit trail must have gained, in order, and nothing else.

        Returns the sentence for the results table.
        """
        after = self.snapshot()
        assert after.customer_issued == before.customer_issued, "the customer CA issued"
        assert after.factory_issued == before.factory_issued, "the factory CA issued"
        changed = {
            d: (before.register.get(d), row)
            for d, row in after.register.items()
            if before.register.get(d) != row
        }
        assert not changed, f"register changed: {changed}"
        new = self.audit_since(before.audit_seq)
        assert len(new) == len(audited), f"audit entries {new}, expected {audited}"
        for line, (device_id, decision, reason) in zip(new, audited, strict=True):
            assert line.device_id == device_id, line
            assert line.decision == decision, line
            assert reason in line.reason, (reason, line.reason)
        assert self.audit_verifies(), "the audit hash chain does not verify"
        if new:
            trail = "audit trail: " + "; ".join(f"{a.decision} ({a.endpoint})" for a in new)
        else:
            trail = "audit trail: no entry" + (
                f" ({unaudited_because})" if unaudited_because else ""
            )
        return f"{trail}; register unchanged; nothing issued"

    def check_unchanged_except_served(self, before: Snapshot) -> str:
        """check_unchanged for an attack during which positive controls were served: only
        those devices changed (customized, one certificate each, audited as such)."""
        after = self.snapshot()
        changed = {d for d, row in after.register.items() if before.register.get(d) != row}
        assert changed <= set(self.served), f"register changed: {changed - set(self.served)}"
        assert all(after.register[d][0] == "customized" for d in changed), changed
        assert after.customer_issued == before.customer_issued + len(changed)
        assert after.factory_issued == before.factory_issued
        for line in self.audit_since(before.audit_seq):
            assert line.device_id in changed and line.decision in ("issued", "confirmed"), line
        assert self.audit_verifies(), "the audit hash chain does not verify"
        return (
            "register, audit trail and CA records changed only for the legitimate device(s); "
            "nothing issued to the attacker"
        )
