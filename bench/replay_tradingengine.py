"""A TradingEngine replica's engine work on a real order flow, replayed from a kept log.

Method. `python bench/bench_e2e.py --keep ...` leaves the cluster's data directory behind;
its replicators hold `in.te.N` as the sequencer wrote it, frame by frame, which is what the
shard's replicas applied. This script reads those frames (from a replicator's LMDB directory,
writing them next to it as `<dir>.<stream>.frames` for later runs, or from such a file), builds
the shard's engine from its `--engine-config` JSON (the replica's command line) and applies
every frame with `apply_frame`, as the replica host does. It prints the CPU time per record,
the state hash and a hash of the outputs (a fast wrong answer shows), so that two builds can
be compared on the same records. Wall time moves with the machine's load; for A/B, count
instructions instead (the LMDB map cannot be opened under valgrind: dump the frames first):

    python bench/replay_tradingengine.py DATA/replicator0 --config te0.json      # dumps
    PY=$(python -c 'import sys; print(sys.executable)')
    for apply in 0 1; do valgrind --tool=callgrind --callgrind-out-file=/dev/null $PY \\
      bench/replay_tradingengine.py DATA/replicator0.in.te.0.frames --config te0.json \\
      --apply $apply --hash 0 2>&1 | grep Collected; done

(the difference divided by the records is the instructions per record).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deploy.engines import make  # noqa: E402
from mq.record import scan  # noqa: E402


def load_frames(path: str, stream: str) -> list[bytes]:
    if not os.path.isdir(path):
        with open(path, "rb") as f:
            buf = f.read()
        frames, i = [], 0
        while i < len(buf):
            n = int.from_bytes(buf[i:i + 4], "little")
            frames.append(buf[i + 4:i + 4 + n])
            i += 4 + n
        return frames
    from replicator.store import Store
    store = Store(path)
    log = store.find(stream)
    if log is None:
        raise SystemExit(f"{path} holds no stream {stream}")
    with store.env.begin(buffers=False) as txn:
        frames = [value[4:] for _key, value in txn.cursor(db=log.log_db)]   # crc32, frame
    store.close()
    with open(f"{path.rstrip('/')}.{stream}.frames", "wb") as f:
        for frame in frames:
            f.write(len(frame).to_bytes(4, "little") + frame)
    return frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", help="a replicator's data directory, or a .frames file")
    ap.add_argument("--stream", default="in.te.0")
    ap.add_argument("--config", required=True, help="the replica's --engine-config, as JSON")
    ap.add_argument("--apply", type=int, choices=[0, 1], default=1)
    ap.add_argument("--hash", type=int, choices=[0, 1], default=1,
                    help="hash the outputs and the state (0: not, for instruction counts)")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    frames = load_frames(a.log, a.stream)
    records = sum(scan(f)[0] for f in frames)
    with open(a.config) as f:
        config = json.load(f)
    for _ in range(a.repeat):
        engine, _restore = make("tradingengine", config)
        t0 = time.process_time()
        outs = [engine.apply_frame(f) for f in frames] if a.apply else []
        cpu_s = time.process_time() - t0
        h = hashlib.sha256()
        state = "-"
        if a.hash:
            for out in outs:
                h.update(out)
            state = engine.state_hash().hex()[:16]
        print(f"{len(frames)} frames {records} records: {cpu_s * 1e6 / max(1, records):.2f} "
              f"us/record ({cpu_s:.3f} s); state {state} outputs {h.hexdigest()[:16]}",
              flush=True)


if __name__ == "__main__":
    main()
