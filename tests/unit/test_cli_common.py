"""The error display every command group shares."""

from __future__ import annotations

import click
import pytest

from ztpki.cli.common import EXIT_ERROR, run_command
from ztpki.errors import ConfigurationError


def test_fail_error_text_with_brackets_is_printed_as_it_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    @click.group()
    def group() -> None:
        pass

    @group.command()
    def fail() -> None:
        raise ConfigurationError("check the node address (https://HOST:PORT[/label]) [bold]x[/]")

    assert run_command(group, ["fail"]) == EXIT_ERROR
    err = " ".join(capsys.readouterr().err.split())
    assert "error: check the node address (https://HOST:PORT[/label]) [bold]x[/]" in err
