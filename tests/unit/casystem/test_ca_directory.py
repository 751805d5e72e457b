"""CASystemDirectory and init_ca: several CAs per directory, keys encrypted at rest, 0600."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from tests.support.pem_markers import ENCRYPTED_KEY_HEADER

from ztpki.casystem.directory import CASystemDirectory, init_ca, service_authority
from ztpki.casystem.operations import load_system
from ztpki.casystem.policy import IssuingPolicy
from ztpki.errors import ConfigurationError, UnknownCA
from ztpki.pki.keys import KeySpec
from ztpki.pki.names import SubjectFields
from ztpki.pki.profiles import CertificateProfile

NOW = datetime.now(UTC)
SECRET = b"directory-test-passphrase"


@pytest.fixture
def plant(tmp_path: Path) -> CASystemDirectory:
    directory = CASystemDirectory(tmp_path / "plant")
    root = init_ca(
        directory, "root", key_spec=KeySpec.EC_P256, validity_days=100, passphrase=SECRET, now=NOW
    )
    policy = IssuingPolicy(subject=SubjectFields(country="SE"))
    init_ca(
        directory, "factory", key_spec=KeySpec.EC_P256, validity_days=50, passphrase=SECRET,
        now=NOW, parent=root, policy=policy, make_default=True,
    )  # fmt: skip
    return directory


def test_ok_layout_and_default(plant: CASystemDirectory) -> None:
    assert plant.ca_names() == ["factory", "root"]
    assert plant.default_ca() == "factory"
    for name in ("root", "factory"):
        key = plant.ca_dir(name) / "ca.key.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert key.read_bytes().startswith(ENCRYPTED_KEY_HEADER)
    assert plant.parents("root") == ()
    assert plant.parents("factory") == (plant.certificate("root"),)
    assert plant.policy("factory").subject.country == "SE"


def test_ok_info(plant: CASystemDirectory) -> None:
    root, factory = plant.info("root"), plant.info("factory")
    assert root.is_root and not root.is_default
    assert not factory.is_root and factory.is_default
    assert factory.issuer == root.subject == "CN=root"
    assert factory.key_algorithm == "ec-p256" and factory.profile == "device"


def test_ok_subordinate_in_another_directory(plant: CASystemDirectory, tmp_path: Path) -> None:
    root = plant.load_authority("root", passphrase=SECRET)
    customer = CASystemDirectory(tmp_path / "customer")
    authority = init_ca(
        customer, "customer", key_spec=KeySpec.RSA_2048, validity_days=30,
        passphrase=b"other-passphrase", now=NOW, parent=root,
        policy=IssuingPolicy(profile=CertificateProfile.SERVER),
    )  # fmt: skip
    assert customer.default_ca() == "customer"  # the first CA of a system is its default
    assert customer.parents("customer") == (plant.certificate("root"),)
    authority.certificate.verify_directly_issued_by(plant.certificate("root"))
    constraints = authority.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert authority.chain[-1] == plant.certificate("root")
    loaded = customer.load_authority("customer", passphrase=b"other-passphrase")
    assert loaded.certificate == authority.certificate


def test_fail_wrong_passphrase_is_a_configuration_error(plant: CASystemDirectory) -> None:
    with pytest.raises(ConfigurationError, match="wrong or missing passphrase"):
        plant.load_authority("root", passphrase=b"not-the-passphrase")
    with pytest.raises(ConfigurationError, match="wrong or missing passphrase"):
        plant.load_authority("root", passphrase=None)
    with pytest.raises(ConfigurationError, match="wrong or missing passphrase"):
        load_system(plant, passphrase=b"not-the-passphrase")
    assert plant.load_authority("root", passphrase=SECRET).name == "root"  # control


@pytest.mark.parametrize(
    ("name", "error"),
    [
        pytest.param("root", ConfigurationError, id="fail-exists"),
        pytest.param("service", ConfigurationError, id="fail-reserved-name"),
        pytest.param("bad name", ConfigurationError, id="fail-bad-name"),
        pytest.param("../escape", ConfigurationError, id="fail-path-in-name"),
    ],
)
def test_fail_init_ca_names(plant: CASystemDirectory, name: str, error: type) -> None:
    with pytest.raises(error):
        init_ca(plant, name, key_spec=KeySpec.EC_P256, validity_days=10, passphrase=SECRET, now=NOW)


def test_fail_nonpositive_validity(plant: CASystemDirectory) -> None:
    with pytest.raises(ConfigurationError, match="positive"):
        init_ca(plant, "new", key_spec=KeySpec.EC_P256, validity_days=0, passphrase=SECRET, now=NOW)
    assert "new" not in plant.ca_names()


def test_fail_unknown_ca(plant: CASystemDirectory) -> None:
    with pytest.raises(UnknownCA, match="known: factory, root"):
        plant.load_authority("nosuch", passphrase=SECRET)
    with pytest.raises(UnknownCA):
        plant.policy("nosuch")


def test_fail_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="holds no CA"):
        CASystemDirectory(tmp_path).default_ca()


def test_ok_service_authority_created_once(plant: CASystemDirectory) -> None:
    first = service_authority(plant, passphrase=SECRET, now=NOW)
    again = service_authority(plant, passphrase=SECRET, now=NOW)
    assert first.certificate == again.certificate
    key = plant.root / "service" / "ca.key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(ENCRYPTED_KEY_HEADER)
    assert "service" not in plant.ca_names()  # never an issuing CA
    with pytest.raises(ConfigurationError, match="passphrase"):
        service_authority(plant, passphrase=b"not-the-passphrase", now=NOW)


def test_ok_load_system(plant: CASystemDirectory) -> None:
    system = load_system(plant, passphrase=SECRET)
    assert system.default_ca == "factory" and sorted(system.cas) == ["factory", "root"]
    factory = system.cas["factory"]
    assert [x509.load_der_x509_certificate(d) for d in factory.chain_der] == [
        plant.certificate("factory"),
        plant.certificate("root"),
    ]
