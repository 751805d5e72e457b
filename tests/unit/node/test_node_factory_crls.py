"""The node's factory CRLs (node.factory_crls) and authorization's revocation rule."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from node_pki import NOW, PKI
from test_node_cli import env, inputs, run
from test_node_manufacturers import acme_init, node_toml, other_bundle
from tests.support.revocation_pki import RevocationCA

from ztpki.errors import ConfigurationError, Unavailable
from ztpki.node.authentication import ClientIdentity
from ztpki.node.authorization import (
    RefusalReason,
    Refused,
    RevocationUnknown,
    check_revocation,
)
from ztpki.node.factory_crls import FactoryRevocation
from ztpki.pki.revocation_check import RevocationStatus

# The node CLI tests' fixtures, used here by name.
__all__ = ["env", "inputs"]

URL = "http://factory.example/crl/factory.crl"


class Published:
    """What the factory's CRL URL serves now (bytes, or an error), and how often it was asked."""

    def __init__(self) -> None:
        self.body: bytes | None = None
        self.asked: list[str] = []

    def __call__(self, location: str) -> bytes:
        self.asked.append(location)
        if self.body is None:
            raise Unavailable(f"cannot fetch the CRL at {location}: connection refused")
        return self.body

    def publish(self, crl: x509.CertificateRevocationList) -> None:
        self.body = crl.public_bytes(serialization.Encoding.DER)


def crl_of(
    pki: PKI,
    *revoked: x509.Certificate,
    number: int = 1,
    this_update: datetime | None = None,
    next_update: datetime | None = None,
    reason: x509.ReasonFlags = x509.ReasonFlags.key_compromise,
) -> x509.CertificateRevocationList:
    start = this_update or NOW - timedelta(hours=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.factory_ca.certificate.subject)
        .last_update(start)
        .next_update(next_update or start + timedelta(days=1))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(start)
            .add_extension(x509.CRLReason(reason), critical=False)
            .build()
        )
    return builder.sign(pki.factory_ca.key, hashes.SHA256())  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def revocation(
    pki: PKI, published: Published, clock: Clock, *, fail_open: bool = False, **kw: object
) -> FactoryRevocation:
    return FactoryRevocation(
        [("Acme", pki.bundle())],
        locations={"Acme": [URL]},
        refresh={"Acme": timedelta(minutes=10)},
        fail_open={"Acme": fail_open},
        fetch=published,
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def pki() -> PKI:
    return PKI.create()


def identity(pki: PKI, device_id: str) -> ClientIdentity:
    return pki.identity(pki.temporary(device_id)[1])


def test_fail_revoked_temporary_certificate_is_refused_403_with_its_reason(pki: PKI) -> None:
    published, clock = Published(), Clock()
    stolen, fine = identity(pki, "dev-stolen"), identity(pki, "dev-fine")
    published.publish(crl_of(pki, stolen.certificate))
    factory = revocation(pki, published, clock)
    factory.refresh()
    check = asyncio.run(factory.check(stolen))
    assert check is not None and check.verdict.status is RevocationStatus.REVOKED
    with pytest.raises(Refused, match=r"revoked by its factory CA .*keyCompromise") as refused:
        check_revocation(stolen, check)
    assert refused.value.reason is RefusalReason.REVOKED
    # Negative control: the other device of the same CA is good.
    good = asyncio.run(factory.check(fine))
    assert good is not None and good.verdict.status is RevocationStatus.GOOD
    check_revocation(fine, good)


def test_fail_revocation_seen_after_refresh_interval_and_on_request(pki: PKI) -> None:
    published, clock = Published(), Clock()
    stolen = identity(pki, "dev-1")
    published.publish(crl_of(pki))
    factory = revocation(pki, published, clock)
    factory.refresh()
    published.publish(crl_of(pki, stolen.certificate, number=2))
    factory.refresh()  # not due yet: the CRL in hand stays
    assert len(published.asked) == 1
    check = asyncio.run(factory.check(stolen))
    assert check is not None and check.verdict.status is RevocationStatus.GOOD
    clock.now += timedelta(minutes=10)  # the refresh interval
    factory.refresh()
    check = asyncio.run(factory.check(stolen))
    assert check is not None and check.verdict.status is RevocationStatus.REVOKED
    factory.refresh(force=True)  # SIGHUP
    assert len(published.asked) == 3


def test_fail_stale_crl_fails_closed_by_default(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    published, clock = Published(), Clock()
    device = identity(pki, "dev-1")
    published.publish(crl_of(pki, next_update=NOW + timedelta(hours=1)))
    factory = revocation(pki, published, clock)
    factory.refresh()
    published.body = None  # the factory's CRL server goes away
    clock.now += timedelta(hours=2)
    with caplog.at_level(logging.WARNING):
        factory.refresh()
    assert "could not be refreshed" in caplog.text
    check = asyncio.run(factory.check(device))
    assert check is not None and check.verdict.status is RevocationStatus.UNKNOWN
    with pytest.raises(RevocationUnknown, match=r"stale.*fail_open = false"):
        check_revocation(device, check)


def test_ok_stale_crl_passes_when_the_manufacturer_fails_open(pki: PKI) -> None:
    published, clock = Published(), Clock()
    device = identity(pki, "dev-1")
    published.publish(crl_of(pki, next_update=NOW + timedelta(hours=1)))
    factory = revocation(pki, published, clock, fail_open=True)
    factory.refresh()
    clock.now += timedelta(hours=2)
    check = asyncio.run(factory.check(device))
    assert check is not None and check.fail_open
    check_revocation(device, check)  # passes
    # Even failing open, a revoked certificate is refused.
    published.publish(crl_of(pki, device.certificate, number=2))
    factory.refresh(force=True)
    with pytest.raises(Refused):
        check_revocation(device, asyncio.run(factory.check(device)))


def test_fail_never_fetched_crl_is_unknown(pki: PKI) -> None:
    factory = revocation(pki, Published(), Clock())
    factory.refresh()
    check = asyncio.run(factory.check(identity(pki, "dev-1")))
    assert check is not None and check.verdict.status is RevocationStatus.UNKNOWN
    assert URL in check.verdict.detail


def test_ok_no_crl_configured_nothing_to_check(pki: PKI) -> None:
    factory = FactoryRevocation([("Acme", pki.bundle())])
    assert not factory.configured
    assert asyncio.run(factory.check(identity(pki, "dev-1"))) is None


def test_fail_older_crl_served_again_is_not_taken(pki: PKI) -> None:
    published, clock = Published(), Clock()
    stolen = identity(pki, "dev-1")
    published.publish(crl_of(pki, stolen.certificate, number=5))
    factory = revocation(pki, published, clock)
    factory.refresh()
    published.publish(crl_of(pki, number=4))  # a replay of an older CRL, without the entry
    factory.refresh(force=True)
    check = asyncio.run(factory.check(stolen))
    assert check is not None and check.verdict.status is RevocationStatus.REVOKED


def test_fail_crl_signed_by_another_key_counts_for_nothing(pki: PKI) -> None:
    published, clock = Published(), Clock()
    device = identity(pki, "dev-1")
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.factory_ca.certificate.subject)
        .last_update(NOW - timedelta(hours=1))
        .next_update(NOW + timedelta(days=1))
        .sign(RevocationCA.create().key, hashes.SHA256())
    )
    published.publish(forged)
    factory = revocation(pki, published, clock)
    factory.refresh()
    check = asyncio.run(factory.check(device))
    assert check is not None and check.verdict.status is RevocationStatus.UNKNOWN
    assert "signature" in check.verdict.detail


def with_distribution_point(pki: PKI, cert: x509.Certificate, url: str) -> x509.Certificate:
    """``cert`` again, naming its CRL distribution point, signed by the factory CA."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    point = x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)
    builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    return builder.sign(pki.factory_ca.key, hashes.SHA256())  # type: ignore[arg-type]


def test_ok_distribution_point_learned_from_the_certificate(pki: PKI) -> None:
    # A factory CA whose temporary certificates name their CRL: no location configured.
    published, clock = Published(), Clock()
    cert = with_distribution_point(pki, pki.temporary("dev-cdp")[1], URL)
    published.publish(crl_of(pki, cert))
    factory = FactoryRevocation([("Acme", pki.bundle())], fetch=published, clock=clock)
    check = asyncio.run(factory.check(pki.identity(cert)))
    assert published.asked == [URL]
    assert check is not None and check.verdict.status is RevocationStatus.REVOKED
    # Negative control: a certificate without a distribution point is not checked.
    assert asyncio.run(factory.check(identity(pki, "dev-plain"))) is not None  # URL learned
    assert published.asked == [URL]  # fetched once, held


def test_fail_https_or_ftp_location_is_a_configuration_error(pki: PKI) -> None:
    for location in ("https://factory.example/a.crl", "ftp://factory.example/a.crl"):
        with pytest.raises(ConfigurationError, match="only http://"):
            FactoryRevocation([("Acme", pki.bundle())], locations={"Acme": [location]})


def test_ok_manufacturer_crl_settings_round_trip() -> None:
    from pathlib import Path

    from ztpki.node.manufacturers import ManufacturerConfig

    table = {
        "trust": "trust/01-acme.pem",
        "device_ids": ["ACME-*"],
        "crl": [URL, "crl/factory.der"],
        "crl_refresh_minutes": 5,
        "fail_open": True,
    }
    maker = ManufacturerConfig.from_toml("Acme", table)
    assert maker.crl == (URL, "crl/factory.der") and maker.fail_open
    assert maker.crl_refresh_minutes == 5.0
    assert ManufacturerConfig.from_toml("Acme", maker.to_toml()) == maker
    plain = ManufacturerConfig("Acme", Path("t.pem"), maker.device_ids)
    assert "fail_open" not in plain.to_toml() and "crl" not in plain.to_toml()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("crl", ["https://factory.example/a.crl"], "only http://"),
        ("crl", 7, "URL or file"),
        ("fail_open", "yes", "true or false"),
        ("crl_refresh_minutes", 0, "positive"),
        ("crl_refresh_minutes", "often", "a number"),
    ],
)
def test_fail_bad_manufacturer_crl_settings(setting: str, value: object, message: str) -> None:
    from ztpki.node.manufacturers import ManufacturerConfig

    table = {"trust": "t.pem", "device_ids": ["ACME-*"], setting: value}
    with pytest.raises(ConfigurationError, match=message):
        ManufacturerConfig.from_toml("Acme", table)


def test_ok_add_manufacturer_with_its_crl_and_listing(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(*acme_init(inputs))[0] == 0
    node = str(inputs["node"])
    args = ["node", "add-manufacturer", "--dir", node, "--manufacturer", "Globex"]
    args += ["--trust", str(other_bundle(tmp_path)), "--device-ids", "GLX-*"]
    # An https location is refused, and nothing is written.
    before = node_toml(inputs)
    capsys.readouterr()
    status, _ = run(*args, "--crl-url", "https://pki.globex.example/f.crl")
    assert status != 0 and "only http://" in " ".join(capsys.readouterr().err.split())
    assert node_toml(inputs) == before
    crl = ["--crl-url", URL, "--crl-refresh-minutes", "15", "--crl-fail-open"]
    assert run(*args, *crl)[0] == 0
    globex = node_toml(inputs)["manufacturer"]["Globex"]  # type: ignore[index]
    assert globex["crl"] == [URL] and globex["crl_refresh_minutes"] == 15.0
    assert globex["fail_open"] is True
    status, text = run("node", "manufacturers", "--dir", node)
    flat = " ".join(text.split())
    assert f"factory CRLs = {URL} (every 15 min; fail_open = true)" in flat
    assert "factory CRLs = none configured: temporary certificates of Acme Devices are" in flat


def test_ok_crl_signature_checked_once_per_crl(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    from ztpki.node import factory_crls

    calls: list[x509.CertificateRevocationList] = []
    real = factory_crls.crl_signed_by

    def counting(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
        calls.append(crl)
        return real(crl, issuer)

    monkeypatch.setattr(factory_crls, "crl_signed_by", counting)
    published, clock = Published(), Clock()
    stolen = identity(pki, "dev-1")
    published.publish(crl_of(pki, stolen.certificate))
    factory = revocation(pki, published, clock)
    factory.refresh()
    for device_id in ("dev-2", "dev-3", "dev-4"):
        check = asyncio.run(factory.check(identity(pki, device_id)))
        assert check is not None and check.verdict.status is RevocationStatus.GOOD
    assert len(calls) == 1
    factory.refresh(force=True)  # a new CRL object: its signature is checked again
    check = asyncio.run(factory.check(stolen))
    assert check is not None and check.verdict.status is RevocationStatus.REVOKED
    assert len(calls) == 2


def test_ok_static_crl_files_go_to_the_manufacturer_whose_ca_signed_them(pki: PKI) -> None:
    from ztpki.node.factory_crls import static_locations

    other = PKI.create()
    files = [("crl/01-acme.der", crl_of(pki))]
    makers = [("Acme", pki.bundle()), ("Globex", other.bundle())]
    assert static_locations(files, makers) == {"Acme": ["crl/01-acme.der"], "Globex": []}
    with pytest.raises(ConfigurationError, match="not signed by a configured factory CA"):
        static_locations(files, [("Globex", other.bundle())])
