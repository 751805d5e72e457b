"""Each CA-client may ask for exactly what it was given, over real TLS against `ztpki ca serve`.

One CA system, built with the CLI once per module: root, factory (device profile, subject
fixed to O=Acme), nodes (server profile) and sub (ca profile, whose policy issues no CA
certificate). Its clients: line1 (factory, ids ACME-*), custx and custy (nodes, each its
own DNS names and IP range). Every refusal is paired with a served control, and shows nothing
issued and the refusal recorded (`ztpki ca refusals`).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.casystem_fixtures import (
    CASystemUnderTest,
    leaf_of,
    stopped_afterwards,
    ztpki,
)
from tests.e2e.casystem_fixtures import (
    RawConnection as Raw,
)
from tests.support.legacy_ca_store import downgrade_ca_store_to_v1

from ztpki.casystem.service import ServiceLimits
from ztpki.errors import NotAuthorized
from ztpki.protocol.enrollment import (
    EnrollmentAnswer,
    EnrollmentError,
    EnrollmentParameters,
    EnrollmentRequest,
    ErrorCode,
)
from ztpki.store.sqlite_db import stored_schema_version

pytestmark = pytest.mark.timeout(300)
_ids = itertools.count()
WIDE = {"COLUMNS": "250"}


def request(device: str, **kwargs: object) -> EnrollmentRequest:
    return EnrollmentRequest(f"r{next(_ids)}", device, **kwargs)  # type: ignore[arg-type]


def server(*, dns: tuple[str, ...] = (), ip: tuple[str, ...] = ()) -> EnrollmentParameters:
    return EnrollmentParameters(dns_names=dns, ip_addresses=ip)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CASystemUnderTest]:
    base = tmp_path_factory.mktemp("entitled")
    (base / "logs").mkdir()
    plant = CASystemUnderTest(base / "plant", base / "logs")
    plant.init_ca("root")
    plant.init_ca("factory", "--parent", "root", "--default", "--org", "Acme")
    plant.init_ca("nodes", "--parent", "root", "--profile", "server")
    plant.init_ca("sub", "--parent", "root", "--path-length", "1", "--profile", "ca")
    plant.add_client("line1", "--ca", "factory", "--device-ids", "ACME-*")
    plant.add_client("custx", "--ca", "nodes", "--dns", "*.x.example", "--ip", "10.1.0.0/24")
    plant.add_client("custy", "--ca", "nodes", "--dns", "*.y.example")
    plant.add_client("subs", "--ca", "sub")
    with stopped_afterwards(plant):
        plant.start()
        yield plant


def refusals(system: CASystemUnderTest) -> list[dict[str, str]]:
    result = ztpki("ca", "refusals", "--dir", str(system.root), "--json")
    rows: list[dict[str, str]] = json.loads(result.stdout)
    return rows


def refused(system: CASystemUnderTest, req: EnrollmentRequest, *, client: str) -> str:
    """The not-authorized message; nothing issued, the refusal recorded."""
    before = system.count()
    with pytest.raises(NotAuthorized) as caught:
        system.enroll(req, client=client)
    assert system.count() == before
    last = refusals(system)[-1]
    assert (last["client"], last["request_id"]) == (client, req.request_id)
    assert last["device_id"] == req.device_id
    return caught.value.message


def test_fail_other_ca_named_without_listing_the_others(system: CASystemUnderTest) -> None:
    message = refused(system, request("ACME-1", ca="nodes"), client="line1")
    assert "CA-client line1 may not use CA 'nodes'" in message
    # A CA that does not exist gets the same answer: no oracle for which names exist.
    ghost = refused(system, request("ACME-1", ca="ghost"), client="line1")
    assert "CA-client line1 may not use CA 'ghost'" in ghost
    for other in ("root", "sub", "factory"):
        assert other not in message.replace("CA-client line1", "")
    assert system.clients()["line1"]["entitlement"]["cas"] == ["factory"]  # unchanged
    leaf = leaf_of(system.enroll(request("ACME-1"), client="line1"))  # control: default CA
    assert leaf.issuer == system.ca_certificate("factory").subject


def test_fail_device_id_outside_the_pattern(system: CASystemUnderTest) -> None:
    message = refused(system, request("OTHER-7"), client="line1")
    assert "may not name device id 'OTHER-7'" in message
    system.enroll(request("ACME-7"), client="line1")


def test_fail_subject_field_the_policy_fixes(system: CASystemUnderTest) -> None:
    params = EnrollmentParameters(organization="Evil Corp")
    message = refused(system, request("ACME-8", parameters=params), client="line1")
    assert "Organization 'Evil Corp' is not allowed" in message
    params = EnrollmentParameters(email="ceo@bank.example")
    message = refused(system, request("ACME-8", parameters=params), client="line1")
    assert "Email may not appear" in message
    same = EnrollmentParameters(organization="Acme")  # control: repeating it is fine
    system.enroll(request("ACME-8", parameters=same), client="line1")


def test_server_names_only_inside_the_entitlement(system: CASystemUnderTest) -> None:
    for params, said in (
        (server(dns=("node.y.example",)), "DNS name 'node.y.example'"),
        (server(dns=("a.b.x.example",)), "DNS name 'a.b.x.example'"),
        (server(dns=("x.example",)), "DNS name 'x.example'"),
        (server(ip=("10.2.0.1",)), "IP address '10.2.0.1'"),
    ):
        message = refused(system, request("node-x", ca="nodes", parameters=params), client="custx")
        assert f"may not ask for {said}" in message
    answer = system.enroll(
        request("node-x", ca="nodes", parameters=server(dns=("node.x.example",), ip=("10.1.0.5",))),
        client="custx",
    )
    assert leaf_of(answer).issuer == system.ca_certificate("nodes").subject


def test_fail_reissue_of_another_clients_certificate(system: CASystemUnderTest) -> None:
    owned = request("shared-node", ca="nodes", parameters=server(dns=("n.x.example",)))
    serial = format(leaf_of(system.enroll(owned, client="custx")).serial_number, "x")
    steal = request(
        "shared-node", ca="nodes", parameters=server(dns=("n.y.example",)), reissue=True
    )
    message = refused(system, steal, client="custy")
    assert "is taken by another CA-client" in message and "custx" not in message
    live = system.store.active_certificate("nodes", "shared-node")
    assert live is not None and live.serial == serial and live.client == "custx"
    # Control: the client that obtained it reissues it.
    again = request(
        "shared-node", ca="nodes", parameters=server(dns=("n.x.example",)), reissue=True
    )
    system.enroll(again, client="custx")
    live = system.store.active_certificate("nodes", "shared-node")
    assert live is not None and live.serial != serial


def test_fail_ca_certificate_unless_the_policy_allows(system: CASystemUnderTest) -> None:
    message = refused(system, request("evil-sub", ca="sub"), client="subs")
    assert "does not issue CA certificates" in message


def test_ok_set_client_reaches_the_running_service(system: CASystemUnderTest) -> None:
    names = server(dns=("node.z.example",))
    with Raw(system.address, system.credential("custy")) as kept_alive:
        kept_alive.send_request(first := request("node-z", ca="nodes", parameters=names))
        answer = kept_alive.read_answer()
        assert isinstance(answer, EnrollmentError) and answer.request_id == first.request_id
        assert answer.code is ErrorCode.NOT_AUTHORIZED
        asked_at = time.monotonic()
        ztpki(
            "ca", "set-client", "--dir", str(system.root), "--name", "custy",
            "--add", "--dns", "node.z.example",
        )  # fmt: skip
        assert system.clients()["custy"]["entitlement"]["dns"] == ["*.y.example", "node.z.example"]
        # An open connection re-reads its registration at most every client_recheck seconds
        # (the CLI run above takes longer than that already).
        time.sleep(max(0.0, ServiceLimits().client_recheck - (time.monotonic() - asked_at)))
        kept_alive.send_request(second := request("node-z", ca="nodes", parameters=names))
        assert isinstance(kept_alive.read_answer(), EnrollmentAnswer), second
    table = ztpki("ca", "list-clients", "--dir", str(system.root), env=WIDE).stdout
    assert "node.z.example" in table and "*.x.example" in table and "10.1.0.0/24" in table
    ztpki("ca", "set-client", "--dir", str(system.root), "--name", "custy", "--remove",
          "--dns", "node.z.example")  # fmt: skip
    message = refused(system, request("node-z2", ca="nodes", parameters=names), client="custy")
    assert "may not ask for DNS name 'node.z.example'" in message


def test_fail_serve_refuses_clients_without_entitlement_until_set(tmp_path: Path) -> None:
    old = CASystemUnderTest(tmp_path / "old", tmp_path)
    old.init_ca("root")
    old.init_ca("devices", "--parent", "root", "--default")
    old.add_client("line1", "--ca", "devices")
    downgrade_ca_store_to_v1(old.root / "store.sqlite")

    result = ztpki("ca", "serve", "--dir", str(old.root), "--listen", "127.0.0.1:0", check=False)
    assert result.returncode == 1
    assert "`ztpki ca migrate --dir DIR`" in " ".join(result.stderr.split())
    assert stored_schema_version(old.root / "store.sqlite", "ca_system") == 1  # untouched
    migrated = ztpki("ca", "migrate", "--dir", str(old.root))
    assert "from ca_system schema version 1 to" in " ".join(migrated.stdout.split())

    result = ztpki("ca", "serve", "--dir", str(old.root), "--listen", "127.0.0.1:0", check=False)
    message = " ".join(result.stderr.split())
    assert result.returncode == 1
    fix = f"ztpki ca set-client --dir {old.root} --name line1 --ca devices --ca root"
    assert fix in message
    assert old.clients()["line1"]["entitlement"] is None  # upgraded, nothing granted
    ztpki("ca", "set-client", "--dir", str(old.root), "--name", "line1", "--ca", "devices")
    with stopped_afterwards(old):
        old.start()
        leaf = leaf_of(old.enroll(request("dev-1")))
        assert leaf.issuer == old.ca_certificate("devices").subject
        with pytest.raises(NotAuthorized, match="may not use CA 'root'"):
            old.enroll(request("dev-2", ca="root"))
