"""`ztpki node serve`: the EST server, as one process or as a supervisor of N workers."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ztpki.cli.common import log_format_option, passphrase, passphrase_options
from ztpki.cli.node import node
from ztpki.cli.node_options import (
    NODE_ENV,
    NODE_KEY,
    client_passphrase,
    client_passphrase_option,
    dir_option,
)
from ztpki.cli.node_proxy import proxy_addresses
from ztpki.eventloop import LoopName, chosen_loop, run_service, running_loop_name
from ztpki.node.config import NodeConfig

if TYPE_CHECKING:
    from ztpki.node.announce import Announcer
    from ztpki.node.material import NodeMaterial
    from ztpki.node.proxy_listener import ProxyAddress
    from ztpki.node.runtime import RunningNode

log = logging.getLogger(__name__)


@node.command("serve")
@dir_option
@log_format_option
@click.option(
    "--listen",
    default="127.0.0.1:8443",
    show_default=True,
    help="HOST:PORT (port 0: any free port).",
)
@click.option(
    "--proxy-listen",
    "proxy_listen",
    multiple=True,
    metavar="HOST:PORT|unix:PATH",
    callback=proxy_addresses,
    help="Also serve TLS-terminating proxies here (repeatable): HOST:PORT speaks TLS and "
    "requires a proxy client certificate under [proxy] ca, from a [proxy] trusted address; "
    "unix:PATH is a socket of mode 0660 for [proxy] socket_group. The client certificate "
    "then comes from the proxy's header.",
)
@click.option(
    "--console-listen",
    metavar="HOST:PORT",
    help="Also serve the web console here (HTTPS with the node's server certificate; "
    "operators log in with a password from `node add-operator` or a client certificate of "
    "[console] operator_ca). With --workers, worker 0 serves it.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=256),
    help="Worker processes serving the same addresses, under one supervisor that restarts "
    "a worker that dies [default: one per core]. 1: one process, no supervisor.",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0, max=3600),
    default=60.0,
    show_default=True,
    help="On SIGTERM, seconds the requests in flight get to finish before they are cut.",
)
@click.option(
    "--announce",
    is_flag=True,
    help="Announce the EST and CMP services by DNS-SD over mDNS (_ztpki-est._tcp, "
    "_ztpki-cmp._tcp) on the interfaces of the listen address, so devices on the link find "
    "the node; withdrawn on shutdown.",
)
@click.option(
    "--announce-host",
    metavar="NAME",
    help="With --announce: the host name announced, one of the server certificate's DNS "
    "names (devices verify the node for it) [default: its first DNS name].",
)
@click.option(
    "--announce-label",
    metavar="LABEL",
    help="With --announce: announce the EST and CMP paths of this CA label [default: the "
    "default paths].",
)
@click.option(
    "--announce-priority",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="With --announce: the SRV priority (devices try lower numbers first).",
)
@client_passphrase_option
@passphrase_options(
    NODE_ENV,
    NODE_KEY,
    insecure_help="The node's server key is stored unencrypted (`node init "
    "--insecure-no-passphrase`): read it without a passphrase. For demos only.",
)
def serve_command(
    directory: Path,
    listen: str,
    proxy_listen: tuple[ProxyAddress, ...],
    console_listen: str | None,
    workers: int | None,
    drain_timeout: float,
    announce: bool,
    announce_host: str | None,
    announce_label: str | None,
    announce_priority: int,
    client_passphrase_file: Path | None,
    passphrase_file: Path | None,
    insecure_no_passphrase: bool,
) -> None:
    """Run the EST server. Prints `listening on HOST:PORT` when ready.

    SIGTERM drains: new connections are refused, requests in flight finish. SIGHUP reloads
    what node.toml can change while running (EST label settings, [proxy] trusted and header;
    the log names anything else that changed) and fetches every factory CRL at once (they
    are fetched on their own before their nextUpdate and every crl_refresh_minutes)."""
    from ztpki.casystem.client import parse_address
    from ztpki.node.material import load_material
    from ztpki.node.workers import default_worker_count

    if (announce_host or announce_label) and not announce:
        raise click.UsageError("--announce-host and --announce-label need --announce")
    event_loop = chosen_loop()
    secret = passphrase(passphrase_file, insecure_no_passphrase, NODE_ENV, NODE_KEY)
    material = load_material(
        NodeConfig.load(directory),
        node_passphrase=secret,
        client_passphrase=client_passphrase(client_passphrase_file),
    )
    host, port = parse_address(listen, allow_any_port=True)
    console_address = (
        None if console_listen is None else parse_address(console_listen, allow_any_port=True)
    )
    if announce_label is not None:
        material.config.label(announce_label)  # an unknown label is refused before serving
    mdns = Mdns(announce_host, announce_label, announce_priority) if announce else None
    if mdns is not None:
        mdns.announcer(material, host, port or 1)  # a name the certificate lacks: refused now
    how = Serving(
        material, event_loop, host, port, proxy_listen, drain_timeout, console_address, mdns
    )
    count = workers or default_worker_count()
    if count == 1:
        serve_one(how)
    else:
        serve_workers(how, count)


@dataclass(frozen=True)
class Serving:
    """What to serve, where, and how long a drain may take."""

    material: NodeMaterial
    event_loop: LoopName
    host: str
    port: int
    proxy_listen: tuple[ProxyAddress, ...]
    drain_timeout: float
    console_listen: tuple[str, int] | None = None
    mdns: Mdns | None = None


@dataclass(frozen=True)
class Mdns:
    """--announce: the host name and EST label to announce."""

    host: str | None
    label: str | None
    priority: int = 0

    def announcer(self, material: NodeMaterial, host: str, port: int) -> Announcer:
        from ztpki.node.announce import Announcer, announcement_for
        from ztpki.protocol.dnssd import SERVICES

        # Every service the node serves on this listener: EST and CMP.
        return Announcer(
            [
                announcement_for(
                    material.server_chain,
                    listen_host=host,
                    port=port,
                    host=self.host,
                    label=self.label,
                    priority=self.priority,
                    kind=kind,
                )
                for kind in SERVICES
            ]
        )


def announce(
    proxies: list[ProxyAddress], host: str, port: int, console_url: str | None = None
) -> None:
    for address in proxies:
        # On stderr, before the readiness line: stdout carries only `listening on`.
        click.echo(f"proxy listening on {address}", err=True)
    if console_url is not None:
        click.echo(f"web console on {console_url}", err=True)
    click.echo(f"listening on {host}:{port}")


def start_announcing(announcer: Announcer) -> None:
    """Announce, and say so on stderr before the readiness line (probing takes ~2 s)."""
    announcer.start()
    if announcer.wait_started():
        for a in announcer.announcements:
            click.echo(f"announcing {a.instance} ({a.host}:{a.port}) by mDNS", err=True)
    else:
        click.echo("warning: the node is not announced by mDNS (see the log)", err=True)


def serve_one(how: Serving) -> None:
    """The node in this process."""
    from ztpki.node.serving import serve_node

    mdns: list[Announcer] = []

    def ready(running: RunningNode) -> None:
        log.info(
            "customer node %s serving on the %s event loop",
            how.material.config.directory,
            running_loop_name(),
        )
        if how.mdns is not None:
            mdns.append(how.mdns.announcer(how.material, running.host, running.port))
            start_announcing(mdns[0])
        console_url = None if running.console is None else running.console.url
        announce([p.address for p in running.proxies], running.host, running.port, console_url)

    try:
        run_service(
            serve_node(
                how.material,
                host=how.host,
                port=how.port,
                proxy_listen=how.proxy_listen,
                drain_timeout=how.drain_timeout,
                ready=ready,
                console_listen=how.console_listen,
            ),
            how.event_loop,
        )
    finally:
        for announcer in mdns:
            announcer.close()


def serve_workers(how: Serving, count: int) -> None:
    """A supervisor here, the node in ``count`` forked workers (ztpki.node.workers)."""
    from ztpki.node.listeners import WorkerPlace, bind_listeners
    from ztpki.node.serving import reload_material, serve_node
    from ztpki.node.workers import READY, Supervisor

    material, drain_timeout = how.material, how.drain_timeout
    bound = bind_listeners(
        material.config,
        host=how.host,
        port=how.port,
        proxy_listen=how.proxy_listen,
        console_listen=how.console_listen,
    )
    # The metrics exchange between workers (ztpki.node.fleet_metrics): mkdtemp makes it 0700.
    metrics_dir = Path(tempfile.mkdtemp(prefix="ztpki-node-workers-"))
    current = [material]  # the supervisor's copy, reloaded on SIGHUP, for workers it starts

    def run_worker(slot: int, ready_fd: int) -> int:
        def ready(running: RunningNode) -> None:
            os.write(ready_fd, READY)
            os.close(ready_fd)

        place = WorkerPlace(bound, slot, metrics_dir)
        run_service(
            serve_node(current[0], worker=place, drain_timeout=drain_timeout, ready=ready),
            how.event_loop,
        )
        return 0

    def reload() -> None:
        current[0] = reload_material(current[0], who="supervisor")

    supervisor = Supervisor(
        count,
        run_worker=run_worker,
        reload=reload,
        close_listeners=bound.close,
        drain_timeout=drain_timeout,
    )
    mdns = how.mdns.announcer(material, bound.host, bound.port) if how.mdns else None
    try:
        supervisor.start()
        if mdns is not None:
            start_announcing(mdns)  # in the supervisor only: one announcer for all workers
        log.info(
            "customer node %s serving with %d workers on the %s event loop",
            material.config.directory,
            count,
            how.event_loop,
        )
        console_url = None
        if bound.console is not None:
            name = bound.console.getsockname()
            console_url = f"https://{name[0]}:{name[1]}/"
        announce([address for address, _ in bound.proxies], bound.host, bound.port, console_url)
        status = supervisor.run()
    finally:
        if mdns is not None:
            mdns.close()
        bound.close()
        bound.unlink_files()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if status != 0:
        raise SystemExit(status)
