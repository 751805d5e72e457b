"""The CA system (patent Fig. 4): policy and signing in `issuer`, the TLS service and its
CA-client at the edges; requests arrive only as validated XML from registered CA-clients,
and each must fit that client's entitlement (`entitlement`)."""

from ztpki.casystem.client import CAClient, parse_address
from ztpki.casystem.directory import CASystemDirectory, init_ca
from ztpki.casystem.entitlement import NotEntitled, authorize, build_entitlement
from ztpki.casystem.failover import FailoverCAClient
from ztpki.casystem.issuer import CASystem, IssuancePlan, LoadedCA
from ztpki.casystem.policy import IssuingPolicy
from ztpki.casystem.service import CASystemService, ServiceLimits

__all__ = [
    "CAClient",
    "CASystem",
    "CASystemDirectory",
    "CASystemService",
    "FailoverCAClient",
    "IssuancePlan",
    "IssuingPolicy",
    "LoadedCA",
    "NotEntitled",
    "ServiceLimits",
    "authorize",
    "build_entitlement",
    "init_ca",
    "parse_address",
]
