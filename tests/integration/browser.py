"""What the browser tests share (the admin console's, the game's): Debian's Chromium."""

from __future__ import annotations

import shutil

import pytest


def chromium_binary() -> str:
    """Where Debian's ``chromium`` is; a missing one fails the tests (it is not a reason to
    skip)."""
    found = shutil.which("chromium") or shutil.which("chromium", path="/usr/bin")
    if found is None:
        pytest.fail("chromium is not installed: run scripts/ensure-servers (as root)")
    return found
