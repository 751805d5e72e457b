"""SIGHUP to `node serve`: read node.toml again and apply what a running node can change.

Applied at once, to requests that start after the reload (open connections stay open):

- each EST label's settings (``[ca.LABEL]``: ca_name, the issuing parameters, allow_no_eku,
  superseded_grace_seconds);
- the proxies' entitlement as the proxy listeners read it (``[proxy]`` trusted,
  allow_wide_range, header, fingerprints: a pin removed refuses that proxy's next connection;
  its open connections stay open until they close).

Everything else needs a restart of `node serve`, and a reload that finds it changed says so in
the log and keeps the running value: the labels themselves and their CA chains, the
manufacturers and their trust bundles (the TLS layer's trust store is built once), the
server certificate and key, the CA system and the node's credential, the database, the
limits, the metrics switch, ``[revocation]``, and ``[proxy]`` ca and socket_group. A
node.toml that does not load is refused whole: the node runs on as before. The factory CRLs
are fetched again on every SIGHUP (ztpki.node.factory_crls).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ztpki.errors import ZtpkiError
from ztpki.node.config import NodeConfig
from ztpki.node.enrollment import LoadedLabel

log = logging.getLogger(__name__)

_RELOADED_PROXY = ("trusted", "allow_wide_range", "header", "fingerprints")


@dataclass(frozen=True)
class Reload:
    """The running configuration with every change a reload can apply applied."""

    config: NodeConfig
    applied: tuple[str, ...]  # what changed and now takes effect
    needs_restart: tuple[str, ...]  # what changed and is kept as it was until a restart


def plan_reload(running: NodeConfig, found: NodeConfig) -> Reload:
    applied: list[str] = []
    restart: list[str] = []
    new_labels = {ca.label: ca for ca in found.labels}
    if set(new_labels) != {ca.label for ca in running.labels}:
        restart.append("the EST labels ([ca.LABEL] tables added or removed)")
    labels = []
    for old in running.labels:
        new = new_labels.get(old.label)
        if new is None:
            labels.append(old)
            continue
        if new.chain != old.chain:
            restart.append(f"[ca.{old.label}] chain")
        merged = replace(new, chain=old.chain)
        if merged != old:
            applied.append(f"[ca.{old.label}]")
        labels.append(merged)
    proxy = replace(running.proxy, **{k: getattr(found.proxy, k) for k in _RELOADED_PROXY})
    if proxy != running.proxy:
        applied.append("[proxy] " + ", ".join(_RELOADED_PROXY))
    for name in ("ca", "socket_group"):
        if getattr(found.proxy, name) != getattr(running.proxy, name):
            restart.append(f"[proxy] {name}")
    for item in dataclasses.fields(NodeConfig):
        if item.name in ("labels", "proxy", "directory"):
            continue
        if getattr(found, item.name) != getattr(running, item.name):
            restart.append(_section(item.name))
    config = replace(running, labels=tuple(labels), proxy=proxy)
    return Reload(config, tuple(applied), tuple(restart))


def _section(field_name: str) -> str:
    return {
        "manufacturers": "[manufacturer.NAME] tables",
        "limits": "[limits]",
        "revocation": "[revocation]",
        "crls": "[node] crl",
    }.get(field_name, f"[node] {field_name}")


def reloaded_labels(
    labels: Mapping[str, LoadedLabel], config: NodeConfig
) -> dict[str, LoadedLabel]:
    """The loaded labels with their settings from ``config`` (their chains as loaded)."""
    settings = {ca.label: ca for ca in config.labels}
    return {
        name: LoadedLabel(settings.get(name, loaded.config), loaded.chain)
        for name, loaded in labels.items()
    }


def read_reload(running: NodeConfig, *, who: str) -> Reload | None:
    """Read node.toml again and log what a reload would change; None (logged) when it does
    not load."""
    try:
        found = NodeConfig.load(running.directory)
    except ZtpkiError as exc:
        log.error(
            "SIGHUP (%s): node.toml not reloaded, the node runs on as before: %s", who, exc.message
        )
        return None
    reload = plan_reload(running, found)
    if reload.applied:
        log.info("SIGHUP (%s): reloaded %s", who, "; ".join(reload.applied))
    else:
        log.info("SIGHUP (%s): node.toml reread, nothing to apply", who)
    for item in reload.needs_restart:
        log.warning(
            "SIGHUP (%s): %s changed in node.toml but cannot be reloaded: restart `ztpki node "
            "serve` to apply it",
            who,
            item,
        )
    return reload
