"""`openssl cmp` (OpenSSL 3.0) as a source of real CMP messages and as the device in e2e tests.

``mock_messages`` runs openssl's built-in mock server (-use_mock_srv) for every command the
Lightweight CMP profile has and keeps each request and response it exchanged (-reqout,
-rspout), so the codec is tested against another implementation's bytes, not only its own.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

OPENSSL = "openssl"


def run_openssl(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def _issue(directory: Path, name: str, subject: str, *, ca: str | None) -> None:
    key, csr, crt = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    if ca is None:
        run_openssl(
            "req", "-x509", *curve, "-keyout", key, "-out", crt, "-subj", subject, "-days", "30"
        ).check_returncode()
        return
    run_openssl("req", *curve, "-keyout", key, "-out", csr, "-subj", subject).check_returncode()
    run_openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        directory / f"{ca}.crt",
        "-CAkey",
        directory / f"{ca}.key",
        "-out",
        crt,
        "-days",
        "30",
    ).check_returncode()


# name -> (openssl arguments, request files, response files)
_COMMANDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "ir": (
        ("-cmd", "ir", "-newkey", "new.key", "-subject", "/CN=new"),
        ("ir", "certConf"),
        ("ip", "pkiconf"),
    ),
    "cr-implicit": (
        (
            "-cmd",
            "cr",
            "-newkey",
            "new.key",
            "-subject",
            "/CN=new",
            "-implicit_confirm",
            "-grant_implicitconf",
        ),
        ("cr",),
        ("cp",),
    ),
    "kur": (
        ("-cmd", "kur", "-newkey", "new.key", "-oldcert", "new.crt", "-disable_confirm"),
        ("kur",),
        ("kup",),
    ),
    "p10cr": (("-cmd", "p10cr", "-csr", "new.csr", "-disable_confirm"), ("p10cr",), ("p10cp",)),
    "rr": (("-cmd", "rr", "-oldcert", "new.crt", "-revreason", "1"), ("rr",), ("rp",)),
    "genm": (("-cmd", "genm", "-infotype", "signKeyPairTypes"), ("genm",), ("genp",)),
    "poll": (
        (
            "-cmd",
            "ir",
            "-newkey",
            "new.key",
            "-subject",
            "/CN=new",
            "-poll_count",
            "1",
            "-check_after",
            "0",
        ),
        ("poll-ir", "pollReq", "poll-certConf"),
        ("poll-ip", "poll-final-ip", "poll-pkiconf"),
    ),
    "refused": (
        (
            "-cmd",
            "ir",
            "-newkey",
            "new.key",
            "-subject",
            "/CN=new",
            "-pkistatus",
            "2",
            "-failurebits",
            str(1 << 23),
        ),
        ("refused-ir",),
        ("refused-ip",),
    ),
}


def mock_messages(directory: Path) -> dict[str, bytes]:
    """Every message of an openssl mock-server exchange, by name (see _COMMANDS)."""
    _issue(directory, "ca", "/CN=Test CA", ca=None)
    for name in ("client", "server", "new"):
        _issue(directory, name, f"/CN={name}", ca="ca")
    common = (
        "-use_mock_srv",
        "-srv_cert",
        "server.crt",
        "-srv_key",
        "server.key",
        "-srv_trusted",
        "ca.crt",
        "-rsp_cert",
        "new.crt",
        "-cert",
        "client.crt",
        "-key",
        "client.key",
        "-trusted",
        "ca.crt",
        "-recipient",
        "/CN=server",
        "-certout",
        "out.crt",
    )
    messages: dict[str, bytes] = {}
    for arguments, requests, responses in _COMMANDS.values():
        reqout = ",".join(f"{r}.der" for r in requests)
        rspout = ",".join(f"{r}.der" for r in responses)
        # A refused request makes openssl exit 1 after saving both messages.
        run_openssl("cmp", *common, *arguments, "-reqout", reqout, "-rspout", rspout, cwd=directory)
        for name in (*requests, *responses):
            messages[name] = (directory / f"{name}.der").read_bytes()
    return messages
