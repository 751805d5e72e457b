"""The factory: loading station (4), first CA-client (3), batches and signed shipping manifests.

Nothing leaves the factory unverified: an answer is stored only once it names the device,
its key matches and its chain verifies to the factory trust anchor.
"""

from ztpki.factory.answer import AcceptedIdentity, accept_answer
from ztpki.factory.batch import (
    BatchReport,
    DeviceResult,
    Manufacturer,
    Outcome,
    ProductionBatch,
    device_ids,
    recover_staging,
)
from ztpki.factory.configuration import CAClientConfig, parse_parameters
from ztpki.factory.first_client import FirstCAClient, name_device
from ztpki.factory.shipping import (
    build_manifest,
    collect_entries,
    factory_chain,
    load_trust_bundle,
    manifest_entry,
)
from ztpki.factory.signer import enroll_signer, sign_checked, verify_own_manifest
from ztpki.factory.station import LoadingStation
from ztpki.protocol.manifest import (
    Manifest,
    ManifestEntry,
    VerifiedManifest,
    manifest_csv,
    new_manifest_id,
    sign_manifest,
    verify_manifest,
)

__all__ = [
    "AcceptedIdentity",
    "BatchReport",
    "CAClientConfig",
    "DeviceResult",
    "FirstCAClient",
    "LoadingStation",
    "Manifest",
    "ManifestEntry",
    "Manufacturer",
    "Outcome",
    "ProductionBatch",
    "VerifiedManifest",
    "accept_answer",
    "build_manifest",
    "collect_entries",
    "device_ids",
    "enroll_signer",
    "factory_chain",
    "load_trust_bundle",
    "manifest_csv",
    "manifest_entry",
    "name_device",
    "new_manifest_id",
    "parse_parameters",
    "recover_staging",
    "sign_checked",
    "sign_manifest",
    "verify_manifest",
    "verify_own_manifest",
]
