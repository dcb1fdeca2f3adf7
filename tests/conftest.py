"""Shared fixtures. Slow campaigns run only with SEQEX_SLOW=1 (or an explicit -m slow)."""
import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SEQEX_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow campaign: set SEQEX_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
