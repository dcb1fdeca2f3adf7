"""Fixtures the unit tests of several modules share."""
import os

import pytest

from replicator.server import Replicator


@pytest.fixture
def rep(tmp_path):
    tag = f"{tmp_path.name}-{os.getpid()}"   # inproc names are freed lazily: never reuse one
    r = Replicator(str(tmp_path / "rep"), f"inproc://rep-{tag}", check=False)
    r.sent = []
    r._send = lambda replies: r.sent.extend(replies)
    yield r
    r.sock.close(0)
    r.store.close()
