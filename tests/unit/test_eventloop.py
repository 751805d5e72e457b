"""The services' event loop: uvloop unless ZTPKI_EVENT_LOOP says asyncio; nothing else."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from ztpki.errors import ConfigurationError
from ztpki.eventloop import EVENT_LOOP_ENV, chosen_loop, run_service, running_loop_name


@pytest.mark.parametrize(
    ("setting", "expected"),
    [(None, "uvloop"), ("", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio"),
     (" AsyncIO ", "asyncio")],
)  # fmt: skip
def test_ok_chosen_loop(setting: str | None, expected: str) -> None:
    environ = {} if setting is None else {EVENT_LOOP_ENV: setting}
    assert chosen_loop(environ) == expected


@pytest.mark.parametrize("setting", ["trio", "uv-loop", "tokio"])
def test_fail_chosen_loop_names_the_setting_and_the_choices(setting: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        chosen_loop({EVENT_LOOP_ENV: setting})
    assert repr(setting) in refused.value.message
    assert "uvloop" in refused.value.message and "asyncio" in refused.value.message


@pytest.mark.parametrize(
    ("name", "loop_type"), [("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)]
)
def test_ok_run_service_runs_on_the_named_loop(name: str, loop_type: type) -> None:
    async def main() -> tuple[type, str]:
        return type(asyncio.get_running_loop()), running_loop_name()

    ran_on, reported = run_service(main(), name)  # type: ignore[arg-type]
    assert issubclass(ran_on, loop_type)
    assert name == "uvloop" or not issubclass(ran_on, uvloop.Loop)
    assert reported == name
