"""Headless Chromium from Debian's packages (`chromium`, `chromium-driver`: Makefile
system-deps), driven with Selenium through the packaged chromedriver, so nothing is
downloaded: Selenium's own driver manager is never asked, since both paths are given.

The browser trusts exactly the node's server key (``--ignore-certificate-errors-spki-list``
pins its SPKI hash), as an operator's browser trusts the node's certificate once installed.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def spki_pin(cert_pem: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def start_chromium(server_cert: Path, profile: Path) -> webdriver.Chrome:
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
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver
