"""`ztpki ca rollover`: a root CA moves to a new key, with the link certificates of RFC 4210
section 4.4 (ztpki.casystem.rollover). Stop every `ca serve` of the system first and start it
again after: the service loads each CA's key once, at start."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from ztpki.casystem.directory import CASystemDirectory
from ztpki.casystem.rollover import rollover_ca
from ztpki.cli.ca import CA_ENV, ca, ca_passphrase, dir_option, key_option
from ztpki.cli.common import console, passphrase_options, print_json
from ztpki.cli.pkcs11_options import token_key, token_key_options, token_options
from ztpki.pki.keys import KeySpec
from ztpki.pki.pem import fingerprint_sha256


@ca.command("rollover")
@dir_option
@click.option("--name", required=True, help="The root CA whose key to replace.")
@key_option
@click.option(
    "--validity-days",
    type=int,
    default=3650,
    show_default=True,
    help="Validity of the new root certificate.",
)
@click.option("--json", "as_json", is_flag=True)
@passphrase_options(CA_ENV, "the CA private key")
@token_key_options
def rollover_command(
    directory: Path,
    name: str,
    key_spec: str,
    validity_days: int,
    as_json: bool,
    passphrase_file: Path | None,
    insecure_no_passphrase: bool,
    pkcs11_uri: str | None,
    pkcs11_existing: bool,
    rsa_pss: bool,
    pkcs11_module: str | None,
    pkcs11_pin_file: Path | None,
) -> None:
    """Give root CA NAME a new key: a new self-signed certificate (newWithNew) and the link
    certificates newWithOld and oldWithNew; the CA then issues with the new key. What the old
    key signed stays valid until it expires. Run again after a crash: it finishes the
    interrupted rollover instead of making another key. Export the CA's chain again and give
    it to the nodes (`ztpki node update-ca`)."""
    secret = ca_passphrase(directory, passphrase_file, insecure_no_passphrase)
    system = CASystemDirectory(directory)
    tokens = token_options(pkcs11_module, pkcs11_pin_file)
    in_token = None
    if not (system.ca_dir(name) / "rollover.pending").exists():
        system.check_passphrase(secret)
        system.policy(name)  # refuses an unknown CA before a token key is made
        in_token = token_key(
            pkcs11_uri,
            existing=pkcs11_existing,
            rsa_pss=rsa_pss,
            key_spec=KeySpec(key_spec),
            options=tokens,
        )
    done = rollover_ca(
        system,
        name,
        key_spec=KeySpec(key_spec),
        validity_days=validity_days,
        passphrase=secret,
        now=datetime.now(UTC),
        tokens=tokens,
        token_key=in_token,
    )
    update = done.update
    if as_json:
        print_json(
            {
                "name": name,
                "resumed": done.resumed,
                "new_with_new": fingerprint_sha256(update.new_with_new),
                "new_with_old": fingerprint_sha256(update.new_with_old),
                "old_with_new": fingerprint_sha256(update.links[-1]),
                "old_with_old": fingerprint_sha256(update.old_with_old),
            }
        )
        return
    what = "finished the interrupted rollover of" if done.resumed else "rolled over"
    console.print(f"{what} CA [bold]{name}[/] to a new key", markup=True)
    console.print(
        f"new root (newWithNew) SHA-256 {fingerprint_sha256(update.new_with_new)}\n"
        f"links in {system.ca_dir(name) / 'links.pem'}; export the chain again for the nodes "
        f"(`ztpki ca export --dir {directory} --name ...`) and restart `ca serve`",
        markup=False,
        soft_wrap=True,
    )
