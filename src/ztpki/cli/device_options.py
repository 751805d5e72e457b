"""The options of `ztpki device activate | renew | agent | set-node | connect`, and the
callbacks that turn a bad value into a usage error (exit 2) before anything is read or
stored."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import click
from cryptography import x509

from ztpki.device.cmp_activation import EnrollmentProtocol
from ztpki.device.customer_node import NodeAddress, NodePin, load_node_ca, parse_fingerprint
from ztpki.errors import ConfigurationError


def _node_value(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> NodeAddress | None:
    """Parse a node address option or argument, or make it a usage error."""
    if value is None:
        return None
    try:
        return NodeAddress.parse(value)
    except ConfigurationError as exc:
        raise click.BadParameter(exc.message, ctx=ctx, param=param) from None


def _fingerprint_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Parse --node-ca-fingerprint to 64 lower-case hex digits, or make it a usage error."""
    if value is None:
        return None
    try:
        return parse_fingerprint(value)
    except ConfigurationError as exc:
        raise click.BadParameter(exc.message, ctx=ctx, param=param) from None


def _node_ca_value(
    ctx: click.Context, param: click.Parameter, value: Path | None
) -> x509.Certificate | None:
    """Read --node-ca: one PEM CA certificate, or make it a usage error."""
    if value is None:
        return None
    try:
        data = value.read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {value}: {exc.strerror}", ctx, param) from None
    try:
        return load_node_ca(data, str(value))
    except ConfigurationError as exc:
        raise click.BadParameter(exc.message, ctx=ctx, param=param) from None


def _given_pin(fingerprint: str | None, node_ca: x509.Certificate | None) -> NodePin | None:
    """The pin of --node-ca and --node-ca-fingerprint; disagreeing options are a usage error,
    found before anything is read or written."""
    try:
        return NodePin.given(fingerprint=fingerprint, certificate=node_ca)
    except ConfigurationError as exc:
        raise click.UsageError(f"--node-ca and --node-ca-fingerprint: {exc.message}") from None


def _https_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise click.BadParameter(f"{value[:200]!r} is not a URL: {exc}", ctx, param) from None
    if parts.scheme != "https" or not parts.hostname:
        raise click.BadParameter(
            f"{value[:200]!r} is not an https:// URL with a host", ctx=ctx, param=param
        )
    return value


FINGERPRINT_FORMS = "sha256:HEX, HEX, or openssl's AB:CD:... form"

device_option = click.option(
    "--device",
    "device_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="The device directory (its memory).",
)
fingerprint_option = click.option(
    "--node-ca-fingerprint",
    callback=_fingerprint_value,
    help="Trust a node whose certificate chains to the CA with this SHA-256 fingerprint "
    f"({FINGERPRINT_FORMS}), instead of the factory CA certificate.",
)
node_option = click.option(
    "--node",
    "node",
    callback=_node_value,
    help="https://HOST:PORT[/label] (default: set-node's).",
)
node_ca_option = click.option(
    "--node-ca",
    type=click.Path(path_type=Path, dir_okay=False),
    callback=_node_ca_value,
    help="PEM file of the node's CA certificate: trust a node whose certificate chains to it, "
    "even when the node sends its certificate alone. Its fingerprint is the pin; with "
    "--node-ca-fingerprint too, the two must agree.",
)
key_on_device_option = click.option(
    "--key-on-device",
    is_flag=True,
    help="Generate the operational key in the device (simpleenroll) instead of having the "
    "customer CA generate it (serverkeygen).",
)


protocol_option = click.option(
    "--protocol",
    type=click.Choice([p.value for p in EnrollmentProtocol], case_sensitive=False),
    help="Enrollment protocol to the node: EST (RFC 7030) or CMP (RFC 9483: ir + certConf, "
    "with central key generation unless --key-on-device; kur to renew). Default: the one "
    "the device last enrolled with (`device show`: config protocol), else est.",
)
timeout_option = click.option(
    "--timeout", type=float, default=30.0, show_default=True, help="Seconds per request."
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON (no step lines)."
)
