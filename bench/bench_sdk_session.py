"""What persisting the SDK's session costs per send, as the unacknowledged outbox grows
(gateway/client.py SessionState; PROTOCOL.md §5: persisted before it leaves).

For outboxes of 10, 1,000 and 5,000 messages (a client whose acknowledgements lag), the time
of one more send's persistence:

* baseline: the whole file rewritten atomically (JSON, temporary file, fsync, rename), as the
  SDK did before its session log;
* the SDK: one line appended to the session log and fsynced (SessionState.note_sent).

    python bench/bench_sdk_session.py [--sends N] [--dir DIR] [--repeat R]

DIR defaults to a temporary directory (its file system decides what an fsync costs). Prints
microseconds per send (median of R runs), the ratio, and a hash of the state read back.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway import client as sdk  # noqa: E402
from gateway import wire  # noqa: E402


def _block(seq: int) -> bytes:
    return wire.encode(wire.NEW_ORDER_SINGLE, seq, 0, seq, 100_000_000, 1, 1, 1, b"1", b"2",
                       b"1", 0)[wire.PREFIX_SIZE:]


def _fill(st: sdk.SessionState, n: int) -> None:
    for i in range(1, n + 1):
        st.outbox.append((i, wire.NEW_ORDER_SINGLE, _block(i)))
    st.next_seq = st.next_cl_ord_id = n + 1
    st.save()


def _send(st: sdk.SessionState) -> None:
    seq = st.next_seq
    st.outbox.append((seq, wire.NEW_ORDER_SINGLE, _block(seq)))
    st.next_seq = st.next_cl_ord_id = seq + 1


def run(root: str, outbox: int, sends: int, whole: bool) -> tuple[float, str]:
    path = os.path.join(root, f"s-{outbox}-{int(whole)}.json")
    for p in (path, path + ".log"):
        if os.path.exists(p):
            os.remove(p)
    st = sdk.SessionState.load(path, "bench")
    st.session_id = 7
    _fill(st, outbox)
    t0 = time.perf_counter()
    for _ in range(sends):
        _send(st)
        st.save() if whole else st.note_sent()
    dt = time.perf_counter() - t0
    st.close()
    back = sdk.SessionState.load(path, "bench")
    digest = hashlib.sha256(json.dumps(
        [back.session_id, back.next_seq, [(s, t, b.hex()) for s, t, b in back.outbox]]
    ).encode()).hexdigest()[:16]
    return dt / sends * 1e6, digest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sends", type=int, default=300)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir, prefix="seqex-sdk-") as root:
        print(f"{'outbox':>8} {'whole rewrite us/send':>22} {'session log us/send':>20} "
              f"{'ratio':>7}  hash")
        for outbox in (10, 1_000, 5_000):
            base, log, hashes = [], [], set()
            for _ in range(a.repeat):
                us, h = run(root, outbox, a.sends, True)
                base.append(us)
                hashes.add(h)
                us, h = run(root, outbox, a.sends, False)
                log.append(us)
                hashes.add(h)
            b, m = statistics.median(base), statistics.median(log)
            same = hashes.pop() if len(hashes) == 1 else "DIFFERENT STATES"
            print(f"{outbox:>8,} {b:>22,.0f} {m:>20,.0f} {b / m:>6.1f}x  {same}", flush=True)


if __name__ == "__main__":
    main()
