"""benchmarks/fleet.py's database side: the configurations it compares (SQLite, one worker;
PostgreSQL, N workers), a durable PostgreSQL cluster of its own, and what each database did
per customization (the node's /metrics counters, PostgreSQL's own statistics)."""

from __future__ import annotations

import http.client
import os
import re
import ssl
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.e2e.device_fixtures import World, ztpki
from tests.support.postgres import PostgresCluster

from ztpki.device import DeviceMemory
from ztpki.device.communication import node_context

# prometheus_client writes a counter's value as a float ("12.0").
_SERIES = re.compile(r"^ztpki_database_(round_trips|commits)_total\{([^}]*)\} ([0-9.e+]+)$", re.M)


@dataclass
class Configuration:
    """One customer CA system + node pair of the world, and the database they keep."""

    label: str
    engine: str  # sqlite | postgresql
    node: str  # service names in the World
    ca: str
    workers: int
    cluster: PostgresCluster | None = None
    databases: dict[str, str] = field(default_factory=dict)  # role -> PostgreSQL database name

    def server_pids(self, world: World) -> dict[str, int]:
        pids = {"node": world.services[self.node].process.pid,
                "ca": world.services[self.ca].process.pid}  # fmt: skip
        if self.cluster is not None:
            pids["postgres"] = self.cluster.postmaster_pid()
        return pids


def node_knows_workers() -> bool:
    """Whether this tree's `node serve` takes --workers (another branch adds it)."""
    return "--workers" in ztpki("node", "serve", "--help").stdout


def start_postgres(*, statements: bool, socket: bool = True) -> PostgresCluster:
    """A cluster run as an operator runs one: fsync and full-page writes on; reached over its
    Unix socket (PostgreSQL on the node's machine), or ``socket=False`` over TCP."""
    return PostgresCluster(durable=True, statements=statements, socket=socket)


def add_postgres_configuration(
    world: World, cluster: PostgresCluster, *, workers: int
) -> Configuration:
    ca_url, node_url = cluster.fresh_database("fleet_ca"), cluster.fresh_database("fleet_node")
    serve = ["--workers", str(workers)] if workers > 1 else []
    world.add_customer("C2", "N2", ca_database=ca_url, node_database=node_url, serve=serve)
    label = f"postgresql, {workers} worker{'s' if workers > 1 else ''}"
    return Configuration(
        label, "postgresql", "N2", "C2", workers, cluster,
        {"ca": _name(ca_url), "node": _name(node_url)},
    )  # fmt: skip


def _name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


# --- what the databases did --------------------------------------------------------------


class Scraper:
    """Reads the node's /metrics with a device identity that is never customized."""

    def __init__(self, world: World, device_id: str) -> None:
        memory = DeviceMemory.open(world.device(device_id))
        identity = memory.identity()
        assert identity.certificate is not None
        self.context = node_context(
            key=identity.private_key,
            chain=[identity.certificate, *identity.ca_certificates[:-1]],
            anchors=memory.trust_anchors(),
        )

    def database(self, address: str) -> dict[str, int]:
        """``round_trips``, ``commits_write``, ``commits_read`` of the node's database."""
        host, port = address.rsplit(":", 1)
        connection = http.client.HTTPSConnection(host, int(port), context=self.context)
        try:
            connection.request("GET", "/metrics")
            answer = connection.getresponse()
            text = answer.read().decode()
        except (OSError, ssl.SSLError) as exc:
            raise RuntimeError(f"could not read the node's /metrics: {exc}") from exc
        finally:
            connection.close()
        if answer.status != 200:
            raise RuntimeError(f"the node's /metrics answered {answer.status}")
        figures: dict[str, int] = {}
        for name, labels, value in _SERIES.findall(text):
            kind = re.search(r'kind="(\w+)"', labels)
            key = name if kind is None else f"{name}_{kind.group(1)}"
            figures[key] = figures.get(key, 0) + int(float(value))
        return figures


def postgres_statistics(configuration: Configuration) -> dict[str, dict[str, int]]:
    """Per role (node, ca): PostgreSQL's committed transactions (pg_stat_database) and, with
    pg_stat_statements loaded, the statements it ran."""
    cluster = configuration.cluster
    if cluster is None:
        return {}
    out: dict[str, dict[str, int]] = {}
    with cluster.admin() as conn:
        # Statistics reach the views when a backend reports them (at most once a second, and
        # at the end of a transaction); a fresh snapshot of them is asked for here.
        conn.execute("SELECT pg_stat_clear_snapshot()")
        for role, name in configuration.databases.items():
            # sessions: connections opened (PostgreSQL 14+); each forks a backend and runs
            # SCRAM, CPU that a run opening connections counts.
            row = conn.execute(
                "SELECT xact_commit, sessions FROM pg_stat_database WHERE datname = %s", (name,)
            ).fetchone()
            out[role] = {"xact_commit": int(row[0]) if row else 0,
                         "sessions": int(row[1]) if row else 0}  # fmt: skip
            if cluster.statements:
                calls = conn.execute(
                    "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
                    "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s",
                    (name,),
                ).fetchone()
                out[role]["statements"] = int(calls[0]) if calls else 0
    return out


def enable_statements(configuration: Configuration) -> None:
    if configuration.cluster is not None and configuration.cluster.statements:
        with configuration.cluster.admin() as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


def top_statements(configuration: Configuration, limit: int = 25) -> list[tuple[str, int, float]]:
    """(role: query, calls, total ms) of the statements PostgreSQL spent most time on."""
    cluster = configuration.cluster
    if cluster is None or not cluster.statements:
        return []
    names = {name: role for role, name in configuration.databases.items()}
    with cluster.admin() as conn:
        rows = conn.execute(
            "SELECT d.datname, s.query, s.calls, s.total_exec_time FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = ANY(%s) "
            "ORDER BY s.calls DESC LIMIT %s",
            (list(names), limit),
        ).fetchall()
    return [(f"{names[str(d)]}: {' '.join(str(q).split())}", int(c), float(t))
            for d, q, c, t in rows]  # fmt: skip


def postgres_processes(cluster: PostgresCluster) -> dict[str, float]:
    """CPU seconds (own + reaped children) per kind of PostgreSQL process (``postgres:
    walwriter``, ``postgres: ztpki fleet_node_1 ...``: a backend of that database)."""
    from pathlib import Path

    root = cluster.postmaster_pid()
    out: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(entry.name) != root and int(fields[1]) != root:
            continue
        kind = " ".join(title.split()[:4]) if "ztpki" in title else " ".join(title.split()[:3])
        ticks = sum(int(f) for f in fields[11:15])
        out[kind] = out.get(kind, 0.0) + ticks / os.sysconf("SC_CLK_TCK")
    return out


def difference(
    after: Mapping[str, Mapping[str, int]], before: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, int]]:
    return {
        role: {key: value - before.get(role, {}).get(key, 0) for key, value in figures.items()}
        for role, figures in after.items()
    }


def postgres_version(cluster: PostgresCluster) -> str:
    return subprocess.run(
        [str(cluster.bindir / "postgres"), "--version"], capture_output=True, text=True
    ).stdout.strip()


def per(figures: Mapping[str, int], keys: Sequence[str], done: int) -> float:
    return sum(figures.get(k, 0) for k in keys) / max(1, done)
