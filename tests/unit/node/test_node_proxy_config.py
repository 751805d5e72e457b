"""The proxy side of the node without a server: the header codec, the [proxy] table (narrow
address ranges, proxy CA and pins, socket group), and the CLI that writes it (`node init`
proxy options, `node set-proxy`, `node policy`)."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from node_pki import PKI, leaf, root_ca
from test_node_cli import env, init_args, inputs, run  # noqa: F401 (its fixtures, reused)

from ztpki.errors import ConfigurationError, MalformedInput
from ztpki.node.config import CALabel, NodeConfig
from ztpki.node.manufacturers import ManufacturerConfig
from ztpki.node.proxy import MAX_HEADER, decode_forwarded_certificate
from ztpki.node.proxy_config import ProxyConfig, ProxyRangeRefused, ProxyValueError, parse_network
from ztpki.node.proxy_listener import ProxyAddress
from ztpki.pki.device_ids import EVERY_DEVICE_ID
from ztpki.pki.pem import certificates_pem, fingerprint_sha256


def escaped(cert: x509.Certificate) -> str:
    """The PEM, URL-escaped as nginx's $ssl_client_escaped_cert does (every reserved byte)."""
    return quote(cert.public_bytes(serialization.Encoding.PEM).decode(), safe="")


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# ------------------------------------------------------------------ the header codec
@pytest.fixture(scope="module")
def pki() -> PKI:
    return PKI.create()


def test_ok_decodes_nginx_escaped_pem(pki: PKI) -> None:
    _, cert = pki.temporary("c1")
    assert decode_forwarded_certificate(escaped(cert)) == der(cert)


@settings(max_examples=50, deadline=None)
@given(safe=st.sets(st.sampled_from("+/=- \n")))
def test_ok_decodes_any_escaping_of_safe_characters(safe: set[str]) -> None:
    _, cert = leaf(PKI_FOR_PROPERTIES.factory_ca, "c2")
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    assert decode_forwarded_certificate(quote(pem, safe="".join(safe))) == der(cert)


PKI_FOR_PROPERTIES = PKI.create()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="fail-empty"),
        pytest.param("not a certificate", id="fail-garbage"),
        pytest.param("%ff%fe", id="fail-not-utf8"),
        pytest.param(
            quote("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            id="fail-bad-der",
        ),
        pytest.param("x" * (MAX_HEADER + 1), id="fail-oversized"),
    ],
)
def test_fail_malformed_header_values(value: str) -> None:
    with pytest.raises(MalformedInput):
        decode_forwarded_certificate(value)


def test_fail_a_chain_in_the_header(pki: PKI) -> None:
    _, cert = pki.temporary("c3")
    chain = escaped(cert) + escaped(pki.factory_ca.certificate)
    with pytest.raises(MalformedInput, match="exactly one"):
        decode_forwarded_certificate(chain)


# ------------------------------------------------------------------ configuration
def test_ok_trusts_addresses_networks_and_mapped_ipv4() -> None:
    proxy = ProxyConfig(trusted=(parse_network("127.0.0.1"), parse_network("10.1.2.0/24")))
    assert proxy.trusts(ipaddress.ip_address("10.1.2.3"))
    assert proxy.trusts(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not proxy.trusts(ipaddress.ip_address("127.0.0.2"))
    assert not proxy.trusts(ipaddress.ip_address("::1"))


def test_fail_nothing_is_trusted_by_default() -> None:
    assert not ProxyConfig().trusts(ipaddress.ip_address("127.0.0.1"))


@pytest.mark.parametrize(
    "table",
    [
        pytest.param({"trusted": ["10.0.0.1/8"]}, id="fail-host-bits-in-cidr"),
        pytest.param({"trusted": ["proxy.example"]}, id="fail-name-not-address"),
        pytest.param({"trusted": "10.0.0.0/8"}, id="fail-not-a-list"),
        pytest.param({"header": "X Bad: header"}, id="fail-header-name"),
        pytest.param({"trust": []}, id="fail-unknown-key"),
    ],
)
def test_fail_bad_proxy_table(table: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        ProxyConfig.from_toml(table)


def test_ok_node_toml_without_proxy_table_trusts_no_proxy(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(
        '[node]\nca_system = "127.0.0.1:1"\nca_client = "c"\nserver_cert = "s"\n'
        'server_key = "k"\n[manufacturer.Acme]\ntrust = "t"\ndevice_ids = ["*"]\n'
    )
    assert NodeConfig.load(tmp_path).proxy == ProxyConfig()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("0.0.0.0/0", id="fail-ipv4-everything"),
        pytest.param("::/0", id="fail-ipv6-everything"),
    ],
)
def test_fail_everything_is_refused_even_with_the_wide_flag(text: str) -> None:
    with pytest.raises(ProxyRangeRefused, match="every address"):
        parse_network(text, allow_wide=True)


@pytest.mark.parametrize(
    ("text", "wide"),
    [
        pytest.param("10.1.2.0/24", False, id="ok-ipv4-24"),
        pytest.param("10.1.2.3", False, id="ok-ipv4-host"),
        pytest.param("2001:db8:1::/48", False, id="ok-ipv6-48"),
        pytest.param("10.0.0.0/23", True, id="fail-ipv4-23"),
        pytest.param("10.0.0.0/8", True, id="fail-ipv4-8"),
        pytest.param("2001:db8::/47", True, id="fail-ipv6-47"),
    ],
)
def test_wide_ranges_need_the_flag(text: str, wide: bool) -> None:
    if wide:
        with pytest.raises(ProxyRangeRefused, match="--allow-wide-proxy-range"):
            parse_network(text)
    else:
        parse_network(text)
    assert parse_network(text, allow_wide=True) == ipaddress.ip_network(text)


def test_fail_wide_range_in_node_toml_without_allow_wide_range() -> None:
    with pytest.raises(ProxyRangeRefused):
        ProxyConfig.from_toml({"trusted": ["10.0.0.0/8"]})
    table = {"trusted": ["10.0.0.0/8"], "allow_wide_range": True}
    assert ProxyConfig.from_toml(table).trusted == (ipaddress.ip_network("10.0.0.0/8"),)


def test_fail_pins_without_a_proxy_ca() -> None:
    with pytest.raises(ProxyValueError, match="need ca"):
        ProxyConfig(fingerprints=("ab" * 32,))


@pytest.mark.parametrize(
    "proxy",
    [
        pytest.param(
            ProxyConfig(trusted=(parse_network("10.0.0.0/24"),), header="X-Client-Cert"),
            id="ok-addresses",
        ),
        pytest.param(
            ProxyConfig(
                trusted=(parse_network("10.0.0.0/8", allow_wide=True),),
                header="X-Client-Cert",
                allow_wide_range=True,
                ca=Path("proxy/ca.pem"),
                fingerprints=("ab" * 32,),
                socket_group="www-data",
            ),
            id="ok-every-setting",
        ),
    ],
)
def test_proxy_table_round_trips_through_node_toml(tmp_path: Path, proxy: ProxyConfig) -> None:
    config = NodeConfig(
        directory=tmp_path,
        ca_system="127.0.0.1:1",
        ca_client=Path("c"),
        server_cert=Path("s"),
        server_key=Path("k"),
        manufacturers=(ManufacturerConfig("Acme", Path("t"), EVERY_DEVICE_ID),),
        labels=(CALabel("default", Path("ca.pem")),),
        proxy=proxy,
    )
    config.save()
    assert NodeConfig.load(tmp_path).proxy == proxy


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("127.0.0.1:0", ProxyAddress(host="127.0.0.1", port=0), id="ok-tcp"),
        pytest.param("[::1]:8444", ProxyAddress(host="::1", port=8444), id="ok-tcp-ipv6"),
        pytest.param(
            "unix:/run/ztpki/proxy.sock",
            ProxyAddress(socket_path=Path("/run/ztpki/proxy.sock")),
            id="ok-unix",
        ),
        pytest.param("unix:relative.sock", None, id="fail-unix-relative"),
        pytest.param("unix:/" + "x" * 200, None, id="fail-unix-too-long"),
        pytest.param("proxy", None, id="fail-no-port"),
    ],
)
def test_proxy_listen_addresses(text: str, expected: ProxyAddress | None) -> None:
    if expected is None:
        with pytest.raises(ConfigurationError):
            ProxyAddress.parse(text)
    else:
        assert ProxyAddress.parse(text) == expected


# ------------------------------------------------------------------ the CLI
@pytest.fixture
def proxy_ca(tmp_path: Path) -> tuple[Path, x509.Certificate]:
    ca = root_ca("proxy CA")
    path = tmp_path / "proxy-ca.pem"
    path.write_bytes(certificates_pem([ca.certificate]))
    return path, ca.certificate


def test_ok_init_with_proxy_options_and_policy(
    request: pytest.FixtureRequest, proxy_ca: tuple[Path, x509.Certificate]
) -> None:
    files: dict[str, Path] = request.getfixturevalue("inputs")
    ca_path, ca_cert = proxy_ca
    pin = fingerprint_sha256(leaf(root_ca("x"), "nginx")[1])
    args = init_args(
        files,
        *("--trusted-proxy", "127.0.0.1", "--trusted-proxy", "10.0.0.0/24"),
        *("--proxy-ca", str(ca_path), "--proxy-fingerprint", f"sha256:{pin}"),
        *("--proxy-socket-group", "www-data"),
    )
    assert run(*args)[0] == 0
    config = NodeConfig.load(files["node"])
    assert [str(n) for n in config.proxy.trusted] == ["127.0.0.1/32", "10.0.0.0/24"]
    assert config.proxy.ca == Path("proxy/ca.pem")
    assert (files["node"] / "proxy" / "ca.pem").read_bytes() == ca_path.read_bytes()
    assert config.proxy.fingerprints == (pin,)
    status, out = run("node", "policy", "--dir", str(files["node"]))
    assert status == 0
    assert "trusted proxies: 127.0.0.1/32, 10.0.0.0/24 (header X-SSL-Client-Cert)" in out
    assert f"TLS client certificate under CN=proxy CA sha256:{fingerprint_sha256(ca_cert)}" in out
    assert f"pinned proxy certificate: sha256:{pin}" in out
    assert "proxy Unix socket: mode 0660, group www-data" in out


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(("--trusted-proxy", "proxy.example"), id="fail-name-not-address"),
        pytest.param(("--trusted-proxy", "0.0.0.0/0"), id="fail-everything"),
        pytest.param(
            ("--trusted-proxy", "::/0", "--allow-wide-proxy-range"), id="fail-everything-v6"
        ),
        pytest.param(("--trusted-proxy", "10.0.0.0/8"), id="fail-wide-without-flag"),
        pytest.param(("--proxy-fingerprint", "sha256:12"), id="fail-bad-pin"),
    ],
)
def test_fail_init_with_a_bad_proxy_option_is_a_usage_error_and_writes_nothing(
    request: pytest.FixtureRequest, extra: tuple[str, ...]
) -> None:
    files: dict[str, Path] = request.getfixturevalue("inputs")
    assert run(*init_args(files, *extra))[0] == 2
    assert not files["node"].exists()


def test_ok_init_wide_range_with_the_flag(request: pytest.FixtureRequest) -> None:
    files: dict[str, Path] = request.getfixturevalue("inputs")
    args = init_args(files, "--trusted-proxy", "10.0.0.0/8", "--allow-wide-proxy-range")
    assert run(*args)[0] == 0
    proxy = NodeConfig.load(files["node"]).proxy
    assert proxy.allow_wide_range and [str(n) for n in proxy.trusted] == ["10.0.0.0/8"]
    _, out = run("node", "policy", "--dir", str(files["node"]))
    assert "(wide ranges allowed)" in out


def test_ok_policy_without_proxy_trusts_none(request: pytest.FixtureRequest) -> None:
    files: dict[str, Path] = request.getfixturevalue("inputs")
    assert run(*init_args(files))[0] == 0
    _, out = run("node", "policy", "--dir", str(files["node"]))
    assert "trusted proxies: none" in out
    assert "proxy authentication: none configured" in out


def test_set_proxy_changes_only_what_is_given_and_refuses_bad_values(
    request: pytest.FixtureRequest, proxy_ca: tuple[Path, x509.Certificate]
) -> None:
    files: dict[str, Path] = request.getfixturevalue("inputs")
    assert run(*init_args(files, "--trusted-proxy", "127.0.0.1"))[0] == 0
    node = str(files["node"])
    status, out = run("node", "set-proxy", "--dir", node, "--proxy-ca", str(proxy_ca[0]))
    assert status == 0, out
    assert "TLS client certificate under CN=proxy CA" in out
    config = NodeConfig.load(files["node"])
    assert [str(n) for n in config.proxy.trusted] == ["127.0.0.1/32"]  # kept
    assert config.proxy.ca == Path("proxy/ca.pem")
    before = (files["node"] / "node.toml").read_bytes()
    for bad in (
        ("--trusted-proxy", "0.0.0.0/0"),
        ("--trusted-proxy", "192.168.0.0/16"),
        ("--proxy-header", "X Bad"),
    ):
        assert run("node", "set-proxy", "--dir", node, *bad)[0] == 2, bad
        assert (files["node"] / "node.toml").read_bytes() == before
    assert run("node", "set-proxy", "--dir", node)[0] == 2  # nothing to set
    assert run("node", "set-proxy", "--dir", node, "--clear")[0] == 0
    assert NodeConfig.load(files["node"]).proxy == ProxyConfig()


def test_fail_hand_edited_everything_range_stops_the_node(request: pytest.FixtureRequest) -> None:
    files: dict[str, Path] = request.getfixturevalue("inputs")
    assert run(*init_args(files))[0] == 0
    path = files["node"] / "node.toml"
    data = tomllib.loads(path.read_text())
    text = (
        path.read_text()
        .replace("[proxy]\n", '[proxy]\ntrusted = ["0.0.0.0/0"]\n', 1)
        .replace("trusted = []\n", "", 1)
    )
    assert data["proxy"]["trusted"] == []
    path.write_text(text)
    status, _ = run("node", "policy", "--dir", str(files["node"]))
    assert status == 1
    with pytest.raises(ProxyRangeRefused):
        NodeConfig.load(files["node"])


@pytest.mark.parametrize("value", ["proxy", "unix:relative.sock", "10.0.0.1"])
def test_fail_serve_with_a_bad_proxy_listen_is_a_usage_error(tmp_path: Path, value: str) -> None:
    # Refused while parsing options: before any node directory is read or socket opened.
    assert run("node", "serve", "--dir", str(tmp_path), "--proxy-listen", value)[0] == 2
