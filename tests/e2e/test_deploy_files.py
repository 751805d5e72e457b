"""The files in deploy/ cannot rot: nginx accepts the rendered site configuration (which the
proxy end-to-end tests also run, test_node_proxy.py), systemd accepts the units, and every
ztpki option a unit starts the service with is one the installed `ztpki` has.

systemd-analyze verify loads each unit as systemd would (unknown keys, bad values, a missing
executable all print a line: any output fails); the checks in `test_ok_unit_*` add what it
cannot know: our hardening and secrets policy, and that the files agree with each other.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.deploy_units import (
    CA_UNIT,
    INSTALLED,
    NODE_UNIT,
    SYSTEMD,
    Unit,
    unknown_options,
    ztpki_command,
)
from tests.support.nginx import (
    DEPLOY,
    NGINX,
    NODE_SITE,
    RenderError,
    check_nginx_conf,
    listening_socket,
    placeholders,
    render,
    start_nginx,
    stop_nginx,
    write_nginx_conf,
)
from tests.support.ocsp import http_address
from tests.support.proxy_pki import make_proxy_pki
from tests.support.services import run_ztpki, running
from tests.support.shell import sh

UNITS = sorted(SYSTEMD.glob("*.service"))
SYSUSERS = DEPLOY / "sysusers.d" / "ztpki.conf"
DOCS = DEPLOY.parent / "docs" / "deploy.md"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "CapabilityBoundingSet": "",
    "UMask": "0077",
    "KillSignal": "SIGTERM",
    "Restart": "on-failure",
    "User": "ztpki",
}
CREDENTIAL = re.compile(r"\$\{CREDENTIALS_DIRECTORY\}/([A-Za-z0-9_.-]+)")


def service_units() -> Iterator[Unit]:
    for path in UNITS:
        yield Unit.parse(path)


SERVER_CERT = """
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \\
  -addext subjectAltName=DNS:localhost -keyout server.key -out server.pem
"""


def site_values(
    tmp_path: Path,
    hop: str,
    *,
    listen: str = "127.0.0.1:443",
    socket: str = "/run/ztpki/proxy.sock",
) -> dict[str, object]:
    """Real certificate files, as nginx loads them, and a node hop of each kind (`nginx -t`
    binds nothing: any port will do)."""
    pki = make_proxy_pki(tmp_path / "pki")
    sh(SERVER_CERT, pki.directory)
    return {
        "LISTEN": listen,
        "CERT": pki.directory / "server.pem",
        "KEY": pki.directory / "server.key",
        "NODE": f"unix:{socket}" if hop == "unix" else "10.1.0.7:8444",
        "NODE_SCHEME": "http" if hop == "unix" else "https",
        # The socket hop never opens the files of the TLS hop (docs/deploy.md renders them
        # as /dev/null); the TLS hop loads them.
        "PROXY_CERT": "/dev/null" if hop == "unix" else pki.cert,
        "PROXY_KEY": "/dev/null" if hop == "unix" else pki.key,
        "NODE_CA": "/dev/null" if hop == "unix" else pki.ca,
        "NODE_NAME": "node.example",
        "ACCESS_LOG": tmp_path / "nginx" / "access.log",
    }


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make system-deps)")
@pytest.mark.parametrize("hop", ["unix", "tls"], ids=["ok-unix-socket-hop", "ok-tls-hop"])
def test_ok_nginx_accepts_the_rendered_site(tmp_path: Path, hop: str) -> None:
    conf = write_nginx_conf(tmp_path / "nginx", render(NODE_SITE, site_values(tmp_path, hop)))
    assert placeholders(conf) == set()  # every one filled in
    result = check_nginx_conf(conf)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make system-deps)")
def test_fail_nginx_refuses_a_wrong_rendering(tmp_path: Path) -> None:
    """Negative controls: `nginx -t` does read the file (a scheme it cannot proxy to), and
    the TLS hop does load its client certificate."""
    values = site_values(tmp_path, "tls") | {"NODE_SCHEME": "ftp"}
    result = check_nginx_conf(write_nginx_conf(tmp_path / "nginx", render(NODE_SITE, values)))
    assert result.returncode != 0
    assert "invalid URL prefix" in result.stderr, result.stderr
    values = site_values(tmp_path / "2", "tls") | {"PROXY_CERT": "/dev/null"}
    result = check_nginx_conf(write_nginx_conf(tmp_path / "nginx2", render(NODE_SITE, values)))
    assert result.returncode != 0
    assert 'cannot load certificate "/dev/null"' in result.stderr, result.stderr


def test_fail_render_needs_exactly_the_documented_placeholders(tmp_path: Path) -> None:
    values = site_values(tmp_path, "unix")
    documented = set(re.findall(r"@([A-Z_]+)@", NODE_SITE.read_text().split("\n\n", 1)[0]))
    assert placeholders(NODE_SITE) == set(values)
    assert placeholders(NODE_SITE) <= documented  # each one explained in the file's header
    with pytest.raises(RenderError, match=r"no value for \['NODE_NAME'\]"):
        render(NODE_SITE, {k: v for k, v in values.items() if k != "NODE_NAME"})
    with pytest.raises(RenderError, match=r"no placeholder for \['BACKEND'\]"):
        render(NODE_SITE, values | {"BACKEND": "x"})


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make system-deps)")
def test_ok_node_down_is_503_with_retry_after_and_the_log_keeps_no_certificate(
    tmp_path: Path,
) -> None:
    """The node not listening (a restart, an upgrade): devices get 503 and Retry-After, not
    502. The access log names the client by subject, never with its certificate; the node's
    other paths (/metrics) are not reachable through nginx."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    values = site_values(
        tmp_path, "unix", listen=f"127.0.0.1:{port}", socket=str(tmp_path / "absent.sock")
    )
    nginx = start_nginx(write_nginx_conf(tmp_path / "nginx", render(NODE_SITE, values)), [sock])
    pki = tmp_path / "pki"
    curl = (
        f"curl -sS --max-time 30 --cacert server.pem --cert nginx-client.pem "
        f"--key nginx-client.key -D headers.txt -o body.txt -w '%{{http_code}}' "
        f"--resolve localhost:{port}:127.0.0.1 https://localhost:{port}"
    )
    try:
        est = sh(f"{curl}/.well-known/est/cacerts", pki)
        headers = (pki / "headers.txt").read_text().lower()
        body = (pki / "body.txt").read_text()
        metrics = sh(f"{curl}/metrics", pki)
    finally:
        stop_nginx(nginx)
    assert est.stdout == "503", est.stdout
    assert "retry-after: 30" in headers
    assert body == "the enrollment service is unavailable: retry later\n"
    assert metrics.stdout == "404"
    log = values["ACCESS_LOG"].read_text()  # type: ignore[attr-defined]
    lines = log.splitlines()
    assert len(lines) == 2 and '"GET /.well-known/est/cacerts HTTP/1.1" 503' in lines[0]
    # optional_no_ca: nginx holds no CA to verify with (the node does), so never SUCCESS.
    assert 'client="CN=nginx-1"' in lines[0] and "client_verify=FAILED:" in lines[0]
    assert "BEGIN" not in log and "%2D" not in log.upper()


def test_ok_access_log_holds_no_secret() -> None:
    """The log format names the client (its subject and fingerprint), never the certificate
    header, a body or a query string."""
    fmt = re.search(r"log_format ztpki_node (.*?);", NODE_SITE.read_text(), re.DOTALL)
    assert fmt is not None
    for variable in ("$ssl_client_s_dn", "$ssl_client_fingerprint", "$status"):
        assert variable in fmt.group(1)
    logged = set(re.findall(r"\$[a-z_0-9]+", fmt.group(1)))
    secret = {"$request_body", "$ssl_client_escaped_cert", "$ssl_client_cert"}
    secret |= {"$ssl_client_raw_cert", "$args", "$query_string", "$request_uri", "$request"}
    assert not logged & secret
    assert not [v for v in logged if v.startswith(("$http_", "$arg_", "$cookie_"))]
    assert "access_log @ACCESS_LOG@ ztpki_node;" in NODE_SITE.read_text()


def test_ok_every_unit_option_exists() -> None:
    """Every ztpki option of an ExecStart is one `ztpki ... --help` lists (PENDING: options
    other branches of issue 16 add, excused only while absent)."""
    checked = 0
    for unit in service_units():
        argv = unit.exec_start
        if Path(argv[0]).name != "ztpki":
            continue
        assert argv[0] == INSTALLED, unit.path.name
        assert unknown_options(argv) == [], unit.path.name
        checked += len(ztpki_command(argv)[1])
    assert checked >= 8
    # Negative controls: the check tells a real option and command from made-up ones.
    assert unknown_options([INSTALLED, "node", "serve", "--dir", "d", "--no-such-option"]) == [
        "--no-such-option"
    ]
    assert unknown_options([INSTALLED, "node", "no-such-command", "--dir", "d"]) == [
        "(no command `ztpki node no-such-command`)"
    ]


def shell_commands(markdown: str) -> Iterator[list[str]]:
    """The ztpki command lines of the ```sh blocks of a page (continued lines joined, each
    cut at a redirection, pipe or list operator)."""
    for block in re.findall(r"```sh\n(.*?)```", markdown, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            argv: list[str] = []
            for token in [*lexer, ";"]:
                if token and set(token) <= set("&|;<>()"):
                    if argv[:1] == ["sudo"]:  # sudo -u ztpki -H COMMAND
                        argv = argv[4:]
                    if argv and Path(argv[0]).name == "ztpki":
                        yield argv
                    argv = []
                else:
                    argv.append(token)


def test_ok_every_documented_command_exists() -> None:
    """The ztpki commands docs/deploy.md tells operators to type use options that exist."""
    commands = list(shell_commands(DOCS.read_text()))
    assert len(commands) >= 5
    for argv in commands:
        assert unknown_options(argv) == [], argv


def test_ok_unit_variables_have_defaults() -> None:
    """A unit starts without its optional environment file: every ${VAR} of ExecStart other
    than systemd's own has an Environment= default in the unit."""
    for unit in service_units():
        used = set(re.findall(r"\$\{([A-Z_]+)\}", unit.one("ExecStart"))) - {
            "CREDENTIALS_DIRECTORY"
        }
        defaults = {line.partition("=")[0] for line in unit.values("Environment")}
        assert used and used <= defaults, (unit.path.name, used - defaults)
        assert unit.values("EnvironmentFile")[0].startswith("-/etc/ztpki/")


def test_ok_unit_secrets_come_from_credentials_only() -> None:
    """Every secret a ztpki command reads is a file systemd hands over (LoadCredential), never
    an Environment= line, and every credential it names is loaded."""
    for unit in service_units():
        loaded = {v.split(":", 1)[0] for v in unit.values("LoadCredential")}
        named = set(CREDENTIAL.findall(unit.one("ExecStart")))
        assert named and named <= loaded, (unit.path.name, named, loaded)
        assert any("passphrase" in name for name in named)
        for line in unit.values("Environment"):
            name, _, value = line.partition("=")
            assert not re.search("PASSPHRASE|PASSWORD|SECRET", name), line
            assert "@" not in value and "://" not in value, line  # no database URL inline
        # The database password is the service user's (its pgpass file), never a URL's.
        assert "PGPASSFILE=/var/lib/ztpki/.pgpass" in unit.values("Environment")


def test_ok_unit_hardening_and_writable_directory() -> None:
    for unit in service_units():
        for key, value in HARDENING.items():
            assert unit.values(key) == [value], (unit.path.name, key)
        argv = unit.exec_start
        directory = argv[argv.index("--dir") + 1]
        # Writable: the service's own directory, and nothing else.
        assert unit.values("ReadWritePaths") == [directory], unit.path.name
        assert f"/var/lib/{unit.one('StateDirectory')}" == directory
        assert int(unit.one("TimeoutStopSec")) >= 60  # a drain outlasts an issuance
        assert unit.one("StateDirectoryMode") == "0700"


def test_ok_ca_unit_command_line_serves_enrollment_and_crls(tmp_path: Path) -> None:
    """ztpki-ca@.service's ExecStart, as systemd would run it for instance `customer` (paths
    and listeners mapped to loopback, the passphrase only in its credentials directory),
    starts a CA system that publishes its CRL over HTTP; without the credential it does not
    start. (The node's unit line runs every proxy end-to-end test: proxy_fixtures.py.)"""
    ca_dir = tmp_path / "ca" / "customer"
    passphrase = "deploy-unit-ca-passphrase"
    run_ztpki(
        "ca", "init", "--dir", str(ca_dir), "--name", "customer", "--default",
        env={"ZTPKI_CA_PASSPHRASE": passphrase},
    )  # fmt: skip
    unit = Unit.parse(CA_UNIT)
    paths = {"/var/lib/ztpki/ca/%i": str(ca_dir)}
    listen = {"ZTPKI_CA_LISTEN": "127.0.0.1:0", "ZTPKI_CA_HTTP_LISTEN": "127.0.0.1:0"}
    no_env = {"ZTPKI_CA_PASSPHRASE": ""}
    empty = tmp_path / "no-credentials"
    empty.mkdir()
    refused = run_ztpki(*unit.command(paths, listen, empty), env=no_env, check=False)
    assert refused.returncode != 0 and "cannot read passphrase file" in refused.stderr
    credentials = unit.write_credentials(tmp_path / "credentials", {"ca-passphrase": passphrase})
    with running(
        unit.command(paths, listen, credentials), log_path=tmp_path / "ca.log", env=no_env
    ) as service:
        http = http_address(service)
        result = sh(
            f"curl -sS --fail -o crl.der http://{http[0]}:{http[1]}/crl/customer.crl && "
            "openssl crl -inform DER -in crl.der -noout -issuer",
            tmp_path,
        )
    assert "CN = customer" in result.stdout or "CN=customer" in result.stdout, result.stdout


def test_ok_node_socket_is_the_one_nginx_is_told() -> None:
    node = Unit.parse(NODE_UNIT)
    argv = node.exec_start
    socket = argv[argv.index("--proxy-listen") + 1]
    assert socket == f"unix:/run/{node.one('RuntimeDirectory')}/proxy.sock"
    assert f"unix:{socket.removeprefix('unix:')}" in NODE_SITE.read_text()  # the example
    assert node.values("SupplementaryGroups") == ["ztpki-proxy"]
    # systemd applies the filters in order: chown (the socket's group) outlives ~@privileged.
    assert node.values("SystemCallFilter")[-2:] == ["~@privileged @resources", "@chown"]
    assert node.one("ExecReload") == "/bin/kill -HUP $MAINPID"
    # systemd's stop timeout outlasts the drain and the supervisor's 10 s grace after it.
    drain = float(argv[argv.index("--drain-timeout") + 1])
    assert int(node.one("TimeoutStopSec")) > drain + 10
    users = SYSUSERS.read_text()
    assert re.search(r"^g\s+ztpki-proxy\s", users, re.MULTILINE)
    assert re.search(r"^m\s+www-data\s+ztpki-proxy\s*$", users, re.MULTILINE)
    assert re.search(r"^u\s+ztpki\s", users, re.MULTILINE)


def staged_units(root: Path) -> list[str]:
    """The units under root as systemd would load them: ztpki installed where it is here,
    templates as an instance, nginx.service with our drop-in."""
    here = str(Path(sys.executable).with_name("ztpki"))
    names = []
    for unit in UNITS:
        name = unit.name.replace("@.", "@customer.")
        (root / name).write_text(unit.read_text().replace(INSTALLED, here))
        names.append(name)
    for dropin in SYSTEMD.glob("*.service.d"):
        shutil.copytree(dropin, root / dropin.name)
        base = dropin.name.removesuffix(".d")
        shutil.copy(Path("/lib/systemd/system") / base, root / base)
        names.append(base)
    return names


def systemd_verify(root: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None, "systemd-analyze is missing: make system-deps"
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *names],
        cwd=root,
        env={"SYSTEMD_UNIT_PATH": f"{root}:", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ok_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    names = staged_units(tmp_path)
    assert {"ztpki-node.service", "ztpki-ca@customer.service", "nginx.service"} <= set(names)
    result = systemd_verify(tmp_path, names)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_fail_systemd_analyze_reports_what_it_ignores(tmp_path: Path) -> None:
    """Negative control: systemd ignores an unknown key with only a warning, which the test
    above counts as a failure."""
    names = staged_units(tmp_path)
    dropin = tmp_path / "nginx.service.d" / "ztpki-node.conf"
    dropin.write_text(dropin.read_text() + "LimitNOFILES=1\n")
    result = systemd_verify(tmp_path, names)
    assert "Unknown key 'LimitNOFILES'" in result.stderr, result.stderr


def test_ok_sysusers_file_is_accepted(tmp_path: Path) -> None:
    tool = shutil.which("systemd-sysusers")
    assert tool is not None, "systemd-sysusers is missing: make system-deps"
    result = subprocess.run(
        [tool, "--dry-run", "--root", str(tmp_path), str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Creating user 'ztpki'" in result.stdout + result.stderr


def test_ok_deploy_docs_name_the_files() -> None:
    text = DOCS.read_text()
    for path in [NODE_SITE, SYSUSERS, *UNITS, *SYSTEMD.glob("*.service.d/*.conf")]:
        assert str(path.relative_to(DEPLOY.parent)) in text, path
