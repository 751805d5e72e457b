"""The tables of the customer node's register (SQLite), and the migrations of older ones.

The state machine lives in the schema as well as in the store: CHECK constraints allow only
the known states and tie ISSUING to a held lease and BLOCKED to a remembered state.
"""

from __future__ import annotations

from ztpki.store.cmp_secrets import CMP_MAC_KEY_TABLE
from ztpki.store.cmp_transactions import (
    CMP_TRANSACTION_INDEX,
    CMP_TRANSACTION_TABLE,
    CMP_TRANSACTION_V8,
)
from ztpki.store.console_sessions import SESSION_SCHEMA
from ztpki.store.pg_schema import postgres_ddl
from ztpki.store.sqlite_console import CONSOLE_SCHEMA

SCHEMA_COMPONENT = "customer_node"
# Version 2: manifests are keyed by (manufacturer, manifest_id). Version 3: a device remembers
# the EST label its issuance began under (one live certificate, whatever the label). Version 4:
# the final state RETIRED, the renewal awaiting confirmation (renewed_from), and the durable
# queue of revocations the node owes the customer CA system. Version 5: the lease of the one
# process (of every node machine sharing the register) that sends the queue's orders.
# Version 6: CMP transactions (ztpki.store.cmp_transactions).
# Version 7: the web console's operators, and the indexes its pages read by
# (ztpki.store.sqlite_console).
# Version 8: a CMP transaction keeps its key request, and whether its device was told to poll.
# Version 9: the web console's sessions (ztpki.store.console_sessions).
# Version 10: the devices' CMP shared secrets for MAC-based protection (ztpki.store.cmp_secrets).
SCHEMA_VERSION = 10

_STATES = "'listed', 'issuing', 'issued', 'customized', 'blocked'"
_STATES_V4 = f"{_STATES}, 'retired'"
_RESTING = "'listed', 'issued', 'customized'"


def _manifest_table(name: str) -> str:
    return f"""
    CREATE TABLE {name} (
        manufacturer TEXT NOT NULL CHECK (manufacturer <> ''),
        manifest_id  TEXT NOT NULL CHECK (manifest_id <> ''),
        issued_at    TEXT NOT NULL,
        signer       TEXT NOT NULL,
        device_count INTEGER NOT NULL CHECK (device_count >= 0),
        imported_at  TEXT NOT NULL,
        PRIMARY KEY (manufacturer, manifest_id)
    )"""


_ISSUANCE_LABEL = "issuance_label TEXT CHECK (issuance_label <> '')"
# The previous operational certificate of a renewal that the device has not used yet: it is
# revoked (superseded) once the renewed certificate is first used, after the grace period.
_RENEWED_FROM = "renewed_from TEXT CHECK (renewed_from <> '')"


def _device_table(name: str, *, issuance_label: bool = True, version: int = 3) -> str:
    # Older versions' tables stay as they were built: their migrations must not change.
    label = f"{_ISSUANCE_LABEL}," if issuance_label else ""
    states = _STATES_V4 if version >= 4 else _STATES
    renewed = f"{_RENEWED_FROM}," if version >= 4 else ""
    return f"""
    CREATE TABLE {name} (
        device_id              TEXT PRIMARY KEY CHECK (device_id <> ''),
        state                  TEXT NOT NULL CHECK (state IN ({states})),
        temp_fingerprint       TEXT CHECK (length(temp_fingerprint) = 64),
        manufacturer           TEXT,
        model                  TEXT,
        batch                  TEXT,
        manifest_id            TEXT,
        issued_serial          TEXT,
        issued_spki            TEXT,
        issued_certificate_der BLOB,
        blocked_from           TEXT CHECK (blocked_from IN ({_RESTING})),
        lease_token            TEXT,
        lease_expires          TEXT,
        previous_state         TEXT CHECK (previous_state IN ({_RESTING})),
        updated_at             TEXT NOT NULL,
        {label}
        {renewed}
        FOREIGN KEY (manufacturer, manifest_id) REFERENCES manifest (manufacturer, manifest_id),
        CHECK (manifest_id IS NULL OR manufacturer IS NOT NULL),
        CHECK ((state = 'issuing' AND lease_token IS NOT NULL AND lease_expires IS NOT NULL
                AND previous_state IS NOT NULL)
            OR (state <> 'issuing' AND lease_token IS NULL AND lease_expires IS NULL
                AND previous_state IS NULL)),
        CHECK ((state = 'blocked' AND blocked_from IS NOT NULL)
            OR (state <> 'blocked' AND blocked_from IS NULL)),
        CHECK (state NOT IN ('issued', 'customized')
            OR (issued_serial IS NOT NULL AND issued_spki IS NOT NULL
                AND issued_certificate_der IS NOT NULL))
    )"""


_DEVICE_INDEX = "CREATE INDEX device_by_state ON device (state, device_id)"

# The revocations the node owes the customer CA system, in the order they were decided, and
# their outcome: written in the same transaction as the state change that causes them, sent by
# the running node (``seq`` orders two orders on one certificate: a hold before its release).
# WAITING: a renewal's superseded certificate, due once the renewed one is confirmed.
_REVOCATION_TABLE = """
    CREATE TABLE node_revocation (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id   TEXT NOT NULL CHECK (device_id <> ''),
        label       TEXT NOT NULL CHECK (label <> ''),
        ca_name     TEXT CHECK (ca_name <> ''),
        serial      TEXT NOT NULL CHECK (serial <> ''),
        action      TEXT NOT NULL CHECK (action IN ('revoke', 'release')),
        reason      TEXT NOT NULL CHECK (reason <> ''),
        status      TEXT NOT NULL CHECK (status IN ('waiting', 'pending', 'done', 'refused')),
        created_at  TEXT NOT NULL,
        due_at      TEXT,
        attempts    INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        last_error  TEXT,
        done_at     TEXT,
        CHECK ((status = 'waiting') = (due_at IS NULL)),
        CHECK ((status IN ('done', 'refused')) = (done_at IS NOT NULL))
    )"""
_REVOCATION_INDEXES = (
    "CREATE INDEX node_revocation_open ON node_revocation (status, due_at, seq)",
    "CREATE INDEX node_revocation_by_device ON node_revocation (device_id, seq)",
    "CREATE INDEX node_revocation_by_serial ON node_revocation (serial, seq)",
)

# The revocation sender's lease: one row, held by at most one process of every node machine and
# worker sharing the register until ``expires_at`` (renewed as it works). ``token`` grows by one
# whenever a process takes the lease (a fencing token): an order is closed only under the
# current token, so a sender that lost the lease (stuck past its expiry, taken over) changes
# nothing. Instants are encoded as everywhere in the register (UTC, fixed width: they compare
# as text).
_SENDER_LEASE_TABLE = """
    CREATE TABLE node_sender_lease (
        name       TEXT PRIMARY KEY CHECK (name = 'revocations'),
        holder     TEXT NOT NULL CHECK (holder <> ''),
        token      INTEGER NOT NULL CHECK (token > 0),
        expires_at TEXT NOT NULL
    )"""

_DEVICE_CHAIN_TABLE = """
    CREATE TABLE device_chain (
        device_id       TEXT NOT NULL REFERENCES device (device_id) ON DELETE CASCADE,
        position        INTEGER NOT NULL CHECK (position >= 0),
        certificate_der BLOB NOT NULL,
        PRIMARY KEY (device_id, position)
    )"""

REGISTER_SCHEMA = (
    _manifest_table("manifest"),
    _device_table("device", version=4),
    _DEVICE_INDEX,
    _DEVICE_CHAIN_TABLE,
    _REVOCATION_TABLE,
    *_REVOCATION_INDEXES,
    _SENDER_LEASE_TABLE,
    CMP_TRANSACTION_TABLE,
    CMP_TRANSACTION_INDEX,
    *CMP_TRANSACTION_V8,
    CMP_MAC_KEY_TABLE,
)

# Version 1 keyed manifests by manifest_id alone. A manifest's manufacturer is the one its
# devices were listed for (every device of a manifest has it); one that listed no device
# gets 'unknown'. The device table is rebuilt for its new reference to (manufacturer, id).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        _manifest_table("manifest_v2"),
        "INSERT INTO manifest_v2 (manufacturer, manifest_id, issued_at, signer, device_count, "
        "imported_at) SELECT COALESCE((SELECT d.manufacturer FROM device d "
        "WHERE d.manifest_id = m.manifest_id AND d.manufacturer IS NOT NULL "
        "ORDER BY d.device_id LIMIT 1), 'unknown'), m.manifest_id, m.issued_at, m.signer, "
        "m.device_count, m.imported_at FROM manifest m",
        _device_table("device_v2", issuance_label=False),
        "INSERT INTO device_v2 SELECT * FROM device",
        "DROP TABLE device",
        "DROP TABLE manifest",
        "ALTER TABLE manifest_v2 RENAME TO manifest",
        "ALTER TABLE device_v2 RENAME TO device",
        _DEVICE_INDEX,
    ),
    # Devices of a version-2 register gain the column empty: an issued device falls back to
    # the label of its certificate's CA.
    2: (f"ALTER TABLE device ADD COLUMN {_ISSUANCE_LABEL}",),
    # Version 4 rebuilds the device table for its new state (a CHECK constraint) and column
    # (device_chain's reference names the table, and finds the new one), and adds the queue.
    3: (
        _device_table("device_v4", version=4),
        "INSERT INTO device_v4 (device_id, state, temp_fingerprint, manufacturer, model, batch, "
        "manifest_id, issued_serial, issued_spki, issued_certificate_der, blocked_from, "
        "lease_token, lease_expires, previous_state, updated_at, issuance_label) "
        "SELECT device_id, state, temp_fingerprint, manufacturer, model, batch, manifest_id, "
        "issued_serial, issued_spki, issued_certificate_der, blocked_from, lease_token, "
        "lease_expires, previous_state, updated_at, issuance_label FROM device",
        "DROP TABLE device",
        "ALTER TABLE device_v4 RENAME TO device",
        _DEVICE_INDEX,
        _REVOCATION_TABLE,
        *_REVOCATION_INDEXES,
    ),
    4: (_SENDER_LEASE_TABLE,),
    5: (CMP_TRANSACTION_TABLE, CMP_TRANSACTION_INDEX),
    6: CONSOLE_SCHEMA,
    7: CMP_TRANSACTION_V8,
    8: SESSION_SCHEMA,
    9: (CMP_MAC_KEY_TABLE,),
}

# PostgreSQL registers were first created at version 4: their steps start there.
POSTGRES_MIGRATIONS: dict[int, tuple[str, ...]] = {
    4: (postgres_ddl(_SENDER_LEASE_TABLE),),
    5: (postgres_ddl(CMP_TRANSACTION_TABLE), CMP_TRANSACTION_INDEX),
    6: tuple(postgres_ddl(statement) for statement in CONSOLE_SCHEMA),
    7: tuple(postgres_ddl(statement) for statement in CMP_TRANSACTION_V8),
    8: tuple(postgres_ddl(statement) for statement in SESSION_SCHEMA),
    9: (postgres_ddl(CMP_MAC_KEY_TABLE),),
}
