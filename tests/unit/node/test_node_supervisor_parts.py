"""The parts of `node serve --workers N` that need no process: the restart back-off, adding up
the workers' metrics, and what a SIGHUP reload applies or leaves for a restart."""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from test_node_config_metrics import config

from ztpki.cli import main
from ztpki.node.config import IssuingParameters, Limits
from ztpki.node.metrics import Gauges, NodeMetrics
from ztpki.node.proxy_config import ProxyConfig
from ztpki.node.reload import plan_reload, read_reload
from ztpki.node.workers import RESTART_MAX, describe_exit, restart_delay
from ztpki.pki.keys import KeySpec


def test_ok_restart_back_off_doubles_and_is_capped() -> None:
    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert restart_delay(10_000) == RESTART_MAX


def test_ok_exit_status_is_described() -> None:
    assert describe_exit(9) == "killed by SIGKILL"  # wait status of a SIGKILL
    assert describe_exit(3 << 8) == "exited with status 3"


def busy_metrics(requests: int) -> NodeMetrics:
    metrics = NodeMetrics()
    for _ in range(requests):
        metrics.count_request("simpleenroll", "issued")
        metrics.observe_enrollment("simpleenroll", 0.02)
    metrics.count_unauthenticated("no-certificate")
    metrics.observe_ca_system("ok", 3.0)
    return metrics


def test_ok_snapshots_of_workers_add_up_to_one_exposition() -> None:
    total = NodeMetrics()
    for worker in (busy_metrics(2), busy_metrics(3)):
        total.add(json.loads(json.dumps(worker.snapshot())))
    text = total.exposition(Gauges(workers=2))
    assert 'ztpki_node_requests_total{endpoint="simpleenroll",outcome="issued"} 5.0' in text
    assert 'ztpki_node_unauthenticated_refusals_total{reason="no-certificate"} 2.0' in text
    assert 'ztpki_node_enrollment_seconds_count{endpoint="simpleenroll"} 5.0' in text
    assert 'ztpki_node_enrollment_seconds_bucket{endpoint="simpleenroll",le="0.025"} 5.0' in text
    assert 'ztpki_node_ca_system_seconds_bucket{le="2.5",outcome="ok"} 0.0' in text
    assert 'ztpki_node_ca_system_seconds_count{outcome="ok"} 2.0' in text
    assert "ztpki_node_workers 2.0" in text


@pytest.mark.parametrize(
    "snapshot",
    [
        pytest.param({"requests": [["a", "b", 1]]}, id="fail-missing-series"),
        pytest.param({**busy_metrics(1).snapshot(), "requests": [["a", "b"]]}, id="fail-short"),
        pytest.param(
            {**busy_metrics(1).snapshot(), "enrollment": {"x": {"counts": [1], "total": 1}}},
            id="fail-other-buckets",
        ),
        pytest.param([], id="fail-not-an-object"),
    ],
)
def test_fail_a_broken_snapshot_adds_nothing(snapshot: object) -> None:
    metrics = busy_metrics(1)
    before = metrics.snapshot()
    with pytest.raises(ValueError, match="not a metrics snapshot"):
        metrics.add(snapshot)  # type: ignore[arg-type]
    assert metrics.snapshot() == before


def test_ok_reload_applies_label_settings_and_proxy_entitlement(tmp_path: Path) -> None:
    running = config(tmp_path)
    meters = running.label("meters")
    changed = replace(
        running,
        labels=(
            running.label("default"),
            replace(
                meters,
                parameters=IssuingParameters(key_algorithm=KeySpec.EC_P256),
                cmp_mac_protection=True,  # a label's CMP shared-secret policy, too
            ),
        ),
        proxy=ProxyConfig(trusted=(ipaddress.ip_network("10.1.0.0/24"),)),
    )
    reload = plan_reload(running, changed)
    assert reload.config == changed
    assert reload.applied == (
        "[ca.meters]",
        "[proxy] trusted, allow_wide_range, header, fingerprints",
    )
    assert reload.needs_restart == ()


def test_ok_reload_keeps_what_needs_a_restart_and_names_it(tmp_path: Path) -> None:
    running = config(tmp_path)
    meters = running.label("meters")
    found = replace(
        running,
        labels=(running.label("default"), replace(meters, chain=Path("ca/other.pem"))),
        limits=Limits(max_body=1000),
        ca_system="elsewhere.example:7443",
        proxy=replace(running.proxy, socket_group="nginx"),
    )
    reload = plan_reload(running, found)
    assert reload.config == running  # nothing of it applied
    assert reload.applied == ()
    assert reload.needs_restart == (
        "[ca.meters] chain",
        "[proxy] socket_group",
        "[node] ca_system",
        "[limits]",
    )


def test_fail_a_node_toml_that_does_not_load_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running = config(tmp_path)
    running.save()
    (tmp_path / "node.toml").write_text("[node\nbroken")
    with caplog.at_level(logging.ERROR, "ztpki.node.reload"):
        assert read_reload(running, who="worker 0") is None
    assert "node.toml not reloaded, the node runs on as before" in caplog.text


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_fail_a_worker_count_below_one_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    status = main(["node", "serve", "--dir", str(tmp_path), "--workers", value])
    assert status == 2
    assert "--workers" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing bound, nothing written
