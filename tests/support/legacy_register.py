"""A register of schema version 1, as the first ztpki created it (frozen here on purpose)."""

from __future__ import annotations

_V1_STATES = "'listed', 'issuing', 'issued', 'customized', 'blocked'"
_V1_RESTING = "'listed', 'issued', 'customized'"
V1_SCHEMA = (
    """
    CREATE TABLE manifest (
        manifest_id  TEXT PRIMARY KEY CHECK (manifest_id <> ''),
        issued_at    TEXT NOT NULL,
        signer       TEXT NOT NULL,
        device_count INTEGER NOT NULL CHECK (device_count >= 0),
        imported_at  TEXT NOT NULL
    )""",
    f"""
    CREATE TABLE device (
        device_id              TEXT PRIMARY KEY CHECK (device_id <> ''),
        state                  TEXT NOT NULL CHECK (state IN ({_V1_STATES})),
        temp_fingerprint       TEXT CHECK (length(temp_fingerprint) = 64),
        manufacturer           TEXT,
        model                  TEXT,
        batch                  TEXT,
        manifest_id            TEXT REFERENCES manifest (manifest_id),
        issued_serial          TEXT,
        issued_spki            TEXT,
        issued_certificate_der BLOB,
        blocked_from           TEXT CHECK (blocked_from IN ({_V1_RESTING})),
        lease_token            TEXT,
        lease_expires          TEXT,
        previous_state         TEXT CHECK (previous_state IN ({_V1_RESTING})),
        updated_at             TEXT NOT NULL
    )""",
    "CREATE INDEX device_by_state ON device (state, device_id)",
    """
    CREATE TABLE device_chain (
        device_id       TEXT NOT NULL REFERENCES device (device_id) ON DELETE CASCADE,
        position        INTEGER NOT NULL CHECK (position >= 0),
        certificate_der BLOB NOT NULL,
        PRIMARY KEY (device_id, position)
    )""",
)


# Undo what schema version 10 added (the devices' CMP shared secrets): a register of version 9
# or older, as a test that fakes one by dropping what came later must leave it.
BEFORE_CMP_SECRETS = ("DROP TABLE cmp_secret",)

# Undo what schema versions 7 and later added (the web console's table and indexes, ...): a
# register of version 6 or older.
BEFORE_CONSOLE = (
    *BEFORE_CMP_SECRETS,
    # Schema 9's sessions reference the operators: they go first.
    "DROP TABLE IF EXISTS console_session",
    "DROP TABLE console_operator",
    "DROP INDEX IF EXISTS device_by_batch",
    "DROP INDEX IF EXISTS device_by_label",
    "DROP INDEX IF EXISTS device_by_maker",
    "DROP INDEX IF EXISTS audit_entry_by_decision",
)
