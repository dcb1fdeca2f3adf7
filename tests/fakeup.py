"""A data directory that looks up to the CLI without a cluster: its seqex.json names this
process as the supervisor, and this process holds the directory's lock, as a supervisor does
(deploy/supervisor.py reads a state file only while its supervisor holds DIR/seqex.lock)."""
from __future__ import annotations

import json
import os

from deploy import supervisor

_HELD: list[int] = []      # the locks' fds: open for the test process's life


def fake_up(data_dir: str, state: dict) -> int:
    """The lock's fd (held until the test process ends, or the caller closes it)."""
    with open(os.path.join(data_dir, supervisor.STATE_FILE), "w") as f:
        json.dump({**state, "supervisor": os.getpid()}, f)
    fd = supervisor.pid_lock(os.path.join(data_dir, supervisor.LOCK_FILE), 0o644)
    _HELD.append(fd)
    return fd
