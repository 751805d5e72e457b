"""`ztpki ca rollover`: a root CA moves to a new key (RFC 4210 section 4.4), durably.

What a rollover leaves in ``cas/NAME/``::

    ca.pem        newWithNew: the new self-signed root; the CA issues with the new key
    ca.key.pem    the new key (or key.toml: the new key in a token)
    links.pem     every rollover's oldWithOld, newWithOld and oldWithNew, oldest first
    previous-keys/<SKI>/ocsp.pem, ocsp.key.pem
                  the OCSP responder the old key issued before it was deleted, which answers
                  for that key's certificates until the last of them expires (rollover_ocsp)

The old private key is not kept: RFC 4210 4.4 needs it no longer once the three certificates
(and the old key's OCSP responder certificate) exist. Everything the old key signed stays
valid until it expires: a party that trusts the new root reaches it through oldWithNew, and
the CA's one CRL, now signed with the new key, covers certificates of either key (RFC 5280 5:
one CRL per issuer name; a party that still trusts only the old root validates the CRL's
signer through newWithOld, RFC 5280 6.3.3 (f)).

Crash safety: every new file is first written to ``rollover.tmp/``, which becomes
``rollover.pending/`` by one rename; only then are the CA's own files replaced, ca.pem last.
While ``rollover.pending/`` exists the CA does not load (its key and certificate may not
match yet) and running `ca rollover` again finishes that rollover instead of starting
another; no step can leave the CA with a key that no certificate carries.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509

from ztpki.casystem.directory import CASystemDirectory
from ztpki.casystem.rollover_ocsp import (
    finish_previous_responder,
    issued_until,
    stage_previous_responder,
)
from ztpki.casystem.token_keys import KEY_FILE, TokenOptions, record_token_key
from ztpki.errors import ConfigurationError
from ztpki.pki.keys import KeySpec, encode_pkcs8_pem, generate_private_key
from ztpki.pki.pbes2 import AT_REST_KDF_ROUNDS
from ztpki.pki.pem import certificates_pem, load_certificates_pem
from ztpki.pki.rollover import RootKeyUpdate, find_update, update_root_key
from ztpki.pki.signer import FILE_KEYS, SigningKey
from ztpki.secretfiles import sync_directory, write_private_file, write_public_file

if TYPE_CHECKING:
    from ztpki.tokens import TokenKey

log = logging.getLogger(__name__)

PENDING = "rollover.pending"
STAGING = "rollover.tmp"
LINKS_FILE = "links.pem"
KEY_PEM = "ca.key.pem"


@dataclass(frozen=True)
class RolloverDone:
    name: str
    update: RootKeyUpdate
    resumed: bool  # an interrupted rollover was finished, no new key was made


def rollover_ca(
    directory: CASystemDirectory,
    name: str,
    *,
    key_spec: KeySpec,
    validity_days: int,
    passphrase: bytes | None,
    now: datetime,
    tokens: TokenOptions | None = None,
    token_key: TokenKey | None = None,
) -> RolloverDone:
    """Roll root CA ``name`` over to a new key (``token_key``, else a new key file), or finish
    the rollover a crash interrupted."""
    ca_dir = directory.ca_dir(name)
    if (ca_dir / PENDING).exists():
        return _finish(directory, name, resumed=True)
    if validity_days <= 0:
        raise ConfigurationError("--validity-days must be positive")
    old = directory.load_authority(name, passphrase=passphrase, tokens=tokens)
    if old.parents:
        raise ConfigurationError(
            f"CA {name} is a subordinate CA: only a root rolls its key over with link "
            "certificates; give the subordinate a new certificate from its parent "
            "(`ztpki ca init --parent ...`) instead"
        )
    until = issued_until(directory, name, now=now)  # before anything is written: it may fail
    new_key: SigningKey = token_key if token_key is not None else generate_private_key(key_spec)
    update = update_root_key(
        old.key, old.certificate, new_key, now=now, validity=timedelta(days=validity_days)
    )
    staging = ca_dir / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # a crash before the rename: start again
    staging.mkdir(mode=0o700)
    if token_key is None:
        assert isinstance(new_key, FILE_KEYS)
        pem = encode_pkcs8_pem(new_key, passphrase=passphrase, kdf_rounds=AT_REST_KDF_ROUNDS)
        write_private_file(staging / KEY_PEM, pem)
    else:
        record_token_key(staging, token_key)
    # The old key's last signature: a responder for what it issued (RFC 6960 4.2.2.2).
    stage_previous_responder(staging, old, until=until, passphrase=passphrase, now=now)
    links = (*directory.links(name), update.old_with_old, *update.links)
    write_public_file(staging / LINKS_FILE, certificates_pem(links), durable=True)
    write_public_file(staging / "ca.pem", certificates_pem([update.new_with_new]), durable=True)
    sync_directory(staging)
    os.rename(staging, ca_dir / PENDING)  # the point of no return: from here, only _finish
    sync_directory(ca_dir)
    return _finish(directory, name, resumed=False)


def _finish(directory: CASystemDirectory, name: str, *, resumed: bool) -> RolloverDone:
    """Move the pending rollover's files into place (each step idempotent), ca.pem last."""
    ca_dir = directory.ca_dir(name)
    pending = ca_dir / PENDING
    new_with_new = load_certificates_pem((pending / "ca.pem").read_bytes())[0]
    links = tuple(load_certificates_pem((pending / LINKS_FILE).read_bytes()))
    update = _last_update(links, new_with_new)
    finish_previous_responder(pending, ca_dir, update.old_with_old)
    if (pending / KEY_PEM).exists():
        write_private_file(ca_dir / KEY_PEM, (pending / KEY_PEM).read_bytes())
        (ca_dir / KEY_FILE).unlink(missing_ok=True)
    else:
        write_public_file(ca_dir / KEY_FILE, (pending / KEY_FILE).read_bytes(), durable=True)
        (ca_dir / KEY_PEM).unlink(missing_ok=True)  # the old key file: no longer needed
    write_public_file(ca_dir / LINKS_FILE, certificates_pem(links), durable=True)
    write_public_file(ca_dir / "ca.pem", certificates_pem([new_with_new]), durable=True)
    shutil.rmtree(pending)
    sync_directory(ca_dir)
    log.info(
        "CA %s rolled over to a new key: %s%s",
        name,
        new_with_new.subject.rfc4514_string(),
        " (an interrupted rollover finished)" if resumed else "",
    )
    return RolloverDone(name, update, resumed)


def _last_update(links: tuple[x509.Certificate, ...], current: x509.Certificate) -> RootKeyUpdate:
    bundle = (*links, current)
    for old in reversed(links):
        update = find_update(old, bundle)
        if update is not None and update.new_with_new == current:
            return update
    raise ConfigurationError("the rollover's link certificates do not link the old root to the new")
