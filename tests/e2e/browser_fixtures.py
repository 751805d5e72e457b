"""Headless Chromium from Debian's packages (`chromium`, `chromium-driver`: Makefile
system-deps), driven with Selenium through the packaged chromedriver, so nothing is
downloaded: Selenium's own driver manager is never asked, since both paths are given.

The browser trusts exactly the node's server key (``--ignore-certificate-errors-spki-list``
pins its SPKI hash), as an operator's browser trusts the node's certificate once installed.

Client certificates: Chromium on Linux takes them from the NSS database in $HOME/.pki/nssdb,
so a browser with operators' certificates gets a HOME of its own, filled with `pk12util`
(Debian's libnss3-tools) from PKCS#12 files, as an operator imports theirs (README,
"Console"). Which certificate it presents to which site is the AutoSelectCertificateForUrls
content setting, written into the profile's Preferences (a managed policy would need /etc).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from tests.support.shell import sh

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def spki_pin(cert_pem: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


# The README's commands: a PKCS#12 file of an operator's certificate and key, imported into
# the NSS database Chromium and Firefox read on Linux. $1 certificate, $2 key, $3 database.
IMPORT_CERTIFICATE = """
openssl pkcs12 -export -in "$1" -inkey "$2" -out identity.p12 -passout pass:for-import
pk12util -d "sql:$3" -i identity.p12 -W for-import
rm identity.p12
"""


def nss_home(home: Path, identities: Sequence[tuple[Path, Path]]) -> Path:
    """A HOME whose NSS database holds each (certificate, key) of identities."""
    for needed in ("certutil", "pk12util"):
        assert shutil.which(needed), (
            f"{needed} is missing: `make system-deps` installs libnss3-tools"
        )
    database = home / ".pki" / "nssdb"
    database.mkdir(parents=True)
    sh(f'certutil -N -d "sql:{database}" --empty-password', home)
    for cert, key in identities:
        arguments = " ".join(shlex.quote(str(p)) for p in (cert, key, database))
        sh(f"set -- {arguments}\n{IMPORT_CERTIFICATE}", home)
    return home


def auto_select_certificates(profile: Path, rules: Mapping[str, Mapping[str, str]]) -> None:
    """For each site (an origin like https://host:port), present the client certificate
    whose issuer and subject have these common names ({"ISSUER": .., "SUBJECT": ..}),
    without asking: the profile's AutoSelectCertificateForUrls content setting."""
    exceptions = {
        f"{site},*": {
            "setting": {"filters": [{part: {"CN": cn} for part, cn in names.items()}]},
        }
        for site, names in rules.items()
    }
    preferences = {
        "profile": {"content_settings": {"exceptions": {"auto_select_certificate": exceptions}}}
    }
    (profile / "Default").mkdir(parents=True, exist_ok=True)
    (profile / "Default" / "Preferences").write_text(json.dumps(preferences))


def start_chromium(
    server_cert: Path,
    profile: Path,
    *,
    home: Path | None = None,
    hosts: Sequence[str] = (),
) -> webdriver.Chrome:
    """Headless Chromium with its profile in profile; with home, the client certificates of
    its NSS database (nss_home); hosts are names that resolve to 127.0.0.1."""
    for needed in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(needed), (
            f"{needed} is missing: `make system-deps` installs Debian's chromium and "
            "chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--ignore-certificate-errors-spki-list={spki_pin(server_cert)}",
    ):
        options.add_argument(argument)
    if hosts:
        options.add_argument(
            "--host-resolver-rules=" + ",".join(f"MAP {host} 127.0.0.1" for host in hosts)
        )
    # chromedriver starts Chromium with its own environment: HOME picks the NSS database.
    env = None if home is None else {**os.environ, "HOME": str(home)}
    service = Service(CHROMEDRIVER, env=env)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    return driver
