"""Fixtures of the process tests."""
from __future__ import annotations

import subprocess

import pytest


@pytest.fixture
def tmpfs(tmp_path):
    """A 24 MiB tmpfs, for a replicator whose disk fills up; skipped where none can be
    mounted (it needs root)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
                    "the disk-full test needs one")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
