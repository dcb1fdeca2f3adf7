"""A log that holds 100,000 producer sources is taken over by a new master (real processes).

Before sources expired, every source a log ever held was named in STATE; past about 80,000
the answer exceeded MAX_BODY, the master could not read it, and recover() died. Here the
replicator's store is filled beforehand with 100,000 sources, one record each, 1,000 sources
per frame, each frame a second of sequenced time later than the one before.

Proves: the sequencer recovers; it remembers at most MAX_SOURCES of them (the most recent);
the floor is above every source_seq of the others; an old source's resend is refused with
source_expired (the producer raises it, with the reason) and nothing is sequenced twice; a
recent source goes on where it was; a new source starts at the floor.
"""
from __future__ import annotations

import pytest

from deploy.local import LogCluster
from mq.control import ping
from mq.producer import Producer, Refused
from mq.record import decode, encode
from mq.sequencer import MAX_SOURCES
from replicator.store import Store

SOURCES = 100_000
PER_FRAME = 1_000
SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC


def fill(data_dir: str, stream: str) -> None:
    store = Store(data_dir, "os", map_size=1 << 30)
    for f in range(SOURCES // PER_FRAME):
        first = f * PER_FRAME + 1
        store.append(stream, 1, encode([(first + i, T0 + f * SEC, first + i, 1, 1, 16, b"old")
                                        for i in range(PER_FRAME)]))
    # committed, as a log that served for long is: a new master reads only its last records
    store.change(stream, lambda log, txn: log.set_commit(txn, SOURCES))
    store.close()


@pytest.mark.timeout(300)
def test_a_master_recovers_a_log_of_100000_sources(tmp_path):
    tmp = str(tmp_path)
    with LogCluster(tmp, replicators=1, policy="first") as cluster:
        fill(cluster.data_dir(0), cluster.stream)
        cluster.start(timeout_s=120)
        st = cluster.stats()
        print(f"recovered {SOURCES} sources: remembers {st['sources']}, floor "
              f"{st['source_floor']}")
        assert st["sources"] <= MAX_SOURCES + 1           # and the Ticks' source 0
        assert st["source_floor"] == 2
        old = Producer(1, cluster.prod_addr, next_ss=1)    # resends its record 1
        old.submit(16, [b"again"])
        with pytest.raises(Refused, match="source_expired|not known"):
            old.flush(30)
        recent = Producer(SOURCES, cluster.prod_addr)      # among the most recent
        recent.connect()
        assert recent.next_ss == 2
        recent.submit(16, [b"new"])
        recent.flush(30)
        new = Producer(SOURCES + 1, cluster.prod_addr)
        new.connect()
        assert new.next_ss == 2                            # the floor
        for p in (old, recent, new):
            p.close()
        last = cluster.stats()["committed"]
        cluster.drain()
        cluster.stop()
    [(top, data)] = cluster.read_logs()
    assert top >= last
    keys = [(r[2], r[3]) for r in decode(data) if r[2] != 0]
    assert len(keys) == len(set(keys)) == SOURCES + 1, "a record is in the log twice"
    assert ping(cluster.rep_addrs[0]) is None
