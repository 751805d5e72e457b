"""The command-line options that put a key in a PKCS#11 token (README: Keys in hardware)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from ztpki.casystem.token_keys import TokenOptions, create_token_key, parse_key_uri
from ztpki.pki.keys import KeySpec
from ztpki.tokens.access import MODULE_ENV, PIN_ENV

if TYPE_CHECKING:
    from ztpki.tokens import TokenKey

F = TypeVar("F", bound=Callable[..., object])


def token_access_options(func: F) -> F:
    """--pkcs11-module and --pkcs11-pin-file: how to reach a token."""
    func = click.option(
        "--pkcs11-pin-file",
        type=click.Path(path_type=Path, dir_okay=False),
        help=f"File holding the token's user PIN (default: ${PIN_ENV}).",
    )(func)
    func = click.option(
        "--pkcs11-module",
        metavar="PATH",
        help=f"The PKCS#11 module (shared library) of the token (default: ${MODULE_ENV}, "
        "else the one recorded at `ca init`).",
    )(func)
    return func


def token_key_options(func: F) -> F:
    """--pkcs11 URI and what to do there (generate the key, or use the one that exists),
    --rsa-pss, and how to reach the token."""
    func = click.option(
        "--rsa-pss",
        is_flag=True,
        help="With an RSA key in a token: sign with RSASSA-PSS instead of PKCS#1 v1.5.",
    )(func)
    return token_uri_options(func)


def token_uri_options(func: F, *, what: str = "factory-ca") -> F:
    """--pkcs11 URI, --pkcs11-existing, and how to reach the token."""
    func = click.option(
        "--pkcs11-existing",
        is_flag=True,
        help="Use the key object the --pkcs11 URI names (it must exist, with its public key) "
        "instead of generating one.",
    )(func)
    func = click.option(
        "--pkcs11",
        "pkcs11_uri",
        metavar="URI",
        help="Keep the key in a PKCS#11 token (RFC 7512 URI, e.g. "
        f"'pkcs11:token=factory;object={what}'): generated there, never leaving it.",
    )(func)
    return token_access_options(func)


def client_key_options(func: F) -> F:
    """`ca add-client`'s --pkcs11 options: the CA-client's TLS key in a token."""
    return token_uri_options(func, what="line-1")


def token_options(module: str | None, pin_file: Path | None) -> TokenOptions:
    return TokenOptions(module=module, pin_file=pin_file)


def token_key(
    uri_text: str | None,
    *,
    existing: bool,
    rsa_pss: bool,
    key_spec: KeySpec,
    options: TokenOptions,
) -> TokenKey | None:
    """The token key the options ask for (None: a key file, as before)."""
    if uri_text is None:
        if existing or rsa_pss:
            raise click.UsageError("--pkcs11-existing and --rsa-pss need --pkcs11 URI")
        return None
    if rsa_pss and not key_spec.is_rsa and not existing:
        raise click.UsageError("--rsa-pss needs an RSA key (--key rsa-2048 or rsa-3072)")
    return create_token_key(
        parse_key_uri(uri_text),
        options,
        key_spec=None if existing else key_spec,
        rsa_pss=rsa_pss,
    )


def client_token_key(uri_text: str, *, existing: bool, options: TokenOptions) -> TokenKey:
    """A CA-client's TLS key in a token: EC P-256 generated there, or the existing EC key
    the URI names (an RSA one is refused: tokens.tls signs handshakes with EC keys only)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = create_token_key(
        parse_key_uri(uri_text),
        options,
        key_spec=None if existing else KeySpec.EC_P256,
        rsa_pss=False,
    )
    if not isinstance(key.public_key(), ec.EllipticCurvePublicKey):
        raise click.UsageError(
            f"the key at {uri_text} is RSA; a CA-client's key in a token must be EC (P-256 "
            "or P-384): leave out --pkcs11-existing to generate one"
        )
    return key
