"""`ca_throughput.py --pkcs11`: the same CA system with the issuing CA's key in SoftHSM2.

The file-key phases of the same run are the baseline; the figure is CPU per certificate
(server process tree, which includes SoftHSM: it is a library in the server's process).
Target: at most 1.5 times the file key's, in CSR mode and in EC server-keygen mode.

The server phases run minutes apart, so on a shared machine the load of the moment moves
their ratio (the same code measured 1.0 and 2.1). The issuance steps are also run in this
process, file key and token key back to back with no I/O: that ratio is the steadier one.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ca_throughput import ENV, Result, in_process_floor, ztpki_phases

TARGET = 1.5


def compare_token_key(
    work: Path,
    clients: int,
    counts: dict[str, int],
    csrs: list[tuple[str, bytes]],
    file_results: Sequence[Result],
    floor_count: int,
) -> list[str]:
    """Run the EC phases again with the CA key in a fresh SoftHSM token; lines to print."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.support.softhsm import make_softhsm

    hsm = make_softhsm(work / "softhsm")
    label = hsm.new_token("bench")
    ENV.update(hsm.env)  # the `ztpki` commands and the server this run starts
    os.environ.update(hsm.env)  # the in-process steps below
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
    return lines + _steps_back_to_back(work, token_work, csrs, floor_count)


def _steps_back_to_back(
    work: Path, token_work: Path, csrs: list[tuple[str, bytes]], count: int, rounds: int = 3
) -> list[str]:
    """The issuance steps in this process, file key then token key, ``rounds`` times: the
    median ratio, free of what other processes of the machine do between server phases."""
    ratios, lines = [], []
    for _ in range(rounds):
        [file_key] = in_process_floor(work / "ca-system", csrs, count, crypto_too=False)
        [token_key] = in_process_floor(token_work / "ca-system", csrs, count, crypto_too=False)
        ratios.append(token_key.cpu_ms / file_key.cpu_ms)
        lines.append(
            replace(token_key, name="pkcs11 in-process steps").line().replace("server CPU", "CPU")
        )
    ratio = statistics.median(ratios)
    verdict = "within" if ratio <= TARGET else "OVER"
    return [
        *lines,
        f"ratio in-process steps token key / file key CPU per certificate: {ratio:.2f} (median "
        f"of {', '.join(f'{r:.2f}' for r in ratios)}; {verdict} the target <= {TARGET})",
    ]
