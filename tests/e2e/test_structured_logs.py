"""`--log-format json`: every line a service logs is one JSON object, and the lines about a
request carry its device, serial and request id as fields of their own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_fixtures import ENV, NodeWorld, build_world
from tests.support.services import running

from ztpki.pki.pem import serial_hex
from ztpki.protocol.est import decode_certs_only


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZTPKI_LOG_FORMAT", "json")
        w = build_world(tmp_path_factory.mktemp("json-logs"))
    try:
        yield w
    finally:
        w.stop()


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines, f"{path} is empty"
    return [json.loads(line) for line in lines]  # every line, or the test fails here


def test_an_issuance_is_followed_by_device_serial_and_request(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    answer = world.post_csr(device, "simpleenroll", device.csr())
    assert answer.status == 200
    serial = serial_hex(decode_certs_only(answer.body)[0])

    ca_lines = json_lines(world.customer.log_path)
    (issued,) = [
        line
        for line in ca_lines
        if line["message"].startswith("issued") and line.get("device_id") == device.device_id
    ]
    assert issued["serial"] == serial
    assert issued["ca"] == "operational" and issued["client"] == "node"
    assert issued["request_id"] and issued["request_id"] in issued["message"]
    assert issued["level"] == "info" and issued["time"].endswith("+00:00")

    node_lines = json_lines(world.node.log_path)
    about_device = [line for line in node_lines if line.get("device_id") == device.device_id]
    assert any(f"serial={serial}" in line["message"] for line in about_device)
    assert all(line.get("label") == "default" for line in about_device)
    # A line about another request does not inherit this device (kept-alive connections).
    assert all(
        device.device_id in line["message"]
        for line in node_lines
        if line.get("device_id") == device.device_id and "issued" in line["message"]
    )


def test_a_refusal_names_the_device_it_refused(world: NodeWorld) -> None:
    (device,) = world.make_devices(1, listed=False)
    assert world.post_csr(device, "simpleenroll", device.csr()).status == 403
    refused = [
        line
        for line in json_lines(world.node.log_path)
        if line.get("device_id") == device.device_id
    ]
    assert refused and all(line["level"] in ("info", "warning") for line in refused)


def test_the_service_option_switches_one_service_to_json(world: NodeWorld, tmp_path: Path) -> None:
    log = tmp_path / "second-instance.log"
    args = ["ca", "serve", "--dir", str(world.customer_dir), "--log-format", "json"]
    with running([*args, "--listen", "127.0.0.1:0"], log_path=log, env=ENV):
        pass
    lines = json_lines(log)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
