"""Persistence: services depend on the small Protocols here, and every implementation keeps the
invariants in its schema too (unique keys, partial unique indexes, conditional updates in one
transaction), passing the one contract test suite."""

from ztpki.store.audit import GENESIS, canonical_bytes, chain_hash, verify_chain
from ztpki.store.interfaces import AuditLog, IssuanceStore, NodeStore, RegisterStore
from ztpki.store.records import (
    AlreadyIssued,
    AlreadyRecorded,
    AuditEntry,
    AuditRecord,
    AuditVerification,
    CertificateStatus,
    ClientEntitlement,
    ClientRecord,
    ClientStatus,
    DeviceState,
    DuplicateClient,
    DuplicateDevice,
    DuplicateSerial,
    ImportResult,
    IssuedCertificate,
    ManifestRecord,
    NewDevice,
    RefusedRequest,
    RegisteredDevice,
    SupersedeRefused,
)
from ztpki.store.sqlite import (
    SQLiteIssuanceStore,
    SQLiteNodeStore,
    open_sqlite_ca_store,
    open_sqlite_node_store,
)

__all__ = [
    "GENESIS",
    "AlreadyIssued",
    "AlreadyRecorded",
    "AuditEntry",
    "AuditLog",
    "AuditRecord",
    "AuditVerification",
    "CertificateStatus",
    "ClientEntitlement",
    "ClientRecord",
    "ClientStatus",
    "DeviceState",
    "DuplicateClient",
    "DuplicateDevice",
    "DuplicateSerial",
    "ImportResult",
    "IssuanceStore",
    "IssuedCertificate",
    "ManifestRecord",
    "NewDevice",
    "NodeStore",
    "RefusedRequest",
    "RegisterStore",
    "RegisteredDevice",
    "SQLiteIssuanceStore",
    "SQLiteNodeStore",
    "SupersedeRefused",
    "canonical_bytes",
    "chain_hash",
    "open_sqlite_ca_store",
    "open_sqlite_node_store",
    "verify_chain",
]
