"""A node on 127.0.0.1:0 served by an event loop in a background thread, with an in-process
CA system: the real TLS listeners and EST application, without starting processes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import timedelta
from pathlib import Path

from node_pki import NOW, PKI, InProcessCA

from ztpki.node.config import CALabel, Limits, NodeConfig
from ztpki.node.enrollment import LoadedLabel
from ztpki.node.manufacturers import ManufacturerConfig
from ztpki.node.proxy_config import ProxyConfig
from ztpki.node.proxy_listener import ProxyAddress
from ztpki.node.runtime import NodeMaterial, RunningNode, start_node
from ztpki.pki.authority import IssuanceGrant
from ztpki.pki.device_ids import EVERY_DEVICE_ID
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.profiles import CertificateProfile
from ztpki.store.sqlite import open_sqlite_node_store


class InProcessNode:
    """Build with the limits and proxy settings a test needs; `start()` opens the listeners."""

    def __init__(
        self,
        tmp: Path,
        *,
        limits: Limits,
        proxy: ProxyConfig | None = None,
        allow_no_eku: bool = False,
        cmp_implicit_confirm: bool = False,
    ) -> None:
        self.pki = PKI.create()
        key = generate_private_key(KeySpec.EC_P256)
        grant = IssuanceGrant(
            subject=build_subject("node", SubjectFields(), serial_number=None),
            profile=CertificateProfile.SERVER,
            not_before=NOW - timedelta(hours=1),
            not_after=NOW + timedelta(days=30),
            ip_addresses=("127.0.0.1",),
        )
        self.server_cert = self.pki.factory_root.issue(key.public_key(), grant)
        label = CALabel(
            "default",
            Path("unused.pem"),
            "operational",
            allow_no_eku=allow_no_eku,
            cmp_implicit_confirm=cmp_implicit_confirm,
        )
        config = NodeConfig(
            directory=tmp,
            ca_system="127.0.0.1:1",
            ca_client=Path("unused"),
            server_cert=Path("unused"),
            server_key=Path("unused"),
            manufacturers=(ManufacturerConfig("Acme", Path("unused"), EVERY_DEVICE_ID),),
            labels=(label,),
            limits=limits,
            proxy=proxy or ProxyConfig(),
        )
        self.material = NodeMaterial(
            config,
            self.pki.authentication(),
            {"default": LoadedLabel(label, self.pki.operational.chain)},
            key,
            (self.server_cert,),
            None,
        )
        self.ca = InProcessCA.create(self.pki, tmp)
        self.store = open_sqlite_node_store(tmp / "node.sqlite", durable=False)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def start(self, *, proxy_listen: Sequence[ProxyAddress] = ()) -> RunningNode:
        self.node: RunningNode = self.call(
            start_node(
                self.material,
                host="127.0.0.1",
                port=0,
                transport=self.ca,
                store=self.store,
                proxy_listen=proxy_listen,
            )
        )
        return self.node

    def call(self, coro):  # type: ignore[no-untyped-def]
        future: Future[object] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=30)

    def close(self) -> None:
        if hasattr(self, "node"):
            self.call(self.node.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
