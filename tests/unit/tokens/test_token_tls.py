"""A token key as a Python ssl context's TLS client key (tokens.tls): a real TLS server on
loopback sees the client certificate after TLS 1.3 and TLS 1.2 handshakes signed in SoftHSM;
a token that fails mid-run fails the handshake and says why; what cannot work is refused."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pkcs11
import pytest
from tests.support.softhsm import USER_PIN, SoftHSM, softhsm  # noqa: F401
from tests.support.threaded_server import threaded_tls_server

from ztpki.casystem.client import CAClient
from ztpki.credentials import Credential, client_context, server_context
from ztpki.errors import ConfigurationError, Unavailable
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pkcs11_uri import Pkcs11Uri
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.enrollment import EnrollmentRequest
from ztpki.tokens import TokenKey, TokenPool, TokenUnavailable, generate_token_key, token_access
from ztpki.tokens.tls import token_failure, use_token_key

NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _user_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZTPKI_PKCS11_PIN", USER_PIN)


def _token_key(hsm: SoftHSM, spec: KeySpec = KeySpec.EC_P256) -> TokenKey:
    uri = Pkcs11Uri.parse(f"pkcs11:token={hsm.new_token('tls')};object=client")
    return generate_token_key(TokenPool(token_access(uri, module=hsm.module), uri), uri, spec)


def _issue(ca: CertificateAuthority, name: str, public: object, profile: CertificateProfile):  # type: ignore[no-untyped-def]
    grant = IssuanceGrant(
        subject=build_subject(name, SubjectFields(), serial_number=None),
        profile=profile,
        not_before=NOW - timedelta(minutes=5),
        not_after=NOW + timedelta(days=1),
        ip_addresses=("127.0.0.1",) if profile is CertificateProfile.SERVER else (),
    )
    return ca.issue(public, grant)  # type: ignore[arg-type]


@pytest.fixture
def pki() -> Iterator[tuple[CertificateAuthority, ssl.SSLContext]]:
    """A CA, and a TLS server context (127.0.0.1) that requires a client certificate of it."""
    ca_key = generate_private_key(KeySpec.EC_P256)
    subject = build_subject("tls-test-ca", SubjectFields(), serial_number=None)
    root = create_self_signed_ca(ca_key, subject, now=NOW, validity=timedelta(days=2))
    ca = CertificateAuthority("root", ca_key, root)
    server_key = generate_private_key(KeySpec.EC_P256)
    server_cert = _issue(ca, "server", server_key.public_key(), CertificateProfile.SERVER)
    yield ca, server_context(server_key, [server_cert], client_anchors=[root])


async def _say_who(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peercert")
    name = dict(part[0] for part in peer["subject"])["commonName"]
    writer.write(f"{writer.get_extra_info('ssl_object').version()} {name}\n".encode())
    await writer.drain()
    writer.close()


def _connect(port: int, context: ssl.SSLContext) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.recv(200).decode().strip()


def _station_credential(hsm: SoftHSM, ca: CertificateAuthority) -> Credential:
    """A credential whose key is in a fresh token, certified by ``ca`` as "station"."""
    key = _token_key(hsm)
    chain = (_issue(ca, "station", key.public_key(), CertificateProfile.CLIENT),)
    return Credential(key=key, chain=chain, trust_anchors=(ca.certificate,))


def _station(hsm: SoftHSM, ca: CertificateAuthority) -> ssl.SSLContext:
    """A client context whose key is in a fresh token, certified by ``ca`` as "station"."""
    credential = _station_credential(hsm, ca)
    return client_context(
        key=credential.key, chain=credential.chain, server_anchors=credential.trust_anchors
    )


def test_ok_handshakes_signed_in_the_token(
    softhsm: SoftHSM,  # noqa: F811
    pki: tuple[CertificateAuthority, ssl.SSLContext],
) -> None:
    server, context = pki[1], _station(softhsm, pki[0])
    with threaded_tls_server(_say_who, server) as port:
        assert _connect(port, context) == "TLSv1.3 station"
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        assert _connect(port, context) == "TLSv1.2 station"
    assert token_failure(context) is None


def test_fail_token_gone_fails_the_handshake_then_recovers(
    softhsm: SoftHSM,  # noqa: F811
    pki: tuple[CertificateAuthority, ssl.SSLContext],
) -> None:
    server, context = pki[1], _station(softhsm, pki[0])
    with threaded_tls_server(_say_who, server) as port:
        assert _connect(port, context) == "TLSv1.3 station"
        pkcs11.lib(softhsm.module).finalize()  # the module lost every session under us
        with pytest.raises(ssl.SSLError):
            _connect(port, context)
        failure = token_failure(context)
        assert isinstance(failure, TokenUnavailable)
        assert USER_PIN not in failure.message
        assert _connect(port, context) == "TLSv1.3 station"  # no restart, no new context
    assert token_failure(context) is None


def test_fail_ca_client_says_the_token_failed(
    softhsm: SoftHSM,  # noqa: F811
    pki: tuple[CertificateAuthority, ssl.SSLContext],
) -> None:
    """The CA-client reports a handshake the token did not sign as the token's failure
    (not as a CA system that refused it), and nothing was sent."""
    client = CAClient(("127.0.0.1", 0), _station_credential(softhsm, pki[0]))
    with threaded_tls_server(_say_who, pki[1]) as port:
        client.port = port
        pkcs11.lib(softhsm.module).finalize()
        with pytest.raises(Unavailable, match="the token holding this CA-client's key") as exc:
            asyncio.run(client.enroll(EnrollmentRequest("r-1", "dev-1")))
    assert "did not sign the TLS handshake" in exc.value.message
    assert USER_PIN not in exc.value.message


def test_fail_what_cannot_carry_a_token_key_is_refused(
    softhsm: SoftHSM,  # noqa: F811
    pki: tuple[CertificateAuthority, ssl.SSLContext],
) -> None:
    ca, _ = pki
    key = _token_key(softhsm)
    chain = [_issue(ca, "station", key.public_key(), CertificateProfile.CLIENT)]
    with pytest.raises(ConfigurationError, match="CPython's own ssl module"):
        use_token_key(object(), key, chain)  # type: ignore[arg-type]
    other = _issue(ca, "other", generate_private_key(KeySpec.EC_P256).public_key(),
                   CertificateProfile.CLIENT)  # fmt: skip
    with pytest.raises(ConfigurationError, match="does not belong to the credential"):
        client_context(key=key, chain=[other], server_anchors=[ca.certificate])
    rsa_key = _token_key(softhsm, KeySpec.RSA_2048)
    with pytest.raises(ConfigurationError, match="must be EC"):
        client_context(key=rsa_key, chain=[], server_anchors=[ca.certificate])
