"""`ztpki ca`: create and run a CA system (patent Fig. 4). Its CA-clients and what each may
ask for: ztpki.cli.ca_clients."""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.table import Column, Table

from ztpki.casystem.directory import CASystemDirectory, init_ca
from ztpki.casystem.ocsp_responder import SignerPolicy
from ztpki.casystem.operations import build_publisher, build_service, open_store, use_database
from ztpki.casystem.policy import IssuingPolicy
from ztpki.cli.common import (
    console,
    log_format_option,
    passphrase,
    passphrase_options,
    plain,
    print_json,
    refuse_existing_output,
)
from ztpki.cli.database import database_option
from ztpki.cli.pkcs11_options import (
    token_access_options,
    token_key,
    token_key_options,
    token_options,
)
from ztpki.errors import ListenFailed
from ztpki.eventloop import chosen_loop, run_service, running_loop_name
from ztpki.pki.keys import KeySpec
from ztpki.pki.names import SubjectFields
from ztpki.pki.profiles import CertificateProfile
from ztpki.secretfiles import MIN_PASSPHRASE, resolve_passphrase
from ztpki.store import sqlite_ca
from ztpki.versions import deployment_versions

CA_ENV = "ZTPKI_CA_PASSPHRASE"
log = logging.getLogger(__name__)

dir_option = click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="The CA-system directory.",
)


def ca_passphrase(directory: Path, passphrase_file: Path | None, insecure: bool) -> bytes | None:
    """The CA system's passphrase. The length rule is for new keys: once the system holds
    keys, a short passphrase is one that does not open them (said as such), not a rule."""
    system = CASystemDirectory(directory)
    if not system.key_paths():
        return passphrase(passphrase_file, insecure, CA_ENV, "the CA private key")
    secret = passphrase(passphrase_file, insecure, CA_ENV, "the CA private key", minimum=0)
    if secret is not None and len(secret) < MIN_PASSPHRASE:
        system.check_passphrase(secret)  # wrong, unless a key was made before the rule
    return secret


@click.group()
def ca() -> None:
    """The CA system: several CAs, issuing over the XML enrollment protocol."""


# The algorithm of a new CA key (`ca init`, `ca rollover`).
key_option = click.option(
    "--key",
    "key_spec",
    type=click.Choice([k.value for k in KeySpec]),
    default="ec-p256",
    show_default=True,
    help="Algorithm of the CA's key.",
)


@ca.command("init")
@dir_option
@click.option("--name", required=True, help="Name of the new CA inside this CA system.")
@key_option
@click.option("--validity-days", type=int, default=3650, show_default=True)
@click.option(
    "--parent-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="CA system holding the parent CA.",
)
@click.option("--parent", "parent_name", help="Name of the parent CA (makes this CA subordinate).")
@click.option(
    "--parent-passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Passphrase of the parent CA's key (default: same as this CA's).",
)
@click.option(
    "--path-length",
    type=click.IntRange(min=0),
    help="How many CAs may follow below this subordinate CA (default 0: it issues "
    "end-entity certificates only).",
)
@click.option(
    "--profile",
    type=click.Choice([p.value for p in CertificateProfile]),
    default="device",
    show_default=True,
    help="Certificates this CA issues.",
)
@click.option("--common-name", help="Subject CN of the CA certificate (default: the name).")
@click.option("--org", help="Organization (O), in the CA subject and the policy default.")
@click.option("--org-unit", help="Organizational unit (OU) default for issued certificates.")
@click.option("--locality", help="Locality (L) default.")
@click.option("--country", help="Two-letter country (C) default.")
@click.option(
    "--default", "make_default", is_flag=True, help="Make it the default CA of the system."
)
@database_option("CA system's issuance records")
@passphrase_options(CA_ENV, "the CA private key")
@token_key_options
def init_command(
    directory: Path,
    name: str,
    key_spec: str,
    validity_days: int,
    parent_dir: Path | None,
    parent_name: str | None,
    parent_passphrase_file: Path | None,
    path_length: int | None,
    profile: str,
    common_name: str | None,
    org: str | None,
    org_unit: str | None,
    locality: str | None,
    country: str | None,
    make_default: bool,
    database: str | None,
    passphrase_file: Path | None,
    insecure_no_passphrase: bool,
    pkcs11_uri: str | None,
    pkcs11_existing: bool,
    rsa_pss: bool,
    pkcs11_module: str | None,
    pkcs11_pin_file: Path | None,
) -> None:
    """Create a CA (a root, or subordinate with --parent; --parent-dir if it is in another
    CA system). The first `ca init` of a directory chooses where the CA system keeps its
    records (--database); later ones may repeat the same URL or leave it out."""
    # Without --parent these would be ignored and a root made instead of the subordinate the
    # operator asked for.
    for given, option in (
        (parent_dir is not None, "--parent-dir"),
        (parent_passphrase_file is not None, "--parent-passphrase-file"),
        (path_length is not None, "--path-length"),
    ):
        if given and not parent_name:
            raise click.UsageError(
                f"{option} needs --parent NAME (the parent CA); without --parent, "
                "`ca init` creates a root CA"
            )
    secret = ca_passphrase(directory, passphrase_file, insecure_no_passphrase)
    tokens = token_options(pkcs11_module, pkcs11_pin_file)
    now = datetime.now(UTC)
    parent = None
    if parent_name:
        parent_secret = secret
        if parent_passphrase_file is not None:
            parent_secret = resolve_passphrase(
                passphrase_file=parent_passphrase_file,
                env_var=CA_ENV,
                what="the parent CA key",
                minimum=0,  # an existing key: it says whether the passphrase is right
            )
        parent = CASystemDirectory(parent_dir or directory).load_authority(
            parent_name, passphrase=parent_secret, tokens=tokens
        )
    fields = SubjectFields(
        organization=org, organizational_unit=org_unit, locality=locality, country=country
    )
    policy = IssuingPolicy(profile=CertificateProfile(profile), subject=fields)
    if database is not None:
        use_database(CASystemDirectory(directory), database)
    in_token = token_key(
        pkcs11_uri,
        existing=pkcs11_existing,
        rsa_pss=rsa_pss,
        key_spec=KeySpec(key_spec),
        options=tokens,
    )
    authority = init_ca(
        CASystemDirectory(directory),
        name,
        key_spec=KeySpec(key_spec),
        validity_days=validity_days,
        passphrase=secret,
        now=now,
        parent=parent,
        path_length=path_length,
        policy=policy,
        subject=SubjectFields(organization=org, country=country),
        common_name=common_name,
        make_default=make_default,
        token_key=in_token,
    )
    console.print(
        f"created CA [bold]{name}[/] in {directory}: "
        f"{authority.certificate.subject.rfc4514_string()}"
    )
    console.print(f"policy: {directory / 'cas' / name / 'policy.toml'}")
    if in_token is not None:
        console.print(f"key: in the token, {in_token.location}", markup=False, soft_wrap=True)


@ca.command("migrate")
@dir_option
def migrate_command(directory: Path) -> None:
    """Upgrade the issuance store's schema to this ztpki's (stop every `ca serve` using it,
    and back it up, first). Services refuse to start on an older schema until this has run."""
    from ztpki.cli.database import migrate_store

    system = CASystemDirectory(directory)
    line = migrate_store(
        system.store_location,
        sqlite_ca.SCHEMA_COMPONENT,
        sqlite_ca.SCHEMA_VERSION,
        lambda: open_store(system, migrate=True),
    )
    console.print(line, markup=False)


@ca.command("list")
@dir_option
@click.option("--json", "as_json", is_flag=True)
def list_command(directory: Path, as_json: bool) -> None:
    """The CAs of a CA system."""
    system = CASystemDirectory(directory)
    infos = [system.info(n) for n in system.ca_names()]
    versions = deployment_versions(
        system.store_location, component=sqlite_ca.SCHEMA_COMPONENT, schema=sqlite_ca.SCHEMA_VERSION
    )
    if as_json:
        print_json([{**info.__dict__, "versions": versions.to_json()} for info in infos])
        return
    table = Table(
        "name", "subject", "issuer", "key", "key location", "profile", "not after", "default"
    )
    for i in infos:
        table.add_row(
            plain(i.name),
            plain(i.subject),
            plain("(self: root)" if i.is_root else i.issuer),
            plain(i.key_algorithm),
            plain(i.key_location),
            plain(i.profile),
            plain(i.not_after.isoformat(timespec="seconds")),
            plain("yes" if i.is_default else ""),
        )
        for ended in i.previous_keys:  # a root's keys before `ca rollover`
            until = plain(ended.isoformat(timespec="seconds"))
            old = (plain(f"{i.name} (previous key)"), plain(i.subject), "(self: root)")
            table.add_row(*old, "", "retired", "", until, "")
    console.print(table)
    console.print(versions.describe(), markup=False, soft_wrap=True)


@ca.command("policy")
@dir_option
@click.option("--name", help="CA name (default: every CA).")
def policy_command(directory: Path, name: str | None) -> None:
    """Show the issuing policy of each CA."""
    system = CASystemDirectory(directory)
    for ca_name in [name] if name else system.ca_names():
        console.print(f"[bold]# {ca_name}[/]  ({directory / 'cas' / ca_name / 'policy.toml'})")
        console.print((directory / "cas" / ca_name / "policy.toml").read_text(), markup=False)


@ca.command("ocsp-nginx")
@dir_option
@click.option(
    "--ocsp-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The directory `ca serve --ocsp-dir` writes (absolute, as nginx reads it).",
)
@click.option(
    "--responder", required=True, help="HOST:PORT of `ca serve --http-listen`, for the rest."
)
@click.option("--listen", default="80", show_default=True, help="nginx's listen parameter.")
def ocsp_nginx_command(directory: Path, ocsp_dir: Path, responder: str, listen: str) -> None:
    """Print the nginx upstream and server blocks that serve the pre-signed OCSP files of
    every CA (RFC 5019 GET) and pass everything else to the responder."""
    from ztpki.casystem.ocsp_nginx import nginx_ocsp_server

    system = CASystemDirectory(directory)
    names = system.ca_names()
    # One max-age for all files: the shortest validity, so none outlives its nextUpdate.
    hours = min((system.policy(n).crl_next_update_hours for n in names), default=24)
    click.echo(
        nginx_ocsp_server(
            listen=listen,
            ocsp_dir=ocsp_dir.absolute(),
            ca_names=names,
            responder=responder,
            max_age_hours=hours,
        )
    )


@ca.command("issued")
@dir_option
@click.option("--ca", "ca_name", help="Only this CA.")
@click.option("--device", "device_id", help="Only this device.")
@click.option("--json", "as_json", is_flag=True)
def issued_command(
    directory: Path, ca_name: str | None, device_id: str | None, as_json: bool
) -> None:
    """Every certificate the CA system issued."""
    with open_store(CASystemDirectory(directory)) as store:
        records = store.issued(ca_name=ca_name, device_id=device_id)
    if as_json:
        print_json(
            [
                {
                    "serial": r.serial,
                    "subject": r.subject,
                    "ca": r.ca_name,
                    "device_id": r.device_id,
                    "not_after": r.not_after.isoformat(),
                    "status": r.status.value,
                    "request_id": r.request_id,
                    "fingerprint": r.fingerprint,
                    "issued_at": r.issued_at.isoformat(),
                }
                for r in records
            ]
        )
        return
    # The serial is what `ca revoke --serial` takes: it folds onto several lines, never cut.
    table = Table(
        Column("serial", overflow="fold"),
        "subject",
        "CA",
        Column("not after", overflow="fold"),
        "status",
        Column("request id", overflow="fold"),
    )
    for r in records:
        table.add_row(
            plain(r.serial),
            plain(r.subject),  # O, OU, L and e-mail as the CA-client asked for them
            plain(r.ca_name),
            plain(r.not_after.isoformat(timespec="seconds")),
            plain(r.status.value),
            plain(r.request_id),
        )
    console.print(table)
    console.print(f"{len(records)} certificate(s)")


@ca.command("serve")
@dir_option
@log_format_option
@click.option(
    "--listen",
    default="127.0.0.1:7443",
    show_default=True,
    help="HOST:PORT (port 0: any free port).",
)
@click.option(
    "--hostname",
    "hostnames",
    multiple=True,
    help="Extra DNS name or IP for the server certificate (it always names the --listen "
    "host and 127.0.0.1).",
)
@click.option(
    "--http-listen",
    help="Also serve CRLs (/crl/NAME.crl) and OCSP (/ocsp) over plain HTTP on HOST:PORT.",
)
@click.option(
    "--ocsp-signer",
    type=click.Choice([p.value for p in SignerPolicy]),
    help="Who signs OCSP answers: a delegated responder certificate per CA (the default: key "
    "in memory, renewed by the service) or the CA key itself. Needs --http-listen.",
)
@click.option(
    "--ocsp-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep DIR/NAME/ filled with pre-signed OCSP answers (SHA-1 CertID, no nonce), one "
    "per certificate of each CA, for a web server such as nginx to serve (README: OCSP and "
    "HTTP). Needs --http-listen.",
)
@click.option(
    "--key-workers",
    type=int,
    default=None,
    help="Processes for RSA key generation (default: CPUs).",
)
@passphrase_options(
    CA_ENV,
    "the CA private key",
    insecure_help="The CA keys are stored unencrypted (`ca init --insecure-no-passphrase`): "
    "read them without a passphrase. For demos only; never in production.",
)
@token_access_options
def serve_command(
    directory: Path,
    listen: str,
    hostnames: tuple[str, ...],
    http_listen: str | None,
    ocsp_signer: str | None,
    ocsp_dir: Path | None,
    key_workers: int | None,
    passphrase_file: Path | None,
    insecure_no_passphrase: bool,
    pkcs11_module: str | None,
    pkcs11_pin_file: Path | None,
) -> None:
    """Run the CA-system service. Prints `listening on HOST:PORT` when ready (after
    `http listening on HOST:PORT` on stderr with --http-listen)."""
    from ztpki.casystem.client import parse_address

    if ocsp_signer is not None and http_listen is None:
        raise click.UsageError("--ocsp-signer needs --http-listen HOST:PORT (the OCSP responder)")
    if ocsp_dir is not None and http_listen is None:
        raise click.UsageError("--ocsp-dir needs --http-listen HOST:PORT (the OCSP responder)")
    event_loop = chosen_loop()
    secret = ca_passphrase(directory, passphrase_file, insecure_no_passphrase)
    host, port = parse_address(listen, allow_any_port=True)
    http = parse_address(http_listen, allow_any_port=True) if http_listen else None
    service = build_service(
        CASystemDirectory(directory),
        passphrase=secret,
        hostnames=(host, *hostnames),
        key_pool_workers=key_workers,
        tokens=token_options(pkcs11_module, pkcs11_pin_file),
    )

    async def run() -> None:
        try:
            bound_host, bound_port = await service.start(host, port)
        except OSError as exc:
            await service.close()
            raise ListenFailed(host, port, exc) from None
        publisher = None
        if http is not None:
            publisher = build_publisher(
                CASystemDirectory(directory),
                service,
                signer=SignerPolicy(ocsp_signer or SignerPolicy.DELEGATED),
                ocsp_dir=ocsp_dir,
                passphrase=secret,
            )
            try:
                http_host, http_port = await publisher.start(*http)
            except BaseException:
                await service.close()
                raise
            # On stderr, before the readiness line: stdout carries only `listening on`.
            click.echo(f"http listening on {http_host}:{http_port}", err=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        cas, loop_name = ", ".join(service.system.cas), running_loop_name()
        log.info("CA system %s serving CAs %s on the %s event loop", directory, cas, loop_name)
        click.echo(f"listening on {bound_host}:{bound_port}", nl=True)
        await stop.wait()
        if publisher is not None:
            await publisher.close()
        await service.close()

    run_service(run(), event_loop)


@ca.command("export")
@dir_option
@click.option("--name", required=True, help="The CA whose chain to export.")
@click.option(
    "--out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="PEM file."
)
@click.option("--force", is_flag=True, help="Overwrite --out if it exists already.")
def export_command(directory: Path, name: str, out: Path, force: bool) -> None:
    """Write a CA's chain as PEM: the CA certificate first, then its parents up to the root,
    then, if that root rolled its key over (`ca rollover`), its new certificate and links.

    This is what a customer node takes as --customer-chain, and a factory CA's chain is the
    trust bundle devices and nodes verify temporary certificates with.
    """
    from ztpki.pki.pem import certificates_pem
    from ztpki.secretfiles import write_public_file

    refuse_existing_output(out, force=force)
    system = CASystemDirectory(directory)
    chain = system.export_chain(name)  # after a root's key rollover: with its links
    write_public_file(out, certificates_pem(chain))
    console.print(f"wrote the chain of CA [bold]{name}[/] ({len(chain)} certificate(s)) to {out}")
