"""Setting the node's ``[proxy]`` table from what the operator typed (`node init`, `node
set-proxy`): every value checked before anything is written, the proxy CA file copied into
the node directory (``proxy/ca.pem``) so the directory alone runs the node."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509

from ztpki.errors import ConfigurationError, MalformedInput
from ztpki.node.config import NodeConfig
from ztpki.node.proxy_config import DEFAULT_PROXY_HEADER, ProxyConfig, parse_network, parse_pin
from ztpki.pki.pem import certificates_pem, fingerprint_sha256, load_certificates_pem
from ztpki.secretfiles import write_public_file

PROXY_CA_FILE = Path("proxy") / "ca.pem"


@dataclass(frozen=True)
class ProxySettings:
    """Proxy options as given; None keeps the current value (``set-proxy``), ``clear`` starts
    from no proxy at all."""

    trusted: tuple[str, ...] | None = None
    allow_wide_range: bool | None = None
    ca: Path | None = None  # a PEM file to copy in
    fingerprints: tuple[str, ...] | None = None
    socket_group: str | None = None
    header: str | None = None
    clear: bool = False

    @property
    def empty(self) -> bool:
        return self == ProxySettings()


@dataclass(frozen=True)
class PreparedProxy:
    """A checked [proxy] table and the proxy CA certificates still to be written."""

    config: ProxyConfig
    ca_certificates: tuple[x509.Certificate, ...] = ()

    def write(self, directory: Path) -> None:
        if self.ca_certificates:
            write_public_file(directory / PROXY_CA_FILE, certificates_pem(self.ca_certificates))


def read_proxy_ca(path: Path) -> list[x509.Certificate]:
    """The certificates of a proxy CA file (--proxy-ca, or [proxy] ca when serving)."""
    try:
        certificates = load_certificates_pem(path.read_bytes())
    except OSError as exc:
        raise ConfigurationError(f"cannot read the proxy CA {path}: {exc.strerror}") from None
    except MalformedInput:
        raise ConfigurationError(f"the proxy CA {path} holds no valid PEM certificate") from None
    return certificates


def prepare_proxy(settings: ProxySettings, current: ProxyConfig | None = None) -> PreparedProxy:
    """The [proxy] table settings make of current; raises before anything is written."""
    base = ProxyConfig() if settings.clear or current is None else current
    allow_wide = (
        base.allow_wide_range if settings.allow_wide_range is None else settings.allow_wide_range
    )
    trusted = base.trusted
    if settings.trusted is not None:
        trusted = tuple(parse_network(t, allow_wide=allow_wide) for t in settings.trusted)
    pins = base.fingerprints
    if settings.fingerprints is not None:
        pins = tuple(dict.fromkeys(parse_pin(p) for p in settings.fingerprints))
    certificates: tuple[x509.Certificate, ...] = ()
    ca = base.ca
    if settings.ca is not None:
        certificates = tuple(read_proxy_ca(settings.ca))
        ca = PROXY_CA_FILE
    config = ProxyConfig(
        trusted=trusted,
        header=settings.header or base.header or DEFAULT_PROXY_HEADER,
        allow_wide_range=allow_wide,
        ca=ca,
        fingerprints=pins,
        socket_group=settings.socket_group or base.socket_group,
    )
    return PreparedProxy(config, certificates)


def set_proxy(config: NodeConfig, settings: ProxySettings) -> NodeConfig:
    """Change the [proxy] table of a loaded node; a running node applies it on restart."""
    prepared = prepare_proxy(settings, config.proxy)
    prepared.write(config.directory)
    updated = replace(config, proxy=prepared.config)
    updated.save()
    return updated


def describe_proxy(config: NodeConfig) -> list[str]:
    """The [proxy] table in sentences, for `node policy`."""
    proxy = config.proxy
    lines = []
    if proxy.trusted:
        wide = " (wide ranges allowed)" if proxy.allow_wide_range else ""
        trusted = ", ".join(str(n) for n in proxy.trusted)
        lines.append(f"trusted proxies: {trusted} (header {proxy.header}){wide}")
    else:
        lines.append("trusted proxies: none (no TCP proxy listener can start)")
    if proxy.ca is None:
        lines.append("proxy authentication: none configured (--proxy-ca)")
    else:
        path = config.path(proxy.ca)
        try:
            names = "; ".join(
                f"{c.subject.rfc4514_string()} sha256:{fingerprint_sha256(c)}"
                for c in load_certificates_pem(path.read_bytes())
            )
        except (OSError, MalformedInput):
            names = f"unreadable file {path}"
        lines.append(f"proxy authentication: TLS client certificate under {names}")
        for pin in proxy.fingerprints:
            lines.append(f"  pinned proxy certificate: sha256:{pin}")
    group = proxy.socket_group or "the node's own group"
    lines.append(f"proxy Unix socket: mode 0660, group {group}")
    return lines
