"""Where the chat page tests find their browser: Debian's Chromium, which they drive through playwright (its own
browser download cannot reach this machine); conftest.py's ``browser`` fixture launches it."""
from __future__ import annotations

import os
import shutil

import pytest

def chromium() -> str:
    """The Chromium binary: $ONNXLM_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH."""
    for name in (os.environ.get("ONNXLM_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and shutil.which(name)
        if path:
            return path
    pytest.fail("the chat page tests need a Chromium browser: apt-get install -y chromium (scripts/setup.sh does "
                "it), or set ONNXLM_CHROMIUM=/path/to/chrome")
