"""`ztpki ca add-client | set-client | list-clients | remove-client | refusals`: the
CA-clients of a CA system and what each may ask for (its entitlement).

A CA-client may use only the CAs named with --ca; --device-ids narrows the device ids it may
name (default: any), --dns and --ip the subjectAltNames it may ask a server-profile CA for
(default: none). Pattern rules: ztpki.casystem.entitlement.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.table import Table

from ztpki.casystem.directory import CASystemDirectory
from ztpki.casystem.entitlement import ChangeMode, build_entitlement
from ztpki.casystem.operations import add_client, open_store, set_client
from ztpki.cli.ca import CA_ENV, ca, ca_passphrase, dir_option
from ztpki.cli.common import (
    console,
    passphrase_options,
    plain,
    print_json,
    refuse_existing_output,
    refuse_insecure_with_passphrase,
)
from ztpki.cli.pkcs11_options import client_key_options, client_token_key, token_options
from ztpki.errors import ConfigurationError
from ztpki.secretfiles import resolve_passphrase
from ztpki.store.records import ClientEntitlement, ClientRecord

if TYPE_CHECKING:
    from ztpki.tokens import TokenKey

CLIENT_ENV = "ZTPKI_CLIENT_PASSPHRASE"
F = TypeVar("F", bound=Callable[..., Any])
# Option name -> ClientEntitlement field, for set-client's "which lists were given".
_KINDS = {"cas": "cas", "device-ids": "device_ids", "dns": "dns_names", "ip": "ip_ranges"}


def entitlement_options(command: F) -> F:
    options = (
        click.option(
            "--ca",
            "cas",
            multiple=True,
            metavar="NAME",
            help="A CA this client may use (repeat for several). No CA unless named.",
        ),
        click.option(
            "--device-ids",
            multiple=True,
            metavar="PATTERN",
            help="Device ids it may name, * and ? as wildcards (e.g. 'ACME-*'). "
            "add-client default: any.",
        ),
        click.option(
            "--dns",
            multiple=True,
            metavar="PATTERN",
            help="DNS name it may ask a server-profile CA for; '*.example.com' stands for "
            "one label in front. add-client default: none.",
        ),
        click.option(
            "--ip",
            multiple=True,
            metavar="CIDR",
            help="IP address or range it may ask a server-profile CA for. "
            "add-client default: none.",
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


def _entitlement(
    cas: tuple[str, ...], device_ids: tuple[str, ...], dns: tuple[str, ...], ip: tuple[str, ...]
) -> ClientEntitlement:
    try:
        return build_entitlement(cas=cas, device_ids=device_ids, dns_names=dns, ip_ranges=ip)
    except ConfigurationError as exc:
        raise click.BadParameter(exc.message) from None


def describe(entitlement: ClientEntitlement | None) -> dict[str, list[str]] | None:
    if entitlement is None:
        return None
    return {
        "cas": list(entitlement.cas),
        "device_ids": list(entitlement.device_ids),
        "dns": list(entitlement.dns_names),
        "ip": list(entitlement.ip_ranges),
    }


def _cell(values: tuple[str, ...]) -> str:
    return ", ".join(values) or "-"


@ca.command("add-client")
@dir_option
@click.option("--name", required=True, help="Name of the CA-client (e.g. line-1, customer-node).")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Where to write the credential (a new or empty directory).",
)
@click.option(
    "--force", is_flag=True, help="Overwrite whatever --out holds already (another credential)."
)
@entitlement_options
@click.option(
    "--client-passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Passphrase for the client key (default: ${CLIENT_ENV}).",
)
@click.option(
    "--insecure-client-key", is_flag=True, help="Write the client key unencrypted (demos only)."
)
@passphrase_options(CA_ENV, "the CA private key")
@client_key_options
def add_client_command(
    directory: Path,
    name: str,
    out: Path,
    force: bool,
    cas: tuple[str, ...],
    device_ids: tuple[str, ...],
    dns: tuple[str, ...],
    ip: tuple[str, ...],
    client_passphrase_file: Path | None,
    insecure_client_key: bool,
    passphrase_file: Path | None,
    insecure_no_passphrase: bool,
    pkcs11_uri: str | None,
    pkcs11_existing: bool,
    pkcs11_module: str | None,
    pkcs11_pin_file: Path | None,
) -> None:
    """Issue and register the TLS credential a CA-client connects with, and what it may ask
    for: the CAs (--ca, none unless named), device ids, and server names. With --pkcs11 the
    client's key is made (or found) in a PKCS#11 token and never leaves it."""
    if pkcs11_uri is not None and (insecure_client_key or client_passphrase_file):
        raise click.UsageError(
            "a key in a token (--pkcs11) has no passphrase: leave out --client-passphrase-file "
            "and --insecure-client-key"
        )
    refuse_insecure_with_passphrase(
        insecure_client_key,
        client_passphrase_file,
        CLIENT_ENV,
        insecure_option="--insecure-client-key",
        file_option="--client-passphrase-file",
    )
    entitlement = _entitlement(cas, device_ids, dns, ip)
    if not entitlement.cas:
        raise click.UsageError(
            "name the CAs this client may use with --ca NAME (repeatable); a CA-client may "
            "use no CA unless named"
        )
    # Before anything is issued or registered: a refused --out leaves the store unchanged.
    refuse_existing_output(out, force=force)
    secret = ca_passphrase(directory, passphrase_file, insecure_no_passphrase)
    make_key = None
    client_secret = None
    if pkcs11_uri is not None:
        options = token_options(pkcs11_module, pkcs11_pin_file)
        uri = pkcs11_uri

        def make_key() -> TokenKey:
            return client_token_key(uri, existing=pkcs11_existing, options=options)

    else:
        if pkcs11_existing:
            raise click.UsageError("--pkcs11-existing needs --pkcs11 URI")
        client_secret = resolve_passphrase(
            passphrase_file=client_passphrase_file,
            env_var=CLIENT_ENV,
            insecure_no_passphrase=insecure_client_key,
            what="the CA-client key",
        )
    record = add_client(
        CASystemDirectory(directory),
        name,
        out=out,
        passphrase=secret,
        client_passphrase=client_secret,
        entitlement=entitlement,
        make_key=make_key,
    )
    where = f"; its key in the token {pkcs11_uri}" if pkcs11_uri else ""
    console.print(
        f"registered CA-client [bold]{name}[/] (serial {record.serial}) for CA(s) "
        f"{_cell(entitlement.cas)}; credential in {out}{where}",
        soft_wrap=True,
    )


@ca.command("set-client")
@dir_option
@click.option("--name", required=True, help="The CA-client whose entitlement to change.")
@entitlement_options
@click.option(
    "--add", "mode", flag_value=ChangeMode.ADD.value, help="Add the values given to the lists."
)
@click.option(
    "--remove",
    "mode",
    flag_value=ChangeMode.REMOVE.value,
    help="Remove the values given from the lists.",
)
@click.option(
    "--clear",
    multiple=True,
    type=click.Choice(list(_KINDS)),
    help="Empty this list (cas: no CA; device-ids: no device id).",
)
def set_client_command(
    directory: Path,
    name: str,
    cas: tuple[str, ...],
    device_ids: tuple[str, ...],
    dns: tuple[str, ...],
    ip: tuple[str, ...],
    mode: str | None,
    clear: tuple[str, ...],
) -> None:
    """Change what a CA-client may ask for. Each list given (--ca, --device-ids, --dns,
    --ip) replaces that list, or with --add / --remove is added to or taken from it; lists
    not given stay. A running `ca serve` applies the change within 0.25 s."""
    values = {"cas": cas, "device-ids": device_ids, "dns": dns, "ip": ip}
    given = {kind for kind, value in values.items() if value}
    if not given and not clear:
        raise click.UsageError("give --ca, --device-ids, --dns, --ip or --clear to change")
    if given & set(clear):
        raise click.UsageError("--clear and a value for the same list contradict each other")
    if clear and mode is not None:
        raise click.UsageError("--clear replaces a list: it does not go with --add or --remove")
    change = ClientEntitlement(
        cas=cas,
        device_ids=_entitlement((), device_ids, (), ()).device_ids if device_ids else (),
        dns_names=_entitlement((), (), dns, ()).dns_names,
        ip_ranges=_entitlement((), (), (), ip).ip_ranges,
    )
    record = set_client(
        CASystemDirectory(directory),
        name,
        change,
        given=frozenset(_KINDS[k] for k in given | set(clear)),
        mode=ChangeMode(mode or ChangeMode.REPLACE.value),
    )
    _print_clients([record])


@ca.command("remove-client")
@dir_option
@click.option("--name", required=True)
def remove_client_command(directory: Path, name: str) -> None:
    """Revoke a CA-client: refused from now on (open connections within 0.25 s)."""
    with open_store(CASystemDirectory(directory)) as store:
        removed = store.remove_client(name, now=datetime.now(UTC))
    if not removed:
        raise ConfigurationError(f"no registered CA-client named {name!r}")
    console.print(f"removed CA-client [bold]{name}[/]")


def _print_clients(clients: list[ClientRecord]) -> None:
    table = Table("name", "status", "CAs", "device ids", "DNS", "IP", "serial", "not after")
    for c in clients:
        if c.entitlement is None:
            rights = ["(none: run `ztpki ca set-client`)", "", "", ""]
        else:
            e = c.entitlement
            rights = [_cell(v) for v in (e.cas, e.device_ids, e.dns_names, e.ip_ranges)]
        cells = [c.name, c.status, *rights, c.serial, c.not_after.isoformat(timespec="seconds")]
        table.add_row(*(plain(cell) for cell in cells))
    console.print(table, markup=False)


@ca.command("list-clients")
@dir_option
@click.option("--json", "as_json", is_flag=True)
def list_clients_command(directory: Path, as_json: bool) -> None:
    """Registered CA-clients and what each may ask for (removed ones too, as history)."""
    with open_store(CASystemDirectory(directory)) as store:
        clients = store.clients()
    if as_json:
        print_json([{**c.__dict__, "entitlement": describe(c.entitlement)} for c in clients])
        return
    _print_clients(clients)


# The name before list-clients; kept (hidden) so that scripts keep working.
ca.add_command(
    click.Command(
        "clients",
        callback=list_clients_command.callback,
        params=list_clients_command.params,
        help=list_clients_command.help,
        hidden=True,
    )
)


@ca.command("refusals")
@dir_option
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def refusals_command(directory: Path, limit: int, as_json: bool) -> None:
    """Requests the CA system refused as not authorized (newest last)."""
    with open_store(CASystemDirectory(directory)) as store:
        refusals = store.refusals(limit=limit)
    if as_json:
        print_json([r.__dict__ for r in refusals])
        return
    table = Table("at", "client", "request", "device", "CA", "reason")
    for r in refusals:
        # The request's words are never read as markup nor reach the terminal raw.
        cells = (
            r.at.isoformat(timespec="seconds"),
            r.client,
            r.request_id,
            r.device_id or "",
            r.ca_name or "",
            r.reason,
        )
        table.add_row(*(plain(cell) for cell in cells))
    console.print(table, markup=False)
