"""The console's screenshots: taken by every browser test run, written to docs/console/ (the
README shows them) only when ZTPKI_SCREENSHOTS=1 (`make screenshots`), so that `make test`
leaves the tree as it found it (every run draws other times and counts into the pages)."""

from __future__ import annotations

import os
from pathlib import Path

from selenium.webdriver.chrome.webdriver import WebDriver

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
PNG = b"\x89PNG\r\n\x1a\n"


def save_screenshot(browser: WebDriver, name: str) -> bytes:
    """The page as a PNG; kept as docs/console/NAME.png only under `make screenshots`."""
    png: bytes = browser.get_screenshot_as_png()
    assert png.startswith(PNG), "the browser's screenshot is no PNG"
    if os.environ.get("ZTPKI_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / f"{name}.png").write_bytes(png)
    return png
