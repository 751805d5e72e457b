"""Chaos: a fleet customizes through nginx -> 2 node workers -> 2 CA-system instances on
PostgreSQL while a worker, a CA-system instance and PostgreSQL itself are killed.

Shared by tests/e2e/test_chaos.py (a couple of hundred devices, in `make test`) and
benchmarks/chaos.py (10,000). Everything is made with the real CLI and run as real
processes (node_fixtures.build_world; proxy_fixtures for the deploy unit's command line and
deploy/nginx's site):

* a PostgreSQL cluster of its own (never the test process's shared one: it is restarted),
  holding the customer CA system's store and the node's register and audit trail;
* the customer CA system served by two `ztpki ca serve` processes on ONE directory, both in
  the node's `ca_system` list (`node set-ca-system`, in order of preference): the
  store is the database, so the instances share serials, request ids and revocations without
  copying a key around (two directories with a copied key would be the same thing with a
  second copy of the CA key on disk to keep in step);
* the node as the systemd unit starts it (`--workers 2`, a Unix-socket proxy listener)
  behind nginx running deploy/nginx/ztpki-node.conf;
* devices manufactured by `ztpki factory manufacture` and listed by its signed manifest
  (`ztpki node import`), customized concurrently by the real activating client
  (ztpki.device.ActivatingClient), each retrying what the client calls retryable with a
  bounded back-off and recording every failure it saw by kind.

The faults are injected at points of progress (a share of the fleet customized), never after
a sleep, while the rest of the fleet keeps going. The checks afterwards read both databases
with SQL (`check`).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from node_fixtures import ENV, TEST_LIMITS, NodeWorld, build_world, cli, start_ca
from proxy_fixtures import start_front, start_proxied_node
from tests.support.nginx import stop_nginx
from tests.support.postgres import PostgresCluster
from tests.support.services import Service, child_pids, run_ztpki

from ztpki.device import ActivatingClient, ActivationError, DeviceMemory, KeyMode
from ztpki.device.communication import NodeAddress

SIGNER_PASSPHRASE = "signer-passphrase-for-tests"
# A device waits at most this long between two attempts, whatever Retry-After says (nginx
# says 30 s when the node cannot answer): bounded, so a fleet run stays short.
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 2.0
# A lease whose holder the node cannot judge dead (another machine's) runs until it expires
# ([limits] lease_seconds, set to its minimum here, 2 x ca_timeout + 10 s); a device keeps
# retrying for longer than that. (A worker killed here is judged dead: its leases are taken
# over at once.)
CA_TIMEOUT = 5.0
LIMITS = {**TEST_LIMITS, "ca_timeout": CA_TIMEOUT, "lease_seconds": 2 * CA_TIMEOUT + 10}
GIVE_UP_AFTER = 3 * LIMITS["lease_seconds"]
# What a device may see while a worker, a CA-system instance or PostgreSQL is down: the
# node's or nginx's "later" (503, with Retry-After), nginx's rate limit (429), and a
# connection cut or refused. Anything else is a finding.
RETRYABLE_KINDS = frozenset({"http-503", "http-429", "connection", "timeout"})
# (progress at which it is injected, fault name): a share of the fleet customized.
FAULTS = ((0.25, "kill-node-worker"), (0.50, "kill-ca-instance"), (0.75, "restart-postgres"))


@dataclass
class ChaosWorld:
    world: NodeWorld
    cluster: PostgresCluster
    ca_database: str
    node_database: str
    instances: list[Service]  # the customer CA system's `ca serve` processes
    nginx: subprocess.Popen[bytes]
    nginx_port: int
    devices: list[Path]  # device memories (directories)
    socket_dir: Path

    @property
    def est(self) -> str:
        return f"https://127.0.0.1:{self.nginx_port}"

    def stop(self) -> None:
        stop_nginx(self.nginx)
        self.world.stop()
        self.cluster.destroy()
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def build(root: Path, devices: int) -> ChaosWorld:
    """The whole deployment, running; the caller stops it (ChaosWorld.stop())."""
    cluster = PostgresCluster()
    try:
        ca_db, node_db = cluster.fresh_database("ca"), cluster.fresh_database("node")
        world = build_world(root, databases=(ca_db, node_db), limits=LIMITS)
    except BaseException:
        cluster.destroy()
        raise
    socket_dir = Path(tempfile.mkdtemp(prefix="ztpki-chaos-"))
    try:
        second = start_ca(world.customer_dir, root)
        world.services.append(second)
        # Both instances, the world's first: start_proxied_node restarts the node on them.
        cli("node", "set-ca-system", "--dir", str(world.node_dir),
            "--ca", world.customer.address, "--ca", second.address)  # fmt: skip
        manufacture(world, devices)
        # nginx's worker (nobody) must reach the socket: a pytest tmp is 0700 to others.
        socket_dir.chmod(0o711)
        socket_path = socket_dir / "proxy.sock"
        _, _, pki = start_proxied_node(world, socket_path)
        nginx, port = start_front(world, root / "nginx", f"unix:{socket_path}", pki)
    except BaseException:
        world.stop()
        cluster.destroy()
        shutil.rmtree(socket_dir, ignore_errors=True)
        raise
    memories = sorted(p.parent for p in (root / "devices").glob("*/device.json"))
    return ChaosWorld(
        world, cluster, ca_db, node_db, [world.customer, second], nginx, port, memories,
        socket_dir,
    )  # fmt: skip


def manufacture(world: NodeWorld, devices: int) -> None:
    """`factory manufacture` with a manifest signer, and the manifest imported by the node."""
    root, factory = world.root, world.factory.address
    env = {**ENV, "ZTPKI_SIGNER_PASSPHRASE": SIGNER_PASSPHRASE}
    run_ztpki(
        "factory", "signer", "--ca", factory, "--client-cred", str(root / "cred-line1"),
        "--ca-name", "manifests", "--name", "acme-line1", "--out", str(root / "signer"),
        env=env,
    )  # fmt: skip
    run_ztpki(
        "factory", "manufacture", "--ca", factory, "--client-cred", str(root / "cred-line1"),
        "--count", str(devices), "--batch", "B1", "--out", str(root / "devices"),
        "--manifest-signer", str(root / "signer"), "--manufacturer", "Acme Devices",
        "--order", "PO-1", "--concurrency", "32",
        env=env, timeout=3600,
    )  # fmt: skip
    cli("node", "import", "--dir", str(world.node_dir), str(root / "devices" / "manifest-B1.json"))


# --- the faults ----------------------------------------------------------------------------


def kill_node_worker(chaos: ChaosWorld) -> str:
    """SIGKILL of the worker that has served most (CPU time): the kernel may hand one worker
    most connections, and killing an idle one would test nothing."""
    workers = sorted(child_pids(chaos.world.node.pid), key=_cpu_ticks)
    assert workers, "the node supervisor has no worker to kill"
    os.kill(workers[-1], signal.SIGKILL)
    return f"worker pid {workers[-1]} of {sorted(workers)}"


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def kill_ca_instance(chaos: ChaosWorld) -> str:
    """SIGKILL of the instance the node prefers, and no restart: the node fails over to the
    other one, which serves the rest of the run alone (a request the dead one recorded is
    answered again from the shared store, never issued twice)."""
    victim = chaos.instances[0]
    victim.kill()
    return f"ca serve pid {victim.pid} (not restarted; {chaos.instances[1].address} serves on)"


def restart_postgres(chaos: ChaosWorld) -> str:
    chaos.cluster.restart_immediate()
    return "pg_ctl stop -m immediate; start"


INJECT: dict[str, Callable[[ChaosWorld], str]] = {
    "kill-node-worker": kill_node_worker,
    "kill-ca-instance": kill_ca_instance,
    "restart-postgres": restart_postgres,
}


# --- the fleet -----------------------------------------------------------------------------


@dataclass
class Injected:
    name: str
    at_customized: int
    what: str
    seconds: float


@dataclass
class FleetRun:
    devices: int
    customized: int = 0
    seconds: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)  # kind -> times seen
    devices_retried: int = 0  # saw at least one failure, then customized
    fatal: list[str] = field(default_factory=list)  # not retryable, or gave up
    said: Counter[str] = field(default_factory=Counter)  # kind: what the device was told
    faults: list[Injected] = field(default_factory=list)


_STATUS = re.compile(r"\((\d{3}) to ")
_DIGITS = re.compile(r"\d+")


def failure_kind(error: ActivationError) -> str:
    """http-NNN, connection or timeout for what the client calls retryable; else its step and
    cause, which the run reports as fatal."""
    if not error.retryable:
        return f"fatal-{error.step.value}-{type(error.cause).__name__}"
    status = _STATUS.search(error.cause.message)
    if status:
        return f"http-{status.group(1)}"
    if "in time" in error.cause.message:
        return "timeout"
    return "connection"


async def customize_fleet(
    chaos: ChaosWorld, *, concurrency: int, faults: Sequence[tuple[float, str]] = FAULTS
) -> FleetRun:
    """Customize every device; inject each fault once its share of the fleet is customized
    (in a thread: the fleet keeps going meanwhile)."""
    run = FleetRun(devices=len(chaos.devices))
    node = NodeAddress.parse(chaos.est)
    gate = asyncio.Semaphore(concurrency)
    pending = sorted(faults)
    injections: list[asyncio.Task[None]] = []

    async def inject(name: str, at: int) -> None:
        started = time.perf_counter()
        what = await asyncio.to_thread(INJECT[name], chaos)
        run.faults.append(Injected(name, at, what, time.perf_counter() - started))

    def progressed() -> None:
        run.customized += 1
        while pending and run.customized >= pending[0][0] * run.devices:
            _, name = pending.pop(0)
            injections.append(asyncio.create_task(inject(name, run.customized)))

    async def one(directory: Path) -> None:
        async with gate:
            memory = DeviceMemory.open(directory)
            seen, last, attempt = 0, "", 0
            deadline = time.monotonic() + GIVE_UP_AFTER
            while time.monotonic() < deadline:
                client = ActivatingClient(memory, node, key_mode=KeyMode.SIMPLEENROLL, timeout=30)
                try:
                    await client.activate()
                except ActivationError as exc:
                    kind = failure_kind(exc)
                    run.failures[kind] += 1
                    seen += 1
                    last = exc.message
                    run.said[f"{kind}: {_DIGITS.sub('N', exc.cause.message)[:150]}"] += 1
                    if kind not in RETRYABLE_KINDS:
                        run.fatal.append(f"{directory.name}: {kind}: {exc.message}")
                        return
                    attempt += 1
                    growing = BACKOFF_FIRST * 2 ** min(attempt, 8)
                    backoff = min(BACKOFF_CAP, growing, exc.retry_after or 1)
                    await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                    continue
                run.devices_retried += seen > 0
                progressed()
                return
            run.fatal.append(f"{directory.name}: gave up after {attempt} attempts: {last}")

    started = time.perf_counter()
    await asyncio.gather(*(one(d) for d in chaos.devices))
    await asyncio.gather(*injections)
    run.seconds = time.perf_counter() - started
    return run


# --- the checks ----------------------------------------------------------------------------


@dataclass
class Checks:
    devices: int
    customized_in_register: int
    one_active: int  # devices with exactly one active certificate in the CA store
    active_is_registered: int  # ... and it is the serial the register names
    other_certificates: int  # superseded/revoked rows of the fleet's devices
    other_known: int  # ... that the node's revocation queue or audit trail names
    unknown_certificates: list[str]  # issued, and neither live nor known to the node
    duplicate_serials: int
    audit_verified: bool
    workers_serving: int

    def failures(self) -> list[str]:
        """What is wrong, in words; empty when the run kept every invariant."""
        wrong = []
        for name in ("customized_in_register", "one_active", "active_is_registered"):
            if getattr(self, name) != self.devices:
                wrong.append(f"{name}: {getattr(self, name)} of {self.devices}")
        if self.unknown_certificates:
            wrong.append(f"certificates the node does not know: {self.unknown_certificates[:5]}")
        if self.duplicate_serials:
            wrong.append(f"{self.duplicate_serials} serials issued twice")
        if not self.audit_verified:
            wrong.append("ztpki node audit --verify failed")
        if self.workers_serving != 2:
            wrong.append(f"{self.workers_serving} node workers after the run, not 2")
        return wrong


def check(chaos: ChaosWorld) -> Checks:
    ids = [d.name for d in chaos.devices]
    with psycopg.connect(chaos.node_database) as node:
        register = dict(
            node.execute(
                "SELECT device_id, lower(issued_serial) FROM device"
                " WHERE device_id = ANY(%s) AND state = 'customized'",
                (ids,),
            ).fetchall()
        )
        known = {
            row[0]
            for row in node.execute(
                "SELECT lower(serial) FROM node_revocation WHERE device_id = ANY(%s)"
                " UNION SELECT lower(serial) FROM audit_entry"
                " WHERE device_id = ANY(%s) AND serial IS NOT NULL",
                (ids, ids),
            )
        }
    with psycopg.connect(chaos.ca_database) as ca:
        rows = ca.execute(
            "SELECT device_id, lower(serial), status FROM issued_certificate"
            " WHERE device_id = ANY(%s)",
            (ids,),
        ).fetchall()
        duplicates = ca.execute(
            "SELECT count(*) FROM (SELECT serial FROM issued_certificate"
            " GROUP BY serial HAVING count(*) > 1) AS twice"
        ).fetchone()
    active: dict[str, list[str]] = {}
    others = []
    for device_id, serial, status in rows:
        if status == "active":
            active.setdefault(device_id, []).append(serial)
        else:
            others.append(serial)
    live = {serials[0] for serials in active.values() if len(serials) == 1}
    unknown = [s for s in others if s not in known]
    unknown += [s for serials in active.values() for s in serials if s not in live]
    verify = run_ztpki(
        "node", "audit", "--dir", str(chaos.world.node_dir), "--verify", env=ENV, check=False
    )
    return Checks(
        devices=len(ids),
        customized_in_register=len(register),
        one_active=sum(len(s) == 1 for s in active.values()),
        active_is_registered=sum(
            len(s) == 1 and register.get(d) == s[0] for d, s in active.items()
        ),
        other_certificates=len(others),
        other_known=sum(s in known for s in others),
        unknown_certificates=unknown,
        duplicate_serials=int(duplicates[0]) if duplicates else 0,
        audit_verified=verify.returncode == 0,
        workers_serving=len(child_pids(chaos.world.node.pid)),
    )


def report(run: FleetRun, checks: Checks) -> str:
    """The counts, as a table."""
    rows = [
        ("devices", run.devices),
        ("customized (devices saw success)", run.customized),
        ("seconds", f"{run.seconds:.1f}"),
        ("customized in the register", checks.customized_in_register),
        ("exactly one active certificate", checks.one_active),
        ("  ... the one the register names", checks.active_is_registered),
        ("other certificates of the fleet", checks.other_certificates),
        ("  ... known to the node (revocation queue/audit)", checks.other_known),
        ("certificates the node does not know", len(checks.unknown_certificates)),
        ("serials issued twice", checks.duplicate_serials),
        ("audit chain verifies", "yes" if checks.audit_verified else "NO"),
        ("node workers serving after the run", checks.workers_serving),
        ("devices that retried, then customized", run.devices_retried),
        *((f"failures seen: {kind}", n) for kind, n in sorted(run.failures.items())),
        ("non-retryable failures / gave up", len(run.fatal)),
        *(
            (f"fault {f.name} at {f.at_customized} customized", f"{f.what} ({f.seconds:.1f} s)")
            for f in run.faults
        ),
    ]
    width = max(len(name) for name, _ in rows)
    table = "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
    said = "\n".join(f"  {n:>6}  {what}" for what, n in run.said.most_common(8))
    return f"{table}\nwhat devices were told, most often first:\n{said}"
