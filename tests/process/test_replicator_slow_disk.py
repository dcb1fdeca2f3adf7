"""A replicator whose disk is slow is not sent its backlog again and again (real processes).

Three replicators at `quorum` with `durability = fsync`, a sequencer, and a producer in this
process offering RATE records a second. Every fdatasync/fsync of one replicator is held
DELAY_S by strace for STALL_S: its main thread waits on the disk while its ZeroMQ I/O thread
goes on reading what the master sends (its socket has no receive high-water mark:
mq/sockets.py). A master that resent a silent replicator its whole backlog every second queued
that backlog there again each time; now it probes with one record (mq/master.py, _stalled).

Proves: the records the slow replicator was sent a second time (its `duplicate_records`) stay
a small part of what was produced (the master before this sent it well over the whole
stream again); intake goes on; once the disk is fast again it catches up, and the three logs
are byte-identical with every record once. Peers are off, so that catch-up from peers does
not overlap with the master's APPENDs. Skipped where strace cannot attach.
"""
from __future__ import annotations

import shutil
import struct
import subprocess
import time

import pytest

from deploy.local import LogCluster
from mq.control import stats, wait_until
from mq.producer import Producer
from mq.record import KIND_TICK, decode

RATE = 2_000
STALL_S = 15.0
DELAY_S = 1.5
KIND = 16


@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to slow a disk")
def test_a_replicator_with_a_slow_disk_is_not_sent_its_backlog_again(tmp_path):
    with LogCluster(str(tmp_path), replicators=3, policy="quorum", durability="fsync",
                    peers=False) as cluster:
        cluster.start()
        prod = Producer(1, cluster.prod_addr)
        prod.connect()
        victim = cluster.replicators[2].popen.pid
        strace = None
        t0 = time.monotonic()
        n = 0
        longest_wait, acked_at = 0.0, time.monotonic()
        try:
            while time.monotonic() - t0 < STALL_S + 5:
                el = time.monotonic() - t0
                if strace is None and el > 2:
                    strace = subprocess.Popen(
                        ["strace", "-f", "-qq", "-p", str(victim), "-o", "/dev/null",
                         "-e", "trace=fdatasync,fsync",
                         "-e", f"inject=fdatasync,fsync:delay_enter={int(DELAY_S * 1e6)}"],
                        stderr=subprocess.PIPE)
                    time.sleep(0.5)
                    if strace.poll() is not None:
                        pytest.skip(f"strace cannot attach: {strace.stderr.read()[:200]!r}")
                if strace is not None and strace.poll() is None and el > 2 + STALL_S:
                    strace.terminate()
                    strace.wait(30)
                due = int(el * RATE)
                while n < due:
                    k = min(due - n, 50)
                    prod.submit(KIND, [struct.pack("<Q", n + i) for i in range(k)])
                    n += k
                if prod.poll(0):
                    acked_at = time.monotonic()
                elif prod.unacked:
                    longest_wait = max(longest_wait, time.monotonic() - acked_at)
                time.sleep(0.002)
        finally:
            if strace is not None and strace.poll() is None:
                strace.terminate()
                strace.wait(30)
        prod.flush(120)
        prod.close()
        # the slow one catches up once its disk is fast again
        top = stats(cluster.rep_addrs[0])["streams"][cluster.stream]["last"]
        wait_until(lambda: stats(cluster.rep_addrs[2])["streams"][cluster.stream]["last"]
                   >= top, 120, "the slow replicator to catch up")
        dup = stats(cluster.rep_addrs[2])["duplicate_records"]
        cluster.drain(120)
        cluster.stop()
        logs = cluster.read_logs()
    print(f"records {n}, sent again to the slow replicator {dup}, "
          f"longest wait for an ack {longest_wait:.2f} s")
    assert dup < n // 10, f"the slow replicator was sent {dup} records again ({n} produced)"
    assert longest_wait < 10.0      # the two others commit: intake goes on
    assert len({data for _last, data in logs}) == 1
    held = [r for r in decode(logs[0][1]) if r[5] != KIND_TICK]
    assert [r[3] for r in held] == list(range(1, n + 1)), "lost or duplicated records"
