"""The demo's main line: phases, progress, tables, proof, summary."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ztpki.credentials import Credential
from ztpki.demo.fleet import (
    DeviceOutcome,
    customize_all,
    greet,
    replay_temporary,
    snapshot,
    temporary_identity_refused,
)
from ztpki.demo.output import log_to_file, print_tables
from ztpki.demo.proof import CustomerService
from ztpki.demo.revocation import RevocationProof, prove_block
from ztpki.demo.scenario import (
    NODE_HOST,
    DemoEnvironment,
    DemoSettings,
    console_login,
    device_dirs,
    manufacture,
    new_environment,
    start_customer_ca,
    start_factory,
    start_node,
    write_summary,
)
from ztpki.demo.site_dns import SITE_DOMAIN, SiteDNS
from ztpki.device.activation import KeyMode
from ztpki.device.cmp_activation import EnrollmentProtocol
from ztpki.device.memory import DeviceMemory
from ztpki.device.node_finder import NodeFinder
from ztpki.pki.pem import load_certificates_pem
from ztpki.protocol.dnssd import service_name
from ztpki.store.sqlite import open_sqlite_node_store

DISCOVERING = 4  # one device in this many finds the node by DNS-SD


def run_demo(settings: DemoSettings, *, console: Console, json_path: Path | None) -> int:
    demo = new_environment(settings)
    log_to_file(demo.path("logs", "demo.log"), verbose=settings.verbose)
    console.rule("[bold]ztpki demo[/]: factory → customer, zero touch")
    # Paths are copied from here: printed whole (the terminal wraps them, not rich); the
    # ones below are relative to the work directory, to keep lines within 80 columns.
    console.print(f"work directory: [bold]{settings.workdir}[/]", soft_wrap=True)
    if not settings.verbose:
        console.print("logs of the services and commands in logs/ (--verbose: here too)")
    try:
        summary = _run(demo, console)
    except BaseException:
        demo.stop_all()
        raise
    if json_path is not None:
        write_summary(json_path, summary)
        console.print(f"summary written to {json_path}", soft_wrap=True)
    if settings.keep_running:
        _print_keep_running(demo, console)
    else:
        demo.stop_all()
    return 0 if summary["failed"] == 0 and summary["proof"]["ok"] else 1


def _run(demo: DemoEnvironment, console: Console) -> dict[str, Any]:
    n = demo.settings.devices
    with console.status("starting the factory and customer CA systems…"), demo.phase("CA systems"):
        factory = start_factory(demo)
        customer = start_customer_ca(demo)
    console.print(
        f"factory CA system on {factory.address}, customer CA system on {customer.address}"
    )
    console.rule(f"manufacturing {n} devices (loading station + first CA-client)")
    with console.status(f"manufacturing {n} devices…"), demo.phase("manufacture"):
        batch = manufacture(demo, factory, n)
    paths = device_dirs(batch)
    console.print(f"{len(paths)} devices in batch/, with a signed shipping manifest")
    with console.status("starting the customer node…"), demo.phase("customer node"):
        node = start_node(demo, factory, customer, batch)
    console.print(f"customer node on https://{node.address}")
    print_console_login(demo, console)
    outcomes = [
        DeviceOutcome(
            device_id=DeviceMemory.open(p).device_id,
            path=p,
            key_mode=KeyMode.SERVERKEYGEN if i % 2 == 0 else KeyMode.SIMPLEENROLL,
            # Every third device customizes over CMP (both key modes, as i runs).
            protocol=EnrollmentProtocol.CMP if i % 3 == 1 else EnrollmentProtocol.EST,
            before=snapshot(p),
            discover=i % DISCOVERING == DISCOVERING - 1,
        )
        for i, p in enumerate(paths)
    ]
    site_dns = SiteDNS(NODE_HOST, node.port)  # the name the node's certificate carries
    site_dns.start()
    finder = NodeFinder(site_dns.settings(), report=lambda text: None)
    console.print(
        f"{sum(o.discover for o in outcomes)} of {len(outcomes)} devices get no node address: "
        f"they find it by DNS-SD (SRV {service_name('est', SITE_DOMAIN)} at the site's DNS "
        f"server {site_dns.server[0]}:{site_dns.server[1]})"
    )
    replay_dir = demo.path("replay-" + outcomes[0].device_id)
    demo.run("device", "export", "--device", str(outcomes[0].path), "--out", str(replay_dir))
    proof_service, anchors = _start_proof_service(demo, customer.address)
    refused_before = temporary_identity_refused(
        outcomes[0].path, proof_service.port, server_anchors=anchors
    )
    if refused_before:
        console.print(
            f"as it must, a customer-only TLS service refused {outcomes[0].device_id}'s "
            "temporary (factory) identity; the log line 'TLS handshake failed: client "
            "certificate refused' is this proof, not an error"
        )

    console.rule(
        f"plugging in {len(outcomes)} devices at once (activating client + communication means)"
    )
    with _progress(console) as progress, demo.phase("customization"):
        task = progress.add_task("customizing", total=len(outcomes))
        asyncio.run(
            customize_all(
                outcomes,
                f"https://{node.address}",
                concurrency=demo.settings.concurrency,
                advance=lambda: progress.advance(task),
                finder=finder,
            )
        )
    site_dns.stop()
    with demo.phase("proof"):
        for outcome in outcomes:
            if outcome.error is None:
                try:
                    outcome.greeted = greet(
                        outcome.path, proof_service.port, server_anchors=anchors
                    ) == (f"hello {outcome.device_id}")
                except Exception as exc:  # reported per device, never hides the others
                    outcome.error = f"customer service refused the new identity: {exc}"
        replay_status, replay_reason = replay_temporary(
            replay_dir, node.host, node.port, key_passphrase=demo.env["ZTPKI_EXPORT_PASSPHRASE"]
        )
    greeted = next((o for o in outcomes if o.greeted), None)
    revocation = None
    if greeted is not None:
        console.rule(f"blocking {greeted.device_id} at the node (its certificate put on hold)")
        with demo.phase("revocation"):
            try:
                revocation = prove_block(
                    demo,
                    greeted.path,
                    port=proof_service.port,
                    anchors=anchors,
                    crl_path=demo.path("customer-ca", "cas", "devices", "crl.der"),
                    say=lambda line: console.print(line, markup=False),
                )
            finally:
                proof_service.stop()
    proof_service.stop()
    store = open_sqlite_node_store(demo.path("node", "node.sqlite"))
    states = {str(k): v for k, v in store.counts().items()}
    audit = store.counts_by_decision()
    audit_ok = store.verify().ok
    store.close()
    summary = _summary(
        demo, outcomes, states, audit, audit_ok, refused_before, replay_status, replay_reason
    )
    summary["proof"]["revocation"] = None if revocation is None else _revocation(revocation)
    summary["proof"]["ok"] = summary["proof"]["ok"] and revocation is not None and revocation.ok
    print_tables(console, outcomes, summary, wide=demo.settings.wide)
    return summary


def _revocation(proof: RevocationProof) -> dict[str, Any]:
    return {
        "device_id": proof.device_id,
        "blocked_answer": proof.blocked_answer,
        "blocked_refused": proof.blocked_refused,
        "unblocked_answer": proof.unblocked_answer,
        "greeted_again": proof.greeted_again,
    }


def _start_proof_service(
    demo: DemoEnvironment, customer_address: str
) -> tuple[CustomerService, list[Any]]:
    cred_dir = demo.path("customer-service.cred")
    demo.run(
        "node",
        "request-server-cert",
        "--ca",
        customer_address,
        "--client-cred",
        str(demo.path("node.cred")),
        "--ca-name",
        "services",
        "--ip",
        "127.0.0.1",
        "--out",
        str(cred_dir),
    )
    credential = Credential.load(cred_dir, passphrase=demo.env["ZTPKI_NODE_PASSPHRASE"].encode())
    services_ca = load_certificates_pem(
        demo.path("customer-ca", "cas", "services", "ca.pem").read_bytes()
    )
    root = load_certificates_pem(
        demo.path("customer-ca", "cas", "customer-root", "ca.pem").read_bytes()
    )
    device_ca = demo.path("customer-ca", "cas", "devices")
    service = CustomerService(
        credential.file_key,
        [credential.certificate, *services_ca],
        customer_anchors=root,
        crl=device_ca / "crl.der",
        device_cas=load_certificates_pem((device_ca / "ca.pem").read_bytes()),
    )
    service.start()
    return service, root


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _summary(
    demo: DemoEnvironment,
    outcomes: list[DeviceOutcome],
    states: dict[str, int],
    audit: dict[str, int],
    audit_ok: bool,
    refused_before: bool,
    replay_status: int,
    replay_reason: str,
) -> dict[str, Any]:
    customized = [o for o in outcomes if o.error is None and o.after is not None]
    seconds = demo.phases.get("customization", 0.0)
    greeted = sum(o.greeted for o in outcomes)
    return {
        "workdir": str(demo.root),
        "devices": [
            {
                "device_id": o.device_id,
                "key_mode": o.key_mode.value,
                "protocol": o.protocol.value,
                "ok": o.error is None and o.greeted,
                "error": o.error,
                "found_by": "dns-sd" if o.discover else "address",
                "seconds": round(o.seconds, 4),
                "before": o.before.__dict__ if o.before else None,
                "after": o.after.__dict__ if o.after else None,
            }
            for o in outcomes
        ],
        "customized": len(customized),
        "customized_by_discovery": sum(o.discover for o in customized),
        "failed": sum(1 for o in outcomes if o.error is not None or not o.greeted),
        "register": states,
        "audit": {"decisions": audit, "chain_verifies": audit_ok},
        "phases": {k: round(v, 3) for k, v in demo.phases.items()},
        "enrollments_per_second": round(len(customized) / seconds, 2) if seconds else 0.0,
        "proof": {
            "greeted_with_new_identity": greeted,
            "temporary_identity_refused_by_customer_service": refused_before,
            "replayed_temporary_certificate_status": replay_status,
            "replay_reason": replay_reason,
            "ok": greeted == len(outcomes) and refused_before and replay_status == 403 and audit_ok,
        },
    }


def keep_running_commands(demo: DemoEnvironment) -> str:
    """Shell commands that talk to the services a --keep-running demo left up."""
    node = demo.services["node"].address
    device = device_dirs(demo.path("batch"))[-1]
    est = f"https://{node}/.well-known/est"
    return f"""cd {demo.root}
export PATH={Path(sys.executable).parent}:$PATH
export ZTPKI_EXPORT_PASSPHRASE=$(cat secrets/ztpki_export_passphrase.txt)
ztpki node devices --dir node
ztpki node audit --dir node --verify
ztpki ca issued --dir customer-ca
ztpki device show --device {device}
ztpki device export --device {device} --out dev-pem
curl -sS --fail-with-body --cacert dev-pem/trust.pem {est}/cacerts | head -3
curl -sS --fail-with-body --cacert dev-pem/trust.pem --cert dev-pem/cert.pem \\
  --key dev-pem/key.pem --pass "$ZTPKI_EXPORT_PASSPHRASE" {est}/csrattrs
curl -sS --fail-with-body --cacert dev-pem/trust.pem https://{node}/metrics | head
"""


def _print_keep_running(demo: DemoEnvironment, console: Console) -> None:
    commands = keep_running_commands(demo)
    script = demo.path("try-me.sh")
    script.write_text("set -e\n" + commands)
    console.rule("still running (--keep-running)")
    print_console_login(demo, console)
    console.print(commands, markup=False, highlight=False, soft_wrap=True)
    console.print(f"(also in {script.name})", markup=False, highlight=False)
    console.print(
        "stop with: kill " + " ".join(str(s.pid) for s in demo.services.values()),
        markup=False,
        highlight=False,
    )


def print_console_login(demo: DemoEnvironment, console: Console) -> None:
    login = console_login(demo)
    if login is None:
        return
    url, user, password_file = login
    console.print(f"web console: [bold]{url}[/]", highlight=False)
    console.print(
        f"log in as {user}, password in {password_file.relative_to(demo.root)}; the browser "
        "warns about the node's certificate: its root CA is the maker's, in "
        "factory-bundle.pem",
        highlight=False,
    )


def default_workdir() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="ztpki-demo-"))


__all__ = ["DemoSettings", "default_workdir", "run_demo"]
