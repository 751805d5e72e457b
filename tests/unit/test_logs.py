"""The JSON log format and the per-request log fields."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import pytest

from ztpki import logs
from ztpki.logs import JSONFormatter, bind, configure_logging, log_fields


def _format(message: str, *args: object, **extra: object) -> dict[str, str]:
    record = logging.LogRecord("ztpki.test", logging.INFO, __file__, 1, message, args, None)
    for name, value in extra.items():
        setattr(record, name, value)
    parsed: dict[str, str] = json.loads(JSONFormatter().format(record))
    return parsed


def test_a_line_has_time_level_logger_and_message() -> None:
    line = _format("issued serial=%s", "0a")
    assert line["message"] == "issued serial=0a"
    assert line["level"] == "info" and line["logger"] == "ztpki.test"
    assert line["time"].endswith("+00:00")
    assert set(line) == {"time", "level", "logger", "message"}


def test_bound_fields_reach_every_line_and_go_with_the_block() -> None:
    with log_fields(client="node"):
        bind(device_id="dev-1", request_id="r-1")
        inside = _format("x")
        with log_fields(device_id="dev-2"):
            nested = _format("x")
        after_nested = _format("x")
    outside = _format("x")
    assert inside == inside | {"client": "node", "device_id": "dev-1", "request_id": "r-1"}
    assert nested["device_id"] == "dev-2" and nested["client"] == "node"
    assert after_nested["device_id"] == "dev-1"
    assert "device_id" not in outside and "client" not in outside


def test_a_line_own_field_wins_and_unknown_extras_stay_out() -> None:
    with log_fields(serial="01"):
        line = _format("x", serial="02", password="hunter2")
    assert line["serial"] == "02"
    assert "password" not in line and "hunter2" not in json.dumps(line)


def test_unknown_fields_cannot_be_bound() -> None:
    with pytest.raises(ValueError, match="unknown log fields"), log_fields(secret="x"):
        pass


def test_none_binds_nothing() -> None:
    with log_fields(device_id=None):
        assert "device_id" not in _format("x")


def test_concurrent_requests_keep_their_own_fields() -> None:
    async def request(device: str, started: asyncio.Event, other: asyncio.Event) -> str:
        with log_fields(device_id=device):
            started.set()
            await other.wait()  # the other request binds its device meanwhile
            return _format("x")["device_id"]

    async def both() -> list[str]:
        a, b = asyncio.Event(), asyncio.Event()
        return list(await asyncio.gather(request("dev-a", a, b), request("dev-b", b, a)))

    assert asyncio.run(both()) == ["dev-a", "dev-b"]


def test_an_exception_is_one_field_of_one_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = JSONFormatter().format(record)
    assert "\n" not in text
    assert "RuntimeError: boom" in json.loads(text)["exception"]


def test_configuring_leaves_a_foreign_root_handler_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    monkeypatch.setattr(root, "handlers", [foreign])
    monkeypatch.setattr(logs, "_installed", None)
    configure_logging("info", "json")
    assert root.handlers == [foreign]


def test_configuring_twice_replaces_its_own_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(logs, "_installed", None)
    monkeypatch.setattr(root, "level", root.level)
    configure_logging("info", "text")
    configure_logging("debug", "json")
    (handler,) = root.handlers
    assert isinstance(handler.formatter, JSONFormatter) and root.level == logging.DEBUG
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")
