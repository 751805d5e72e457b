"""IssuingPolicy: defaults fill what a request leaves out, anything outside policy is refused."""

from __future__ import annotations

import ipaddress
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from ztpki.casystem.entitlement import NotEntitled
from ztpki.casystem.policy import AboveMax, FieldRule, IssuingPolicy
from ztpki.errors import ConfigurationError, NotAuthorized, UnsupportedParameter
from ztpki.pki.authority import CertificateAuthority, create_self_signed_ca
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields
from ztpki.pki.profiles import CertificateProfile

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
DEFAULTS = SubjectFields(
    organization="Acme", organizational_unit="Line 1", locality="Lund", country="SE"
)


def subject_of(name: x509.Name) -> dict[str, str]:
    return {a.oid.dotted_string: str(a.value) for a in name}


def test_ok_defaults() -> None:
    policy = IssuingPolicy()
    assert policy.profile is CertificateProfile.DEVICE
    assert policy.key_spec(None) is KeySpec.EC_P256
    assert policy.validity(None, now=NOW) == (NOW - timedelta(minutes=5), NOW + timedelta(days=365))


@pytest.mark.parametrize("spec", list(KeySpec), ids=lambda s: f"ok-{s}")
def test_ok_every_key_allowed_by_default(spec: KeySpec) -> None:
    assert IssuingPolicy().key_spec(spec) is spec


def test_fail_key_not_allowed_names_the_allowed_ones() -> None:
    policy = IssuingPolicy(allowed_keys=(KeySpec.EC_P256, KeySpec.ED25519))
    with pytest.raises(UnsupportedParameter, match="ec-p256, ed25519"):
        policy.key_spec(KeySpec.RSA_2048)
    assert policy.key_spec(KeySpec.ED25519) is KeySpec.ED25519  # control


@given(days=st.integers(min_value=1, max_value=825))
def test_ok_validity_within_max_is_exact(days: int) -> None:
    not_before, not_after = IssuingPolicy().validity(days, now=NOW)
    assert not_after - NOW == timedelta(days=days)
    assert NOW - not_before == timedelta(minutes=5)


@given(days=st.one_of(st.integers(max_value=0), st.integers(min_value=826, max_value=10**6)))
def test_fail_validity_outside_policy(days: int) -> None:
    with pytest.raises(UnsupportedParameter, match="outside policy"):
        IssuingPolicy().validity(days, now=NOW)


ALLOW_O_AND_EMAIL = (("organization", FieldRule.ALLOWED), ("email", FieldRule.ALLOWED))


def test_ok_grant_merges_request_over_policy_subject() -> None:
    policy = IssuingPolicy(subject=DEFAULTS, subject_rules=ALLOW_O_AND_EMAIL)
    grant = policy.grant(
        "dev-1",
        SubjectFields(organization="Other", email="a@b.example"),
        validity_days=None,
        now=NOW,
    )
    subject = subject_of(grant.subject)
    assert subject[NameOID.ORGANIZATION_NAME.dotted_string] == "Other"
    assert subject[NameOID.ORGANIZATIONAL_UNIT_NAME.dotted_string] == "Line 1"
    assert subject[NameOID.LOCALITY_NAME.dotted_string] == "Lund"
    assert subject[NameOID.COUNTRY_NAME.dotted_string] == "SE"
    assert subject[NameOID.EMAIL_ADDRESS.dotted_string] == "a@b.example"
    assert subject[NameOID.COMMON_NAME.dotted_string] == "dev-1"
    assert subject[NameOID.SERIAL_NUMBER.dotted_string] == "dev-1"
    assert grant.profile is CertificateProfile.DEVICE
    assert grant.not_after == NOW + timedelta(days=365)


@pytest.mark.parametrize(
    ("request_email", "policy_email", "expected"),
    [
        pytest.param("a@b.example", None, ("a@b.example",), id="ok-from-request"),
        pytest.param(None, "ops@acme.example", ("ops@acme.example",), id="ok-from-policy"),
        pytest.param(None, None, (), id="ok-none-no-san"),
    ],
)
def test_ok_email_goes_in_subject_alt_name(
    request_email: str | None, policy_email: str | None, expected: tuple[str, ...]
) -> None:
    # RFC 5280 4.1.2.6: an e-mail address SHOULD be an rfc822Name subjectAltName; the subject
    # emailAddress stays for readers that look there.
    rules = () if policy_email else (("email", FieldRule.ALLOWED),)
    policy = IssuingPolicy(subject=SubjectFields(email=policy_email), subject_rules=rules)
    grant = policy.grant("dev-1", SubjectFields(email=request_email), validity_days=1, now=NOW)
    assert grant.email_addresses == expected
    key = generate_private_key(KeySpec.EC_P256)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")])
    ca_cert = create_self_signed_ca(key, ca_name, now=NOW, validity=timedelta(days=2))
    cert = CertificateAuthority(name="ca", key=key, certificate=ca_cert).issue(
        key.public_key(), grant
    )
    emails = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)]
    assert emails == list(expected)
    if not expected:
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not san.critical
    assert san.value.get_values_for_type(x509.RFC822Name) == list(expected)


def test_ok_server_profile_san_holds_names_and_email() -> None:
    server = IssuingPolicy(
        profile=CertificateProfile.SERVER, subject_rules=(("email", FieldRule.ALLOWED),)
    )
    fields = SubjectFields(email="noc@acme.example")
    grant = server.grant("n", fields, validity_days=None, dns_names=("a.example",), now=NOW)
    assert grant.dns_names == ("a.example",) and grant.email_addresses == ("noc@acme.example",)


@pytest.mark.parametrize(
    "email", ["no-at-sign", "\u00e5@acme.example"], ids=["fail-no-at", "fail-non-ascii"]
)
def test_fail_policy_email_not_an_address(email: str) -> None:
    with pytest.raises(UnsupportedParameter, match="e-mail"):
        SubjectFields(email=email)


def test_fail_grant_bad_device_id() -> None:
    with pytest.raises(UnsupportedParameter, match="device id"):
        IssuingPolicy().grant("bad id!", SubjectFields(), validity_days=None, now=NOW)


def test_san_only_from_server_profile() -> None:
    with pytest.raises(UnsupportedParameter, match="server profile"):
        IssuingPolicy().grant(
            "d", SubjectFields(), validity_days=None, dns_names=("a.example",), now=NOW
        )
    server = IssuingPolicy(profile=CertificateProfile.SERVER)
    grant = server.grant(
        "d",
        SubjectFields(),
        validity_days=None,
        dns_names=("a.example",),
        ip_addresses=("::1",),
        now=NOW,
    )
    assert grant.dns_names == ("a.example",) and grant.ip_addresses == ("::1",)


@pytest.mark.parametrize("country", ["XX", "UK", "se", "SWE"], ids=lambda c: f"fail-{c}")
def test_fail_country_not_assigned_iso_3166(country: str) -> None:
    with pytest.raises(UnsupportedParameter, match="ISO 3166"):
        SubjectFields(country=country)


@pytest.mark.parametrize("country", ["SE", "GB", "DE", "US", "AQ"], ids=lambda c: f"ok-{c}")
def test_ok_country_assigned(country: str) -> None:
    assert SubjectFields(country=country).country == country


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"default_validity_days": 900}, id="fail-default-over-max"),
        pytest.param({"default_validity_days": 0}, id="fail-default-zero"),
        pytest.param({"allowed_keys": (KeySpec.ED25519,)}, id="fail-default-key-not-allowed"),
    ],
)
def test_fail_inconsistent_policy(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        IssuingPolicy(**kwargs)  # type: ignore[arg-type]


def test_ok_toml_round_trip(tmp_path: Path) -> None:
    policy = IssuingPolicy(
        profile=CertificateProfile.SERVER,
        default_validity_days=30,
        max_validity_days=90,
        default_key=KeySpec.ED25519,
        allowed_keys=(KeySpec.ED25519, KeySpec.EC_P384),
        subject=DEFAULTS,
        allow_csr=False,
    )
    path = tmp_path / "policy.toml"
    policy.save(path)
    text = path.read_text()
    assert text.startswith("# Issuing policy")  # readable, with a comment for the operator
    assert tomllib.loads(text)["keys"]["allowed"] == ["ed25519", "ec-p384"]
    assert IssuingPolicy.load(path) == policy
    assert IssuingPolicy.from_toml({}) == IssuingPolicy()  # every key optional


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('profile = "printer"', id="fail-unknown-profile"),
        pytest.param('[keys]\nallowed = ["dsa-1024"]', id="fail-unknown-key"),
        pytest.param(
            '[keys]\ndefault = "rsa-2048"\nallowed = ["ec-p256"]', id="fail-default-not-allowed"
        ),
        pytest.param('[validity]\ndefault_days = "many"', id="fail-days-not-a-number"),
        pytest.param('[subject]\ncountry = "XX"', id="fail-bad-country"),
        pytest.param('[subject]\nplanet = "Mars"', id="fail-unknown-subject-field"),
        pytest.param("profile = ", id="fail-not-toml"),
    ],
)
def test_fail_bad_policy_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError):
        IssuingPolicy.load(path)


def test_fail_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read policy"):
        IssuingPolicy.load(tmp_path / "absent.toml")


def test_fail_invalid_policy_file_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    IssuingPolicy().save(path)
    path.write_text(path.read_text().replace("[subject]", '[subject]\nemail = "ops-at-example"'))
    with pytest.raises(ConfigurationError) as caught:
        IssuingPolicy.load(path)
    assert str(path) in caught.value.message
    assert "ops@example.com" in caught.value.message


# ------------------------------------------------ subject fields are rules, not defaults


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        pytest.param(SubjectFields(organization="Evil"), "Organization", id="fail-fixed-o"),
        pytest.param(SubjectFields(country="US"), "Country", id="fail-fixed-c"),
        pytest.param(SubjectFields(email="x@evil.example"), "Email", id="fail-email-default"),
    ],
)
def test_fail_request_may_not_override_the_policy(fields: SubjectFields, refused: str) -> None:
    policy = IssuingPolicy(subject=DEFAULTS)
    with pytest.raises(NotEntitled, match=refused) as caught:
        policy.grant("dev-1", fields, validity_days=None, now=NOW)
    assert isinstance(caught.value, NotAuthorized)


def test_ok_request_may_repeat_a_fixed_field_and_set_an_allowed_one() -> None:
    policy = IssuingPolicy(subject=SubjectFields(organization="Acme"))
    fields = SubjectFields(organization="Acme", locality="Lund")
    subject = subject_of(policy.grant("d", fields, validity_days=None, now=NOW).subject)
    assert subject[NameOID.ORGANIZATION_NAME.dotted_string] == "Acme"
    assert subject[NameOID.LOCALITY_NAME.dotted_string] == "Lund"  # allowed: no policy value


def test_fail_forbidden_field_is_refused_even_without_a_value() -> None:
    policy = IssuingPolicy(subject_rules=(("locality", FieldRule.FORBIDDEN),))
    with pytest.raises(NotEntitled, match="Locality"):
        policy.grant("d", SubjectFields(locality="Lund"), validity_days=None, now=NOW)
    grant = policy.grant("d", SubjectFields(), validity_days=None, now=NOW)  # control
    assert NameOID.LOCALITY_NAME.dotted_string not in subject_of(grant.subject)


@pytest.mark.parametrize(
    ("rules", "subject"),
    [
        pytest.param((("organization", "fixed"),), SubjectFields(), id="fail-fixed-without-value"),
        pytest.param(
            (("email", "forbidden"),),
            SubjectFields(email="a@b.example"),
            id="fail-forbidden-with-value",
        ),
        pytest.param((("planet", "allowed"),), SubjectFields(), id="fail-unknown-field"),
    ],
)
def test_fail_inconsistent_subject_rules(
    rules: tuple[tuple[str, str], ...], subject: SubjectFields
) -> None:
    with pytest.raises(ConfigurationError):
        IssuingPolicy(subject=subject, subject_rules=rules)  # type: ignore[arg-type]


def test_ok_rules_are_written_out_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    IssuingPolicy(subject=SubjectFields(organization="Acme")).save(path)
    rules = tomllib.loads(path.read_text())["subject_rules"]
    assert rules["organization"] == "fixed" and rules["email"] == "forbidden"
    assert rules["locality"] == "allowed"
    path.write_text(path.read_text().replace('locality = "allowed"', 'locality = "forbidden"'))
    assert IssuingPolicy.load(path).rule("locality") is FieldRule.FORBIDDEN


def test_ok_validity_above_max_clipped_only_when_the_policy_says_clip() -> None:
    with pytest.raises(UnsupportedParameter, match="outside policy"):
        IssuingPolicy(default_validity_days=30, max_validity_days=30).validity(31, now=NOW)
    clipping = IssuingPolicy(
        default_validity_days=30, max_validity_days=30, above_max=AboveMax.CLIP
    )
    assert clipping.validity(31, now=NOW)[1] == NOW + timedelta(days=30)
    assert IssuingPolicy.from_toml({"validity": {"above_max": "clip"}}).above_max is AboveMax.CLIP


# ------------------------------------------------ CA certificates over the protocol


def test_fail_ca_profile_issues_no_ca_certificate_unless_the_policy_allows() -> None:
    with pytest.raises(NotEntitled, match="does not issue CA certificates"):
        IssuingPolicy(profile=CertificateProfile.CA).grant(
            "sub", SubjectFields(), validity_days=None, now=NOW
        )


def test_ok_allowed_ca_certificate_has_path_length_0_and_name_constraints() -> None:
    policy = IssuingPolicy(
        profile=CertificateProfile.CA,
        issue_ca_certificates=True,
        permitted_dns=("customer.example",),
        permitted_ip=("10.0.0.0/8",),
    )
    grant = policy.grant("sub", SubjectFields(), validity_days=None, now=NOW)
    key = generate_private_key(KeySpec.EC_P256)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")])
    ca_cert = create_self_signed_ca(key, ca_name, now=NOW, validity=timedelta(days=800))
    cert = CertificateAuthority(name="ca", key=key, certificate=ca_cert).issue(
        generate_private_key(KeySpec.EC_P256).public_key(), grant
    )
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    names = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert names.critical
    assert names.value.permitted_subtrees is not None
    assert set(names.value.permitted_subtrees) == {
        x509.DNSName("customer.example"),
        x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")),
    }


@pytest.mark.parametrize(
    "table",
    [
        pytest.param({"issue": True}, id="fail-allowed-without-constraints"),
        pytest.param({"issue": True, "permitted_dns": ["*.x.example"]}, id="fail-wildcard"),
        pytest.param({"issue": True, "permitted_ip": ["10.0.0.1/8"]}, id="fail-host-bits"),
    ],
)
def test_fail_ca_certificates_need_valid_name_constraints(table: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        IssuingPolicy.from_toml({"profile": "ca", "ca_certificates": table})
