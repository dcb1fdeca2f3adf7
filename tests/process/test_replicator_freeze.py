"""A frozen replicator does not stall intake under quorum of three (real processes).

Three replicators at `quorum` (two of three acks commit), a sequencer, and a producer in this
process offering about RATE records a second open-loop. One replicator is frozen with SIGSTOP
for FREEZE_S under that load, then continued with SIGCONT.

Proves: the longest time the producer had records outstanding and saw no acknowledgement move
stays well under 2 s during the freeze (the two others commit); the frozen replicator catches
up once continued; every record is in the log once, and the three logs are byte-identical.
"""
from __future__ import annotations

import os
import signal
import struct
import time

import pytest

from deploy.local import LogCluster
from mq.control import ping, wait_until
from mq.producer import Producer
from mq.record import KIND_TICK, decode

RATE = 2_000
FREEZE_S = 10.0
KIND = 16


def last_of(addr: str, stream: str) -> int:
    return ((ping(addr) or {}).get("streams", {}).get(stream) or {}).get("last", -1)


@pytest.mark.timeout(300)
def test_frozen_replicator_does_not_stall_acks_under_quorum_of_three(tmp_path):
    tmp = str(tmp_path)
    with LogCluster(tmp, replicators=3, policy="quorum") as cluster:
        cluster.start()
        prod = Producer(1, cluster.prod_addr)
        prod.connect()
        frozen = cluster.replicators[2]
        start = time.monotonic()
        freeze_at, thaw_at, end_at = start + 2.0, start + 2.0 + FREEZE_S, start + 5.0 + FREEZE_S
        sent = 0
        progress_at = start
        acked = prod.acked_next
        stall_frozen = stall_all = 0.0
        state = "before"
        while True:
            now = time.monotonic()
            if state == "before" and now >= freeze_at:
                os.kill(frozen.popen.pid, signal.SIGSTOP)
                state = "frozen"
            elif state == "frozen" and now >= thaw_at:
                os.kill(frozen.popen.pid, signal.SIGCONT)
                state = "after"
            if now >= end_at:
                break
            due = int((now - start) * RATE)
            if due > sent:
                prod.submit(KIND, [struct.pack("<Q", ss) for ss in range(sent + 1, due + 1)])
                sent = due
            prod.poll(5)
            now = time.monotonic()
            if prod.acked_next > acked:
                acked, progress_at = prod.acked_next, now
            elif prod.unacked == 0:
                progress_at = now
            stall = now - progress_at
            stall_all = max(stall_all, stall)
            if state == "frozen":
                stall_frozen = max(stall_frozen, stall)
        prod.flush(60)
        print(f"{sent} records at {RATE}/s; replicator 2 frozen {FREEZE_S} s: longest ack "
              f"stall {stall_frozen * 1000:.0f} ms while frozen, {stall_all * 1000:.0f} ms "
              f"over the run")
        assert stall_frozen < 1.0, f"acks stalled {stall_frozen:.2f} s behind a frozen replicator"
        top = last_of(cluster.rep_addrs[0], cluster.stream)
        wait_until(lambda: last_of(cluster.rep_addrs[2], cluster.stream) >= top, 60,
                   "the continued replicator to catch up")
        prod.close()
        cluster.drain()
        cluster.stop()
    logs = cluster.read_logs()
    assert logs[1] == logs[0] and logs[2] == logs[0], "the replicators differ"
    recs = [r for r in decode(logs[0][1]) if r[5] != KIND_TICK]
    assert [r[3] for r in recs] == list(range(1, sent + 1)), "lost or duplicated records"
