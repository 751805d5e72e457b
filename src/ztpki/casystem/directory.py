"""The CA-system directory: several CAs (each its own key, certificate and policy), the
service CA that authenticates CA-clients, and the issuance store.

Layout::

    DIR/system.toml                 default CA
    DIR/store.sqlite                every certificate issued, registered CA-clients
    DIR/cas/<name>/ca.pem           the CA certificate
    DIR/cas/<name>/chain.pem        its parents up to the root (empty for a root)
    DIR/cas/<name>/ca.key.pem       encrypted PKCS#8 (PBKDF2-SHA256, many rounds), 0600
    DIR/cas/<name>/key.toml         instead of ca.key.pem: the key's PKCS#11 URI (token_keys)
    DIR/cas/<name>/policy.toml      issuing policy
    DIR/cas/<name>/links.pem        a root's key rollovers: oldWithOld, newWithOld, oldWithNew
                                    per rollover (casystem/rollover.py)
    DIR/service/ca.pem, ca.key.pem  the TLS trust anchor of the service and its clients
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import tomli_w
from cryptography import x509

from ztpki.casystem.policy import IssuingPolicy
from ztpki.casystem.token_keys import (
    TokenOptions,
    load_token_key,
    record_token_key,
    recorded_location,
)
from ztpki.errors import ConfigurationError, MalformedInput, UnknownCA
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import (
    KeySpec,
    decode_pkcs8,
    encode_pkcs8_pem,
    generate_private_key,
    keys_match,
)
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pbes2 import AT_REST_KDF_ROUNDS
from ztpki.pki.pem import certificates_pem, load_certificates_pem
from ztpki.pki.profiles import CertificateProfile
from ztpki.pki.rollover import is_self_signed
from ztpki.pki.signer import FILE_KEYS, SigningKey
from ztpki.secretfiles import write_private_file, write_public_file
from ztpki.store.database_url import directory_database

if TYPE_CHECKING:  # the PKCS#11 binding loads only for a CA whose key is in a token
    from ztpki.tokens import TokenKey

CA_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
SERVICE_CA = "service"


@dataclass(frozen=True)
class CAInfo:
    """What `ztpki ca list` shows of one CA."""

    name: str
    subject: str
    issuer: str
    not_after: datetime
    key_algorithm: str
    profile: str
    is_default: bool
    is_root: bool
    key_location: str = "file"  # or the PKCS#11 URI of the key in its token
    # The root's earlier keys (after `ca rollover`): their self-signed certificates' not-after.
    previous_keys: tuple[datetime, ...] = ()


def check_ca_name(name: str) -> str:
    if not CA_NAME.fullmatch(name) or name == SERVICE_CA:
        raise ConfigurationError(
            f"CA name {name[:64]!r} must be 1-64 characters of A-Z a-z 0-9 . _ - and not "
            f"'{SERVICE_CA}'"
        )
    return name


# The embedded SQLite store of a CA system without a database.url.
STORE_FILE = "store.sqlite"


class CASystemDirectory:
    """Reads and writes one CA-system directory. Keys are decrypted only on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def store_path(self) -> Path:
        return self.root / STORE_FILE

    @property
    def store_location(self) -> Path | str:
        """The issuance store: the URL of database.url (PostgreSQL), else store.sqlite."""
        return directory_database(self.root, STORE_FILE)

    def ca_dir(self, name: str) -> Path:
        return self.root / "cas" / name

    def ca_names(self) -> list[str]:
        cas = self.root / "cas"
        return (
            sorted(p.name for p in cas.iterdir() if (p / "ca.pem").exists()) if cas.exists() else []
        )

    def default_ca(self) -> str:
        try:
            data = tomllib.loads((self.root / "system.toml").read_text(encoding="utf-8"))
            return str(data["default_ca"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            names = self.ca_names()
            if not names:
                raise ConfigurationError(
                    f"{self.root} holds no CA yet; "
                    f"create one with `ztpki ca init --dir {self.root}`"
                ) from None
            return names[0]

    def set_default_ca(self, name: str) -> None:
        write_public_file(
            self.root / "system.toml",
            (
                "# The CA used for requests that name none.\n" + tomli_w.dumps({"default_ca": name})
            ).encode(),
        )

    def certificate(self, name: str) -> x509.Certificate:
        return self._certs(self.ca_dir(name) / "ca.pem", name)[0]

    def parents(self, name: str) -> tuple[x509.Certificate, ...]:
        path = self.ca_dir(name) / "chain.pem"
        if not path.exists() or not path.read_bytes().strip():
            return ()
        return tuple(self._certs(path, name))

    def links(self, name: str) -> tuple[x509.Certificate, ...]:
        """A root's rollover certificates (links.pem), oldest first; () before any rollover."""
        path = self.ca_dir(name) / "links.pem"
        if not path.exists():
            return ()
        return tuple(self._certs(path, name))

    def previous_roots(self, name: str) -> tuple[x509.Certificate, ...]:
        """The self-signed certificates of a root's earlier keys (oldWithOld of each rollover)."""
        return tuple(c for c in self.links(name) if is_self_signed(c))

    def export_chain(self, name: str) -> tuple[x509.Certificate, ...]:
        """The CA's chain up to its root, then -- when that root rolled its key over -- the
        root's current certificate and every rollover's certificates (RFC 7030 4.1.3)."""
        chain = (self.certificate(name), *self.parents(name))
        top = chain[-1]
        for other in self.ca_names():
            current = self.certificate(other)
            if current.subject != top.subject or self.parents(other):
                continue
            extra = (current, *self.links(other))
            chain += tuple(c for i, c in enumerate(extra) if c not in chain and c not in extra[:i])
        return chain

    def check_not_rolling(self, name: str) -> None:
        if (self.ca_dir(name) / "rollover.pending").exists():
            raise ConfigurationError(
                f"a key rollover of CA {name} was interrupted: its key and certificate may not "
                f"match yet; finish it with `ztpki ca rollover --dir {self.root} --name {name}`"
            )

    def key_paths(self) -> list[Path]:
        """The key files of every CA of the system: the issuing CAs' and the service CA's, and
        the OCSP responder keys a rolled-over root's earlier keys certified (rollover_ocsp)."""
        paths = [self.ca_dir(n) / "ca.key.pem" for n in self.ca_names()]
        for name in self.ca_names():
            paths += sorted(self.ca_dir(name).glob("previous-keys/*/ocsp.key.pem"))
        paths.append(self.root / SERVICE_CA / "ca.key.pem")
        return [p for p in paths if p.exists()]

    def check_passphrase(self, passphrase: bytes | None) -> None:
        """Refuse a passphrase that does not open the keys the system already holds.

        `ztpki ca serve` opens every key of a system with one passphrase, so new key material
        under another one would be created without complaint and then keep the service from
        starting. One existing key is enough to check: they all share the passphrase.
        """
        existing = self.key_paths()
        if not existing:
            return
        try:
            decode_pkcs8(existing[0].read_bytes(), passphrase=passphrase)
        except MalformedInput:
            raise ConfigurationError(
                f"wrong or missing passphrase for CA system {self.root}: every key of a CA "
                f"system shares one passphrase, and this one does not open {existing[0]}; give "
                "the system's passphrase (--passphrase-file or ZTPKI_CA_PASSPHRASE)"
            ) from None

    def policy(self, name: str) -> IssuingPolicy:
        self._require(name)
        return IssuingPolicy.load(self.ca_dir(name) / "policy.toml")

    def load_authority(
        self, name: str, *, passphrase: bytes | None, tokens: TokenOptions | None = None
    ) -> CertificateAuthority:
        """The CA ready to sign: its key file decrypted, or its token key found (sessions
        open, PIN from ZTPKI_PKCS11_PIN or ``tokens.pin_file``)."""
        self._require(name)
        self.check_not_rolling(name)
        token_key = load_token_key(self.ca_dir(name), tokens or TokenOptions())
        if token_key is not None:
            certificate = self.certificate(name)
            # key.toml is a plain file: pointed at another key object, the CA would sign
            # certificates that verify under no CA certificate.
            if not keys_match(token_key, certificate.public_key()):
                raise ConfigurationError(
                    f"the token key of CA {name} ({token_key.location}) is not the key of its "
                    f"certificate {self.ca_dir(name) / 'ca.pem'}; fix the URI in key.toml"
                )
            return CertificateAuthority(
                name=name, key=token_key, certificate=certificate, parents=self.parents(name)
            )
        key_bytes = (self.ca_dir(name) / "ca.key.pem").read_bytes()
        try:
            key = decode_pkcs8(key_bytes, passphrase=passphrase)
        except MalformedInput:
            raise ConfigurationError(
                f"cannot open the key of CA {name}: wrong or missing passphrase "
                "(--passphrase-file or ZTPKI_CA_PASSPHRASE)"
            ) from None
        certificate = self.certificate(name)
        if not keys_match(key, certificate.public_key()):
            raise ConfigurationError(
                f"the key file of CA {name} is not the key of its certificate "
                f"{self.ca_dir(name) / 'ca.pem'}"
            )
        return CertificateAuthority(
            name=name, key=key, certificate=certificate, parents=self.parents(name)
        )

    def info(self, name: str) -> CAInfo:
        cert = self.certificate(name)
        from ztpki.pki.keys import key_spec_of

        return CAInfo(
            name=name,
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            not_after=cert.not_valid_after_utc,
            key_algorithm=key_spec_of(cert.public_key()).value,
            profile=self.policy(name).profile.value,
            is_default=name == self.default_ca(),
            is_root=not self.parents(name),
            key_location=recorded_location(self.ca_dir(name)) or "file",
            previous_keys=tuple(c.not_valid_after_utc for c in self.previous_roots(name)),
        )

    def write_ca(
        self,
        name: str,
        *,
        key_pem: bytes | None,
        certificate: x509.Certificate,
        parents: tuple[x509.Certificate, ...],
        policy: IssuingPolicy,
    ) -> None:
        directory = self.ca_dir(name)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if key_pem is not None:  # None: the key lives in a token (key.toml, written first)
            write_private_file(directory / "ca.key.pem", key_pem)
        write_public_file(directory / "chain.pem", certificates_pem(parents))
        policy.save(directory / "policy.toml")
        # ca.pem last: its presence is what makes the CA exist.
        write_public_file(directory / "ca.pem", certificates_pem([certificate]))

    def _require(self, name: str) -> None:
        if not (self.ca_dir(name) / "ca.pem").exists():
            known = ", ".join(self.ca_names()) or "none"
            raise UnknownCA(f"no CA named {name!r} in {self.root} (known: {known})")

    def _certs(self, path: Path, name: str) -> list[x509.Certificate]:
        try:
            return load_certificates_pem(path.read_bytes())
        except OSError:
            raise UnknownCA(f"no CA named {name!r} in {self.root}") from None
        except MalformedInput:
            raise ConfigurationError(f"{path} is corrupt: it holds no valid certificate") from None


def _ca_subject(name: str, fields: SubjectFields, common_name: str | None) -> x509.Name:
    return build_subject(common_name or name, fields, serial_number=None)


def subordinate_path_length(parent: CertificateAuthority, requested: int | None) -> int:
    """The pathLenConstraint of a new CA under parent (RFC 5280 4.2.1.9), or a refusal.

    A subordinate gets 0 (it issues end-entity certificates only) unless asked for more; a
    parent whose own constraint leaves no room for another CA below it is refused, since
    every verifier (`openssl verify` among them) would refuse the chain.
    """
    try:
        constraints = parent.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.value.ca:
        raise ConfigurationError(f"{parent.name} is not a CA certificate; it cannot be a parent")
    limit = constraints.value.path_length
    if limit == 0:
        raise ConfigurationError(
            f"CA {parent.name} has path length 0: it may issue device and server certificates "
            "but no further CA, and a chain through one would not verify. Choose a parent with "
            "room below it: a root, or a CA created with `ztpki ca init --parent ... "
            "--path-length 1` (or more)"
        )
    wanted = 0 if requested is None else requested
    if wanted < 0:
        raise ConfigurationError("--path-length must be 0 or more")
    if limit is not None and wanted >= limit:
        raise ConfigurationError(
            f"--path-length {wanted} is too long under CA {parent.name}, whose path length is "
            f"{limit}; use at most {limit - 1}"
        )
    return wanted


def init_ca(
    directory: CASystemDirectory,
    name: str,
    *,
    key_spec: KeySpec,
    validity_days: int,
    passphrase: bytes | None,
    now: datetime,
    parent: CertificateAuthority | None = None,
    path_length: int | None = None,
    policy: IssuingPolicy | None = None,
    subject: SubjectFields | None = None,
    common_name: str | None = None,
    make_default: bool = False,
    token_key: TokenKey | None = None,
) -> CertificateAuthority:
    """Create a CA in directory: a root, or subordinate to parent (another system or this one).

    A subordinate's path length is 0 unless path_length says more; a root has none. With
    ``token_key`` the CA's key is that key in its token (made by token_keys.create_token_key)
    and no key file is written. Nothing is written unless every check passes.
    """
    check_ca_name(name)
    if (directory.ca_dir(name) / "ca.pem").exists():
        raise ConfigurationError(f"CA {name!r} already exists in {directory.root}")
    if validity_days <= 0:
        raise ConfigurationError("--validity-days must be positive")
    if parent is None and path_length is not None:
        raise ConfigurationError(
            "--path-length applies to a subordinate CA (give --parent); a root has no limit"
        )
    sub_path_length = subordinate_path_length(parent, path_length) if parent else None
    directory.check_passphrase(passphrase)
    fields = subject or SubjectFields()
    key: SigningKey = token_key if token_key is not None else generate_private_key(key_spec)
    ca_subject = _ca_subject(name, fields, common_name)
    if parent is None:
        certificate = create_self_signed_ca(
            key, ca_subject, now=now, validity=timedelta(days=validity_days)
        )
        parents: tuple[x509.Certificate, ...] = ()
    else:
        grant = IssuanceGrant(
            subject=ca_subject,
            profile=CertificateProfile.CA,
            not_before=now - timedelta(minutes=5),
            not_after=now + timedelta(days=validity_days),
            path_length=sub_path_length,
        )
        certificate = parent.issue(key.public_key(), grant)
        parents = parent.chain
    policy = policy or IssuingPolicy(subject=fields)
    directory.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_pem = None
    if token_key is None:
        assert isinstance(key, FILE_KEYS)
        key_pem = encode_pkcs8_pem(key, passphrase=passphrase, kdf_rounds=AT_REST_KDF_ROUNDS)
    else:
        ca_dir = directory.ca_dir(name)
        ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        record_token_key(ca_dir, token_key)
    directory.write_ca(
        name,
        key_pem=key_pem,
        certificate=certificate,
        parents=parents,
        policy=policy,
    )
    if make_default or not (directory.root / "system.toml").exists():
        directory.set_default_ca(name)
    return CertificateAuthority(name=name, key=key, certificate=certificate, parents=parents)


def service_authority(
    directory: CASystemDirectory, *, passphrase: bytes | None, now: datetime
) -> CertificateAuthority:
    """The CA that issues the service's TLS certificate and CA-client credentials.

    Created on first use; it is separate from the issuing CAs so that a CA-client credential
    can never be mistaken for a device identity.
    """
    service_dir = directory.root / SERVICE_CA
    cert_path = service_dir / "ca.pem"
    if cert_path.exists():
        try:
            key = decode_pkcs8((service_dir / "ca.key.pem").read_bytes(), passphrase=passphrase)
        except MalformedInput:
            raise ConfigurationError(
                f"cannot open the service key of {directory.root}: wrong or missing passphrase "
                "(--passphrase-file or ZTPKI_CA_PASSPHRASE)"
            ) from None
        cert = load_certificates_pem(cert_path.read_bytes())[0]
        return CertificateAuthority(name=SERVICE_CA, key=key, certificate=cert)
    directory.check_passphrase(passphrase)
    key = generate_private_key(KeySpec.EC_P256)
    subject = build_subject(
        f"ztpki CA-system service {directory.root.resolve().name}",
        SubjectFields(),
        serial_number=None,
    )
    cert = create_self_signed_ca(key, subject, now=now, validity=timedelta(days=3650))
    service_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_pem = encode_pkcs8_pem(key, passphrase=passphrase, kdf_rounds=AT_REST_KDF_ROUNDS)
    write_private_file(service_dir / "ca.key.pem", key_pem)
    write_public_file(cert_path, certificates_pem([cert]))
    return CertificateAuthority(name=SERVICE_CA, key=key, certificate=cert)
