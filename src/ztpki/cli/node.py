"""`ztpki node`: the customer node (patent Fig. 2, 10) - set-up and the EST server. The
register's commands are in node_register.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape

from ztpki.cli.common import (
    console,
    passphrase,
    passphrase_options,
    print_json,
    refuse_existing_output,
)
from ztpki.cli.database import database_option
from ztpki.cli.node_ca_system import set_ca_system_command
from ztpki.cli.node_options import (
    CLIENT_KEY_OPTIONS,
    NODE_ENV,
    NODE_KEY,
    allow_no_eku_option,
    client_passphrase,
    client_passphrase_option,
    dir_option,
    issuing_parameters,
    manufacturer_config,
    manufacturer_options,
    policy_options,
)
from ztpki.cli.node_proxy import (
    proxy_options,
    proxy_settings,
    proxy_usage_errors,
    set_proxy_command,
)
from ztpki.node.config import DEFAULT_LABEL, NodeConfig

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


@click.group()
def node() -> None:
    """The customer node: EST enrollment of listed devices through the customer's own CA."""


@node.command("init")
@dir_option
@click.option(
    "--ca",
    "ca_system",
    required=True,
    multiple=True,
    help="HOST:PORT of the customer CA system; repeat for several instances of it sharing one "
    "store (tried in this order, failing over to the next).",
)
@click.option(
    "--client-cred",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="CA-client credential from `ztpki ca add-client` on the customer CA system.",
)
@manufacturer_options
@click.option(
    "--server-cert",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The node's TLS server certificate (PEM, followed by its intermediates).",
)
@click.option(
    "--server-key",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Its private key (PKCS#8 PEM; stored encrypted with the node passphrase).",
)
@click.option(
    "--customer-chain",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="PEM chain of the issuing customer CA up to its root (`ztpki ca export`).",
)
@click.option(
    "--label",
    default=DEFAULT_LABEL,
    show_default=True,
    help="EST label of that CA; it is also served at /.well-known/est/.",
)
@click.option(
    "--ca-name", help="Name of that CA in the customer CA system (default: its default CA)."
)
@click.option(
    "--crl",
    "crls",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="CRL of a factory CA to check temporary certificates against; repeatable.",
)
@proxy_options
@policy_options
@allow_no_eku_option
@database_option("register")
@passphrase_options(NODE_ENV, NODE_KEY)
def init_command(
    directory: Path,
    ca_system: tuple[str, ...],
    client_cred: Path,
    server_cert: Path,
    server_key: Path,
    customer_chain: Path,
    label: str,
    ca_name: str | None,
    crls: tuple[Path, ...],
    allow_no_eku: bool,
    database: str | None,
    passphrase_file: Path | None,
    insecure_no_passphrase: bool,
    **policy: Any,
) -> None:
    """Create a node directory, with its first manufacturer (more: `node add-manufacturer`)."""
    from ztpki.node.proxy_setup import prepare_proxy
    from ztpki.node.setup import init_node

    secret = passphrase(passphrase_file, insecure_no_passphrase, NODE_ENV, NODE_KEY)
    maker = manufacturer_config(policy)
    proxy = proxy_settings(policy)
    with proxy_usage_errors():
        prepare_proxy(proxy)  # a bad proxy value is a usage error, before anything is written
    result = init_node(
        directory,
        ca_system=ca_system,
        client_credential=client_cred,
        manufacturer=maker,
        server_cert=server_cert,
        server_key=server_key,
        node_passphrase=secret,
        customer_chain=customer_chain,
        label=label,
        ca_name=ca_name,
        parameters=issuing_parameters(policy),
        crls=crls,
        proxy=proxy,
        allow_no_eku=allow_no_eku,
        database=database,
    )
    for warning in result.warnings:
        # The warning names certificate subjects, which are not markup.
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    console.print(
        f"created node in {directory} (label {label}, CA system {', '.join(ca_system)}, "
        f"manufacturer "
        f"{maker.name} for device ids {maker.device_ids})",
        markup=False,
    )


@node.command("migrate")
@dir_option
def migrate_command(directory: Path) -> None:
    """Upgrade the register's schema to this ztpki's (stop every `node serve` using it, and
    back it up, first). Services refuse to start on an older schema until this has run."""
    from ztpki.cli.database import migrate_store
    from ztpki.store import sqlite_register
    from ztpki.store.sqlite import open_node_store

    location = NodeConfig.load(directory, migrating=True).database
    line = migrate_store(
        location,
        sqlite_register.SCHEMA_COMPONENT,
        sqlite_register.SCHEMA_VERSION,
        lambda: open_node_store(location, migrate=True),
    )
    console.print(line, markup=False)


@node.command("add-ca")
@dir_option
@click.option("--label", required=True, help="EST label: /.well-known/est/<label>/...")
@click.option("--customer-chain", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--ca-name", help="Name of the CA in the customer CA system.")
@policy_options
@allow_no_eku_option
def add_ca_command(
    directory: Path,
    label: str,
    customer_chain: Path,
    ca_name: str | None,
    allow_no_eku: bool,
    **policy: Any,
) -> None:
    """Serve another CA of the customer CA system under its own EST label."""
    from ztpki.node.setup import add_label

    add_label(
        directory,
        label=label,
        customer_chain=customer_chain,
        ca_name=ca_name,
        parameters=issuing_parameters(policy),
        allow_no_eku=allow_no_eku,
    )
    console.print(f"added EST label [bold]{label}[/]")


@node.command("policy")
@dir_option
@click.option("--json", "as_json", is_flag=True)
def policy_command(directory: Path, as_json: bool) -> None:
    """Show each EST label's CA and the issuing parameters sent to the CA system, the
    manufacturers whose devices and manifests the node accepts, and the proxies it believes."""
    from ztpki.cli.node_manufacturers import manufacturer_rows, print_manufacturers
    from ztpki.node.material import load_labels
    from ztpki.node.operations import describe_sender
    from ztpki.node.proxy_setup import describe_proxy
    from ztpki.store import sqlite_register
    from ztpki.versions import deployment_versions

    config = NodeConfig.load(directory)
    labels = load_labels(config)
    makers = manufacturer_rows(config)
    rows = []
    for name, loaded in labels.items():
        params = loaded.config.parameters.to_toml()
        rows.append(
            {
                "label": name,
                "default": name == config.default_label,
                "ca_name": loaded.config.ca_name,
                "ca_subject": loaded.certificate.subject.rfc4514_string(),
                "chain": str(config.path(loaded.config.chain)),
                "allow_no_eku": loaded.config.allow_no_eku,
                "cmp_implicit_confirm": loaded.config.cmp_implicit_confirm,
                "cmp_mac_protection": loaded.config.cmp_mac_protection,
                **params,
            }
        )
    versions = deployment_versions(
        config.database,
        component=sqlite_register.SCHEMA_COMPONENT,
        schema=sqlite_register.SCHEMA_VERSION,
    )
    if as_json:
        print_json([{**row, "versions": versions.to_json()} for row in rows])
        return
    print_manufacturers(makers)
    for row in rows:
        console.print(f"[bold]# {row['label']}[/]{'  (default)' if row['default'] else ''}")
        for key, value in row.items():
            if key not in ("label", "default"):
                console.print(
                    f"  {key} = {value if value is not None else '(CA system default)'}",
                    markup=False,
                )
    console.print(
        f"CA system: {', '.join(config.ca_systems)}; limits: {config.limits.to_toml()}",
        markup=False,
    )
    console.print(f"revocation: {config.revocation.to_toml()}", markup=False, soft_wrap=True)
    console.print(versions.describe(), markup=False, soft_wrap=True)
    if versions.database_schema == versions.schema:  # an old register is not opened
        sender = describe_sender(directory, now=datetime.now(UTC))
        console.print(sender, markup=False, soft_wrap=True)
    for line in describe_proxy(config):
        console.print(line, markup=False, soft_wrap=True)


node.add_command(set_proxy_command)
node.add_command(set_ca_system_command)


def default_server_name(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> str:
    """The node's own name, so that two customers of one manufacturer do not ask for the same
    one (the CA system refuses a name another CA-client holds)."""
    return next(iter([*dns_names, *ip_addresses]), "customer-node")


@node.command("request-server-cert")
@click.option(
    "--ca", "ca_address", required=True, help="HOST:PORT of the MANUFACTURER's CA system."
)
@click.option(
    "--client-cred",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="CA-client credential the manufacturer registered for this customer.",
)
@click.option("--ca-name", help="The CA with the server profile in that CA system.")
@click.option(
    "--name",
    help="Subject CN of the node, and the name a later --reissue replaces (default: the first "
    "--dns, else the first --ip, else customer-node): each customer's node its own.",
)
@click.option(
    "--dns", "dns_names", multiple=True, help="DNS name devices use for the node; repeatable."
)
@click.option(
    "--ip", "ip_addresses", multiple=True, help="IP address devices use for the node; repeatable."
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory for cert.pem, key.pem and ca.pem (a new or empty one).",
)
@click.option("--force", is_flag=True, help="Overwrite the files --out holds already.")
@click.option(
    "--reissue",
    is_flag=True,
    help="Replace the live server certificate the CA system issued for --name before "
    "(it is superseded).",
)
@client_passphrase_option
@passphrase_options(NODE_ENV, NODE_KEY)
def request_server_cert_command(
    ca_address: str,
    client_cred: Path,
    ca_name: str | None,
    name: str | None,
    dns_names: tuple[str, ...],
    ip_addresses: tuple[str, ...],
    out: Path,
    force: bool,
    reissue: bool,
    client_passphrase_file: Path | None,
    passphrase_file: Path | None,
    insecure_no_passphrase: bool,
) -> None:
    """Enroll the node's TLS server certificate from the manufacturer's CA system."""
    from ztpki.credentials import Credential
    from ztpki.node.setup import request_server_cert

    refuse_existing_output(out, force=force)
    name = name or default_server_name(dns_names, ip_addresses)
    secret = passphrase(passphrase_file, insecure_no_passphrase, NODE_ENV, NODE_KEY)
    credential = Credential.load(
        client_cred,
        passphrase=client_passphrase(client_passphrase_file),
        passphrase_source=CLIENT_KEY_OPTIONS,
    )
    result = asyncio.run(
        request_server_cert(
            ca_address=ca_address,
            credential=credential,
            ca_name=ca_name,
            name=name,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            out=out,
            node_passphrase=secret,
            reissue=reissue,
        )
    )
    console.print(f"server certificate for {name} in {out}/cert.pem, key in {out}/key.pem")
    console.print(f"subject: {result.certificate.subject.rfc4514_string()}", markup=False)
    console.print(
        f"node CA SHA-256 fingerprint (for pinning, e.g. device --node-ca-fingerprint): "
        f"sha256:{result.anchor_fingerprint}",
        markup=False,
    )
