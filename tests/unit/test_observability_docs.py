"""docs/observability.md and the Grafana dashboard name only metrics the services expose, and
every metric a service exposes is documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ztpki.casystem.metrics import CAGauges, CASystemMetrics, CRLState
from ztpki.node.metrics import Gauges, NodeMetrics

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "docs" / "observability.md").read_text()
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "ztpki.json").read_text())
SUFFIXES = ("_bucket", "_sum", "_count")


def _node_exposed() -> set[str]:
    metrics = NodeMetrics(database=lambda: ("sqlite", {"round_trips": 1, "commits_write": 1}))
    gauges = Gauges(devices={"listed": 1}, revocations={"pending": 0}, in_flight=0, workers=1)
    text = metrics.exposition(gauges)
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def _ca_exposed() -> set[str]:
    metrics = CASystemMetrics(database=lambda: ("sqlite", {"round_trips": 1, "commits_write": 1}))
    gauges = CAGauges(crls={"a": CRLState(1, 1.0, 2.0)}, connections=0)
    text = metrics.exposition(gauges)
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def _documented() -> set[str]:
    return set(re.findall(r"^\| `(ztpki_[a-z_]+)` \|", DOCS, re.M))


def _base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_every_node_metric_is_documented() -> None:
    exposed = _node_exposed()
    assert "ztpki_node_requests_total" in exposed  # the probe itself works
    assert exposed - _documented() == set()


def test_every_ca_system_metric_is_documented() -> None:
    exposed = _ca_exposed()
    assert "ztpki_ca_certificates_issued_total" in exposed
    assert exposed - _documented() == set()


def test_every_documented_metric_is_exposed() -> None:
    assert _documented() - (_node_exposed() | _ca_exposed()) == set()


def test_the_dashboard_queries_only_documented_metrics() -> None:
    exprs = [target["expr"] for panel in DASHBOARD["panels"] for target in panel.get("targets", [])]
    assert exprs
    queried = {_base(n) for e in exprs for n in re.findall(r"\b(ztpki_[a-z_]+)\b", e)}
    assert queried and queried - _documented() == set()
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
