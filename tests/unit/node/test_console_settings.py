"""The [console] table of node.toml: written only when set, read back as written, and bad
values refused with the setting's name."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from ztpki.errors import ConfigurationError
from ztpki.node.config import NodeConfig
from ztpki.node.console import ConsoleConfig


def config(tmp_path: Path, console: ConsoleConfig | None = None) -> NodeConfig:
    """A node.toml's content with nothing but the required settings (and ``console``)."""
    return NodeConfig(
        directory=tmp_path,
        ca_system="127.0.0.1:1",
        ca_client=Path("c"),
        server_cert=Path("s"),
        server_key=Path("k"),
        manufacturers=(),
        labels=(),
        console=console or ConsoleConfig(),
    )


def test_ok_the_console_table_round_trips_and_is_absent_by_default(tmp_path: Path) -> None:
    config(tmp_path, ConsoleConfig()).save()
    assert "console" not in tomllib.loads((tmp_path / "node.toml").read_text())
    wanted = ConsoleConfig(
        operator_ca=Path("ops.pem"),
        session_minutes=15,
        idle_minutes=5,
        login_attempts=3,
        ca_http=("http://ca1.example:8080", "https://crl.example/mirror"),
    )
    config(tmp_path, wanted).save()
    assert NodeConfig.load(tmp_path, migrating=True).console == wanted


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"session_minutes": 0}, "session_minutes"),
        ({"login_attempts": 0}, "login_attempts"),
        ({"login_window_seconds": 0.5}, "login_window_seconds"),
        ({"idle_minutes": 0}, "idle_minutes"),
        ({"ca_http": ("ftp://ca.example/",)}, "ca_http"),
        ({"ca_http": ("ca.example:8080",)}, "ca_http"),
        ({"ca_http": ("http://user:secret@ca.example/",)}, "ca_http: put no credentials"),
    ],
)
def test_fail_a_console_setting_out_of_range_is_refused(
    values: dict[str, object], name: str
) -> None:
    with pytest.raises(ConfigurationError, match=name):
        ConsoleConfig(**values)  # type: ignore[arg-type]
