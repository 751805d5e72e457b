"""`ztpki node add-operator` and `ztpki node operators [--remove NAME]`: who may log in to the
web console (`node serve --console-listen`), with which role."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from ztpki.cli.common import console
from ztpki.cli.node import node
from ztpki.cli.node_options import dir_option
from ztpki.errors import ConfigurationError

PASSWORD_ENV = "ZTPKI_OPERATOR_PASSWORD"  # noqa: S105 (a variable name)


def _password(password_file: Path | None) -> str:
    if password_file is not None:
        try:
            return password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            message = f"cannot read --password-file {password_file}: {exc}"
            raise ConfigurationError(message) from None
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    if not sys.stdin.isatty():
        raise ConfigurationError(
            f"no password: give --password-file FILE, set {PASSWORD_ENV}, or run this in a "
            "terminal to be asked"
        )
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@node.command("add-operator")
@dir_option
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["viewer", "operator"]),
    required=True,
    help="viewer: reads every page; operator: also blocks, unblocks, retires, imports.",
)
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Read the password from this file (else ${PASSWORD_ENV}, else a prompt).",
)
@click.option(
    "--certificate-only",
    is_flag=True,
    help="No password: this operator logs in with a client certificate of [console] "
    "operator_ca whose common name is NAME.",
)
@click.option("--replace", is_flag=True, help="Set a new role and password for NAME.")
def add_operator_command(
    directory: Path,
    name: str,
    role: str,
    password_file: Path | None,
    certificate_only: bool,
    replace: bool,
) -> None:
    """Let NAME log in to the web console (argon2-hashed password, kept in the register)."""
    from ztpki.node.console.passwords import CERTIFICATE_ONLY, check_operator_name, hash_password
    from ztpki.node.operations import open_register
    from ztpki.store.sqlite_console import Role

    check_operator_name(name)
    if certificate_only and password_file is not None:
        raise ConfigurationError("--certificate-only takes no --password-file")
    hashed = CERTIFICATE_ONLY if certificate_only else hash_password(_password(password_file))
    with open_register(directory) as store:
        store.add_operator(
            name, role=Role(role), password_hash=hashed, now=datetime.now(UTC), replace=replace
        )
    how = "a client certificate" if certificate_only else "a password"
    console.print(f"operator {name} ({role}) may log in to the web console with {how}")


@node.command("operators")
@dir_option
@click.option(
    "--remove",
    "remove",
    metavar="NAME",
    help="Remove this operator: they can no longer log in, and their open console sessions "
    "end at once.",
)
def operators_command(directory: Path, remove: str | None) -> None:
    """The web console's operators and their roles (or remove one with --remove NAME)."""
    from ztpki.node.operations import open_register

    with open_register(directory) as store:
        if remove is not None:
            if not store.remove_operator(remove):
                raise ConfigurationError(
                    f"no operator named {remove[:64]!r}: `ztpki node operators` lists them"
                )
            console.print(f"operator {remove} removed; their console sessions are ended")
            return
        for operator in store.operators():
            console.print(f"{operator.name}\t{operator.role.value}", markup=False)
