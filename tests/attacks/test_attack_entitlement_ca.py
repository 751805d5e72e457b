"""Attacks by a registered CA-client that asks for more than it was given (issue 14, §1).

The target is the factory CA system of the deployment (`ztpki ca serve`), reached over real TLS
with CA-client credentials registered by `ztpki ca add-client` with their entitlements: the
loading station (factory and manifests CAs), the customer's node-server client (nodes CA,
localhost and 127.0.0.1), and clients each case registers for itself. Every case expects an
XML `not-authorized` error naming what was refused and nothing else, nothing issued, the
refusal in `ztpki ca refusals`, and the next legitimate request served.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time

import pytest
from cryptography import x509
from tests.attacks.attack_deployment import Deployment
from tests.attacks.attack_report import AttackReport
from tests.attacks.attack_wire import RawTLS
from tests.support.legacy_ca_store import downgrade_ca_store_to_v1

from ztpki.credentials import client_context
from ztpki.protocol.enrollment import (
    EnrollmentAnswer,
    EnrollmentError,
    EnrollmentParameters,
    EnrollmentRequest,
    ErrorCode,
    encode_request,
)
from ztpki.protocol.framing import encode_frame

pytestmark = pytest.mark.timeout(240)
CATEGORY = "entitlement"
_n = itertools.count()


def _id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def _client(d: Deployment, *rights: str) -> str:
    """A new CA-client of the factory system with these `ca add-client` options."""
    name = f"ent-{next(_n)}-{secrets.token_hex(3)}"
    out = ["--out", str(d.root / f"cred-{name}")]
    d.cli("ca", "add-client", "--dir", str(d.factory_dir), "--name", name, *out, *rights,
          system="factory")  # fmt: skip
    return name


def _ask(
    d: Deployment, cred: str, request: EnrollmentRequest
) -> EnrollmentAnswer | EnrollmentError:
    credential = d.credential(cred)
    context = client_context(
        key=credential.key,
        chain=list(credential.chain),
        server_anchors=list(credential.trust_anchors),
    )
    with RawTLS(d.address("factory"), context) as conn:
        conn.send(encode_frame(encode_request(request)))
        answer: EnrollmentAnswer | EnrollmentError = conn.read_frame()
    return answer


def _refusals(d: Deployment) -> list[dict[str, str]]:
    listed = d.cli("ca", "refusals", "--dir", str(d.factory_dir), "--json", system="factory")
    rows: list[dict[str, str]] = json.loads(listed.out)
    return rows


def _refused(d: Deployment, cred: str, request: EnrollmentRequest, *, says: str, case: str) -> str:
    """Ask; expect not-authorized naming ``says``, nothing issued, the refusal recorded, and
    then a legitimate request served. Returns the observation for the report."""
    before = d.issued_count("factory")
    answer = _ask(d, cred, request)
    assert isinstance(answer, EnrollmentError), "the CA system answered with a certificate"
    text = f"XML error {answer.code.value}: {answer.message}"
    d.transcript.add(f"ca {case}", text)
    assert answer.code is ErrorCode.NOT_AUTHORIZED, text
    assert says in answer.message, text
    assert d.issued_count("factory") == before, "the CA system issued a certificate"
    last = _refusals(d)[-1]
    assert last["request_id"] == request.request_id and last["reason"] == answer.message
    control = d.enroll_factory(_id("ctl"))
    assert isinstance(control, EnrollmentAnswer)
    assert d.issued_count("factory") == before + 1
    return f"{text}; nothing issued; refusal recorded; next legitimate request served"


def _record(report: AttackReport, case: str, attack: str, observed: str) -> None:
    report.record(
        case=f"{CATEGORY}/ca-{case}",
        category=CATEGORY,
        attack=attack,
        observed=observed,
        verdict="refused",
    )


def _server(*dns: str, ip: tuple[str, ...] = ()) -> EnrollmentParameters:
    return EnrollmentParameters(dns_names=dns, ip_addresses=ip)


def _customers(d: Deployment) -> tuple[str, str]:
    """Customer X's and customer Y's clients for the nodes CA, each for its own domain."""
    x, y = (_client(d, "--ca", "nodes", "--dns", f"*.{c}.example") for c in "xy")
    return x, y


def _node(kind: str, device: str, dns: str, *, reissue: bool = False) -> EnrollmentRequest:
    return EnrollmentRequest(
        _id(kind), device, ca="nodes", parameters=_server(dns), reissue=reissue
    )


def test_fail_client_uses_a_ca_it_was_not_given(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    """The loading station's client asks the node-server CA for a TLS server certificate."""
    request = EnrollmentRequest(
        _id("atk"), "rogue-node", ca="nodes", parameters=_server("localhost")
    )
    observed = _refused(
        deployment, "cred-line1", request, says="may not use CA 'nodes'", case="other-ca"
    )
    _record(
        attack_report,
        "other-ca",
        "the factory line's CA-client (factory and manifests CAs) asks the nodes CA for a "
        "server certificate for localhost",
        observed,
    )


def test_fail_client_names_a_device_id_outside_its_pattern(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    line = _client(d, "--ca", "factory", "--device-ids", "ACME-*")
    request = EnrollmentRequest(_id("atk"), "OTHERCO-0001")
    observed = _refused(
        d, f"cred-{line}", request, says="may not name device id 'OTHERCO-0001'", case="device-id"
    )
    assert isinstance(_ask(d, f"cred-{line}", EnrollmentRequest(_id("ok"), _id("ACME"))),
                      EnrollmentAnswer)  # fmt: skip
    _record(
        attack_report,
        "device-id",
        "a line client entitled to ACME-* asks for a birth certificate for OTHERCO-0001 "
        "(another manufacturer's id)",
        observed,
    )


@pytest.mark.parametrize(
    ("case", "params", "says", "attack"),
    [
        pytest.param(
            "subject-override",
            EnrollmentParameters(organization="Customer Y Ltd"),
            "Organization 'Customer Y Ltd'",
            "a request sets Organization to another company's name where the CA's policy "
            "fixes O=Acme Devices",
            id="fail-subject-override",
        ),
        pytest.param(
            "rfc822-email",
            EnrollmentParameters(email="ceo@bank.example"),
            "Email may not appear",
            "a request asks for Email ceo@bank.example (an rfc822Name subjectAltName) where "
            "the policy gives no e-mail",
            id="fail-rfc822-email",
        ),
    ],
)
def test_fail_client_sets_a_subject_field_against_the_policy(
    deployment: Deployment,
    attack_report: AttackReport,
    case: str,
    params: EnrollmentParameters,
    says: str,
    attack: str,
) -> None:
    request = EnrollmentRequest(_id("atk"), _id("dev"), parameters=params)
    observed = _refused(deployment, "cred-line1", request, says=says, case=case)
    _record(attack_report, case, attack, observed)


@pytest.mark.parametrize(
    ("case", "params", "says"),
    [
        pytest.param(
            "server-dns", _server("bank.example"), "DNS name 'bank.example'", id="fail-dns"
        ),
        pytest.param("server-ip", _server(ip=("10.9.9.9",)), "IP address '10.9.9.9'", id="fail-ip"),
    ],
)
def test_fail_server_name_outside_the_entitlement(
    deployment: Deployment,
    attack_report: AttackReport,
    case: str,
    params: EnrollmentParameters,
    says: str,
) -> None:
    request = EnrollmentRequest(_id("atk"), _id("node"), ca="nodes", parameters=params)
    observed = _refused(deployment, "cred-customer", request, says=says, case=case)
    # Control: the names it was given are served.
    own = EnrollmentRequest(
        _id("ok"), _id("node"), ca="nodes", parameters=_server("localhost", ip=("127.0.0.1",))
    )
    assert isinstance(_ask(deployment, "cred-customer", own), EnrollmentAnswer)
    _record(
        attack_report,
        case,
        "the customer's node-server client (localhost, 127.0.0.1) asks the nodes CA for "
        + ("the DNS name bank.example" if case == "server-dns" else "the IP address 10.9.9.9"),
        observed,
    )


def test_fail_customer_x_gets_customer_y_node_certificate(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    """The documented set-up: the manufacturer gives each customer a client for the nodes CA."""
    d = deployment
    x, y = _customers(d)
    request = _node("atk", "node-1", "node.y.example")
    observed = _refused(
        d, f"cred-{x}", request, says="may not ask for DNS name 'node.y.example'", case="x-gets-y"
    )
    mine, theirs = (_node("ok", _id("node"), f"node.{c}.example") for c in "xy")
    for cred, asked in ((x, mine), (y, theirs)):
        answer = _ask(d, f"cred-{cred}", asked)
        assert isinstance(answer, EnrollmentAnswer)
        leaf = x509.load_der_x509_certificate(answer.certificate_der)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == list(asked.parameters.dns_names)
    _record(
        attack_report,
        "customer-x-node-cert-for-y",
        "customer X's nodes-CA client (*.x.example) asks for a node server certificate for "
        "customer Y's node.y.example, which Y's devices would trust",
        observed,
    )


def _node_of_y(d: Deployment) -> tuple[str, str, str]:
    """Customers X and Y, and a device id whose node certificate Y obtained."""
    x, y = _customers(d)
    device = _id("node-y")
    owned = _ask(d, f"cred-{y}", _node("ok", device, "node.y.example"))
    assert isinstance(owned, EnrollmentAnswer)
    return x, y, device


def test_fail_reissue_supersedes_another_clients_certificate(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    x, y, device = _node_of_y(d)
    live = d.live_serials("factory", device)
    request = _node("atk", device, "node.x.example", reissue=True)
    observed = _refused(d, f"cred-{x}", request, says="is taken by another", case="reissue")
    assert d.live_serials("factory", device) == live, "the other client's certificate changed"
    again = _node("ok", device, "node.y.example", reissue=True)
    assert isinstance(_ask(d, f"cred-{y}", again), EnrollmentAnswer)  # its owner may
    assert d.live_serials("factory", device) != live
    _record(
        attack_report,
        "reissue-other-client",
        "customer X sets reissue for a device id whose live certificate customer Y obtained, "
        "to supersede (revoke) Y's node certificate",
        observed,
    )


def test_fail_asking_for_another_clients_name_learns_its_serial(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    x, y, device = _node_of_y(d)
    [serial] = d.live_serials("factory", device)
    request = _node("atk", device, "node.x.example")
    observed = _refused(d, f"cred-{x}", request, says="is taken by another", case="name-taken")
    said = _refusals(d)[-1]["reason"]
    assert serial not in said and "reissue" not in said and y not in said, said
    assert d.live_serials("factory", device) == [serial]
    _record(
        attack_report,
        "name-taken-serial-leak",
        "customer X asks for a certificate for a device id whose live certificate customer Y "
        "obtained, to learn that certificate's serial (and be told to supersede it)",
        observed + "; the answer names no serial, no client, no --reissue",
    )


def test_fail_unconstrained_ca_certificate(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    client = _client(d, "--ca", "subcas")
    request = EnrollmentRequest(_id("atk"), "rogue-sub-ca", ca="subcas")
    observed = _refused(
        d, f"cred-{client}", request, says="does not issue CA certificates", case="ca-cert"
    )
    _record(
        attack_report,
        "unconstrained-ca-certificate",
        "a client entitled to a ca-profile CA asks it for a CA certificate (no path length, "
        "no name constraints: a CA for any name)",
        observed,
    )


def test_fail_serve_with_clients_registered_before_entitlements(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    """An old store: every client could use every CA. `ca serve` refuses until each has one."""
    d = deployment
    legacy = d.root / f"legacy-{secrets.token_hex(3)}"
    d.cli("ca", "init", "--dir", str(legacy), "--name", "root", system="factory")
    out = str(d.root / f"cred-{legacy.name}")
    d.cli("ca", "add-client", "--dir", str(legacy), "--name", "old-line", "--out", out,
          "--ca", "root", system="factory")  # fmt: skip
    downgrade_ca_store_to_v1(legacy / "store.sqlite")
    d.cli("ca", "migrate", "--dir", str(legacy), system="factory")
    started = time.monotonic()
    refused = d.operator("ca", "serve", "--dir", str(legacy), "--listen", "127.0.0.1:0",
                         system="factory")  # fmt: skip
    said = " ".join(refused.err.split())
    fix = f"ztpki ca set-client --dir {legacy} --name old-line --ca root"
    assert refused.status == 1 and fix in said, said
    assert time.monotonic() - started < 60
    d.cli("ca", "set-client", "--dir", str(legacy), "--name", "old-line", "--ca", "root",
          system="factory")  # fmt: skip
    listed = d.cli("ca", "list-clients", "--dir", str(legacy), "--json", system="factory")
    [client] = json.loads(listed.out)
    assert client["entitlement"]["cas"] == ["root"]
    attack_report.record(
        case=f"{CATEGORY}/ca-legacy-clients-without-entitlement",
        category=CATEGORY,
        attack="start `ca serve` on a store whose CA-clients were registered before "
        "entitlements (each could use every CA)",
        observed=f"exit {refused.status}: {said[-300:]}; after `ztpki ca set-client` the "
        "client holds exactly the CA named",
        verdict="refused",
    )
