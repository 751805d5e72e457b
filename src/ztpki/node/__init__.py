"""The customer node (10): authenticate devices by certificate, authorize them against the
register exactly once, and have the customer CA system issue their operational identity."""

from ztpki.node.authentication import (
    AuthenticationModule,
    ClientIdentity,
    CustomerCA,
    FactoryBundle,
    FactoryTrust,
    IdentityKind,
)
from ztpki.node.authorization import (
    Action,
    Decision,
    EnrollmentContext,
    InProgress,
    Operation,
    RefusalReason,
    Refused,
    decide,
    should_confirm,
)
from ztpki.node.ca_client import Issued, SecondCAClient, UpstreamError
from ztpki.node.config import CALabel, IssuingParameters, Limits, NodeConfig
from ztpki.node.enrollment import Enrolled, EnrollmentService, LoadedLabel
from ztpki.node.http import ERROR_TABLE, EstApplication
from ztpki.node.manufacturers import LoadedManufacturer, ManufacturerConfig
from ztpki.node.material import NodeMaterial, load_material
from ztpki.node.metrics import NodeMetrics
from ztpki.node.proxy import ForwardedCertificate, decode_forwarded_certificate
from ztpki.node.proxy_config import ProxyConfig
from ztpki.node.proxy_listener import ProxyAddress, ProxyListener
from ztpki.node.register import AsyncRegister
from ztpki.node.runtime import RunningNode, start_node

__all__ = [
    "ERROR_TABLE",
    "Action",
    "AsyncRegister",
    "AuthenticationModule",
    "CALabel",
    "ClientIdentity",
    "CustomerCA",
    "Decision",
    "Enrolled",
    "EnrollmentContext",
    "EnrollmentService",
    "EstApplication",
    "FactoryBundle",
    "FactoryTrust",
    "ForwardedCertificate",
    "IdentityKind",
    "InProgress",
    "Issued",
    "IssuingParameters",
    "Limits",
    "LoadedLabel",
    "LoadedManufacturer",
    "ManufacturerConfig",
    "NodeConfig",
    "NodeMaterial",
    "NodeMetrics",
    "Operation",
    "ProxyAddress",
    "ProxyConfig",
    "ProxyListener",
    "RefusalReason",
    "Refused",
    "RunningNode",
    "SecondCAClient",
    "UpstreamError",
    "decide",
    "decode_forwarded_certificate",
    "load_material",
    "should_confirm",
    "start_node",
]
