"""Untrusted text on its way to a log line, the audit trail and the operator's terminal, and
strangers trying to grow the audit trail or flood the log.

A listed device holds a genuine temporary certificate, so whatever its CSR says reaches the
node: a subject with a newline and a forged log line, terminal escape sequences (OSC, CSI,
a bidirectional override) and rich markup. The node must quote it wherever it enters a
message, and `ztpki node audit` / `node devices` must print it as text. Parties without a
verified identity (no client certificate, a certificate from an unknown CA, a certificate
that names no device) are counted and logged at a bounded rate, never audited.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from tests.attacks.attack_deployment import Deployment, DeviceUnderTest, now, wait_until
from tests.attacks.attack_report import AttackReport
from tests.attacks.attack_wire import Observed, https_context, https_request

from ztpki.demo.processes import ztpki_argv
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, PrivateKey, generate_private_key, signature_hash
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.est import encode_csr

pytestmark = pytest.mark.timeout(240)

CATEGORY = "untrusted-text"
FAKE_LINE = "2020-01-01 00:00:00,000 INFO ztpki.node.enrollment: issued serial=01 device=ACME"
TERMINAL = "[/bold]\x1b]0;pwned\x07\x9b2J\u202e[red]evil"
# What a terminal would act on; none of it may reach a log line, a row or the screen raw.
OBEYED = ("\x1b", "\x07", "\x9b", "\u202e")
FLOOD = 30  # per kind of stranger; well over the log's burst of 10 lines per reason
LOG_BURST, LOG_INTERVAL = 10, 60.0  # ztpki.throttle.LogThrottle's defaults
UNAUTHENTICATED = (
    "no verified identity: counted in ztpki_node_unauthenticated_refusals_total and logged "
    "at a bounded rate, never audited, so strangers cannot grow the audit trail"
)


def _record(report: AttackReport, case: str, attack: str, *observed: str) -> None:
    report.record(
        case=f"{CATEGORY}/{case}",
        category=CATEGORY,
        attack=attack,
        observed="; ".join(observed),
        verdict="refused",
    )


def _hostile_csr(key: PrivateKey, text: str) -> bytes:
    """A CSR signed by the device's own key whose subject serialNumber (where the node reads
    the device id) is text, as a UTF8String."""
    name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, text, _type=_ASN1Type.UTF8String)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, signature_hash(key))
    return encode_csr(csr)


def _operator(d: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    """A `ztpki` command in its own process with a wide terminal: no table cell is folded,
    so what it printed can be searched whole."""
    done = subprocess.run(
        ztpki_argv(*args),
        capture_output=True,
        text=True,
        env={**os.environ, **d.env, "COLUMNS": "1000"},
        timeout=120,
    )
    d.transcript.add(f"ztpki {' '.join(args[:2])}", done.stdout + done.stderr)
    return done


def _assert_not_raw(where: str, text: str) -> None:
    found = [c for c in OBEYED if c in text]
    assert not found, f"{where} holds raw {found!r}: {text!r}"


def _refused_as_text(d: Deployment, device: DeviceUnderTest, text: str) -> tuple[str, str, str]:
    """Send the hostile CSR; the answer, the new audit row's reason and the node's log."""
    before, mark = d.snapshot(), d.log_mark()
    obs = d.est(
        "simpleenroll",
        key=device.key,
        chain=[device.certificate],
        body=_hostile_csr(device.key, text),
    )
    assert obs.status == 403 and "subject mismatch" in obs.text, obs.summary()
    checked = d.check_unchanged(before, audited=[(device.device_id, "refused", "subject mismatch")])
    (row,) = d.audit_since(before.audit_seq)
    assert wait_until(lambda: "subject mismatch" in d.logged_since(mark), timeout=10)
    logged = d.logged_since(mark)
    for where, value in (("the answer", obs.text), ("the audit row", row.reason), ("log", logged)):
        _assert_not_raw(where, value)
    assert "\n" not in row.reason and row.reason.isascii(), row.reason
    return obs.summary(), checked, logged


def test_fail_csr_subject_forges_a_log_line(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    answer, checked, logged = _refused_as_text(d, device, f"{device.device_id}\n{FAKE_LINE}")
    forged = [line for line in logged.splitlines() if line.startswith(FAKE_LINE[:30])]
    assert not forged, forged
    assert f"\\n{FAKE_LINE}" in logged, logged  # the newline is shown, on the same line
    _record(
        attack_report,
        "csr-subject-forged-log-line",
        "simpleenroll by a listed device (genuine temporary certificate) whose CSR subject "
        "serialNumber is its own id, a newline and a forged 'issued' log line",
        answer,
        "the node log holds the subject quoted on one line (\\n shown), no forged line",
        checked,
        d.serve_next_device(),
    )


def test_fail_csr_subject_with_terminal_escapes_and_markup(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    answer, checked, logged = _refused_as_text(d, device, TERMINAL)
    assert "\\x1b]0;pwned\\x07" in logged, logged
    node = str(d.node_dir)
    audit = _operator(d, "node", "audit", "--dir", node, "--device", device.device_id)
    assert audit.returncode == 0, audit.stderr
    _assert_not_raw("`ztpki node audit`", audit.stdout + audit.stderr)
    # The markup is printed as the text it is, the escapes as visible backslash sequences.
    assert "[/bold]" in audit.stdout and "\\x1b]0;pwned\\x07\\x9b2J\\u202e[red]evil" in audit.stdout
    devices = _operator(d, "node", "devices", "--dir", node)
    assert devices.returncode == 0 and device.device_id in devices.stdout, devices.stderr
    _record(
        attack_report,
        "csr-subject-terminal-escapes",
        "simpleenroll by a listed device whose CSR subject holds an OSC title sequence, a C1 "
        "CSI, a bidi override and rich markup ([/bold], [red]); then `ztpki node audit` and "
        "`ztpki node devices`",
        answer,
        "answer, audit row and log line hold the subject as a quoted ASCII literal; "
        f"`node audit` exits {audit.returncode} and prints [/bold] and \\x1b]0;pwned\\x07 as "
        f"text; `node devices` exits {devices.returncode}",
        checked,
        d.serve_next_device(),
    )


# ----------------------------------------------------------------------------- strangers


def _metrics(d: Deployment) -> dict[str, int]:
    series = re.findall(
        r'^ztpki_node_unauthenticated_refusals_total\{reason="([a-z-]+)"\} ([0-9.]+)$',
        _scrape(d),
        re.MULTILINE,
    )
    return {reason: int(float(value)) for reason, value in series}


def _scrape(d: Deployment) -> str:
    context = https_context(key=None, chain=[], anchors=d.node_anchors)
    obs = https_request(d.node_address, "GET", "/metrics", context=context)
    assert obs.status == 200, obs.summary()
    return obs.body.decode()


def _workers(d: Deployment) -> int:
    found = re.search(r"^ztpki_node_workers ([0-9.]+)", _scrape(d), re.MULTILINE)
    return int(float(found.group(1))) if found else 1


def _unknown_ca_certificate(device: DeviceUnderTest) -> tuple[PrivateKey, list[x509.Certificate]]:
    """A certificate for a listed device from a CA the node was never given (root withheld)."""
    root_key = generate_private_key(KeySpec.EC_P256)
    subject = build_subject("Stranger Root", SubjectFields(), serial_number=None)
    root = create_self_signed_ca(root_key, subject, now=now(), validity=timedelta(days=30))
    stranger = CertificateAuthority("stranger", root_key, root)
    return _issue(stranger, device.certificate.subject)


def _issue(
    authority: CertificateAuthority, subject: x509.Name
) -> tuple[PrivateKey, list[x509.Certificate]]:
    key = generate_private_key(KeySpec.EC_P256)
    start = now()
    grant = IssuanceGrant(
        subject=subject,
        profile=CertificateProfile.DEVICE,
        not_before=start,
        not_after=start.replace(year=start.year + 1),
    )
    return key, [authority.issue(key.public_key(), grant)]


def _flood(count: int, send: Callable[[], Observed], expect: Callable[[Observed], bool]) -> str:
    answers = [send() for _ in range(count)]
    odd = [a.summary() for a in answers if not expect(a)]
    assert not odd, odd[:3]
    return answers[0].summary()


def test_fail_unauthenticated_flood_leaves_the_audit_trail_alone(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    csr = _hostile_csr(device.key, device.device_id)
    stranger_key, stranger_chain = _unknown_ca_certificate(device)
    # A certificate the real factory CA signed (it passes TLS) whose subject names no device
    # id but a forged log line: refused by the authentication module, quoted if ever shown.
    nameless_subject = x509.Name(
        [
            x509.NameAttribute(
                NameOID.SERIAL_NUMBER, f"x\n{FAKE_LINE}{TERMINAL}", _type=_ASN1Type.UTF8String
            )
        ]
    )
    nameless_key, nameless_chain = _issue(d.authority("factory", "factory"), nameless_subject)
    before, mark, counted = d.snapshot(), d.log_mark(), _metrics(d)
    started = time.monotonic()
    anonymous = _flood(
        FLOOD,
        lambda: d.est("simpleenroll", key=None, chain=[], body=csr),
        lambda o: o.status == 401,
    )
    foreign = _flood(
        FLOOD,
        lambda: d.est("simpleenroll", key=stranger_key, chain=stranger_chain, body=csr),
        lambda o: o.tls_refused,
    )
    nameless = _flood(
        FLOOD,
        lambda: d.est("simpleenroll", key=nameless_key, chain=nameless_chain, body=csr),
        lambda o: o.status == 401 and "names no device id" in o.text,
    )
    elapsed = time.monotonic() - started
    expected = {
        reason: counted.get(reason, 0) + FLOOD
        for reason in ("no-client-certificate", "tls-handshake", "certificate-refused")
    }

    def all_counted() -> bool:
        now_counted = _metrics(d)
        return all(now_counted.get(r, 0) >= n for r, n in expected.items())

    assert wait_until(all_counted, timeout=15), (_metrics(d), expected)
    after = _metrics(d)
    assert {r: after[r] for r in expected} == expected, (after, expected)
    checked = d.check_unchanged(before, unaudited_because=UNAUTHENTICATED)
    assert wait_until(lambda: "are suppressed" in d.logged_since(mark), timeout=10)
    logged = d.logged_since(mark)
    _assert_not_raw("the node log", logged)
    assert FAKE_LINE not in logged
    lines = [
        line
        for line in logged.splitlines()
        if "unauthenticated client" in line
        or "TLS handshake failed" in line
        or "are suppressed" in line
    ]
    # Per reason and node worker (each throttles its own log): the burst, one line saying
    # more are suppressed, and what the bucket refills while the flood lasts (plus one for a
    # refill caught mid-way).
    refill = elapsed * LOG_BURST / LOG_INTERVAL + 1
    bound = int(_workers(d) * 3 * (LOG_BURST + 1 + refill))
    assert len(lines) <= bound, (len(lines), bound, lines)
    _record(
        attack_report,
        "unauthenticated-flood",
        f"{3 * FLOOD} simpleenroll requests from strangers: {FLOOD} without a client "
        f"certificate, {FLOOD} with a certificate from an unknown CA, {FLOOD} with a factory "
        "certificate whose subject names no device but a forged log line and escapes",
        f"each: {anonymous}; {foreign}; {nameless}",
        f"ztpki_node_unauthenticated_refusals_total grew by {FLOOD} for each of "
        "no-client-certificate, tls-handshake and certificate-refused; "
        # Counts of log lines vary with timing: the sentence says the bound, not the count.
        f"the log holds at most {LOG_BURST} lines per reason and minute, then 'more lines "
        "like the last one are suppressed'",
        checked,
        d.serve_next_device(),
    )
