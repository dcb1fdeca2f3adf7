"""MqCore over a real log cluster on 127.0.0.1: records sent into a stream come back in order
through the subscriber (here the cluster's own stream stands in for out.te.0, an echo), with
their seqs and times, and depth() counts exactly the records sent and not yet seen; a second
MqCore of the same gateway index (a restart) counts only its own records."""
from __future__ import annotations

import asyncio

import pytest

from deploy.local import LogCluster
from gateway.mq_core import MqCore, gateway_source


def test_mq_core_echo(tmp_path):
    with LogCluster(str(tmp_path), stream="in.te.0", replicators=1, tick_ms=20) as cluster:
        cluster.start()
        shard = {"in": cluster.prod_addr, "pub": cluster.pub_addr,
                 "replicators": cluster.rep_addrs, "out_stream": "in.te.0"}

        async def run(n, tag):
            core = MqCore(3, [shard])
            got = []
            core.subscribe(lambda s, seq, ts, p: got.append((s, seq, ts, p)))
            await core.start()
            assert core.source == gateway_source(3) == 0x7200_0003
            for i in range(n):
                await core.send(0, 82, tag + i.to_bytes(4, "little"))
            assert core.depth(0) > 0 or any(p.startswith(tag) for *_x, p in got)
            for _ in range(3000):
                if core.depth(0) == 0:
                    break
                await asyncio.sleep(0.01)
            assert core.depth(0) == 0
            await core.close()
            return got

        got = asyncio.run(asyncio.wait_for(run(200, b"A"), 60))
        mine = [p for _s, _seq, _ts, p in got if p[:1] == b"A"]
        assert mine == [b"A" + i.to_bytes(4, "little") for i in range(200)]
        seqs = [seq for _s, seq, _ts, _p in got]
        assert seqs == list(range(1, len(seqs) + 1))  # every record from seq 1, in order
        # a restarted gateway replays the whole stream but counts only its own new records
        got2 = asyncio.run(asyncio.wait_for(run(50, b"B"), 60))
        assert [p for *_x, p in got2 if p[:1] == b"A"] == mine
        assert len([p for *_x, p in got2 if p[:1] == b"B"]) == 50


def test_read_back_passes_over_a_silent_replicator_and_asks_it_last(tmp_path):
    """The journal's read-back (docs/gateway.md): a replicator that does not answer (frozen,
    here a socket that never replies) costs one REPLAY's wait, then goes to the end of the
    list, so that the next reads ask a live one first; every record comes back as the
    subscriber saw it. With no replicator answering, the read raises."""
    import zmq

    from gateway import mq_core
    from mq.subscriber import Subscriber
    from tests.process.test_replicas import wait_servable
    ctx = zmq.Context.instance()
    silent = ctx.socket(zmq.ROUTER)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    dead = f"tcp://127.0.0.1:{port}"
    try:
        with LogCluster(str(tmp_path), stream="in.te.0", replicators=2, tick_ms=20) as cluster:
            cluster.start()

            async def send():
                core = MqCore(0, [{"in": cluster.prod_addr, "pub": cluster.pub_addr,
                                   "replicators": cluster.rep_addrs, "out_stream": "in.te.0"}])
                await core.start()
                for i in range(300):
                    await core.send(0, 82, i.to_bytes(4, "little"))
                while core.depth(0):
                    await asyncio.sleep(0.01)
                await core.close()
            asyncio.run(asyncio.wait_for(send(), 60))
            sub = Subscriber("in.te.0", cluster.pub_addr, cluster.rep_addrs, next_seq=1)
            seen: dict[int, bytes] = {}
            while len(seen) < 300 or max(seen) < 300:
                for _f, _l, frame in sub.poll(500):
                    from mq.record import decode
                    seen.update((r[0], r[6]) for r in decode(frame))
            sub.close()
            last = max(seen)
            wait_servable(cluster.rep_addrs[0], "in.te.0", last)
            wait_servable(cluster.rep_addrs[1], "in.te.0", last)
            order = [dead, *cluster.rep_addrs]
            want = [3, 4, 150, 151, last]
            assert mq_core.read_back(order, "in.te.0", want) == {s: seen[s] for s in want}
            assert order == [*cluster.rep_addrs, dead]      # the silent one is asked last
            assert mq_core.read_back(order, "in.te.0", [7]) == {7: seen[7]}
            assert order[-1] == dead
            with pytest.raises(TimeoutError):
                mq_core.read_back([dead], "in.te.0", [1])
    finally:
        silent.close(0)
