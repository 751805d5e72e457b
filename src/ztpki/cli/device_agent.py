"""`ztpki device activate | agent | renew | set-node | connect`: the device in the field.

Exit status: 0 done; 1 an error (the message says which step and what to do); 3 the node
refused the device (403, or it does not accept the device's certificate); 4 a temporary
failure (network, node busy): run again later. The agent retries everything but a refusal
itself (see ztpki.device.agent), so it ends with 0, 3, or 1 for a device it cannot read.

`set-node` states the whole node: without --node-ca or --node-ca-fingerprint it removes an
earlier pin. --node-ca FILE gives the pinned node CA certificate itself, so the device can
verify a node that sends its certificate alone (a leaf-only chain); with
--node-ca-fingerprint too, the two must agree.

Option values that do not parse (--node, --node-ca, --node-ca-fingerprint, --key-algorithm,
URL) are usage errors (exit 2), as are contradicting options (a --node-ca whose fingerprint
is not --node-ca-fingerprint): nothing is stored then. Messages are printed as plain text:
they hold URLs such as https://HOST:PORT[/label] and the node's own words.

Test only: ZTPKI_DEVICE_FAULT=before-request|after-answer|mid-replace|after-replace makes
activate, renew and agent SIGKILL themselves at that point (see ztpki.device.activation).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click
from cryptography import x509

from ztpki.cli.common import log_format_option, print_json
from ztpki.cli.device import device, plain_errors, print_error
from ztpki.cli.device_options import (
    FINGERPRINT_FORMS,
    _fingerprint_value,
    _given_pin,
    _https_url,
    _node_value,
    device_option,
    fingerprint_option,
    json_option,
    key_on_device_option,
    node_ca_option,
    node_option,
    protocol_option,
    timeout_option,
)
from ztpki.cli.discovery_options import discovery_options
from ztpki.device.activation import (
    ActivationError,
    ActivationEvent,
    ActivationResult,
    FaultInjector,
    KeyMode,
)
from ztpki.device.agent import Agent, AgentEvent, AgentStopped
from ztpki.device.cmp_activation import EnrollmentProtocol, activating_client
from ztpki.device.connect import RevocationPolicy, connect, identity_ssl_context
from ztpki.device.customer_node import (
    NODE_CA_KEY,
    PROTOCOL_KEY,
    NodeAddress,
    NodePin,
    choose_pin,
    configured_node,
    node_changes,
)
from ztpki.device.discovery import DiscoverySettings
from ztpki.device.key_store import key_token
from ztpki.device.memory import DeviceMemory
from ztpki.device.node_finder import NodeFinder
from ztpki.device.reporting import connect_remedy
from ztpki.errors import ConfigurationError, ZtpkiError
from ztpki.pki.keys import KeySpec
from ztpki.pki.pem import load_certificates_pem
from ztpki.untrusted import displayable, quote


def _open(device_dir: Path, fault: FaultInjector | None) -> DeviceMemory:
    hook = fault.memory_hook if fault is not None else None
    return DeviceMemory.open(device_dir, _fault_hook=hook)


def _node(memory: DeviceMemory, node: NodeAddress | None) -> NodeAddress:
    if node is not None:
        return node
    configured, _ = configured_node(memory.config())
    if configured is None:
        raise ConfigurationError(
            f"device {memory.device_id} has no customer-node address: give --node "
            "https://HOST:PORT, run ztpki device set-node, or let ztpki device agent "
            "discover the node"
        )
    return configured


def _protocol(memory: DeviceMemory, given: str | None) -> EnrollmentProtocol:
    """--protocol if given, else the protocol the device last enrolled with, else CMP for a
    device whose keys are in a token (the protocol that signs in it), else EST."""
    if given is not None:
        return EnrollmentProtocol(given.lower())
    recorded = memory.config().get(PROTOCOL_KEY)
    if not recorded and key_token(memory) is not None:
        return EnrollmentProtocol.CMP
    try:
        return EnrollmentProtocol(recorded) if recorded else EnrollmentProtocol.EST
    except ValueError:
        raise ConfigurationError(
            f"device {memory.device_id}'s configuration names protocol {quote(recorded)}; "
            "give --protocol est or --protocol cmp"
        ) from None


def _key_mode(memory: DeviceMemory, asked: KeyMode) -> KeyMode:
    """A device whose keys are in a token makes its new key there: the only key it can keep
    (so `device activate` needs no flag on such a device)."""
    return KeyMode.SIMPLEENROLL if key_token(memory) is not None else asked


def _pin(memory: DeviceMemory, given: NodePin | None) -> NodePin | None:
    """The pin given on the command line, else the one set-node stored."""
    return choose_pin(given, configured_node(memory.config())[1])


def _print_event(event: ActivationEvent) -> None:
    # The message may quote the node's answer: its control characters are shown, not obeyed.
    click.echo(f"[{event.step.value}] {displayable(event.message)}")


def _finish(result: ActivationResult, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "device_id": result.device_id,
                "action": result.action,
                "serial": result.serial,
                "not_after": result.not_after.isoformat(),
                "events": [{"step": e.step.value, "message": e.message} for e in result.events],
            }
        )
    else:
        click.echo(f"{result.device_id}: {result.action} (serial {result.serial})")


def _fail(exc: ActivationError | AgentStopped) -> None:
    print_error(exc.message)
    # SystemExit, not click's Exit: run_command drops the status of the latter.
    raise SystemExit(exc.exit_code)


@device.command("activate")
@device_option
@node_option
@key_on_device_option
@protocol_option
@fingerprint_option
@node_ca_option
@click.option(
    "--key-algorithm",
    type=click.Choice([spec.value for spec in KeySpec], case_sensitive=False),
    help="Key the device generates; only with --key-on-device (default: as the current key).",
)
@timeout_option
@json_option
@plain_errors
def activate_command(
    device_dir: Path,
    node: NodeAddress | None,
    key_on_device: bool,
    protocol: str | None,
    node_ca_fingerprint: str | None,
    node_ca: x509.Certificate | None,
    key_algorithm: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Customize the device once: swap its temporary identity for the customer's."""
    if key_algorithm is not None and not key_on_device:
        raise click.UsageError(
            "--key-algorithm needs --key-on-device: without it the customer CA generates the "
            "key (serverkeygen, or central key generation over CMP)"
        )
    _run_once(
        device_dir,
        node,
        _given_pin(node_ca_fingerprint, node_ca),
        timeout=timeout,
        as_json=as_json,
        renew=False,
        key_mode=KeyMode.SIMPLEENROLL if key_on_device else KeyMode.SERVERKEYGEN,
        key_spec=KeySpec.parse(key_algorithm) if key_algorithm else None,
        protocol=protocol,
    )


@device.command("renew")
@device_option
@node_option
@protocol_option
@fingerprint_option
@node_ca_option
@timeout_option
@json_option
@plain_errors
def renew_command(
    device_dir: Path,
    node: NodeAddress | None,
    protocol: str | None,
    node_ca_fingerprint: str | None,
    node_ca: x509.Certificate | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Renew the operational identity now (simplereenroll or CMP kur; new key made in the
    device)."""
    pin = _given_pin(node_ca_fingerprint, node_ca)
    _run_once(
        device_dir,
        node,
        pin,
        timeout=timeout,
        as_json=as_json,
        renew=True,
        protocol=protocol,
    )


def _run_once(
    device_dir: Path,
    node: NodeAddress | None,
    pin: NodePin | None,
    *,
    timeout: float,
    as_json: bool,
    renew: bool,
    key_mode: KeyMode = KeyMode.SERVERKEYGEN,
    key_spec: KeySpec | None = None,
    protocol: str | None = None,
) -> None:
    fault = FaultInjector.from_env()
    memory = _open(device_dir, fault)
    client = activating_client(
        _protocol(memory, protocol),
        memory,
        _node(memory, node),
        key_mode=_key_mode(memory, key_mode),
        key_spec=key_spec,
        pin=_pin(memory, pin),
        report=None if as_json else _print_event,
        timeout=timeout,
        fault=fault,
    )
    try:
        result = asyncio.run(client.renew() if renew else client.activate())
    except ActivationError as exc:
        _fail(exc)
    _finish(result, as_json)


@device.command("agent")
@device_option
@log_format_option
@click.option(
    "--node",
    "node",
    callback=_node_value,
    help="https://HOST:PORT[/label]; default: wait for set-node's.",
)
@key_on_device_option
@protocol_option
@fingerprint_option
@node_ca_option
@discovery_options
@click.option("--once", is_flag=True, help="Exit after one activation or renewal.")
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="Seconds between looks at the configuration while waiting for an address, or "
    "for a fix before a slow retry.",
)
@timeout_option
@plain_errors
def agent_command(
    device_dir: Path,
    node: NodeAddress | None,
    key_on_device: bool,
    protocol: str | None,
    node_ca_fingerprint: str | None,
    node_ca: x509.Certificate | None,
    discovery: DiscoverySettings,
    once: bool,
    poll_interval: float,
    timeout: float,
) -> None:
    """Customize as soon as a node address is known, then renew before expiry.

    Without --node or set-node's address, the agent discovers the node (mDNS, then DNS-SD
    SRV records) and uses the first that verifies; --no-mdns --no-dns-sd waits instead."""
    pin = _given_pin(node_ca_fingerprint, node_ca)
    fault = FaultInjector.from_env()
    memory = _open(device_dir, fault)
    finder = None
    if discovery.enabled and node is None:
        finder = NodeFinder(
            discovery, report=lambda text: _print_agent_event(AgentEvent("discover", text))
        )
    agent = Agent(
        memory,
        node=node,
        key_mode=_key_mode(memory, KeyMode.SIMPLEENROLL if key_on_device else KeyMode.SERVERKEYGEN),
        protocol=_protocol(memory, protocol),
        # Only the command line's pin: the agent follows the configuration's as it changes.
        pin=pin,
        report=_print_agent_event,
        poll_interval=poll_interval,
        timeout=timeout,
        fault=fault,
        finder=finder,
    )

    async def run() -> ActivationResult | None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await agent.run(once=once)

    try:
        asyncio.run(run())
    except AgentStopped as exc:
        _fail(exc)
    except asyncio.CancelledError:
        click.echo("agent stopped")


def _print_agent_event(event: AgentEvent) -> None:
    click.echo(f"[{event.kind}] {event.message}")


@device.command("set-node")
@device_option
@click.argument("node", metavar="URL", callback=_node_value)
@click.option(
    "--node-ca-fingerprint",
    callback=_fingerprint_value,
    help=f"Pin the CA the node's certificate chains to ({FINGERPRINT_FORMS}). Without it and "
    "--node-ca, a pin set before is removed and the node is verified with the factory CA "
    "certificate(s).",
)
@node_ca_option
@plain_errors
def set_node_command(
    device_dir: Path,
    node: NodeAddress,
    node_ca_fingerprint: str | None,
    node_ca: x509.Certificate | None,
) -> None:
    """Give the device its customer node: address and, optionally, pinned CA.

    The command states the whole node, so it never leaves a pin from an earlier node (or
    an earlier CA of this one) behind. A running agent picks the change up.
    """
    pin = _given_pin(node_ca_fingerprint, node_ca)
    memory = DeviceMemory.open(device_dir)
    previous = memory.config().get(NODE_CA_KEY)
    memory.update_config(**node_changes(node, pin))
    if pin is not None:
        trust = f"verified with {pin.describe()}"
        if pin.certificate is None:
            trust += ", which the node must send"
    else:
        trust = "verified with the factory CA certificate(s)"
        if isinstance(previous, str) and previous:
            trust += f"; removed the pinned node CA {previous}"
    click.echo(f"{memory.device_id}: customer node {node}, {trust}")


@device.command("connect")
@device_option
@click.argument("url", callback=_https_url)
@click.option(
    "--trust",
    "trust_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="PEM file of extra CA certificates to verify the server with "
    "(default: the customer CA certificates the device holds).",
)
@click.option(
    "--require-revocation-check",
    is_flag=True,
    help="Refuse the server when its certificate's revocation status (CRL or OCSP it names) "
    "cannot be checked; by default that is logged and the connection proceeds.",
)
@timeout_option
@plain_errors
def connect_command(
    device_dir: Path,
    url: str,
    trust_file: Path | None,
    require_revocation_check: bool,
    timeout: float,
) -> None:
    """HTTPS GET of URL with the device's current identity; prints status and body.

    The server is verified with --trust FILE plus the CA certificates stored with the
    current identity: the customer CA's once customized, the factory CA's that issued the
    temporary certificate before. A server certificate naming a CRL distribution point or
    an OCSP responder is checked there: a revoked one is refused.
    """
    memory = DeviceMemory.open(device_dir)
    extra = load_certificates_pem(trust_file.read_bytes()) if trust_file else []
    policy = RevocationPolicy(require=require_revocation_check)
    try:
        context = identity_ssl_context(memory, server_anchors=extra, revocation=policy)
        response = connect(url, context, timeout=timeout)
    except ZtpkiError as exc:
        remedy = connect_remedy(exc)
        if remedy is None:
            raise
        print_error(f"{exc.message.rstrip('. ')}. What to do: {remedy}")
        raise SystemExit(1) from None
    click.echo(f"{response.status} {response.reason}")
    click.echo(response.body.decode("utf-8", "replace"), nl=False)
    if response.status >= 400:
        raise SystemExit(1)
