"""What the gateway's session journal costs in memory per server message (docs/gateway.md, the
journal's memory), measured with tracemalloc on the gateway's own indexing of out.te records
(Gateway._on_record; no connections, the tests' fake core's message layout).

* baseline: every message held in memory (journal_cache_bytes larger than the run), as the
  gateway kept them before the cache was bounded;
* the gateway as configured by default for a long run: a bounded cache (--cache bytes), the
  index of 8 bytes a message.

    python bench/bench_gateway_journal.py [--messages N] [--cache BYTES]

Prints bytes per message of each, the ratio, and a hash of the index (the out.te seq of every
message, equal for both).
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import os
import sys
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gateway.server as gs  # noqa: E402
from tests.gateway_fakes import FakeCore  # noqa: E402

PER_RECORD = 100          # server messages per out.te record
SESSIONS = 8


def run(messages: int, cache: int) -> tuple[float, str]:
    core = FakeCore()
    gw = gs.Gateway(core, None, gs.Config(journal_cache_bytes=cache))
    sessions = []
    for sid in range(1, SESSIONS + 1):
        core.sessions[(7, sid)] = s = {"user": 7, "sid": sid, "next_seq": 1, "account": 1,
                                       "conn": 0, "next_expected": 1}
        sessions.append(s)
    out_seq = 0

    def burst(n: int) -> None:
        nonlocal out_seq
        for i in range(n // PER_RECORD):
            s = sessions[i % SESSIONS]
            payload = b"".join(core._er(s, 10**6 + k) for k in range(PER_RECORD))
            out_seq += 1
            gw._on_record(0, out_seq, 0, payload)

    burst(20_000)                      # warm: every session and structure exists
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    burst(messages)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    h = hashlib.sha256()
    for key in sorted(gw.journal):
        h.update(gw.journal[key].locs.tobytes())
    return (after - before) / messages, h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--cache", type=int, default=1 << 20,
                    help="journal_cache_bytes of the bounded run (default 1 MiB)")
    a = ap.parse_args()
    base, h1 = run(a.messages, 1 << 40)
    bounded, h2 = run(a.messages, a.cache)
    print(f"{a.messages:,} server messages, {SESSIONS} sessions, {PER_RECORD} per record")
    print(f"  every message held (baseline): {base:8.1f} bytes/message")
    print(f"  cache {a.cache:,} bytes:        {bounded:8.1f} bytes/message "
          f"({base / bounded:.1f}x less)")
    print(f"  index hash {h1}" + ("" if h1 == h2 else f" DIFFERS: {h2}"))


if __name__ == "__main__":
    main()
