"""`ztpki demo`: the whole factory-to-customer flow as an operator first sees it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from pkilint.bin import lint_pkix_cert
from tests.support.services import run_ztpki, ztpki_argv

from ztpki.pki.profiles import DOCUMENT_SIGNING


def test_ok_demo_customizes_every_device_and_proves_it(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    workdir = tmp_path / "work"
    result = run_ztpki(
        *("demo", "--devices", "5", "--workdir", str(workdir), "--json", str(summary_path)),
        env={"COLUMNS": "80"},
    )
    assert "demo passed" in result.stdout
    # A first impression in an 80-column terminal: nothing wraps, no log line interleaved
    # with the tables (they are in the work directory), the deliberate refusal explained.
    # The paths the user chose are printed whole (to be copied): their length is the user's.
    shown = result.stdout.replace(str(workdir), "WORKDIR").replace(str(summary_path), "JSON")
    assert [line for line in shown.splitlines() if len(line) > 80] == []
    assert " INFO " not in result.stdout + result.stderr
    assert "TLS handshake failed" not in result.stderr
    assert "'TLS handshake failed: client certificate refused' is this proof, not an error" in (
        " ".join(result.stdout.split())
    )
    demo_log = (workdir / "logs" / "demo.log").read_text()
    assert "TLS handshake failed: client certificate refused" in demo_log
    # The node serves the web console; the demo says where and how to log in.
    assert re.search(r"web console: https://127\.0\.0\.1:\d+/", result.stdout)
    assert "log in as demo-operator" in result.stdout
    summary = json.loads(summary_path.read_text())
    assert summary["failed"] == 0
    assert summary["customized"] == 5
    devices = summary["devices"]
    assert len({d["device_id"] for d in devices}) == 5
    assert {d["key_mode"] for d in devices} == {"serverkeygen", "simpleenroll"}
    # Some devices customize over CMP, with both key modes (ir and central key generation).
    assert {d["key_mode"] for d in devices if d["protocol"] == "cmp"} == {
        "serverkeygen",
        "simpleenroll",
    }
    assert {d["protocol"] for d in devices} == {"est", "cmp"}
    for device in devices:
        assert device["ok"], device
        before, after = device["before"], device["after"]
        # The identity really changed hands: factory issuer before, customer issuer after.
        assert "ACME" in before["issuer"] and "Customer" in after["issuer"]
        assert before["serial"] != after["serial"]
        assert before["fingerprint"] != after["fingerprint"]
    assert summary["register"]["customized"] == 5
    # Part of the fleet was given no address: it found the node by DNS-SD (site DNS on
    # 127.0.0.1) and customized like the rest.
    assert "1 of 5 devices get no node address: they find it by DNS-SD" in result.stdout
    assert [d["ok"] for d in devices if d["found_by"] == "dns-sd"] == [True]
    assert summary["customized_by_discovery"] == 1
    assert summary["register"]["issued"] == summary["register"]["listed"] == 0
    assert summary["audit"]["chain_verifies"] is True
    assert summary["audit"]["decisions"]["issued"] >= 5
    proof = summary["proof"]
    assert proof["ok"] is True
    assert proof["greeted_with_new_identity"] == 5
    assert proof["temporary_identity_refused_by_customer_service"] is True
    assert proof["replayed_temporary_certificate_status"] == 403
    # The customer's relying party checks the customer CA's CRL: a blocked device (its
    # certificate on hold) is refused, and greeted again once unblocked.
    revocation = proof["revocation"]
    device = revocation["device_id"]
    assert (
        revocation["blocked_answer"] == f"refused {device}: certificate revoked (certificateHold)"
    )
    assert revocation["unblocked_answer"] == f"hello {device}"
    assert "after node block, the customer service answers: refused" in result.stdout
    assert f"after node unblock, the customer service answers: hello {device}" in result.stdout
    assert set(summary["phases"]) >= {"manufacture", "customization"}
    assert summary["enrollments_per_second"] > 0
    # Every process the demo started is gone (no --keep-running).
    assert not _ztpki_servers_under(workdir, workers=True)
    # Every certificate the demo made passes pkilint's RFC 5280 linter.
    _assert_certificates_lint_clean(workdir)


PEM = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----")


def _demo_certificates(workdir: Path) -> dict[bytes, tuple[str, x509.Certificate]]:
    """Every certificate the demo made, by fingerprint: what the CA systems issued (their
    stores keep every device's temporary and operational certificate, the node's and the
    services' server certificates, the manifest signer's) and every PEM in the work
    directory (CA certificates, CA-client credentials, identity.json with escaped newlines)."""
    found: dict[bytes, tuple[str, x509.Certificate]] = {}

    def add(where: str, certificate: x509.Certificate) -> None:
        found.setdefault(certificate.fingerprint(hashes.SHA256()), (where, certificate))

    for store in workdir.glob("*-ca/store.sqlite"):
        with contextlib.closing(sqlite3.connect(store)) as db:
            for ca_name, serial, der in db.execute(
                "SELECT ca_name, serial, certificate_der FROM issued_certificate"
            ):
                add(f"{store.parent.name} {ca_name} {serial}", x509.load_der_x509_certificate(der))
    for path in workdir.rglob("*"):
        if path.suffix not in {".pem", ".json"} or not path.is_file():
            continue
        text = path.read_text(errors="replace").replace("\\n", "\n")
        for match in PEM.finditer(text):
            add(str(path.relative_to(workdir)), x509.load_pem_x509_certificate(match[0].encode()))
    return found


def _assert_certificates_lint_clean(workdir: Path) -> None:
    certificates = _demo_certificates(workdir)
    # 5 temporary + 5 operational device certificates, the CAs, the node, the services.
    assert len(certificates) >= 25
    # The manifest signer is among them (EKU id-kp-documentSigning, RFC 9336, alone).
    assert any(_has_eku(c, DOCUMENT_SIGNING) for _, c in certificates.values())
    assert _lint_findings(workdir, list(certificates.values())) == {}


def _lint_findings(
    workdir: Path, certificates: list[tuple[str, x509.Certificate]]
) -> dict[str, str]:
    """pkilint's findings at WARNING or above, by where the certificate was found."""
    findings = {}
    for where, certificate in certificates:
        pem = workdir / "lint.pem"
        pem.write_bytes(certificate.public_bytes(Encoding.PEM))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            lint_pkix_cert.main(["lint", "--severity", "WARNING", str(pem)])
        if out.getvalue().strip():
            findings[where] = out.getvalue().strip()
    return findings


def _served_certificate(address: str) -> x509.Certificate:
    """The TLS server certificate a service presents (a CA system's lives only in memory)."""
    shown = subprocess.run(
        ["openssl", "s_client", "-connect", address],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )
    found = PEM.search(shown.stdout)
    assert found, shown.stdout + shown.stderr
    return x509.load_pem_x509_certificate(found[0].encode())


def _has_eku(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> bool:
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return oid in usage


def test_fail_demo_exits_nonzero_and_stops_services_when_a_phase_fails(tmp_path: Path) -> None:
    # A work directory that already holds a CA system makes `ca init` refuse: the demo must
    # report the failing step, exit non-zero, and leave no service running.
    workdir = tmp_path / "work"
    (workdir / "factory-ca" / "cas" / "factory-root").mkdir(parents=True)
    (workdir / "factory-ca" / "cas" / "factory-root" / "ca.pem").write_text("not a certificate")
    result = run_ztpki("demo", "--devices", "2", "--workdir", str(workdir), check=False)
    assert result.returncode != 0
    assert "ca init" in result.stderr + result.stdout
    assert not _ztpki_servers_under(workdir, workers=True)


def _ztpki_servers_under(workdir: Path, *, workers: bool = False) -> list[int]:
    """PIDs of live `ztpki ... serve --dir <workdir>/...` processes: the services, and with
    ``workers`` also the node's worker processes (forked, so with the same command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        text = b" ".join(cmdline).decode(errors="replace")
        if "serve" in text and str(workdir) in text and "ztpki" in text:
            found[int(entry.name)] = ppid
    return [pid for pid, ppid in found.items() if workers or ppid not in found]


def test_ok_keep_running_leaves_services_up_with_commands_that_work(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    result = run_ztpki(
        *("demo", "--devices", "2", "--workdir", str(workdir), "--keep-running", "--wide"),
        "--verbose",
        env={"COLUMNS": "80"},
    )
    try:
        # --verbose: the demo's log lines on the terminal too, not only in logs/demo.log.
        assert "INFO ztpki.credentials: TLS handshake failed: client certificate refused" in (
            result.stderr
        )
        # --wide: issuers and whole fingerprints (64 hex digits, folded in the table).
        assert "before: issuer" in result.stdout and "ACME Factory CA" in result.stdout
        assert re.search(r"│ [0-9a-f]{8,}", result.stdout)
        # The CA systems' TLS server certificates (made in memory when they start) lint clean.
        systems = re.search(
            r"factory CA system on (\S+), customer CA system on (\S+)", result.stdout
        )
        assert systems
        served = [(a, _served_certificate(a)) for a in systems.groups()]
        assert _lint_findings(workdir, served) == {}
        # The web console stays up: a newcomer logs in with what the demo printed.
        _log_in_to_console(workdir, " ".join(result.stdout.split()))
        assert "ztpki node devices --dir node" in result.stdout
        assert "curl" in result.stdout
        pids = _ztpki_servers_under(workdir)
        assert len(pids) == 3  # factory CA system, customer CA system, node
        # The printed commands are the ones an operator will paste: run them all.
        tried = subprocess.run(
            ["bash", str(workdir / "try-me.sh")], capture_output=True, text=True, timeout=120
        )
        assert tried.returncode == 0, tried.stdout + tried.stderr
        assert "audit trail OK" in tried.stdout
        assert "ztpki_node_requests_total" in tried.stdout
        devices = run_ztpki("node", "devices", "--dir", str(workdir / "node"), "--json")
        assert all(d["state"] == "customized" for d in json.loads(devices.stdout))
    finally:
        for pid in _ztpki_servers_under(workdir):
            os.kill(pid, signal.SIGTERM)


def _log_in_to_console(workdir: Path, output: str) -> None:
    """curl, as a browser would: the login form's token, the login, the overview page."""
    found = re.search(r"web console: (https://\S+/) log in as (\S+), password in (\S+);", output)
    assert found, output
    url, name, password_file = found.groups()
    password = (workdir / password_file).read_text().strip()
    jar, trust = workdir / "console-cookies.txt", workdir / "factory-bundle.pem"
    # The node's server certificate chains to the maker's root in factory-bundle.pem.
    curl = ["curl", "-sS", "--cacert", str(trust), "-b", str(jar), "-c", str(jar)]

    def log_in(secret: str) -> subprocess.CompletedProcess[str]:
        subprocess.run([*curl, "-o", "/dev/null", url + "login"], check=True, timeout=30)
        token = next(
            line.split("\t")[-1]
            for line in jar.read_text().splitlines()
            if "__Host-ztpki_login" in line
        )
        form = ["--data-urlencode", f"name={name}", "--data-urlencode", f"password={secret}"]
        form += ["--data-urlencode", f"login_token={token}"]
        return subprocess.run(
            [*curl, "-L", "-w", "\n%{http_code}", *form, url + "login"],
            capture_output=True,
            text=True,
            timeout=30,
        )

    refused = log_in(password + "-wrong")
    assert refused.stdout.endswith("401") and "wrong name or password" in refused.stdout
    page = log_in(password)
    assert page.stdout.endswith("200"), page.stdout[-500:] + page.stderr
    assert "Fleet overview" in page.stdout


def test_ok_ctrl_c_stops_every_process_the_demo_started(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    demo = subprocess.Popen(
        ztpki_argv("demo", "--devices", "3", "--workdir", str(workdir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert demo.stdout is not None
    try:
        # Interrupt once the node is up: all three services are running at that point.
        for line in demo.stdout:
            if "customer node on https://" in line:
                break
        assert len(_ztpki_servers_under(workdir)) == 3
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=60)
        assert demo.returncode != 0
        assert not _ztpki_servers_under(workdir, workers=True)
    finally:
        if demo.poll() is None:
            demo.kill()
        for pid in _ztpki_servers_under(workdir, workers=True):
            os.kill(pid, signal.SIGKILL)
