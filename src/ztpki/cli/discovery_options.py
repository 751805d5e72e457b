"""The options that say where a device looks for its customer node (`device agent`,
`device discover`), gathered into one ``discovery: DiscoverySettings`` argument."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ztpki.device.discovery import DiscoverySettings
from ztpki.errors import ConfigurationError

__all__ = ["discovery_options"]

F = TypeVar("F", bound=Callable[..., Any])

DNS_PORT = 53


def _ipv4(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise click.BadParameter(
                f"{value[:60]!r} is not the IPv4 address of an interface", ctx, param
            ) from None
    return values


def _dns_servers(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[tuple[str, int], ...]:
    servers = []
    for value in values:
        host, sep, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
        if not sep:
            host, port = value.strip("[]"), str(DNS_PORT)
        try:
            ipaddress.ip_address(host.strip("[]"))
            number = int(port)
            if not 0 < number < 65536:
                raise ValueError
        except ValueError:
            raise click.BadParameter(
                f"{value[:60]!r} is not IP or IP:PORT of a DNS server", ctx, param
            ) from None
        servers.append((host.strip("[]"), number))
    return tuple(servers)


def discovery_options(func: F) -> F:
    """Add the discovery options to a command; it receives ``discovery`` instead."""

    @click.option(
        "--mdns/--no-mdns",
        default=True,
        show_default=True,
        help="Browse the local link for announced nodes (mDNS, _ztpki-est._tcp.local).",
    )
    @click.option(
        "--mdns-interface",
        multiple=True,
        metavar="ADDR",
        callback=_ipv4,
        help="Browse only on the interface with this IPv4 address (repeatable) "
        "[default: every interface].",
    )
    @click.option(
        "--browse-time",
        type=click.FloatRange(min=0.1, max=60),
        default=3.0,
        show_default=True,
        help="Seconds to collect mDNS answers.",
    )
    @click.option(
        "--dns-sd/--no-dns-sd",
        "unicast",
        default=True,
        show_default=True,
        help="Look up _ztpki-est._tcp.DOMAIN SRV and TXT records in the DNS.",
    )
    @click.option(
        "--search-domain",
        multiple=True,
        metavar="DOMAIN",
        help="Domain to look the SRV record up in (repeatable) [default: /etc/resolv.conf's "
        "search list].",
    )
    @click.option(
        "--dns-server",
        multiple=True,
        metavar="IP[:PORT]",
        callback=_dns_servers,
        help="DNS server to ask (repeatable) [default: /etc/resolv.conf's].",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            kwargs["discovery"] = DiscoverySettings(
                mdns=kwargs.pop("mdns"),
                mdns_interfaces=kwargs.pop("mdns_interface"),
                browse_seconds=kwargs.pop("browse_time"),
                unicast=kwargs.pop("unicast"),
                search_domains=kwargs.pop("search_domain") or None,
                dns_servers=kwargs.pop("dns_server"),
            )
        except ConfigurationError as exc:
            raise click.UsageError(exc.message) from None
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
