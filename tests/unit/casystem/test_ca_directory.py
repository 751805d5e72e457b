"""CASystemDirectory and init_ca: several CAs per directory, keys encrypted at rest, 0600."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from tests.support.pem_markers import ENCRYPTED_KEY_HEADER

from ztpki.casystem.directory import CASystemDirectory, init_ca, service_authority
from ztpki.casystem.operations import add_client, load_system
from ztpki.casystem.policy import IssuingPolicy
from ztpki.errors import ConfigurationError, UnknownCA
from ztpki.pki.keys import KeySpec
from ztpki.pki.names import SubjectFields
from ztpki.pki.profiles import CertificateProfile
from ztpki.store.records import ClientEntitlement

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


# --- path length (RFC 5280 4.2.1.9) ------------------------------------------------------


def _path_length(certificate: x509.Certificate) -> int | None:
    return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length


def _tree(directory: CASystemDirectory) -> list[Path]:
    return sorted(directory.root.rglob("*"))


def test_fail_subordinate_of_a_path_length_0_ca_is_refused(plant: CASystemDirectory) -> None:
    factory = plant.load_authority("factory", passphrase=SECRET)
    assert _path_length(factory.certificate) == 0
    before = _tree(plant)
    with pytest.raises(ConfigurationError, match="path length 0") as refused:
        init_ca(
            plant, "sub-of-sub", key_spec=KeySpec.EC_P256, validity_days=10, passphrase=SECRET,
            now=NOW, parent=factory,
        )  # fmt: skip
    assert "--path-length" in refused.value.message  # says how to get a CA that may sign CAs
    assert _tree(plant) == before and "sub-of-sub" not in plant.ca_names()
    # Control: the root (no path length limit) may sign another subordinate.
    root = plant.load_authority("root", passphrase=SECRET)
    sub = init_ca(
        plant, "sub", key_spec=KeySpec.EC_P256, validity_days=10, passphrase=SECRET, now=NOW,
        parent=root,
    )  # fmt: skip
    assert _path_length(sub.certificate) == 0


def test_ok_path_length_1_ca_signs_an_issuing_ca(plant: CASystemDirectory) -> None:
    root = plant.load_authority("root", passphrase=SECRET)
    common = {"key_spec": KeySpec.EC_P256, "validity_days": 10, "passphrase": SECRET, "now": NOW}
    mid = init_ca(plant, "mid", parent=root, path_length=1, **common)  # type: ignore[arg-type]
    issuing = init_ca(plant, "issuing", parent=mid, **common)  # type: ignore[arg-type]
    assert _path_length(mid.certificate) == 1 and _path_length(issuing.certificate) == 0
    assert plant.parents("issuing") == (mid.certificate, plant.certificate("root"))
    with pytest.raises(ConfigurationError, match="path length 0"):
        init_ca(plant, "too-deep", parent=issuing, **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="at most 0"):
        init_ca(plant, "too-long", parent=mid, path_length=1, **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="subordinate"):
        init_ca(plant, "root2", path_length=1, **common)  # type: ignore[arg-type]
    assert plant.ca_names() == ["factory", "issuing", "mid", "root"]


# --- one passphrase per CA system --------------------------------------------------------


@pytest.mark.parametrize(
    "other", [b"another-passphrase", None], ids=["fail-other-passphrase", "fail-no-passphrase"]
)
def test_fail_new_ca_under_another_passphrase_writes_nothing(
    plant: CASystemDirectory, other: bytes | None
) -> None:
    # `ca serve` opens every key of the system with one passphrase: a CA under another one
    # would be created fine and then stop the service from starting.
    before = _tree(plant)
    with pytest.raises(ConfigurationError, match="wrong or missing passphrase") as refused:
        init_ca(
            plant, "other", key_spec=KeySpec.EC_P256, validity_days=10, passphrase=other, now=NOW
        )
    assert "ZTPKI_CA_PASSPHRASE" in refused.value.message
    assert _tree(plant) == before
    # Control: under the system's passphrase the same CA is created and the service loads.
    init_ca(plant, "other", key_spec=KeySpec.EC_P256, validity_days=10, passphrase=SECRET, now=NOW)
    assert "other" in load_system(plant, passphrase=SECRET).cas


def test_fail_first_client_under_another_passphrase_writes_nothing(
    plant: CASystemDirectory, tmp_path: Path
) -> None:
    before = _tree(plant)
    out = tmp_path / "line1"
    with pytest.raises(ConfigurationError, match="wrong or missing passphrase"):
        add_client(
            plant,
            "line1",
            out=out,
            passphrase=b"another-passphrase",
            client_passphrase=None,
            entitlement=ClientEntitlement(cas=("root",)),
        )
    with pytest.raises(ConfigurationError, match="wrong or missing passphrase"):
        service_authority(plant, passphrase=b"another-passphrase", now=NOW)
    assert _tree(plant) == before and not out.exists()
    # Control: the system's passphrase creates the service CA and the credential.
    record = add_client(
        plant,
        "line1",
        out=out,
        passphrase=SECRET,
        client_passphrase=None,
        entitlement=ClientEntitlement(cas=("root",)),
    )
    assert record.name == "line1" and (out / "cert.pem").exists()
    service_authority(plant, passphrase=SECRET, now=NOW)


def test_ok_system_without_passphrase_refuses_one(tmp_path: Path) -> None:
    demo = CASystemDirectory(tmp_path / "demo")
    common = {"key_spec": KeySpec.EC_P256, "validity_days": 10, "now": NOW}
    init_ca(demo, "root", passphrase=None, **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="wrong or missing passphrase"):
        init_ca(demo, "sealed", passphrase=SECRET, **common)  # type: ignore[arg-type]
    init_ca(demo, "second", passphrase=None, **common)  # type: ignore[arg-type]
    assert demo.ca_names() == ["root", "second"]
