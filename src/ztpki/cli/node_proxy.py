"""`ztpki node` options and command for the proxies allowed to speak for devices (the
[proxy] table): `node init` takes the options, `node set-proxy` changes them later."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ztpki.cli.common import console
from ztpki.cli.node_options import dir_option
from ztpki.node.proxy_config import WIDE_OPTION, ProxyValueError
from ztpki.node.proxy_setup import ProxySettings

if TYPE_CHECKING:
    from ztpki.node.proxy_listener import ProxyAddress

F = TypeVar("F", bound=Callable[..., Any])


def proxy_addresses(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[ProxyAddress, ...]:
    """Parse each --proxy-listen, or make it a usage error."""
    from ztpki.errors import ConfigurationError
    from ztpki.node.proxy_listener import ProxyAddress

    try:
        return tuple(ProxyAddress.parse(value) for value in values)
    except ConfigurationError as exc:
        raise click.BadParameter(exc.message, ctx=ctx, param=param) from None


def proxy_options(func: F) -> F:
    """Who may speak for devices on the proxy listener (`node serve --proxy-listen`)."""
    options = [
        click.option(
            "--proxy-ca",
            type=click.Path(path_type=Path, dir_okay=False),
            help="PEM: the CA that issues the proxies' TLS client certificates (nginx "
            "proxy_ssl_certificate), or a proxy's own certificate. Required for a TCP proxy "
            "listener.",
        ),
        click.option(
            "--proxy-fingerprint",
            "proxy_fingerprints",
            multiple=True,
            metavar="sha256:HEX",
            help="Accept only the proxy certificate(s) with this SHA-256 (under --proxy-ca); "
            "repeatable.",
        ),
        click.option(
            "--trusted-proxy",
            "trusted_proxies",
            multiple=True,
            metavar="ADDR/CIDR",
            help="Address or CIDR the proxies connect from (a second fence after their "
            "certificate); repeatable. Prefixes shorter than /24 (IPv4) or /48 (IPv6) need "
            f"{WIDE_OPTION}; /0 is refused.",
        ),
        click.option(
            WIDE_OPTION,
            "allow_wide_proxy_range",
            is_flag=True,
            default=None,
            help="Allow --trusted-proxy ranges wider than /24 (IPv4) or /48 (IPv6).",
        ),
        click.option(
            "--proxy-socket-group",
            metavar="GROUP",
            help="Group of a Unix-socket proxy listener (mode 0660): the proxy's group, e.g. "
            "www-data (default: the node's own group).",
        ),
        click.option(
            "--proxy-header",
            metavar="NAME",
            help="Header carrying the client certificate (default X-SSL-Client-Cert).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def proxy_settings(kw: dict[str, Any], *, clear: bool = False) -> ProxySettings:
    """ProxySettings from the options of proxy_options (removed from kw); absent is None."""
    trusted = kw.pop("trusted_proxies")
    pins = kw.pop("proxy_fingerprints")
    return ProxySettings(
        trusted=tuple(trusted) or None,
        allow_wide_range=kw.pop("allow_wide_proxy_range"),
        ca=kw.pop("proxy_ca"),
        fingerprints=tuple(pins) or None,
        socket_group=kw.pop("proxy_socket_group"),
        header=kw.pop("proxy_header"),
        clear=clear,
    )


@contextmanager
def proxy_usage_errors() -> Iterator[None]:
    """A proxy option with a bad value (an address that is not one, /0, a wide range without
    the flag, a malformed pin) is a usage error: exit 2, nothing written."""
    try:
        yield
    except ProxyValueError as exc:
        raise click.UsageError(exc.message) from None


@click.command("set-proxy")
@dir_option
@proxy_options
@click.option(
    "--clear",
    is_flag=True,
    help="Start from no proxy settings (then apply the options given).",
)
def set_proxy_command(directory: Path, clear: bool, **options: Any) -> None:
    """Change which proxies may speak for devices; options not given keep their value.
    Restart `node serve` to apply."""
    from ztpki.node.config import NodeConfig
    from ztpki.node.proxy_setup import describe_proxy, set_proxy

    settings = proxy_settings(options, clear=clear)
    if settings.empty:
        raise click.UsageError("give at least one proxy option, or --clear")
    config = NodeConfig.load(directory)
    with proxy_usage_errors():
        updated = set_proxy(config, settings)
    for line in describe_proxy(updated):
        console.print(line, markup=False, soft_wrap=True)
