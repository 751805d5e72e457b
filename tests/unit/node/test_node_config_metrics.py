"""node.toml round trips and refusals; the Prometheus text the metrics endpoint writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztpki.errors import ConfigurationError, UnknownCA
from ztpki.node.config import CALabel, IssuingParameters, Limits, NodeConfig
from ztpki.node.manufacturers import ManufacturerConfig
from ztpki.node.metrics import Gauges, NodeMetrics, database_figures
from ztpki.node.revocation_policy import RevocationPolicy
from ztpki.pki.device_ids import DeviceIdNamespace
from ztpki.pki.keys import KeySpec
from ztpki.store import open_sqlite_node_store


def ids(*patterns: str) -> DeviceIdNamespace:
    return DeviceIdNamespace.parse(patterns)


def config(tmp_path: Path, **kw: object) -> NodeConfig:
    values: dict[str, object] = {
        "directory": tmp_path,
        "ca_system": "ca.example:7443",
        "ca_client": Path("ca-client"),
        "server_cert": Path("server/cert.pem"),
        "server_key": Path("/etc/node/key.pem"),
        "manufacturers": (
            ManufacturerConfig("Acme Devices", Path("trust/01-acme.pem"), ids("ACME-*")),
            ManufacturerConfig(
                "Other", Path("trust/02-other.pem"), ids("OTH-*", "X-*"), ("ab" * 32,)
            ),
        ),
        "labels": (
            CALabel("default", Path("ca/default.pem"), "operational"),
            CALabel(
                "meters",
                Path("ca/meters.pem"),
                None,
                IssuingParameters(
                    key_algorithm=KeySpec.EC_P384, validity_days=90, country="SE", encrypt_key=True
                ),
            ),
        ),
    }
    values.update(kw)
    return NodeConfig(**values)  # type: ignore[arg-type]


def test_ok_round_trip(tmp_path: Path) -> None:
    original = config(tmp_path, limits=Limits(max_body=1000, ca_timeout=5.0))
    original.save()
    loaded = NodeConfig.load(tmp_path)
    assert loaded == original
    assert loaded.path(loaded.server_cert) == tmp_path / "server/cert.pem"
    assert loaded.path(loaded.server_key) == Path("/etc/node/key.pem")
    assert loaded.label(None).label == "default" and loaded.label("meters").ca_name is None


NODE_TABLE = (
    '[node]\nca_system = "x:1"\nca_client = "c"\nserver_cert = "s"\nserver_key = "k"\n'
    '[manufacturer.Acme]\ntrust = "t"\ndevice_ids = ["*"]\n'
)


@pytest.mark.parametrize(
    ("case", "text"),
    [
        ("fail-no-node-table", "[limits]\n"),
        ("fail-missing-key", '[node]\nca_system = "x:1"\n'),
        ("fail-bad-toml", "[node\n"),
        ("fail-unknown-limit", NODE_TABLE + "[limits]\nheader_patience = 3\n"),
        ("fail-bad-limit", NODE_TABLE + '[limits]\nmax_body = "lots"\n'),
        (
            "fail-bad-key-algorithm",
            NODE_TABLE + '[ca.default]\nchain = "c.pem"\nkey_algorithm = "dsa"\n',
        ),
        ("fail-label-without-chain", NODE_TABLE + '[ca.default]\nca_name = "x"\n'),
    ],
)
def test_fail_bad_files(tmp_path: Path, case: str, text: str) -> None:
    (tmp_path / "node.toml").write_text(text)
    with pytest.raises(ConfigurationError):
        NodeConfig.load(tmp_path)
    with pytest.raises(ConfigurationError):
        NodeConfig.load(tmp_path / "elsewhere")


def test_fail_inconsistent_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="declares no manufacturer"):
        config(tmp_path, manufacturers=()).check_manufacturers_declared()
    with pytest.raises(ConfigurationError):
        config(tmp_path, default_label="nosuch")
    with pytest.raises(ConfigurationError, match="lease_seconds"):
        Limits(ca_timeout=60, lease_seconds=100)
    with pytest.raises(ConfigurationError):
        Limits(max_body=0)
    with pytest.raises(ConfigurationError):
        IssuingParameters(country="Sweden")
    with pytest.raises(UnknownCA):
        config(tmp_path).label("nosuch")


def test_ok_metrics_exposition() -> None:
    metrics = NodeMetrics()
    metrics.count_request("simpleenroll", "issued")
    metrics.count_request("simpleenroll", "issued")
    metrics.count_request("simpleenroll", "refused-blocked")
    metrics.observe_enrollment("simpleenroll", 0.02)
    metrics.observe_enrollment("simpleenroll", 42.0)
    text = metrics.exposition(Gauges(devices={"listed": 3}))
    lines = text.splitlines()
    assert 'ztpki_node_requests_total{endpoint="simpleenroll",outcome="issued"} 2.0' in lines
    assert 'ztpki_node_enrollment_seconds_bucket{endpoint="simpleenroll",le="0.01"} 0.0' in lines
    assert 'ztpki_node_enrollment_seconds_bucket{endpoint="simpleenroll",le="0.025"} 1.0' in lines
    assert 'ztpki_node_enrollment_seconds_bucket{endpoint="simpleenroll",le="30.0"} 1.0' in lines
    assert 'ztpki_node_enrollment_seconds_bucket{endpoint="simpleenroll",le="+Inf"} 2.0' in lines
    assert 'ztpki_node_enrollment_seconds_count{endpoint="simpleenroll"} 2.0' in lines
    assert 'ztpki_node_devices{state="listed"} 3.0' in lines
    assert text.endswith("\n")


def test_ok_label_values_are_escaped() -> None:
    metrics = NodeMetrics()
    metrics.count_request('a"b\\c\nd', "x")
    assert 'endpoint="a\\"b\\\\c\\nd"' in metrics.exposition()


def test_ok_sender_lease_defaults_to_three_looks_and_at_least_90_s(tmp_path: Path) -> None:
    assert RevocationPolicy().sender_lease == 90.0
    assert RevocationPolicy(poll_seconds=600).sender_lease == 1800.0
    assert RevocationPolicy(poll_seconds=1, sender_lease_seconds=7).sender_lease == 7.0
    original = config(
        tmp_path, revocation=RevocationPolicy(poll_seconds=1, sender_lease_seconds=40)
    )
    original.save()
    assert NodeConfig.load(tmp_path) == original
    config(tmp_path / "default", revocation=RevocationPolicy()).save()
    assert "sender_lease_seconds" not in (tmp_path / "default" / "node.toml").read_text()


def test_fail_sender_lease_shorter_than_three_looks_or_one_exchange(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="at least 3 times poll_seconds"):
        RevocationPolicy(poll_seconds=2, sender_lease_seconds=5)
    with pytest.raises(ConfigurationError, match=r"longer than \[limits\] ca_timeout \(30 s\)"):
        config(tmp_path, revocation=RevocationPolicy(sender_lease_seconds=30))
    (tmp_path / "node.toml").write_text(NODE_TABLE + "[revocation]\nsender_lease_seconds = 0\n")
    with pytest.raises(ConfigurationError, match="sender_lease_seconds"):
        NodeConfig.load(tmp_path)


def test_ok_database_figures_of_the_store_and_of_other_workers(tmp_path: Path) -> None:
    store = open_sqlite_node_store(tmp_path / "node.db")
    try:
        metrics = NodeMetrics(database=database_figures(store))
        before = store.database.counters.snapshot()
        store.counts()
        metrics.add_database({("postgresql", "round_trips"): 5, ("sqlite", "commits_read"): 2})
        lines = metrics.exposition().splitlines()
        figures = store.database.counters.snapshot()
        assert figures["commits_read"] == before["commits_read"] + 1
        assert figures["round_trips"] >= before["round_trips"] + 3  # BEGIN, SELECT, COMMIT
        trips = figures["round_trips"]
        assert f'ztpki_database_round_trips_total{{engine="sqlite"}} {trips}.0' in lines
        assert 'ztpki_database_round_trips_total{engine="postgresql"} 5.0' in lines
        reads = figures["commits_read"] + 2
        assert f'ztpki_database_commits_total{{engine="sqlite",kind="read"}} {reads}.0' in lines
        writes = figures["commits_write"]
        assert f'ztpki_database_commits_total{{engine="sqlite",kind="write"}} {writes}.0' in lines
    finally:
        store.close()


def test_ok_no_database_figures_without_a_database() -> None:
    assert database_figures(object()) is None
    lines = NodeMetrics().exposition().splitlines()
    assert not [line for line in lines if line.startswith("ztpki_database_")]


def test_ok_database_figures_add_up_across_workers() -> None:
    one = NodeMetrics(database=lambda: ("postgresql", {"round_trips": 7, "commits_write": 2}))
    two = NodeMetrics(database=lambda: ("postgresql", {"round_trips": 5, "commits_write": 1}))
    total = NodeMetrics()
    total.add(one.snapshot())
    total.add(two.snapshot())
    lines = total.exposition().splitlines()
    assert 'ztpki_database_round_trips_total{engine="postgresql"} 12.0' in lines
    assert 'ztpki_database_commits_total{engine="postgresql",kind="write"} 3.0' in lines
    with pytest.raises(ValueError, match="snapshot"):
        total.add({**one.snapshot(), "database": [["postgresql", "round_trips", "many"]]})
    assert 'ztpki_database_round_trips_total{engine="postgresql"} 12.0' in (
        total.exposition().splitlines()
    )
