"""The device's non-volatile memory (93): a directory holding its identity, crash-safe.

Layout of a device directory (0700; every file 0600)::

    device.json     device id; written last at creation, so it marks a complete device
    identity.json   phase, generation, encrypted PKCS#8 key (a token device: the key's
                    PKCS#11 URI, see ``ztpki.device.token_keys``), certificate, CA certificates
    config.json     what the loading station (and later an installer) configured: e.g. the
                    customer node and its pinned CA (see ``ztpki.device.customer_node``)
    trust.pem       trust anchors: the factory CA certificate(s)
    secret          the device-unique secret, when the default FileSecretProvider is used
    lock            held while writing, so concurrent writers take turns

The whole identity lives in one file, so one rename switches key, certificate and CA
certificates together: a crash at any instant leaves the old or the new identity whole.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from cryptography import x509

from ztpki.device.atomic import (
    DIR_MODE,
    NotDurable,
    StepHook,
    fsync_dir,
    locked,
    read_file,
    remove_stale,
    write_atomic,
)
from ztpki.device.identity import (
    ORDER,
    Identity,
    Phase,
    check_config_value,
    check_device_id,
)
from ztpki.device.key_store import decode_device_key, encode_device_key
from ztpki.device.secrets import FileSecretProvider, SecretProvider
from ztpki.errors import DeviceMemoryError, ZtpkiError
from ztpki.pki.keys import PrivateKey, encode_pkcs8_pem, keys_match
from ztpki.pki.pem import certificate_pem, certificates_pem, load_certificates_pem

__all__ = ["DeviceMemory", "Identity", "Phase"]

logger = logging.getLogger(__name__)

DEVICE_FILE = "device.json"
IDENTITY_FILE = "identity.json"
CONFIG_FILE = "config.json"
TRUST_FILE = "trust.pem"
PENDING_KEY_FILE = "pending-key.pem"
# The serial of the certificate the pending key's request was made with: only while that
# certificate is still installed can the request be unfinished.
PENDING_FOR_FILE = "pending-key.for"
SECRET_FILE = "secret"  # noqa: S105 - a file name, not a secret
LOCK_FILE = "lock"
FORMAT = 1


def _cause(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


class DeviceMemory:
    """A device directory; build with :meth:`create` or :meth:`open`.

    ``_fault_hook`` (test only) is called with each step name of every atomic write, so a
    test can kill the process at a chosen step (see ``atomic.STEPS``).
    """

    def __init__(
        self,
        path: Path,
        *,
        device_id: str,
        secrets: SecretProvider,
        _fault_hook: StepHook | None = None,
    ) -> None:
        self.path = path
        self._device_id = device_id
        self._secrets = secrets
        self._fault_hook = _fault_hook

    def __repr__(self) -> str:
        return f"DeviceMemory({str(self.path)!r}, device_id={self._device_id!r})"

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        device_id: str,
        secrets: SecretProvider | None = None,
        _fault_hook: StepHook | None = None,
    ) -> DeviceMemory:
        """A new blank device in ``path``, which must be absent or an empty directory."""
        check_device_id(device_id)
        path = Path(path)
        try:
            path.mkdir(mode=DIR_MODE, parents=True)
        except FileExistsError:
            if not path.is_dir() or any(path.iterdir()):
                raise DeviceMemoryError(
                    f"cannot create a device in {path}: it exists and is not an empty directory"
                ) from None
        except OSError as exc:
            raise DeviceMemoryError(
                f"cannot create device directory {path}: {_cause(exc)}"
            ) from None
        if secrets is None:
            secrets = FileSecretProvider(path / SECRET_FILE)
        memory = cls(path, device_id=device_id, secrets=secrets, _fault_hook=_fault_hook)
        try:
            os.chmod(path, DIR_MODE)
            fsync_dir(path.parent)
            if isinstance(secrets, FileSecretProvider) and not secrets.path.exists():
                secrets.generate()
        except OSError as exc:
            raise memory._error(f"cannot prepare the directory: {_cause(exc)}") from None
        except ZtpkiError as exc:
            raise memory._error(exc.message) from None
        memory._secret()  # fail before writing anything if the secret is unusable
        with memory._locked():
            memory._write(CONFIG_FILE, b"{}\n")
            memory._write(TRUST_FILE, b"")
            memory._write(IDENTITY_FILE, memory._encode_identity(Identity(Phase.BLANK, 0)))
            record = {"format": FORMAT, "device_id": device_id}
            memory._write(DEVICE_FILE, json.dumps(record, indent=2).encode() + b"\n")
        logger.info("created device memory %s for device %s", path, device_id)
        return memory

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        secrets: SecretProvider | None = None,
        _fault_hook: StepHook | None = None,
    ) -> DeviceMemory:
        """An existing device; removes temporary files a crashed writer left behind."""
        path = Path(path)
        try:
            st = path.stat()
        except OSError as exc:
            raise DeviceMemoryError(
                f"device memory {path} cannot be opened: {_cause(exc)}"
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise DeviceMemoryError(f"device memory {path} is not a directory")
        if st.st_mode & 0o077:
            raise DeviceMemoryError(
                f"device memory {path} is open to other users "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod 700 on it"
            )
        if secrets is None:
            secrets = FileSecretProvider(path / SECRET_FILE)
        memory = cls(path, device_id="", secrets=secrets, _fault_hook=_fault_hook)
        if not (path / DEVICE_FILE).exists():
            raise memory._error(f"not a device memory: {DEVICE_FILE} is missing")
        record = memory._read_json(DEVICE_FILE)
        device_id = record.get("device_id")
        if record.get("format") != FORMAT or not isinstance(device_id, str) or not device_id:
            raise memory._error(f"{DEVICE_FILE} is not a format {FORMAT} device record")
        memory._device_id = device_id
        with memory._locked():
            try:
                removed = remove_stale(path)
            except OSError as exc:
                raise memory._error(f"cannot remove stale files: {_cause(exc)}") from None
        if removed:
            logger.warning("device memory %s: removed unfinished writes %s", path, removed)
        return memory

    @property
    def device_id(self) -> str:
        return self._device_id

    # -- identity ---------------------------------------------------------------------

    def identity(self) -> Identity:
        """The current generation, fully validated (the key decrypts and matches the cert)."""
        record = self._read_identity_record()
        phase, generation = record["phase"], record["generation"]
        if phase is Phase.BLANK:
            if record["private_key"] or record["certificate"] or record["ca_certificates"]:
                raise self._error(f"{IDENTITY_FILE}: a blank identity holds key material")
            return Identity(phase, generation)
        if not record["private_key"] or not record["certificate"]:
            raise self._error(f"{IDENTITY_FILE}: the {phase} identity lacks a key or certificate")
        secret = self._secret()
        try:
            key = decode_device_key(record["private_key"].encode("ascii"), secret)
        except (ZtpkiError, UnicodeError) as exc:
            if isinstance(exc, ZtpkiError) and record["private_key"].startswith("pkcs11:"):
                raise self._error(f"{IDENTITY_FILE}: the key in the token: {exc.message}") from None
            raise self._error(
                f"{IDENTITY_FILE}: the private key does not decrypt with this device's secret"
            ) from None
        certs = self._parse_certs(record["certificate"], f"{IDENTITY_FILE} certificate")
        if len(certs) != 1:
            raise self._error(f"{IDENTITY_FILE}: the certificate field must hold one certificate")
        certificate = certs[0]
        cas = self._parse_certs(record["ca_certificates"], f"{IDENTITY_FILE} CA certificates")
        if not keys_match(key, certificate.public_key()):
            raise self._error(f"{IDENTITY_FILE}: the private key does not match the certificate")
        return Identity(phase, generation, key, certificate, tuple(cas))

    @property
    def phase(self) -> Phase:
        """The current phase, read without decrypting the key (use identity() to validate)."""
        phase: Phase = self._read_identity_record()["phase"]
        return phase

    def replace_identity(
        self,
        *,
        phase: Phase,
        private_key: PrivateKey,
        certificate: x509.Certificate,
        ca_certificates: Sequence[x509.Certificate],
    ) -> Identity:
        """Switch atomically to a new generation; on any error the old identity stays."""
        phase = Phase(phase)
        if phase is Phase.BLANK:
            raise ValueError("an identity cannot be replaced by a blank one")
        if not keys_match(private_key, certificate.public_key()):
            raise self._error("the private key does not belong to the certificate; not replaced")
        with self._locked():
            current = self._read_identity_record()
            if ORDER[phase] < ORDER[current["phase"]]:
                raise self._error(
                    f"refusing to go from a {current['phase']} identity back to a {phase} one"
                )
            new = Identity(
                phase, current["generation"] + 1, private_key, certificate, tuple(ca_certificates)
            )
            self._write(
                IDENTITY_FILE,
                self._encode_identity(new),
                tmp_name=f"{IDENTITY_FILE}.{new.generation}.tmp",
            )
        serial = certificate.serial_number
        logger.info(
            "device %s: identity %d is %s, serial %x", self.device_id, new.generation, phase, serial
        )
        return new

    def replace_ca_certificates(
        self, ca_certificates: Sequence[x509.Certificate], *, generation: int
    ) -> None:
        """Switch the CA certificates of identity ``generation`` (a followed root key update),
        atomically; key and certificate stay as they are. Refused, changing nothing, when
        the memory no longer holds that generation (another process swapped it meanwhile)."""
        text = certificates_pem(ca_certificates).decode("ascii")
        with self._locked():
            record = self._read_identity_record()
            if record["generation"] != generation or record["phase"] is Phase.BLANK:
                raise self._error(
                    f"identity {generation} is no longer the current one; its CA certificates "
                    "were not replaced"
                )
            record["phase"] = record["phase"].value
            record["ca_certificates"] = text
            self._write(IDENTITY_FILE, json.dumps(record, indent=2).encode() + b"\n")
        logger.info(
            "device %s: identity %d now holds %d CA certificate(s)",
            self.device_id,
            generation,
            len(ca_certificates),
        )

    # -- configuration and trust anchors ------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The configuration the loading station (or an installer) wrote."""
        record = self._read_json(CONFIG_FILE)
        try:
            for key, value in record.items():
                check_config_value(key, value)
        except (TypeError, ValueError) as exc:
            raise self._error(f"{CONFIG_FILE}: {exc}") from None
        return record

    def update_config(self, **changes: Any) -> dict[str, Any]:
        """Set keys atomically (a value of None deletes the key); returns the new config."""
        checked = {k: None if v is None else check_config_value(k, v) for k, v in changes.items()}
        with self._locked():
            config = self.config()
            for key, value in checked.items():
                if value is None:
                    config.pop(key, None)
                else:
                    config[key] = value
            data = json.dumps(config, indent=2, sort_keys=True).encode() + b"\n"
            self._write(CONFIG_FILE, data)
        return config

    def trust_anchors(self) -> list[x509.Certificate]:
        """The factory CA certificate(s) the device authenticates the customer node with."""
        return self._parse_certs(self._read(TRUST_FILE).decode("ascii", "replace"), TRUST_FILE)

    def set_trust_anchors(self, certs: Sequence[x509.Certificate]) -> None:
        for cert in certs:
            if not isinstance(cert, x509.Certificate):
                raise TypeError(f"trust anchors are x509.Certificate, not {type(cert).__name__}")
        with self._locked():
            self._write(TRUST_FILE, certificates_pem(certs))

    def pending_key(self) -> PrivateKey | None:
        """The key of a device-side enrollment whose answer has not been installed yet.

        Kept so that a retry after a lost answer sends the same public key, which the node
        answers by re-delivering the certificate instead of superseding it.
        """
        if not (self.path / PENDING_KEY_FILE).exists():
            return None
        try:
            return decode_device_key(self._read(PENDING_KEY_FILE), self._secret())
        except ZtpkiError as exc:
            raise self._error(f"{PENDING_KEY_FILE}: {exc.message}") from None

    def has_pending_key(self) -> bool:
        """Whether a pending key is stored, without decrypting it (a cheap check)."""
        return (self.path / PENDING_KEY_FILE).exists()

    def pending_key_made_with(self) -> str | None:
        """The serial (hex) of the certificate the pending key's request was sent with.

        None when no key is pending, or for a key saved before this was recorded.
        """
        if not self.has_pending_key() or not (self.path / PENDING_FOR_FILE).exists():
            return None
        serial = self._read(PENDING_FOR_FILE).decode("ascii", "replace").strip()
        return serial or None

    def save_pending_key(self, key: PrivateKey, *, made_with: str) -> None:
        """Store the key of a request about to be sent, encrypted with the device secret,
        and the serial of the certificate (``made_with``) that authenticates the request."""
        with self._locked():
            # The serial first: a crash between the two leaves it without a key (ignored),
            # never a key with another request's serial.
            self._write(PENDING_FOR_FILE, made_with.encode("ascii") + b"\n")
            self._write(PENDING_KEY_FILE, encode_device_key(key, self._secret()))

    def clear_pending_key(self) -> None:
        with self._locked():
            for name in (PENDING_KEY_FILE, PENDING_FOR_FILE):
                try:
                    (self.path / name).unlink(missing_ok=True)
                except OSError as exc:
                    raise self._error(f"cannot remove {name}: {_cause(exc)}") from None

    def stored_keys(self) -> set[str]:
        """The keys as stored (PEM or a token key's URI) of the identity and of a pending
        request: what a token must keep (``token_keys.retire_keys``)."""
        stored = {self._read_identity_record()["private_key"] or ""}
        if self.has_pending_key():
            stored.add(self._read(PENDING_KEY_FILE).decode("ascii", "replace"))
        return stored - {""}

    def export_pem(self, out: Path, *, passphrase: bytes | None = None) -> dict[str, Path]:
        """Write key.pem, cert.pem, chain.pem and trust.pem (all 0600) for openssl or curl.

        key.pem is unencrypted PKCS#8 unless a passphrase is given: the operator asked for
        it explicitly, so other tools can act as the device. ``out`` is created 0700.
        """
        identity = self.identity()
        if identity.private_key is None or identity.certificate is None:
            raise self._error("the device has no identity yet (phase blank); nothing to export")
        files = {
            "key": encode_pkcs8_pem(identity.private_key, passphrase=passphrase),
            "cert": certificate_pem(identity.certificate),
            "chain": certificates_pem(identity.ca_certificates),
            "trust": certificates_pem(self.trust_anchors()),
        }
        out = Path(out)
        paths = {name: out / f"{name}.pem" for name in files}
        try:
            out.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            for name, data in files.items():
                write_atomic(paths[name], data)
        except OSError as exc:
            raise self._error(f"cannot export to {out}: {_cause(exc)}") from None
        logger.info("device %s: exported identity to %s", self._device_id, out)
        return paths

    # -- internals ------------------------------------------------------------------------

    def _error(self, message: str) -> DeviceMemoryError:
        return DeviceMemoryError(f"device memory {self.path}: {message}")

    def _secret(self) -> bytes:
        try:
            return self._secrets.secret()
        except ZtpkiError as exc:
            raise self._error(exc.message) from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with ExitStack() as stack:
            try:
                stack.enter_context(locked(self.path / LOCK_FILE))
            except OSError as exc:
                raise self._error(f"cannot take the write lock: {_cause(exc)}") from None
            yield

    def _read(self, name: str) -> bytes:
        try:
            return read_file(self.path / name)
        except OSError as exc:
            raise self._error(f"cannot read {name}: {_cause(exc)}") from None

    def _read_json(self, name: str) -> dict[str, Any]:
        try:
            record = json.loads(self._read(name))
        except (ValueError, UnicodeError):
            raise self._error(f"{name} is not valid JSON") from None
        if not isinstance(record, dict):
            raise self._error(f"{name} does not hold a JSON object")
        return record

    def _write(self, name: str, data: bytes, *, tmp_name: str | None = None) -> None:
        try:
            write_atomic(self.path / name, data, tmp_name=tmp_name, on_step=self._fault_hook)
        except NotDurable as exc:
            raise self._error(
                f"{name} was replaced but could not be made durable ({_cause(exc)}); "
                "it may revert to the previous content after a power loss"
            ) from None
        except OSError as exc:
            raise self._error(
                f"cannot write {name} ({_cause(exc)}); the previous content is unchanged"
            ) from None

    def _read_identity_record(self) -> dict[str, Any]:
        """identity.json checked for shape (not for cryptography), with ``phase`` as a Phase."""
        record = self._read_json(IDENTITY_FILE)
        if record.get("format") != FORMAT:
            raise self._error(f"{IDENTITY_FILE} is not format {FORMAT}")
        fields = ("phase", "generation", "private_key", "certificate", "ca_certificates")
        for name in fields:
            if name not in record:
                raise self._error(f"{IDENTITY_FILE} lacks the field {name!r}")
        generation = record["generation"]
        invalid = [
            name
            for name in fields[2:]
            if record[name] is not None and not isinstance(record[name], str)
        ]
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
            invalid.insert(0, "generation")
        if record["phase"] not in list(Phase):
            invalid.insert(0, "phase")
        if invalid:
            raise self._error(f"{IDENTITY_FILE} has an invalid {', '.join(invalid)}")
        record["phase"] = Phase(record["phase"])
        return record

    def _parse_certs(self, text: str | None, what: str) -> list[x509.Certificate]:
        if not text or not text.strip():
            return []
        try:
            return load_certificates_pem(text.encode("ascii"))
        except (ZtpkiError, UnicodeError):
            raise self._error(f"{what}: not valid PEM certificates") from None

    def _encode_identity(self, identity: Identity) -> bytes:
        key, cert = identity.private_key, identity.certificate
        record = {
            "format": FORMAT,
            "phase": identity.phase.value,
            "generation": identity.generation,
            "private_key": key and encode_device_key(key, self._secret()).decode(),
            "certificate": cert and certificate_pem(cert).decode(),
            "ca_certificates": certificates_pem(identity.ca_certificates).decode(),
        }
        return json.dumps(record, indent=2).encode() + b"\n"
