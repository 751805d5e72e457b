"""PostgreSQL on the node's own machine, reached over its Unix socket (the URL's ``host`` is
the socket directory): the stores work as over TCP, the password is still checked, and a
wrong one is refused without being shown, with nothing created."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
from store_backends import T0
from test_contract_register import device, manifest
from tests.support.postgres import PostgresCluster, shared_cluster

from ztpki.errors import ZtpkiError
from ztpki.store.sqlite import open_node_store


@pytest.fixture
def cluster() -> PostgresCluster:
    return shared_cluster()


@pytest.fixture
def socket_url(cluster: PostgresCluster) -> Iterator[str]:
    url = cluster.fresh_database("sock", socket=True)
    yield url
    cluster.drop_database(url)


def test_ok_register_over_the_unix_socket(cluster: PostgresCluster, socket_url: str) -> None:
    parts = urlsplit(socket_url)
    assert parts.hostname is None and "host=%2F" in parts.query  # no TCP address in it
    store = open_node_store(socket_url, migrate=True)
    try:
        store.import_devices((device(f"d{n}") for n in range(5)), manifest=manifest("m1", 5))
        assert store.block("d3", now=T0)
        assert [d.device_id for d in store.devices()] == [f"d{n}" for n in range(5)]
    finally:
        store.close()
    with psycopg.connect(socket_url) as conn:  # a socket connection indeed
        assert conn.execute("SELECT inet_server_addr() IS NULL").fetchone() == (True,)


def test_fail_a_wrong_password_on_the_socket_is_refused(socket_url: str) -> None:
    password = urlsplit(socket_url).password
    assert password
    wrong = "Wr0ng-" + "s3cret-never-shown"
    with pytest.raises(ZtpkiError) as caught:
        open_node_store(socket_url.replace(password, wrong), migrate=True)
    assert 'password authentication failed for user "ztpki"' in caught.value.message
    assert wrong not in caught.value.message
    with psycopg.connect(socket_url) as conn:  # nothing was created
        assert conn.execute("SELECT to_regclass('schema_version')").fetchone() == (None,)
