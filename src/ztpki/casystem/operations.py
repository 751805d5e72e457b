"""CA-system operations behind the CLI: open, register clients, build the service."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ztpki.casystem.crl_publisher import CRLPublisher, CRLTarget
from ztpki.casystem.directory import STORE_FILE, CASystemDirectory, service_authority
from ztpki.casystem.entitlement import ChangeMode, change_entitlement
from ztpki.casystem.issuer import CASystem, LoadedCA
from ztpki.casystem.ocsp_presign import PresignedResponses
from ztpki.casystem.ocsp_responder import (
    OCSPResponder,
    SignerPolicy,
)
from ztpki.casystem.publisher import PublisherLimits, RevocationPublisher
from ztpki.casystem.rollover_ocsp import previous_responders
from ztpki.casystem.server_identity import ServerIdentity
from ztpki.casystem.service import CASystemService, ServiceLimits
from ztpki.casystem.token_keys import TokenOptions
from ztpki.credentials import Credential, CredentialKey
from ztpki.errors import ConfigurationError
from ztpki.pki.authority import IssuanceGrant
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject, check_device_id
from ztpki.pki.pem import certificate_der, fingerprint_sha256, serial_hex
from ztpki.pki.profiles import CertificateProfile
from ztpki.store.database_url import record_database_url
from ztpki.store.records import ClientEntitlement, ClientRecord
from ztpki.store.sqlite import open_ca_store
from ztpki.store.sqlite_ca import SQLiteIssuanceStore


def _require_system(directory: CASystemDirectory) -> None:
    # `ca init` makes cas/; without it this is no CA system, and opening the store would
    # create one there (a read-only command must leave a stray directory as it found it).
    if not (directory.root / "cas").is_dir():
        raise ConfigurationError(f"{directory.root} is not a CA-system directory")


def open_store(
    directory: CASystemDirectory, *, durable: bool = True, migrate: bool = False
) -> SQLiteIssuanceStore:
    """The CA system's store; one of an older schema is refused (SchemaOutdated names
    `ztpki ca migrate`) unless ``migrate``."""
    _require_system(directory)
    return open_ca_store(directory.store_location, durable=durable, migrate=migrate)


def use_database(directory: CASystemDirectory, url: str) -> None:
    """Keep the CA system's records in the PostgreSQL database at ``url`` (created there when
    missing, or shared with the other CA-system instances using it)."""
    directory.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    open_ca_store(url).close()  # reachable, and its schema is current
    record_database_url(directory.root, url, STORE_FILE)


def load_system(
    directory: CASystemDirectory, *, passphrase: bytes | None, tokens: TokenOptions | None = None
) -> CASystem:
    """Every CA of the directory, keys decrypted (or found in their tokens) and chains
    encoded once."""
    cas: dict[str, LoadedCA] = {}
    for name in directory.ca_names():
        authority = directory.load_authority(name, passphrase=passphrase, tokens=tokens)
        cas[name] = LoadedCA(
            authority=authority,
            policy=directory.policy(name),
            chain_der=tuple(certificate_der(c) for c in authority.chain),
        )
    if not cas:
        raise ConfigurationError(f"{directory.root} holds no CA; run `ztpki ca init` first")
    return CASystem(cas, default_ca=directory.default_ca())


def crl_targets(directory: CASystemDirectory, system: CASystem) -> dict[str, CRLTarget]:
    """Every CA of the system, ready to have its CRL published."""
    return {
        name: CRLTarget(ca.authority, ca.policy, directory.ca_dir(name))
        for name, ca in system.cas.items()
    }


def _require_cas(directory: CASystemDirectory, entitlement: ClientEntitlement) -> None:
    """Refuse an entitlement naming a CA this system does not hold (a typo grants nothing)."""
    known = directory.ca_names()
    for name in entitlement.cas:
        if name not in known:
            raise ConfigurationError(
                f"no CA named {name!r} in {directory.root} (known: {', '.join(known) or 'none'})"
            )


def add_client(
    directory: CASystemDirectory,
    name: str,
    *,
    out: Path,
    passphrase: bytes | None,
    client_passphrase: bytes | None,
    entitlement: ClientEntitlement,
    validity_days: int = 825,
    now: datetime | None = None,
    make_key: Callable[[], CredentialKey] | None = None,
) -> ClientRecord:
    """Issue and register the TLS credential of a CA-client (loading station, customer node)
    with what it may ask for. Its key is what ``make_key`` makes (in a token), else a new
    EC P-256 file key; made once the request is allowed, so a refusal leaves no key behind."""
    check_device_id(name)
    now = now or datetime.now(UTC)
    _require_system(directory)
    _require_cas(directory, entitlement)
    # The passphrase first: a wrong one must leave no store, service CA or credential behind.
    authority = service_authority(directory, passphrase=passphrase, now=now)
    with open_store(directory) as store:
        if any(c.name == name and c.status == "active" for c in store.clients()):
            raise ConfigurationError(
                f"a CA-client named {name!r} is already registered; remove it first"
            )
        key = make_key() if make_key else generate_private_key(KeySpec.EC_P256)
        grant = IssuanceGrant(
            subject=build_subject(
                name, SubjectFields(organizational_unit="ztpki CA-client"), serial_number=None
            ),
            profile=CertificateProfile.CLIENT,
            not_before=now - timedelta(minutes=5),
            not_after=now + timedelta(days=validity_days),
        )
        certificate = authority.issue(key.public_key(), grant)
        Credential(key=key, chain=(certificate,), trust_anchors=(authority.certificate,)).save(
            out, passphrase=client_passphrase
        )
        store.add_client(
            name,
            serial=serial_hex(certificate),
            fingerprint=fingerprint_sha256(certificate),
            not_after=certificate.not_valid_after_utc,
            now=now,
            entitlement=entitlement,
        )
        record = next(c for c in store.clients() if c.name == name and c.status == "active")
    return record


def set_client(
    directory: CASystemDirectory,
    name: str,
    change: ClientEntitlement,
    *,
    given: frozenset[str],
    mode: ChangeMode,
) -> ClientRecord:
    """Change the entitlement of an active CA-client; a running service applies it within
    its client_recheck time, as it does a removal."""
    _require_cas(directory, change)
    with open_store(directory) as store:
        current = next(
            (c for c in store.clients() if c.name == name and c.status == "active"), None
        )
        if current is None:
            raise ConfigurationError(f"no registered CA-client named {name!r}")
        entitlement = change_entitlement(current.entitlement, change, given=given, mode=mode)
        if not store.set_entitlement(name, entitlement):
            raise ConfigurationError(f"CA-client {name!r} was removed meanwhile")
        return next(c for c in store.clients() if c.name == name and c.status == "active")


def require_entitlements(directory: CASystemDirectory, clients: list[ClientRecord]) -> None:
    """Refuse to serve while an active CA-client has no entitlement (registered by a release
    before entitlements), naming the command that gives it one."""
    legacy = [c.name for c in clients if c.status == "active" and c.entitlement is None]
    if not legacy:
        return
    cas = " ".join(f"--ca {n}" for n in directory.ca_names())
    commands = "; ".join(
        f"`ztpki ca set-client --dir {directory.root} --name {n} {cas}`" for n in legacy
    )
    raise ConfigurationError(
        f"CA-client(s) {', '.join(legacy)} of {directory.root} were registered before "
        f"entitlements and may use no CA: run {commands}, keeping only the --ca the client "
        "needs (and --device-ids, --dns, --ip to narrow it), then start the service again"
    )


def build_service(
    directory: CASystemDirectory,
    *,
    passphrase: bytes | None,
    hostnames: tuple[str, ...],
    limits: ServiceLimits | None = None,
    key_pool_workers: int | None = None,
    tokens: TokenOptions | None = None,
) -> CASystemService:
    """The service with a fresh server certificate whose key lives only in memory; the
    running service renews it well before it expires (server_identity)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    now = datetime.now(UTC)
    store = open_store(directory)
    try:
        require_entitlements(directory, store.clients())
        system = load_system(directory, passphrase=passphrase, tokens=tokens)
        authority = service_authority(directory, passphrase=passphrase, now=now)
        # 127.0.0.1 for clients on the same host; not `localhost`: a single-label name that
        # certificate linters (pkilint) refuse. `ca serve --hostname localhost` adds it back.
        identity = ServerIdentity(authority, (*hostnames, "127.0.0.1"), now=now)
    except BaseException:
        store.close()
        raise
    pool = ProcessPoolExecutor(max_workers=key_pool_workers, mp_context=get_context("spawn"))
    return CASystemService(
        system,
        store,
        identity.context,
        limits=limits,
        key_pool=pool,
        identity=identity,
        crls=CRLPublisher(crl_targets(directory, system), store),
    )


def build_publisher(
    directory: CASystemDirectory,
    service: CASystemService,
    *,
    signer: SignerPolicy = SignerPolicy.DELEGATED,
    limits: PublisherLimits | None = None,
    ocsp_dir: Path | None = None,
    passphrase: bytes | None = None,
) -> RevocationPublisher:
    """The HTTP publisher of CRLs and OCSP for every CA the service holds, reading the
    service's store (its own delegated responders are issued now, keys in memory); with
    ``ocsp_dir``, it also keeps ``ocsp_dir/NAME/`` of pre-signed answers for each CA. A root
    that rolled its key over answers for its earlier keys with the responders they issued
    (their keys open with ``passphrase``, casystem.rollover_ocsp)."""
    cas = service.system.cas
    now = datetime.now(UTC)
    responder = OCSPResponder(
        {name: loaded.authority for name, loaded in cas.items()},
        service.store,
        now=now,
        previous={
            name: previous_responders(directory, name, passphrase=passphrase, now=now)
            for name in cas
        },
        signer=signer,
        next_update={
            name: timedelta(hours=loaded.policy.crl_next_update_hours)
            for name, loaded in cas.items()
        },
    )
    crl_paths = {name: directory.ca_dir(name) / "crl.der" for name in cas}
    presigned = None
    if ocsp_dir is not None:
        presigned = PresignedResponses(
            responder,
            service.store,
            {name: loaded.authority.certificate for name, loaded in cas.items()},
            {name: ocsp_dir / name for name in cas},
        )
    return RevocationPublisher(
        crl_paths,
        responder,
        limits=limits,
        presigned=presigned,
        metrics=service.metrics,
        connections=lambda: service.connection_count,
    )
