"""`node serve` says at start-up which manufacturers' recalls it would not hear of."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from node_harness import InProcessNode

from ztpki.node.config import Limits
from ztpki.node.factory_crls import FactoryRevocation


@pytest.mark.parametrize("configured", [False, True], ids=["warned", "quiet"])
def test_ok_serve_warns_per_manufacturer_without_crl(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, configured: bool
) -> None:
    node = InProcessNode(tmp_path, limits=Limits())
    # File locations; that they hold no CRL yet is the fetch's business, not this warning's.
    locations = {"Globex": [str(tmp_path / "globex.crl")]}
    if configured:
        locations["Acme"] = [str(tmp_path / "acme.crl")]
    revocation = FactoryRevocation(
        [("Acme", node.pki.bundle()), ("Globex", [])], locations=locations
    )
    node.material = dataclasses.replace(node.material, factory_crls=revocation)
    try:
        with caplog.at_level(logging.WARNING, "ztpki.node.runtime"):
            node.start()
    finally:
        node.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "ztpki.node.runtime"]
    warned = [line for line in lines if "checked for revocation only if" in line]
    assert warned == ([] if configured else [warned[0]])
    assert all("temporary certificates of Acme are" in line for line in warned)
