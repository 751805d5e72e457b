"""`ca_throughput.py --pkcs11`: the same CA system with the issuing CA's key in SoftHSM2.

The file-key phases of the same run are the baseline; the figure is CPU per certificate
(server process tree, which includes SoftHSM: it is a library in the server's process).
Target: at most 1.5 times the file key's, in CSR mode and in EC server-keygen mode.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ca_throughput import ENV, Result, ztpki_phases

TARGET = 1.5


def compare_token_key(
    work: Path,
    clients: int,
    counts: dict[str, int],
    csrs: list[tuple[str, bytes]],
    file_results: Sequence[Result],
) -> list[str]:
    """Run the EC phases again with the CA key in a fresh SoftHSM token; lines to print."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.support.softhsm import make_softhsm

    hsm = make_softhsm(work / "softhsm")
    label = hsm.new_token("bench")
    ENV.update(hsm.env)  # the `ztpki` commands and the server this run starts
    token_work = work / "pkcs11"
    token_work.mkdir()
    token_counts = {k: v for k, v in counts.items() if k in ("ec-keygen", "ec-csr")}
    results = ztpki_phases(
        token_work,
        clients,
        token_counts,
        csrs,
        factory=("--pkcs11", f"pkcs11:token={label};object=factory"),
    )
    lines = []
    for token in results:
        phase = token.name.removeprefix("ztpki ")
        lines.append(replace(token, name=f"pkcs11 {phase}").line())
        base = next(r for r in file_results if r.name == token.name)
        ratio = token.cpu_ms / base.cpu_ms
        verdict = "within" if ratio <= TARGET else "OVER"
        lines.append(
            f"ratio {phase} token key / file key CPU per certificate: {ratio:.2f} "
            f"({verdict} the target <= {TARGET})"
        )
    return lines
