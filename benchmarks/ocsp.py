"""OCSP responses per second and server CPU per response: ztpki against `openssl ocsp`.

One CA system with 10,000 issued certificates of which 1,000 are revoked (recorded in its
store, and written as an OpenSSL index.txt for the same serials). Two responders serve them
in the same run, each signing with a delegated responder certificate whose key is of the
CA's algorithm. `--key` chooses it: ec (P-256), rsa (RSA-2048), or both (the default: every
phase below for an EC CA, then again for an RSA CA, each compared with openssl signing
with the same algorithm):

  ztpki    `ztpki ca serve --http-listen --ocsp-dir D` (answers without a nonce pre-signed
           and cached in memory, and written to D/factory/ as files)
  nginx    Debian's nginx (one worker) with ztpki.casystem.ocsp_nginx's configuration: the
           pre-signed files for RFC 5019 GETs, everything else proxied to ztpki over
           kept-alive upstream connections
  openssl  `openssl ocsp -index index.txt -port P -rsigner R -rkey K -CA ca.pem -ndays 1`

Clients are `--clients` threads POSTing pre-built DER requests (every request a fresh
connection, or kept-alive HTTP/1.1), without a nonce and with a fresh 16-octet nonce per
request. ztpki's cache is warmed with one pass over the serials, and its first sweep has
written every pre-signed file, before the clock starts: that is what "pre-signed" means.
openssl is asked by both clients too: it answers HTTP/1.0 and closes every connection, so
the kept-alive client reconnects, which is the same client load as ztpki's kept-alive
phases. Floor phases show what no answer can go below on this machine: nginx answering
`return 200` from its configuration, and ztpki's HTTP server answering constant bytes
(benchmarks/ocsp_floor.py). Server CPU is utime + stime of each server process tree from
/proc, before and after each phase (nginx: master and worker; behind nginx: nginx's and
ztpki's added). The ratios the issue sets, each way of serving against openssl under the
same client load (fresh against fresh, kept-alive against kept-alive):

  no nonce:   CPU per response / openssl CPU per response   (target <= 0.20)
  with nonce: CPU per response / openssl CPU per response   (target <= 1.00)

The nginx GET phases run --static-requests requests (more than the others: nginx spends so
little that /proc's 10 ms ticks need many responses to measure it).

Run: .venv/bin/python benchmarks/ocsp.py [--key ec|rsa|both] [--clients 8] [--requests 4000]
     [--rsa-requests N] [--static-requests 20000] [--keep]
"""

from __future__ import annotations

import argparse
import http.client
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from ca_throughput import ENV, Result, measure, run_threads, stop, tree_cpu_seconds
from cryptography import x509
from cryptography.x509 import ocsp
from ocsp_setup import CA_NAME, KEYS, build_requests, make_setup
from ocsp_static import check_static, get_paths, start_nginx, wait_for_files

from ztpki.pki.keys import KeySpec, key_spec_of
from ztpki.store.records import RevocationReason

READY = re.compile(r"http listening on (\S+):(\d+)")


def post_all(port: int, path: str, bodies: Sequence[bytes], clients: int, *, keep: bool) -> None:
    """POST every body with ``clients`` threads; a fresh connection per request unless keep."""
    send_all(port, [("POST", path, body) for body in bodies], clients, keep=keep)


def send_all(
    port: int, requests: Sequence[tuple[str, str, bytes | None]], clients: int, *, keep: bool
) -> None:
    """Send every (method, path, body) with ``clients`` threads; a fresh connection per
    request unless keep."""
    pending = iter(requests)
    lock = threading.Lock()
    failures: list[str] = []
    headers = {"Content-Type": "application/ocsp-request"}
    if not keep:
        headers["Connection"] = "close"

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                item = next(pending, None)
            if item is None:
                break
            method, path, body = item
            if not keep:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.request(method, path, body, headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200 or answer[:1] != b"\x30":
                failures.append(f"HTTP {response.status}: {answer[:80]!r}")
                break
            if not keep:
                connection.close()
        connection.close()

    run_threads(clients, worker)
    if failures:
        raise RuntimeError(f"a responder failed a request: {failures[0]}")


def check_answers(
    port: int,
    path: str,
    requests: Sequence[bytes],
    certificates: Sequence[x509.Certificate],
    revocations: dict[int, tuple[datetime, RevocationReason]],
    spec: KeySpec,
) -> None:
    """Both responders must say the same thing: spot-check revoked and good serials, and
    that the answer's responder certificate has a ``spec`` key (the phase's algorithm)."""
    for n in [*range(5), *range(len(requests) - 5, len(requests))]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", path, requests[n], {"Content-Type": "application/ocsp-request"})
        response = ocsp.load_der_ocsp_response(connection.getresponse().read())
        connection.close()
        revoked = revocations.get(certificates[n].serial_number)
        expected = ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD
        if response.certificate_status is not expected:
            raise RuntimeError(f"serial #{n}: {response.certificate_status}, expected {expected}")
        signers = {key_spec_of(c.public_key()) for c in response.certificates}
        if signers != {spec}:
            raise RuntimeError(f"serial #{n}: signed by {signers}, expected {spec}")


def start_ztpki(system: Path, log: Path, ocsp_dir: Path) -> tuple[subprocess.Popen[str], int]:
    argv = [sys.executable, "-m", "ztpki", "ca", "serve", "--dir", str(system)]
    argv += ["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--key-workers", "1"]
    argv += ["--ocsp-dir", str(ocsp_dir)]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=ENV
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # `listening on`, printed after `http listening on`
    found = READY.search(log.read_text())
    if not line.startswith("listening on ") or found is None:
        process.kill()
        raise RuntimeError(f"ztpki ca serve did not start:\n{log.read_text()}")
    return process, int(found.group(2))


def start_floor() -> tuple[subprocess.Popen[str], int]:
    """benchmarks/ocsp_floor.py: the publisher's HTTP server answering with constant bytes."""
    script = Path(__file__).with_name("ocsp_floor.py")
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    assert process.stdout is not None
    found = READY.search(process.stdout.readline())
    if found is None:
        process.kill()
        raise RuntimeError("benchmarks/ocsp_floor.py did not start")
    return process, int(found.group(2))


def start_openssl(work: Path, log: Path) -> tuple[subprocess.Popen[str], int]:
    argv = ["openssl", "ocsp", "-index", str(work / "index.txt"), "-port", "0"]
    argv += ["-rsigner", str(work / "responder.pem"), "-rkey", str(work / "responder.key")]
    argv += ["-CA", str(work / "ca.pem"), "-ndays", "1", "-resp_key_id", "-ignore_err"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    assert process.stdout is not None
    for line in process.stdout:
        found = re.match(r"ACCEPT \S*:(\d+)", line)
        if found:
            return process, int(found.group(1))
    process.kill()
    raise RuntimeError(f"openssl ocsp did not start:\n{log.read_text()}")


def phase(
    name: str, pid: int, bodies: Sequence[bytes], run: Callable[[Sequence[bytes]], None]
) -> Result:
    return measure(name, pid, len(bodies), lambda: run(bodies))


def measure_trees(
    name: str, pids: dict[str, int], count: int, run: Callable[[], None]
) -> list[Result]:
    """Like measure, for several server process trees: their sum, then each one's share."""
    before, wall = {k: tree_cpu_seconds(p) for k, p in pids.items()}, time.perf_counter()
    run()
    seconds = time.perf_counter() - wall
    spent = {k: tree_cpu_seconds(p) - before[k] for k, p in pids.items()}
    parts = [Result(f"  of which {k}", count, seconds, cpu) for k, cpu in spent.items()]
    return [Result(name, count, seconds, sum(spent.values())), *parts]


def run_key(spec: KeySpec, work: Path, args: argparse.Namespace) -> list[Result]:
    """Every phase, for a CA (and so both responders) with a ``spec`` key."""
    work.mkdir()
    work.chmod(0o755)  # nginx's worker (nobody, under root) reads work/ocsp; keys stay 0600
    setup = make_setup(work, spec, args.issued, args.revoked, datetime.now(UTC))
    authority, certificates, revocations = setup.authority, setup.certificates, setup.revocations
    requests = args.requests if not spec.is_rsa else args.rsa_requests or args.requests
    static_requests = args.static_requests
    # The revoked serials are the first ones; asking in a shuffled order over all of them
    # mixes about 10% revoked answers into every phase.
    order = list(range(args.issued))
    random.Random(1).shuffle(order)
    asked = [certificates[order[n % len(order)]] for n in range(requests)]
    plain = build_requests(asked, authority.certificate, nonce=False)
    every = build_requests(certificates, authority.certificate, nonce=False)
    asked_static = [every[order[n % len(order)]] for n in range(static_requests)]
    results: list[Result] = []

    ocsp_dir = work / "ocsp"
    ztpki_server, ztpki_port = start_ztpki(setup.system, work / "ztpki-serve.log", ocsp_dir)
    nginx_server = None
    try:
        print(f"[{spec.value}] warming ztpki's cache (one answer per serial) ...", flush=True)
        post_all(ztpki_port, "/ocsp", every, args.clients, keep=True)
        check_answers(ztpki_port, "/ocsp", every, certificates, revocations, spec)
        # The first sweep signs a file per certificate in the same process: measuring before
        # it ends would count its signatures (many seconds of RSA) against the phases.
        print(f"[{spec.value}] waiting for ztpki's pre-signed files ...", flush=True)
        wait_for_files(ocsp_dir, CA_NAME, every)
        for name, nonce, keep in (
            ("ztpki no nonce", False, False),
            ("ztpki nonce", True, False),
            ("ztpki no nonce keep-alive", False, True),
            ("ztpki nonce keep-alive", True, True),
        ):
            bodies = build_requests(asked, authority.certificate, nonce=True) if nonce else plain

            def run(b: Sequence[bytes], keep: bool = keep) -> None:
                post_all(ztpki_port, "/ocsp", b, args.clients, keep=keep)

            results.append(phase(name, ztpki_server.pid, bodies, run))

        nginx_server, nginx_port = start_nginx(work, ocsp_dir, CA_NAME, ztpki_port)
        check_static(nginx_port, every, certificates, revocations)
        for name, keep in (("nginx no nonce (files)", False), ("nginx no nonce keep-alive", True)):

            def run_static(b: Sequence[bytes], keep: bool = keep) -> None:
                send_all(nginx_port, get_paths(b), args.clients, keep=keep)

            results.append(phase(name, nginx_server.pid, asked_static, run_static))
        # nginx's own floor on this machine: the same GETs answered by `return 200` from
        # its configuration, no file (a location only this benchmark adds).
        floor = [(m, p.replace("/ocsp/", "/floor/", 1), b) for m, p, b in get_paths(asked_static)]
        for name, keep in (("nginx floor (no file)", False), ("nginx floor keep-alive", True)):
            results.append(
                measure(
                    name,
                    nginx_server.pid,
                    len(floor),
                    lambda keep=keep: send_all(nginx_port, floor, args.clients, keep=keep),
                )
            )
        nonce_bodies = build_requests(asked, authority.certificate, nonce=True)
        results.extend(
            measure_trees(
                "nginx->ztpki nonce",
                {"nginx": nginx_server.pid, "ztpki": ztpki_server.pid},
                len(nonce_bodies),
                lambda: post_all(nginx_port, "/ocsp", nonce_bodies, args.clients, keep=False),
            )
        )
    finally:
        if nginx_server is not None:
            nginx_server.terminate()
            nginx_server.wait(timeout=20)
        stop(ztpki_server)

    # The Python floor: the same HTTP server and client load, constant answers, no OCSP.
    floor_server, floor_port = start_floor()
    try:
        for name, keep in (("ztpki floor (no OCSP)", False), ("ztpki floor keep-alive", True)):

            def run_floor(b: Sequence[bytes], keep: bool = keep) -> None:
                post_all(floor_port, "/ocsp", b, args.clients, keep=keep)

            results.append(phase(name, floor_server.pid, plain, run_floor))
    finally:
        stop(floor_server)

    openssl_server, openssl_port = start_openssl(work, work / "openssl-ocsp.log")
    try:
        check_answers(openssl_port, "/", every, certificates, revocations, spec)
        for name, nonce, keep in (
            ("openssl no nonce", False, False),
            ("openssl nonce", True, False),
            # The same kept-alive client as ztpki's keep-alive phases: openssl's responder
            # answers HTTP/1.0 and closes, so http.client reconnects for every request.
            ("openssl no nonce keep-alive", False, True),
            ("openssl nonce keep-alive", True, True),
        ):
            bodies = build_requests(asked, authority.certificate, nonce=True) if nonce else plain

            def run_openssl(b: Sequence[bytes], keep: bool = keep) -> None:
                post_all(openssl_port, "/", b, args.clients, keep=keep)

            results.append(phase(name, openssl_server.pid, bodies, run_openssl))
    finally:
        openssl_server.terminate()
        openssl_server.wait(timeout=20)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--issued", type=int, default=10_000)
    parser.add_argument("--revoked", type=int, default=1_000)
    parser.add_argument(
        "--key",
        choices=[*KEYS, "both"],
        default="both",
        help="the CA's key and both responders': ec (P-256), rsa (RSA-2048), or both in turn",
    )
    parser.add_argument("--requests", type=int, default=4_000, help="requests per phase")
    parser.add_argument(
        "--rsa-requests", type=int, default=0, help="per phase with --key rsa (0: --requests)"
    )
    parser.add_argument(
        "--static-requests", type=int, default=20_000, help="requests per nginx GET phase"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ztpki-bench-ocsp-"))
    work.chmod(0o755)
    keys = list(KEYS) if args.key == "both" else [args.key]
    try:
        runs = {KEYS[k]: run_key(KEYS[k], work / k, args) for k in keys}
        for spec, results in runs.items():
            report(spec, results, args)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def report(spec: KeySpec, results: Sequence[Result], args: argparse.Namespace) -> None:
    requests = args.rsa_requests or args.requests if spec.is_rsa else args.requests
    print(
        f"\n[{spec.value} CA and responders] {args.issued} issued, {args.revoked} revoked; "
        f"{requests} requests per phase ({args.static_requests} for nginx's files), "
        f"{args.clients} client threads; a fresh connection per request unless keep-alive"
    )
    print(f"{'phase':<28}{'responses':>10}{'per second':>12}{'server CPU per response':>26}")
    by_name = {}
    for r in results:
        by_name[r.name] = r
        per = r.cpu_seconds / r.count * 1000
        print(f"{r.name:<28}{r.count:>10}{r.per_second:>12.0f}{per:>23.3f} ms")
    # Each way of serving against openssl under the same client load: fresh connections
    # against openssl's fresh ones, kept-alive clients against openssl asked by the same
    # kept-alive client (it closes every connection itself, so that client reconnects).
    for label, ours, theirs, target in (
        ("no nonce", "ztpki no nonce", "openssl no nonce", 0.2),
        ("no nonce", "ztpki no nonce keep-alive", "openssl no nonce keep-alive", 0.2),
        ("no nonce", "nginx no nonce (files)", "openssl no nonce", 0.2),
        ("no nonce", "nginx no nonce keep-alive", "openssl no nonce keep-alive", 0.2),
        ("floor", "nginx floor (no file)", "openssl no nonce", 0.2),
        ("floor", "nginx floor keep-alive", "openssl no nonce keep-alive", 0.2),
        ("floor", "ztpki floor (no OCSP)", "openssl nonce", 1.0),
        ("floor", "ztpki floor keep-alive", "openssl nonce keep-alive", 1.0),
        ("with nonce", "ztpki nonce", "openssl nonce", 1.0),
        ("with nonce", "ztpki nonce keep-alive", "openssl nonce keep-alive", 1.0),
        ("with nonce", "nginx->ztpki nonce", "openssl nonce", 1.0),
    ):
        a, b = by_name[ours], by_name[theirs]
        ratio = (a.cpu_seconds / a.count) / (b.cpu_seconds / b.count)
        verdict = "met" if ratio <= target else "NOT met"
        if label == "floor":  # nginx's own cost with no file: what no file can go below
            verdict = "below the target" if ratio <= target else "above the target"
        print(
            f"ratio {label:<10} {ours:<26} / {theirs:<28} = {ratio:.2f} "
            f"(target <= {target:.2f}: {verdict})"
        )


if __name__ == "__main__":
    raise SystemExit(main())
