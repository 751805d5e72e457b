"""An in-memory stand-in for the CA system behind CAClient.enroll, with ways to misbehave."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta

from factory_pki import NOW, FactoryPKI

from ztpki.errors import NotAuthorized, ZtpkiError
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant
from ztpki.pki.keys import KeySpec, encode_pkcs8, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pem import certificate_der
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.enrollment import EnrollmentAnswer, EnrollmentRequest


def issue_answer(
    ca: CertificateAuthority,
    request: EnrollmentRequest,
    *,
    profile: CertificateProfile = CertificateProfile.DEVICE,
    name: str | None = None,
) -> EnrollmentAnswer:
    """The answer a correct CA system gives (certificate named after the device)."""
    spec = request.parameters.key_algorithm or KeySpec.EC_P256
    key = generate_private_key(spec)
    device = name or request.device_id
    grant = IssuanceGrant(
        subject=build_subject(device, SubjectFields(organization="Acme"), serial_number=device),
        profile=profile,
        not_before=NOW - timedelta(minutes=5),
        not_after=NOW + timedelta(days=365),
    )
    cert = ca.issue(key.public_key(), grant)
    return EnrollmentAnswer(
        request_id=request.request_id,
        certificate_der=certificate_der(cert),
        ca_certificates_der=tuple(certificate_der(c) for c in ca.chain),
        private_key_der=encode_pkcs8(key, passphrase=None),
    )


@dataclass
class FakeCA:
    """enroll() like CAClient's; records requests; refuses a second live certificate."""

    pki: FactoryPKI
    tamper: Callable[[EnrollmentAnswer, EnrollmentRequest], EnrollmentAnswer] | None = None
    fail: dict[str, ZtpkiError] = field(default_factory=dict)
    requests: list[EnrollmentRequest] = field(default_factory=list)
    live: dict[str, str] = field(default_factory=dict)

    async def enroll(self, request: EnrollmentRequest) -> EnrollmentAnswer:
        self.requests.append(request)
        if request.device_id in self.fail:
            raise self.fail[request.device_id]
        if request.device_id in self.live and not request.reissue:
            raise NotAuthorized(f"device {request.device_id} already holds live certificate")
        ca = self.pki.manifests if request.ca == "manifests" else self.pki.factory
        profile = (
            CertificateProfile.MANIFEST_SIGNER
            if request.ca == "manifests"
            else CertificateProfile.DEVICE
        )
        answer = issue_answer(ca, request, profile=profile)
        if self.tamper is not None:
            answer = self.tamper(answer, request)
        self.live[request.device_id] = request.request_id
        return answer

    async def close(self) -> None:
        return None


def swap_certificate(
    pki: FactoryPKI, *, name: str
) -> Callable[[EnrollmentAnswer, EnrollmentRequest], EnrollmentAnswer]:
    """A tamper that answers with a certificate for another name (and its own key)."""

    def tamper(answer: EnrollmentAnswer, request: EnrollmentRequest) -> EnrollmentAnswer:
        return issue_answer(pki.factory, request, name=name)

    return tamper


def foreign_key(answer: EnrollmentAnswer, request: EnrollmentRequest) -> EnrollmentAnswer:
    other = generate_private_key(KeySpec.EC_P256)
    return replace(answer, private_key_der=encode_pkcs8(other, passphrase=None))
