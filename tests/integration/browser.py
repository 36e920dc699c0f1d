"""What the browser tests share (the admin console's, the game's): Debian's Chromium."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import sync_playwright


def chromium_binary() -> str:
    """Where Debian's ``chromium`` is; a missing one fails the tests (it is not a reason to
    skip)."""
    found = shutil.which("chromium") or shutil.which("chromium", path="/usr/bin")
    if found is None:
        pytest.fail("chromium is not installed: run scripts/ensure-servers (as root)")
    return found


@contextlib.contextmanager
def headless_chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright's sync API; closed after."""
    chromium = chromium_binary()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
