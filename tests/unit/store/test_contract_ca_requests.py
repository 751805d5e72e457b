"""Contract for IssuanceStore: one certificate per CA-client request id, kept by the database.

Several CA-system instances share one store; each opens it on its own. A request sent again
(to the same instance or another one) must find the certificate recorded for it, and a
second record for the same request must write nothing, whichever instance tries.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from store_backends import Backend, make_certificate, sha256_hex

from ztpki.store import AlreadyIssued, CertificateStatus, IssuanceStore, IssuedCertificate
from ztpki.store.records import RequestAnswered

DIGEST = sha256_hex("the request")
KEY = b"\x30\x03\x02\x01\x00"  # stands for an encrypted PKCS#8 key


def requested(
    serial: str, device_id: str = "dev-1", *, request_id: str = "r-1"
) -> IssuedCertificate:
    return replace(
        make_certificate(serial, device_id),
        client="node",
        request_id=request_id,
        request_digest=DIGEST,
        answer_key_der=KEY,
    )


def test_ok_request_is_found_with_its_certificate_and_key(ca_store: IssuanceStore) -> None:
    cert = requested("0a")
    ca_store.record_issuance(cert, supersede=False)
    answered = ca_store.answered_request("node", "r-1")
    assert answered is not None
    assert answered.certificate.serial == "0a" and answered.certificate.client == "node"
    assert (answered.request_digest, answered.answer_key_der) == (DIGEST, KEY)
    # Negative controls: another client's id space, another id.
    assert ca_store.answered_request("station", "r-1") is None
    assert ca_store.answered_request("node", "r-2") is None


@pytest.mark.parametrize("supersede", [False, True], ids=["ok-plain", "ok-reissue"])
def test_ok_second_record_of_a_request_writes_nothing(backend: Backend, supersede: bool) -> None:
    first_instance, second_instance = backend.ca(), backend.ca()
    first_instance.record_issuance(requested("01"), supersede=supersede)
    with pytest.raises(RequestAnswered):
        second_instance.record_issuance(requested("02"), supersede=supersede)
    assert [(c.serial, c.status) for c in first_instance.issued()] == [
        ("01", CertificateStatus.ACTIVE)
    ]
    assert second_instance.certificate("customer", "02") is None


def test_ok_batch_keeps_the_first_record_of_a_request(ca_store: IssuanceStore) -> None:
    results = ca_store.record_issuances(
        [
            (requested("01"), False),
            (requested("02", "dev-2"), True),
            (requested("03", "dev-3", request_id="r-3"), False),
        ]
    )
    assert results[0] == [] and isinstance(results[1], RequestAnswered) and results[2] == []
    assert sorted(c.serial for c in ca_store.issued()) == ["01", "03"]


def test_ok_failed_issuance_leaves_its_request_free(ca_store: IssuanceStore) -> None:
    ca_store.record_issuance(make_certificate("01"), supersede=False)  # dev-1 is live
    with pytest.raises(AlreadyIssued):
        ca_store.record_issuance(requested("02"), supersede=False)
    assert ca_store.answered_request("node", "r-1") is None
    # The request id was not taken: recorded again (superseding), it is.
    assert ca_store.record_issuance(requested("03"), supersede=True) == ["01"]
    answered = ca_store.answered_request("node", "r-1")
    assert answered is not None and answered.certificate.serial == "03"


def test_fail_a_key_without_its_request_is_refused() -> None:
    with pytest.raises(ValueError, match="request"):
        replace(make_certificate("01"), answer_key_der=KEY)
    with pytest.raises(ValueError, match="request_digest"):
        replace(make_certificate("01"), request_digest="not-a-digest")


def test_ok_schema_3_store_is_migrated(backend: Backend) -> None:
    """A store of schema 3 (no request ids, as the previous release left it, on either
    engine) is brought to 4 when opened to migrate: old certificates answer no repeated
    request, new ones do."""
    first = backend.ca()
    first.record_issuance(make_certificate("01"), supersede=False)
    backend.raw("ca", "DROP TABLE issuance_request")
    backend.raw("ca", "UPDATE schema_version SET version = 3 WHERE component = 'ca_system'")
    store = backend.ca()
    assert store.answered_request("node", "req-01") is None
    store.record_issuance(requested("02", "dev-2"), supersede=False)
    answered = store.answered_request("node", "r-1")
    assert answered is not None and answered.certificate.serial == "02"


def test_ok_kept_keys_are_forgotten_after_their_window(ca_store: IssuanceStore) -> None:
    from datetime import timedelta

    from store_backends import T0

    ca_store.record_issuance(requested("01"), supersede=False)
    assert ca_store.forget_answer_keys(answered_before=T0) == 0  # not older than T0
    answered = ca_store.answered_request("node", "r-1")
    assert answered is not None and answered.answer_key_der == KEY
    assert ca_store.forget_answer_keys(answered_before=T0 + timedelta(seconds=1)) == 1
    answered = ca_store.answered_request("node", "r-1")
    assert answered is not None and answered.answer_key_der is None
    assert answered.certificate.serial == "01"  # the request itself is still answered
