"""What a resent duplicate batch costs the sequencer, against a new batch in the same run.

Method. A SequencerCore (no sockets; its replies are counted, not sent) sequences 4,096
batches of 32 records of source 1, so that it remembers 4,096 runs for that source, and they
are all acknowledged. Then a producer resends its whole outbox, 1,024 batches at a time in one
turn (the stall after a freeze, issue "metastable sequencer"): each turn is timed. The baseline
is the cost of a turn of 1,024 new batches of the same size, measured in the same run. GC off,
one warm-up turn. Prints us per batch for both, their ratio, the replies per turn, and a hash
of the replies so that a fast wrong answer shows.

Run: python bench/bench_sequencer_duplicates.py [--turns 5]
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mq import wire  # noqa: E402
from mq.record import pack  # noqa: E402
from mq.sequencer import SequencerCore  # noqa: E402

BATCH, RUNS, TURN = 32, 4096, 1024


class Core(SequencerCore):
    def __init__(self):
        super().__init__("in.bench", ["r0"], "first", window_bytes=1 << 30)
        self.replies = []
        self.epoch = 1

    def _try_send(self, link, msg):
        return True

    def _publish(self, frame):
        pass

    def _reply(self, ident, kind, body):
        self.replies.append((kind, body))

    def _peer_alive(self, ident):
        return True


def message(ss_first: int) -> tuple:
    batch = pack(1, ss_first, 32, [b"x" * 16] * BATCH)
    return (b"p", wire.DATA, [b"p", wire.DATA, b"\x80", batch])


def commit_all(core: Core) -> None:
    core.links[0].known = True
    core.links[0].acked = core.links[0].sent = core.next_seq - 1
    core.first_own_seq = 1
    core._forward()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=5)
    a = ap.parse_args()
    gc.disable()
    core = Core()
    core.links[0].known = True
    olds = [message(1 + BATCH * k) for k in range(RUNS)]
    for k in range(0, RUNS, TURN):
        core.sequence_turn(olds[k:k + TURN])
    commit_all(core)
    core.replies.clear()
    dup_turn = olds[:TURN]
    core.sequence_turn(dup_turn)  # warm-up
    core.replies.clear()
    t = time.perf_counter()
    for _ in range(a.turns):
        core.sequence_turn(dup_turn)
    dup_us = (time.perf_counter() - t) / (a.turns * TURN) * 1e6
    replies = len(core.replies) / a.turns
    digest = hashlib.sha256(repr(core.replies[-1]).encode()).hexdigest()[:16]
    ss = core.next_ss[1]
    t = time.perf_counter()
    for _ in range(a.turns):
        core.sequence_turn([message(ss + BATCH * k) for k in range(TURN)])
        ss += BATCH * TURN
        commit_all(core)
    new_us = (time.perf_counter() - t) / (a.turns * TURN) * 1e6
    print(f"duplicate batch: {dup_us:.1f} us ({replies:.0f} replies per turn of {TURN}); "
          f"new batch (baseline): {new_us:.1f} us; ratio {dup_us / new_us:.2f}; "
          f"reply hash {digest}")


if __name__ == "__main__":
    main()
