"""What a producer's key may put into an engine's log, on a running default cluster with CURVE
(`seqex up`), while a session trades through the gateway.

The policy gives a producer key source ids, not streams: the gateway's key (and the oracle's)
may append records of its source id to in.ce.SYM as well as to the in.te.N it feeds. A
NewOrder so appended rested on the account it named and filled there with no margin check (an
account left 15.5 BTC short with -298,724 USDT available, `seqex audit` balanced). The
CrossEngine of a cluster now obeys a command put straight into in.ce.SYM only from an operator
source: each forged order is refused (3020 source_not_operator), the book and the session's
trading go on, and the operator's own direct order still rests.
"""
from __future__ import annotations

import pytest

from crossengine import codec as cc
from deploy import keys
from deploy.supervisor import read_state
from deploy.topology import SRC_GATEWAY, SRC_ORACLE
from mq import auth
from mq.control import replay, wait_until
from mq.producer import Producer
from mq.record import decode
from mq.sources import OPERATOR_SOURCE_MIN
from tests.process.test_order_path_faults import (
    SYMBOLS,
    Session,
    _clordids,
    _sids,
    default_cluster,
    journal,
)

pytest.importorskip("gateway.server", reason="the gateway process")


def append_as(data: str, name: str, source: int, addr: str, payload: bytes) -> int:
    """One NewOrder into the sequencer at ``addr`` with ``name``'s key and source id; its seq."""
    auth.configure(keys.keys_dir_of(data), name)
    try:
        prod = Producer(source, addr)
        prod.connect(60)
        first, last = prod.submit(cc.NEW_ORDER, [payload])
        seq = prod.seqs(first, last, 60)[0]
        prod.close()
    finally:
        read_state(data)            # this process: the operator again
    assert seq is not None
    return seq


def outcome(topo, stream: str, seq: int) -> list:
    def at_seq():
        for rep in topo.replicator_addrs():
            try:
                recs = [r for f in replay(rep, stream, seq, seq, timeout_s=5) for r in decode(f)]
            except (TimeoutError, OSError):
                continue
            if recs:
                return cc.decode_events(recs[0][6])
        return None
    return wait_until(at_seq, 120, f"{stream} at seq {seq}")


@pytest.mark.timeout(900)
def test_a_producer_key_cannot_place_an_order_straight_into_a_crossengine(tmp_path):
    with default_cluster(tmp_path) as c:
        data, topo = c["data"], c["topo"]
        st = topo.symbols["BTCUSDT"]
        tick, mark = SYMBOLS[1]
        s = Session(c, "bob", next(_sids), 3)
        s.connect()
        for k in range(20):                  # a session trading around the forged records
            s.nos(next(_clordids), 1, b"2", (mark + 500 + k) * tick, 1)
        seen = []
        for name, source in (("gateway0", SRC_GATEWAY), ("oracle0", SRC_ORACLE)):
            # a 20-lot sell on alice's account 2, far above the mark: it would rest
            seq = append_as(data, name, source, st["producers"],
                            cc.new_order(777_000 + len(seen), cc.SELL, mark + 900, 20, 2))
            events = outcome(topo, st["out"], seq)
            assert [e[0] for e in events] == [cc.EV_REJECTED], (name, events)
            assert events[0][3] == cc.CODES["source_not_operator"], (name, events)
            seen.append(seq)
            for k in range(10):
                s.nos(next(_clordids), 1, b"2", (mark + 600 + k) * tick, 1)
        # the operator's own direct order still rests
        seq = append_as(data, "operator", OPERATOR_SOURCE_MIN + 0x300, st["producers"],
                        cc.new_order(778_000, cc.SELL, mark + 900, 1, 2))
        assert outcome(topo, st["out"], seq)[0][0] == cc.EV_ACCEPTED
        # the session's 40 orders were each answered (ExecutionReport New) meanwhile
        wait_until(lambda: s.drain(0.1) and len(journal(c).get(s.sid, {})) >= 40, 120,
                   "the session's acks")
        s.close()
