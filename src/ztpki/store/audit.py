"""The audit trail's hash chain: canonical encoding, entry hashes and verification (no I/O).

Each entry's hash covers its position (``seq``), every field of the decision and the previous
entry's hash, so editing, deleting, inserting or reordering any entry but the newest breaks
every later link. Truncating the newest entries is only detectable against a head hash kept
elsewhere (``expected_head``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime

from ztpki.store.instants import encode_instant
from ztpki.store.records import AuditEntry, AuditRecord, AuditVerification

GENESIS = "0" * 64


def canonical_bytes(
    *,
    seq: int,
    at: datetime,
    device_id: str | None,
    client_fingerprint: str | None,
    endpoint: str,
    decision: str,
    reason: str,
    serial: str | None,
) -> bytes:
    """Deterministic JSON (sorted keys, no spaces, UTF-8, UTC microsecond times)."""
    document = {
        "seq": seq,
        "at": encode_instant(at, name="at"),
        "device_id": device_id,
        "client_fingerprint": client_fingerprint,
        "endpoint": endpoint,
        "decision": decision,
        "reason": reason,
        "serial": serial,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def chain_hash(prev_hash: str, canonical: bytes) -> str:
    """SHA-256 hex over the previous hash (ASCII hex) followed by the canonical entry."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical).hexdigest()


def next_entry(record: AuditRecord, *, seq: int, prev_hash: str) -> AuditEntry:
    """The chained entry for ``record`` placed after an entry with hash ``prev_hash``."""
    canonical = canonical_bytes(
        seq=seq,
        at=record.at,
        device_id=record.device_id,
        client_fingerprint=record.client_fingerprint,
        endpoint=record.endpoint,
        decision=record.decision,
        reason=record.reason,
        serial=record.serial,
    )
    return AuditEntry(
        seq=seq,
        at=record.at,
        device_id=record.device_id,
        client_fingerprint=record.client_fingerprint,
        endpoint=record.endpoint,
        decision=record.decision,
        reason=record.reason,
        serial=record.serial,
        prev_hash=prev_hash,
        entry_hash=chain_hash(prev_hash, canonical),
    )


def entry_hash_of(entry: AuditEntry) -> str:
    """Recompute the hash ``entry`` should carry given its fields and ``prev_hash``."""
    canonical = canonical_bytes(
        seq=entry.seq,
        at=entry.at,
        device_id=entry.device_id,
        client_fingerprint=entry.client_fingerprint,
        endpoint=entry.endpoint,
        decision=entry.decision,
        reason=entry.reason,
        serial=entry.serial,
    )
    return chain_hash(entry.prev_hash, canonical)


def verify_chain(
    entries: Iterable[AuditEntry], *, expected_head: str | None = None
) -> AuditVerification:
    """Check entries in order from seq 1: numbering, links and hashes; stop at the first bad one.

    ``expected_head``, when given, is the hash the newest entry must carry (kept outside the
    database, it also exposes a truncated trail).
    """
    expected_seq = 1
    prev_hash = GENESIS
    checked = 0
    for entry in entries:
        checked += 1
        problem = _problem(entry, expected_seq=expected_seq, prev_hash=prev_hash)
        if problem:
            return AuditVerification(False, checked, entry.seq, problem)
        expected_seq += 1
        prev_hash = entry.entry_hash
    if expected_head is not None and expected_head != prev_hash:
        reason = "the newest entry does not carry the expected head hash; entries may be missing"
        return AuditVerification(False, checked, None, reason)
    return AuditVerification(True, checked, None, f"{checked} entries verified")


def _problem(entry: AuditEntry, *, expected_seq: int, prev_hash: str) -> str:
    if entry.seq != expected_seq:
        return f"entry {entry.seq} found where entry {expected_seq} was expected"
    if entry.prev_hash != prev_hash:
        return f"entry {entry.seq} does not link to the entry before it"
    if entry_hash_of(entry) != entry.entry_hash:
        return f"entry {entry.seq} was altered: its content does not match its hash"
    return ""
